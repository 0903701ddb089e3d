"""vecnest with `backend=qdrant` (qdrant-client's local mode, in memory): the same HTTP API and
answers as on the embedded backend for dense collections; what this backend does not do yet
answers one clear 422 (`backend_unsupported`), never a 500."""

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.support import TEXTS, unique_name
from tests.support.app import app_client, fake_loader

pytest.importorskip("qdrant_client", reason="the qdrant extra is part of the test install")


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    """One app per backend, the same settings otherwise."""
    embedded = Settings(data_dir=tmp_path_factory.mktemp("embedded") / "data", snapshot_interval_s=3600)
    qdrant = Settings(data_dir=tmp_path_factory.mktemp("qdrant") / "data", backend="qdrant", qdrant_path=":memory:")
    with app_client(embedded, fake=True) as a, app_client(qdrant, fake=True) as b:
        yield a, b


def both(clients, method, path, **kwargs):
    """The same request to each backend: (embedded response, qdrant response)."""
    return tuple(c.request(method, path, **kwargs) for c in clients)


def test_the_same_answers_as_the_embedded_backend(clients):
    name = unique_name()
    for r in both(
        clients, "POST", "/v1/collections", json={"name": name, "dims": [64, 384], "elasticizer": {"kind": "none"}}
    ):
        assert r.status_code == 201, r.text
    docs = [
        {"id": k, "text": v, "metadata": {"topic": k, "n": i, "even": i % 2 == 0}}
        for i, (k, v) in enumerate(TEXTS.items())
    ]
    for r in both(clients, "PUT", f"/v1/collections/{name}/documents", json={"documents": docs}):
        assert r.status_code == 200 and r.json()["upserted"] == len(TEXTS), r.text
    searches = [
        {"query": "a cat sat on the mat", "k": 3, "exact": True},
        {"query": "space", "k": 5, "exact": True, "include": ["text", "metadata"]},
        {"query": "space", "k": 5, "dim": 64, "exact": True, "rerank_factor": 5},
        {"query": "anything", "k": 5, "exact": True, "filter": {"even": True}},
        {"query": "anything", "k": 5, "exact": True, "filter": {"n": 2.0}},
    ]
    for body in searches:
        embedded, qdrant = both(clients, "POST", f"/v1/collections/{name}/search", json=body)
        assert embedded.status_code == qdrant.status_code == 200, qdrant.text
        a, b = embedded.json()["results"], qdrant.json()["results"]
        assert [h["id"] for h in a] == [h["id"] for h in b], body
        assert np.allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-5)
        assert [h.get("metadata") for h in a] == [h.get("metadata") for h in b]
        assert [h.get("text") for h in a] == [h.get("text") for h in b]
    embedded, qdrant = both(clients, "GET", f"/v1/collections/{name}/documents/cat?include_vector=true")
    assert qdrant.status_code == 200 and qdrant.json()["text"] == embedded.json()["text"]
    assert np.allclose(qdrant.json()["vector"], embedded.json()["vector"], atol=1e-6)
    for r in both(clients, "POST", f"/v1/collections/{name}/documents/delete", json={"ids": ["cat", "nope"]}):
        assert r.status_code == 200 and r.json()["deleted"] == 1 and r.json()["not_found"] == ["nope"]
    for r in both(clients, "GET", f"/v1/collections/{name}"):
        assert r.status_code == 200 and r.json()["documents"] == len(TEXTS) - 1
    for r in both(clients, "GET", f"/v1/collections/{name}/documents/cat"):
        assert r.status_code == 404 and r.json()["error"]["code"] == "document_not_found"
    for r in both(clients, "DELETE", f"/v1/collections/{name}"):
        assert r.status_code == 204
    for r in both(clients, "GET", f"/v1/collections/{name}"):
        assert r.status_code == 404


def test_multivector_collections_answer_the_same(clients):
    name = unique_name()
    for r in both(clients, "POST", "/v1/collections", json={"name": name, "multivector": {}}):
        assert r.status_code == 201, r.text
    docs = [{"id": k, "text": v, "metadata": {"topic": k}} for k, v in TEXTS.items()]
    for r in both(clients, "PUT", f"/v1/collections/{name}/documents", json={"documents": docs}):
        assert r.status_code == 200, r.text
    for body in ({"query": "a cat sat on the mat", "k": 3}, {"query": "space", "k": 5, "exact": True}):
        embedded, qdrant = both(clients, "POST", f"/v1/collections/{name}/search", json=body)
        assert embedded.status_code == qdrant.status_code == 200, qdrant.text
        a, b = embedded.json()["results"], qdrant.json()["results"]
        assert [h["id"] for h in a] == [h["id"] for h in b], body
        assert np.allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-3)
    embedded, qdrant = both(clients, "GET", f"/v1/collections/{name}/documents/cat?include_vector=true")
    assert qdrant.status_code == 200 and np.allclose(qdrant.json()["vectors"], embedded.json()["vectors"], atol=1e-3)


def test_bad_requests_are_the_same_4xx(clients):
    name = unique_name()
    for r in both(clients, "POST", "/v1/collections", json={"name": name}):
        assert r.status_code == 201
    bad = [
        ("PUT", "documents", {"documents": [{"id": "x", "vector": [0.1] * 5}]}, "wrong_dimension"),
        ("POST", "search", {"vector": [0.0] * 384}, None),
        ("POST", "search", {"query": "x", "dim": 7}, None),
        ("POST", "search", {"query": "x", "candidates": 5}, "dense_collection"),
    ]
    for method, path, body, code in bad:
        embedded, qdrant = both(clients, method, f"/v1/collections/{name}/{path}", json=body)
        assert embedded.status_code == qdrant.status_code == 422, (body, qdrant.text)
        assert code is None or qdrant.json()["error"]["code"] == embedded.json()["error"]["code"] == code
    for r in both(clients, "POST", "/v1/collections", json={"name": name}):
        assert r.status_code == 409


def test_what_the_qdrant_backend_does_not_do_is_a_clear_422(clients):
    _, qdrant = clients
    name = unique_name()
    r = qdrant.post("/v1/collections", json={"name": name, "dims": [64, 384]})
    assert r.status_code == 201 and r.json()["elasticizer"]["kind"] == "pca"  # as on the embedded backend
    refused = [
        qdrant.post(f"/v1/collections/{name}/snapshots"),
        qdrant.get(f"/v1/collections/{name}/snapshots"),
    ]
    for r in refused:
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "backend_unsupported"
        assert "the backend's own snapshots" in r.json()["error"]["message"]
    # ... and the schema lists only what this server serves (generated clients, fuzzers)
    embedded_paths, qdrant_paths = (r.json()["paths"] for r in both(clients, "GET", "/openapi.json"))
    archive_paths = {p for p in embedded_paths if "snapshots" in p}
    assert len(archive_paths) == 4 and not archive_paths & set(qdrant_paths)
    assert set(qdrant_paths) == set(embedded_paths) - archive_paths


def test_metrics_export_what_a_qdrant_collection_has(clients):
    """/metrics on a shared backend: the gauges its collections' stats hold (documents, ef per
    index, recall and upgrade state); none of the embedded store's files and graph slots."""
    _, qdrant = clients
    name = unique_name()
    assert qdrant.post("/v1/collections", json={"name": name, "dims": [64, 384]}).status_code == 201
    docs = [{"id": k, "text": v} for k, v in TEXTS.items()]
    assert qdrant.put(f"/v1/collections/{name}/documents", json={"documents": docs}).status_code == 200
    r = qdrant.get("/metrics")
    assert r.status_code == 200, r.text
    assert f'vecnest_collection_documents{{collection="{name}"}} {float(len(TEXTS))}' in r.text
    assert f'vecnest_ef_search{{collection="{name}",index="64"}} 100.0' in r.text
    assert f'vecnest_upgrade_active{{collection="{name}"}} 0.0' in r.text
    assert f'vecnest_store_bytes{{collection="{name}"}}' not in r.text


def test_ef_and_recall_settings_and_measurements(clients):
    _, qdrant = clients
    name = unique_name()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    assert qdrant.post("/v1/collections", json={"name": name, "dim": 16}).status_code == 201
    docs = [{"id": str(i), "vector": x.tolist()} for i, x in enumerate(X)]
    assert qdrant.put(f"/v1/collections/{name}/documents", json={"documents": docs}).status_code == 200
    r = qdrant.patch(f"/v1/collections/{name}", json={"target_recall": 0.9, "recall_sample_rate": 0.5})
    assert r.status_code == 200, r.text
    assert qdrant.get(f"/v1/collections/{name}").json()["recall"]["target_recall"] == 0.9
    r = qdrant.post(f"/v1/collections/{name}/recall", json={"queries": 20})
    assert r.status_code == 200, r.text
    top = qdrant.post(f"/v1/collections/{name}/search", json={"vector": X[7].tolist(), "k": 1}).json()
    assert top["results"][0]["id"] == "7"


def test_a_failing_backend_is_a_503_never_a_500(tmp_path):
    """Qdrant gone after start-up (here: its client closed under the service): every request that
    needs it answers 503 backend_unavailable; an unreachable Qdrant at start-up leaves the
    server not ready, with the reason."""
    settings = Settings(data_dir=tmp_path / "data", backend="qdrant", qdrant_path=":memory:")
    with app_client(settings, fake=True) as client:
        assert client.post("/v1/collections", json={"name": "c", "dim": 4}).status_code == 201
        catalog = client.app.state.engine.catalog
        catalog.engine._client.close()
        for method, path, body in [
            ("PUT", "/v1/collections/c/documents", {"documents": [{"id": "a", "vector": [1, 0, 0, 0]}]}),
            ("POST", "/v1/collections/c/search", {"vector": [1, 0, 0, 0]}),
            ("GET", "/v1/collections/c/documents/a", None),
            ("POST", "/v1/collections", {"name": "d", "dim": 4}),
        ]:
            r = client.request(method, path, json=body)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"]["code"] == "backend_unavailable"
    unreachable = Settings(
        data_dir=tmp_path / "other", backend="qdrant", qdrant_url="http://127.0.0.1:9", qdrant_timeout_s=2
    )
    app = create_app(unreachable, encoder_loader=fake_loader)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 60
        while app.state.engine.fatal is None and time.monotonic() < deadline:
            time.sleep(0.05)
        r = client.get("/readyz")
        assert r.status_code == 503 and "Qdrant" in r.text, r.text
        r = client.get("/v1/collections")
        assert r.status_code == 503 and r.json()["error"]["code"] == "start_failed"


def test_the_pca_rotation_is_fitted_by_the_maintenance_thread(clients):
    _, qdrant = clients
    name = unique_name()
    body = {"name": name, "dims": [64, 384], "elasticizer": {"kind": "pca", "fit_at": 50}}
    assert qdrant.post("/v1/collections", json=body).status_code == 201
    docs = [{"id": f"t{i}", "text": f"{w} note {i}"} for i, w in enumerate(list(TEXTS.values()) * 10)]
    assert qdrant.put(f"/v1/collections/{name}/documents", json={"documents": docs}).status_code == 200
    deadline = time.monotonic() + 60
    while qdrant.get(f"/v1/collections/{name}").json()["rotation"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    rotation = qdrant.get(f"/v1/collections/{name}").json()["rotation"]
    assert rotation is not None and rotation["n_fit"] == len(docs) and 0.5 < rotation["energy"]["64"] <= 1.0
    first = docs[3]
    hit = qdrant.post(f"/v1/collections/{name}/search", json={"query": first["text"], "k": 1, "dim": 64}).json()
    assert hit["results"][0]["id"] == first["id"]


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/v1/collections/{name}/search", {"vector": [1, 0, 0, 0]}),
        ("PUT", "/v1/collections/{name}/documents", {"documents": [{"id": "b", "vector": [0, 1, 0, 0]}]}),
        ("POST", "/v1/embeddings", {"input": ["a text"], "collection": "{name}"}),
    ],
)
def test_a_slow_catalog_read_holds_up_no_other_request(tmp_path, method, path, body):
    """A request reads its collection's catalog entry from the engine (once per
    `manifest_refresh_s`, to see other replicas' changes), up to the engine's timeout while it
    is away. That read runs off the event loop: here it is held, and /healthz is answered
    meanwhile."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    settings = Settings(data_dir=tmp_path / "data", backend="qdrant", qdrant_path=":memory:", manifest_refresh_s=0.01)
    with app_client(settings, fake=True) as client:
        assert client.post("/v1/collections", json={"name": "c", "dim": 4}).status_code == 201
        docs = {"documents": [{"id": "a", "vector": [1, 0, 0, 0]}]}
        assert client.put("/v1/collections/c/documents", json=docs).status_code == 200
        meta = client.app.state.engine.catalog.engine.meta
        get, entered, release = meta.get, threading.Event(), threading.Event()

        def held_get(key):
            if key == "collection:c" and threading.current_thread().name != "vecnest-maintenance":
                entered.set()
                release.wait(60)
            return get(key)

        meta.get = held_get
        time.sleep(0.05)  # past manifest_refresh_s: the request reads the engine
        with ThreadPoolExecutor(2) as pool:
            body = json.loads(json.dumps(body).replace("{name}", "c")) if body else None
            read = pool.submit(client.request, method, path.format(name="c"), json=body)
            try:
                assert entered.wait(30), "the request never read the catalog"
                health = pool.submit(client.get, "/healthz")
                assert health.result(10).status_code == 200  # answered while the read is held
                assert not read.done(), read.result().text
            finally:
                release.set()
                meta.get = get
            assert read.result(60).status_code < 500, read.result().text
