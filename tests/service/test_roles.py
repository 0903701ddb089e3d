"""Roles on a shared backend: serving replicas measure recall but change no setting; the one
maintenance process measures each collection with a recall target by itself (its stored
documents as queries) and steers ef, and the serving replicas read the ef it set."""

import time

import numpy as np
import pytest

from service.settings import Settings
from tests.support.app import app_client

qdrant_client = pytest.importorskip("qdrant_client", reason="the qdrant extra is part of the test install")


def test_roles_need_a_shared_backend(tmp_path):
    with pytest.raises(ValueError):
        Settings(data_dir=tmp_path, role="serve")
    assert (
        Settings(data_dir=tmp_path, role="maintenance", backend="qdrant", qdrant_path=":memory:").role == "maintenance"
    )


@pytest.fixture
def shared_qdrant(monkeypatch):
    """One in-memory Qdrant that every app opened in the test uses. qdrant-client's local mode is
    one process: both roles run here over it (the catalogs are separate, as in two processes;
    only the client is shared)."""
    import index

    client = qdrant_client.QdrantClient(location=":memory:")
    close = client.close
    monkeypatch.setattr(client, "close", lambda: None)  # each app closes its catalog: not the shared client
    real = index.open_qdrant_catalog

    def shared(**kwargs):
        from index.qdrant import qdrant_catalog

        return qdrant_catalog(client, refresh_s=0.0)

    monkeypatch.setattr("service.engine.open_qdrant_catalog", shared)
    yield client
    close()
    assert real is index.open_qdrant_catalog


def test_the_maintenance_process_steers_and_replicas_follow(tmp_path, shared_qdrant):
    common = dict(
        backend="qdrant",
        qdrant_path=":memory:",
        recall_sample_rate=1.0,
        recall_max_busy=1.0,
        recall_controller_window=5,
    )
    serving = Settings(data_dir=tmp_path / "a", role="serve", **common)
    maintenance = Settings(data_dir=tmp_path / "b", role="maintenance", recall_probe_interval_s=0.05, **common)
    X = np.random.default_rng(0).standard_normal((400, 16)).astype(np.float32)
    with app_client(serving, fake=True) as replica:
        r = replica.post("/v1/collections", json={"name": "c", "dim": 16, "hnsw": {"ef_search": 200}})
        assert r.status_code == 201
        docs = [{"id": str(i), "vector": x.tolist()} for i, x in enumerate(X)]
        assert replica.put("/v1/collections/c/documents", json={"documents": docs}).status_code == 200
        patch = {"target_recall": 0.5, "ef_min": 10, "ef_max": 200}
        assert replica.patch("/v1/collections/c", json=patch).status_code == 200
        for x in X[:30]:  # sampled and measured on the replica, which must not steer
            assert replica.post("/v1/collections/c/search", json={"vector": x.tolist(), "k": 10}).status_code == 200
        assert replica.app.state.engine.recall.wait_idle(60)
        assert replica.get("/v1/collections/c").json()["recall"]["ef_search"]["16"] == 200
        with app_client(maintenance, fake=True) as steward:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ef = steward.get("/v1/collections/c").json()["recall"]["ef_search"]["16"]
                if ef < 200:
                    break
                time.sleep(0.1)
            assert ef < 200  # local mode is exact: every measurement says 1.0, so ef goes down
            # Qdrant re-runs no what-ifs: the controller searches over the live setting
            assert steward.get("/v1/collections/c").json()["recall"]["controllers"]["16"]["search"] == "bracket"
        assert replica.get("/v1/collections/c").json()["recall"]["ef_search"]["16"] == ef


def test_the_maintenance_process_sweeps_what_a_dead_create_left_and_replicas_do_not(
    tmp_path, shared_qdrant, monkeypatch
):
    """A create that died between making its physical collection and writing its entry leaves
    data no entry names; no create of that name comes. The maintenance process removes it once
    its note is old enough; a serving replica never does (it runs no upkeep of the catalog)."""
    monkeypatch.setattr("service.maintenance.LEFTOVER_SWEEP_S", 0.0)
    monkeypatch.setattr("index.shared_catalog.LEFTOVER_AGE_S", 0.0)
    common = dict(backend="qdrant", qdrant_path=":memory:", snapshot_interval_s=0.05)

    def physicals() -> list[str]:
        return sorted(c.name for c in shared_qdrant.get_collections().collections if c.name != "vecnest.manifests")

    with app_client(Settings(data_dir=tmp_path / "a", role="serve", **common), fake=True) as replica:
        assert replica.post("/v1/collections", json={"name": "kept", "dim": 8}).status_code == 201
        catalog = replica.app.state.engine.catalog

        def dies(*args, **kwargs):
            raise RuntimeError("the process died here")

        with monkeypatch.context() as m:
            m.setattr(catalog, "_put_collection", dies)
            r = replica.post("/v1/collections", json={"name": "lost", "dim": 8})
        assert r.status_code == 503 and len(physicals()) == 2
        time.sleep(1.0)  # many ticks of the replica's upkeep
        assert len(physicals()) == 2 and len(catalog.engine.meta.find("leftover")) == 1
        with app_client(Settings(data_dir=tmp_path / "b", role="maintenance", **common), fake=True):
            deadline = time.monotonic() + 60
            while len(physicals()) > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert len(physicals()) == 1 and catalog.engine.meta.find("leftover") == []
        assert replica.get("/v1/collections").json()["collections"][0]["name"] == "kept"
