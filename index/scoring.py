"""Exact scoring at full dim: brute-force search and the re-ranking of ANN candidates.

Both read the full-dim vectors (the `VectorFile` mirror of the store), so final scores never
depend on what a graph kept (a truncated prefix, a rotated copy); hydration reads the store.
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.elastic import DimView
from index.exact import exact_top_k
from index.protocols import Hits
from index.store import Store
from index.vectorfile import VectorFile
from index.vectors import candidate_scores, row_norms, top_k


@dataclass(frozen=True)
class Match:
    """One search result: the caller's id, the exact score, and what was asked to include."""

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None
    nbytes: int = 0  # stored text and metadata bytes it carries (a response's size, before it is built)


# The work of one chunk of a brute-force scan, each chunk one unit of work for `index.pacing`
# (a model call that starts during a unit waits for its end), and the chunk's bounds in rows.
# A scan reads more than it multiplies: measured here over 117k 384-d rows (one thread), a
# chunk of 4,096 rows took 1.6 ms to score for 8 queries and 2.0 for 32 (it streams 6 MB from
# memory at ~4 GB/s), so a chunk is bounded by the bytes it reads as well as by its
# multiply-adds. At 2,048 rows the whole scan took 5% longer than at 4,096 (1,024: 15%, the
# running top-k merges once per chunk, and a Python thread's hand-offs beside the scan slowed:
# p99 2.2 against 0.7 ms at 8,192). In the text-latency benchmark chunks of 4,096 rows made
# units of 2.7 ms on average and the model calls that met one waited 1.05 ms on average; at
# 2,048, 1.6 and 0.53 ms.
UNIT_BYTES = 3 * 2**20
UNIT_MACS = 24_000_000
MIN_SCAN_ROWS, MAX_SCAN_ROWS = 2048, 8192


def scan_rows(queries: int, dim: int) -> int:
    """Rows per chunk when `queries` queries scan `dim`-wide float32 rows: at most UNIT_BYTES
    read and ~UNIT_MACS multiply-adds, within the bounds."""
    rows = min(UNIT_BYTES // (4 * dim), UNIT_MACS // (max(queries, 1) * dim))
    return int(np.clip(rows, MIN_SCAN_ROWS, MAX_SCAN_ROWS))


def exact_search(
    vectors: VectorFile,
    Q: np.ndarray,
    k: int,
    metric: str,
    labels: np.ndarray | None = None,
    view: Callable[[np.ndarray], np.ndarray] | None = None,
    scorer: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> Hits:
    """Brute-force top-k of `Q (nq, d)` over the live documents of the vector file (or only
    `labels`), through `exact_top_k`. `view` maps stored `(n, D)` vectors into the queries'
    space (a truncated, rotated prefix); without it the queries are full-dim. `scorer` (a
    `LiftedView`) scores chunks instead."""
    rows = scan_rows(len(Q), vectors.dim)
    if labels is None:
        source = vectors.chunks(rows)
    else:
        source = (vectors.gather(labels[s : s + rows]) for s in range(0, len(labels), rows))
    return exact_top_k(Q, source, k, metric, view, scorer)


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


def overlapping_label_scores(vectors: VectorFile, Q: np.ndarray, labels: np.ndarray, metric: str) -> np.ndarray:
    """As `label_scores` for rows that repeat labels (several shortlists of one query side by
    side): each row's distinct labels are scored once and the scores copied to the repeats, so
    the per-query gather is as wide as the distinct candidates, not the sum of the lists."""
    order = np.argsort(labels, axis=1, kind="stable")
    ordered = np.take_along_axis(labels, order, axis=1)
    first = np.ones(labels.shape, bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = np.cumsum(first, axis=1) - 1  # each sorted entry's place among its row's distinct labels
    distinct = np.full((len(labels), int(group[:, -1].max()) + 1 if labels.size else 0), -1, labels.dtype)
    rows = np.nonzero(first)[0]
    distinct[rows, group[first]] = ordered[first]
    scores = label_scores(vectors, Q, distinct, metric)
    place = np.empty_like(group)
    np.put_along_axis(place, order, group, axis=1)
    return np.take_along_axis(scores, place, axis=1)


def hydrate(store: Store, hits: Hits, include: Sequence[str] = ()) -> list[list[Match]]:
    """Matches for `hits` as the index scored them (no re-scoring), with ids and `include`d fields."""
    wanted = np.unique(hits.labels[hits.labels >= 0])
    if not include:  # ids only: the common case of a batch, and a tenth of its time with rows built
        ids = store.ids(wanted.tolist())
        return [
            [Match(id=ids[label], score=score) for label, score in hits.row(i) if label in ids]
            for i in range(len(hits.labels))
        ]
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


class ViewNorms:
    """`|prefix(x)|` (the rotated prefix before re-normalising) of each stored row, by label, for
    one dim's view: with them, scores in the view need no rotated copy of the rows
    (`LiftedView`). Kept in step with the vector file by each row's checksum: a row written
    since its norm was taken is recomputed from the rows in hand, so no write path has to know
    about this cache. Memory: 12 bytes per row."""

    def __init__(self, view: DimView):
        self.view = view
        self._norms = np.zeros(0, np.float64)
        self._crcs = np.zeros(0, np.uint32)
        self._known = np.zeros(0, bool)
        self._lock = threading.Lock()

    def of(self, vectors: VectorFile, labels: np.ndarray, X: np.ndarray) -> np.ndarray:
        """`(n,)` float64 norms of the live rows `labels (n,)`, whose stored values are `X (n, D)`."""
        if len(labels) == 0:
            return np.zeros(0, np.float64)
        crcs = vectors.checksums(labels)
        with self._lock:
            size = int(labels.max()) + 1
            if size > len(self._known):
                grown = max(size, 2 * len(self._known))
                self._norms = np.resize(self._norms, grown)
                self._crcs = np.resize(self._crcs, grown)
                self._known = np.concatenate([self._known, np.zeros(grown - len(self._known), bool)])
            stale = ~self._known[labels] | (self._crcs[labels] != crcs)
            if stale.any():
                rows = labels[stale]
                self._norms[rows] = row_norms(self.view.prefix(X[stale]))
                self._crcs[rows] = crcs[stale]
                self._known[rows] = True
            return self._norms[labels]


class LiftedView:
    """Scores of queries in a dim's view `Qv (nq, dim)` against stored full-dim rows, without
    rotating the rows: `Qv · prefix(x) = lift(Qv) · x` (`DimView.lift`), then per row what the
    metric needs of the view: cosine divides by `|prefix(x)|`, l2 uses its square, ip nothing.
    Rotating every row costs D·dim per row; a lifted query D per row and query, so a brute-force
    pass in the view costs what a full-dim pass costs (the exact re-runs of a funnel's samples)."""

    def __init__(self, vectors: VectorFile, view: DimView, norms: ViewNorms, Qv: np.ndarray):
        self.vectors, self.view, self.norms = vectors, view, norms
        self.metric = view.metric
        self.lifted = view.lift(Qv)  # (nq, D)
        self._q_sq = (np.asarray(Qv, np.float64) ** 2).sum(1)

    def __call__(self, labels: np.ndarray, X: np.ndarray) -> np.ndarray:
        """`(nq, n)` view scores of every query against rows `X (n, D)` with `labels (n,)`."""
        dots = self.lifted @ X.T
        return self._finish(dots, self._view_norms(labels, X)[None, :], self._q_sq[:, None])

    def label_scores(self, labels: np.ndarray) -> np.ndarray:
        """As `label_scores` in the view: `(nq, C)` scores of each query against its own
        `labels (nq, C)`; -inf for empty slots and deleted labels."""
        wanted = np.unique(labels[labels >= 0])
        found, X = self.vectors.gather(wanted)
        if len(found) == 0:
            return np.full(labels.shape, -np.inf, np.float32)
        pos = np.minimum(np.searchsorted(found, labels), len(found) - 1)
        live = (labels >= 0) & (found[pos] == labels)
        dots = candidate_scores(self.lifted, X, pos, "ip")
        S = self._finish(dots, self._view_norms(found, X)[pos], self._q_sq[:, None])
        return np.where(live, S, -np.inf).astype(np.float32)

    def _view_norms(self, labels: np.ndarray, X: np.ndarray) -> np.ndarray:
        if self.metric == "ip":
            return np.ones(len(labels))
        return self.norms.of(self.vectors, labels, X)

    def _finish(self, dots: np.ndarray, norms: np.ndarray, q_sq: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":  # a zero prefix re-normalises to zero: it scores 0
            return (dots / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        if self.metric == "l2":
            return (-np.sqrt(np.maximum(q_sq + norms**2 - 2.0 * dots, 0.0))).astype(np.float32)
        return dots.astype(np.float32, copy=False)
