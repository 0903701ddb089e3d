"""Encoder upgrades over real HTTP: map, gate, backfill under traffic, cut-over, rollback,
finalize, abort, kill -9 mid-backfill, and bad requests."""

import signal
import threading
import time

import httpx
import pytest

from index.procrustes import BLEND_ALPHAS
from tests.support.app import app_client
from tests.support.datasets import wordnet_glosses
from tests.support.models import rotated_minilm, shallow_minilm
from tests.support.server import Server

FAST = {
    "VECNEST_ALLOW_MODEL_PATHS": "true",  # the test models live in temporary folders
    "VECNEST_UPGRADE_BATCH_SIZE": "32",
    "VECNEST_UPGRADE_POLL_S": "0.1",
    "VECNEST_SNAPSHOT_INTERVAL_S": "3600",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A compatible new model (MiniLM + a fixed noisy rotation) and an incompatible one (5 layers)."""
    root = tmp_path_factory.mktemp("models")
    return {
        "rotated": rotated_minilm(str(root / "rotated"), seed=2, noise=0.5),
        "shallow": shallow_minilm(str(root / "shallow"), layers=5),
    }


def glosses(start: int, n: int) -> list[dict]:
    rows = wordnet_glosses()[start : start + n]
    return [{"id": sid, "text": f"{lemmas}: {gloss}", "metadata": {"pos": pos}} for sid, pos, lemmas, gloss in rows]


def fill(c, name: str, docs: list[dict], **config) -> None:
    assert c.post("/v1/collections", json={"name": name, **config}).status_code == 201
    for start in range(0, len(docs), 500):
        assert (
            c.put(f"/v1/collections/{name}/documents", json={"documents": docs[start : start + 500]}).status_code == 200
        )


def wait_for(c, name: str, upgrade_id: str, until, timeout: float = 300.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = c.get(f"/v1/collections/{name}/upgrades/{upgrade_id}").json()
        if until(info):
            return info
        assert info["state"] not in ("failed",), info
        time.sleep(0.2)
    raise AssertionError(f"upgrade never reached the condition: {info}")


def caught_up(info: dict) -> bool:
    return info["state"] == "backfilling" and info["progress"]["caught_up"]


class Searcher(threading.Thread):
    """Text searches in a loop for as long as the upgrade runs: every one must be a 200."""

    def __init__(self, c, name: str, queries: list[str]):
        super().__init__(daemon=True)
        self.c, self.name, self.queries = c, name, queries
        self.statuses: list[int] = []
        self.modes: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                r = self.c.post(
                    f"/v1/collections/{self.name}/search", json={"query": self.queries[i % len(self.queries)], "k": 5}
                )
            except Exception:  # the server went away: the test has failed already
                return
            self.statuses.append(r.status_code)
            if r.status_code == 200 and "upgrade" in r.json():
                self.modes.add(r.json()["upgrade"]["queries"])
            i += 1


def top_id(c, name: str, text: str, **extra) -> str:
    r = c.post(f"/v1/collections/{name}/search", json={"query": text, "k": 1, **extra})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["id"]


def test_upgrade_end_to_end_with_traffic_then_rollback(tmp_path, models):
    """Searches run the whole time and all return 200; writes during the backfill reach the new
    generation; after cut-over every document is found by its own text with the new model;
    rollback serves the old model again with the writes made after the cut-over."""
    docs = glosses(0, 800)
    with Server(tmp_path / "data", env=FAST) as server:
        c = server.client
        fill(c, "kb", docs[:600], dims=[96, 384])
        searcher = Searcher(c, "kb", [d["text"] for d in docs[:50]])
        searcher.start()
        r = c.post("/v1/collections/kb/upgrades", json={"model": models["rotated"], "sample": 600})
        assert r.status_code == 202, r.text
        upgrade_id = r.json()["id"]
        info = wait_for(c, "kb", upgrade_id, lambda i: i["state"] != "fitting")
        assert info["gate"]["passed"], info
        # 480 fit pairs for a 384×384 map (the spec asks for 10·d): good, not perfect
        chosen = info["fit"]["maps"][info["gate"]["map"]]  # the family the gate picked
        assert chosen["mean_cosine"] > 0.85 and chosen["recall_at_10"] > 0.8
        assert info["fit"]["maps"]["orthogonal"]["orthogonality_error"] < 1e-4
        # the new model serves through the map at once: a document's text finds it
        hit = c.post("/v1/collections/kb/search", json={"query": docs[7]["text"], "k": 3}).json()
        assert hit["upgrade"]["queries"] == "mapped" and hit["results"][0]["id"] == docs[7]["id"]
        # writes during the backfill: new documents, a changed text, a delete
        assert c.put("/v1/collections/kb/documents", json={"documents": docs[600:800]}).status_code == 200
        changed = {**docs[5], "text": "a small sailing boat with one mast"}
        assert c.put("/v1/collections/kb/documents", json={"documents": [changed]}).status_code == 200
        assert c.post("/v1/collections/kb/documents/delete", json={"ids": [docs[6]["id"]]}).json()["deleted"] == 1
        vector_only = {"id": "v", "vector": [0.1] * 384}
        r = c.put("/v1/collections/kb/documents", json={"documents": [vector_only]})
        assert r.status_code == 409 and r.json()["error"]["code"] == "upgrade_in_progress"
        info = wait_for(c, "kb", upgrade_id, caught_up)
        assert info["progress"]["done"] == info["progress"]["total"] == 799
        m = c.get("/metrics").text
        assert 'vecnest_upgrade_active{collection="kb"} 1.0' in m
        assert 'vecnest_backfill_progress{collection="kb"} 1.0' in m

        r = c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/cutover", json={})
        assert r.status_code == 200 and r.json()["state"] == "cut_over", r.text
        described = c.get("/v1/collections/kb").json()
        assert described["model"] == models["rotated"] and described["documents"] == 799
        index = described["index"]  # one slot per document ever backfilled: none twice
        assert index["index_slots"] - index["deleted_slots"] == 799 and index["index_slots"] <= 800
        assert described["dims"] == [96, 384]
        for d in [*docs[590:610], changed]:
            assert top_id(c, "kb", d["text"]) == d["id"]
            assert top_id(c, "kb", d["text"], dim=96) == d["id"]
        assert c.get(f"/v1/collections/kb/documents/{docs[6]['id']}").status_code == 404
        assert "upgrade" not in c.post("/v1/collections/kb/search", json={"query": "boat", "k": 1}).json()

        # a write after the cut-over, then roll back: the old model serves it too
        late = {"id": "late", "text": "a volcano erupting lava over a mountain village"}
        assert c.put("/v1/collections/kb/documents", json={"documents": [late]}).status_code == 200
        r = c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/rollback")
        assert r.status_code == 200 and r.json()["state"] == "rolled_back", r.text
        described = c.get("/v1/collections/kb").json()
        assert described["model"] == "all-MiniLM-L6-v2" and described["documents"] == 800
        assert top_id(c, "kb", late["text"]) == "late"
        assert top_id(c, "kb", changed["text"]) == changed["id"]
        searcher.stop.set()
        searcher.join()
        assert searcher.statuses and set(searcher.statuses) == {200}
        assert "mapped" in searcher.modes
        assert not (tmp_path / "data" / "collections" / "kb" / f"gen-{upgrade_id}").exists()


def test_kill_during_backfill_resumes_to_the_right_count(tmp_path, models):
    """kill -9 mid-backfill; on restart the upgrade resumes (plans again) and completes with every
    document exactly once; then finalize deletes the old generation and a restart keeps the new."""
    data = tmp_path / "data"
    docs = glosses(1000, 1200)
    slow = {**FAST, "VECNEST_UPGRADE_MAX_BUSY": "0.2", "VECNEST_UPGRADE_BATCH_SIZE": "16"}
    server = Server(data, env=slow).start()
    c = server.client
    fill(c, "kb", docs)
    upgrade_id = c.post("/v1/collections/kb/upgrades", json={"model": models["rotated"], "sample": 200}).json()["id"]
    wait_for(c, "kb", upgrade_id, lambda i: i["state"] == "backfilling" and 300 < i["progress"]["done"] < 1100)
    assert server.kill(signal.SIGKILL) == -signal.SIGKILL

    server = Server(data, env=FAST).start()
    try:
        c = server.client
        info = wait_for(c, "kb", upgrade_id, caught_up)
        assert info["progress"]["done"] == info["progress"]["total"] == 1200
        assert c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/cutover").json()["state"] == "cut_over"
        assert c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/finalize").json()["state"] == "finalized"
        assert not (data / "collections" / "kb" / "store.sqlite").exists()  # the old generation is gone
    finally:
        server.stop()
    server = Server(data, env=FAST).start()
    try:
        c = server.client
        described = c.get("/v1/collections/kb").json()
        assert described["model"] == models["rotated"]
        assert described["documents"] == 1200 and described["index"]["index_slots"] == 1200
        for d in docs[::97]:
            assert top_id(c, "kb", d["text"]) == d["id"]
        states = [u["state"] for u in c.get("/v1/collections/kb/upgrades").json()["upgrades"]]
        assert states == ["finalized"]
    finally:
        server.stop()


def test_a_blend_serves_on_labelled_queries_with_both_models_and_again_after_a_restart(tmp_path, models):
    """The shallow model's maps fail the thresholds (next test). Asked for a blend with labelled
    queries (each a document's own text, that document relevant: old→old finds each first), the
    blend of each query's previous-model embedding and its mapped new one reaches old→old and
    serves: both models embed every text search. A restart serves it again (its alpha comes from
    the record), and cut-over ends it."""
    data = tmp_path / "data"
    docs = glosses(6000, 300)
    labelled = [{"query": d["text"], "relevant": [d["id"]]} for d in docs[:30]]
    server = Server(data, env=FAST).start()
    try:
        c = server.client
        fill(c, "kb", docs)
        body = {"model": models["shallow"], "sample": 300, "maps": ["blend"], "labelled_queries": labelled}
        r = c.post("/v1/collections/kb/upgrades", json=body)
        assert r.status_code == 202, r.text
        upgrade_id = r.json()["id"]
        info = wait_for(c, "kb", upgrade_id, lambda i: i["state"] != "fitting")
        blend = info["fit"]["maps"]["blend"]
        assert set(info["fit"]["maps"]) == {"blend"} and blend["base"] in ("orthogonal", "ridge", "affine")
        assert set(blend["labelled_ndcg_at_10_by_alpha"]) == {str(a) for a in BLEND_ALPHAS}
        assert blend["labelled_ndcg_at_10"] >= info["fit"]["labelled"]["old_to_old_ndcg_at_10"] > 0.9
        assert info["gate"]["passed"] and info["gate"]["map"] == "blend", info["gate"]
        assert info["gate"]["alpha"] == blend["alpha"] and info["gate"]["base"] == blend["base"]
        for d in docs[100:110]:
            hit = c.post("/v1/collections/kb/search", json={"query": d["text"], "k": 3}).json()
            assert hit["upgrade"]["queries"] == "blended" and hit["results"][0]["id"] == d["id"]
        assert 'vecnest_upgrade_queries_total{collection="kb",mode="blended"} 10.0' in c.get("/metrics").text
    finally:
        server.stop()
    server = Server(data, env=FAST).start()
    try:
        c = server.client
        for d in docs[200:205]:
            hit = c.post("/v1/collections/kb/search", json={"query": d["text"], "k": 3}).json()
            assert hit["upgrade"]["queries"] == "blended" and hit["results"][0]["id"] == d["id"]
        wait_for(c, "kb", upgrade_id, caught_up)
        assert c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/cutover").json()["state"] == "cut_over"
        assert "upgrade" not in c.post("/v1/collections/kb/search", json={"query": docs[3]["text"], "k": 1}).json()
        assert top_id(c, "kb", docs[3]["text"]) == docs[3]["id"]
    finally:
        server.stop()


def test_gate_abort_force_and_bad_requests(settings, models):
    settings.upgrade_max_busy = 0.05  # a slow backfill, so the cut-over comes before it is done
    settings.upgrade_batch_size = 8
    settings.allow_model_paths = True
    docs = glosses(3000, 300)
    with app_client(settings) as c:
        fill(c, "kb", docs)
        bad = [
            ({"model": "/nonexistent/model"}, 422, "unknown_model"),
            ({"model": "all-MiniLM-L6-v2"}, 422, "same_model"),
            ({"model": models["shallow"], "holdout": 1.5}, 422, None),
        ]
        for body, status, code in bad:
            r = c.post("/v1/collections/kb/upgrades", json=body)
            assert r.status_code == status, r.text
            if code:
                assert r.json()["error"]["code"] == code
        assert c.post("/v1/collections/nope/upgrades", json={"model": models["shallow"]}).status_code == 404
        assert c.post("/v1/collections", json={"name": "vec", "dim": 4}).status_code == 201
        r = c.post("/v1/collections/vec/upgrades", json={"model": models["shallow"]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_upgrade"
        assert c.post("/v1/collections", json={"name": "mv", "multivector": {}}).status_code == 201
        r = c.post("/v1/collections/mv/upgrades", json={"model": models["shallow"]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_upgrade"

        # an incompatible model: the gate fails, queries keep the old model and say why
        r = c.post("/v1/collections/kb/upgrades", json={"model": models["shallow"], "sample": 200})
        assert r.status_code == 202
        upgrade_id = r.json()["id"]
        r = c.post("/v1/collections/kb/upgrades", json={"model": models["rotated"]})
        assert r.status_code == 409 and r.json()["error"]["code"] == "upgrade_in_progress"
        info = wait_for(c, "kb", upgrade_id, lambda i: i["state"] != "fitting")
        assert not info["gate"]["passed"] and "mean cosine" in info["gate"]["reason"]
        hit = c.post("/v1/collections/kb/search", json={"query": docs[3]["text"], "k": 1}).json()
        assert hit["upgrade"]["queries"] == "previous_model" and "mean cosine" in hit["upgrade"]["reason"]
        assert hit["results"][0]["id"] == docs[3]["id"]
        r = c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/cutover")
        assert r.status_code == 409 and r.json()["error"]["code"] == "backfill_incomplete"
        for action in ("rollback", "finalize"):
            r = c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/{action}")
            assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_upgrade_state"
        assert c.get("/v1/collections/kb/upgrades/nope").status_code == 404
        r = c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/abort")
        assert r.status_code == 200 and r.json()["state"] == "aborted"
        assert "upgrade" not in c.post("/v1/collections/kb/search", json={"query": "x", "k": 1}).json()
        assert not (settings.data_dir / "collections" / "kb" / f"gen-{upgrade_id}").exists()

        # forced cut-over: writes wait while the rest is embedded; nothing is left behind
        upgrade_id = c.post("/v1/collections/kb/upgrades", json={"model": models["rotated"], "sample": 50}).json()["id"]
        wait_for(c, "kb", upgrade_id, lambda i: i["state"] == "backfilling")
        r = c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/cutover", json={"force": True})
        assert r.status_code == 200, r.text
        described = c.get("/v1/collections/kb").json()
        assert described["documents"] == 300 and described["model"] == models["rotated"]
        assert top_id(c, "kb", docs[250]["text"]) == docs[250]["id"]


@pytest.mark.parametrize(
    "point, state",
    [
        ("upgrade.before_swap", "backfilling"),  # pointer not yet flipped
        ("upgrade.after_swap", "cut_over"),
    ],
)  # flipped, record not yet saved
def test_a_crash_during_cut_over_leaves_one_consistent_generation(tmp_path, models, point, state):
    data = tmp_path / "data"
    docs = glosses(3000, 300)
    server = Server(data, env={**FAST, "VECNEST_CRASH_AT": f"{point}@kb"}).start()
    c = server.client
    fill(c, "kb", docs)
    upgrade_id = c.post("/v1/collections/kb/upgrades", json={"model": models["rotated"], "sample": 100}).json()["id"]
    wait_for(c, "kb", upgrade_id, caught_up)
    try:
        c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/cutover")
    except httpx.TransportError:
        pass
    assert server.proc.wait(60) == -signal.SIGKILL
    server = Server(data, env=FAST).start()
    try:
        c = server.client
        info = c.get(f"/v1/collections/kb/upgrades/{upgrade_id}").json()
        assert info["state"] == state, info  # the record agrees with current.json
        assert c.get("/v1/collections/kb").json()["documents"] == 300
        for d in docs[::37]:
            assert top_id(c, "kb", d["text"]) == d["id"]
        if state == "backfilling":
            wait_for(c, "kb", upgrade_id, caught_up)
            assert c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/cutover").json()["state"] == "cut_over"
        added = {"id": "after-crash", "text": "a crane lifts steel beams on a building site"}
        assert c.put("/v1/collections/kb/documents", json={"documents": [added]}).status_code == 200
        assert c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/rollback").json()["state"] == "rolled_back"
        assert c.get("/v1/collections/kb").json()["documents"] == 301
        assert top_id(c, "kb", added["text"]) == "after-crash"
        log = server.log.read_text()
    finally:
        server.stop()
    assert "Traceback" not in log, log[-3000:]
