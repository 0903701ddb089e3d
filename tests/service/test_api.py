"""The HTTP API over the ASGI app: the happy paths, with the model-free encoder and (slow) with
the real MiniLM model. Queries share words with what they should find, so both encoders must
find it; tests/e2e/test_quality.py measures the real model's meaning (nDCG on SciFact)."""

import base64

import numpy as np
import pytest

from service.settings import Settings
from tests.support import TEXTS, unique_name
from tests.support.app import app_client


@pytest.fixture(scope="module", params=["fake", pytest.param("real", marks=pytest.mark.slow)])
def encoder(request):
    return request.param


@pytest.fixture(scope="module")
def client(tmp_path_factory, encoder):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("api") / "data",
        snapshot_interval_s=3600,
        max_batch_documents=50,
        max_body_bytes=1_000_000,
    )
    with app_client(settings, fake=encoder == "fake") as c:
        yield c


@pytest.fixture(scope="module")
def model(request, encoder, fake_model):
    """What the app's default model computes here."""
    return fake_model if encoder == "fake" else request.getfixturevalue("minilm")


@pytest.fixture
def text_collection(client):
    name = unique_name()
    assert client.post("/v1/collections", json={"name": name}).status_code == 201
    docs = [{"id": k, "text": v, "metadata": {"topic": k, "len": len(v)}} for k, v in TEXTS.items()]
    r = client.put(f"/v1/collections/{name}/documents", json={"documents": docs})
    assert r.status_code == 200 and r.json() == {"upserted": 5, "ids": list(TEXTS)}
    return name


def test_collection_lifecycle(client):
    name = unique_name()
    r = client.post("/v1/collections", json={"name": name, "metric": "cosine", "hnsw": {"m": 16, "ef_search": 64}})
    assert r.status_code == 201
    info = r.json()
    assert info["model"] == "all-MiniLM-L6-v2" and info["dim"] == 384 and info["documents"] == 0
    assert info["hnsw"] == {"m": 16, "ef_construction": 200, "ef_search": 64}
    assert name in [c["name"] for c in client.get("/v1/collections").json()["collections"]]
    assert client.get(f"/v1/collections/{name}").json()["name"] == name
    assert client.delete(f"/v1/collections/{name}").status_code == 204
    assert client.get(f"/v1/collections/{name}").status_code == 404


def test_text_search_finds_the_document(client, text_collection):
    r = client.post(f"/v1/collections/{text_collection}/search", json={"query": "a cat resting on a mat", "k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["results"][0]["id"] == "cat" and body["took_ms"] > 0
    assert body["results"][0]["text"] == TEXTS["cat"] and body["results"][0]["metadata"]["topic"] == "cat"
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3


def test_search_options(client, text_collection):
    url = f"/v1/collections/{text_collection}/search"
    only_ids = client.post(url, json={"query": "baking", "k": 2, "include": []}).json()["results"]
    assert only_ids[0] == {"id": "bread", "score": pytest.approx(only_ids[0]["score"])}
    with_vec = client.post(url, json={"query": "baking", "k": 1, "include": ["vector"]}).json()["results"][0]
    assert len(with_vec["vector"]) == 384 and np.linalg.norm(with_vec["vector"]) == pytest.approx(1, abs=1e-5)
    filtered = client.post(url, json={"query": "baking", "k": 5, "filter": {"topic": "rain"}}).json()["results"]
    assert [h["id"] for h in filtered] == ["rain"]
    everything = client.post(url, json={"query": "rain tomorrow", "k": 100, "ef": 5}).json()["results"]
    assert len(everything) == 5 and everything[0]["id"] == "rain"
    exact = client.post(url, json={"query": "rain tomorrow", "k": 5, "exact": True}).json()["results"]
    assert [h["id"] for h in exact] == [h["id"] for h in everything]


def test_vector_search_equals_text_search(client, text_collection, model):
    q = model.encode(["programming languages"], "query")[0]
    url = f"/v1/collections/{text_collection}/search"
    by_vector = client.post(url, json={"vector": q.tolist(), "k": 5}).json()["results"]
    by_text = client.post(url, json={"query": "programming languages", "k": 5}).json()["results"]
    assert [h["id"] for h in by_vector] == [h["id"] for h in by_text]
    assert np.allclose([h["score"] for h in by_vector], [h["score"] for h in by_text], atol=1e-5)


def test_batch_search(client, text_collection):
    r = client.post(
        f"/v1/collections/{text_collection}/search/batch",
        json={
            "searches": [
                {"query": "stock markets", "k": 1},
                {"query": "bread dough", "k": 2, "include": []},
                {"query": "python programming", "k": 1},
            ]
        },
    )
    assert r.status_code == 200
    results = r.json()["results"]
    assert [res["results"][0]["id"] for res in results] == ["stocks", "bread", "python"]
    assert len(results[1]["results"]) == 2


def test_keyword_and_hybrid_search(client, text_collection, model):
    url = f"/v1/collections/{text_collection}/search"
    words = client.post(url, json={"query": "dough baking", "mode": "keyword", "k": 5}).json()["results"]
    assert [h["id"] for h in words] == ["bread"] and words[0]["text"] == TEXTS["bread"] and words[0]["score"] > 0
    filtered = client.post(url, json={"query": "rain bread", "mode": "keyword", "filter": {"topic": "rain"}})
    assert [h["id"] for h in filtered.json()["results"]] == ["rain"]
    hybrid = client.post(url, json={"query": "knead the dough", "mode": "hybrid", "k": 5}).json()["results"]
    assert hybrid[0]["id"] == "bread" and len(hybrid) == 5
    assert hybrid[0]["score"] == pytest.approx(2 / 61)  # first in both lists
    # by vector, with the keyword part's text given apart; the weights tilt the fusion
    q = model.encode(["programming languages"], "query")[0].tolist()
    body = {"vector": q, "keyword_query": "rain", "mode": "hybrid", "k": 1}
    assert client.post(url, json={**body, "fusion": {"dense_weight": 0}}).json()["results"][0]["id"] == "rain"
    assert client.post(url, json={**body, "fusion": {"keyword_weight": 0}}).json()["results"][0]["id"] == "python"
    batch = client.post(
        f"{url}/batch",
        json={"searches": [{"query": "stock markets", "mode": "keyword"}, {"query": "stock markets", "k": 1}]},
    ).json()["results"]
    assert batch[0]["results"][0]["id"] == batch[1]["results"][0]["id"] == "stocks"


def test_documents_get_upsert_delete(client, text_collection):
    base = f"/v1/collections/{text_collection}/documents"
    doc = client.get(f"{base}/cat").json()
    assert doc == {"id": "cat", "text": TEXTS["cat"], "metadata": {"topic": "cat", "len": len(TEXTS["cat"])}}
    assert len(client.get(f"{base}/cat", params={"include_vector": "true"}).json()["vector"]) == 384
    # upsert by id replaces text, vector and metadata
    client.put(base, json={"documents": [{"id": "cat", "text": "Dogs bark at the postman.", "metadata": {"v": 2}}]})
    assert client.get(f"{base}/cat").json()["metadata"] == {"v": 2}
    top = client.post(f"/v1/collections/{text_collection}/search", json={"query": "dogs bark", "k": 1}).json()
    assert top["results"][0]["id"] == "cat"
    assert client.delete(f"{base}/cat").status_code == 204
    assert client.get(f"{base}/cat").status_code == 404
    r = client.post(f"{base}/delete", json={"ids": ["rain", "nope", "rain"]})
    assert r.json() == {"deleted": 1, "ids": ["rain"], "not_found": ["nope"]}
    assert client.get(f"/v1/collections/{text_collection}").json()["documents"] == 3


def test_documents_page_through_in_id_order(client, text_collection):
    base = f"/v1/collections/{text_collection}/documents"
    seen, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = client.get(base, params=params).json()
        seen += page["documents"]
        after = page.get("next")
        if after is None:
            break
    assert [d["id"] for d in seen] == sorted(TEXTS) and all(d["text"] == TEXTS[d["id"]] for d in seen)
    assert "vector" not in seen[0]
    with_vectors = client.get(base, params={"limit": 1, "include_vector": "true"}).json()["documents"]
    assert len(with_vectors[0]["vector"]) == 384
    assert client.get(base, params={"limit": 0}).status_code == 422


def test_vector_only_collection(client):
    name = unique_name()
    r = client.post("/v1/collections", json={"name": name, "dim": 3, "metric": "l2"})
    assert r.status_code == 201 and r.json()["model"] is None
    docs = [{"id": str(i), "vector": [i, 0, 0], "text": f"point {i}"} for i in range(10)]
    assert client.put(f"/v1/collections/{name}/documents", json={"documents": docs}).status_code == 200
    hits = client.post(f"/v1/collections/{name}/search", json={"vector": [3.2, 0, 0], "k": 2}).json()["results"]
    assert [h["id"] for h in hits] == ["3", "4"] and hits[0]["score"] == pytest.approx(-0.2, abs=1e-5)
    r = client.put(f"/v1/collections/{name}/documents", json={"documents": [{"id": "t", "text": "no model here"}]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "vector_required"


def test_embeddings_openai_shape(client, model):
    texts = ["hello world", "vector search"]
    r = client.post("/v1/embeddings", json={"input": texts, "model": "all-MiniLM-L6-v2"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 4
    got = np.array([d["embedding"] for d in body["data"]], np.float32)
    assert np.allclose(got, model.encode(texts, "document"), atol=1e-5)
    b64 = client.post("/v1/embeddings", json={"input": "hello world", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), "<f4")
    assert np.allclose(decoded, got[0], atol=1e-6)
    short = client.post("/v1/embeddings", json={"input": "hello world", "dimensions": 64}).json()["data"][0][
        "embedding"
    ]
    assert len(short) == 64 and np.linalg.norm(short) == pytest.approx(1, abs=1e-5)
    assert np.allclose(short, got[0][:64] / np.linalg.norm(got[0][:64]), atol=1e-5)


def test_metrics_and_docs(client, text_collection):
    client.post(f"/v1/collections/{text_collection}/search", json={"query": "rain", "k": 1})
    text = client.get("/metrics").text
    assert 'vecnest_http_requests_total{method="POST",route="/v1/collections/{name}/search",status="200"}' in text
    assert (
        f'vecnest_stage_duration_seconds_bucket{{collection="{text_collection}",index="384",le="5e-05",stage="rerank"}}'
    ) in text
    for index, stage in (("", "encode"), ("384", "index_search"), ("384", "rerank"), ("", "store")):
        assert f'collection="{text_collection}",index="{index}",stage="{stage}"' in text
    assert f'vecnest_index_vectors{{collection="{text_collection}",index="384"}} 5.0' in text
    assert f'vecnest_ef_search{{collection="{text_collection}",index="384"}} 100.0' in text
    assert f'vecnest_collection_documents{{collection="{text_collection}"}} 5.0' in text
    assert "vecnest_encoder_batch_texts_bucket" in text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/collections/{name}/search" in paths and "/v1/embeddings" in paths
