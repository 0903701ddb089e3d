"""The memory-mapped full-dim mirror of the store: rows by label, growth, liveness, rebuild."""

import os

import numpy as np
import pytest

from index.elastic import DimView, fit_pca_rotation
from index.scoring import LiftedView, ViewNorms, label_scores, overlapping_label_scores
from index.vectorfile import VectorFile
from index.vectors import scores


def test_rows_by_label_grow_and_survive_reopen(tmp_path):
    path = str(tmp_path / "v.f32")
    vf = VectorFile(path, 4, capacity=2)
    assert vf.fresh
    X = np.arange(40, dtype=np.float32).reshape(10, 4)
    vf.add(np.arange(1, 11), X)  # past the initial capacity
    assert vf.capacity >= 11 and len(vf) == 10
    labels, rows = vf.gather(np.array([7, 3, 99, -1, 10]))
    assert labels.tolist() == [7, 3, 10] and np.array_equal(rows, X[[6, 2, 9]])
    vf.delete(np.array([3, 1000]))
    assert vf.gather(np.array([3, 4]))[0].tolist() == [4]
    chunked = list(vf.chunks(size=4))
    assert np.concatenate([c[0] for c in chunked]).tolist() == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    vf.flush()
    again = VectorFile(path, 4)
    assert not again.fresh
    again.set_live(np.array([1, 2, 10]))
    labels, rows = again.gather(np.arange(12))
    assert labels.tolist() == [1, 2, 10] and np.array_equal(rows, X[[0, 1, 9]])


def test_a_mis_sized_file_is_treated_as_missing(tmp_path):
    path = tmp_path / "v.f32"
    path.write_bytes(b"\x00" * 10)  # not a whole number of 4-dim rows
    vf = VectorFile(str(path), 4)
    assert vf.fresh and len(vf) == 0 and os.path.getsize(path) % 16 == 0


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("rotated", [True, False])
def test_lifted_view_scores_equal_scores_of_rotated_rows_and_follow_rewrites(tmp_path, metric, rotated):
    """The recall oracle scores a funnel's view without rotating the stored rows: the lifted
    queries and the cached row norms give the scores of the rotated, re-normalised rows, also
    after a row is rewritten (its checksum changes, so its norm is taken again)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 32)).astype(np.float32)
    if metric == "cosine":
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    R = fit_pca_rotation(X).rotation if rotated else None
    view = DimView(8, 32, metric, R)
    vf = VectorFile(str(tmp_path / "v"), 32)
    vf.add(np.arange(500), X)
    norms = ViewNorms(view)
    Qv = view.apply(rng.standard_normal((5, 32)).astype(np.float32))
    if metric == "cosine":
        Qv = Qv / np.linalg.norm(Qv, axis=1, keepdims=True)

    def check():
        lifted = LiftedView(vf, view, norms, Qv)
        labels, rows = next(vf.chunks())
        assert np.allclose(lifted(labels, rows), scores(Qv, view.apply(rows), metric), atol=1e-4)
        picked = rng.integers(0, 500, (5, 7))
        expected = label_scores(vf, Qv, picked, metric, view.apply)
        assert np.allclose(lifted.label_scores(picked), expected, atol=1e-4)

    check()
    new = rng.standard_normal((3, 32)).astype(np.float32)
    vf.add(np.array([4, 5, 6]), new / np.linalg.norm(new, axis=1, keepdims=True) if metric == "cosine" else new)
    check()


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_overlapping_label_scores_score_each_distinct_label_once_and_agree(tmp_path, metric):
    """Shortlists of one query side by side repeat labels (and empty slots, and deleted rows):
    the scores are label_scores' own, position for position."""
    rng = np.random.default_rng(3)
    vf = VectorFile(str(tmp_path / "v.f32"), 16, capacity=64)
    vf.add(np.arange(1, 61), rng.standard_normal((60, 16)).astype(np.float32))
    vf.delete(np.array([5, 6]))
    Q = rng.standard_normal((4, 16)).astype(np.float32)
    short = rng.integers(-1, 61, (4, 5))
    labels = np.hstack([short, rng.integers(-1, 61, (4, 9)), short[:, ::-1]])  # repeats within each row
    expected = label_scores(vf, Q, labels, metric)
    got = overlapping_label_scores(vf, Q, labels, metric)
    assert got.shape == labels.shape
    assert np.allclose(got, expected, atol=1e-5) and np.array_equal(np.isinf(got), np.isinf(expected))
