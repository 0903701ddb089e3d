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
