"""Concurrency over real HTTP: parallel upserts, deletes, searches, PCA refits, snapshots and
collection drops on the same collections for a bounded time. No 5xx, no traceback in the log, the
server never stops answering, and the final state equals the sequential oracle (each worker owns
its ids, so its acknowledged writes, in order, are the oracle)."""

import threading

import httpx
import numpy as np

from bench.chaos import Ledger, create_collections, run_until, verify
from tests.helpers import Server

ENV = {"VECNEST_SNAPSHOT_INTERVAL_S": "0.2", "VECNEST_RECALL_SAMPLE_RATE": "0.3",
       "VECNEST_REBUILD_DELETED_FRACTION": "0.1"}


def churn_a_collection(url: str, stop: threading.Event, counts: dict, errors: list) -> None:
    """Create, fill, search and drop one collection over and over while others use it too."""
    rng = np.random.default_rng(5)
    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            calls = [
                ("post", "/v1/collections", {"name": "eph", "dim": 8, "dims": [4, 8]}),
                ("put", "/v1/collections/eph/documents",
                 {"documents": [{"id": str(i), "vector": rng.standard_normal(8).tolist()} for i in range(300)]}),
                ("post", "/v1/collections/eph/elasticizer/refit", {}),
                ("post", "/v1/collections/eph/search", {"vector": rng.standard_normal(8).tolist(), "dim": 4}),
                ("delete", "/v1/collections/eph", None),
            ]
            for method, path, body in calls:
                r = c.request(method, path, json=body)
                counts[r.status_code] = counts.get(r.status_code, 0) + 1
                if r.status_code >= 500:
                    errors.append(f"{method} {path}: {r.status_code} {r.text[:200]}")


def use_the_churned_collection(url: str, stop: threading.Event, counts: dict, errors: list) -> None:
    rng = np.random.default_rng(6)
    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            for method, path, body in [
                ("post", "/v1/collections/eph/search", {"vector": rng.standard_normal(8).tolist(), "k": 5}),
                ("put", "/v1/collections/eph/documents", {"documents": [{"id": "x", "vector": [1.0] * 8}]}),
                ("get", "/v1/collections/eph", None),
                ("get", "/healthz", None),
            ]:
                r = c.request(method, path, json=body)
                counts[r.status_code] = counts.get(r.status_code, 0) + 1
                if r.status_code >= 500:
                    errors.append(f"{method} {path}: {r.status_code} {r.text[:200]}")


def test_parallel_writes_searches_refits_and_drops(tmp_path):
    server = Server(tmp_path / "data", env=ENV).start()
    try:
        create_collections(server.client)
        ledger = Ledger()
        stop = threading.Event()
        counts: dict[int, int] = {}
        errors: list[str] = []
        side = [threading.Thread(target=churn_a_collection, args=(server.url, stop, counts, errors)),
                threading.Thread(target=use_the_churned_collection, args=(server.url, stop, counts, errors))]
        for t in side:
            t.start()
        touched, died = run_until(server, ledger, workers=4, seconds=25, seed=3, refits=True)
        stop.set()
        for t in side:
            t.join(60)
        assert not died and not errors and not ledger.server_errors, (errors + ledger.server_errors)[:5]
        assert counts.get(204, 0) >= 3, counts  # the collection was dropped (and re-created) several times
        report = verify(server.client, ledger, touched)
        assert report["documents_checked"] > 0 and ledger.acked["upsert"] > 50 and ledger.searches > 50
        log = server.log.read_text()
    finally:
        server.stop()
    assert "Traceback" not in log, log[-3000:]
