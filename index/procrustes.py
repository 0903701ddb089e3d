"""Maps from a new encoder's space into an old one, fitted on paired rows (the same texts
embedded by both models, `X_new (N, d_n)` and `X_old (N, d_o)`, unit rows). A new-model query
then searches the old index as `normalise(q W)` (`map_queries`).

Three families (`MAP_KINDS`), each fitted on the same sample; an upgrade's gate measures each on
held-out rows and serves the best that passes:
- "orthogonal" (Procrustes): `W = U Vᵀ` from the thin SVD of `X_newᵀ X_old`, the matrix with
  orthonormal columns (d_n ≥ d_o) or rows (d_n < d_o) that maximises `tr(Wᵀ X_newᵀ X_old)`. It
  preserves the new space's geometry, which is right when the two models agree up to a rotation
  (same family) and too rigid across families (../shared/design/algorithms.md §3.3-3.4);
- "ridge": least squares `min ‖X_new W − X_old‖² + λ‖W‖²`, any linear map;
- "affine": ridge with a bias (`q W + b`), for models whose embeddings sit around different
  centres (e.g. instruction prefixes). Stored as one `(d_n + 1, d_o)` matrix, the bias last.
λ is chosen per family on a split of the fit rows (never on the held-out rows the gate reads).
"""

from dataclasses import dataclass

import numpy as np

from index.vectors import normalize


def fit_orthogonal_map(X_new: np.ndarray, X_old: np.ndarray) -> np.ndarray:
    """`W (d_n, d_o)` minimising ‖X_new W − X_old‖_F over (semi-)orthogonal W.

    Rows of `X_new (N, d_n)` and `X_old (N, d_o)` are the same N texts. d_n = d_o gives a
    rotation; otherwise the smaller side is embedded isometrically (orthonormal columns when
    d_n > d_o, orthonormal rows when d_n < d_o).
    """
    X_new = np.asarray(X_new, np.float64)
    X_old = np.asarray(X_old, np.float64)
    if X_new.ndim != 2 or X_old.ndim != 2 or len(X_new) != len(X_old):
        raise ValueError(f"need paired matrices, got {X_new.shape} and {X_old.shape}")
    if len(X_new) == 0:
        raise ValueError("need at least one pair to fit a map")
    U, _, Vt = np.linalg.svd(X_new.T @ X_old, full_matrices=False)  # (d_n, r), (r, d_o), r = min(d_n, d_o)
    return np.ascontiguousarray(U @ Vt, np.float32)


MAP_KINDS = ("orthogonal", "ridge", "affine")
RIDGE_GRID = (0.01, 0.1, 1.0)  # λ as a multiple of trace(XᵀX)/d_n, the mean eigenvalue


def fit_ridge_map(X_new: np.ndarray, X_old: np.ndarray, lam: float, bias: bool = False) -> np.ndarray:
    """`W (d_n, d_o)` minimising ‖X_new W − X_old‖² + λ‖W‖² (with `bias`: `(d_n + 1, d_o)`, the
    last row an unpenalised bias)."""
    X = np.asarray(X_new, np.float64)
    Y = np.asarray(X_old, np.float64)
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y) or len(X) == 0:
        raise ValueError(f"need paired, non-empty matrices, got {X.shape} and {Y.shape}")
    penalty = np.full(X.shape[1], lam)
    if bias:
        X = np.hstack([X, np.ones((len(X), 1))])
        penalty = np.append(penalty, 0.0)
    W = np.linalg.solve(X.T @ X + np.diag(penalty), X.T @ Y)
    return np.ascontiguousarray(W, np.float32)


def fit_map_kind(kind: str, X_new: np.ndarray, X_old: np.ndarray, seed: int = 0) -> np.ndarray:
    """The map of family `kind` (see the module docstring) fitted on all the given rows; ridge
    and affine pick λ from RIDGE_GRID by the mean cosine on a fifth of the rows held aside."""
    if kind == "orthogonal":
        return fit_orthogonal_map(X_new, X_old)
    if kind not in MAP_KINDS:
        raise ValueError(f"unknown map kind {kind!r}; one of {MAP_KINDS}")
    bias = kind == "affine"
    X64 = np.asarray(X_new, np.float64)
    scale = float(np.einsum("ij,ij->", X64, X64)) / X64.shape[1]
    n = len(X64)
    order = np.random.default_rng(seed).permutation(n)
    aside, rest = order[: max(1, n // 5)], order[max(1, n // 5) :]
    best, best_cos = RIDGE_GRID[0], -np.inf
    if len(rest) >= 2:
        for factor in RIDGE_GRID:
            W = fit_ridge_map(X_new[rest], X_old[rest], factor * scale * len(rest) / n, bias)
            cos = float(np.einsum("ij,ij->i", map_queries(X_new[aside], W), normalize(X_old[aside])).mean())
            if cos > best_cos:
                best, best_cos = factor, cos
    return fit_ridge_map(X_new, X_old, best * scale, bias)


def map_queries(Q_new: np.ndarray, W: np.ndarray) -> np.ndarray:
    """`(n, d_o)` unit rows: new-model queries `Q_new (n, d_n)` carried into the old space by
    `W (d_n, d_o)`, or `(d_n + 1, d_o)` for an affine map (its last row the bias).

    A projection (d_n > d_o) or a least-squares map does not keep norms: re-normalise for
    cosine (a zero row stays zero)."""
    Q = np.asarray(Q_new, np.float32)
    if W.shape[0] == Q.shape[1] + 1:
        return normalize(Q @ W[:-1] + W[-1])
    return normalize(Q @ W)


def orthogonality_error(W: np.ndarray) -> float:
    """max |WᵀW − I| (orthonormal columns) or |WWᵀ − I| (orthonormal rows), whichever side is
    smaller: 0 for an orthogonal map, and how far from one a least-squares map is."""
    W = np.asarray(W, np.float64)
    G = W.T @ W if W.shape[0] >= W.shape[1] else W @ W.T
    return float(np.abs(G - np.eye(len(G))).max())


def complete_rotation(W: np.ndarray, seed: int = 0) -> np.ndarray:
    """Square orthogonal `R (d_n, d_n)` whose first d_o columns are `W (d_n, d_o)`, d_n ≥ d_o.

    The "extra dimensions" layout (BT²'s post-hoc analogue): store a new vector as z = q R;
    z[:d_o] equals q W (old-compatible), z[d_o:] carries what the old space cannot hold, and
    ⟨z₁, z₂⟩ = ⟨q₁, q₂⟩ because R is orthogonal, so new→new results are unchanged.
    """
    d_n, d_o = W.shape
    if d_n < d_o:
        raise ValueError(f"a map to a larger space ({d_n} → {d_o}) has no square completion")
    W64 = np.asarray(W, np.float64)
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d_n, d_n - d_o))
    A -= W64 @ (W64.T @ A)  # project onto the complement of range(W) ...
    A -= W64 @ (W64.T @ A)  # ... twice, so rounding leaves nothing along W
    Q, _ = np.linalg.qr(A)
    return np.ascontiguousarray(np.hstack([W64, Q]), np.float32)


@dataclass(frozen=True)
class ScoreCalibration:
    """new→new score ≈ `scale` · mapped-new→old score + `offset`, fitted on held-out pairs.

    Mapped scores run lower than same-space ones (the map is not perfect), so a gallery that is
    half backfilled would rank its backfilled half first; calibrated, the two are comparable."""

    scale: float = 1.0
    offset: float = 0.0

    def __call__(self, mapped_scores: np.ndarray) -> np.ndarray:
        return (self.scale * np.asarray(mapped_scores, np.float64) + self.offset).astype(np.float32)


def fit_calibration(mapped: np.ndarray, same_space: np.ndarray) -> ScoreCalibration:
    """Least squares `same_space ≈ scale · mapped + offset` over paired scores `(n,)`.

    A degenerate fit (fewer than 2 points, constant scores, a non-positive slope) falls back to
    matching the means with unit scale, which keeps the order of the mapped scores."""
    x = np.asarray(mapped, np.float64).ravel()
    y = np.asarray(same_space, np.float64).ravel()
    if len(x) == 0:
        return ScoreCalibration()
    if len(x) >= 2 and x.std() > 1e-9:
        scale, offset = np.polyfit(x, y, 1)
        if scale > 0:
            return ScoreCalibration(float(scale), float(offset))
    return ScoreCalibration(1.0, float(y.mean() - x.mean()))
