"""Exact Chamfer (MaxSim) scoring of token sets, and query ball carving.

Chamfer(Q, P) = Σ_{q∈Q} max_{p∈P} ⟨q, p⟩. Many documents are scored at once: their token
matrices are concatenated and one matrix product gives every (query token, document token)
score; a segmented max per document and a sum over query tokens finish it.
"""

from collections.abc import Sequence

import numpy as np


class TokenBatch:
    """Token sets packed for scoring: `tokens (T, d)` float32 and `offsets (n+1,)` so that set i
    is `tokens[offsets[i]:offsets[i+1]]`. Every set is non-empty."""

    def __init__(self, sets: Sequence[np.ndarray]):
        sizes = np.fromiter((len(s) for s in sets), np.int64, len(sets))
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.tokens = (
            np.concatenate([np.asarray(s, np.float32) for s in sets]) if len(sets) else np.zeros((0, 0), np.float32)
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def chamfer(self, Q: np.ndarray) -> np.ndarray:
        """`(n,)` Chamfer scores of the query token matrix `Q (m, d)` against every set."""
        if len(self) == 0:
            return np.zeros(0, np.float32)
        S = np.asarray(Q, np.float32) @ self.tokens.T  # (m, T)
        return np.maximum.reduceat(S, self.offsets[:-1], axis=1).sum(axis=0)

    def chamfer_many(self, Qs: Sequence[np.ndarray], budget: int = 1 << 25) -> np.ndarray:
        """`(len(Qs), n)` Chamfer scores of each query token matrix `Qs[i] (m_i, d)` against every
        set. All queries' tokens go through one matrix product per slice of sets (slices sized so
        the `(sum m_i, tokens)` score block stays under `budget` floats): a product per query
        re-read every stored token once per query, which bounded brute-force MaxSim by memory
        bandwidth."""
        out = np.zeros((len(Qs), len(self)), np.float32)
        if len(self) == 0 or not len(Qs):
            return out
        Q = np.concatenate([np.asarray(q, np.float32) for q in Qs])
        rows = np.concatenate([[0], np.cumsum([len(q) for q in Qs])[:-1]])  # each query's first row
        per_slice = max(1, budget // len(Q))  # tokens
        start = 0
        while start < len(self):
            end = int(np.searchsorted(self.offsets, self.offsets[start] + per_slice, side="right")) - 1
            end = min(len(self), max(end, start + 1))
            first = self.offsets[start]
            S = Q @ self.tokens[first : self.offsets[end]].T  # (sum m_i, tokens of the slice)
            best = np.maximum.reduceat(S, self.offsets[start:end] - first, axis=1)  # (sum m_i, sets)
            out[:, start:end] = np.add.reduceat(best, rows, axis=0)
            start = end
        return out


def chamfer(Q: np.ndarray, sets: Sequence[np.ndarray]) -> np.ndarray:
    """`(n,)` Chamfer scores of `Q (m, d)` against each token set in `sets`."""
    return TokenBatch(sets).chamfer(Q)


def ball_carve(Q: np.ndarray, threshold: float = 0.7) -> np.ndarray:
    """Greedy ball carving of query tokens (MUVERA appendix C.3): take the first unclustered
    token, put every unclustered token with ⟨q, q'⟩ > threshold in its cluster, repeat.
    Returns `(c, d)`, the SUM of each cluster: Chamfer against it approximates the full query
    with c ≤ m rows. One vectorised step per cluster, never per token pair."""
    Q = np.asarray(Q, np.float32)
    close = threshold < (Q @ Q.T)  # (m, m)
    free = np.ones(len(Q), bool)
    clusters = []
    while free.any():
        seed = int(np.argmax(free))
        members = free & close[seed]
        members[seed] = True
        clusters.append(Q[members].sum(axis=0))
        free &= ~members
    return np.stack(clusters)
