"""The small interfaces that the rest of `index/` composes: `VectorIndex` and its `Hits`."""

from collections.abc import Set as LabelSet
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Hits:
    """Search results for a batch of queries.

    labels: `(nq, k)` int64, best first; `-1` pads rows that found fewer than k.
    scores: `(nq, k)` float32, higher is better; `-inf` where the label is `-1`.
    """

    labels: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty(nq: int, k: int = 0) -> "Hits":
        return Hits(np.full((nq, k), -1, np.int64), np.full((nq, k), -np.inf, np.float32))

    def merged(self, labels: np.ndarray, S: np.ndarray, k: int) -> "Hits":
        """The best k of these hits and new candidates `labels (n,)` scored `S (nq, n)`: the step
        of a brute-force scan that keeps a running top-k. Ties go to these hits (earlier rows)."""
        from index.vectors import top_k  # vectors imports nothing from here; avoid a cycle at import

        labels = np.asarray(labels, np.int64)
        head = max(8 * k, 2048)
        if k > 0 and self.scores.shape[1] < k and S.shape[1] > 4 * head:
            # nothing held yet: a small head of the chunk gives each query its first k, and with
            # them a threshold for the rest
            return self.merged(labels[:head], S[:, :head], k).merged(labels[head:], S[:, head:], k)
        if k > 0 and self.scores.shape[1] >= k and len(S):
            # Once k hits are held, only scores above each query's k-th can enter: one comparison
            # pass finds those few, and selecting among them is cheap. A full partial sort of
            # every chunk (argpartition) cost 3x the matrix product of the scan.
            above = self.scores[:, k - 1 : k] < S
            counts = above.sum(axis=1)
            width = int(counts.max())
            if width <= 4 * k:
                rows, cols = np.nonzero(above)
                slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
                new = Hits.empty(len(S), width)
                new.labels[rows, slot] = labels[cols]
                new.scores[rows, slot] = S[rows, cols]
                return self._best_of(new, k)
        pos, best = top_k(S, k)  # the chunk's own top-k, then merged with these hits
        return self._best_of(Hits(labels[pos], best), k)

    def _best_of(self, new: "Hits", k: int) -> "Hits":
        from index.vectors import top_k

        scores = np.concatenate([self.scores, new.scores], axis=1)
        pos, kept = top_k(scores, k)
        return Hits(np.take_along_axis(np.concatenate([self.labels, new.labels], axis=1), pos, axis=1), kept)

    def padded(self, k: int) -> "Hits":
        """These hits padded with `-1` / `-inf` to exactly k columns."""
        out = Hits.empty(len(self.labels), k)
        out.labels[:, : self.labels.shape[1]] = self.labels
        out.scores[:, : self.scores.shape[1]] = self.scores
        return out

    @staticmethod
    def stacked(parts: "list[Hits]") -> "Hits":
        """The hits of consecutive query slices as one batch (as wide as the widest, padded)."""
        k = max(p.labels.shape[1] for p in parts)
        parts = [p.padded(k) for p in parts]
        return Hits(np.concatenate([p.labels for p in parts]), np.concatenate([p.scores for p in parts]))

    def row(self, i: int) -> list[tuple[int, float]]:
        """The `(label, score)` pairs of query `i`, without padding."""
        keep = self.labels[i] >= 0
        return list(zip(self.labels[i][keep].tolist(), self.scores[i][keep].tolist()))


class VectorIndex(Protocol):
    """A searchable set of `(label, vector)` pairs. Vectors are `prepare`d for `metric`."""

    dim: int
    metric: str

    def add(self, labels: np.ndarray, X: np.ndarray) -> None:
        """Insert or replace rows: labels `(n,)` int64, X `(n, dim)` float32."""

    def delete(self, labels: np.ndarray) -> None:
        """Remove labels; labels that are absent are ignored."""

    def search(
        self, Q: np.ndarray, k: int, ef: int | None = None, allowed: LabelSet | None = None, threads: int | None = None
    ) -> Hits:
        """Top-k of queries `Q (nq, dim)`, optionally restricted to the `allowed` labels.
        `threads`: how many threads may share the queries (None: the index's choice; 1: the
        calling thread only, e.g. for work whose CPU time is budgeted)."""

    def __len__(self) -> int:
        """The number of live (not deleted) vectors."""

    def save(self, path: str) -> None:
        """Write the index to `path`; the matching `load` restores identical results."""
