"""LangChain's own conformance suite (langchain-tests, VectorStoreIntegrationTests) against a
real vecnest server process, plus what the suite leaves out: server-side embedding, scores,
hybrid search, MMR, filters, retrievers."""

import pytest
import vecnest
from langchain_core.documents import Document
from langchain_tests.integration_tests import VectorStoreIntegrationTests
from vecnest.langchain import VecnestEmbeddings, VecnestVectorStore

from tests.support import TEXTS, unique_name
from tests.support.server import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("langchain") / "data") as server, vecnest.Client(url=server.url) as c:
        yield c


class TestConformance(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, client):
        store = VecnestVectorStore(client, unique_name("lc"), self.get_embeddings())
        yield store
        store.delete()


def test_server_side_embedding_scores_hybrid_mmr_filters_and_retrievers(client):
    store = VecnestVectorStore.from_texts(
        list(TEXTS.values()),
        metadatas=[{"topic": k} for k in TEXTS],
        ids=list(TEXTS),
        client=client,
        collection_name=unique_name("lc"),
        collection_config={"dims": [64, 384]},
    )
    assert store.similarity_search("a cat resting on a mat", k=1) == [
        Document(id="cat", page_content=TEXTS["cat"], metadata={"topic": "cat"})
    ]
    scored = store.similarity_search_with_score("baking bread", k=5)
    assert scored[0][0].id == "bread" and [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)
    relevance = store.similarity_search_with_relevance_scores("baking bread", k=2)
    assert 0 <= relevance[1][1] <= relevance[0][1] <= 1
    assert store.similarity_search("knead dough", k=1, mode="keyword")[0].id == "bread"
    assert store.similarity_search("knead dough", k=1, mode="hybrid", dim=64)[0].id == "bread"
    assert [d.id for d in store.similarity_search("rain", k=5, filter={"topic": "python"})] == ["python"]
    diverse = store.max_marginal_relevance_search("stock markets", k=3, fetch_k=5)
    assert diverse[0].id == "stocks" and len({d.id for d in diverse}) == 3
    retriever = store.as_retriever(search_kwargs={"k": 2})
    assert retriever.invoke("programming languages")[0].id == "python"
    embeddings = VecnestEmbeddings(client, dimensions=64)
    assert len(embeddings.embed_query("hello")) == 64 and len(embeddings.embed_documents(["a", "b"])) == 2
    by_vector = store.similarity_search_by_vector(VecnestEmbeddings(client).embed_query("a cat on a mat"), k=1)
    assert by_vector[0].id == "cat"
    assert store.get_by_ids(["cat", "missing"])[0].metadata == {"topic": "cat"}
    store.delete()
    assert store.similarity_search("cat") == []
