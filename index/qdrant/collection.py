"""A vecnest collection stored in Qdrant: the distributed backend's side of the collection seam.

Layout of one vecnest collection in Qdrant (one Qdrant collection, `vecnest.<name>`):
- a point per document; its id is a UUID derived from the caller's id (`point_id`), the caller's
  id itself is in the payload (`id`), with `text`, `metadata` and the filter tokens (`fields`,
  see fields.py);
- named vectors chosen by the collection's kind, as the embedded `Collection` composes a
  scoring strategy: `DenseOnQdrant` (one per indexed dim, dense.py) or `TokensOnQdrant` (the
  FDE and the token multivector, tokens.py).

Writes wait for Qdrant's acknowledgement (`wait=True`, with the configured write ordering), so
an acknowledged upsert is durable as Qdrant defines it. Backend failures (timeouts, refusals)
become `NotReady` (503), never an unexpected error. Qdrant persists, optimises and rebuilds its
own indexes: there are no snapshots or rebuilds to run here.
"""

import io
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from index.backend import Query, SearchResult, WriteResult
from index.collection.writes import check_batch
from index.elastic import pca_from_moment, second_moment
from index.errors import Invalid, NotFound
from index.files import npy_bytes, sha256_hex
from index.manifest import Manifest, RecallPolicy, Rotation
from index.recall_oracle import RecallProbe, StageRecall, WhatIf
from index.remote import ManifestKeeper, dense_only
from index.scoring import Match
from index.store import NewDocument, StoredDocument

from .common import ID_NAMESPACE, backend_errors, point_id, unsupported
from .dense import DenseOnQdrant
from .fields import FIELDS, field_tokens, qdrant_filter
from .tokens import TokensOnQdrant


def scoring_for(manifest: Manifest) -> type[DenseOnQdrant] | type[TokensOnQdrant]:
    return TokensOnQdrant if manifest.multivector is not None else DenseOnQdrant


ROT = "rot"  # the payload key naming the rotation a point's low-dim vectors were made with
STALE_CHECK_S = 30.0  # how often `needs_rebuild` counts points made with another rotation


def rotation_tag(manifest: Manifest) -> str:
    return manifest.rotation.sha256[:16] if manifest.rotation is not None else ""


class QdrantCollection:
    def __init__(
        self,
        client: Any,
        qdrant_name: str,
        manifest: Manifest,
        store: Any,
        write_ordering: str = "strong",
        rotation: np.ndarray | None = None,
    ):
        """`store` (index.shared_catalog.EntryStore) saves a changed manifest, and blobs, where
        every replica reads them; `rotation`: the PCA rotation the manifest names, if fitted."""
        self._client = client
        self._qname = qdrant_name
        # A changed manifest (a tuned rerank factor, another replica's settings) re-makes the
        # scoring strategy, which reads its query defaults from it.
        self._keeper = ManifestKeeper(manifest, store, backend_errors, on_change=self._rescore)
        self._store = store
        self._rotation = rotation
        self._scoring: DenseOnQdrant | TokensOnQdrant = scoring_for(manifest)(manifest, rotation)
        self._ordering = write_ordering
        self._stale_checked = (0.0, False)  # (monotonic time, points made with another rotation?)

    # -- facts ----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._manifest.name

    @property
    def kind(self) -> str:
        return self._scoring.kind

    @property
    def manifest(self) -> Manifest:
        return self._keeper.manifest

    @property
    def _manifest(self) -> Manifest:
        return self._keeper.manifest

    @property
    def dims(self) -> list[int]:
        return self._scoring.dims

    @property
    def rotation(self) -> np.ndarray | None:
        return self._rotation

    def __len__(self) -> int:
        with backend_errors(f"count {self.name!r}"):
            return int(self._client.count(self._qname, exact=True).count)

    def index_name(self, dim: int) -> str:
        return self._scoring.index_name(dim)

    def rerank_factor(self, dim: int) -> int:
        return self._scoring.rerank_factor(dim)

    def _rescore(self, manifest: Manifest) -> None:
        self._scoring = scoring_for(manifest)(manifest, self._rotation)

    def ef_search(self, dim: int) -> int:
        return self._keeper.ef_search(dim)

    def stats(self) -> dict[str, Any]:
        with backend_errors(f"describe {self.name!r}"):
            info = self._client.get_collection(self._qname)
        return {
            "documents": len(self),
            "backend": "qdrant",
            "qdrant_status": str(getattr(info.status, "value", info.status)),
            "indexes": {self.index_name(d): {"ef_search": self.ef_search(d)} for d in self.dims},
            **self._scoring.stats(),
        }

    # -- settings kept in the manifest (stored in Qdrant: every replica reads them) ------------
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

    # -- upkeep: Qdrant's own, and the PCA rotation ------------------------------------------
    needs_snapshot = False

    def snapshot(self, force: bool = False, wait: bool = True) -> bool:
        return False  # an acknowledged write is already durable in Qdrant: nothing to save here

    @property
    def wants_rotation_fit(self) -> bool:
        """The PCA elasticizer has not fitted yet and enough documents exist to fit it."""
        m = self._manifest
        return (
            self.kind == "dense"
            and m.elasticizer.kind == "pca"
            and m.rotation is None
            and min(self.dims) < m.dim
            and len(self) >= m.elasticizer.fit_at
        )

    @property
    def needs_rebuild(self) -> bool:
        """Some points' low-dim vectors were made with another rotation than the manifest's (a
        replica still on the previous manifest wrote them): `rebuild` rewrites them. Qdrant's
        optimizer vacuums deleted points by itself. Counted at most every STALE_CHECK_S."""
        if self._manifest.rotation is None:
            return False
        checked_at, stale = self._stale_checked
        if time.monotonic() - checked_at >= STALE_CHECK_S:
            with backend_errors(f"count {self.name!r}"):
                stale = self._client.count(self._qname, count_filter=self._stale_filter(), exact=True).count > 0
            self._stale_checked = (time.monotonic(), stale)
        return stale

    def rebuild(self) -> None:
        """Rewrite the low-dim vectors of every point made with another rotation."""
        self._rewrite_views()
        self._stale_checked = (time.monotonic(), False)

    def fit_rotation(self, sample: int | None = None, seed: int | None = None) -> Rotation:
        """Fit the PCA rotation on a deterministic sample of stored full-dim vectors, keep the
        matrix in the catalog and name it in the manifest (every replica switches to it when it
        reads the manifest again), then rewrite every point's low-dim vectors. Full-dim vectors,
        and so full-dim results and the funnel's exact re-scoring, never change. While points
        are rewritten, a low-dim shortlist mixes the two rotations: recall dips briefly."""
        if self.kind != "dense":
            raise Invalid("multi-vector collections have no rotation", code="dense_collection")
        m = self._manifest
        if min(self.dims) == m.dim:
            raise Invalid(f"collection {self.name!r} indexes its full dim only: nothing to rotate")
        sample = sample or m.elasticizer.sample
        seed = m.elasticizer.seed if seed is None else seed
        X = self.sample_queries(sample, seed)
        fit = pca_from_moment(*second_moment([X]))
        data = npy_bytes(fit.rotation)
        digest = sha256_hex(data)
        with backend_errors(f"save the rotation of {self.name!r}"):
            key = self._store.put_blob(f"rotation-{digest[:16]}", data)
        record = Rotation(
            file=key,
            sha256=digest,
            seed=seed,
            n_fit=fit.n_fit,
            fitted_seq=0,
            energy={str(d): round(fit.energy(d), 6) for d in self.dims},
        )
        rotation = np.load(io.BytesIO(data))
        manifest = self._keeper.change(lambda m: m.replace(rotation=record))
        self._rotation, self._scoring = rotation, scoring_for(manifest)(manifest, rotation)
        self.rebuild()
        return record

    def _stale_filter(self):
        from qdrant_client import models

        tag = rotation_tag(self._manifest)
        return models.Filter(must_not=[models.FieldCondition(key=ROT, match=models.MatchValue(value=tag))])

    def _rewrite_views(self) -> None:
        """Scroll the points made with another rotation and write their low-dim vectors anew."""
        stored = self._scoring.stored
        offset = None
        while True:
            with backend_errors(f"rewrite {self.name!r}"):
                points, offset = self._client.scroll(
                    self._qname, scroll_filter=self._stale_filter(), limit=256, offset=offset, with_vectors=[stored]
                )
            for _ in range(5):  # until no point changed under the rewrite
                if not points:
                    break
                points = self._rewrite_batch(points)
            if offset is None:
                return

    def _rewrite_batch(self, points: list[Any]) -> list[Any]:
        """Write the low-dim vectors and the tag of `points` from their full-dim vectors. Only
        vectors and the tag are written, never a whole point, so a concurrent write is not
        undone; returns the points whose full-dim vector changed meanwhile (to redo)."""
        from qdrant_client import models

        assert isinstance(self._scoring, DenseOnQdrant)
        stored, ordering = self._scoring.stored, models.WriteOrdering(self._ordering)
        full = {p.id: np.asarray(p.vector[stored], np.float32) for p in points}
        named = self._scoring.low_dim_vectors(np.stack(list(full.values())))
        row = {pid: i for i, pid in enumerate(full)}
        with backend_errors(f"rewrite {self.name!r}"):
            ids = [p.id for p in self._client.retrieve(self._qname, list(full), with_payload=False)]  # not deleted
            if not ids:
                return []
            vectors = [models.PointVectors(id=i, vector={k: V[row[i]].tolist() for k, V in named.items()}) for i in ids]
            self._client.update_vectors(self._qname, vectors, wait=True, ordering=ordering)
            tag = {ROT: rotation_tag(self._manifest)}
            self._client.set_payload(self._qname, tag, points=ids, wait=True, ordering=ordering)
            again = self._client.retrieve(self._qname, ids, with_vectors=[stored])
        return [p for p in again if not np.array_equal(full[p.id], p.vector[stored])]

    def export(self, folder: str) -> tuple[int, int]:
        raise unsupported("backup archives (use Qdrant's snapshots)")

    def last_seq(self) -> int | None:
        return None  # no write sequence here: an upgrade's sync compares contents each time

    def close(self) -> None:
        return None  # the client belongs to the catalog

    # -- documents ------------------------------------------------------------------------------
    def check_documents(self, docs: Sequence[NewDocument]) -> None:
        """Duplicate ids, and the vectors (or token matrices) of the documents that carry them."""
        check_batch(docs)
        field = "tokens" if self.kind == "multivector" else "vector"
        given = [d for d in docs if getattr(d, field) is not None]
        if given:
            self._scoring.check_documents(given)

    def upsert(self, docs: Sequence[NewDocument]) -> WriteResult:
        """All of `docs` in one Qdrant upsert, acknowledged once Qdrant has applied it."""
        from qdrant_client import models

        check_batch(docs)
        t0 = time.perf_counter()
        docs, vectors = self._scoring.points(docs)
        points = [
            models.PointStruct(
                id=point_id(doc.id),
                vector=cast(Any, named),
                payload={
                    "id": doc.id,
                    "text": doc.text,
                    "metadata": doc.metadata or {},
                    FIELDS: field_tokens(doc.metadata or {}),
                    ROT: rotation_tag(self._manifest),
                },
            )
            for doc, named in zip(docs, vectors)
        ]
        t1 = time.perf_counter()
        with backend_errors(f"upsert into {self.name!r}"):
            self._client.upsert(self._qname, points, wait=True, ordering=models.WriteOrdering(self._ordering))
        return WriteResult([d.id for d in docs], 0, {"prepare": t1 - t0, "store": time.perf_counter() - t1})

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
                self._qname, [point_id(doc_id)], with_payload=True, with_vectors=[self._scoring.stored]
            )
        if not found:
            raise NotFound(f"document {doc_id!r} not found in collection {self.name!r}", code="document_not_found")
        return self._document(found[0])

    def scroll(self, after: str | None = None, limit: int = 256) -> tuple[list[StoredDocument], str | None]:
        """One page of documents in point order, and the cursor of the next page (None at the
        end); the cursor is opaque: a point id."""
        if limit < 1:
            raise Invalid("limit must be at least 1")
        with backend_errors(f"scroll {self.name!r}"):
            points, next_offset = self._client.scroll(
                self._qname, limit=limit, offset=after, with_payload=True, with_vectors=[self._scoring.stored]
            )
        return [self._document(p) for p in points], (str(next_offset) if next_offset else None)

    def contents(self, ids: Sequence[str] | None = None) -> dict[str, tuple[str | None, str]]:
        """`id → (text, metadata JSON)` of documents (all, or those among `ids`)."""
        docs: list[StoredDocument] = []
        if ids is not None:
            with backend_errors(f"read {self.name!r}"):
                points = self._client.retrieve(self._qname, [point_id(i) for i in ids], with_payload=True)
            docs = [self._document(p) for p in points]
        else:
            cursor = None
            while True:
                page, cursor = self.scroll(cursor, 1024)
                docs += page
                if cursor is None:
                    break
        return {d.id: (d.text, json.dumps(d.metadata or {})) for d in docs}

    def sample_documents(self, n: int, seed: int = 0) -> list[StoredDocument]:
        """About `n` documents from a seed-chosen point of the id space onwards (wrapping round):
        point ids are hashes of the caller's ids, so this is a deterministic, unordered sample."""
        return [self._document(p) for p in self._sample_points(n, seed)]

    def sample_queries(self, n: int, seed: int = 0) -> Any:
        """Stored vectors `(m, D)` (or token matrices) of a deterministic sample of documents."""
        found = [self._scoring.sample_query(p.vector) for p in self._sample_points(n, seed)]
        if self.kind == "multivector":
            return found
        return np.stack(found).astype(np.float32) if found else np.zeros((0, self._manifest.dim), np.float32)

    def _sample_points(self, n: int, seed: int) -> list[Any]:
        start = str(uuid.uuid5(ID_NAMESPACE, f"sample-{seed}"))
        stored = [self._scoring.stored]
        with backend_errors(f"sample {self.name!r}"):
            points, _ = self._client.scroll(self._qname, limit=n, offset=start, with_payload=True, with_vectors=stored)
            if len(points) < n:  # wrap round to the start of the id space
                more, _ = self._client.scroll(
                    self._qname, limit=n - len(points), with_payload=True, with_vectors=stored
                )
                seen = {p.id for p in points}
                points += [p for p in more if p.id not in seen]
        return points

    def _document(self, point: Any) -> StoredDocument:
        payload = point.payload or {}
        vectors = point.vector if isinstance(point.vector, dict) else {}
        return StoredDocument(
            label=-1,  # internal labels never leave the embedded backend; Qdrant has none
            id=payload["id"],
            text=payload.get("text"),
            metadata=payload.get("metadata") or {},
            **self._scoring.present(vectors),
        )

    # -- searches -------------------------------------------------------------------------------
    def check(self, query: Query) -> None:
        dense_only("Qdrant", query.mode)
        self._scoring.check(self.name, query)

    def shortlist(self, query: Query) -> int:
        return self._scoring.shortlist(query)

    def search(self, query: Query) -> SearchResult:
        """Top-k documents for each query, one Qdrant request per query sent together
        (`query_batch_points`); see dense.py and tokens.py for what each request is."""
        self.check(query)
        dim = query.dim or self._scoring.default_dim()
        ef = query.ef if query.ef is not None else self.ef_search(dim)
        include = query.include if self._scoring.returns_vectors else tuple(i for i in query.include if i != "vector")
        with_payload = ["id", *(f for f in ("text", "metadata") if f in include)]
        with_vector: Any = [self._scoring.stored] if "vector" in include else False
        t0 = time.perf_counter()
        answers, dim, shortlist, probe = self._scoring.search(
            self._run, query, ef, qdrant_filter(query.filter), with_payload, with_vector
        )
        elapsed = time.perf_counter() - t0
        matches = [[self._match(p, include) for p in row] for row in answers]
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
        """Re-run a sampled search exactly (Qdrant's `exact=true`) and compare, stage by stage.
        No what-if re-runs: each would be another round of requests to Qdrant, so the recall
        controllers here search over the live setting (`EfController`)."""
        return self._scoring.evaluate_recall(self._run, probe)

    def _run(self, requests: list[Any]) -> list[list[Any]]:
        with backend_errors(f"search {self.name!r}"):
            return [answer.points for answer in self._client.query_batch_points(self._qname, requests)]

    def _match(self, point: Any, include: tuple[str, ...]) -> Match:
        payload = point.payload or {}
        vector = None
        if "vector" in include and isinstance(point.vector, dict):
            vector = np.asarray(point.vector[self._scoring.stored], np.float32)
        return Match(
            id=payload["id"],
            score=self._scoring.score(float(point.score)),
            text=payload.get("text") if "text" in include else None,
            metadata=(payload.get("metadata") or {}) if "metadata" in include else None,
            vector=vector,
        )
