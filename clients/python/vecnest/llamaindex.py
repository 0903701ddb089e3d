"""LlamaIndex integration: `VecnestVectorStore` (a `BasePydanticVectorStore`) and `VecnestEmbedding`.

    from llama_index.core import StorageContext, VectorStoreIndex
    from vecnest import Client
    from vecnest.llamaindex import VecnestEmbedding, VecnestVectorStore

    client = Client(url="http://127.0.0.1:8000")
    store = VecnestVectorStore(client=client, collection_name="docs")
    index = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=VecnestEmbedding(client=client),
    )
    index.as_retriever(similarity_top_k=3).retrieve("where did the cat sit?")

Nodes keep their embedding when LlamaIndex computed one (the collection then holds vectors only,
no model); a node without one is embedded by vecnest. Queries go by embedding, or by text with
`server_side_embedding=True`. Query modes: default (dense), text_search / sparse (BM25), hybrid
(RRF; `alpha` weights dense against keyword) and mmr. Metadata filters in queries: equality,
ANDed (vecnest's filters); other operators raise. `get_nodes`, `delete`, `delete_nodes` by
filter read the collection page by page and match filters here (any operator).
"""

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import (
    build_metadata_filter_fn,
    metadata_dict_to_node,
    node_to_metadata_dict,
)

from vecnest.client import Client
from vecnest.errors import NotFound
from vecnest.models import Hit

__all__ = ["VecnestEmbedding", "VecnestVectorStore"]


class VecnestEmbedding(BaseEmbedding):
    """Embeddings by vecnest's `/v1/embeddings` (`model`: default the server's; `dimensions`
    truncates)."""

    model: str | None = None
    dimensions: int | None = None
    _client: Client = PrivateAttr()

    def __init__(self, client: Client, model: str | None = None, dimensions: int | None = None, **kwargs: Any):
        super().__init__(model=model, dimensions=dimensions, model_name=model or "vecnest", **kwargs)
        self._client = client

    def _embed(self, texts: list[str]) -> list[list[float]]:
        return self._client.embed(texts, model=self.model, dimensions=self.dimensions) if texts else []

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def server_filter(filters: MetadataFilters | None) -> dict[str, Any] | None:
    """LlamaIndex filters as vecnest's: equality conditions, ANDed."""
    if filters is None or not filters.filters:
        return None
    if filters.condition not in (None, FilterCondition.AND) and len(filters.filters) > 1:
        raise ValueError("vecnest search filters are ANDed equality conditions: OR/NOT is not supported")
    out: dict[str, Any] = {}
    for f in filters.filters:
        if isinstance(f, MetadataFilters) or f.operator != FilterOperator.EQ:
            raise ValueError(f"vecnest search filters are equality conditions, not {f!r}")
        out[f.key] = f.value
    return out


class VecnestVectorStore(BasePydanticVectorStore):
    """A vecnest collection as a LlamaIndex vector store (created on the first `add` when
    missing, with `collection_config` when vecnest embeds)."""

    stores_text: bool = True
    flat_metadata: bool = False
    collection_name: str
    collection_config: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = 256
    _client: Client = PrivateAttr()

    def __init__(
        self,
        client: Client,
        collection_name: str = "llamaindex",
        *,
        collection_config: dict[str, Any] | None = None,
        server_side_embedding: bool = False,
        batch_size: int = 256,
    ):
        super().__init__(
            collection_name=collection_name,
            collection_config=collection_config or {},
            batch_size=batch_size,
            is_embedding_query=not server_side_embedding,
        )
        self._client = client

    @property
    def client(self) -> Client:
        return self._client

    # -- writes --------------------------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        if not nodes:
            return []
        docs = []
        for node in nodes:
            doc: dict[str, Any] = {
                "id": node.node_id,
                "text": node.get_content(metadata_mode=MetadataMode.NONE) or None,
                "metadata": node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata),
            }
            if node.embedding is not None:
                doc["vector"] = node.embedding
            docs.append(doc)
        self._ensure_collection(len(nodes[0].embedding) if nodes[0].embedding is not None else None)
        self._client.upsert(self.collection_name, docs, batch_size=self.batch_size)
        return [d["id"] for d in docs]

    def _ensure_collection(self, dim: int | None) -> None:
        try:
            self._client.get_collection(self.collection_name)
        except NotFound:
            config = dict(self.collection_config)
            if dim is not None:
                config.setdefault("model", None)
                config.setdefault("dim", dim)
            self._client.create_collection(self.collection_name, **config)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Every node of the source document `ref_doc_id`."""
        ids = [d.id for d in self._scan() if (d.metadata or {}).get("ref_doc_id") == ref_doc_id]
        self._delete_ids(ids)

    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        self._delete_ids([n.node_id for n in self.get_nodes(node_ids, filters)])

    def clear(self) -> None:
        try:
            self._client.delete_collection(self.collection_name)
        except NotFound:
            pass

    def _delete_ids(self, ids: list[str]) -> None:
        if ids:
            try:
                self._client.delete(self.collection_name, ids)
            except NotFound:
                pass

    # -- reads ---------------------------------------------------------------------------------------
    def _scan(self) -> list[Any]:
        try:
            return list(self._client.documents(self.collection_name))
        except NotFound:
            return []

    def _node(self, doc_id: str, text: str | None, metadata: dict[str, Any] | None) -> BaseNode:
        node = metadata_dict_to_node(dict(metadata or {}), text=text or "")
        node.id_ = doc_id
        return node

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        if node_ids is not None:
            docs = []
            for doc_id in node_ids:
                try:
                    docs.append(self._client.get(self.collection_name, doc_id))
                except NotFound:
                    continue
        else:
            docs = self._scan()
        if filters is not None and filters.filters:
            by_id = {d.id: d.metadata or {} for d in docs}
            keep = build_metadata_filter_fn(lambda i: by_id[i], filters)
            docs = [d for d in docs if keep(d.id)]
        return [self._node(d.id, d.text, d.metadata) for d in docs]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        k = query.similarity_top_k
        options: dict[str, Any] = {"filter": server_filter(query.filters), **kwargs}
        mode = query.mode
        if mode in (VectorStoreQueryMode.TEXT_SEARCH, VectorStoreQueryMode.SPARSE):
            options["mode"] = "keyword"
        elif mode == VectorStoreQueryMode.HYBRID:
            options["mode"] = "hybrid"
            if query.alpha is not None:
                options["fusion"] = {"dense_weight": query.alpha, "keyword_weight": 1 - query.alpha}
        elif mode not in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.MMR):
            raise ValueError(f"query mode {mode.value!r} is not supported by vecnest")
        vector = query.query_embedding if options.get("mode") != "keyword" else None
        text = query.query_str if vector is None else None
        if vector is not None and options.get("mode") == "hybrid":
            options["keyword_query"] = query.query_str
        mmr = mode == VectorStoreQueryMode.MMR
        if mmr:
            options["include"] = ["text", "metadata", "vector"]
        restrict = query.node_ids or None
        fetch = max(k, (kwargs.pop("mmr_prefetch_k", None) or 4 * k) if mmr else k)
        if restrict is not None or query.doc_ids:
            fetch = max(fetch, 100)  # filtered below: look deeper
        try:
            hits = self._client.search(self.collection_name, text, vector=vector, k=fetch, **options)
        except NotFound:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        if restrict is not None:
            hits = [h for h in hits if h.id in set(restrict)]
        if query.doc_ids:
            hits = [h for h in hits if (h.metadata or {}).get("ref_doc_id") in set(query.doc_ids)]
        if mmr and vector is not None and hits:
            hits = self._mmr(vector, hits, k, query.mmr_threshold)
        hits = hits[:k]
        return VectorStoreQueryResult(
            nodes=[self._node(h.id, h.text, h.metadata) for h in hits],
            similarities=[h.score for h in hits],
            ids=[h.id for h in hits],
        )

    @staticmethod
    def _mmr(vector: list[float], hits: list[Hit], k: int, threshold: float | None) -> list[Hit]:
        from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings

        _, ids = get_top_k_mmr_embeddings(
            vector,
            [h.vector or [] for h in hits],
            similarity_top_k=k,
            embedding_ids=list(range(len(hits))),
            mmr_threshold=threshold,
        )
        return [hits[i] for i in ids]
