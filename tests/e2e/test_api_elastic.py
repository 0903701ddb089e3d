"""Elastic dimensions over HTTP: Matryoshka routing, the PCA elasticizer, layers, embeddings."""

import os
import time

import numpy as np
import pytest

from index.elastic import DimView
from service.settings import Settings
from tests.support import unique_name
from tests.support.app import app_client
from tests.support.evaluate import overlap_at_k


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(
        data_dir=tmp_path_factory.mktemp("elastic") / "data", snapshot_interval_s=3600, allow_model_paths=True
    )


@pytest.fixture(scope="module")
def client(settings):
    with app_client(settings) as c:
        yield c


@pytest.fixture(scope="module")
def glossed(client, glosses):
    """A collection with dims [64, 96, 384] holding 2,000 glosses (as vectors: the model already
    embedded them), the PCA rotation fitted through the refit endpoint."""
    texts, X = glosses
    name = unique_name("elastic")
    r = client.post("/v1/collections", json={"name": name, "dims": [96, 64, 384]})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["dims"] == [64, 96, 384] and info["elasticizer"]["kind"] == "pca" and info["rotation"] is None
    assert info["rerank_factors"] == {"64": 9, "96": 6}
    for start in range(0, 2000, 500):
        docs = [{"id": f"g{i}", "text": texts[i], "vector": X[i].tolist()} for i in range(start, start + 500)]
        assert client.put(f"/v1/collections/{name}/documents", json={"documents": docs}).status_code == 200
    return name, X


def search(client, name, **body):
    r = client.post(f"/v1/collections/{name}/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_refit_then_funnel_matches_full_dim(client, glossed):
    name, X = glossed
    r = client.post(f"/v1/collections/{name}/elasticizer/refit", json={"seed": 1})
    assert r.status_code == 200, r.text
    rotation = r.json()["rotation"]
    assert rotation["n_fit"] == 2000 and rotation["seed"] == 1
    assert 0 < rotation["energy"]["64"] < rotation["energy"]["96"] < rotation["energy"]["384"] <= 1.0
    assert client.get(f"/v1/collections/{name}").json()["rotation"]["sha256"] == rotation["sha256"]
    queries = X[2000:2200]
    full = [[h["id"] for h in search(client, name, vector=q.tolist(), k=10, include=[])] for q in queries]
    funnel = [[h["id"] for h in search(client, name, vector=q.tolist(), k=10, dim=96, include=[])] for q in queries]
    assert overlap_at_k(funnel, full, 10) >= 0.95


def test_rerank_false_gives_low_dim_scores(client, glossed):
    name, X = glossed
    q = X[2300].tolist()
    low = search(client, name, vector=q, k=5, dim=64, rerank=False, include=["vector"])
    high = search(client, name, vector=q, k=5, dim=64, include=["vector"])
    # funnel scores are exact full-dim cosines; low-dim scores are cosines of 64-dim prefixes
    assert [h["score"] for h in high] == pytest.approx([float(np.dot(h["vector"], q)) for h in high], abs=1e-5)
    assert any(abs(a["score"] - float(np.dot(a["vector"], q))) > 1e-3 for a in low)


def test_bad_elastic_requests(client, glossed):
    name, X = glossed
    url = f"/v1/collections/{name}/search"
    r = client.post(url, json={"vector": X[0].tolist(), "dim": 128})
    assert (
        r.status_code == 422
        and r.json()["error"]["code"] == "invalid_dim"
        and "[64, 96, 384]" in r.json()["error"]["message"]
    )
    assert client.post(url, json={"vector": X[0].tolist(), "dim": 64, "rerank_factor": 0}).status_code == 422
    assert client.post(url, json={"query": "x", "layers": 7}).json()["error"]["code"] == "invalid_layers"
    bad_creates = [
        ({"dims": [500]}, "invalid_dims"),
        ({"dims": [0]}, "invalid_request"),
        ({"dims": [64, 64]}, "invalid_dims"),
        ({"layers": 9}, "invalid_layers"),
        ({"layers": 0}, "invalid_request"),
        ({"dim": 8, "layers": 2}, "invalid_layers"),
        ({"elasticizer": {"kind": "svd"}}, "invalid_request"),
    ]
    for extra, code in bad_creates:
        n = unique_name()
        r = client.post("/v1/collections", json={"name": n, **extra})
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (extra, r.text)
        assert client.get(f"/v1/collections/{n}").status_code == 404
    empty = unique_name()
    client.post("/v1/collections", json={"name": empty, "dims": [64, 384]})
    r = client.post(f"/v1/collections/{empty}/elasticizer/refit")
    assert r.status_code == 422 and r.json()["error"]["code"] == "empty_collection"
    assert client.get(f"/v1/collections/{empty}").json()["rotation"] is None
    full_only = unique_name()
    client.post("/v1/collections", json={"name": full_only})
    assert client.post(f"/v1/collections/{full_only}/elasticizer/refit").json()["error"]["code"] == "no_low_dims"
    bad_embed = client.post("/v1/embeddings", json={"input": "x", "dimensions": 385})
    assert bad_embed.status_code == 422 and bad_embed.json()["error"]["code"] == "invalid_dimensions"


def test_embeddings_dimensions_plain_and_rotated(client, glossed, minilm):
    name, _ = glossed
    texts = ["Matryoshka dolls nest inside each other.", "The stock market closed higher."]
    full = minilm.encode(texts, "document")
    plain = np.array(
        [d["embedding"] for d in client.post("/v1/embeddings", json={"input": texts, "dimensions": 64}).json()["data"]]
    )
    theirs = minilm._model.encode(texts, truncate_dim=64, normalize_embeddings=True)
    assert np.abs(plain - theirs).max() <= 1e-5
    r = client.post("/v1/embeddings", json={"input": texts, "dimensions": 64, "collection": name})
    rotated = np.array([d["embedding"] for d in r.json()["data"]])
    R = np.load(
        os.path.join(
            client.app.state.engine.settings.data_dir,
            "collections",
            name,
            "rotations",
            client.get(f"/v1/collections/{name}").json()["rotation"]["file"],
        )
    )
    assert np.abs(rotated - DimView(64, 384, "cosine", R).apply(full)).max() <= 1e-5
    assert np.allclose(np.linalg.norm(rotated, axis=1), 1.0, atol=1e-5)


def test_layers_for_documents_queries_and_embeddings(client, minilm):
    name = unique_name("layers")
    r = client.post("/v1/collections", json={"name": name, "layers": 3})
    assert r.status_code == 201 and r.json()["layers"] == 3
    text = "A heron stands motionless in the shallow water."
    client.put(
        f"/v1/collections/{name}/documents",
        json={
            "documents": [{"id": "heron", "text": text}, {"id": "tax", "text": "Income tax returns are due in April."}]
        },
    )
    stored = client.get(f"/v1/collections/{name}/documents/heron", params={"include_vector": True}).json()["vector"]
    assert np.abs(np.array(stored) - minilm.encode([text], "document", layers=3)[0]).max() <= 1e-5
    assert np.abs(np.array(stored) - minilm.encode([text], "document")[0]).max() > 1e-2  # not the full model
    assert search(client, name, query="a wading bird", k=1)[0]["id"] == "heron"
    two = client.post("/v1/embeddings", json={"input": text, "layers": 2}).json()["data"][0]["embedding"]
    assert np.abs(np.array(two) - minilm.encode([text], "document", layers=2)[0]).max() <= 1e-5


def test_a_declared_matryoshka_model_truncates_natively(client, tmp_path, minilm):
    model_dir = tmp_path / "mrl-model"
    model_dir.mkdir()
    for entry in os.listdir(minilm.path):  # the same weights, declared Matryoshka-trained
        os.symlink(os.path.join(minilm.path, entry), model_dir / entry)
    (model_dir / "vecnest.json").write_text('{"matryoshka_dims": [384, 128, 64]}')
    name = unique_name("mrl")
    r = client.post("/v1/collections", json={"name": name, "model": str(model_dir), "dims": [64, 384]})
    assert r.status_code == 201, r.text
    assert r.json()["elasticizer"]["kind"] == "none"
    r = client.post(f"/v1/collections/{name}/elasticizer/refit")
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_elasticizer"


def test_auto_fit_and_restart_keep_dims_and_rotation(tmp_path, glosses):
    _, X = glosses
    settings = Settings(data_dir=tmp_path / "data", snapshot_interval_s=3600)
    with app_client(settings) as client:
        client.post("/v1/collections", json={"name": "auto", "dims": [64, 384], "elasticizer": {"fit_at": 300}})
        docs = [{"id": f"g{i}", "vector": X[i].tolist()} for i in range(400)]
        client.put("/v1/collections/auto/documents", json={"documents": docs})
        deadline = time.monotonic() + 30
        while client.get("/v1/collections/auto").json()["rotation"] is None and time.monotonic() < deadline:
            time.sleep(0.2)
        rotation = client.get("/v1/collections/auto").json()["rotation"]
        assert rotation is not None and rotation["n_fit"] >= 300
        before = [
            [h["id"] for h in search(client, "auto", vector=q.tolist(), k=5, dim=64, include=[])] for q in X[400:450]
        ]
    with app_client(settings) as client:
        info = client.get("/v1/collections/auto").json()
        assert info["dims"] == [64, 384] and info["rotation"]["sha256"] == rotation["sha256"]
        after = [
            [h["id"] for h in search(client, "auto", vector=q.tolist(), k=5, dim=64, include=[])] for q in X[400:450]
        ]
        assert after == before
