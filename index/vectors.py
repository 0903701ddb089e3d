"""Pure numpy helpers shared by every index: validation, normalisation and exact scoring.

Conventions: float32, C-contiguous, inputs never mutated, and a *score* is always
"higher is better": cosine similarity, inner product, or minus the Euclidean distance.
"""

from typing import Literal

import numpy as np

from index.errors import Invalid

Metric = Literal["cosine", "ip", "l2"]
METRICS: tuple[str, ...] = ("cosine", "ip", "l2")

# Norms below this are treated as zero: such a vector has no direction to compare.
EPS = 1e-12


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise Invalid(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", code="unknown_metric")
    return metric


def as_matrix(X, dim: int, what: str = "vector") -> np.ndarray:
    """Validate and copy `X` into a float32 C-contiguous `(n, dim)` matrix.

    Accepts one vector `(dim,)` or a batch `(n, dim)`. Raises `Invalid` on a wrong dimension,
    a ragged input, or non-finite values (NaN or infinity).
    """
    try:
        M = np.array(X, dtype=np.float32, order="C", copy=True)
    except (ValueError, TypeError) as exc:
        raise Invalid(f"{what} must be a list of numbers: {exc}", code="invalid_vector") from None
    if M.ndim == 1:
        M = M.reshape(1, -1)
    if M.ndim != 2:
        raise Invalid(f"{what} must be 1- or 2-dimensional, got shape {M.shape}", code="invalid_vector")
    if M.shape[1] != dim:
        raise Invalid(f"{what} has {M.shape[1]} dimensions; expected {dim}", code="wrong_dimension")
    if not np.isfinite(M).all():
        raise Invalid(f"{what} contains NaN or infinity", code="non_finite")
    return M


def normalize(X: np.ndarray) -> np.ndarray:
    """Return a unit-length copy of the rows of `X` `(n, d)`; zero rows stay zero."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.maximum(norms, EPS)).astype(np.float32, copy=False)


def prepare(X: np.ndarray, metric: str) -> np.ndarray:
    """What an index stores for a metric: unit rows for cosine, the raw rows otherwise.

    Cosine vectors with zero norm are rejected: they have no direction, so every score is 0.
    """
    if metric != "cosine":
        return np.ascontiguousarray(X, dtype=np.float32)
    if (np.linalg.norm(X, axis=1) < 1e-6).any():
        raise Invalid("a zero vector has no direction under the cosine metric", code="zero_vector")
    return normalize(X)


def scores(Q: np.ndarray, X: np.ndarray, metric: str) -> np.ndarray:
    """Exact scores `(nq, n)` of queries `Q (nq, d)` against rows `X (n, d)`; higher is better.

    Both sides must already be `prepare`d for the metric (unit rows for cosine).
    """
    dots = Q @ X.T
    if metric != "l2":
        return dots.astype(np.float32, copy=False)
    sq = (Q * Q).sum(1)[:, None] + (X * X).sum(1)[None, :] - 2.0 * dots
    return (-np.sqrt(np.maximum(sq, 0.0))).astype(np.float32, copy=False)


def candidate_scores(Q: np.ndarray, X: np.ndarray, rows: np.ndarray, metric: str, chunk: int = 64) -> np.ndarray:
    """Exact scores `(nq, C)` of each query `Q[i]` against its own candidates `X[rows[i]]`.

    Q `(nq, d)`, X `(m, d)`, rows `(nq, C)` int positions into X. Chunked so a large batch never
    materialises more than `chunk · C · d` gathered floats, nor scores every query against
    every other query's candidates.
    """
    out = np.empty(rows.shape, np.float32)
    for s in range(0, len(Q), chunk):
        G = X[rows[s : s + chunk]]  # (c, C, d)
        q = Q[s : s + chunk, None, :]
        if metric == "l2":
            out[s : s + chunk] = -np.sqrt(np.maximum(((G - q) ** 2).sum(-1), 0.0))
        else:
            out[s : s + chunk] = np.einsum("icd,id->ic", G, Q[s : s + chunk])
    return out


def top_k(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a score matrix `S (nq, n)`.

    Returns `(positions (nq, k) int64, scores (nq, k) float32)`, best first. Ties are broken by
    lower position so results are deterministic.
    """
    nq, n = S.shape
    k = min(k, n)
    if k == 0:
        return np.zeros((nq, 0), np.int64), np.zeros((nq, 0), np.float32)
    if k < n:
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), (nq, n))
    part_scores = np.take_along_axis(S, part, axis=1)
    # lexsort: last key is primary → by descending score, then ascending position
    order = np.lexsort((part, -part_scores), axis=1)
    pos = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return pos, np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
