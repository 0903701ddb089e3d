"""Elastic dimensions: Matryoshka prefix views and the orthogonal PCA rotation ("elasticizer").

A collection stores full-dim vectors; each indexed dim `d` sees `view(x) = prefix_d(x @ R)`,
re-normalised for cosine. `R` is the identity for Matryoshka-trained models and an uncentred
PCA basis otherwise, so the first coordinates carry the most energy. `R` is orthogonal, hence
full-dim inner products, norms and rankings are unchanged: rotation never applies at full dim.
"""

from dataclasses import dataclass

import numpy as np

from index.errors import Invalid
from index.vectors import normalize


@dataclass(frozen=True)
class DimView:
    """How the index for one dim derives its vectors from stored `(n, full_dim)` vectors."""

    dim: int
    full_dim: int
    metric: str
    rotation: np.ndarray | None = None  # (full_dim, full_dim) orthogonal; columns = basis

    @property
    def is_full(self) -> bool:
        return self.dim == self.full_dim

    def apply(self, X: np.ndarray) -> np.ndarray:
        """`(n, full_dim)` → `(n, dim)` float32; never mutates `X`."""
        if self.is_full:
            return X
        Y = self.prefix(X)
        # Cosine compares directions, so a prefix is re-normalised; ip and l2 keep raw prefixes,
        # whose scores then approximate the full-dim ones for the shortlist.
        return normalize(Y) if self.metric == "cosine" else Y

    def prefix(self, X: np.ndarray) -> np.ndarray:
        """`(n, full_dim)` → the raw rotated prefix `(n, dim)` float32 (not re-normalised)."""
        Y = X @ self.rotation[:, : self.dim] if self.rotation is not None else X[:, : self.dim]
        return np.ascontiguousarray(Y, dtype=np.float32)

    def lift(self, Y: np.ndarray) -> np.ndarray:
        """View-space rows `(n, dim)` → full-dim rows `(n, full_dim)` with `lift(y) · x ==
        y · prefix(x)` for every full-dim x (the transpose of `prefix`): a view-space query
        lifted once scores stored rows without rotating them."""
        if self.rotation is not None:
            return np.ascontiguousarray(Y @ self.rotation[:, : self.dim].T, dtype=np.float32)
        out = np.zeros((len(Y), self.full_dim), np.float32)
        out[:, : self.dim] = Y
        return out


def check_dims(dims: list[int] | None, full_dim: int) -> list[int]:
    """Validated, sorted, unique indexed dims (default: the full dim only)."""
    if not dims:
        return [full_dim]
    bad = [d for d in dims if not isinstance(d, int) or d < 1 or d > full_dim]
    if bad:
        raise Invalid(
            f"dims {bad} are out of range: each must be between 1 and the vectors' {full_dim}", code="invalid_dims"
        )
    if len(set(dims)) != len(dims):
        raise Invalid(f"dims {dims} contain duplicates", code="invalid_dims")
    return sorted(dims)


@dataclass(frozen=True)
class PcaFit:
    rotation: np.ndarray  # (D, D) float32, orthogonal, columns sorted by eigenvalue (largest first)
    eigenvalues: np.ndarray  # (D,) float64, descending; their sum is the mean squared norm
    n_fit: int

    def energy(self, dim: int) -> float:
        """Share of the sample's second moment that the first `dim` rotated coordinates keep."""
        total = float(self.eigenvalues.sum())
        return float(self.eigenvalues[:dim].sum() / total) if total > 0 else 0.0


# A PCA fit holds a few (D, D) float64 matrices: 4096 dims is ~130 MiB each; 16384 would be 2 GiB.
MAX_ROTATION_DIM = 4096


def second_moment(chunks) -> tuple[np.ndarray | None, int]:
    """`(XᵀX (D, D) float64, n)` accumulated over chunks `(n_i, D)`: memory O(D²), never O(n·D)."""
    C, n = None, 0
    for X in chunks:
        X64 = np.asarray(X, np.float64)
        C = X64.T @ X64 if C is None else C + X64.T @ X64
        n += len(X64)
    return C, n


def fit_pca_rotation(X: np.ndarray) -> PcaFit:
    """Uncentred PCA of `X (n, D)`: eigenvectors of the second moment `XᵀX / n`."""
    return pca_from_moment(*second_moment([X]))


def pca_from_moment(C: np.ndarray | None, n: int) -> PcaFit:
    """The uncentred PCA rotation from a second moment `C = XᵀX (D, D)` over `n` rows.

    Uncentred, because centring would change the inner products that rankings use. The sign of
    each eigenvector is fixed (largest-magnitude entry positive) so a fit is deterministic.
    """
    if n == 0 or C is None:
        raise Invalid("cannot fit a rotation on an empty collection: add documents first", code="empty_collection")
    if len(C) > MAX_ROTATION_DIM:
        raise Invalid(
            f"a PCA rotation of {len(C)} dims is too large to fit (limit {MAX_ROTATION_DIM})", code="rotation_too_large"
        )
    eigenvalues, V = np.linalg.eigh(C / n)  # ascending
    order = np.argsort(-eigenvalues, kind="stable")
    eigenvalues, V = np.maximum(eigenvalues[order], 0.0), V[:, order]
    signs = np.sign(V[np.argmax(np.abs(V), axis=0), np.arange(V.shape[1])])
    V = V * np.where(signs == 0, 1.0, signs)
    # Re-orthonormalise in float64 before the float32 cast so R stays orthogonal to ~1e-7.
    Q, R = np.linalg.qr(V)
    Q = Q * np.sign(np.diag(R))
    return PcaFit(rotation=np.ascontiguousarray(Q, np.float32), eigenvalues=eigenvalues, n_fit=n)


def sample_labels(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A deterministic sample (sorted) of at most `size` of `labels`."""
    labels = np.sort(np.asarray(labels, np.int64))
    if len(labels) <= size:
        return labels
    return np.sort(np.random.default_rng(seed).choice(labels, size=size, replace=False))
