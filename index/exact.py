"""Exact search: `exact_top_k`, the one brute-force searcher every exact path uses (the vector
file scan, hnswlib's fallback, the test oracle), and `ExactIndex`, a brute-force `VectorIndex`."""

import threading
from collections.abc import Callable, Iterable
from collections.abc import Set as LabelSet

import numpy as np

from index.errors import Invalid
from index.pacing import checkpoint
from index.protocols import Hits
from index.vectors import as_matrix, check_metric, index_rows, scores


def exact_top_k(
    Q: np.ndarray,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    k: int,
    metric: str,
    view: Callable[[np.ndarray], np.ndarray] | None = None,
    scorer: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> Hits:
    """Top-k of queries `Q (nq, d)` over rows streamed as `(labels (n,), rows (n, D))` chunks,
    keeping a running top-k (memory: one chunk). `view` maps the rows into the queries' space
    (a rotated, truncated prefix); without it rows and queries share a space. Both sides must
    be `prepare`d for `metric`. `scorer(labels, rows) -> (nq, n)` replaces both (scores
    computed another way, e.g. `index.scoring.LiftedView`). Ties go to the earlier row. Each
    chunk is one unit of work for `index.pacing`."""
    best = Hits.empty(len(Q), 0)
    for labels, X in chunks:
        checkpoint()
        if len(labels):
            if scorer is not None:
                S = scorer(labels, X)
            else:
                S = scores(Q, view(X) if view is not None else X, metric)
            best = best.merged(labels, S, k)
    return best.padded(k)


class ExactIndex:
    """All vectors in one growing float32 matrix; search is one matrix product.

    Thread-safe: a lock guards the matrix, and searches work on a consistent view.
    """

    def __init__(self, dim: int, metric: str = "cosine", capacity: int = 1024):
        self.dim = int(dim)
        self.metric = check_metric(metric)
        self._X = np.zeros((max(capacity, 1), self.dim), np.float32)
        self._labels = np.zeros(max(capacity, 1), np.int64)
        self._row_of: dict[int, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_vectors(cls, labels: np.ndarray, X: np.ndarray, metric: str) -> "ExactIndex":
        """An index over `X (n, d)` with `labels (n,)`; `X` must already be `prepare`d."""
        index = cls(X.shape[1], metric, capacity=len(labels))
        n = len(labels)
        index._X[:n] = X
        index._labels[:n] = labels
        index._row_of = {int(label): i for i, label in enumerate(labels.tolist())}
        return index

    def __len__(self) -> int:
        return len(self._row_of)

    def add(self, labels: np.ndarray, X: np.ndarray) -> None:
        labels = np.asarray(labels, np.int64).reshape(-1)
        X = index_rows(as_matrix(X, self.dim), self.metric)
        if len(labels) != len(X):
            raise Invalid(f"{len(labels)} labels for {len(X)} vectors")
        with self._lock:
            for label, x in zip(labels.tolist(), X):
                row = self._row_of.get(label)
                if row is None:
                    row = len(self._row_of)
                    self._grow(row + 1)
                    self._row_of[label] = row
                    self._labels[row] = label
                self._X[row] = x

    def delete(self, labels: np.ndarray) -> None:
        with self._lock:
            for label in np.asarray(labels, np.int64).reshape(-1).tolist():
                row = self._row_of.pop(label, None)
                if row is None:
                    continue
                last = len(self._row_of)  # swap the last row into the hole
                if row != last:
                    moved = int(self._labels[last])
                    self._X[row] = self._X[last]
                    self._labels[row] = moved
                    self._row_of[moved] = row

    def search(
        self, Q: np.ndarray, k: int, ef: int | None = None, allowed: LabelSet | None = None, threads: int | None = None
    ) -> Hits:
        """Exact top-k; `ef` and `threads` are accepted for the contract and ignored (one product
        on the calling thread)."""
        Q = index_rows(as_matrix(Q, self.dim, "query"), self.metric)
        with self._lock:
            n = len(self._row_of)
            X, labels = self._X[:n].copy(), self._labels[:n].copy()
        if allowed is not None:
            mask = np.isin(labels, np.fromiter(allowed, np.int64, len(allowed)))
            X, labels = X[mask], labels[mask]
        return exact_top_k(Q, [(labels, X)], k, self.metric)

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        """The stored rows `(n, dim)` for `labels`; raises KeyError for an unknown label."""
        with self._lock:
            return self._X[[self._row_of[int(label)] for label in labels]].copy()

    def save(self, path: str) -> None:
        with self._lock:
            n = len(self._row_of)
            with open(path, "wb") as f:
                np.savez(f, labels=self._labels[:n], X=self._X[:n], metric=np.array(self.metric))

    @classmethod
    def load(cls, path: str) -> "ExactIndex":
        with np.load(path) as data:
            return cls.from_vectors(data["labels"], data["X"], str(data["metric"]))

    def _grow(self, needed: int) -> None:
        if needed <= len(self._labels):
            return
        size = max(needed, 2 * len(self._labels))
        X = np.zeros((size, self.dim), np.float32)
        X[: len(self._X)] = self._X
        labels = np.zeros(size, np.int64)
        labels[: len(self._labels)] = self._labels
        self._X, self._labels = X, labels
