"""Exact scoring at full dim: brute-force search and the re-ranking of ANN candidates.

Both read the full-dim vectors (the `VectorFile` mirror of the store), so final scores never
depend on what a graph kept (a truncated prefix, a rotated copy); hydration reads the store.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.exact import exact_top_k
from index.protocols import Hits
from index.store import Store
from index.vectorfile import VectorFile
from index.vectors import candidate_scores, top_k


@dataclass(frozen=True)
class Match:
    """One search result: the caller's id, the exact score, and what was asked to include."""

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None
    nbytes: int = 0  # stored text and metadata bytes it carries (a response's size, before it is built)


def exact_search(
    vectors: VectorFile,
    Q: np.ndarray,
    k: int,
    metric: str,
    labels: np.ndarray | None = None,
    view: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Hits:
    """Brute-force top-k of `Q (nq, d)` over the live documents of the vector file (or only
    `labels`), through `exact_top_k`. `view` maps stored `(n, D)` vectors into the queries'
    space (a truncated, rotated prefix); without it the queries are full-dim."""
    if labels is None:
        source = vectors.chunks()
    else:
        source = (vectors.gather(labels[s : s + 32768]) for s in range(0, len(labels), 32768))
    return exact_top_k(Q, source, k, metric, view)


def rerank_exact(
    store: Store, vectors: VectorFile, Q: np.ndarray, candidates: Hits, k: int, metric: str, include: Sequence[str] = ()
) -> list[list[Match]]:
    """Re-score each query's candidate labels exactly at full dim; keep the best k, hydrated."""
    return hydrate(store, rerank_hits(vectors, Q, candidates, k, metric), include)


def rerank_hits(vectors: VectorFile, Q: np.ndarray, candidates: Hits, k: int, metric: str) -> Hits:
    """The best k of each query's candidates by exact full-dim score. Labels deleted since the
    index answered drop out."""
    S = label_scores(vectors, Q, candidates.labels, metric)
    order, best = top_k(S, k)
    top = np.where(np.isfinite(best), np.take_along_axis(candidates.labels, order, axis=1), -1)
    return Hits(top, best)


def label_scores(
    vectors: VectorFile,
    Q: np.ndarray,
    labels: np.ndarray,
    metric: str,
    view: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Exact scores `(nq, C)` of each query `Q[i]` against its own `labels[i]`; -inf for empty
    slots (-1) and deleted labels.

    One gather of the wanted rows for the whole batch, then one product per query chunk;
    `view` maps the gathered full-dim rows into the queries' space, as in `exact_search`.
    """
    wanted = np.unique(labels[labels >= 0])
    found, X = vectors.gather(wanted)
    if len(found) == 0:
        return np.full(labels.shape, -np.inf, np.float32)
    if view is not None:
        X = view(X)
    pos = np.minimum(np.searchsorted(found, labels), len(found) - 1)
    live = (labels >= 0) & (found[pos] == labels)
    return np.where(live, candidate_scores(Q, X, pos, metric), -np.inf).astype(np.float32)


def hydrate(store: Store, hits: Hits, include: Sequence[str] = ()) -> list[list[Match]]:
    """Matches for `hits` as the index scored them (no re-scoring), with ids and `include`d fields."""
    wanted = np.unique(hits.labels[hits.labels >= 0])
    docs = store.fetch(
        wanted.tolist(), text="text" in include, metadata="metadata" in include, vector="vector" in include
    )
    return [
        [
            Match(
                id=docs[label].id,
                score=score,
                text=docs[label].text,
                metadata=docs[label].metadata,
                vector=docs[label].vector if "vector" in include else None,
                nbytes=docs[label].nbytes,
            )
            for label, score in hits.row(i)
            if label in docs
        ]
        for i in range(len(hits.labels))
    ]
