"""Dense collections on Qdrant: one named vector per indexed dim, funnels as prefetches.

Each indexed dim is a named vector, `d<dim>`: the view vecnest's embedded graphs index (the
truncated prefix, re-normalised for cosine: `index.elastic.DimView`), so Qdrant's HNSW per
named vector plays the part of one hnswlib graph per dim. The full-dim vector is always one of
them: the funnel re-scores with it, and `include: ["vector"]` returns it.

A search at full dim is one Qdrant query on `d<D>`. Below full dim it is the funnel in one
Qdrant request: a prefetch of `k · rerank_factor` candidates on `d<dim>`, re-scored by the query
on `d<D>` (exact scores of the stored full-dim vectors, as the embedded funnel). Scores keep
vecnest's sign: higher is better (Qdrant's Euclid distance is negated).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.backend import Query
from index.collection.dense import DenseScoring, check_dense_options
from index.collection.state import rerank_factor_of, views_of
from index.manifest import Manifest
from index.recall_oracle import FINAL_STAGE, INDEX_STAGE, RecallProbe, StageRecall, per_query_recall
from index.store import NewDocument
from index.vectors import as_matrix, prepare

from .common import Runner, as_hits, scores, vector_name

_DISTANCE = {"cosine": "Cosine", "ip": "Dot", "l2": "Euclid"}


@dataclass(frozen=True)
class _Probe:
    """What the exact re-run of a sampled dense search needs."""

    full: np.ndarray  # (nq, D) prepared queries
    in_view: np.ndarray  # (nq, dim) the same in the dim's view
    dim: int
    funnel: bool
    filter: Any  # the Qdrant filter, or None
    final: np.ndarray  # (nq, k) exact full-dim scores of the results returned; -inf pads


class DenseOnQdrant:
    kind = "dense"
    returns_vectors = True  # `include: ["vector"]` gives the stored full-dim vector

    def __init__(self, manifest: Manifest, rotation: np.ndarray | None = None):
        self._m = manifest
        self._validation = DenseScoring(manifest)
        self._views = views_of(manifest, rotation)
        self._sign = -1.0 if manifest.metric == "l2" else 1.0  # Qdrant gives l2 distances

    @staticmethod
    def validate(manifest: Manifest) -> Manifest:
        return DenseScoring.validate(manifest)

    @staticmethod
    def vectors_config(manifest: Manifest) -> dict[str, Any]:
        """Qdrant's named vectors: one per indexed dim, and the full dim always."""
        from qdrant_client import models

        hnsw = models.HnswConfigDiff(m=manifest.hnsw.m, ef_construct=manifest.hnsw.ef_construction)
        distance = models.Distance(_DISTANCE[manifest.metric])
        dims = sorted({*manifest.indexed_dims, manifest.dim})
        return {vector_name(d): models.VectorParams(size=d, distance=distance, hnsw_config=hnsw) for d in dims}

    # -- documents ------------------------------------------------------------------------------
    @property
    def stored(self) -> str:
        """The named vector a document is read back from."""
        return vector_name(self._m.dim)

    def check_documents(self, docs: Sequence[NewDocument]) -> None:
        self._validation.prepare(docs)

    def points(self, docs: Sequence[NewDocument]) -> tuple[list[NewDocument], list[dict[str, list]]]:
        """Validated documents and each one's named vectors."""
        docs, X, _ = self._validation.prepare(docs)
        views = {**self.low_dim_vectors(X), vector_name(self._m.dim): X}
        return docs, [{name: V[i].tolist() for name, V in views.items()} for i in range(len(docs))]

    def low_dim_vectors(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """The named vectors below full dim of prepared full-dim vectors `X (n, D)`."""
        return {vector_name(d): view.apply(X) for d, view in self._views.items() if not view.is_full}

    def present(self, vectors: dict[str, Any]) -> dict[str, Any]:
        """A stored document's fields from its named vectors."""
        full = vectors.get(self.stored)
        return {"vector": np.asarray(full, np.float32) if full is not None else None}

    def sample_query(self, vectors: dict[str, Any]) -> np.ndarray:
        return np.asarray(vectors[self.stored], np.float32)

    # -- searches -------------------------------------------------------------------------------
    @property
    def dims(self) -> list[int]:
        return self._m.indexed_dims

    def index_name(self, dim: int) -> str:
        return str(dim)  # as the embedded backend names its graphs (metrics, stats, recall)

    def default_dim(self) -> int:
        return max(self._views)

    def rerank_factor(self, dim: int) -> int:
        return rerank_factor_of(self._m, dim)

    def check(self, name: str, query: Query) -> None:
        check_dense_options(name, query, self.dims)
        if query.queries is not None:
            self._queries(query)

    def _queries(self, query: Query) -> np.ndarray:
        return prepare(as_matrix(query.queries, self._m.dim, "query vector"), self._m.metric, "query vector")

    def shortlist(self, query: Query) -> int:
        dim = query.dim or self.default_dim()
        if query.rerank and dim < self._m.dim:
            return query.k * (query.rerank_factor or self.rerank_factor(dim))
        return query.k

    def search(self, run: Runner, query: Query, ef: int, flt: Any, with_payload: list[str], with_vector: Any):
        """`(answers, dim, shortlist, probe)`: Qdrant's points per query (scores as Qdrant gives
        them), the dim searched, the candidates re-ranked, and the probe of a sampled search."""
        from qdrant_client import models

        m = self._m
        dim = query.dim or self.default_dim()
        Q = self._queries(query)
        Qv = self._views[dim].apply(Q)
        shortlist = self.shortlist(query)
        params = models.SearchParams(hnsw_ef=max(ef, shortlist), exact=query.exact)
        funnel = dim < m.dim and query.rerank
        out = {"filter": flt, "with_payload": with_payload, "with_vector": with_vector, "limit": query.k}
        if funnel:  # shortlist on the dim's vectors, re-scored on the full-dim ones
            requests = [
                models.QueryRequest(
                    prefetch=models.Prefetch(query=qv.tolist(), using=vector_name(dim), limit=shortlist, params=params),
                    query=q.tolist(),
                    using=vector_name(m.dim),
                    **out,
                )
                for q, qv in zip(Q, Qv)
            ]
        else:
            requests = [
                models.QueryRequest(query=qv.tolist(), using=vector_name(dim), params=params, **out) for qv in Qv
            ]
        answers = run(requests)
        probe = None
        if query.probe and not query.exact and (query.rerank or dim == m.dim):
            final = scores([[self._sign * p.score for p in row] for row in answers], query.k)
            index = final
            if funnel:  # the shortlist the prefetch saw, for the index stage (sampled searches only)
                found = run(
                    [
                        models.QueryRequest(
                            query=qv.tolist(), using=vector_name(dim), limit=shortlist, filter=flt, params=params
                        )
                        for qv in Qv
                    ]
                )
                index = scores([[self._sign * p.score for p in row] for row in found], shortlist)
            probe = RecallProbe(
                self.index_name(dim),
                dim,
                query.k,
                shortlist,
                max(ef, shortlist),
                ef,
                query.ef is not None,
                as_hits(index),
                None,
                _Probe(Q, Qv, dim, funnel, flt, final),
                funnel=funnel,
                rerank_pinned=query.rerank_factor is not None,
            )
        return answers, dim, shortlist, probe

    def score(self, qdrant_score: float) -> float:
        return self._sign * qdrant_score

    def evaluate_recall(self, run: Runner, probe: RecallProbe) -> list[StageRecall]:
        """The shortlist against the exact top-shortlist in the dim's view, the results against
        the exact full-dim top-k (at full dim the two coincide), both by Qdrant's `exact=true`.
        Scores of returned documents are exact already: Qdrant scores the stored vectors."""
        from qdrant_client import models

        q: _Probe = probe.payload
        exact = models.SearchParams(exact=True)

        def truth(Qx: np.ndarray, dim: int, limit: int):
            answers = run(
                [
                    models.QueryRequest(
                        query=row.tolist(), using=vector_name(dim), limit=limit, filter=q.filter, params=exact
                    )
                    for row in Qx
                ]
            )
            return as_hits(scores([[self._sign * p.score for p in a] for a in answers], limit))

        index = per_query_recall(probe.found.scores, truth(q.in_view, q.dim, probe.shortlist))
        final = per_query_recall(q.final, truth(q.full, self._m.dim, probe.k)) if q.funnel else index
        return [
            StageRecall(probe.index, INDEX_STAGE, index, probe.shortlist, probe.ef, probe.shortlist),
            StageRecall(probe.index, FINAL_STAGE, final, probe.k, probe.ef, probe.shortlist),
        ]

    def stats(self) -> dict[str, Any]:
        return {}
