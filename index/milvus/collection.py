"""A dense vecnest collection stored in Milvus: a second shared backend behind the collection seam.

Layout of one vecnest collection in Milvus (one Milvus collection, see catalog.py for its name):
- a row per document; its primary key is the caller's id in hex (`pk_of`): it needs no quoting
  in Milvus expressions, and it sorts as the id's UTF-8 bytes, so scroll cursors are plain ids;
- `doc` (JSON): the caller's text and metadata; `bucket`: a hash of the id, for uniform samples;
- `fields` (array of strings): the document's filter tokens (index.remote, the same rule
  as the embedded store's field table), hashed to hex so that no token needs quoting;
- one float vector per indexed dim, `d<dim>` (the truncated, re-normalised view), each with its
  own HNSW index, and the full dim always.

Every search is one Milvus search on `d<dim>` whose candidates carry their full-dim vector; vecnest
re-scores them exactly (the funnel below full dim; at full dim the same scores Milvus ranks by),
so scores are vecnest's own on every backend. Exact search and the recall oracle scan the rows
(a query iterator) and score them here: Milvus has no per-query exact switch.

Multi-vector collections are not stored on this backend (Milvus has no MaxSim multivector): a
request for one is a clear 422. Writes are acknowledged once Milvus acknowledges them.
"""

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.backend import Query, SearchResult, WriteResult
from index.collection.dense import DenseScoring, check_dense_options
from index.collection.state import rerank_factor_of, views_of
from index.collection.writes import check_batch
from index.errors import Invalid, NotFound
from index.exact import exact_top_k
from index.filters import Filter
from index.manifest import Elasticizer, Manifest, RecallPolicy, Rotation
from index.protocols import Hits
from index.recall_oracle import FINAL_STAGE, INDEX_STAGE, RecallProbe, StageRecall, WhatIf, per_query_recall
from index.remote import ManifestKeeper, as_hits, dense_only, engine_errors, field_tokens, token, unsupported_on
from index.remote import scores as padded_scores
from index.scoring import Match
from index.store import NewDocument, StoredDocument
from index.vectors import as_matrix, prepare, scores, top_k

MAX_PK = 65_535  # Milvus's longest VARCHAR: ids up to half of it in UTF-8 bytes
BUCKETS = 1 << 31  # sample buckets: a hash of the id in [0, BUCKETS)
MAX_FIELDS = 4_096  # Milvus's largest array: filterable fields per document
_METRIC = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}
_SCAN = 1_024  # rows per page of an exact scan


class _NoSessionTsWarning(logging.Filter):
    """milvus-lite gives query iterators no server timestamp, and pymilvus warns on every page
    that it uses its own clock instead: true, harmless here (pages are read by primary key), and
    it would bury the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_NoSessionTsWarning())


def pk_of(doc_id: str) -> str:
    return doc_id.encode("utf-8").hex()


def id_of(pk: str) -> str:
    return bytes.fromhex(pk).decode("utf-8")


def bucket_of(doc_id: str) -> int:
    return int(hashlib.sha1(doc_id.encode("utf-8")).hexdigest()[:8], 16) % BUCKETS


def field_key(tok: str) -> str:
    return hashlib.sha1(tok.encode("utf-8")).hexdigest()


def vector_name(dim: int) -> str:
    return f"d{dim}"


def milvus_filter(filter: Filter | None, after: str | None = None) -> str:
    """The Milvus expression for `filter` (every condition must hold), from a pk onwards."""
    conditions = filter.conditions() if filter else []
    terms = [f'array_contains(fields, "{field_key(token(key, kind, value))}")' for key, kind, value in conditions]
    if after is not None:
        terms.append(f'pk > "{after}"')
    return " and ".join(terms)


def backend_errors(what: str):
    """Milvus's failures (unreachable, timed out, refused) as `NotReady`: a clean 503."""
    return engine_errors("Milvus", what, missing=_collection_missing)


def _collection_missing(exc: Exception) -> bool:
    """Milvus's "collection not found" (error code 100, from any call on a dropped collection)."""
    return getattr(exc, "code", None) == 100


def unsupported(what: str) -> Invalid:
    return unsupported_on("Milvus", what)


def schema_of(manifest: Manifest) -> tuple[Any, Any]:
    """Milvus's schema and index parameters for a dense collection: one HNSW per indexed dim."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=MAX_PK)
    schema.add_field("bucket", DataType.INT64)
    schema.add_field("doc", DataType.JSON)
    schema.add_field("fields", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_FIELDS, max_length=40)
    indexes = MilvusClient.prepare_index_params()
    for d in sorted({*manifest.indexed_dims, manifest.dim}):
        schema.add_field(vector_name(d), DataType.FLOAT_VECTOR, dim=d)
        indexes.add_index(
            vector_name(d),
            index_type="HNSW",
            metric_type=_METRIC[manifest.metric],
            params={"M": manifest.hnsw.m, "efConstruction": manifest.hnsw.ef_construction},
        )
    return schema, indexes


@dataclass(frozen=True)
class _Probe:
    full: np.ndarray  # (nq, D) prepared queries
    in_view: np.ndarray  # (nq, dim) the same in the dim's view
    dim: int
    funnel: bool
    filter: Filter | None
    final: np.ndarray  # (nq, k) exact full-dim scores of the results returned; -inf pads


class MilvusCollection:
    kind = "dense"

    def __init__(self, client: Any, physical: str, manifest: Manifest, store: Any):
        """`store` (index.shared_catalog.EntryStore) saves a changed manifest where every replica
        reads it."""
        self._client = client
        self._table = physical
        self._keeper = ManifestKeeper(manifest, store, backend_errors)
        self._store = store
        self._validation = DenseScoring(manifest)
        self._views = views_of(manifest, None)  # low dims are plain prefixes here (no PCA rotation)

    @staticmethod
    def validate(manifest: Manifest) -> Manifest:
        """Dense collections only; low dims are plain prefixes (a PCA rotation would need every
        document's low-dim vectors rewritten in place, which milvus-lite cannot do without
        rewriting whole rows under concurrent writers), and the manifest says so."""
        if manifest.multivector is not None:
            raise unsupported("multi-vector collections (Milvus has no MaxSim multivector)")
        return DenseScoring.validate(manifest.replace(elasticizer=Elasticizer(kind="none")))

    # -- facts ----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._manifest.name

    @property
    def manifest(self) -> Manifest:
        return self._keeper.manifest

    @property
    def _manifest(self) -> Manifest:
        return self._keeper.manifest

    @property
    def dims(self) -> list[int]:
        return self._manifest.indexed_dims

    @property
    def rotation(self) -> np.ndarray | None:
        return None

    def __len__(self) -> int:
        with backend_errors(f"count {self.name!r}"):
            rows = self._client.query(self._table, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def index_name(self, dim: int) -> str:
        return str(dim)

    def rerank_factor(self, dim: int) -> int:
        return rerank_factor_of(self._manifest, dim)

    def ef_search(self, dim: int) -> int:
        return self._keeper.ef_search(dim)

    def stats(self) -> dict[str, Any]:
        return {
            "documents": len(self),
            "backend": "milvus",
            "indexes": {self.index_name(d): {"ef_search": self.ef_search(d)} for d in self.dims},
        }

    # -- settings kept in the manifest (stored in Milvus: every replica reads them) -------------
    @property
    def recall_policy(self) -> RecallPolicy:
        return self._manifest.recall

    def set_ef_search(self, dim: int, ef: int) -> None:
        self._keeper.set_ef_search(dim, ef, self.dims)

    def set_rerank_factor(self, dim: int, factor: int) -> None:
        self._keeper.set_rerank_factor(dim, factor, self.dims)

    def set_recall_policy(self, policy: RecallPolicy) -> None:
        self._keeper.set_recall_policy(policy)

    def set_limits(self, limits: dict[str, int]) -> None:
        self._keeper.change(lambda m: m.replace(limits=dict(limits)))

    def reload(self, manifest: Manifest) -> None:
        """The manifest as another replica left it (see ManifestKeeper.reload)."""
        self._keeper.reload(manifest)

    # -- upkeep: Milvus's own -------------------------------------------------------------------
    needs_snapshot = False
    needs_rebuild = False
    wants_rotation_fit = False

    def snapshot(self, force: bool = False, wait: bool = True) -> bool:
        return False  # an acknowledged write is in Milvus's write-ahead log already

    def rebuild(self) -> None:
        return None  # Milvus compacts its segments itself

    def fit_rotation(self, sample: int | None = None, seed: int | None = None) -> Rotation:
        raise unsupported("PCA rotations")

    def export(self, folder: str) -> tuple[int, int]:
        raise unsupported("backup archives")

    def last_seq(self) -> int | None:
        return None  # no write sequence here: an upgrade's sync compares contents each time

    def close(self) -> None:
        return None  # the client belongs to the catalog

    # -- documents ------------------------------------------------------------------------------
    def check_documents(self, docs: Sequence[NewDocument]) -> None:
        check_batch(docs)
        for doc in docs:
            if len(pk_of(doc.id)) > MAX_PK:
                raise Invalid(f"document id {doc.id[:40]!r}… is too long for the Milvus backend", code="invalid_id")
            if len(field_tokens(doc.metadata or {})) > MAX_FIELDS:
                raise Invalid(
                    f"document {doc.id!r} has more than {MAX_FIELDS} filterable fields", code="invalid_metadata"
                )
        given = [d for d in docs if d.vector is not None]
        if given:
            self._validation.prepare(given)

    def upsert(self, docs: Sequence[NewDocument]) -> WriteResult:
        """All of `docs` in one Milvus upsert, acknowledged once Milvus has applied it."""
        self.check_documents(docs)
        t0 = time.perf_counter()
        docs, X, _ = self._validation.prepare(docs)
        views = {d: view.apply(X) for d, view in self._views.items()}
        views.setdefault(self._manifest.dim, X)
        rows = [
            {
                "pk": pk_of(doc.id),
                "bucket": bucket_of(doc.id),
                "doc": {"text": doc.text, "metadata": doc.metadata or {}},
                "fields": [field_key(t) for t in field_tokens(doc.metadata or {})],
                **{vector_name(d): V[i].tolist() for d, V in views.items()},
            }
            for i, doc in enumerate(docs)
        ]
        t1 = time.perf_counter()
        with backend_errors(f"upsert into {self.name!r}"):
            self._client.upsert(self._table, rows)
        return WriteResult([d.id for d in docs], 0, {"prepare": t1 - t0, "store": time.perf_counter() - t1})

    def delete(self, ids: Sequence[str]) -> WriteResult:
        """Delete by caller id; returns the ids that existed."""
        ids = list(dict.fromkeys(ids))
        t0 = time.perf_counter()
        with backend_errors(f"delete from {self.name!r}"):
            found = self._client.get(self._table, ids=[pk_of(i) for i in ids], output_fields=["pk"]) if ids else []
            existing = [r["pk"] for r in found]
            if existing:
                self._client.delete(self._table, ids=existing)
        return WriteResult([id_of(pk) for pk in existing], 0, {"store": time.perf_counter() - t0})

    def get(self, doc_id: str) -> StoredDocument:
        with backend_errors(f"get from {self.name!r}"):
            found = self._client.get(self._table, ids=[pk_of(doc_id)], output_fields=["pk", "doc", self._full])
        if not found:
            raise NotFound(f"document {doc_id!r} not found in collection {self.name!r}", code="document_not_found")
        return self._document(found[0])

    def scroll(self, after: str | None = None, limit: int = 256) -> tuple[list[StoredDocument], str | None]:
        """One page of documents in id order (UTF-8 bytes), and the cursor of the next page (None
        at the end): the last id of this page."""
        if limit < 1:
            raise Invalid("limit must be at least 1")
        rows = self._page(milvus_filter(None, pk_of(after) if after is not None else None), limit, ["doc", self._full])
        docs = [self._document(r) for r in rows]
        return docs, (docs[-1].id if len(docs) == limit else None)

    def contents(self, ids: Sequence[str] | None = None) -> dict[str, tuple[str | None, str]]:
        """`id → (text, metadata JSON)` of documents (all, or those among `ids`)."""
        if ids is not None:
            with backend_errors(f"read {self.name!r}"):
                pks = [pk_of(i) for i in ids]
                rows = self._client.get(self._table, ids=pks, output_fields=["pk", "doc"]) if pks else []
        else:
            rows = [r for page in self._pages("", ["doc"]) for r in page]
        return {id_of(r["pk"]): (r["doc"].get("text"), json.dumps(r["doc"].get("metadata") or {})) for r in rows}

    def sample_documents(self, n: int, seed: int = 0) -> list[StoredDocument]:
        """About `n` documents from a seed-chosen point of the id space onwards (wrapping round)."""
        return [self._document(r) for r in self._sample_rows(n, seed)]

    def sample_queries(self, n: int, seed: int = 0) -> np.ndarray:
        rows = self._sample_rows(n, seed)
        if not rows:
            return np.zeros((0, self._manifest.dim), np.float32)
        return np.asarray([r[self._full] for r in rows], np.float32)

    def _sample_rows(self, n: int, seed: int) -> list[dict[str, Any]]:
        """The `n` rows whose `bucket` (a hash of the id) follows a seed-chosen point, wrapping
        round: a deterministic, uniform sample. The window widens until it holds `n` rows."""
        total = len(self)
        if n < 1 or total == 0:
            return []
        start = int(hashlib.sha1(f"sample-{seed}".encode()).hexdigest()[:8], 16) % BUCKETS
        width = max(1, min(BUCKETS, BUCKETS * 2 * n // total))
        while True:
            end = start + width
            expr = f"bucket >= {start} and bucket < {end}"
            if end > BUCKETS:
                expr = f"bucket >= {start} or bucket < {end - BUCKETS}"
            with backend_errors(f"sample {self.name!r}"):
                rows = self._client.query(self._table, filter=expr, output_fields=["pk", "bucket", "doc", self._full])
            if len(rows) >= n or width >= BUCKETS:
                break
            width = min(BUCKETS, width * 2)
        rows.sort(key=lambda r: ((r["bucket"] - start) % BUCKETS, r["pk"]))
        return rows[:n]

    @property
    def _full(self) -> str:
        return vector_name(self._manifest.dim)

    def _page(self, expr: str, limit: int, fields: list[str]) -> list[dict[str, Any]]:
        """The first `limit` rows matching `expr` in primary-key order."""
        for page in self._pages(expr, fields, limit, limit):
            return page
        return []

    def _pages(
        self, expr: str, fields: list[str], batch: int = _SCAN, limit: int = -1
    ) -> Iterator[list[dict[str, Any]]]:
        """Rows matching `expr` in primary-key order, a page at a time (Milvus's query iterator
        pages by primary key)."""
        with backend_errors(f"read {self.name!r}"):
            it = self._client.query_iterator(
                self._table, batch_size=batch, limit=limit, filter=expr, output_fields=["pk", *fields]
            )
        try:
            while True:
                with backend_errors(f"read {self.name!r}"):
                    page = it.next()
                if not page:
                    return
                yield list(page)
        finally:
            it.close()

    def _document(self, row: dict[str, Any]) -> StoredDocument:
        doc = row.get("doc") or {}
        full = row.get(self._full)
        return StoredDocument(
            label=-1,  # internal labels never leave the embedded backend; Milvus has none to give
            id=id_of(row["pk"]),
            text=doc.get("text"),
            metadata=doc.get("metadata") or {},
            vector=np.asarray(full, np.float32) if full is not None else None,
        )

    # -- searches -------------------------------------------------------------------------------
    def check(self, query: Query) -> None:
        dense_only("Milvus", query.mode)
        check_dense_options(self.name, query, self.dims)
        if query.queries is not None:
            self._queries(query)

    def _queries(self, query: Query) -> np.ndarray:
        m = self._manifest
        return prepare(as_matrix(query.queries, m.dim, "query vector"), m.metric, "query vector")

    def shortlist(self, query: Query) -> int:
        dim = query.dim or max(self._views)
        if query.rerank and dim < self._manifest.dim:
            return query.k * (query.rerank_factor or self.rerank_factor(dim))
        return query.k

    def search(self, query: Query) -> SearchResult:
        """Top-k documents for each query: Milvus's HNSW on `d<dim>` gives the shortlist with its
        full-dim vectors, re-scored here (or an exact scan: `exact`)."""
        self.check(query)
        m = self._manifest
        dim = query.dim or max(self._views)
        ef = query.ef if query.ef is not None else self.ef_search(dim)
        Q = self._queries(query)
        Qv = self._views[dim].apply(Q)
        funnel = dim < m.dim and query.rerank
        shortlist = self.shortlist(query)
        t0 = time.perf_counter()
        if query.exact:  # as the embedded backend: an exact shortlist in the dim's view, then the same re-rank
            rows = self._exact(Qv, dim, shortlist, query.filter)
        else:
            rows = self._ann(Qv, dim, shortlist, max(ef, shortlist), query.filter)
        ranked = [self._rank(q, qv, found, query.k, dim, funnel) for q, qv, found in zip(Q, Qv, rows)]
        elapsed = time.perf_counter() - t0
        include = query.include
        matches = [[self._match(row, s, include) for row, s in answer] for answer in ranked]
        probe = None
        if query.probe and not query.exact and (query.rerank or dim == m.dim):
            final = padded_scores([[s for _, s in answer] for answer in ranked], query.k)
            index = padded_scores([self._view_scores(qv, found, dim) for qv, found in zip(Qv, rows)], shortlist)
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
                _Probe(Q, Qv, dim, funnel, query.filter, final),
                funnel=funnel,
                rerank_pinned=query.rerank_factor is not None,
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

    def merge_probes(self, probes: list[RecallProbe]) -> list[RecallProbe]:
        return list(probes)  # each exact re-run is the engine's own batch request already

    def evaluate_recall(self, probe: RecallProbe, what_if: WhatIf | None = None) -> list[StageRecall]:
        """Re-run a sampled search exactly (a scan of the stored vectors) and compare, stage by
        stage. No what-if re-runs (each would be another round of requests to Milvus): the
        recall controllers here search over the live setting (`EfController`)."""
        q: _Probe = probe.payload
        truth_index = self._exact_hits(q.in_view, q.dim, probe.shortlist, q.filter)
        index = per_query_recall(probe.found.scores, truth_index)
        if q.funnel:
            final = per_query_recall(q.final, self._exact_hits(q.full, self._manifest.dim, probe.k, q.filter))
        else:
            final = index
        return [
            StageRecall(probe.index, INDEX_STAGE, index, probe.shortlist, probe.ef, probe.shortlist),
            StageRecall(probe.index, FINAL_STAGE, final, probe.k, probe.ef, probe.shortlist),
        ]

    def _ann(self, Qv: np.ndarray, dim: int, limit: int, ef: int, filter: Filter | None) -> list[list[dict[str, Any]]]:
        """Milvus's candidates per query, each row with `pk`, `doc` and the full-dim vector."""
        with backend_errors(f"search {self.name!r}"):
            answers = self._client.search(
                self._table,
                data=Qv.tolist(),
                anns_field=vector_name(dim),
                limit=limit,
                filter=milvus_filter(filter),
                search_params={"metric_type": _METRIC[self._manifest.metric], "params": {"ef": ef}},
                output_fields=["pk", "doc", self._full],
            )
        return [[dict(hit["entity"]) for hit in answer] for answer in answers]

    def _rank(self, q: np.ndarray, qv: np.ndarray, found: list[dict[str, Any]], k: int, dim: int, funnel: bool):
        """The best k of `found` by exact scores: full dim for a funnel, else the dim's view."""
        if not found:
            return []
        X = np.asarray([r[self._full] for r in found], np.float32)
        S = scores(q[None], X, self._manifest.metric)[0] if funnel else self._view_scores(qv, found, dim)
        pos, kept = top_k(np.asarray(S, np.float32)[None], min(k, len(found)))
        return [(found[p], float(s)) for p, s in zip(pos[0].tolist(), kept[0].tolist()) if np.isfinite(s)]

    def _view_scores(self, qv: np.ndarray, found: list[dict[str, Any]], dim: int) -> list[float]:
        if not found:
            return []
        X = np.asarray([r[self._full] for r in found], np.float32)
        return sorted(scores(qv[None], self._views[dim].apply(X), self._manifest.metric)[0].tolist(), reverse=True)

    def _exact(self, Qv: np.ndarray, dim: int, limit: int, filter: Filter | None) -> list[list[dict[str, Any]]]:
        """The exact top-`limit` rows per query in the dim's view (as `_ann` gives them)."""
        hits, pks = self._scan(Qv, dim, limit, filter)
        wanted = sorted({pks[i] for i in hits.labels.ravel().tolist() if i >= 0})
        with backend_errors(f"read {self.name!r}"):
            found = self._client.get(self._table, ids=wanted, output_fields=["pk", "doc", self._full]) if wanted else []
        by_pk = {r["pk"]: r for r in found}
        return [[by_pk[pks[i]] for i in row if i >= 0 and pks[i] in by_pk] for row in hits.labels.tolist()]

    def _exact_hits(self, Q: np.ndarray, dim: int, k: int, filter: Filter | None) -> Hits:
        return self._scan(Q, dim, k, filter)[0]

    def _scan(self, Q: np.ndarray, dim: int, k: int, filter: Filter | None) -> tuple[Hits, list[str]]:
        """Exact top-k of `Q (nq, dim)` over every stored row that passes `filter`, scored in the
        dim's view; labels index the returned primary keys."""
        pks: list[str] = []

        def chunks():
            for page in self._pages(milvus_filter(filter), [self._full]):
                start = len(pks)
                pks.extend(r["pk"] for r in page)
                yield np.arange(start, len(pks)), np.asarray([r[self._full] for r in page], np.float32)

        view = None if dim == self._manifest.dim else self._views[dim].apply
        return exact_top_k(Q, chunks(), k, self._manifest.metric, view), pks

    def _match(self, row: dict[str, Any], score: float, include: tuple[str, ...]) -> Match:
        doc = row.get("doc") or {}
        return Match(
            id=id_of(row["pk"]),
            score=score,
            text=doc.get("text") if "text" in include else None,
            metadata=(doc.get("metadata") or {}) if "metadata" in include else None,
            vector=np.asarray(row[self._full], np.float32) if "vector" in include else None,
        )
