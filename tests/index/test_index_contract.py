"""One contract, two implementations: every `VectorIndex` must pass these (HnswIndex, ExactIndex)."""

import threading

import numpy as np
import pytest

from index.exact import ExactIndex
from index.hnsw import HnswIndex, HnswParams
from tests.support.evaluate import overlap_at_k

IMPLEMENTATIONS = {
    "hnsw": lambda dim, metric: HnswIndex(
        dim, metric, HnswParams(m=16, ef_construction=100, ef_search=64), capacity=16
    ),
    "exact": lambda dim, metric: ExactIndex(dim, metric, capacity=4),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make(request):
    return IMPLEMENTATIONS[request.param]


def random_data(n=800, dim=24, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def brute_force(X, labels, Q, metric, k):
    oracle = ExactIndex(X.shape[1], metric)
    oracle.add(labels, X)
    return oracle.search(Q, k)


def test_empty_index_returns_padding(make):
    index = make(8, "cosine")
    hits = index.search(np.ones((2, 8), np.float32), 5)
    assert len(index) == 0
    assert hits.labels.shape == (2, 5) and (hits.labels == -1).all() and np.isneginf(hits.scores).all()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_self_query_finds_itself_and_capacity_grows(make, metric):
    X = random_data()
    index = make(X.shape[1], metric)
    for start in range(0, len(X), 100):  # many small adds: capacity must grow past 16
        index.add(np.arange(start, start + 100), X[start : start + 100])
    assert len(index) == len(X)
    hits = index.search(X[:200], 1)
    assert (hits.labels[:, 0] == np.arange(200)).mean() >= 0.99


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_scores_are_exact_and_higher_is_better(make, metric):
    X, Q = random_data(300), random_data(20, seed=1)
    index = make(X.shape[1], metric)
    index.add(np.arange(300), X)
    hits = index.search(Q, 5)
    truth = brute_force(X, np.arange(300), Q, metric, 5)
    assert (np.diff(hits.scores, axis=1) <= 1e-6).all()  # best first
    found = hits.labels[hits.labels >= 0]
    if metric == "cosine":
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
        expected = np.take_along_axis(Qn @ Xn.T, hits.labels, axis=1)
    elif metric == "ip":
        expected = np.take_along_axis(Q @ X.T, hits.labels, axis=1)
    else:
        expected = -np.linalg.norm(Q[:, None] - X[hits.labels], axis=2)
    assert len(found) == 100
    assert np.allclose(hits.scores, expected, atol=1e-4)
    assert overlap_at_k(hits.labels.tolist(), truth.labels.tolist(), 5) >= 0.95


def test_upsert_replaces_in_place(make):
    X = random_data(100)
    index = make(X.shape[1], "cosine")
    index.add(np.arange(100), X)
    new = random_data(1, seed=9)
    index.add(np.array([7]), new)
    assert len(index) == 100
    hits = index.search(new, 1)
    assert hits.labels[0, 0] == 7 and hits.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert 7 not in index.search(X[7:8], 3).labels[0] or index.search(X[7:8], 3).scores[0, 0] < 0.999


def test_delete_hides_labels_and_re_add_revives(make):
    X = random_data(200)
    index = make(X.shape[1], "cosine")
    index.add(np.arange(200), X)
    index.delete(np.arange(0, 200, 2))
    index.delete(np.array([0, 999]))  # already deleted, and never present: both no-ops
    assert len(index) == 100
    hits = index.search(X, 10)
    assert (hits.labels % 2 == 1).all()
    index.add(np.array([4]), X[4:5])
    assert len(index) == 101 and index.search(X[4:5], 1).labels[0, 0] == 4


def test_k_larger_than_count_and_heavy_deletes(make):
    X = random_data(300)
    index = make(X.shape[1], "cosine")
    index.add(np.arange(300), X)
    index.delete(np.arange(297))  # three survivors in a graph of deleted nodes
    hits = index.search(X[:4], 10)
    assert sorted(hits.labels[0][:3].tolist()) == [297, 298, 299]
    assert (hits.labels[:, 3:] == -1).all()


def test_allowed_labels_restrict_results(make):
    X = random_data(500)
    index = make(X.shape[1], "cosine")
    index.add(np.arange(500), X)
    allowed = set(range(0, 500, 50))  # 10 labels
    hits = index.search(X[:5], 20, allowed=allowed)
    kept = hits.labels[hits.labels >= 0]
    assert set(kept.tolist()) <= allowed
    assert (hits.labels >= 0).sum(axis=1).tolist() == [10] * 5
    assert (index.search(X[:1], 5, allowed=set()).labels == -1).all()


def test_save_load_gives_identical_results(make, tmp_path):
    X, Q = random_data(600), random_data(200, seed=3)
    index = make(X.shape[1], "cosine")
    index.add(np.arange(600), X)
    index.delete(np.arange(10))
    before = index.search(Q, 10)
    path = str(tmp_path / "index.bin")
    index.save(path)
    loaded = type(index).load(path)
    after = loaded.search(Q, 10)
    assert len(loaded) == len(index) == 590
    assert np.array_equal(before.labels, after.labels)
    assert np.allclose(before.scores, after.scores)


def test_concurrent_searches_and_writes(make):
    X = random_data(3000)
    index = make(X.shape[1], "cosine")
    index.add(np.arange(1000), X[:1000])
    errors = []

    def searcher():
        try:
            for i in range(150):
                hits = index.search(X[i : i + 1], 5)
                assert (hits.labels[0] >= 0).all()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def writer():
        try:
            for start in range(1000, 3000, 100):
                index.add(np.arange(start, start + 100), X[start : start + 100])
                index.delete(np.arange(start - 1000, start - 950))
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(4)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == 3000 - 20 * 50
    deleted = np.concatenate([np.arange(s - 1000, s - 950) for s in range(1000, 3000, 100)])
    live = np.setdiff1d(np.arange(3000), deleted)
    hits = index.search(X[live], 1)
    assert (hits.labels[:, 0] == live).mean() >= 0.99
    assert not np.isin(index.search(X[deleted], 5).labels, deleted).any()


def test_hnsw_recall_on_real_minilm_embeddings(glosses):
    """recall@10 ≥ 0.95 against exact search on 2,800 MiniLM-embedded WordNet glosses."""
    _, X = glosses
    corpus, queries = X[:2800], X[2800:]
    hnsw = HnswIndex(X.shape[1], "cosine")  # the service defaults: M=32, ef_construction=200, ef=100
    hnsw.add(np.arange(len(corpus)), corpus)
    truth = brute_force(corpus, np.arange(len(corpus)), queries, "cosine", 10)
    found = hnsw.search(queries, 10)
    recall = overlap_at_k(found.labels.tolist(), truth.labels.tolist(), 10)
    assert recall >= 0.95, recall
    low_ef = hnsw.search(queries, 10, ef=10)  # a narrower search is allowed to lose recall, not to break
    assert overlap_at_k(low_ef.labels.tolist(), truth.labels.tolist(), 10) <= recall
