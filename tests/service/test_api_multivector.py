"""Multi-vector collections over HTTP: text embedded token by token, raw token matrices (JSON and
base64), MaxSim search, filters, deletes, restart, and clear 4xx errors for bad input."""

import base64

import numpy as np
import pytest

from service.settings import Settings
from tests.support import TEXTS, unique_name
from tests.support.app import app_client


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("mv") / "data", snapshot_interval_s=3600)


def search(client, name, status=200, **body):
    r = client.post(f"/v1/collections/{name}/search", json=body)
    assert r.status_code == status, r.text
    return r.json()["results"] if status == 200 else r.json()["error"]


def b64(X, dtype="<f2"):
    return base64.b64encode(np.asarray(X, dtype).tobytes()).decode()


def test_text_and_token_matrices_end_to_end_and_restart(settings, fake_model):
    text_name, raw_name = unique_name("mvtext"), unique_name("mvraw")
    tokens = fake_model.encode_tokens(list(TEXTS.values()), "document")
    with app_client(settings, fake=True) as client:
        r = client.post("/v1/collections", json={"name": text_name, "multivector": {}})
        assert r.status_code == 201, r.text
        info = r.json()
        assert info["multivector"]["token_dim"] == 384 and info["dim"] == 10240 and info["metric"] == "ip"
        docs = [{"id": k, "text": v, "metadata": {"topic": k}} for k, v in TEXTS.items()]
        assert client.put(f"/v1/collections/{text_name}/documents", json={"documents": docs}).status_code == 200
        hits = search(client, text_name, query="a cat resting on a mat", k=3)
        assert hits[0]["id"] == "cat" and hits[0]["text"] == TEXTS["cat"]
        assert search(client, text_name, query="stock markets and interest rates", k=1)[0]["id"] == "stocks"
        assert search(client, text_name, query="baking", k=2, filter={"topic": "rain"})[0]["id"] == "rain"
        # keyword and hybrid search: BM25 over the text, fused with FDE + MaxSim
        assert [h["id"] for h in search(client, text_name, query="knead dough", mode="keyword")] == ["bread"]
        hybrid = search(client, text_name, query="the dough rises", mode="hybrid", k=5)
        assert hybrid[0]["id"] == "bread" and hybrid[0]["score"] == pytest.approx(2 / 61) and len(hybrid) == 5
        stored = client.get(f"/v1/collections/{text_name}/documents/cat", params={"include_vector": True}).json()
        assert np.abs(np.array(stored["vectors"]) - tokens[0]).max() < 2e-3

        # A token-matrix collection without a model: JSON rows and base64 float16 / float32.
        r = client.post(
            "/v1/collections",
            json={"name": raw_name, "multivector": {"token_dim": 384, "final_dim": 2048, "max_tokens": 64}},
        )
        assert r.status_code == 201, r.text
        assert r.json()["model"] is None and r.json()["dim"] == 2048
        docs = [
            {"id": "cat", "vectors": tokens[0].tolist()},
            {"id": "stocks", "vectors_b64": b64(tokens[1]), "dtype": "float16"},
            {"id": "rain", "vectors_b64": b64(tokens[2], "<f4")},
            {"id": "python", "vectors": tokens[3].tolist(), "metadata": {"lang": True}},
            {"id": "bread", "vectors": tokens[4].tolist()},
        ]
        assert client.put(f"/v1/collections/{raw_name}/documents", json={"documents": docs}).status_code == 200
        q = fake_model.encode_tokens(["a cat resting on a mat"], "query")[0]
        by_json = search(client, raw_name, vectors=q.tolist(), k=5)
        by_b64 = search(client, raw_name, vectors_b64=b64(q), dtype="float16", k=5)
        assert by_json[0]["id"] == "cat" and [h["id"] for h in by_b64] == [h["id"] for h in by_json]
        exact = search(client, raw_name, vectors=q.tolist(), k=5, exact=True)
        assert [h["id"] for h in exact] == [h["id"] for h in by_json]
        r = client.post(f"/v1/collections/{raw_name}/documents/delete", json={"ids": ["cat"]})
        assert r.json()["deleted"] == 1
        before = {
            name: search(client, name, vectors=q.tolist(), k=5)
            if name == raw_name
            else search(client, name, query="a cat resting on a mat", k=5)
            for name in (text_name, raw_name)
        }
        assert "cat" not in [h["id"] for h in before[raw_name]]

    with app_client(settings, fake=True) as client:  # a restart: snapshot at shutdown, reload, same answers
        for name in (text_name, raw_name):
            info = client.get(f"/v1/collections/{name}").json()
            assert info["documents"] == (5 if name == text_name else 4)
        assert search(client, raw_name, vectors=q.tolist(), k=5) == before[raw_name]
        assert search(client, text_name, query="a cat resting on a mat", k=5) == before[text_name]


def test_bad_input_gets_clear_4xx_and_changes_nothing(settings, fake_model):
    mv, dense = unique_name("mvbad"), unique_name("dense")
    tok = fake_model.encode_tokens(["hello world"], "document")[0]
    with app_client(settings, fake=True) as client:
        assert client.post("/v1/collections", json={"name": mv, "multivector": {"max_tokens": 8}}).status_code == 201
        assert client.post("/v1/collections", json={"name": dense}).status_code == 201

        def put(name, *docs):
            return client.put(f"/v1/collections/{name}/documents", json={"documents": list(docs)})

        assert put(mv, {"id": "ok", "text": "hello world"}).status_code == 200
        cases = [
            ({"id": "x", "vectors": [[0.1] * 384, [0.1] * 10]}, "invalid_tokens"),  # ragged
            ({"id": "x", "vectors": []}, "invalid_tokens"),  # empty
            ({"id": "x", "vectors": [[0.1] * 100]}, "wrong_dimension"),
            ({"id": "x", "vectors_b64": b64(np.ones((2, 100)))}, "wrong_dimension"),
            ({"id": "x", "vectors_b64": "not base64!!"}, "invalid_tokens"),
            ({"id": "x", "vectors": [[0.5] * 384] * 9}, "too_many_tokens"),
            ({"id": "x", "text": "one two three four five six seven eight nine ten"}, "too_many_tokens"),
            ({"id": "x", "vector": [0.1] * 384}, "multivector_collection"),  # a dense-only operation
        ]
        for doc, code in cases:
            r = put(mv, {"id": "fine", "vectors": tok.tolist()}, doc)
            assert r.status_code == 422 and r.json()["error"]["code"] == code, (doc.get("id"), r.text)
        nan = put(mv, {"id": "x", "vectors_b64": b64(np.full((1, 384), np.nan), "<f4")})
        assert nan.status_code == 422 and nan.json()["error"]["code"] == "non_finite"
        assert client.get(f"/v1/collections/{mv}").json()["documents"] == 1
        assert search(client, mv, 422, vector=[0.1] * 384)["code"] == "multivector_collection"
        assert search(client, mv, 422, query="hello", dim=64)["code"] == "multivector_collection"
        assert search(client, mv, 422, vectors=[[0.1] * 3])["code"] == "wrong_dimension"
        assert search(client, mv, 422, query="hello", vectors=tok.tolist())["code"] == "missing_query"
        assert search(client, mv, 422, query="hello", candidates=0)["code"] == "invalid_request"
        r = client.post(f"/v1/collections/{mv}/elasticizer/refit", json={})
        assert r.status_code == 422 and r.json()["error"]["code"] == "multivector_collection"
        for body, code in (({"dim": 64}, "multivector_collection"), ({"queries": 500}, "too_many_queries")):
            r = client.post(f"/v1/collections/{mv}/recall", json=body)
            assert r.status_code == 422 and r.json()["error"]["code"] == code
        report = client.post(f"/v1/collections/{mv}/recall", json={"queries": 5, "k": 1}).json()
        assert {(s["index"], s["stage"]) for s in report["stages"]} == {("fde", "index"), ("fde", "final")}
        r = client.post("/v1/embeddings", json={"input": "x", "collection": mv})
        assert r.status_code == 422 and r.json()["error"]["code"] == "multivector_collection"
        # and the reverse: multi-vector operations on a dense collection
        r = put(dense, {"id": "x", "vectors": tok.tolist()})
        assert r.status_code == 422 and r.json()["error"]["code"] == "dense_collection"
        assert search(client, dense, 422, vectors=tok.tolist())["code"] == "dense_collection"
        assert search(client, dense, 422, query="hello", candidates=50)["code"] == "dense_collection"
        for bad in ({"dims": [64]}, {"metric": "l2"}, {"dim": 384}, {"elasticizer": {"kind": "pca"}}):
            r = client.post("/v1/collections", json={"name": unique_name("mvx"), "multivector": {}, **bad})
            assert r.status_code == 422 and r.json()["error"]["code"] == "multivector_collection", (bad, r.text)
        r = client.post(
            "/v1/collections",
            json={"name": unique_name("mvx"), "model": settings.default_model, "multivector": {"token_dim": 100}},
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "wrong_dimension"
        r = client.post(
            "/v1/collections",
            json={"name": unique_name("mvx"), "multivector": {"repetitions": 128, "simhash_bits": 10}},
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_multivector"
