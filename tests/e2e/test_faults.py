"""The fault harness, fast version (bench/faults.py is the long one): a real server is killed
(SIGKILL) while clients upsert, delete and search, and one makes and restores backups, at named
crash points and at random moments; after every restart, every acknowledged write is there, no
batch is half-applied, exact searches equal the oracle over the acknowledged state, and start-up
never fails."""

import os
import threading

import httpx
import numpy as np
import pytest

from tests.support.chaos import Archivist, Ledger, create_collections, run_until, verify
from tests.support.server import Server

ENV = {
    "VECNEST_SNAPSHOT_INTERVAL_S": "0.3",
    "VECNEST_RECALL_SAMPLE_RATE": "0.2",
    "VECNEST_REBUILD_DELETED_FRACTION": "0.1",
}


def restart_and_verify(data, ledger, touched, seed, archivist=None):
    server = Server(data, env=ENV).start()  # raises if start-up fails
    try:
        report = verify(server.client, ledger, touched, seed=seed)
        if archivist is not None:
            archivist.check(server.client, data)
        log = server.log.read_text()
    finally:
        server.stop()
    assert "Traceback" not in log, log[-3000:]
    assert not ledger.server_errors, ledger.server_errors[:5]
    return report


@pytest.mark.parametrize(
    "point",
    [
        "write.after_commit@mv:3",  # multi-vector ingest: committed, not yet in the graph
        "write.after_commit@dense:5",
        "snapshot.after_graphs@dense:2",  # graph files written, manifest not yet pointing at them
        "snapshot.after_manifest@flat",  # manifest switched, tombstones not yet purged
        "rebuild.before_swap",  # a rebuild after many deletes, built but not swapped in
        "rotation.after_save@dense",  # a PCA refit: rotation file saved, graphs not rebuilt
    ],
)
def test_a_crash_at_each_named_point_loses_nothing(tmp_path, point):
    data = tmp_path / "data"
    ledger = Ledger()
    server = Server(data, env={**ENV, "VECNEST_CRASH_AT": point}).start()
    create_collections(server.client)
    touched, died = run_until(server, ledger, workers=3, seconds=90, seed=hash(point) % 1000)
    assert died and server.proc.wait(30) == -9, f"crash point {point} was never reached"
    assert ledger.acked["upsert"] > 0
    report = restart_and_verify(data, ledger, touched, seed=1)
    assert report["documents_checked"] > 0


def test_random_kills_while_writing_and_backing_up_lose_nothing(tmp_path):
    """Beside the writers, one client makes, deletes, restores and uploads archives of its own
    collection (`Archivist`): after each kill that collection holds the acknowledged state or
    that of the op cut short, and nothing the crash left is on disk."""
    data = tmp_path / "data"
    ledger, archivist = Ledger(), Archivist(seed=0)
    server = Server(data, env=ENV).start()
    create_collections(server.client)
    touched = {}
    for round, after in enumerate([2.5, 4.0, 1.5, 3.0]):
        if round:
            server = Server(data, env=ENV).start()
        stop = threading.Event()
        archiving = archivist.drive(server.url, stop)
        more, died = run_until(server, ledger, workers=4, seconds=30, seed=round, kill_after=after)
        stop.set()
        archiving.join(60)
        assert died
        touched = {c: touched.get(c, set()) | ids for c, ids in more.items()}
        restart_and_verify(data, ledger, touched, seed=round, archivist=archivist)
    assert ledger.acked["upsert"] > 30 and ledger.acked["delete"] > 5
    assert archivist.counts["snapshot"] > 0 and archivist.counts["restore"] + archivist.counts["upload"] > 0


def test_a_crash_between_a_restores_renames_keeps_the_collection(tmp_path):
    """A restore over a collection moves the previous one aside, then the archive's folder into
    its home. Killed between the two, the name has no home; the restart puts the previous
    collection back, with every write acknowledged before the restore (the restore itself was
    never acknowledged). A sweep of leftovers used to delete both folders: the collection was gone."""
    data = tmp_path / "data"
    server = Server(data, env={"VECNEST_CRASH_AT": "restore.after_displace"}).start()
    c = server.client
    rng = np.random.default_rng(7)
    X = rng.standard_normal((80, 8)).astype(np.float32)

    def put(rows: range) -> None:
        docs = [{"id": f"d{i}", "vector": X[i].tolist(), "metadata": {"i": i}} for i in rows]
        c.put("/v1/collections/kb/documents", json={"documents": docs}).raise_for_status()

    c.post("/v1/collections", json={"name": "kb", "dim": 8}).raise_for_status()
    put(range(50))
    snapshot = c.post("/v1/collections/kb/snapshots").json()["id"]
    put(range(50, 80))  # acknowledged after the snapshot: a completed restore would roll these back
    with pytest.raises(httpx.TransportError):
        c.post(f"/v1/collections/kb/snapshots/{snapshot}/restore")
    assert server.proc.wait(30) == -9, "the crash point was never reached"

    server = Server(data).start()
    try:
        c = server.client
        info = c.get("/v1/collections/kb")
        assert info.status_code == 200, info.text
        assert info.json()["documents"] == 80
        for i in (0, 49, 50, 79):
            assert c.get(f"/v1/collections/kb/documents/d{i}").json()["metadata"] == {"i": i}
        hits = c.post("/v1/collections/kb/search", json={"vector": X[64].tolist(), "k": 1}).json()["results"]
        assert hits[0]["id"] == "d64"
        assert sorted(os.listdir(data / "collections")) == ["kb"]  # nothing left aside
        assert "the previous collection is back" in server.log.read_text()
    finally:
        server.stop()


def test_a_crash_while_writing_a_snapshot_leaves_nothing_behind(tmp_path):
    """Killed after the archive is written and before its sidecar: the next start deletes the
    unfinished archive, the listing never showed it, and the next snapshot works."""
    data = tmp_path / "data"
    server = Server(data, env={"VECNEST_CRASH_AT": "backup.before_sidecar"}).start()
    c = server.client
    c.post("/v1/collections", json={"name": "kb", "dim": 4}).raise_for_status()
    c.put("/v1/collections/kb/documents", json={"documents": [{"id": "a", "vector": [1, 0, 0, 0]}]}).raise_for_status()
    with pytest.raises(httpx.TransportError):
        c.post("/v1/collections/kb/snapshots")
    assert server.proc.wait(30) == -9, "the crash point was never reached"
    assert any(p.suffix == ".tar" for p in (data / "backups" / "kb").iterdir())  # what the crash left

    server = Server(data).start()
    try:
        c = server.client
        assert list((data / "backups" / "kb").iterdir()) == []
        assert c.get("/v1/collections/kb/snapshots").json()["snapshots"] == []
        assert c.post("/v1/collections/kb/snapshots").status_code == 201
        assert len(c.get("/v1/collections/kb/snapshots").json()["snapshots"]) == 1
    finally:
        server.stop()
