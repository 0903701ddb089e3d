"""Encoder upgrades on a shared backend, over HTTP, with model-free encoders (the model is not
the point here; tests/e2e/test_upgrades.py upgrades real models on the embedded backend).

On a shared engine a collection's generations are collections of the engine, its upgrade
records are entries in it, and cut-over is one write of the collection's entry. One process
runs an upgrade (role all, or the maintenance process); serving replicas follow it: while it
is live every write lands in both generations before it is acknowledged, new-model queries go
through the map, and a cut-over or rollback reaches them within the refresh times."""

import time

import pytest

from service.settings import Settings
from tests.support.app import app_client
from tests.support.milvus import MilvusServer

pytest.importorskip("qdrant_client", reason="the qdrant extra is part of the test install")

FAST = dict(  # replicas notice changes within 0.1 s here (seconds in production)
    manifest_refresh_s=0.05,
    upgrade_follow_s=0.05,
    upgrade_settle_s=0.3,
    upgrade_poll_s=0.05,
    models={"new-model": "/models/new-model"},  # a FakeEncoder, like every model here
)
# Fake encoders of two names give the same vectors, but a map fitted on a small sample of 384-d
# bag-of-words vectors generalises poorly (held-out texts hold words the fit never saw): a gate
# this lenient passes, so the mapped path is the one exercised.
LENIENT = {"min_cosine": 0.3, "min_recall": 0.3}
WORDS = ["cat", "dog", "river", "mountain", "music", "physics", "bread", "garden", "winter", "ocean"]


def texts(n: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"d{i}", "text": f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]} note {i}", "metadata": {"i": i}}
        for i in range(start, start + n)
    ]


def wait_for(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def upgrade_state(client, name: str, upgrade_id: str) -> dict:
    r = client.get(f"/v1/collections/{name}/upgrades/{upgrade_id}")
    assert r.status_code == 200, r.text
    return r.json()


def caught_up(client, name: str, upgrade_id: str) -> bool:
    info = upgrade_state(client, name, upgrade_id)
    return info["state"] == "backfilling" and bool((info.get("progress") or {}).get("caught_up"))


def test_an_upgrade_on_qdrant_end_to_end(tmp_path):
    """One process (role all) over Qdrant: fit, backfill, mixed serving, cut-over, rollback,
    then a second upgrade finalized; the engine is left with one generation."""
    settings = Settings(data_dir=tmp_path / "data", backend="qdrant", qdrant_path=":memory:", **FAST)
    with app_client(settings, fake=True) as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        assert c.put("/v1/collections/kb/documents", json={"documents": texts(300)}).status_code == 200
        r = c.post("/v1/collections/kb/upgrades", json={"model": "new-model", "sample": 100, **LENIENT})
        assert r.status_code == 202, r.text
        upgrade = r.json()["id"]
        wait_for(lambda: caught_up(c, "kb", upgrade), "the backfill")
        info = upgrade_state(c, "kb", upgrade)
        assert info["gate"]["passed"] and info["progress"]["total"] == 300
        hit = c.post("/v1/collections/kb/search", json={"query": texts(1, 7)[0]["text"], "k": 3}).json()
        assert hit["upgrade"]["queries"] == "mapped" and hit["results"][0]["id"] == "d7"
        assert c.put("/v1/collections/kb/documents", json={"documents": texts(1, 300)}).status_code == 200
        r = c.post(f"/v1/collections/kb/upgrades/{upgrade}/cutover")
        assert r.status_code == 200 and r.json()["state"] == "cut_over", r.text
        described = c.get("/v1/collections/kb").json()
        assert described["model"] == "new-model" and described["documents"] == 301
        assert c.post("/v1/collections/kb/search", json={"query": texts(1, 300)[0]["text"], "k": 1}).json()["results"][
            0
        ]["id"] == ("d300")
        assert c.put("/v1/collections/kb/documents", json={"documents": texts(1, 301)}).status_code == 200
        r = c.post(f"/v1/collections/kb/upgrades/{upgrade}/rollback")
        assert r.status_code == 200 and r.json()["state"] == "rolled_back", r.text
        described = c.get("/v1/collections/kb").json()
        assert described["model"] == "all-MiniLM-L6-v2" and described["documents"] == 302  # the write after cut-over
        second = c.post("/v1/collections/kb/upgrades", json={"model": "new-model", "sample": 50}).json()["id"]
        wait_for(lambda: caught_up(c, "kb", second), "the second backfill")
        assert c.post(f"/v1/collections/kb/upgrades/{second}/cutover").status_code == 200
        assert c.post(f"/v1/collections/kb/upgrades/{second}/finalize").json()["state"] == "finalized"
        catalog = c.app.state.engine.catalog
        client, serving = catalog.engine._client, catalog.get("kb")
        kept = catalog.engine.physical("kb", f"gen-{second}", catalog._bound[serving].incarnation)
        wait_for(
            lambda: sorted(x.name for x in client.get_collections().collections) == [kept, "vecnest.manifests"],
            "the previous generations to be removed",
        )
        assert c.get("/v1/collections/kb").json()["documents"] == 302


@pytest.fixture
def replicas(tmp_path):
    """A maintenance process and a serving replica over one milvus-lite server (both apps in
    this process; the backend is a real separate server)."""
    pytest.importorskip("pymilvus", reason="the milvus extra is part of the test install")
    server = MilvusServer(tmp_path / "milvus").start()
    common = dict(backend="milvus", milvus_uri=server.uri, preload_default_model=False, **FAST)
    # The maintenance process compares generations in full only every 1000 s here: what reaches
    # the new generation meanwhile got there by the replica writing both.
    maintenance = Settings(data_dir=tmp_path / "m", role="maintenance", upgrade_shared_poll_s=1000, **common)
    serving = Settings(data_dir=tmp_path / "r", role="serve", **common)
    try:
        with app_client(maintenance, fake=True) as m, app_client(serving, fake=True) as r:
            yield m, r
    finally:
        server.stop()


def shadow_ids(m) -> set[str]:
    live = m.app.state.engine.upgrades.live("kb")
    return set(live.shadow.backend.contents())


def test_serving_replicas_follow_an_upgrade_the_maintenance_process_runs(replicas):
    m, r = replicas
    assert r.post("/v1/collections", json={"name": "kb"}).status_code == 201
    assert r.put("/v1/collections/kb/documents", json={"documents": texts(200)}).status_code == 200
    refused = r.post("/v1/collections/kb/upgrades", json={"model": "new-model"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "maintenance_only"
    upgrade = m.post("/v1/collections/kb/upgrades", json={"model": "new-model", "sample": 60, **LENIENT}).json()["id"]
    wait_for(lambda: caught_up(m, "kb", upgrade), "the backfill")
    assert [u["id"] for u in r.get("/v1/collections/kb/upgrades").json()["upgrades"]] == [upgrade]

    # the replica serves new-model queries through the map, as the maintenance process does
    hit = wait_for(
        lambda: (r.post("/v1/collections/kb/search", json={"query": texts(1, 11)[0]["text"], "k": 3}).json() or {}).get(
            "upgrade"
        ),
        "the replica to follow the upgrade",
    )
    assert hit["queries"] == "mapped" and hit["upgrade"] == upgrade
    # its writes and deletes land in both generations at once (no full comparison runs here)
    assert r.put("/v1/collections/kb/documents", json={"documents": texts(2, 500)}).status_code == 200
    assert r.delete("/v1/collections/kb/documents/d3").status_code == 204
    assert {"d500", "d501"} <= shadow_ids(m) and "d3" not in shadow_ids(m)

    cut = m.post(f"/v1/collections/kb/upgrades/{upgrade}/cutover")
    assert cut.status_code == 200, cut.text
    wait_for(lambda: r.get("/v1/collections/kb").json()["model"] == "new-model", "the replica to see the cut-over")
    assert r.get("/v1/collections/kb").json()["documents"] == 201
    found = r.post("/v1/collections/kb/search", json={"query": texts(1, 501)[0]["text"], "k": 1}).json()["results"]
    assert found[0]["id"] == "d501"
    # after the cut-over the replica keeps the previous generation in step too (for a rollback)
    wait_for(lambda: r.put("/v1/collections/kb/documents", json={"documents": texts(1, 600)}).status_code == 200, "w")
    assert "d600" in shadow_ids(m)
    assert m.post(f"/v1/collections/kb/upgrades/{upgrade}/rollback").status_code == 200
    wait_for(lambda: r.get("/v1/collections/kb").json()["model"] == "all-MiniLM-L6-v2", "the replica to roll back")
    assert r.get("/v1/collections/kb/documents/d600").status_code == 200
    assert r.get("/v1/collections/kb").json()["documents"] == 202


def test_the_gate_reports_every_map_family_and_the_labelled_queries(tmp_path):
    """The upgrade request chooses the map families and may carry labelled queries; the record
    reports each family's figures, the labelled bar and which family serves (embedded backend)."""
    settings = Settings(data_dir=tmp_path / "data", **FAST)
    with app_client(settings, fake=True) as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        assert c.put("/v1/collections/kb/documents", json={"documents": texts(200)}).status_code == 200
        labelled = [{"query": texts(1, i)[0]["text"], "relevant": [f"d{i}"]} for i in range(0, 200, 10)]
        body = {"model": "new-model", "sample": 150, "maps": ["orthogonal", "ridge"], "labelled_queries": labelled}
        r = c.post("/v1/collections/kb/upgrades", json=body)
        assert r.status_code == 202, r.text
        assert r.json()["map_kinds"] == ["orthogonal", "ridge"] and r.json()["labelled_queries"] == 20
        upgrade = r.json()["id"]
        info = wait_for(
            lambda: (lambda i: i if i["state"] == "backfilling" else None)(upgrade_state(c, "kb", upgrade)), "the fit"
        )
        assert set(info["fit"]["maps"]) == {"orthogonal", "ridge"}
        bar = info["fit"]["labelled"]["old_to_old_ndcg_at_10"]
        assert info["fit"]["labelled"]["queries"] == 20 and bar > 0.9  # each query is its document's own text
        for family in info["fit"]["maps"].values():
            assert 0 <= family["labelled_ndcg_at_10"] <= 1 and "mean_cosine" in family
        gate = info["gate"]
        assert gate["map"] in {"orthogonal", "ridge"} and set(gate["maps"]) == {"orthogonal", "ridge"}
        best = max(info["fit"]["maps"].values(), key=lambda f: f["labelled_ndcg_at_10"])["labelled_ndcg_at_10"]
        assert gate["passed"] == (best >= bar)  # the labelled criterion decided, not the thresholds
        bad = c.post("/v1/collections/kb/upgrades", json={"model": "new-model", "maps": ["mlp"]})
        assert bad.status_code == 422


@pytest.fixture
def milvus_server(tmp_path):
    pytest.importorskip("pymilvus", reason="the milvus extra is part of the test install")
    server = MilvusServer(tmp_path / "milvus").start()
    yield server
    server.stop()


def on_milvus(tmp_path, server: MilvusServer, **extra) -> Settings:
    """One process (role all) over `server`, comparing both generations often (0.1 s): an
    outage is met at once."""
    return Settings(
        data_dir=tmp_path / "data",
        backend="milvus",
        milvus_uri=server.uri,
        preload_default_model=False,
        upgrade_shared_poll_s=0.1,
        **FAST,
        **extra,
    )


def caught_up_upgrade(client, n_docs: int) -> str:
    """Collection kb with `n_docs` texts and an upgrade to new-model whose backfill has caught
    up; returns the upgrade's id."""
    assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
    assert client.put("/v1/collections/kb/documents", json={"documents": texts(n_docs)}).status_code == 200
    r = client.post("/v1/collections/kb/upgrades", json={"model": "new-model", "sample": n_docs // 2, **LENIENT})
    upgrade = r.json()["id"]
    wait_for(lambda: caught_up(client, "kb", upgrade), "the backfill")
    return upgrade


def test_a_backfill_waits_out_a_backend_restart(tmp_path, milvus_server):
    """A backfill runs for hours; the engine restarting meanwhile (here milvus-lite, stopped and
    started again on its data) is waited out, not the end of the upgrade: the status says what it
    waits for, and once the engine is back the backfill catches up and cuts over."""
    server = milvus_server
    with app_client(on_milvus(tmp_path, server), fake=True) as c:
        upgrade = caught_up_upgrade(c, 120)
        manager = c.app.state.engine.upgrades
        scraped = c.get("/metrics")  # a shared collection's gauges (its stats hold no store files)
        assert scraped.status_code == 200, scraped.text
        assert 'vecnest_collection_documents{collection="kb"} 120.0' in scraped.text
        assert 'vecnest_upgrade_active{collection="kb"} 1.0' in scraped.text

        server.stop()
        waiting = wait_for(lambda: getattr(manager.live("kb"), "unavailable", None), "the outage")
        assert "Milvus" in waiting and manager.live("kb").record.id == upgrade
        scraped = c.get("/metrics")  # metrics are wanted most now: served, without kb's gauges
        assert scraped.status_code == 200 and "vecnest_http_requests_total" in scraped.text, scraped.text
        server.start()

        def recovered() -> bool:  # the engine's client reconnects on its own: 503 until it has
            r = c.get(f"/v1/collections/kb/upgrades/{upgrade}")
            if r.status_code != 200 or r.json()["progress"]["waiting_for_backend"] is not None:
                return False
            return caught_up(c, "kb", upgrade)

        wait_for(recovered, "the backfill after the restart")
        assert upgrade_state(c, "kb", upgrade)["state"] == "backfilling"
        assert c.put("/v1/collections/kb/documents", json={"documents": texts(1, 120)}).status_code == 200
        wait_for(lambda: caught_up(c, "kb", upgrade), "the new write")
        cut = c.post(f"/v1/collections/kb/upgrades/{upgrade}/cutover")
        assert cut.status_code == 200 and cut.json()["state"] == "cut_over", cut.text
        assert c.get("/v1/collections/kb").json()["documents"] == 121


def test_an_upgrade_that_outwaits_its_patience_is_stored_failed_once_the_backend_is_back(tmp_path, milvus_server):
    """Past `upgrade_backend_patience_s` the upgrade fails; the backend being away is usually
    why, so "failed" cannot be written at once. It is written when the backend is back: the
    next start-up finds it failed, not "backfilling" to resume."""
    server, settings = milvus_server, on_milvus(tmp_path, milvus_server, upgrade_backend_patience_s=0.5)
    with app_client(settings, fake=True) as c:
        upgrade = caught_up_upgrade(c, 60)
        manager = c.app.state.engine.upgrades

        server.stop()
        wait_for(lambda: manager.live("kb").record.state == "failed", "the upgrade to fail")
        server.start()
        wait_for(lambda: manager.live("kb") is None, "the failure to be stored", timeout=90)
        info = upgrade_state(c, "kb", upgrade)
        assert info["state"] == "failed" and "NotReady" in info["error"], info
    with app_client(settings, fake=True) as c:  # a restart: the stored record says failed
        info = upgrade_state(c, "kb", upgrade)
        assert info["state"] == "failed", info
        assert c.app.state.engine.upgrades.live("kb") is None
        assert c.get("/v1/collections/kb").json()["documents"] == 60
