"""Pure numpy helpers: validation, normalisation, exact scores, top-k."""

import numpy as np
import pytest

from index.errors import Invalid
from index.vectors import as_matrix, candidate_scores, normalize, prepare, scores, top_k


def test_as_matrix_accepts_one_vector_or_a_batch_and_copies():
    v = [1.0, 2.0, 3.0]
    assert as_matrix(v, 3).shape == (1, 3)
    X = np.ones((4, 3), np.float64)
    M = as_matrix(X, 3)
    assert M.dtype == np.float32 and M.flags.c_contiguous
    M[0, 0] = 5
    assert X[0, 0] == 1  # input untouched


@pytest.mark.parametrize(
    "bad, code",
    [
        ([1.0, 2.0], "wrong_dimension"),
        ([1.0, float("nan"), 2.0], "non_finite"),
        ([1.0, float("inf"), 2.0], "non_finite"),
        ([[1.0, 2.0, 3.0], [1.0]], "invalid_vector"),
        (["a", "b", "c"], "invalid_vector"),
    ],
)
def test_as_matrix_rejects(bad, code):
    with pytest.raises(Invalid) as err:
        as_matrix(bad, 3)
    assert err.value.code == code


def test_normalize_keeps_zero_rows_and_does_not_mutate():
    X = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    N = normalize(X)
    assert np.allclose(N, [[0.6, 0.8], [0, 0]])
    assert X[0, 0] == 3.0


def test_prepare_rejects_zero_vectors_for_cosine_only():
    Z = np.zeros((1, 3), np.float32)
    with pytest.raises(Invalid):
        prepare(Z, "cosine")
    assert np.array_equal(prepare(Z, "l2"), Z)


def test_scores_match_definitions():
    rng = np.random.default_rng(0)
    Q, X = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(5, 8)).astype(np.float32)
    assert np.allclose(scores(Q, X, "ip"), Q @ X.T, atol=1e-5)
    l2 = -np.linalg.norm(Q[:, None, :] - X[None, :, :], axis=2)
    assert np.allclose(scores(Q, X, "l2"), l2, atol=1e-4)
    Qn, Xn = normalize(Q), normalize(X)
    cos = (Q @ X.T) / np.linalg.norm(Q, axis=1)[:, None] / np.linalg.norm(X, axis=1)[None, :]
    assert np.allclose(scores(Qn, Xn, "cosine"), cos, atol=1e-5)


def test_top_k_sorted_with_deterministic_ties():
    S = np.array([[0.1, 0.9, 0.5, 0.9, 0.2]], np.float32)
    pos, best = top_k(S, 3)
    assert pos.tolist() == [[1, 3, 2]] and np.allclose(best, [[0.9, 0.9, 0.5]])
    pos, _ = top_k(S, 10)  # k beyond n returns n
    assert pos.shape == (1, 5)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_candidate_scores_equal_full_scores_at_the_candidates(metric):
    rng = np.random.default_rng(4)
    Q, X = rng.normal(size=(130, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    rows = rng.integers(0, 50, size=(130, 7))
    expected = np.take_along_axis(scores(Q, X, metric), rows, axis=1)
    assert np.allclose(candidate_scores(Q, X, rows, metric, chunk=16), expected, atol=1e-4)
