"""Exact scoring from the store: brute-force search and the re-ranking of ANN candidates.

Both read vectors from the `Store` (the source of truth), so final scores never depend on
what an index kept (a truncated prefix, a rotated copy, a stale update).
"""

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from index.protocols import Hits
from index.store import Store
from index.vectors import scores, top_k


@dataclass(frozen=True)
class Match:
    """One search result: the caller's id, the exact score, and what was asked to include."""

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None


def exact_search(store: Store, Q: np.ndarray, k: int, metric: str, labels: Sequence[int] | None = None,
                 view: Callable[[np.ndarray], np.ndarray] | None = None) -> Hits:
    """Brute-force top-k of `Q (nq, d)` over the live documents (or only `labels`).

    `view` maps stored `(n, D)` vectors into the queries' space (a truncated, rotated prefix);
    without it the queries are full-dim. Streams the store in chunks with a running top-k.
    """
    best = Hits.empty(len(Q), 0)
    for chunk_labels, X in store.iter_vectors(labels):
        if view is not None:
            X = view(X)
        S = np.concatenate([best.scores, scores(Q, X, metric)], axis=1)
        L = np.concatenate([best.labels, np.broadcast_to(chunk_labels, (len(Q), len(chunk_labels)))], axis=1)
        pos, kept = top_k(S, k)
        best = Hits(np.take_along_axis(L, pos, axis=1), kept)
    hits = Hits.empty(len(Q), k)
    hits.labels[:, : best.labels.shape[1]] = best.labels
    hits.scores[:, : best.scores.shape[1]] = best.scores
    return hits


def rerank_exact(
    store: Store, Q: np.ndarray, candidates: Hits, k: int, metric: str, include: Sequence[str] = ()
) -> list[list[Match]]:
    """Re-score each query's candidate labels exactly from stored vectors; keep the best k.

    One store read for the whole batch also hydrates ids and the `include`d fields. Labels
    deleted since the index answered are dropped.
    """
    wanted = np.unique(candidates.labels[candidates.labels >= 0])
    docs = store.fetch(wanted.tolist(), text="text" in include, metadata="metadata" in include)
    results = []
    for i, q in enumerate(Q):
        found = [docs[label] for label in candidates.labels[i].tolist() if label in docs]
        if not found:
            results.append([])
            continue
        exact = scores(q[None, :], np.stack([d.vector for d in found]), metric)[0]
        order = np.lexsort((np.arange(len(found)), -exact))[:k]
        results.append(
            [
                Match(
                    id=found[j].id,
                    score=float(exact[j]),
                    text=found[j].text,
                    metadata=found[j].metadata,
                    vector=found[j].vector if "vector" in include else None,
                )
                for j in order.tolist()
            ]
        )
    return results


def hydrate(store: Store, hits: Hits, include: Sequence[str] = ()) -> list[list[Match]]:
    """Matches for `hits` as the index scored them (no re-scoring), with ids and `include`d fields."""
    wanted = np.unique(hits.labels[hits.labels >= 0])
    docs = store.fetch(wanted.tolist(), text="text" in include, metadata="metadata" in include)
    return [
        [
            Match(id=docs[label].id, score=score, text=docs[label].text, metadata=docs[label].metadata,
                  vector=docs[label].vector if "vector" in include else None)
            for label, score in hits.row(i)
            if label in docs
        ]
        for i in range(len(hits.labels))
    ]
