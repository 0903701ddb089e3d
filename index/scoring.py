"""Exact scoring at full dim: brute-force search and the re-ranking of ANN candidates.

Both read the full-dim vectors (the `VectorFile` mirror of the store), so final scores never
depend on what a graph kept (a truncated prefix, a rotated copy); hydration reads the store.
"""

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from index.protocols import Hits
from index.store import Store
from index.vectorfile import VectorFile
from index.vectors import candidate_scores, scores, top_k


@dataclass(frozen=True)
class Match:
    """One search result: the caller's id, the exact score, and what was asked to include."""

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None


def exact_search(vectors: VectorFile, Q: np.ndarray, k: int, metric: str, labels: np.ndarray | None = None,
                 view: Callable[[np.ndarray], np.ndarray] | None = None) -> Hits:
    """Brute-force top-k of `Q (nq, d)` over the live documents (or only `labels`).

    `view` maps stored `(n, D)` vectors into the queries' space (a truncated, rotated prefix);
    without it the queries are full-dim. Works chunk by chunk with a running top-k.
    """
    if labels is None:
        source = vectors.chunks()
    else:
        source = (vectors.gather(labels[s:s + 32768]) for s in range(0, len(labels), 32768))
    best = Hits.empty(len(Q), 0)
    for chunk_labels, X in source:
        if len(chunk_labels) == 0:
            continue
        if view is not None:
            X = view(X)
        best = best.merged(chunk_labels, scores(Q, X, metric), k)
    return best.padded(k)


def rerank_exact(
    store: Store, vectors: VectorFile, Q: np.ndarray, candidates: Hits, k: int, metric: str,
    include: Sequence[str] = ()
) -> list[list[Match]]:
    """Re-score each query's candidate labels exactly at full dim; keep the best k.

    One gather of the candidates' full-dim rows for the whole batch, one matrix product, then
    only the final k per query are hydrated from the store. Labels deleted since the index
    answered drop out.
    """
    wanted = np.unique(candidates.labels[candidates.labels >= 0])
    labels, X = vectors.gather(wanted)
    if len(labels) == 0:
        return [[] for _ in range(len(Q))]
    pos = np.minimum(np.searchsorted(labels, candidates.labels), len(labels) - 1)
    live = (candidates.labels >= 0) & (labels[pos] == candidates.labels)
    S = np.where(live, candidate_scores(Q, X, pos, metric), -np.inf)
    order, best = top_k(S, k)
    top = np.where(np.isfinite(best), np.take_along_axis(np.where(live, candidates.labels, -1), order, axis=1), -1)
    return hydrate(store, Hits(top, best), include)


def hydrate(store: Store, hits: Hits, include: Sequence[str] = ()) -> list[list[Match]]:
    """Matches for `hits` as the index scored them (no re-scoring), with ids and `include`d fields."""
    wanted = np.unique(hits.labels[hits.labels >= 0])
    docs = store.fetch(wanted.tolist(), text="text" in include, metadata="metadata" in include,
                       vector="vector" in include)
    return [
        [
            Match(id=docs[label].id, score=score, text=docs[label].text, metadata=docs[label].metadata,
                  vector=docs[label].vector if "vector" in include else None)
            for label, score in hits.row(i)
            if label in docs
        ]
        for i in range(len(hits.labels))
    ]
