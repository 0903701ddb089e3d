"""Pure numpy helpers shared by every index: validation, normalisation and exact scoring.

Conventions: float32, C-contiguous, inputs never mutated, and a *score* is always
"higher is better": cosine similarity, inner product, or minus the Euclidean distance.
"""

from typing import Literal

import numpy as np

from index.errors import Invalid

Metric = Literal["cosine", "ip", "l2"]
METRICS: tuple[str, ...] = ("cosine", "ip", "l2")

# The largest norm an ip or l2 vector may have: inner products (≤ norm²) and squared distances
# (≤ (2·norm)²) then stay finite in float32 (max 3.4e38), in hnswlib as in numpy, so no score
# overflows to infinity and drops a hit.
MAX_NORM = 1e18


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise Invalid(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", code="unknown_metric")
    return metric


def as_matrix(X, dim: int, what: str = "vector") -> np.ndarray:
    """Validate and copy `X` into a float32 C-contiguous `(n, dim)` matrix.

    Accepts one vector `(dim,)` or a batch `(n, dim)`. Raises `Invalid` on a wrong dimension,
    a ragged input, or non-finite values (NaN or infinity, including numbers beyond float32).
    """
    try:
        M = np.array(X, dtype=np.float32, order="C", copy=True)
    except (ValueError, TypeError, OverflowError) as exc:
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


def row_norms(X: np.ndarray) -> np.ndarray:
    """`(n,)` float64 norms of the rows of `X (n, d)`. In float64, so that a finite float32 row
    never overflows (1e30² is infinite in float32) and a tiny one never underflows to zero."""
    X64 = np.asarray(X, np.float64)
    return np.sqrt(np.einsum("ij,ij->i", X64, X64))


def normalize(X: np.ndarray) -> np.ndarray:
    """Return a unit-length float32 copy of the rows of `X` `(n, d)`; zero rows stay zero."""
    norms = row_norms(X)
    return (np.asarray(X, np.float64) / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)


def check_norms(X: np.ndarray, metric: str, what: str = "vector") -> None:
    """Reject what an index cannot score: a zero vector under cosine (it has no direction), and
    under ip or l2 a norm above `MAX_NORM` (its scores would overflow float32)."""
    norms = row_norms(X)
    if metric == "cosine":
        if (norms == 0).any():
            raise Invalid(f"{what}: a zero vector has no direction under the cosine metric", code="zero_vector")
    elif (norms > MAX_NORM).any():
        raise Invalid(
            f"{what} has norm {norms.max():.3g}; under the {metric} metric the limit is {MAX_NORM:.0e} "
            f"(larger scores would overflow)",
            code="vector_too_large",
        )


def prepare(X: np.ndarray, metric: str, what: str = "vector") -> np.ndarray:
    """Validate `X (n, d)` for `metric` (`check_norms`) and return what an index stores for it:
    unit rows for cosine, the raw rows otherwise. The user-facing gate, before any write."""
    check_norms(X, metric, what)
    return index_rows(X, metric)


def index_rows(X: np.ndarray, metric: str) -> np.ndarray:
    """What an index stores for `metric` (unit rows for cosine, raw rows otherwise), without
    rejecting anything: a zero row stays zero and scores 0. Indexes apply rows a collection
    has already validated and committed, and a derived view (a rotated prefix) may be zero."""
    if metric != "cosine":
        return np.ascontiguousarray(X, dtype=np.float32)
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
        part = np.argpartition(S, n - k, axis=1)[:, n - k :]  # the k largest, without negating a copy of S
    else:
        part = np.broadcast_to(np.arange(n), (nq, n))
    part_scores = np.take_along_axis(S, part, axis=1)
    # lexsort: last key is primary → by descending score, then ascending position
    order = np.lexsort((part, -part_scores), axis=1)
    pos = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return pos, np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
