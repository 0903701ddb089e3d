"""Two vecnest apps over one shared backend (milvus-lite's server, a real separate process; the
apps are in this process with model-free encoders): what one replica creates or writes, the
other serves, text included: it loads the collection's model itself on first use."""

import pytest

from service.settings import Settings
from tests.support import TEXTS, unique_name
from tests.support.app import app_client
from tests.support.milvus import MilvusServer

pytest.importorskip("pymilvus", reason="the milvus extra is part of the test install")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    server = MilvusServer(tmp_path_factory.mktemp("milvus")).start()
    common = dict(backend="milvus", milvus_uri=server.uri, role="serve", preload_default_model=False)
    a = Settings(data_dir=tmp_path_factory.mktemp("a") / "data", **common)
    b = Settings(data_dir=tmp_path_factory.mktemp("b") / "data", **common)
    try:
        with app_client(a, fake=True) as one, app_client(b, fake=True) as two:
            yield one, two
    finally:
        server.stop()


def test_a_text_collection_made_on_one_replica_serves_text_on_the_other(replicas):
    one, two = replicas
    name = unique_name()
    r = one.post("/v1/collections", json={"name": name, "dims": [64, 384], "elasticizer": {"kind": "none"}})
    assert r.status_code == 201, r.text
    docs = [{"id": k, "text": v} for k, v in TEXTS.items()]
    assert one.put(f"/v1/collections/{name}/documents", json={"documents": docs}).status_code == 200
    body = {"query": "a cat sat on the mat", "k": 3, "exact": True}
    first, second = (c.post(f"/v1/collections/{name}/search", json=body) for c in (one, two))
    assert first.status_code == second.status_code == 200, second.text
    assert [h["id"] for h in first.json()["results"]] == [h["id"] for h in second.json()["results"]]
    # the other way round: text written through the second replica, found through the first
    more = {"documents": [{"id": "new", "text": "a brand new document about volcanoes"}]}
    assert two.put(f"/v1/collections/{name}/documents", json=more).status_code == 200
    found = one.post(f"/v1/collections/{name}/search", json={"query": "volcanoes", "k": 1, "exact": True})
    assert found.json()["results"][0]["id"] == "new"
    embedded = two.post("/v1/embeddings", json={"input": ["volcanoes"], "collection": name})
    assert embedded.status_code == 200, embedded.text


def test_what_the_milvus_backend_does_not_store_is_a_clear_422(replicas):
    one, _ = replicas
    r = one.post("/v1/collections", json={"name": unique_name(), "multivector": {}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "backend_unsupported", r.text
