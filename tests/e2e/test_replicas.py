"""Stateless replicas for real: separate vecnest processes over one shared backend, on HTTP.

The shared backend is milvus-lite's gRPC server in its own process (index/milvus): qdrant-client's
local mode is in-process and no Qdrant server can be installed here, so the Qdrant tier is tested
in-process (tests/index/test_shared_backends.py, tests/service/test_qdrant_service.py) and the
multi-process tier on Milvus. Both backends implement one seam; the replicas' side of it (no
local state, manifests read from the backend, writes acknowledged after the backend's) is the same.

Under write load through both replicas, one is killed with SIGKILL: the other keeps answering,
and every write either replica acknowledged is there afterwards. A third replica, started on an
empty data directory, serves the same collection with the same answers."""

import threading

import httpx
import numpy as np
import pytest

from tests.support.milvus import MilvusServer
from tests.support.server import Server

pytest.importorskip("pymilvus", reason="the milvus extra is part of the test install")

DIM = 32
BATCH = 20


def replica(tmp_path, name: str, milvus: MilvusServer) -> Server:
    env = {
        "VECNEST_BACKEND": "milvus",
        "VECNEST_MILVUS_URI": milvus.uri,
        "VECNEST_ROLE": "serve",
        "VECNEST_PRELOAD_DEFAULT_MODEL": "false",
    }
    return Server(tmp_path / name, env=env, log=tmp_path / f"{name}.log")


class Writer(threading.Thread):
    """Upserts batches of new documents through one replica until told to stop or the replica
    dies; `acked` holds the ids of every batch the replica answered 200 to."""

    def __init__(self, url: str, prefix: str, seed: int):
        super().__init__(daemon=True)
        self.url, self.prefix = url, prefix
        self.rng = np.random.default_rng(seed)
        self.acked: list[str] = []
        self.refused: list[int] = []  # statuses other than 200 while the replica was up
        self.stop = threading.Event()
        self.batches = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                ids = [f"{self.prefix}-{self.batches}-{i}" for i in range(BATCH)]
                X = self.rng.standard_normal((BATCH, DIM)).astype(np.float32)
                docs = [{"id": i, "vector": x.tolist(), "metadata": {"writer": self.prefix}} for i, x in zip(ids, X)]
                try:
                    r = client.put("/v1/collections/shared/documents", json={"documents": docs})
                except httpx.TransportError:
                    return  # the replica is gone: what it acknowledged before is what counts
                if r.status_code == 200:
                    self.acked += ids
                else:
                    self.refused.append(r.status_code)
                self.batches += 1


def wait_for(condition, what: str, attempts: int = 6000) -> None:
    import time

    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_replica_loses_no_acknowledged_write_and_the_other_keeps_serving(tmp_path):
    milvus = MilvusServer(tmp_path / "milvus").start()
    a, b = replica(tmp_path, "a", milvus), replica(tmp_path, "b", milvus)
    try:
        a.start()
        b.start()
        created = a.client.post("/v1/collections", json={"name": "shared", "dim": DIM, "dims": [8, DIM]})
        assert created.status_code == 201, created.text
        assert b.client.get("/v1/collections/shared").status_code == 200  # the manifest is in Milvus

        wa, wb = Writer(a.url, "a", 1), Writer(b.url, "b", 2)
        wa.start()
        wb.start()
        wait_for(lambda: len(wa.acked) >= 10 * BATCH and len(wb.acked) >= 5 * BATCH, "writes on both replicas")
        assert a.kill() != 0  # SIGKILL, mid-write
        wa.join(60)
        assert not wa.is_alive()
        seen_at_kill = wb.batches
        q = np.random.default_rng(3).standard_normal(DIM).tolist()
        answered = 0
        while wb.batches < seen_at_kill + 10 or answered < 10:  # b keeps writing and serving after a is gone
            r = b.client.post("/v1/collections/shared/search", json={"vector": q, "k": 5, "dim": 8})
            assert r.status_code == 200, r.text
            answered += 1
        wb.stop.set()
        wb.join(60)
        assert wa.refused == [] and wb.refused == []

        acked = wa.acked + wb.acked
        count = b.client.get("/v1/collections/shared").json()["documents"]
        assert count >= len(acked)  # a batch in flight at the kill may have landed unacknowledged
        for i in range(0, len(acked), 50):
            for doc_id in acked[i : i + 50]:
                r = b.client.get(f"/v1/collections/shared/documents/{doc_id}")
                assert r.status_code == 200, (doc_id, r.status_code)
        assert answered >= 1
        print(
            f"acknowledged: {len(wa.acked)} via a (killed), {len(wb.acked)} via b; stored {count}; "
            f"b answered {answered} searches after the kill"
        )

        # A fresh replica on an empty data directory serves the same collection, the same way.
        c = replica(tmp_path, "c", milvus).start()
        try:
            assert c.client.get("/v1/collections/shared").json()["documents"] == count
            body = {"vector": q, "k": 10, "exact": True, "filter": {"writer": "a"}}
            first, again = (s.client.post("/v1/collections/shared/search", json=body).json() for s in (b, c))
            assert [m["id"] for m in first["results"]] == [m["id"] for m in again["results"]]
            assert all(m["id"].startswith("a-") for m in first["results"]) and len(first["results"]) == 10
            patched = c.client.patch("/v1/collections/shared", json={"target_recall": 0.9})
            assert patched.status_code == 200, patched.text
            # a setting one replica changes reaches the others (manifests are re-read within 5 s)
            target = lambda: b.client.get("/v1/collections/shared").json()["recall"]["target_recall"]  # noqa: E731
            wait_for(lambda: target() == 0.9, "b to see it")
        finally:
            c.stop()
        # The replicas kept nothing of the collection: their data directories hold no data.
        for server in (a, b, c):
            kept = [p for p in server.data_dir.rglob("*") if p.is_file()]
            assert kept == [], kept
    finally:
        for server in (a, b):
            server.stop()
        milvus.stop()


def test_a_replica_that_missed_a_drop_answers_for_the_collection_that_exists_now(tmp_path):
    """Replica b holds its copy of a collection for up to 5 s. Replica a drops it and creates
    another under its name, with another dim. Every answer b gives meanwhile is about the new
    collection (b reads the entry again when its copy fails, and never writes its copy back);
    once a drops that one too, b answers 404 and nothing comes back to life. Before, b answered
    503 with Milvus's schema errors for its whole refresh, its PATCH wrote the old manifest over
    the new collection, and a PATCH after the drop left an entry with no data that broke every
    replica's listing (503) and every request to the name."""
    milvus = MilvusServer(tmp_path / "milvus").start()
    a, b = replica(tmp_path, "a", milvus), replica(tmp_path, "b", milvus)
    try:
        a.start()
        b.start()
        assert a.client.post("/v1/collections", json={"name": "x", "dim": 8}).status_code == 201
        assert b.client.get("/v1/collections/x").json()["dim"] == 8  # b holds a copy now
        assert a.client.delete("/v1/collections/x").status_code == 204
        assert a.client.post("/v1/collections", json={"name": "x", "dim": 16}).status_code == 201

        rng = np.random.default_rng(0)
        old = {"documents": [{"id": "old", "vector": rng.standard_normal(8).tolist()}]}
        put = b.client.put("/v1/collections/x/documents", json=old)
        assert put.status_code == 422 and put.json()["error"]["code"] == "wrong_dimension", put.text
        patched = b.client.patch("/v1/collections/x", json={"target_recall": 0.9})
        assert patched.status_code == 200 and patched.json()["dim"] == 16, patched.text
        new = {"documents": [{"id": "new", "vector": rng.standard_normal(16).tolist()}]}
        assert b.client.put("/v1/collections/x/documents", json=new).status_code == 200
        seen = a.client.get("/v1/collections/x").json()
        assert (seen["dim"], seen["documents"]) == (16, 1)  # b's copy was not written back over it

        assert b.client.get("/v1/collections/x").status_code == 200  # b holds the new copy
        assert a.client.delete("/v1/collections/x").status_code == 204
        late = b.client.patch("/v1/collections/x", json={"target_recall": 0.8})
        assert late.status_code == 404 and late.json()["error"]["code"] == "collection_not_found", late.text
        for server in (a, b):
            listed = server.client.get("/v1/collections")
            assert listed.status_code == 200 and listed.json()["collections"] == [], listed.text
        assert a.client.post("/v1/collections", json={"name": "x", "dim": 4}).status_code == 201
    finally:
        for server in (a, b):
            server.stop()
        milvus.stop()
