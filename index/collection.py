"""`Collection`: a store, its per-dim HNSW graphs (an `IndexSet`) and the manifest tying them.

Writes are validated and room is reserved (vector-file blocks on disk, graph capacity) before
the store commits; the commit is the acknowledgement point; then the write is applied to the
vector file and every graph under one write mutex, a step that cannot fail on validated data,
so the graphs always equal the store as of `applied_seq`. Snapshots save
the graphs with that seq; opening a collection loads the newest snapshot and replays the
store's later changes. Searches never take the write mutex. Rebuilds (too many deletes, a new
rotation) build a fresh `IndexSet` from the store while the old one serves, then swap.
"""

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from index.elastic import MAX_ROTATION_DIM, DimView, check_dims, sample_labels
from index.errors import Invalid, NotFound
from index.faults import fault_point
from index.files import fsync_path
from index.filters import parse_filter
from index.hnsw import CorruptSnapshot
from index.indexset import IndexSet
from index.manifest import Manifest, RecallPolicy, Rotation, Snapshot, read_manifest, write_manifest
from index.recall import FINAL_STAGE, INDEX_STAGE, RecallProbe, StageRecall, per_query_recall
from index.rotation import fit_from_store, load_rotation, save_rotation
from index.scoring import Match, exact_search, hydrate, label_scores, rerank_exact, rerank_hits
from index.store import NewDocument, Store, StoredDocument, storage_errors
from index.vectorfile import CRC_SUFFIX, VectorFile
from index.vectors import as_matrix, prepare

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
STORE_FILE = "store.sqlite"
VECTOR_FILE = "vectors.f32"
SNAPSHOT_DIR = "snapshots"
ROTATION_DIR = "rotations"
# Everything one collection directory holds (SQLite adds -wal and -shm beside the store).
COLLECTION_FILES = (
    MANIFEST_FILE,
    STORE_FILE,
    STORE_FILE + "-wal",
    STORE_FILE + "-shm",
    VECTOR_FILE,
    VECTOR_FILE + CRC_SUFFIX,
    SNAPSHOT_DIR,
    ROTATION_DIR,
)


@dataclass(frozen=True)
class CollectionOptions:
    """Runtime policy (not persisted): when to rebuild, when a filter goes exact, durability."""

    rebuild_deleted_fraction: float = 0.2  # rebuild the graphs once deleted slots pass this
    rebuild_min_deleted: int = 64
    exact_filter_fraction: float = 0.02  # filters allowing at most this share of docs go exact
    exact_filter_min: int = 512  # ... or at most this many documents
    synchronous: str = "FULL"  # SQLite fsync policy: FULL survives power loss, not just a crash


@dataclass(frozen=True)
class SearchResult:
    matches: list[list[Match]]  # per query, best first
    strategy: str  # "hnsw" or "exact"
    dim: int  # the index (view) that produced the candidates
    candidates: int  # how many candidates were re-scored (k when not a funnel)
    timings: dict[str, float]  # stage → seconds
    ef: int = 0  # the ef setting the graph searched with (0: exact search, no graph)
    probe: RecallProbe | None = None  # kept for an exact re-run when the search was sampled


@dataclass(frozen=True)
class _DenseQueries:
    """What a dense probe's exact re-run needs: full-dim queries, the dim's view and its queries."""

    full: np.ndarray  # (nq, D), prepared
    view: DimView
    in_view: np.ndarray  # (nq, dim)
    rerank: bool


@dataclass(frozen=True)
class WriteResult:
    ids: list[str]
    seq: int
    timings: dict[str, float]


def default_rerank_factor(dim: int, full_dim: int) -> int:
    """Shortlist multiplier that keeps funnel recall@10 ≥ 0.95 on real text embeddings: about
    D/d candidates per result were needed on SciFact with PCA prefixes, plus half again for
    the graph's own approximation."""
    return max(2, math.ceil(1.5 * full_dim / dim))


class Collection:
    def __init__(
        self,
        path: str,
        manifest: Manifest,
        store: Store,
        vectors: VectorFile,
        indexes: IndexSet,
        applied_seq: int,
        options: CollectionOptions,
    ):
        self.path = path
        self._manifest = manifest
        self._store = store
        self._vectors = vectors
        self._indexes = indexes
        self._applied_seq = applied_seq
        self._options = options
        self._write_mutex = threading.Lock()  # serialises writers: store order == graph order
        self._maintenance = threading.Lock()  # one snapshot, rebuild or refit at a time
        self._closed = False
        self._stale = False  # a committed write failed to reach the graphs: rebuild
        # ef per dim as the recall controller set it; saved in the manifest with the next snapshot.
        self._tuned_ef = {int(d): e for d, e in manifest.tuned_ef.items() if int(d) in indexes.views}
        self._tuned_dirty = False

    # -- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, manifest: Manifest, options: CollectionOptions = CollectionOptions()) -> "Collection":
        """Initialise a new collection in the (existing, empty) directory `path`."""
        manifest = manifest.replace(dims=check_dims(manifest.dims, manifest.dim), rotation=None, snapshot=None)
        if manifest.rerank_factor is not None and manifest.rerank_factor < 1:
            raise Invalid("rerank_factor must be at least 1", code="invalid_rerank_factor")
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
        for folder in (SNAPSHOT_DIR, ROTATION_DIR):
            os.makedirs(os.path.join(path, folder), exist_ok=True)
        store = _store(path, manifest, options)
        vectors = VectorFile(os.path.join(path, VECTOR_FILE), manifest.dim)
        write_manifest(os.path.join(path, MANIFEST_FILE), manifest)
        return cls(path, manifest, store, vectors, IndexSet.empty(_views(manifest, None), manifest.hnsw), 0, options)

    @classmethod
    def open(cls, path: str, options: CollectionOptions = CollectionOptions()) -> "Collection":
        """Open a collection: load its snapshot (if sound) and replay newer store writes."""
        manifest = read_manifest(os.path.join(path, MANIFEST_FILE))
        for folder in (SNAPSHOT_DIR, ROTATION_DIR):
            os.makedirs(os.path.join(path, folder), exist_ok=True)
        store = _store(path, manifest, options)
        try:
            with storage_errors():
                vectors = VectorFile(os.path.join(path, VECTOR_FILE), manifest.dim, capacity=store.label_ceiling(0))
            if vectors.fresh:  # missing: rebuild the mirror from the store
                for labels, X in store.iter_vectors():
                    vectors.add(labels, X)
            vectors.set_live(store.live_labels())
            rotation = load_rotation(os.path.join(path, ROTATION_DIR), manifest)
            if rotation is None and manifest.rotation is not None:
                manifest = manifest.replace(rotation=None)  # unusable: prefixes fall back to plain
            views = _views(manifest, rotation)
            indexes, applied = cls._load_snapshot(path, manifest, views)
            if indexes is None:
                indexes, applied = IndexSet.empty(views, manifest.hnsw, capacity=store.count() + 16), 0
            collection = cls(path, manifest, store, vectors, indexes, applied, options)
            replayed = collection._replay(indexes, applied, vectors)
            repaired = collection._repair_vectors()
        except BaseException:
            store.close()
            raise
        collection._applied_seq = max(applied, store.last_seq())
        collection._remove_stale_files()
        log.info(
            "opened collection %s: %d documents, dims %s, replayed %d rows after seq %d%s",
            manifest.name,
            len(indexes),
            indexes.dims,
            replayed,
            applied,
            f", re-read {repaired} corrupt vector rows from the store" if repaired else "",
        )
        return collection

    def _repair_vectors(self) -> int:
        """Re-read from the store every live row of the vector file that fails its checksum (a
        flipped bit on disk, a crash between a row and its checksum). Returns how many."""
        bad = self._vectors.verify()
        if len(bad):
            log.warning(
                "collection %s: %d rows of %s fail their checksum; re-reading them from the store",
                self.name,
                len(bad),
                VECTOR_FILE,
            )
            for labels, X in self._store.iter_vectors(bad):
                self._vectors.add(labels, X)
        return len(bad)

    @staticmethod
    def _load_snapshot(path: str, manifest: Manifest, views: dict[int, DimView]) -> tuple[IndexSet | None, int]:
        snapshot = manifest.snapshot
        if snapshot is None:
            return None, 0
        rotation_sha = manifest.rotation.sha256 if manifest.rotation else None
        if snapshot.rotation_sha256 != rotation_sha and any(d < manifest.dim for d in views):
            log.warning("collection %s: snapshot was built with another rotation; rebuilding", manifest.name)
            return None, 0
        try:
            indexes = IndexSet.load(os.path.join(path, SNAPSHOT_DIR), snapshot.files, views)
        except CorruptSnapshot as exc:
            log.warning("collection %s: %s; rebuilding the indexes from the store", manifest.name, exc)
            return None, 0
        if any(i.params != manifest.hnsw for i in indexes.indexes.values()):
            log.warning("collection %s: snapshot parameters differ from the manifest; rebuilding", manifest.name)
            return None, 0
        return indexes, snapshot.applied_seq

    def _replay(self, indexes: IndexSet, after_seq: int, vectors: VectorFile | None = None) -> int:
        n = 0
        for changes in self._store.changes_since(after_seq):
            for target in (indexes, vectors) if vectors is not None else (indexes,):
                target.add(changes.labels, changes.vectors)
                target.delete(changes.deleted)
            n += len(changes.labels) + len(changes.deleted)
        return n

    def close(self) -> None:
        with self._write_mutex:
            self._closed = True
            self._store.close()

    # -- facts --------------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def name(self) -> str:
        return self._manifest.name

    @property
    def dims(self) -> list[int]:
        return self._indexes.dims

    def __len__(self) -> int:
        return len(self._indexes)

    @property
    def rotation(self) -> np.ndarray | None:
        """The fitted `(D, D)` PCA rotation the low-dim graphs use, or None (plain prefixes)."""
        return self._indexes.views[self._indexes.default_dim].rotation

    def ef_search(self, dim: int) -> int:
        """The ef a search of the `dim` graph uses when the request does not pin one."""
        return self._tuned_ef.get(dim, self._manifest.hnsw.ef_search)

    def set_ef_search(self, dim: int, ef: int) -> None:
        """Set the default ef of one graph (the recall controller does); saved with the next snapshot."""
        if dim not in self._indexes.views:
            raise Invalid(f"dim {dim} is not indexed in collection {self.name!r}", code="invalid_dim")
        # Copy on write: a snapshot may be iterating the current dict on another thread.
        self._tuned_ef = {**self._tuned_ef, dim: int(ef)}
        self._tuned_dirty = True

    @property
    def recall_policy(self) -> RecallPolicy:
        return self._manifest.recall

    def set_recall_policy(self, policy: RecallPolicy) -> None:
        """Replace the recall policy (saved at once). Without a target, tuned efs are dropped; with
        one, they are clamped to the new bounds and the controller goes on from there."""
        policy.check()
        with self._maintenance, self._write_mutex:
            self._check_open()
            if policy.target is None:
                self._tuned_ef = {}
            else:
                self._tuned_ef = {d: min(max(e, policy.ef_min), policy.ef_max) for d, e in self._tuned_ef.items()}
            self._save_manifest(self._manifest.replace(recall=policy))

    def _save_manifest(self, manifest: Manifest) -> None:
        """Write `manifest` with the current tuned efs (callers hold the write mutex)."""
        self._manifest = manifest.replace(tuned_ef={str(d): e for d, e in sorted(self._tuned_ef.items())})
        write_manifest(os.path.join(self.path, MANIFEST_FILE), self._manifest)
        self._tuned_dirty = False

    def rerank_factor(self, dim: int) -> int:
        return self._manifest.rerank_factor or default_rerank_factor(dim, self._manifest.dim)

    def index_name(self, dim: int) -> str:
        """The graph of `dim` as metrics and recall probes name it."""
        return str(dim)

    def stats(self) -> dict[str, Any]:
        indexes = self._indexes
        snapshot = self._manifest.snapshot
        store_file = os.path.join(self.path, STORE_FILE)
        return {
            "documents": len(indexes),
            "index_slots": indexes.slot_count,
            "deleted_slots": indexes.deleted_count,
            "applied_seq": self._applied_seq,
            "snapshot_seq": snapshot.applied_seq if snapshot else 0,
            "store_bytes": sum(_size(store_file + suffix) for suffix in ("", "-wal")),
            "vector_file_bytes": _size(os.path.join(self.path, VECTOR_FILE)),
            "indexes": {self.index_name(d): {**s, "ef_search": self.ef_search(d)} for d, s in indexes.stats().items()},
        }

    # -- writes -------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[NewDocument]) -> WriteResult:
        """Insert or replace documents by id, all or nothing. Vectors are `(dim,)` each."""
        if self._check_batch(docs):
            return WriteResult([], self._applied_seq, {})
        X = prepare(as_matrix([d.vector for d in docs], self.manifest.dim), self.manifest.metric)
        return self._write([replace(doc, vector=x) for doc, x in zip(docs, X)], X)

    @staticmethod
    def _check_batch(docs: Sequence[NewDocument]) -> bool:
        """Reject duplicate ids in one batch; True when the batch is empty (nothing to do)."""
        ids = [doc.id for doc in docs]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise Invalid(f"document id {dup!r} appears more than once in the batch", code="duplicate_id")
        return not docs

    def _write(self, docs: Sequence[NewDocument], X: np.ndarray) -> WriteResult:
        """Commit `docs` (whose index vectors are the rows of `X`, validated), then apply them.

        Everything the apply step could run out of is reserved before the commit: vector-file
        blocks on disk (ENOSPC is a clean 507, nothing written) and graph capacity. After the
        commit, applying validated rows cannot fail."""
        ids = [doc.id for doc in docs]
        with self._write_mutex:
            self._check_open()
            t0 = time.perf_counter()
            with storage_errors():
                self._vectors.reserve(self._store.label_ceiling(len(docs)))
            self._indexes.reserve(len(docs))
            seq, labels = self._store.put(docs)
            fault_point("write.after_commit", self.name)
            t1 = time.perf_counter()
            with self._applying(seq):
                self._vectors.add(labels, X)
                self._indexes.add(labels, X)
            t2 = time.perf_counter()
        return WriteResult(ids, seq, {"store": t1 - t0, "index_add": t2 - t1})

    def delete(self, ids: Sequence[str]) -> WriteResult:
        """Delete documents by id; returns the ids that existed. Absent ids are ignored."""
        with self._write_mutex:
            self._check_open()
            t0 = time.perf_counter()
            seq, labels, deleted = self._store.delete(list(ids))
            t1 = time.perf_counter()
            with self._applying(seq):
                self._vectors.delete(labels)
                self._indexes.delete(labels)
            t2 = time.perf_counter()
        return WriteResult(deleted, seq, {"store": t1 - t0, "index_delete": t2 - t1})

    @contextmanager
    def _applying(self, seq: int) -> Iterator[None]:
        """Apply a committed write to the graphs. Should that fail (out of memory, say), the
        write is still durable: mark the graphs stale so maintenance rebuilds them."""
        try:
            yield
        except BaseException:
            self._stale = True
            log.exception("collection %s: index update for seq %d failed; scheduling a rebuild", self.name, seq)
            raise
        self._applied_seq = seq

    # -- reads --------------------------------------------------------------------------------
    def get(self, doc_id: str) -> StoredDocument:
        with self._reading():
            doc = self._store.get(doc_id)
        if doc is None:
            raise NotFound(f"document {doc_id!r} not found in collection {self.name!r}", code="document_not_found")
        return doc

    def search(
        self,
        Q: np.ndarray,
        k: int,
        *,
        dim: int | None = None,
        ef: int | None = None,
        filter: dict[str, Any] | None = None,
        exact: bool = False,
        rerank: bool = True,
        rerank_factor: int | None = None,
        include: Sequence[str] = (),
        probe: bool = False,
    ) -> SearchResult:
        """Top-k documents for each full-dim query of `Q (nq, D)`.

        The candidates come from the graph of `dim` (default: the largest indexed dim) or, with
        `exact`, from brute force in that dim's view. A low-dim search is a funnel: it shortlists
        `k · rerank_factor` candidates and re-scores them exactly at full dim. `rerank=False`
        returns the candidates with the scores of their own dim. Filters that leave few
        documents go exact; so does any graph search that cannot find enough results. With
        `probe`, a graph search also returns a `RecallProbe` for `evaluate_recall`.
        """
        if k < 1:
            raise Invalid("k must be at least 1")
        indexes = self._indexes  # a rebuild may swap it; this search finishes on the one it saw
        dim = dim or indexes.default_dim
        if dim not in indexes.views:
            raise Invalid(
                f"dim {dim} is not indexed in collection {self.name!r}; valid dims: {indexes.dims}", code="invalid_dim"
            )
        if rerank_factor is not None and rerank_factor < 1:
            raise Invalid("rerank_factor must be at least 1", code="invalid_rerank_factor")
        view = indexes.views[dim]
        Q = prepare(as_matrix(Q, self.manifest.dim, "query vector"), self.manifest.metric, "query vector")
        Qv = view.apply(Q)
        funnel = rerank and not view.is_full
        # Every array below is sized by what exists, never by what was asked for.
        k = min(k, max(len(indexes), 1))
        shortlist = min(k * (rerank_factor or self.rerank_factor(dim)), max(len(indexes), k)) if funnel else k
        conditions = parse_filter(filter)
        ef_setting = ef if ef is not None else self.ef_search(dim)
        timings: dict[str, float] = {}
        with self._reading():
            allowed = None
            if conditions:
                t0 = time.perf_counter()
                allowed = self._store.filter_labels(conditions)
                timings["filter"] = time.perf_counter() - t0
            exact = exact or (allowed is not None and len(allowed) <= self._exact_filter_limit(len(indexes)))
            t0 = time.perf_counter()
            if exact:
                hits = exact_search(
                    self._vectors, Qv, shortlist, self.manifest.metric, allowed, None if view.is_full else view.apply
                )
            else:
                hits = indexes.search(
                    dim, Qv, shortlist, ef_setting, None if allowed is None else frozenset(allowed.tolist())
                )
            t1 = time.perf_counter()
            if rerank:
                matches = rerank_exact(self._store, self._vectors, Q, hits, k, self.manifest.metric, include)
            else:
                matches = hydrate(self._store, hits, include)
            t2 = time.perf_counter()
        timings.update({"exact_search" if exact else "index_search": t1 - t0, "rerank": t2 - t1})
        sampled = None
        if probe and not exact:
            sampled = RecallProbe(
                self.index_name(dim),
                dim,
                k,
                shortlist,
                max(ef_setting, shortlist),
                ef_setting,
                ef is not None,
                hits,
                allowed,
                _DenseQueries(Q, view, Qv, rerank),
            )
        return SearchResult(
            matches, "exact" if exact else "hnsw", dim, shortlist, timings, 0 if exact else ef_setting, sampled
        )

    # -- recall -------------------------------------------------------------------------------
    def evaluate_recall(self, probe: RecallProbe) -> list[StageRecall]:
        """Re-run a sampled search by brute force over the full-dim vector file and compare.

        Index stage: the graph's shortlist against the exact top-shortlist in the dim's view.
        Final stage: the results returned (the shortlist re-ranked at full dim, or its first k
        without re-ranking) against the exact full-dim top-k. At full dim they coincide.
        Documents written since the search count as the oracle sees them now.
        """
        q: _DenseQueries = probe.payload
        metric = self.manifest.metric
        in_view = None if q.view.is_full else q.view.apply
        with self._reading():
            truth = exact_search(self._vectors, q.in_view, probe.shortlist, metric, probe.allowed, in_view)
            found = label_scores(self._vectors, q.in_view, probe.found.labels, metric, in_view)
            index = per_query_recall(found, truth)
            if q.view.is_full:
                final = index
            else:
                returned = (
                    rerank_hits(self._vectors, q.full, probe.found, probe.k, metric).labels
                    if q.rerank
                    else probe.found.labels[:, : probe.k]
                )
                truth = exact_search(self._vectors, q.full, probe.k, metric, probe.allowed)
                final = per_query_recall(label_scores(self._vectors, q.full, returned, metric), truth)
        return [
            StageRecall(probe.index, INDEX_STAGE, index, probe.shortlist, probe.ef, probe.shortlist),
            StageRecall(probe.index, FINAL_STAGE, final, probe.k, probe.ef, probe.shortlist),
        ]

    def contents(self, ids: Sequence[str] | None = None) -> dict[str, tuple[str | None, str]]:
        """`id → (text, metadata JSON)` of live documents (all, or those among `ids`)."""
        with self._reading():
            return self._store.contents(ids)

    def sample_documents(self, n: int, seed: int = 0) -> list[StoredDocument]:
        """A deterministic sample of `m <= n` live documents with text, metadata and vector."""
        with self._reading():
            labels = sample_labels(self._store.live_labels(), n, seed)
            docs = self._store.fetch(labels, text=True, metadata=True)
        return [docs[label] for label in labels.tolist() if label in docs]

    def last_seq(self) -> int:
        """The store's latest write: it changes whenever a document does."""
        with self._reading():
            return self._store.last_seq()

    def sample_queries(self, n: int, seed: int = 0) -> np.ndarray:
        """`(m, D)` stored vectors of a deterministic sample of `m <= n` live documents, to use as
        queries when measuring recall on demand."""
        with self._reading():
            labels = sample_labels(self._store.live_labels(), n, seed)
            return self._vectors.gather(labels)[1]

    def _exact_filter_limit(self, n: int) -> int:
        return max(self._options.exact_filter_min, int(self._options.exact_filter_fraction * n))

    # -- maintenance --------------------------------------------------------------------------
    @property
    def pending_writes(self) -> int:
        """Store seqs applied to the graphs but not yet in a snapshot (0: snapshot is current)."""
        snapshot = self._manifest.snapshot
        return self._applied_seq - (snapshot.applied_seq if snapshot else 0)

    @property
    def needs_snapshot(self) -> bool:
        """Writes or tuned efs that are not on disk yet."""
        return self.pending_writes > 0 or self._tuned_dirty

    @property
    def needs_rebuild(self) -> bool:
        if self._stale:
            return True
        deleted = self._indexes.deleted_count
        return (
            deleted >= self._options.rebuild_min_deleted
            and deleted > self._options.rebuild_deleted_fraction * self._indexes.slot_count
        )

    @property
    def wants_rotation_fit(self) -> bool:
        """The PCA elasticizer has not fitted yet and enough documents exist to fit it."""
        m = self._manifest
        return (
            m.elasticizer.kind == "pca"
            and m.rotation is None
            and min(self.dims) < m.dim
            and len(self) >= m.elasticizer.fit_at
        )

    def snapshot(self, force: bool = False, wait: bool = True) -> bool:
        """Save every graph and point the manifest at them. Returns False when already current,
        or (with `wait=False`) when a rebuild or refit of this collection is running."""
        if not self._maintenance.acquire(blocking=wait):
            return False
        try:
            return self._snapshot_locked(force)
        finally:
            self._maintenance.release()

    def _snapshot_locked(self, force: bool) -> bool:
        with self._write_mutex:
            self._check_open()
            if self._manifest.snapshot is not None and self.pending_writes == 0 and not force:
                if self._tuned_dirty:  # only the tuned efs changed: the graphs on disk are current
                    self._save_manifest(self._manifest)
                return False
            seq = self._applied_seq
            folder = os.path.join(self.path, SNAPSHOT_DIR)
            with storage_errors():
                self._vectors.flush()  # the full-dim mirror is durable up to `seq` as well
                # Fresh file names every time: the files the current manifest names are never
                # overwritten, so a crash (or a full disk) mid-snapshot leaves the last one intact.
                files = self._indexes.save(folder, seq)
                try:
                    fsync_path(folder)  # the new files' names, before the manifest names them
                    fault_point("snapshot.after_graphs", self.name)
                    rotation_sha = self._manifest.rotation.sha256 if self._manifest.rotation else None
                    self._save_manifest(self._manifest.replace(snapshot=Snapshot(files, seq, rotation_sha)))
                except BaseException:
                    self._remove_stale_files()
                    raise
            fault_point("snapshot.after_manifest", self.name)
            # Replays start at `seq` from now on, so older tombstones are no longer needed.
            self._store.purge_tombstones(seq)
            # Under the write mutex: once a drop has closed this collection, its path may already
            # hold a new collection of the same name, whose files are not ours to remove.
            self._remove_stale_files()
        return True

    def rebuild(self) -> None:
        """Rebuild every graph without deleted slots while the old ones serve, then swap."""
        with self._maintenance:
            self._rebuild_locked(self._indexes.views, reuse={})
            self._snapshot_locked(force=True)

    def fit_rotation(self, sample: int | None = None, seed: int | None = None) -> Rotation:
        """Fit the PCA rotation on a deterministic sample of stored vectors, rebuild the low-dim
        graphs from the store (no model needed) and swap them in. Full-dim results do not change."""
        with self._maintenance:
            self._check_open()
            m = self._manifest
            sample = sample or m.elasticizer.sample
            seed = m.elasticizer.seed if seed is None else seed
            fit = fit_from_store(self._store, self._vectors, sample, seed)
            with self._write_mutex, storage_errors():
                self._check_open()  # a dropped collection's path may already hold a new collection
                record = save_rotation(os.path.join(self.path, ROTATION_DIR), fit, seed, self._applied_seq, self.dims)
            fault_point("rotation.after_save", self.name)
            rotation = fit.rotation
            views = _views(m, rotation)
            full = {d: i for d, i in self._indexes.indexes.items() if views[d].is_full}
            self._rebuild_locked(views, reuse=full, manifest=m.replace(rotation=record))
            self._snapshot_locked(force=True)
            return record

    def _rebuild_locked(self, views: dict[int, DimView], reuse: dict, manifest: Manifest | None = None) -> None:
        self._check_open()
        with self._write_mutex:
            # Every write up to `start_seq` is already in the vector file the build reads (a
            # write commits and applies under this mutex); later ones are replayed below.
            start_seq = self._applied_seq
        fresh = IndexSet.empty(views, self._manifest.hnsw, capacity=len(self._indexes) + 16, reuse=reuse)
        fresh.fill_from(self._vectors, skip=set(reuse))
        with self._write_mutex:
            self._check_open()
            # Rows written since the build began are re-applied; replay is idempotent, so rows
            # the build already saw are simply updated in place.
            self._replay(fresh, start_seq)
            fault_point("rebuild.before_swap", self.name)
            self._indexes = fresh
            self._applied_seq = self._store.last_seq()
            self._stale = False
            if manifest is not None:
                self._manifest = manifest

    def _remove_stale_files(self) -> None:
        """Delete snapshot and rotation files that neither the manifest in memory nor the one on
        disk names (they differ while a refit or snapshot is half done)."""
        keep = set()
        manifests = [self._manifest]
        try:
            manifests.append(read_manifest(os.path.join(self.path, MANIFEST_FILE)))
        except (OSError, ValueError, TypeError, KeyError):
            pass
        for manifest in manifests:
            if manifest.snapshot is not None:
                keep |= {f for name in manifest.snapshot.files.values() for f in (name, name + ".json")}
            if manifest.rotation is not None:
                keep.add(manifest.rotation.file)
        for folder in (SNAPSHOT_DIR, ROTATION_DIR):
            for name in os.listdir(os.path.join(self.path, folder)):
                if name not in keep:
                    try:
                        os.remove(os.path.join(self.path, folder, name))
                    except OSError:
                        pass

    # -- guards -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise NotFound(f"collection {self.name!r} was deleted", code="collection_not_found")

    def _reading(self):
        return _ReadGuard(self)


def _store(path: str, manifest: Manifest, options: CollectionOptions) -> Store:
    token_dim = manifest.multivector.token_dim if manifest.multivector else None
    return Store(os.path.join(path, STORE_FILE), manifest.dim, options.synchronous, token_dim)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _views(manifest: Manifest, rotation: np.ndarray | None) -> dict[int, DimView]:
    return {d: DimView(d, manifest.dim, manifest.metric, rotation) for d in manifest.indexed_dims}


class _ReadGuard:
    """Turns "the store was closed under us" (the collection was dropped: its connections closed,
    its files renamed away) into NotFound."""

    def __init__(self, collection: Collection):
        self._collection = collection

    def __enter__(self) -> None:
        self._collection._check_open()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and issubclass(exc_type, (sqlite3.Error, OSError)) and self._collection._closed:
            self._collection._check_open()
        return False
