"""Concurrency over real HTTP: parallel upserts, deletes, searches, PCA refits, snapshots and
collection drops on the same collections for a bounded time. No 5xx, no traceback in the log, the
server never stops answering, and the final state equals the sequential oracle (each worker owns
its ids, so its acknowledged writes, in order, are the oracle)."""

import threading

from tests.support.chaos import (
    Ledger,
    churn_a_collection,
    create_collections,
    run_until,
    use_the_churned_collection,
    verify,
)
from tests.support.server import Server

ENV = {
    "VECNEST_SNAPSHOT_INTERVAL_S": "0.2",
    "VECNEST_RECALL_SAMPLE_RATE": "0.3",
    "VECNEST_REBUILD_DELETED_FRACTION": "0.1",
}


def test_parallel_writes_searches_refits_and_drops(tmp_path):
    server = Server(tmp_path / "data", env=ENV).start()
    try:
        create_collections(server.client)
        ledger = Ledger()
        stop = threading.Event()
        counts: dict[int, int] = {}
        errors: list[str] = []
        side = [
            threading.Thread(target=churn_a_collection, args=(server.url, stop, counts, errors)),
            threading.Thread(target=use_the_churned_collection, args=(server.url, stop, counts, errors)),
        ]
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
