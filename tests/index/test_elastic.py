"""Elastic dimensions in index/: prefix views, the PCA rotation, funnel search, per-dim graphs."""

import os

import numpy as np
import pytest

from index import Collection, HnswParams, Manifest, NewDocument, Query
from index.elastic import check_dims, fit_pca_rotation
from index.errors import Invalid
from index.exact import ExactIndex
from index.manifest import Elasticizer
from tests.support.evaluate import overlap_at_k


def make(path, dims, kind="pca", fit_at=10**9, dim=384, **kw) -> Collection:
    os.makedirs(path, exist_ok=True)
    m = Manifest(
        name="e",
        dim=dim,
        metric="cosine",
        hnsw=HnswParams(),
        created_at="2026-01-01T00:00:00",
        dims=dims,
        elasticizer=Elasticizer(kind=kind, sample=20000, seed=0, fit_at=fit_at),
        **kw,
    )
    return Collection.create(str(path), m)


def docs(X, start=0):
    return [NewDocument(id=f"d{start + i}", vector=x) for i, x in enumerate(X)]


def ids(result):
    return [[m.id for m in row] for row in result.matches]


def test_pca_rotation_is_orthogonal_sorted_and_deterministic(glosses):
    _, X = glosses
    a, b = fit_pca_rotation(X), fit_pca_rotation(X.copy())
    R = a.rotation.astype(np.float64)
    assert np.abs(R.T @ R - np.eye(384)).max() < 1e-5
    assert np.array_equal(a.rotation, b.rotation)
    assert (np.diff(a.eigenvalues) <= 1e-12).all()
    assert a.energy(64) < a.energy(96) < a.energy(384) == pytest.approx(1.0)
    # the first PCA coordinates carry more energy than the model's own first coordinates
    plain = (X[:, :64] ** 2).sum() / (X**2).sum()
    assert a.energy(64) > plain + 0.1


def test_rotated_full_dim_search_equals_unrotated(glosses):
    _, X = glosses
    R = fit_pca_rotation(X).rotation
    corpus, queries = X[:2800], X[2800:]
    plain, rotated = ExactIndex(384), ExactIndex(384)
    plain.add(np.arange(2800), corpus)
    rotated.add(np.arange(2800), corpus @ R)
    a, b = plain.search(queries, 10), rotated.search(queries @ R, 10)
    assert np.array_equal(a.labels, b.labels)
    assert np.allclose(a.scores, b.scores, atol=1e-5)


def test_check_dims():
    assert check_dims(None, 384) == [384] and check_dims([384, 64], 384) == [64, 384]
    for bad in ([0], [385], [64, 64]):
        with pytest.raises(Invalid):
            check_dims(bad, 384)


@pytest.fixture
def elastic(tmp_path, glosses):
    _, X = glosses
    c = make(tmp_path / "c", [64, 96, 384])
    c.upsert(docs(X[:2800]))
    yield c, X
    c.close()


def test_funnel_at_96_dims_keeps_recall_with_the_rotation(elastic):
    c, X = elastic
    Q = X[2800:]
    truth = ids(c.search(Query(Q, 10, exact=True)))  # full-dim brute force
    plain = overlap_at_k(ids(c.search(Query(Q, 10, dim=96))), truth, 10)
    full_before = c.search(Query(Q, 10))
    record = c.fit_rotation()
    assert record.n_fit == 2800 and record.energy["96"] > record.energy["64"]
    rotated = c.search(Query(Q, 10, dim=96))
    assert rotated.dim == 96 and rotated.candidates == 10 * c.rerank_factor(96)
    recall = overlap_at_k(ids(rotated), truth, 10)
    assert recall >= 0.95, (plain, recall)
    assert recall >= plain
    # the full-dim graph is not touched by a rotation: identical answers before and after
    full_after = c.search(Query(Q, 10))
    assert ids(full_after) == ids(full_before)
    assert [[m.score for m in r] for r in full_after.matches] == [[m.score for m in r] for r in full_before.matches]


def test_rerank_false_returns_the_low_dim_scores(elastic):
    c, X = elastic
    c.fit_rotation()
    view = c._state.indexes.views[64]
    q = X[2900]
    low = c.search(Query(q, 5, dim=64, rerank=False, exact=True, include=["vector"]))
    expected = view.apply(np.stack([m.vector for m in low.matches[0]])) @ view.apply(q[None])[0]
    assert np.allclose([m.score for m in low.matches[0]], expected, atol=1e-5)
    brute = view.apply(X[:2800]) @ view.apply(q[None])[0]
    assert [m.id for m in low.matches[0]] == [f"d{i}" for i in np.argsort(-brute)[:5]]
    full = c.search(Query(q, 5, dim=64))  # funnel: exact full-dim scores
    assert np.allclose(
        [m.score for m in full.matches[0]],
        [float(m.vector @ q) for m in c.search(Query(q, 5, dim=64, include=["vector"])).matches[0]],
        atol=1e-5,
    )


def test_refit_is_deterministic_for_a_seed(elastic):
    c, _ = elastic
    a = c.fit_rotation(sample=1000, seed=7)
    b = c.fit_rotation(sample=1000, seed=7)
    other = c.fit_rotation(sample=1000, seed=8)
    assert a.sha256 == b.sha256 and a.n_fit == 1000
    assert other.sha256 != a.sha256
    assert os.listdir(os.path.join(c.path, "rotations")) == [other.file]  # old files removed


def test_per_dim_graphs_survive_restart_and_crash(elastic):
    c, X = elastic
    c.fit_rotation()  # ends with a snapshot of every graph
    Q = X[2800:2900]
    c.upsert(docs(X[2900:2950], 2900))  # after the snapshot: must be replayed into every graph
    after_write = {d: ids(c.search(Query(Q, 10, dim=d))) for d in (64, 96, 384)}
    new = X[2900:2950]
    for d in (64, 96, 384):  # each graph found the new documents themselves
        assert [row[0] for row in ids(c.search(Query(new, 1, dim=d)))] == [f"d{i}" for i in range(2900, 2950)]
    crashed = Collection.open(c.path)  # no close(): what a kill -9 leaves behind
    assert crashed.dims == [64, 96, 384] and len(crashed) == 2850
    for d in (64, 96, 384):
        assert [row[0] for row in ids(crashed.search(Query(new, 1, dim=d)))] == [f"d{i}" for i in range(2900, 2950)]
    assert crashed.manifest.rotation.sha256 == c.manifest.rotation.sha256
    assert {d: ids(crashed.search(Query(Q, 10, dim=d))) for d in (64, 96, 384)} == after_write
    crashed.snapshot()
    crashed.close()
    c.close()
    reopened = Collection.open(c.path)
    assert {d: ids(reopened.search(Query(Q, 10, dim=d))) for d in (64, 96, 384)} == after_write
    assert reopened.stats()["snapshot_seq"] == reopened.stats()["applied_seq"]
    reopened.close()


def test_a_lost_rotation_file_falls_back_and_refits(elastic):
    c, X = elastic
    record = c.fit_rotation()
    c.close()
    os.remove(os.path.join(c.path, "rotations", record.file))
    reopened = Collection.open(c.path)
    assert reopened.manifest.rotation is None
    assert len(reopened.search(Query(X[2900], 5, dim=64)).matches[0]) == 5  # plain prefixes meanwhile
    assert reopened.fit_rotation().sha256 == record.sha256  # same data, same seed: same rotation
    reopened.close()


def test_invalid_dims_and_empty_refit(tmp_path, glosses):
    _, X = glosses
    with pytest.raises(Invalid):
        make(tmp_path / "bad", [500])
    c = make(tmp_path / "empty", [64, 384])
    with pytest.raises(Invalid) as err:
        c.fit_rotation()
    assert err.value.code == "empty_collection" and c.manifest.rotation is None
    c.upsert(docs(X[:10]))
    with pytest.raises(Invalid) as err:
        c.search(Query(X[0], 3, dim=128))
    assert err.value.code == "invalid_dim" and "[64, 384]" in err.value.message
    c.close()


def test_auto_fit_is_wanted_once_enough_documents_exist(tmp_path, glosses):
    _, X = glosses
    c = make(tmp_path / "auto", [64, 384], fit_at=100)
    c.upsert(docs(X[:99]))
    assert not c.wants_rotation_fit
    c.upsert(docs(X[99:101], 99))
    assert c.wants_rotation_fit
    c.fit_rotation()
    assert not c.wants_rotation_fit
    none = make(tmp_path / "mrl", [64, 384], kind="none", fit_at=1)
    none.upsert(docs(X[:10]))
    assert not none.wants_rotation_fit  # Matryoshka-trained: truncate natively
    c.close()
    none.close()
