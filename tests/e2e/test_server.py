"""The real server process over loopback HTTP: start, serve, SIGKILL, restart, recover."""

import signal
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.engine import Engine
from service.settings import Settings
from tests.support.app import app_client
from tests.support.datasets import wordnet_glosses
from tests.support.server import Server, wait_ready


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data").start()
    yield s
    s.stop()


def test_real_server_round_trip(server):
    c = server.client
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.post("/v1/collections", json={"name": "live"}).status_code == 201
    docs = [{"id": "1", "text": "The Eiffel Tower is in Paris."}, {"id": "2", "text": "Mount Fuji is in Japan."}]
    assert c.put("/v1/collections/live/documents", json={"documents": docs}).status_code == 200
    hits = c.post("/v1/collections/live/search", json={"query": "a famous landmark in France", "k": 1}).json()
    assert hits["results"][0]["id"] == "1"
    assert 'vecnest_collection_documents{collection="live"} 2.0' in c.get("/metrics").text


def test_health_command_is_the_container_health_check(server):
    """`vecnest health` (the image's HEALTHCHECK) passes against a live server and fails once it stops."""
    import subprocess
    import sys
    from pathlib import Path

    script = str(Path(sys.executable).parent / "vecnest")
    env = {"PATH": "/usr/bin", "VECNEST_PORT": str(server.port)}
    assert subprocess.run([script, "health"], env=env, timeout=30).returncode == 0
    assert subprocess.run([script, "health", "--ready"], env=env, timeout=30).returncode == 0
    server.stop()
    failed = subprocess.run([script, "health"], env=env, timeout=30, capture_output=True, text=True)
    assert failed.returncode == 1 and "Connection refused" in failed.stderr


def test_chunked_oversized_body_is_rejected(tmp_path):
    server = Server(tmp_path / "data", env={"VECNEST_MAX_BODY_BYTES": "50000"}).start()
    try:
        server.client.post("/v1/collections", json={"name": "x"})

        def chunks():  # no Content-Length: the limit must count the streamed bytes
            yield b'{"documents": ['
            for i in range(2000):
                yield b'{"id": "%d", "text": "padding padding padding"},' % i
            yield b'{"id": "last", "text": "end"}]}'

        r = server.client.put(
            "/v1/collections/x/documents", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert server.client.get("/v1/collections/x").json()["documents"] == 0
    finally:
        server.stop()


def _glosses(start: int, n: int) -> list[dict]:
    rows = wordnet_glosses()[start : start + n]
    return [{"id": sid, "text": gloss, "metadata": {"pos": pos}} for sid, pos, _, gloss in rows]


@pytest.mark.parametrize("snapshot_interval", ["3600", "0.2"])
def test_sigkill_right_after_acknowledgements_loses_nothing(tmp_path, snapshot_interval):
    """Acknowledged writes survive kill -9: with no snapshot (replay all) and with snapshots
    taken while writing (load + replay the rest). Results after restart equal those before."""
    data = tmp_path / "data"
    server = Server(data, env={"VECNEST_SNAPSHOT_INTERVAL_S": snapshot_interval}).start()
    c = server.client
    assert c.post("/v1/collections", json={"name": "kb", "hnsw": {"ef_search": 200}}).status_code == 201
    acknowledged = []
    for start in range(0, 600, 100):
        r = c.put("/v1/collections/kb/documents", json={"documents": _glosses(start, 100)})
        assert r.status_code == 200
        acknowledged += r.json()["ids"]
    deleted = acknowledged[:20]
    assert c.post("/v1/collections/kb/documents/delete", json={"ids": deleted}).json()["deleted"] == 20
    queries = ["a large animal", "a unit of measurement", "to move quickly", "a feeling of joy", "a kind of tree"]
    before = [
        c.post("/v1/collections/kb/search", json={"query": q, "k": 10, "include": []}).json()["results"]
        for q in queries
    ]
    assert server.kill(signal.SIGKILL) == -signal.SIGKILL

    restarted = Server(data).start()
    try:
        c = restarted.client
        assert c.get("/v1/collections/kb").json()["documents"] == len(acknowledged) - 20
        for doc_id in acknowledged[20:]:
            assert c.get(f"/v1/collections/kb/documents/{doc_id}").status_code == 200
        for doc_id in deleted:
            assert c.get(f"/v1/collections/kb/documents/{doc_id}").status_code == 404
        after = [
            c.post("/v1/collections/kb/search", json={"query": q, "k": 10, "include": []}).json()["results"]
            for q in queries
        ]
        assert [[h["id"] for h in r] for r in after] == [[h["id"] for h in r] for r in before]
        for a, b in zip(after, before):
            assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], abs=1e-5)
        # every surviving document is findable by its own text
        probe = _glosses(300, 5)
        for doc in probe:
            hit = c.post("/v1/collections/kb/search", json={"query": doc["text"], "k": 1}).json()["results"][0]
            assert hit["id"] == doc["id"]
    finally:
        restarted.stop()


def test_graceful_stop_snapshots_so_restart_replays_nothing(tmp_path):
    data = tmp_path / "data"
    server = Server(data).start()
    server.client.post("/v1/collections", json={"name": "g"})
    server.client.put("/v1/collections/g/documents", json={"documents": _glosses(0, 50)})
    # uvicorn finishes the lifespan shutdown, then re-raises SIGTERM to exit with its status
    assert server.stop() in (0, -signal.SIGTERM)
    restarted = Server(data).start()
    try:
        index = restarted.client.get("/v1/collections/g").json()["index"]
        assert index["snapshot_seq"] == index["applied_seq"] == 1
    finally:
        restarted.stop()


def test_not_ready_until_collections_are_loaded(tmp_path, monkeypatch):
    """/readyz answers 503, and collection routes 503, until start-up has replayed everything."""
    gate = threading.Event()
    original = Engine._open_catalog

    def slow_open(self):
        gate.wait(timeout=60)
        return original(self)

    monkeypatch.setattr(Engine, "_open_catalog", slow_open)
    with TestClient(create_app(Settings(data_dir=tmp_path / "data")), base_url="http://127.0.0.1") as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        r = client.get("/v1/collections")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        gate.set()
        wait_ready(client.get, timeout=60)
        assert client.get("/v1/collections").json() == {"collections": [], "failed": []}
        assert "vecnest_ready 1.0" in client.get("/metrics").text


def test_concurrent_searches_and_writes_over_http(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", snapshot_interval_s=3600)
    with app_client(settings) as client:
        client.post("/v1/collections", json={"name": "busy", "dim": 8})
        errors: list[str] = []

        def writer():
            for i in range(30):
                docs = [{"id": f"{i}-{j}", "vector": [float(i + 1), float(j + 1), 1, 1, 1, 1, 1, 1]} for j in range(20)]
                r = client.put("/v1/collections/busy/documents", json={"documents": docs})
                if r.status_code != 200:
                    errors.append(r.text)

        def searcher():
            for _ in range(60):
                r = client.post("/v1/collections/busy/search", json={"vector": [1, 2, 1, 1, 1, 1, 1, 1], "k": 5})
                if r.status_code != 200:
                    errors.append(r.text)

        threads = [threading.Thread(target=writer)] + [threading.Thread(target=searcher) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert client.get("/v1/collections/busy").json()["documents"] == 600


def test_a_client_that_disconnects_stops_its_work(tmp_path):
    """An upsert of 1,000 texts takes the encoder several seconds; its client gives up after
    half a second. The server cancels the request (counted as client_disconnected): the
    encoder finishes the chunk it was on and never sees the rest, and nothing is written."""
    server = Server(tmp_path / "data").start()
    try:
        c = server.client
        assert c.post("/v1/collections", json={"name": "t"}).status_code == 201
        docs = [{"id": str(i), "text": f"{gloss} ({i})"} for i, (_, _, _, gloss) in enumerate(wordnet_glosses()[:1000])]
        with pytest.raises(httpx.TimeoutException):
            httpx.put(f"{server.url}/v1/collections/t/documents", json={"documents": docs}, timeout=0.5)
        deadline = time.monotonic() + 60
        while 'vecnest_errors_total{code="client_disconnected"} 1.0' not in c.get("/metrics").text:
            assert time.monotonic() < deadline, "the disconnect was never noticed"
            time.sleep(0.1)
        assert c.get("/v1/collections/t").json()["documents"] == 0
        assert c.post("/v1/collections/t/search", json={"query": "a quick search", "k": 1}).status_code == 200
        encoded = [
            line for line in c.get("/metrics").text.splitlines() if line.startswith("vecnest_encoder_texts_total")
        ]
        assert sum(float(line.split()[-1]) for line in encoded) < 500, encoded
    finally:
        server.stop()


def test_a_server_that_cannot_start_says_why_and_exits(tmp_path):
    """A data directory held by another server: the second one logs the reason, shows it on
    /readyz while it stops, and `vecnest serve` exits 1, instead of staying "not ready" in silence."""
    first = Server(tmp_path / "data").start()
    try:
        second = Server(tmp_path / "data").start(wait=False)
        # generous: a cold interpreter imports torch before it even tries the lock
        assert second.proc.wait(300) == 1
        log = second.log.read_text()
        assert "could not start" in log and "in use by another process" in log
        # the first one is untouched: still ready, still takes writes, and still holds the lock
        assert first.client.get("/readyz").status_code == 200
        assert first.client.post("/v1/collections", json={"name": "after"}).status_code == 201
        third = Server(tmp_path / "data").start(wait=False)
        assert third.proc.wait(300) == 1
    finally:
        first.stop()
