"""A dense vecnest collection stored in Qdrant: the data path of the distributed backend.

Layout of one vecnest collection in Qdrant (one Qdrant collection, `vecnest.<name>`):
- a point per document; its id is a UUID derived from the caller's id (`point_id`), the caller's
  id itself is in the payload (`id`), with `text`, `metadata` and the filter tokens (`fields`,
  see fields.py);
- one named vector per indexed dim, `d<dim>`: the view vecnest's embedded graphs index (the
  rotated, truncated prefix, re-normalised for cosine: `index.elastic.DimView`), so Qdrant's
  HNSW per named vector plays the part of one hnswlib graph per dim. The full-dim vector is
  always one of them: it is what the funnel re-scores with and what `include: ["vector"]` returns.

A search at full dim is one Qdrant query on `d<D>`. Below full dim it is the funnel as one
Qdrant request: a prefetch of `k · rerank_factor` candidates on `d<dim>`, re-scored by the query
on `d<D>` (exact scores of the stored full-dim vectors, as the embedded funnel). `ef` becomes
Qdrant's `hnsw_ef`, `exact` its `exact`, a filter `fields` matches. Scores keep vecnest's
sign: higher is better (Qdrant's Euclid distance is negated).

Writes wait for Qdrant's acknowledgement (`wait=True`, with the configured write ordering), so
an acknowledged upsert is durable as Qdrant defines it. Backend failures (timeouts, refusals)
become `NotReady` (503), never an unexpected error.
"""

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.backend import Query, SearchResult, WriteResult
from index.collection.dense import DenseScoring
from index.collection.state import default_rerank_factor, views_of
from index.collection.writes import check_batch
from index.errors import Invalid, NotFound, NotReady, VecnestError
from index.manifest import Manifest, RecallPolicy, Rotation
from index.protocols import Hits
from index.recall_oracle import FINAL_STAGE, INDEX_STAGE, RecallProbe, StageRecall, per_query_recall
from index.scoring import Match
from index.store import NewDocument, StoredDocument
from index.vectors import as_matrix, prepare

from .fields import FIELDS, field_tokens, qdrant_filter

# Caller ids map to point ids in this namespace: the same id is the same point on every replica.
_ID_NAMESPACE = uuid.UUID("5a0e3b47-4f57-4c3c-9a53-7f1de3c0a1b2")
_DISTANCE = {"cosine": "Cosine", "ip": "Dot", "l2": "Euclid"}


def point_id(doc_id: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, doc_id))


def vector_name(dim: int) -> str:
    return f"d{dim}"


@contextmanager
def backend_errors(what: str) -> Iterator[None]:
    """Qdrant's failures (unreachable, timed out, refused) as `NotReady`: a clean 503."""
    try:
        yield
    except VecnestError:
        raise
    except Exception as exc:  # qdrant-client raises transport, HTTP and gRPC errors alike
        raise NotReady(
            f"{what}: the Qdrant backend failed: {type(exc).__name__}: {str(exc)[:300]}", code="backend_unavailable"
        ) from exc


class QdrantDenseCollection:
    kind = "dense"

    def __init__(
        self,
        client: Any,
        qdrant_name: str,
        manifest: Manifest,
        save_manifest: Callable[[Manifest], None],
        write_ordering: str = "strong",
    ):
        """`save_manifest` stores a changed manifest where every replica reads it (the catalog)."""
        self._client = client
        self._qname = qdrant_name
        self._manifest = manifest
        self._save_manifest = save_manifest
        self._scoring = DenseScoring(manifest)
        self._views = views_of(manifest, None)  # PCA rotations: not on this backend yet (plain prefixes)
        self._ordering = write_ordering
        self._lock = threading.Lock()  # manifest changes: read, change, save, one at a time

    @staticmethod
    def vectors_config(manifest: Manifest) -> dict[str, Any]:
        """Qdrant's named vectors for `manifest`: one per indexed dim, and the full dim always."""
        from qdrant_client import models

        dims = sorted({*manifest.indexed_dims, manifest.dim})
        hnsw = models.HnswConfigDiff(m=manifest.hnsw.m, ef_construct=manifest.hnsw.ef_construction)
        distance = models.Distance(_DISTANCE[manifest.metric])
        return {vector_name(d): models.VectorParams(size=d, distance=distance, hnsw_config=hnsw) for d in dims}

    # -- facts ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._manifest.name

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def dims(self) -> list[int]:
        return self._manifest.indexed_dims

    @property
    def rotation(self) -> np.ndarray | None:
        return None

    def __len__(self) -> int:
        with backend_errors(f"count {self.name!r}"):
            return int(self._client.count(self._qname, exact=True).count)

    def index_name(self, dim: int) -> str:
        return str(dim)  # as the embedded backend names its graphs (metrics, stats, recall)

    def rerank_factor(self, dim: int) -> int:
        return self._manifest.rerank_factor or default_rerank_factor(dim, self._manifest.dim)

    def ef_search(self, dim: int) -> int:
        return int(self._manifest.tuned_ef.get(str(dim), self._manifest.hnsw.ef_search))

    def stats(self) -> dict[str, Any]:
        with backend_errors(f"describe {self.name!r}"):
            info = self._client.get_collection(self._qname)
        return {
            "documents": len(self),
            "backend": "qdrant",
            "qdrant_status": str(getattr(info.status, "value", info.status)),
            "indexes": {self.index_name(d): {"ef_search": self.ef_search(d)} for d in self.dims},
        }

    # -- settings kept in the manifest (stored in Qdrant: every replica reads them) ----------
    @property
    def recall_policy(self) -> RecallPolicy:
        return self._manifest.recall

    def set_ef_search(self, dim: int, ef: int) -> None:
        if dim not in self._views:
            raise Invalid(f"collection {self.name!r} has no index for dim {dim}", code="invalid_dim")
        self._change(lambda m: m.replace(tuned_ef={**m.tuned_ef, str(dim): int(ef)}))

    def set_recall_policy(self, policy: RecallPolicy) -> None:
        self._change(lambda m: m.replace(recall=policy))

    def set_limits(self, limits: dict[str, int]) -> None:
        self._change(lambda m: m.replace(limits=dict(limits)))

    def _change(self, change: Callable[[Manifest], Manifest]) -> None:
        with self._lock:
            manifest = change(self._manifest)
            with backend_errors(f"update {self.name!r}"):
                self._save_manifest(manifest)
            self._manifest = manifest

    # -- upkeep: Qdrant's own (it persists, optimises and rebuilds its graphs itself) ----------
    needs_snapshot = False
    needs_rebuild = False
    wants_rotation_fit = False

    def snapshot(self, force: bool = False, wait: bool = True) -> bool:
        return False  # an acknowledged write is already durable in Qdrant: nothing to save here

    def rebuild(self) -> None:
        return None  # Qdrant's optimizer vacuums deleted points and rebuilds its segments itself

    def fit_rotation(self, sample: int | None = None, seed: int | None = None) -> Rotation:
        raise _unsupported("PCA rotations")

    def export(self, folder: str) -> tuple[int, int]:
        raise _unsupported("backup archives (use Qdrant's snapshots)")

    def last_seq(self) -> int:
        raise _unsupported("encoder upgrades")

    def close(self) -> None:
        return None  # the client belongs to the catalog

    # -- documents --------------------------------------------------------------------------
    def check_documents(self, docs: Sequence[NewDocument]) -> None:
        check_batch(docs)
        given = [d for d in docs if d.vector is not None]
        if given:
            self._scoring.prepare(given)

    def upsert(self, docs: Sequence[NewDocument]) -> WriteResult:
        """All of `docs` in one Qdrant upsert, acknowledged once Qdrant has applied it."""
        from qdrant_client import models

        check_batch(docs)
        docs, X, _ = self._scoring.prepare(docs)
        views = {d: view.apply(X) for d, view in self._views.items()}
        views.setdefault(self._manifest.dim, X)
        points = [
            models.PointStruct(
                id=point_id(doc.id),
                vector={vector_name(d): V[i].tolist() for d, V in views.items()},
                payload={
                    "id": doc.id,
                    "text": doc.text,
                    "metadata": doc.metadata or {},
                    FIELDS: field_tokens(doc.metadata or {}),
                },
            )
            for i, doc in enumerate(docs)
        ]
        t0 = time.perf_counter()
        with backend_errors(f"upsert into {self.name!r}"):
            self._client.upsert(self._qname, points, wait=True, ordering=models.WriteOrdering(self._ordering))
        return WriteResult([d.id for d in docs], 0, {"store": time.perf_counter() - t0})

    def delete(self, ids: Sequence[str]) -> WriteResult:
        """Delete by caller id; returns the ids that existed."""
        from qdrant_client import models

        ids = list(dict.fromkeys(ids))
        t0 = time.perf_counter()
        with backend_errors(f"delete from {self.name!r}"):
            found = self._client.retrieve(self._qname, [point_id(i) for i in ids], with_payload=["id"])
            existing = [p.payload["id"] for p in found]
            if existing:
                self._client.delete(
                    self._qname,
                    models.PointIdsList(points=[point_id(i) for i in existing]),
                    wait=True,
                    ordering=models.WriteOrdering(self._ordering),
                )
        return WriteResult(existing, 0, {"store": time.perf_counter() - t0})

    def get(self, doc_id: str) -> StoredDocument:
        with backend_errors(f"get from {self.name!r}"):
            found = self._client.retrieve(
                self._qname, [point_id(doc_id)], with_payload=True, with_vectors=[vector_name(self._manifest.dim)]
            )
        if not found:
            raise NotFound(f"document {doc_id!r} not found in collection {self.name!r}", code="document_not_found")
        return self._document(found[0], vector=True)

    def scroll(self, after: str | None = None, limit: int = 256) -> tuple[list[StoredDocument], str | None]:
        """One page of documents in point order, and the cursor of the next page (None at the end);
        the cursor is opaque: a point id."""
        if limit < 1:
            raise Invalid("limit must be at least 1")
        with backend_errors(f"scroll {self.name!r}"):
            points, next_offset = self._client.scroll(
                self._qname,
                limit=limit,
                offset=after,
                with_payload=True,
                with_vectors=[vector_name(self._manifest.dim)],
            )
        return [self._document(p, vector=True) for p in points], (str(next_offset) if next_offset else None)

    def contents(self, ids: Sequence[str] | None = None) -> dict[str, tuple[str | None, str]]:
        """`id → (text, metadata JSON)` of documents (all, or those among `ids`)."""
        if ids is not None:
            with backend_errors(f"read {self.name!r}"):
                points = self._client.retrieve(self._qname, [point_id(i) for i in ids], with_payload=True)
        else:
            points, cursor = [], None
            while True:
                page, cursor = self.scroll(cursor, 1024)
                points += page
                if cursor is None:
                    break
            return {d.id: (d.text, json.dumps(d.metadata or {})) for d in points}
        docs = [self._document(p, vector=False) for p in points]
        return {d.id: (d.text, json.dumps(d.metadata or {})) for d in docs}

    def sample_documents(self, n: int, seed: int = 0) -> list[StoredDocument]:
        """About `n` documents from a seed-chosen point of the id space onwards (wrapping round):
        point ids are hashes of the caller's ids, so this is a deterministic, unordered sample."""
        start = str(uuid.uuid5(_ID_NAMESPACE, f"sample-{seed}"))
        full = [vector_name(self._manifest.dim)]
        with backend_errors(f"sample {self.name!r}"):
            points, _ = self._client.scroll(self._qname, limit=n, offset=start, with_payload=True, with_vectors=full)
            if len(points) < n:  # wrap round to the start of the id space
                more, _ = self._client.scroll(self._qname, limit=n - len(points), with_payload=True, with_vectors=full)
                seen = {p.id for p in points}
                points += [p for p in more if p.id not in seen]
        return [self._document(p, vector=True) for p in points]

    def sample_queries(self, n: int, seed: int = 0) -> np.ndarray:
        docs = self.sample_documents(n, seed)
        if not docs:
            return np.zeros((0, self._manifest.dim), np.float32)
        return np.stack([d.vector for d in docs if d.vector is not None]).astype(np.float32)

    def _document(self, point: Any, vector: bool) -> StoredDocument:
        payload = point.payload or {}
        vectors = point.vector if isinstance(point.vector, dict) else {}
        full = vectors.get(vector_name(self._manifest.dim)) if vector else None
        return StoredDocument(
            label=-1,  # internal labels never leave the embedded backend; Qdrant has none
            id=payload["id"],
            vector=np.asarray(full, np.float32) if full is not None else None,
            text=payload.get("text"),
            metadata=payload.get("metadata") or {},
        )

    # -- searches ---------------------------------------------------------------------------
    def check(self, query: Query) -> None:
        self._check_options(query)
        if query.queries is not None:
            prepare(as_matrix(query.queries, self._manifest.dim, "query vector"), self._manifest.metric, "query vector")

    def _check_options(self, query: Query) -> None:
        if query.k < 1:
            raise Invalid("k must be at least 1")
        if query.candidates is not None or query.ball_carving is not None:
            raise Invalid(
                f"collection {self.name!r} holds one vector per document; candidates and ball_carving are for "
                f"multi-vector collections",
                code="dense_collection",
            )
        if query.dim is not None and query.dim not in self._views:
            raise Invalid(
                f"collection {self.name!r} has no index for dim {query.dim}; indexed dims: {self.dims}",
                code="invalid_dim",
            )
        if query.rerank_factor is not None and query.rerank_factor < 1:
            raise Invalid("rerank_factor must be at least 1", code="invalid_rerank_factor")

    def shortlist(self, query: Query) -> int:
        dim = query.dim or max(self._views)
        if query.rerank and dim < self._manifest.dim:
            return query.k * (query.rerank_factor or self.rerank_factor(dim))
        return query.k

    def search(self, query: Query) -> SearchResult:
        """Top-k documents for each full-dim query `(nq, D)`: one Qdrant request per query,
        sent together (`query_batch_points`)."""
        from qdrant_client import models

        self._check_options(query)
        m = self._manifest
        dim = query.dim or max(self._views)
        view = self._views[dim]
        Q = prepare(as_matrix(query.queries, m.dim, "query vector"), m.metric, "query vector")
        Qv = view.apply(Q)
        shortlist = self.shortlist(query)
        ef = query.ef if query.ef is not None else self.ef_search(dim)
        params = models.SearchParams(hnsw_ef=max(ef, shortlist), exact=query.exact)
        funnel = dim < m.dim and query.rerank
        flt = qdrant_filter(query.filter)
        payload = ["id", *(f for f in ("text", "metadata") if f in query.include)]
        vectors = [vector_name(m.dim)] if "vector" in query.include else False
        requests = []
        for i in range(len(Q)):
            if funnel:  # shortlist on the dim's vectors, re-scored on the full-dim ones
                prefetch = models.Prefetch(query=Qv[i].tolist(), using=vector_name(dim), limit=shortlist, params=params)
                request = models.QueryRequest(
                    prefetch=prefetch,
                    query=Q[i].tolist(),
                    using=vector_name(m.dim),
                    limit=query.k,
                    filter=flt,
                    with_payload=payload,
                    with_vector=vectors,
                )
            else:
                request = models.QueryRequest(
                    query=Qv[i].tolist(),
                    using=vector_name(dim),
                    limit=query.k,
                    filter=flt,
                    params=params,
                    with_payload=payload,
                    with_vector=vectors,
                )
            requests.append(request)
        t0 = time.perf_counter()
        with backend_errors(f"search {self.name!r}"):
            answers = self._client.query_batch_points(self._qname, requests)
        elapsed = time.perf_counter() - t0
        sign = -1.0 if m.metric == "l2" else 1.0  # Qdrant gives l2 distances; vecnest, higher is better
        matches = [[self._match(p, sign, query.include) for p in answer.points] for answer in answers]
        probe = None
        if query.probe and not query.exact and (query.rerank or dim == m.dim):
            final = _scores([[x.score for x in row] for row in matches], query.k)
            if funnel:  # the shortlist the prefetch saw, for the index stage (sampled searches only)
                shortlists = [
                    models.QueryRequest(
                        query=Qv[i].tolist(), using=vector_name(dim), limit=shortlist, filter=flt, params=params
                    )
                    for i in range(len(Q))
                ]
                with backend_errors(f"search {self.name!r}"):
                    found = self._client.query_batch_points(self._qname, shortlists)
                index = _scores([[sign * p.score for p in a.points] for a in found], shortlist)
            else:
                index = final
            probe = RecallProbe(
                self.index_name(dim),
                dim,
                query.k,
                shortlist,
                max(ef, shortlist),
                ef,
                query.ef is not None,
                Hits(np.where(np.isfinite(index), 0, -1), index),
                None,
                _Probe(Q, Qv, dim, funnel, flt, final),
            )
        return SearchResult(
            matches=matches,
            strategy="exact" if query.exact else "hnsw",
            dim=dim,
            candidates=shortlist,
            timings={"index_search": elapsed},
            ef=0 if query.exact else max(ef, shortlist),
            probe=probe,
        )

    def evaluate_recall(self, probe: RecallProbe) -> list[StageRecall]:
        """Re-run a sampled search exactly (Qdrant's `exact=true`) and compare, stage by stage:
        the shortlist against the exact top-shortlist in the dim's view, the results against the
        exact full-dim top-k (at full dim the two coincide). Scores of returned documents are
        exact already: Qdrant scores the stored vectors themselves."""
        from qdrant_client import models

        q: _Probe = probe.payload
        m = self._manifest
        sign = -1.0 if m.metric == "l2" else 1.0
        exact = models.SearchParams(exact=True)

        def truth(Qx: np.ndarray, using: int, limit: int) -> Hits:
            requests = [
                models.QueryRequest(
                    query=row.tolist(), using=vector_name(using), limit=limit, filter=q.filter, params=exact
                )
                for row in Qx
            ]
            with backend_errors(f"measure recall of {self.name!r}"):
                answers = self._client.query_batch_points(self._qname, requests)
            scores = _scores([[sign * p.score for p in a.points] for a in answers], limit)
            return Hits(np.where(np.isfinite(scores), 0, -1), scores)

        index = per_query_recall(probe.found.scores, truth(q.in_view, q.dim, probe.shortlist))
        final = per_query_recall(q.final, truth(q.full, m.dim, probe.k)) if q.funnel else index
        return [
            StageRecall(probe.index, INDEX_STAGE, index, probe.shortlist, probe.ef, probe.shortlist),
            StageRecall(probe.index, FINAL_STAGE, final, probe.k, probe.ef, probe.shortlist),
        ]

    def _match(self, point: Any, sign: float, include: tuple[str, ...]) -> Match:
        payload = point.payload or {}
        vector = None
        if "vector" in include and isinstance(point.vector, dict):
            vector = np.asarray(point.vector[vector_name(self._manifest.dim)], np.float32)
        return Match(
            id=payload["id"],
            score=sign * float(point.score),
            text=payload.get("text") if "text" in include else None,
            metadata=(payload.get("metadata") or {}) if "metadata" in include else None,
            vector=vector,
        )


@dataclass(frozen=True)
class _Probe:
    """What the exact re-run of a sampled search needs."""

    full: np.ndarray  # (nq, D) prepared queries
    in_view: np.ndarray  # (nq, dim) the same in the dim's view
    dim: int
    funnel: bool
    filter: Any  # the Qdrant filter, or None
    final: np.ndarray  # (nq, k) exact full-dim scores of the results returned; -inf pads


def _scores(rows: list[list[float]], width: int) -> np.ndarray:
    """`(len(rows), width)` float32, each row's scores then -inf."""
    out = np.full((len(rows), width), -np.inf, np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row[:width]
    return out


def _unsupported(what: str) -> Invalid:
    return Invalid(f"{what}: not available on the Qdrant backend yet", code="backend_unsupported")
