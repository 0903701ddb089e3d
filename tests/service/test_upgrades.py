"""Encoder upgrades over the API with model-free encoders: what belongs to the collection
rather than to one generation follows it through cut-over and rollback."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError

from service.settings import Settings
from tests.support.app import app_client


def wait_caught_up(c, name: str, upgrade_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = c.get(f"/v1/collections/{name}/upgrades/{upgrade_id}").json()
        if info["state"] == "backfilling" and info["progress"]["caught_up"]:
            return info
        time.sleep(0.05)
    raise AssertionError(f"the backfill never caught up: {info}")


def settings_of(c, name: str) -> tuple:
    info = c.get(f"/v1/collections/{name}").json()
    return info["limits"], info["recall"]["target_recall"], info["recall"]["ef_max"]


def test_settings_changed_during_an_upgrade_survive_its_cut_over_and_rollback(tmp_path):
    """PATCH reaches the generation that serves. The new generation copied the limits and the
    recall policy when the upgrade started, so a PATCH during the backfill (hours, on a large
    collection) was undone by the cut-over: a tightened limit, or a recall target, silently
    gone. The same held for a PATCH after the cut-over and a rollback."""
    settings = Settings(data_dir=tmp_path / "a", snapshot_interval_s=3600, models={"other": str(tmp_path)})
    with app_client(settings, fake=True) as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        docs = [{"id": f"d{i}", "text": f"document number {i} about topic {i % 7}"} for i in range(120)]
        assert c.put("/v1/collections/kb/documents", json={"documents": docs}).status_code == 200
        upgrade_id = c.post("/v1/collections/kb/upgrades", json={"model": "other", "sample": 50}).json()["id"]
        wait_caught_up(c, "kb", upgrade_id)

        during = {"limits": {"max_k": 7}, "target_recall": 0.9, "ef_max": 300}
        assert c.patch("/v1/collections/kb", json=during).status_code == 200
        r = c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/cutover")
        assert r.status_code == 200 and r.json()["state"] == "cut_over", r.text
        assert settings_of(c, "kb") == ({"max_k": 7}, 0.9, 300)
        r = c.post("/v1/collections/kb/search", json={"query": "topic 3", "k": 8})
        assert r.status_code == 422 and r.json()["error"]["code"] == "k_too_large", r.text

        after = {"limits": {"max_k": 5}, "target_recall": None}
        assert c.patch("/v1/collections/kb", json=after).status_code == 200
        assert c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/rollback").status_code == 200
        assert settings_of(c, "kb") == ({"max_k": 5}, None, 300)


def test_an_abort_during_a_cut_over_waits_for_it_and_is_refused(tmp_path):
    """An abort sent while a cut-over runs. Before, the abort was taken (the record still said
    "backfilling"): it deleted the new generation, and the cut-over then made that deleted
    folder the one that serves, so every later read failed and the next start could not open
    the collection. Now the abort waits for the cut-over and is refused (409), and the
    collection serves from the new generation, on this server and after a restart."""
    settings = Settings(data_dir=tmp_path / "a", snapshot_interval_s=3600, models={"other": str(tmp_path)})
    docs = [{"id": f"d{i}", "text": f"document number {i} about topic {i % 7}"} for i in range(120)]
    with app_client(settings, fake=True) as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        assert c.put("/v1/collections/kb/documents", json={"documents": docs}).status_code == 200
        upgrade_id = c.post("/v1/collections/kb/upgrades", json={"model": "other", "sample": 50}).json()["id"]
        wait_caught_up(c, "kb", upgrade_id)
        catalog = c.app.state.engine.catalog
        swap, entered, release = catalog.swap, threading.Event(), threading.Event()

        def held_swap(*args):
            entered.set()
            release.wait(60)
            return swap(*args)

        catalog.swap = held_swap
        with ThreadPoolExecutor(2) as pool:
            cut = pool.submit(c.post, f"/v1/collections/kb/upgrades/{upgrade_id}/cutover")
            assert entered.wait(60)
            abort = pool.submit(c.post, f"/v1/collections/kb/upgrades/{upgrade_id}/abort")
            try:
                abort.result(timeout=3)  # before, the abort went ahead during the cut-over
            except TimeoutError:
                pass  # it waits
            release.set()
            assert cut.result().status_code == 200, cut.result().text
            assert abort.result().status_code == 409, abort.result().text
        assert c.get("/v1/collections/kb").json()["model"] == "other"
        assert len(c.post("/v1/collections/kb/search", json={"query": "topic 3", "k": 5}).json()["results"]) == 5
    with app_client(settings, fake=True) as c:
        assert c.get("/readyz").json()["failed_count"] == 0
        assert c.get("/v1/collections/kb").json()["documents"] == 120


def test_an_upgrade_recorded_live_with_nothing_running_it_can_be_aborted(tmp_path):
    """A record that says "fitting" while no task runs it (a start that died half-way, or a
    record another process wrote) was refused by abort ("cannot abort: it is fitting") and
    blocked every later upgrade of the collection. It is aborted, its new generation removed."""
    import dataclasses

    from index import encoder_upgrade as upgrades

    settings = Settings(data_dir=tmp_path / "a", snapshot_interval_s=3600, models={"other": str(tmp_path)})
    with app_client(settings, fake=True) as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        docs = [{"id": f"d{i}", "text": f"document number {i}"} for i in range(20)]
        assert c.put("/v1/collections/kb/documents", json={"documents": docs}).status_code == 200
        engine = c.app.state.engine
        gens = engine.catalog.generations("kb")
        orphan = upgrades.new_record(
            engine.catalog.get("kb"),
            ".",
            {"model": "other", "dim": 384},
            sample=10,
            holdout=0.2,
            seed=0,
            min_cosine=0.8,
            min_recall=0.8,
        )
        gens.save_record(dataclasses.replace(orphan, state=upgrades.FITTING))
        listed = c.get("/v1/collections/kb/upgrades").json()["upgrades"]
        assert [u["state"] for u in listed] == ["fitting"]
        r = c.post(f"/v1/collections/kb/upgrades/{orphan.id}/abort")
        assert r.status_code == 200 and r.json()["state"] == "aborted", r.text
        started = c.post("/v1/collections/kb/upgrades", json={"model": "other", "sample": 10})
        assert started.status_code == 202, started.text


def serving_mapped_upgrade(c, model: str) -> str:
    """Collection "kb" (120 texts) and an upgrade to `model` whose gate passes (thresholds off),
    caught up: text searches are served through its map. Returns the upgrade's id."""
    assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
    docs = [{"id": f"d{i}", "text": f"document number {i} about topic {i % 7}"} for i in range(120)]
    assert c.put("/v1/collections/kb/documents", json={"documents": docs}).status_code == 200
    body = {"model": model, "sample": 60, "min_cosine": -1, "min_recall": 0}
    upgrade_id = c.post("/v1/collections/kb/upgrades", json=body).json()["id"]
    assert wait_caught_up(c, "kb", upgrade_id)["gate"]["passed"]
    assert c.post("/v1/collections/kb/search", json={"query": "topic 3"}).json()["upgrade"]["queries"] == "mapped"
    return upgrade_id


def after_the_first_embed(engine, step) -> list:
    """Make the app's next encode run `step()` (a coroutine) once it has embedded; returns the
    list that then holds what `step` returned."""
    embed, done = engine.embedder.embed, []

    async def embed_then_step(*args, **kwargs):
        out = await embed(*args, **kwargs)
        if not done:
            done.append(await step())
        return out

    engine.embedder.embed = embed_then_step
    return done


def test_a_search_that_outlives_the_way_it_chose_runs_again_on_what_serves_now(tmp_path):
    """A text search chose "mapped" (new-model queries through the map), then a cut-over landed
    while it embedded them. Before, it went on with the flipped upgrade: the map into the old
    generation and the new-model (768-d) queries against the old generation (384-d) as if it were
    the backfilled one, and answered 422 for a valid request. Now it runs again on the generation
    that serves after the cut-over."""
    settings = Settings(data_dir=tmp_path / "a", snapshot_interval_s=3600, models={"other768": str(tmp_path)})
    with app_client(settings, fake=True) as c:
        upgrade_id = serving_mapped_upgrade(c, "other768")
        engine = c.app.state.engine
        cut = after_the_first_embed(engine, lambda: engine.upgrades.cut_over("kb", upgrade_id))
        r = c.post("/v1/collections/kb/search", json={"query": "document about topic 3", "k": 5})
        assert cut and cut[0].state == "cut_over"
        assert r.status_code == 200, r.text
        assert "upgrade" not in r.json() and len(r.json()["results"]) == 5


def test_a_search_whose_upgrade_ended_while_it_embedded_runs_again_on_what_serves_now(tmp_path):
    """A batch of a hybrid search and a dense one, during an upgrade that serves mapped queries:
    the dense one is to be embedded by the new model. The upgrade is aborted while the hybrid
    one embeds (by the serving model, first). Then the dense one asks for the upgrade's model,
    and the upgrade is gone. The batch runs again, on the collection as it serves now."""
    settings = Settings(data_dir=tmp_path / "a", snapshot_interval_s=3600, models={"other": str(tmp_path)})
    with app_client(settings, fake=True) as c:
        upgrade_id = serving_mapped_upgrade(c, "other")
        engine = c.app.state.engine
        ended = after_the_first_embed(engine, lambda: engine.upgrades.abort("kb", upgrade_id))
        searches = [{"query": "topic 3", "mode": "hybrid", "k": 3}, {"query": "document about topic 3", "k": 3}]
        r = c.post("/v1/collections/kb/search/batch", json={"searches": searches})
        assert ended and ended[0].state == "aborted"
        assert r.status_code == 200, r.text
        assert all(len(s["results"]) == 3 and "upgrade" not in s for s in r.json()["results"])
