"""Collections: writes, exact re-scoring, filters, snapshots, replay after a crash, rebuilds."""

import os
import threading

import numpy as np
import pytest

from index import Collection, CollectionOptions, HnswParams, Manifest, NewDocument, Query
from index.collection.layout import SNAPSHOT_DIR
from index.errors import Invalid, NotFound
from tests.support.evaluate import overlap_at_k


def make_collection(path, dim=384, metric="cosine", **options) -> Collection:
    os.makedirs(path, exist_ok=True)
    manifest = Manifest(name="t", dim=dim, metric=metric, hnsw=HnswParams(), created_at="2026-01-01T00:00:00")
    return Collection.create(str(path), manifest, CollectionOptions(**options))


def docs_from(X, start=0, texts=None):
    return [
        NewDocument(
            id=f"d{start + i}",
            vector=x,
            text=texts[i] if texts else None,
            metadata={"parity": (start + i) % 2, "bucket": (start + i) % 100},
        )
        for i, x in enumerate(X)
    ]


def ids_and_scores(result):
    return [[(m.id, round(m.score, 5)) for m in row] for row in result.matches]


@pytest.fixture
def loaded(tmp_path, glosses):
    texts, X = glosses
    c = make_collection(tmp_path / "c")
    for start in range(0, 2500, 500):
        c.upsert(docs_from(X[start : start + 500], start, texts[start : start + 500]))
    yield c, X
    c.close()


def test_search_rescores_exactly_and_hydrates(loaded):
    c, X = loaded
    q = X[2600]
    result = c.search(Query(q, 5, include=["text", "metadata", "vector"]))
    assert result.strategy == "hnsw"
    top = result.matches[0]
    assert [m.score for m in top] == sorted((m.score for m in top), reverse=True)
    for m in top:
        assert m.score == pytest.approx(float(m.vector @ q), abs=1e-5)
        assert m.text and m.metadata["parity"] in (0, 1)
    assert c.search(Query(X[7], 1)).matches[0][0].id == "d7"


def test_hnsw_matches_exact_search(loaded):
    c, X = loaded
    Q = X[2500:2700]
    approx = c.search(Query(Q, 10))
    exact = c.search(Query(Q, 10, exact=True))
    assert exact.strategy == "exact"
    recall = overlap_at_k([[m.id for m in r] for r in approx.matches], [[m.id for m in r] for r in exact.matches], 10)
    assert recall >= 0.95


def test_invalid_batches_change_nothing(loaded):
    c, X = loaded
    before = (len(c), c.stats()["applied_seq"])
    with pytest.raises(Invalid):
        c.upsert([NewDocument("x", X[0]), NewDocument("x", X[1])])
    with pytest.raises(Invalid):
        c.upsert([NewDocument("y", X[0]), NewDocument("z", X[1][:10])])
    bad = X[0].copy()
    bad[3] = np.nan
    with pytest.raises(Invalid):
        c.upsert([NewDocument("w", bad)])
    assert (len(c), c.stats()["applied_seq"]) == before
    with pytest.raises(NotFound):
        c.get("y")


def test_filters_selective_go_exact_and_broad_use_the_graph(loaded):
    c, X = loaded
    q = X[2600]
    selective = c.search(Query(q, 10, filter={"bucket": 3}, include=["metadata"]))
    assert selective.strategy == "exact" and len(selective.matches[0]) == 10
    assert all(m.metadata["bucket"] == 3 for m in selective.matches[0])
    broad = c.search(Query(q, 10, filter={"parity": 1}, include=["metadata"]))
    assert broad.strategy == "hnsw"
    assert all(m.metadata["parity"] == 1 for m in broad.matches[0])
    truth = c.search(Query(q, 10, filter={"parity": 1}, exact=True))
    assert overlap_at_k([[m.id for m in broad.matches[0]]], [[m.id for m in truth.matches[0]]], 10) >= 0.9
    assert c.search(Query(q, 10, filter={"bucket": 1000})).matches == [[]]


def test_k_beyond_count_returns_everything(tmp_path, glosses):
    _, X = glosses
    c = make_collection(tmp_path / "small")
    c.upsert(docs_from(X[:3]))
    assert len(c.search(Query(X[0], 50)).matches[0]) == 3
    c.delete(["d0", "d1", "d2"])
    assert c.search(Query(X[0], 5)).matches == [[]]
    c.close()


def test_snapshot_then_reopen_gives_identical_results(loaded, tmp_path):
    c, X = loaded
    Q = X[2500:2600]
    c.delete([f"d{i}" for i in range(0, 100, 3)])
    assert c.snapshot() and not c.snapshot()  # second call: nothing new
    before = ids_and_scores(c.search(Query(Q, 10)))
    c.close()
    reopened = Collection.open(c.path)
    assert reopened.stats()["snapshot_seq"] == reopened.stats()["applied_seq"]
    assert ids_and_scores(reopened.search(Query(Q, 10))) == before
    reopened.close()


def test_crash_after_acknowledged_writes_replays_them(loaded):
    """Writes after the last snapshot live only in the store; reopening must replay them."""
    c, X = loaded
    c.snapshot()
    c.upsert(docs_from(X[2500:2800], 2500))
    c.delete(["d1", "d2"])
    c.upsert([NewDocument("d5", X[2900])])  # an update after the snapshot
    Q = X[2800:2900]
    before = ids_and_scores(c.search(Query(Q, 10)))
    # No close(): the process "dies" here. A second opener sees only what is on disk.
    crashed = Collection.open(c.path)
    assert len(crashed) == len(c) == 2800 - 2
    assert ids_and_scores(crashed.search(Query(Q, 10))) == before
    assert crashed.search(Query(X[2900], 1)).matches[0][0].id == "d5"
    with pytest.raises(NotFound):
        crashed.get("d1")
    crashed.close()


def test_missing_or_corrupt_snapshot_rebuilds_from_the_store(loaded):
    c, X = loaded
    c.snapshot()
    Q = X[2500:2600]
    before = ids_and_scores(c.search(Query(Q, 10)))
    c.close()
    snapshot = os.path.join(c.path, SNAPSHOT_DIR, c.manifest.snapshot.files["384"])
    with open(snapshot, "r+b") as f:
        f.truncate(1000)
    reopened = Collection.open(c.path)
    assert len(reopened) == 2500
    assert ids_and_scores(reopened.search(Query(Q, 10))) == before
    reopened.close()


def test_rebuild_drops_deleted_slots_and_keeps_concurrent_writes(tmp_path, glosses):
    _, X = glosses
    c = make_collection(tmp_path / "r", rebuild_min_deleted=10)
    c.upsert(docs_from(X[:2000]))
    c.delete([f"d{i}" for i in range(600)])
    assert c.needs_rebuild
    writer = threading.Thread(target=lambda: [c.upsert(docs_from(X[s : s + 50], s)) for s in range(2000, 2500, 50)])
    writer.start()
    c.rebuild()
    writer.join()
    c.upsert([NewDocument("late", X[2999])])
    stats = c.stats()
    assert stats["documents"] == 2000 - 600 + 500 + 1
    assert stats["deleted_slots"] == 0 and not c.needs_rebuild
    Q = X[2500:2600]
    recall = overlap_at_k(
        [[m.id for m in r] for r in c.search(Query(Q, 10)).matches],
        [[m.id for m in r] for r in c.search(Query(Q, 10, exact=True)).matches],
        10,
    )
    assert recall >= 0.95
    assert c.search(Query(X[2100], 1)).matches[0][0].id == "d2100"
    c.close()
    reopened = Collection.open(c.path)
    assert len(reopened) == stats["documents"]
    reopened.close()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_other_metrics_end_to_end(tmp_path, metric):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(500, 16)).astype(np.float32)
    c = make_collection(tmp_path / metric, dim=16, metric=metric)
    c.upsert(docs_from(X))
    q = rng.normal(size=16).astype(np.float32)
    got = c.search(Query(q, 5)).matches[0]
    raw = X @ q if metric == "ip" else -np.linalg.norm(X - q, axis=1)
    best = np.argsort(-raw)[:5]
    assert [m.id for m in got] == [f"d{i}" for i in best]
    assert np.allclose([m.score for m in got], raw[best], atol=1e-4)
    c.close()


def test_closed_collection_answers_not_found(tmp_path, glosses):
    _, X = glosses
    c = make_collection(tmp_path / "gone")
    c.upsert(docs_from(X[:10]))
    c.close()
    with pytest.raises(NotFound):
        c.search(Query(X[0], 1))
    with pytest.raises(NotFound):
        c.upsert(docs_from(X[:1]))


def test_a_failed_index_update_keeps_the_write_and_rebuilds(tmp_path, glosses, monkeypatch):
    _, X = glosses
    c = make_collection(tmp_path / "stale")
    c.upsert(docs_from(X[:100]))

    def broken_add(labels, X):
        raise MemoryError("simulated")

    monkeypatch.setattr(c._state.indexes, "add", broken_add)
    with pytest.raises(MemoryError):
        c.upsert(docs_from(X[100:110], 100))
    assert c.get("d105").id == "d105"  # committed: durable even though the graph missed it
    assert c.needs_rebuild
    c.rebuild()
    assert not c.needs_rebuild and len(c) == 110
    assert c.search(Query(X[105], 1)).matches[0][0].id == "d105"
    c.close()


def test_a_lost_vector_file_is_rebuilt_from_the_store(loaded):
    c, X = loaded
    c.snapshot()
    Q = X[2500:2600]
    before = ids_and_scores(c.search(Query(Q, 10)))
    exact_before = ids_and_scores(c.search(Query(Q, 10, exact=True)))
    c.close()
    os.remove(os.path.join(c.path, "vectors.f32"))
    reopened = Collection.open(c.path)
    assert ids_and_scores(reopened.search(Query(Q, 10))) == before
    assert ids_and_scores(reopened.search(Query(Q, 10, exact=True))) == exact_before
    reopened.close()


def test_scroll_pages_every_live_document_once_under_concurrent_writes(tmp_path, glosses):
    texts, X = glosses
    c = make_collection(tmp_path / "c", dim=X.shape[1])
    c.upsert(docs_from(X[:300], 0, texts[:300]))
    seen: list[str] = []
    after = None
    page = 0
    while True:
        docs, after = c.scroll(after, limit=64)
        seen += [d.id for d in docs]
        for d in docs:
            if d.id == "zz":
                assert np.allclose(d.vector, X[400], atol=1e-6)
                continue
            i = int(d.id[1:])
            assert d.text == texts[i] and d.metadata["bucket"] == i % 100
            assert np.allclose(d.vector, X[i], atol=1e-6)
        if page == 0:
            # Between pages: "d0" is behind the cursor and "d99" ahead of it; "zz" sorts last.
            c.delete(["d0", "d99"])
            c.upsert([NewDocument(id="zz", vector=X[400]), NewDocument(id="d0", vector=X[0])])
        page += 1
        if after is None:
            break
    assert len(seen) == len(set(seen))
    # Seen exactly when the write sorts after the cursor: "d99" deleted ahead of it is gone,
    # "zz" added ahead is there, "d0" re-added behind it was already read once.
    assert set(seen) == {f"d{i}" for i in range(300)} - {"d99"} | {"zz"}
    assert sorted(seen) == seen
    with pytest.raises(Invalid):
        c.scroll(None, limit=0)
    c.close()
