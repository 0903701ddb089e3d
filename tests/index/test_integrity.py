"""index/ keeps its promises under hostile input and damaged files: a rejected write changes
nothing, a committed write is always indexable, corrupt files are detected and rebuilt from the
store, snapshots never overwrite what the manifest names, labels follow the documents."""

import json
import os
import threading

import numpy as np
import pytest

from index import Catalog, Collection, HnswParams, Manifest, NewDocument, Query
from index.collection.layout import MANIFEST_FILE, SNAPSHOT_DIR, VECTOR_FILE
from index.errors import Invalid
from index.exact import ExactIndex


def manifest(name: str = "c", dim: int = 4, metric: str = "cosine", dims: list[int] | None = None) -> Manifest:
    return Manifest(
        name=name,
        dim=dim,
        metric=metric,
        hnsw=HnswParams(m=8, ef_construction=64),
        created_at="2026-01-01T00:00:00",
        dims=dims or [],
    )


def docs(ids, X) -> list[NewDocument]:
    return [NewDocument(id=str(i), vector=np.asarray(x, np.float32), text=f"t{i}") for i, x in zip(ids, X)]


def open_again(collection: Collection) -> Collection:
    path = collection.path
    collection.close()
    return Collection.open(path)


def oracle_ids(X: np.ndarray, ids: list[str], Q: np.ndarray, k: int, metric: str) -> list[list[str]]:
    index = ExactIndex(X.shape[1], metric)
    index.add(np.arange(len(X)), X)
    return [[ids[j] for j in row if j >= 0] for row in index.search(Q, k).labels]


def test_large_finite_cosine_vectors_are_normalised_safely_and_every_write_is_searchable(tmp_path):
    """[1e30, 1e30, 0, 0]: its float32 norm overflows, so it used to normalise to zeros, commit,
    then fail the graph add, leaving the rest of the batch unsearchable."""
    c = Collection.create(str(tmp_path), manifest())
    X = np.array([[1e30, 1e30, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1e-30, 0, 0, 1e-30]], np.float32)
    c.upsert(docs(range(4), X))
    assert not c.needs_rebuild and len(c) == 4
    hits = c.search(Query(np.array([[1, 1, 0, 0]], np.float32), 4))
    assert hits.matches[0][0].id == "0" and hits.matches[0][0].score == pytest.approx(1.0, abs=1e-6)
    assert {m.id for m in hits.matches[0]} == {"0", "1", "2", "3"}
    c = open_again(c)
    assert len(c) == 4 and c.search(Query(np.array([[0, 0, 0, 1]], np.float32), 1)).matches[0][0].id == "3"
    c.close()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_vectors_whose_scores_would_overflow_are_rejected_before_the_commit(tmp_path, metric):
    c = Collection.create(str(tmp_path), manifest(metric=metric))
    c.upsert(docs(["a", "b"], [[1e17, 0, 0, 0], [0, 1e17, 0, 0]]))
    seq = c.last_seq()
    with pytest.raises(Invalid) as err:
        c.upsert(docs(["c", "d"], [[1, 2, 3, 4], [1e30, 1e30, 0, 0]]))
    assert err.value.code == "vector_too_large" and c.last_seq() == seq and len(c) == 2
    with pytest.raises(Invalid):
        c.search(Query(np.array([[1e30, 0, 0, 0]], np.float32), 2))
    # the largest allowed norms still score finitely: k=2 returns both (an inf score used to drop one)
    result = c.search(Query(np.array([[1e17, 1e17, 0, 0]], np.float32), 2))
    assert len(result.matches[0]) == 2 and all(np.isfinite(m.score) for m in result.matches[0])
    c.close()


def test_a_zero_prefix_view_is_indexed_not_rejected_after_the_commit(tmp_path):
    """Cosine dims [2, 4]: the 2-dim prefix of [0, 0, 1, 1] is zero. The full vector is valid, so
    the write must reach every graph (it used to fail after the commit)."""
    c = Collection.create(str(tmp_path), manifest(dims=[2, 4]))
    c.upsert(docs(["z", "a", "b"], [[0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0]]))
    assert not c.needs_rebuild and len(c) == 3
    assert c.search(Query(np.array([[0, 0, 1, 1]], np.float32), 1, dim=4)).matches[0][0].id == "z"
    funnel = c.search(Query(np.array([[0, 0, 1, 1]], np.float32), 3, dim=2))  # shortlist at 2 dims, exact at 4
    assert funnel.matches[0][0].id == "z"
    c.rebuild()
    c = open_again(c)
    assert len(c) == 3 and c.search(Query(np.array([[0, 0.1, 1, 1]], np.float32), 1, dim=2)).matches[0][0].id == "z"
    c.close()


def test_a_flipped_bit_in_the_vector_file_is_found_and_reread_from_the_store(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    ids = [str(i) for i in range(300)]
    c = Collection.create(str(tmp_path), manifest(dim=16))
    c.upsert(docs(ids, X))
    c.snapshot()
    label = c.get("17").label
    c.close()
    with open(tmp_path / VECTOR_FILE, "r+b") as f:  # the sign bit of one coordinate of doc 17
        f.seek(label * 16 * 4 + 3)
        byte = f.read(1)[0]
        f.seek(label * 16 * 4 + 3)
        f.write(bytes([byte ^ 0x80]))
    c = Collection.open(str(tmp_path))
    Q = X[[17, 40]] / np.linalg.norm(X[[17, 40]], axis=1, keepdims=True)
    got = c.search(Query(Q, 5, exact=True))
    assert [[m.id for m in row] for row in got.matches] == oracle_ids(X, ids, Q, 5, "cosine")
    assert got.matches[0][0].score == pytest.approx(1.0, abs=1e-5)
    c.close()


def test_a_corrupt_graph_snapshot_is_rebuilt_from_the_store(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 8)).astype(np.float32)
    ids = [str(i) for i in range(400)]
    c = Collection.create(str(tmp_path), manifest(dim=8))
    c.upsert(docs(ids, X))
    c.snapshot()
    graph = os.path.join(c.path, SNAPSHOT_DIR, c.manifest.snapshot.files["8"])
    c.close()
    with open(graph, "r+b") as f:
        f.seek(os.path.getsize(graph) // 2)
        f.write(b"\xff\xff\xff\xff")
    c = Collection.open(str(tmp_path))
    assert len(c) == 400
    Q = X[:20]
    found = [[m.id for m in row] for row in c.search(Query(Q, 10, ef=200)).matches]
    truth = oracle_ids(X, ids, Q, 10, "cosine")
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]) >= 0.95
    # the rebuilt graphs are due for a snapshot although no write came since: the one the
    # manifest named is unusable (each start rebuilt again, until the next write)
    assert c.needs_snapshot and c.snapshot()
    assert c.manifest.snapshot.files["8"] != os.path.basename(graph)
    c = open_again(c)
    assert [[m.id for m in row] for row in c.search(Query(Q, 10, ef=200)).matches] == found
    assert not c.needs_snapshot
    c.close()


def test_snapshots_never_overwrite_the_files_the_manifest_names(tmp_path):
    c = Collection.create(str(tmp_path), manifest())
    c.upsert(docs(["a"], [[1, 0, 0, 0]]))
    c.snapshot()
    first = c.manifest.snapshot.files["4"]
    c.snapshot(force=True)  # same seq: it used to write the same name over the live file
    second = c.manifest.snapshot.files["4"]
    assert first != second and c.manifest.snapshot.applied_seq == 1
    on_disk = json.loads((tmp_path / MANIFEST_FILE).read_text())["snapshot"]["files"]["4"]
    assert on_disk == second and sorted(os.listdir(tmp_path / SNAPSHOT_DIR)) == sorted([second, second + ".json"])
    c = open_again(c)
    assert c.search(Query(np.array([[1, 0, 0, 0]], np.float32), 1)).matches[0][0].id == "a"
    c.close()


def test_churn_reuses_labels_so_the_vector_file_stays_the_size_of_the_documents(tmp_path):
    rng = np.random.default_rng(2)
    c = Collection.create(str(tmp_path), manifest(dim=8))
    keep = [str(i) for i in range(50)]
    c.upsert(docs(keep, rng.standard_normal((50, 8))))
    for round in range(30):  # 30 × 50 writes of short-lived documents and updates
        churn = [f"tmp{round}-{i}" for i in range(50)]
        c.upsert(docs(churn, rng.standard_normal((50, 8))))
        c.upsert(docs(keep[:10], rng.standard_normal((10, 8))))
        c.delete(churn)
        c.snapshot()
    assert len(c) == 50
    assert max(d.label for d in (c.get(i) for i in keep)) <= 100
    assert (
        c._state.store.label_ceiling(0) <= 101 and c._state.vectors.capacity <= 1024 and c.stats()["index_slots"] <= 100
    )
    c.close()


def test_drop_does_not_hold_the_catalog_while_the_collection_finishes_its_work(tmp_path):
    catalog = Catalog(str(tmp_path))
    busy = catalog.create(manifest("busy"))
    other = catalog.create(manifest("other"))
    release = threading.Event()
    original = busy.close
    busy.close = lambda: (release.wait(30), original())  # as if a long snapshot held its write mutex
    dropping = threading.Thread(target=catalog.drop, args=("busy",))
    dropping.start()
    answers = []

    def use_the_catalog():  # before the fix every catalog call waited for the snapshot, /healthz included
        while "busy" in catalog.names():
            pass
        answers.extend(catalog.get("other") is other for _ in range(100))

    user = threading.Thread(target=use_the_catalog, daemon=True)
    user.start()
    user.join(20)
    release.set()
    dropping.join(30)
    assert answers == [True] * 100
    assert not dropping.is_alive() and not os.path.exists(tmp_path / "collections" / "busy")
    catalog.close()
