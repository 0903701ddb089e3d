"""The LlamaIndex vector store against a real vecnest server process: an equivalent of the
checks LlamaIndex's own vector-store integrations run (add, query by embedding, filters,
delete by source document, get/delete nodes, clear, text/hybrid/MMR modes), and a
VectorStoreIndex end to end with vecnest's embeddings."""

import numpy as np
import pytest
import vecnest
from llama_index.core import Document as LlamaDocument
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)
from vecnest.llamaindex import VecnestEmbedding, VecnestVectorStore

from tests.support import TEXTS, unique_name
from tests.support.server import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("llamaindex") / "data") as server, vecnest.Client(url=server.url) as c:
        yield c


def unit(seed: int, dim: int = 8) -> list[float]:
    x = np.random.default_rng(seed).standard_normal(dim)
    return (x / np.linalg.norm(x)).tolist()


@pytest.fixture
def store(client):
    s = VecnestVectorStore(client, unique_name("li"))
    nodes = [
        TextNode(
            id_=f"n{i}",
            text=text,
            metadata={"topic": topic, "rank": i},
            embedding=unit(i),
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i % 2}")},
        )
        for i, (topic, text) in enumerate(TEXTS.items())
    ]
    assert s.add(nodes) == [n.node_id for n in nodes]
    yield s
    s.clear()


def query(store, **kwargs):
    return store.query(VectorStoreQuery(**kwargs))


def test_query_by_embedding_returns_nodes_with_text_metadata_and_source(store):
    result = query(store, query_embedding=unit(2), similarity_top_k=2)
    assert result.ids[0] == "n2" and result.similarities[0] == pytest.approx(1.0, abs=1e-5)
    node = result.nodes[0]
    assert node.get_content() == TEXTS["rain"] and node.metadata == {"topic": "rain", "rank": 2}
    assert node.ref_doc_id == "doc0" and len(result.nodes) == 2


def test_filters(store):
    eq = MetadataFilters(filters=[MetadataFilter(key="topic", value="bread")])
    assert query(store, query_embedding=unit(0), similarity_top_k=5, filters=eq).ids == ["n4"]
    gt = MetadataFilters(filters=[MetadataFilter(key="rank", value=2, operator=FilterOperator.GT)])
    with pytest.raises(ValueError):
        query(store, query_embedding=unit(0), filters=gt)
    assert sorted(n.node_id for n in store.get_nodes(filters=gt)) == ["n3", "n4"]  # matched here: any operator


def test_delete_by_source_document_and_nodes_and_clear(store):
    store.delete("doc0")  # n0, n2, n4
    assert sorted(n.node_id for n in store.get_nodes()) == ["n1", "n3"]
    assert [n.node_id for n in store.get_nodes(node_ids=["n3", "n0"])] == ["n3"]
    store.delete_nodes(node_ids=["n1"])
    assert query(store, query_embedding=unit(1), similarity_top_k=5).ids == ["n3"]
    store.clear()
    assert query(store, query_embedding=unit(1)).ids == []


def test_text_hybrid_and_mmr_modes(store):
    words = query(store, query_str="knead the dough", mode=VectorStoreQueryMode.TEXT_SEARCH, similarity_top_k=2)
    assert words.ids == ["n4"]
    hybrid = query(
        store, query_str="knead the dough", query_embedding=unit(0), mode=VectorStoreQueryMode.HYBRID, alpha=0.0
    )
    assert hybrid.ids == ["n4"]  # alpha 0: the keyword list alone
    dense = query(
        store, query_str="knead the dough", query_embedding=unit(0), mode=VectorStoreQueryMode.HYBRID, alpha=1.0
    )
    assert dense.ids == ["n0"]
    mmr = query(store, query_embedding=unit(3), mode=VectorStoreQueryMode.MMR, similarity_top_k=3, mmr_threshold=0.5)
    assert mmr.ids[0] == "n3" and len(set(mmr.ids)) == 3


def test_a_vector_store_index_end_to_end_with_vecnest_embeddings(client):
    store = VecnestVectorStore(client, unique_name("li"), collection_config={"dims": [64, 384]})
    documents = [LlamaDocument(text=text, doc_id=topic, metadata={"topic": topic}) for topic, text in TEXTS.items()]
    index = VectorStoreIndex.from_documents(
        documents,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=VecnestEmbedding(client),
    )
    found = index.as_retriever(similarity_top_k=2).retrieve("a cat resting on a mat")
    assert found[0].node.get_content() == TEXTS["cat"] and found[0].node.ref_doc_id == "cat"
    index.delete_ref_doc("cat")
    assert all(r.node.ref_doc_id != "cat" for r in index.as_retriever(similarity_top_k=5).retrieve("cat"))
    store.clear()


def test_server_side_embedding(client):
    """Nodes without embeddings and queries by text: vecnest's model embeds both."""
    store = VecnestVectorStore(client, unique_name("li"), server_side_embedding=True)
    assert not store.is_embedding_query
    store.add([TextNode(id_=topic, text=text) for topic, text in TEXTS.items()])
    assert store.query(VectorStoreQuery(query_str="baking bread", similarity_top_k=1)).ids == ["bread"]
    assert client.get_collection(store.collection_name).model == "all-MiniLM-L6-v2"
    store.clear()
