"""Maps from a new encoder's space into an old one, fitted on paired rows (the same texts
embedded by both models, `X_new (N, d_n)` and `X_old (N, d_o)`, unit rows). A new-model query
then searches the old index as `normalise(q W)` (`map_queries`).

Three linear families (`LINEAR_KINDS`), each fitted on the same sample; an upgrade's gate
measures each on held-out rows and serves the best that passes:
- "orthogonal" (Procrustes): `W = U Vᵀ` from the thin SVD of `X_newᵀ X_old`, the matrix with
  orthonormal columns (d_n ≥ d_o) or rows (d_n < d_o) that maximises `tr(Wᵀ X_newᵀ X_old)`. It
  preserves the new space's geometry, which is right when the two models agree up to a rotation
  (same family) and too rigid across families (../shared/design/algorithms.md §3.3-3.4);
- "ridge": least squares `min ‖X_new W − X_old‖² + λ‖W‖²`, any linear map;
- "affine": ridge with a bias (`q W + b`), for models whose embeddings sit around different
  centres (e.g. instruction prefixes). Stored as one `(d_n + 1, d_o)` matrix, the bias last.
λ is chosen per family on a split of the fit rows (never on the held-out rows the gate reads).

A fourth, "blend" (`BLEND`), is not a matrix of its own: it takes the best linear map and
interpolates, on the sphere, between the old model's own query and the mapped new-model query
(`slerp`, weight `alpha` on the mapped one; algorithms.md §3.3 step 5, SLERP). It needs both
models at query time, and it keeps what the old space holds that a linear map from the new one
loses, which is why it can meet the compatibility criterion across families where the maps alone
cannot (85 of 90 published CLIP/SigLIP upgrades against 45 of 90 for Procrustes alone).
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


LINEAR_KINDS = ("orthogonal", "ridge", "affine")
BLEND = "blend"
MAP_KINDS = (*LINEAR_KINDS, BLEND)
# What an upgrade fits when it names none: the linear maps. A blend is asked for: its gate reads
# labelled queries, and at a few hundred of them their nDCG cannot resolve the blend's gain or
# loss against the old model (±0.005 on SciFact, either direction; README).
DEFAULT_MAP_KINDS = LINEAR_KINDS
BLEND_ALPHAS = (0.1, 0.2, 0.3, 0.5)  # the blend weights tried on labelled queries (SciFact: best 0.1-0.2)
DEFAULT_BLEND_ALPHA = 0.5  # without labels: the middle of the published best range (0.4-0.6)
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
    if kind not in LINEAR_KINDS:
        raise ValueError(f"unknown linear map kind {kind!r}; one of {LINEAR_KINDS}")
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


def slerp(U: np.ndarray, V: np.ndarray, alpha: float) -> np.ndarray:
    """`(n, d)` unit rows on the great circle from each row of `U` (alpha = 0) to the same row of
    `V` (alpha = 1), both `(n, d)` (normalised first). Rows that (nearly) coincide take the
    linear mix, which is what the arc tends to there; opposite rows have no one arc between
    them, and keep `U`'s row."""
    U64 = np.asarray(normalize(U), np.float64)
    V64 = np.asarray(normalize(V), np.float64)
    cos = np.clip(np.einsum("ij,ij->i", U64, V64), -1.0, 1.0)[:, None]
    theta = np.arccos(cos)
    sin = np.sin(theta)
    arc = sin > 1e-3  # float32 rows: an angle within 0.06° of 0 or 180° has no stable arc
    safe = np.where(arc, sin, 1.0)
    a = np.where(arc, np.sin((1 - alpha) * theta) / safe, np.where(cos > 0, 1 - alpha, 1.0))
    b = np.where(arc, np.sin(alpha * theta) / safe, np.where(cos > 0, alpha, 0.0))
    return normalize(a * U64 + b * V64)


@dataclass(frozen=True)
class QueryMap:
    """How a new-model query reaches the old index: through a linear map `W` (see `map_queries`),
    and, for a blend, from the old model's own query towards that by `alpha` (`slerp`)."""

    W: np.ndarray  # (d_new, d_old), or (d_new + 1, d_old) for an affine map
    alpha: float | None = None  # a blend's weight on the mapped query; None: the map alone

    @property
    def needs_old_queries(self) -> bool:
        """A blend starts from the old model's query: both models embed each query text."""
        return self.alpha is not None

    @property
    def merges_backfilled(self) -> bool:
        """Whether a search during the backfill also takes the backfilled documents' new→new
        hits. A map's queries do (they gain from the new vectors). A blend's do not: it ranks
        mostly as the old model does, and merged with new→new hits it fell below the old model
        alone on SciFact (50-75% backfilled, with or without score calibration; README), while
        on the old index alone it stays above."""
        return self.alpha is None

    def __call__(self, Q_new: np.ndarray, Q_old: np.ndarray | None = None) -> np.ndarray:
        """`(n, d_old)` unit rows for new-model queries `Q_new (n, d_new)` (and, for a blend, the
        same texts' old-model queries `Q_old (n, d_old)`)."""
        mapped = map_queries(Q_new, self.W)
        if self.alpha is None:
            return mapped
        if Q_old is None or np.shape(Q_old) != mapped.shape:
            raise ValueError(f"a blend needs the old model's queries, shaped {mapped.shape}")
        return slerp(Q_old, mapped, self.alpha)


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
