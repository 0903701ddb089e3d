"""LangChain integration: `VecnestVectorStore` (a `VectorStore`) and `VecnestEmbeddings`.

    from vecnest import Client
    from vecnest.langchain import VecnestVectorStore

    store = VecnestVectorStore(client=Client(url="http://127.0.0.1:8000"), collection_name="docs")
    store.add_texts(["The cat sat on the mat."], metadatas=[{"source": "a"}])
    store.similarity_search("where did the cat sit?", k=1)
    store.as_retriever(search_kwargs={"k": 4, "mode": "hybrid"})

Without `embedding`, vecnest embeds server-side (the collection's model; text documents and text
queries). With a LangChain `Embeddings`, vectors are computed client-side and the collection
holds vectors only (no model, the embedding's dim). Extra search keyword arguments go to
vecnest's search as they are: mode ("dense", "keyword", "hybrid"), dim, fusion, ef, ...
`filter` is vecnest's: metadata equality conditions, ANDed.
"""

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from vecnest.client import Client
from vecnest.errors import NotFound
from vecnest.models import Hit

__all__ = ["VecnestEmbeddings", "VecnestVectorStore"]


class VecnestEmbeddings(Embeddings):
    """Embeddings by vecnest's `/v1/embeddings`: `model` (default: the server's), or the model of
    `collection`; `dimensions` truncates (Matryoshka, or the collection's rotation)."""

    def __init__(
        self, client: Client, model: str | None = None, dimensions: int | None = None, collection: str | None = None
    ):
        self.client, self.model, self.dimensions, self.collection = client, model, dimensions, collection

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self.client.embed(texts, model=self.model, dimensions=self.dimensions, collection=self.collection)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class VecnestVectorStore(VectorStore):
    """A vecnest collection as a LangChain vector store; created on first write when missing
    (with `collection_config`, e.g. `{"dims": [64, 384]}`, when vecnest embeds)."""

    def __init__(
        self,
        client: Client,
        collection_name: str = "langchain",
        embedding: Embeddings | None = None,
        *,
        collection_config: dict[str, Any] | None = None,
        batch_size: int = 256,
    ):
        self.client = client
        self.collection_name = collection_name
        self.embedding = embedding
        self.collection_config = collection_config or {}
        self.batch_size = batch_size
        self._exists = False

    @property
    def embeddings(self) -> Embeddings | None:
        return self.embedding

    # -- the collection --------------------------------------------------------------------------
    def _ensure_collection(self, dim: int | None) -> None:
        if self._exists:
            return
        try:
            self.client.get_collection(self.collection_name)
        except NotFound:
            config = dict(self.collection_config)
            if self.embedding is not None:  # vectors computed here: a collection without a model
                config.setdefault("model", None)
                config.setdefault("dim", dim)
            self.client.create_collection(self.collection_name, **config)
        self._exists = True

    # -- writes ------------------------------------------------------------------------------------
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        filled = [i if i else str(uuid.uuid4()) for i in (ids or [None] * len(texts))]
        docs: list[dict[str, Any]] = [
            {"id": doc_id, "text": text, "metadata": dict(metadata)}
            for doc_id, text, metadata in zip(filled, texts, metadatas or [{}] * len(texts))
        ]
        vectors = self.embedding.embed_documents(texts) if self.embedding is not None else None
        if vectors is not None:
            for doc, vector in zip(docs, vectors):
                doc["vector"] = vector
        self._ensure_collection(len(vectors[0]) if vectors else None)
        self.client.upsert(self.collection_name, docs, batch_size=self.batch_size)
        return filled

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete by id (ids that do not exist are ignored); no ids: the whole collection."""
        try:
            if ids is None:
                self.client.delete_collection(self.collection_name)
                self._exists = False
            elif ids:
                self.client.delete(self.collection_name, ids)
        except NotFound:
            pass
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        out = []
        for doc_id in ids:
            try:
                stored = self.client.get(self.collection_name, doc_id)
            except NotFound:
                continue
            out.append(Document(id=stored.id, page_content=stored.text or "", metadata=stored.metadata))
        return out

    # -- searches ----------------------------------------------------------------------------------
    def _search(self, query: str | None, vector: list[float] | None, k: int, **kwargs: Any) -> list[Hit]:
        options = dict(kwargs)
        if vector is None and query is not None and self.embedding is not None:
            vector = self.embedding.embed_query(query)
        if vector is not None and query is not None and options.get("mode") in ("keyword", "hybrid"):
            options.setdefault("keyword_query", query)
            if options["mode"] == "keyword":
                vector = None
        text = query if vector is None else None
        try:
            return self.client.search(self.collection_name, text, vector=vector, k=k, **options)
        except NotFound:  # nothing was ever added
            return []

    @staticmethod
    def _document(hit: Hit) -> Document:
        return Document(id=hit.id, page_content=hit.text or "", metadata=hit.metadata or {})

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [self._document(h) for h in self._search(query, None, k, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        """Documents and vecnest's scores (similarity: higher is closer)."""
        return [(self._document(h), h.score) for h in self._search(query, None, k, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        return [self._document(h) for h in self._search(None, embedding, k, **kwargs)]

    def _select_relevance_score_fn(self):
        return lambda score: (score + 1.0) / 2.0  # cosine similarity [-1, 1] → relevance [0, 1]

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        if self.embedding is not None:
            vector = self.embedding.embed_query(query)
        else:
            try:
                vector = self.client.embed(query, collection=self.collection_name)[0]
            except NotFound:
                return []
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, **kwargs)

    def max_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        import numpy as np

        include = ["text", "metadata", "vector"]
        hits = self._search(None, embedding, fetch_k, include=include, **kwargs)
        if not hits:
            return []
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, np.float32), [h.vector for h in hits], lambda_mult=lambda_mult, k=k
        )
        return [self._document(hits[i]) for i in chosen]

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict] | None = None,
        *,
        client: Client | None = None,
        collection_name: str = "langchain",
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> "VecnestVectorStore":
        if client is None:
            raise ValueError("from_texts needs client=vecnest.Client(...)")
        store = cls(client, collection_name, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store
