"""Dense collections: one full-dim vector per document, a graph per Matryoshka dim.

A search picks a dim's graph (its view: the rotated, truncated prefix) and, below full dim,
runs a funnel: shortlist `k · rerank_factor` candidates, re-score them exactly at full dim from
the vector file. Filters that leave few documents, and searches that ask, are exact.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from index.backend import Query, SearchResult
from index.elastic import MAX_ROTATION_DIM, DimView, check_dims, sample_labels
from index.errors import Invalid
from index.indexset import require_dim
from index.manifest import Manifest
from index.pacing import in_slices
from index.protocols import Hits
from index.recall_oracle import (
    EF,
    FACTOR,
    FINAL_STAGE,
    INDEX_STAGE,
    RecallProbe,
    StageRecall,
    WhatIf,
    per_query_recall,
)
from index.scoring import (
    LiftedView,
    ViewNorms,
    exact_search,
    hydrate,
    label_scores,
    overlapping_label_scores,
    rerank_exact,
    rerank_hits,
)
from index.store import NewDocument, StoredDocument
from index.vectors import as_matrix, prepare, top_k

from .state import CollectionState


@dataclass(frozen=True)
class _DenseQueries:
    """What a dense probe's exact re-run needs: full-dim queries, the dim's view and its queries."""

    full: np.ndarray  # (nq, D), prepared
    view: DimView
    in_view: np.ndarray  # (nq, dim)
    rerank: bool


class DenseScoring:
    kind = "dense"
    supports_rotation = True

    # -- creation -------------------------------------------------------------------------------
    @staticmethod
    def validate(manifest: Manifest) -> Manifest:
        """The manifest a new dense collection is created with (dims checked and sorted)."""
        manifest = manifest.replace(dims=check_dims(manifest.dims, manifest.dim), rotation=None, snapshot=None)
        _check_rerank_factor(manifest.rerank_factor)
        if (
            manifest.elasticizer.kind == "pca"
            and manifest.dim > MAX_ROTATION_DIM
            and min(manifest.indexed_dims) < manifest.dim
        ):
            raise Invalid(
                f"a PCA elasticizer needs at most {MAX_ROTATION_DIM} dims (these vectors have {manifest.dim}); "
                f'use elasticizer kind "none"',
                code="rotation_too_large",
            )
        return manifest

    def __init__(self, manifest: Manifest):
        self._dim, self._metric = manifest.dim, manifest.metric
        self._view_norms: dict[int, ViewNorms] = {}  # dim → its view's row norms, for the recall oracle

    # -- documents ------------------------------------------------------------------------------
    def prepare(self, docs: Sequence[NewDocument]) -> tuple[list[NewDocument], np.ndarray, dict[str, float]]:
        """Validated documents and their index vectors `(n, D)` (unit rows for cosine)."""
        for d in docs:  # per document first, so that an error names it
            if d.vector is None:
                raise Invalid(f"document {d.id[:80]!r} has no vector", code="missing_content")
            if len(d.vector) != self._dim or getattr(d.vector, "ndim", 1) != 1:
                raise Invalid(
                    f"document {d.id[:80]!r}: vector has {len(d.vector)} dimensions; the collection expects "
                    f"{self._dim}",
                    code="wrong_dimension",
                )
        X = prepare(as_matrix([d.vector for d in docs], self._dim), self._metric)
        return [replace(doc, vector=x) for doc, x in zip(docs, X)], X, {}

    def present(self, doc: StoredDocument) -> StoredDocument:
        return doc

    # -- searches -------------------------------------------------------------------------------
    def index_name(self, dim: int) -> str:
        return str(dim)

    def check(self, s: CollectionState, query: Query) -> None:
        """Everything about a query: k, the dim, the funnel, no token options, and its vectors
        when given."""
        self._check_options(s, query)
        if query.queries is not None:
            prepare(as_matrix(query.queries, self._dim, "query vector"), self._metric, "query vector")

    def _check_options(self, s: CollectionState, query: Query) -> None:
        check_dense_options(s.name, query, s.indexes.dims)

    def shortlist(self, s: CollectionState, query: Query) -> int:
        """How many candidates the search re-ranks: `k · rerank_factor` in a low-dim funnel, else k."""
        dim = query.dim or s.indexes.default_dim
        if query.rerank and dim < self._dim:
            return query.k * (query.rerank_factor or s.rerank_factor(dim))
        return query.k

    def search(self, s: CollectionState, query: Query) -> SearchResult:
        """Top-k documents for each full-dim query vector `(nq, D)` (see the module docstring);
        `rerank=False` returns the candidates with the scores of their own dim."""
        self._check_options(s, query)  # the vectors are checked as they are prepared, below
        indexes = s.indexes  # a rebuild may swap it; this search finishes on the one it saw
        dim = query.dim or indexes.default_dim
        view = indexes.views[dim]
        Q = prepare(as_matrix(query.queries, self._dim, "query vector"), self._metric, "query vector")
        Qv = view.apply(Q)
        # Every array below is sized by what exists, never by what was asked for.
        k = min(query.k, max(len(indexes), 1))
        shortlist = min(self.shortlist(s, replace(query, k=k)), max(len(indexes), k))
        ef_setting = query.ef if query.ef is not None else s.ef_search(dim)
        timings: dict[str, float] = {}
        with s.reading():
            allowed = None
            if query.filter:
                t0 = time.perf_counter()
                allowed = s.store.filter_labels(query.filter.conditions())
                timings["filter"] = time.perf_counter() - t0
            exact = query.exact or (allowed is not None and len(allowed) <= s.exact_filter_limit())
            t0 = time.perf_counter()
            if exact:
                hits = exact_search(
                    s.vectors, Qv, shortlist, self._metric, allowed, None if view.is_full else view.apply
                )
            else:
                labels = None if allowed is None else frozenset(allowed.tolist())
                hits = indexes.search(dim, Qv, shortlist, ef_setting, labels)
            t1 = time.perf_counter()
            # At full dim the candidates were scored on the stored vectors themselves (the graph
            # holds them; exact search reads them): those scores are the exact ones, to float
            # rounding, and re-scoring them would only cost a gather per search.
            if query.rerank and not view.is_full:
                matches = rerank_exact(s.store, s.vectors, Q, hits, k, self._metric, query.include)
            else:
                matches = hydrate(s.store, hits, query.include)
            t2 = time.perf_counter()
        timings.update({"exact_search" if exact else "index_search": t1 - t0, "rerank": t2 - t1})
        probe = None
        if query.probe and not exact:
            probe = RecallProbe(
                self.index_name(dim),
                dim,
                k,
                shortlist,
                max(ef_setting, shortlist),
                ef_setting,
                query.ef is not None,
                hits,
                allowed,
                _DenseQueries(Q, view, Qv, query.rerank),
                funnel=query.rerank and not view.is_full,
                rerank_pinned=query.rerank_factor is not None,
            )
        return SearchResult(
            matches, "exact" if exact else "hnsw", dim, shortlist, timings, 0 if exact else ef_setting, probe
        )

    # -- recall ---------------------------------------------------------------------------------
    def evaluate_recall(
        self, s: CollectionState, probe: RecallProbe, what_if: WhatIf | None = None
    ) -> list[StageRecall]:
        """Re-run a sampled search by brute force over the full-dim vector file and compare.

        Index stage: the graph's shortlist against the exact top-shortlist in the dim's view.
        Final stage: the results returned (the shortlist re-ranked at full dim, or its first k
        without re-ranking) against the exact full-dim top-k. At full dim they coincide.
        `what_if`: the graph searched again (on this thread) at each ef, its shortlist's index
        recall (in a re-ranking funnel: the final recall of its re-ranked top-k, what the ef
        buys the user there); and, in a re-ranking funnel, at each factor (shortlist k·factor,
        the probe's ef setting), the final recall of its re-ranked top-k; each against the same
        exact answers.
        Documents written since the search count as the oracle sees them now.
        """
        q: _DenseQueries = probe.payload
        what_if = what_if or WhatIf()
        allowed = None if probe.allowed is None else frozenset(probe.allowed.tolist())
        lifted = None if q.view.is_full else LiftedView(s.vectors, q.view, self._norms_of(q.view), q.in_view)
        with s.reading():
            truth_view = exact_search(s.vectors, q.in_view, probe.shortlist, self._metric, probe.allowed, scorer=lifted)

            def index_recall(labels: np.ndarray) -> np.ndarray:
                if lifted is not None:
                    return per_query_recall(lifted.label_scores(labels), truth_view)
                return per_query_recall(label_scores(s.vectors, q.in_view, labels, self._metric), truth_view)

            # the search as it ran is one of them (hnswlib's search is deterministic)
            searched: dict[tuple[int, int], Hits] = {(probe.shortlist, probe.ef): probe.found}

            def graph(shortlist: int, ef: int) -> Hits:
                # an ef below the shortlist searches as broad as the shortlist: one search for all
                key = (shortlist, max(ef, shortlist))
                if key not in searched:

                    def run(part: np.ndarray) -> Hits:
                        return s.indexes.search(probe.dim, part, shortlist, ef, allowed, threads=1)

                    searched[key] = Hits.stacked(in_slices(run, q.in_view))  # a few searches a unit of work
                return searched[key]

            index = index_recall(probe.found.labels)
            stages = [StageRecall(probe.index, INDEX_STAGE, index, probe.shortlist, probe.ef, probe.shortlist)]
            funnel = q.rerank and not q.view.is_full
            truth = None if q.view.is_full else exact_search(s.vectors, q.full, probe.k, self._metric, probe.allowed)
            reranked: dict[int, np.ndarray] = {}  # final recall per search breadth

            def final_recall(ef: int) -> np.ndarray:
                assert truth is not None  # a funnel's view is never the full one
                breadth = max(ef, probe.shortlist)
                if breadth not in reranked:
                    hits = rerank_hits(s.vectors, q.full, graph(probe.shortlist, ef), probe.k, self._metric)
                    reranked[breadth] = per_query_recall(hits.scores, truth)
                return reranked[breadth]

            for ef in what_if.efs:
                breadth = max(ef, probe.shortlist)
                if funnel:
                    recall, stage, size = final_recall(ef), FINAL_STAGE, probe.k
                else:
                    recall, stage, size = index_recall(graph(probe.shortlist, ef).labels), INDEX_STAGE, probe.shortlist
                stages.append(StageRecall(probe.index, stage, recall, size, breadth, probe.shortlist, EF, ef))
            if truth is None:
                final = index
            elif funnel:
                final = final_recall(probe.ef)
                stages += self._factor_what_ifs(s, probe, what_if.factors, graph, truth)
            else:
                returned = probe.found.labels[:, : probe.k]
                final = per_query_recall(label_scores(s.vectors, q.full, returned, self._metric), truth)
        stages.insert(1, StageRecall(probe.index, FINAL_STAGE, final, probe.k, probe.ef, probe.shortlist))
        return stages

    def _factor_what_ifs(
        self,
        s: CollectionState,
        probe: RecallProbe,
        factors: tuple[int, ...],
        graph: Callable[[int, int], Hits],
        truth: Hits,
    ) -> list[StageRecall]:
        """Final recall of the funnel at each factor: the graph's shortlist of `k · factor` at the
        probe's ef setting, re-ranked at full dim. One gather for every factor's candidates,
        and each query's distinct candidates scored once (its shortlists overlap: side by side
        they are several times as long as their union)."""
        if not factors:
            return []
        q: _DenseQueries = probe.payload
        shortlists = [min(probe.k * f, max(len(s.indexes), probe.k)) for f in factors]
        candidates = [graph(n, probe.ef_setting).labels for n in shortlists]
        S = overlapping_label_scores(s.vectors, q.full, np.hstack(candidates), self._metric)
        out, start = [], 0
        for factor, n, labels in zip(factors, shortlists, candidates):
            _, best = top_k(S[:, start : start + labels.shape[1]], probe.k)
            start += labels.shape[1]
            breadth = max(probe.ef_setting, n)
            recall = per_query_recall(best, truth)
            out.append(StageRecall(probe.index, FINAL_STAGE, recall, probe.k, breadth, n, FACTOR, factor))
        return out

    def _norms_of(self, view: DimView) -> ViewNorms:
        """The row norms of `view` (new when the view changed: a rotation refit)."""
        norms = self._view_norms.get(view.dim)
        if norms is None or norms.view is not view:
            norms = self._view_norms[view.dim] = ViewNorms(view)
        return norms

    @staticmethod
    def combine_payloads(payloads: list[_DenseQueries]) -> _DenseQueries | None:
        """The payloads of probes on one graph stacked into one (None if their views or
        re-rank flags differ: a rotation refit between two searches changes the view)."""
        first = payloads[0]
        if any(p.view is not first.view or p.rerank != first.rerank for p in payloads):
            return None
        return _DenseQueries(
            np.concatenate([p.full for p in payloads]),
            first.view,
            np.concatenate([p.in_view for p in payloads]),
            first.rerank,
        )

    def sample_queries(self, s: CollectionState, n: int, seed: int) -> np.ndarray:
        """`(m, D)` stored vectors of a deterministic sample of `m <= n` live documents."""
        with s.reading():
            labels = sample_labels(s.store.live_labels(), n, seed)
            return s.vectors.gather(labels)[1]

    def stats(self) -> dict[str, Any]:
        return {}


def check_dense_options(name: str, query: Query, dims: list[int]) -> None:
    """A dense search's options (not its vectors), against a collection's indexed `dims`."""
    if query.k < 1:
        raise Invalid("k must be at least 1")
    if query.candidates is not None or query.ball_carving is not None:
        raise Invalid(
            f"collection {name!r} holds one vector per document; candidates and ball_carving are for "
            f"multi-vector collections",
            code="dense_collection",
        )
    if query.dim is not None:
        require_dim(query.dim, dims, name)
    _check_rerank_factor(query.rerank_factor)


def _check_rerank_factor(value: int | None) -> None:
    """A funnel re-scores `k · rerank_factor` candidates: fewer than k would drop results."""
    if value is not None and value < 1:
        raise Invalid("rerank_factor must be at least 1", code="invalid_rerank_factor")
