"""`Collection`: a store, an HNSW index over it, and the manifest that ties them together.

Writes commit to the store first (that is the acknowledgement point), then apply to the index
under one write mutex, so the index always equals the store as of `applied_seq`. Snapshots
save the index with that seq; opening a collection loads the newest snapshot and replays the
store's later changes. Searches never take the write mutex.
"""

import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np

from index.errors import Invalid, NotFound
from index.files import fsync_path
from index.filters import parse_filter
from index.hnsw import CorruptSnapshot, HnswIndex
from index.manifest import Manifest, Snapshot, read_manifest, write_manifest
from index.protocols import Hits
from index.scoring import Match, exact_search, rerank
from index.store import NewDocument, StoredDocument, Store
from index.vectors import as_matrix, prepare

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
STORE_FILE = "store.sqlite"
SNAPSHOT_DIR = "snapshots"


@dataclass(frozen=True)
class CollectionOptions:
    """Runtime policy (not persisted): when to rebuild, when a filter goes exact, durability."""

    rebuild_deleted_fraction: float = 0.2  # rebuild the graph once deleted slots pass this
    rebuild_min_deleted: int = 64
    exact_filter_fraction: float = 0.02  # filters allowing at most this share of docs go exact
    exact_filter_min: int = 512  # ... or at most this many documents
    synchronous: str = "FULL"  # SQLite fsync policy: FULL survives power loss, not just a crash


@dataclass(frozen=True)
class SearchResult:
    matches: list[list[Match]]  # per query, best first
    strategy: str  # "hnsw" or "exact"
    timings: dict[str, float]  # stage → seconds


@dataclass(frozen=True)
class WriteResult:
    ids: list[str]
    seq: int
    timings: dict[str, float]


class Collection:
    def __init__(self, path: str, manifest: Manifest, store: Store, index: HnswIndex, applied_seq: int,
                 options: CollectionOptions):
        self.path = path
        self._manifest = manifest
        self._store = store
        self._index = index
        self._applied_seq = applied_seq
        self._options = options
        self._write_mutex = threading.Lock()  # serialises writers: store order == index order
        self._maintenance = threading.Lock()  # one snapshot or rebuild at a time
        self._closed = False
        self._index_stale = False  # a committed write failed to reach the index: rebuild

    # -- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, manifest: Manifest, options: CollectionOptions = CollectionOptions()) -> "Collection":
        """Initialise a new collection in the (existing, empty) directory `path`."""
        os.makedirs(os.path.join(path, SNAPSHOT_DIR), exist_ok=True)
        store = Store(os.path.join(path, STORE_FILE), manifest.dim, options.synchronous)
        write_manifest(os.path.join(path, MANIFEST_FILE), manifest)
        return cls(path, manifest, store, HnswIndex(manifest.dim, manifest.metric, manifest.hnsw), 0, options)

    @classmethod
    def open(cls, path: str, options: CollectionOptions = CollectionOptions()) -> "Collection":
        """Open a collection: load its snapshot (if sound) and replay newer store writes."""
        manifest = read_manifest(os.path.join(path, MANIFEST_FILE))
        store = Store(os.path.join(path, STORE_FILE), manifest.dim, options.synchronous)
        index, applied = cls._load_snapshot(path, manifest)
        if index is None:
            index, applied = HnswIndex(manifest.dim, manifest.metric, manifest.hnsw, capacity=store.count() + 16), 0
        collection = cls(path, manifest, store, index, applied, options)
        replayed = collection._replay(index, applied)
        collection._applied_seq = max(applied, store.last_seq())
        collection._remove_stale_snapshots()
        log.info("opened collection %s: %d documents, replayed %d rows after seq %d",
                 manifest.name, len(index), replayed, applied)
        return collection

    @staticmethod
    def _load_snapshot(path: str, manifest: Manifest) -> tuple[HnswIndex | None, int]:
        if manifest.snapshot is None:
            return None, 0
        try:
            index = HnswIndex.load(os.path.join(path, SNAPSHOT_DIR, manifest.snapshot.file))
        except CorruptSnapshot as exc:
            log.warning("collection %s: %s; rebuilding the index from the store", manifest.name, exc)
            return None, 0
        if (index.dim, index.metric, index.params) != (manifest.dim, manifest.metric, manifest.hnsw):
            log.warning("collection %s: snapshot parameters differ from the manifest; rebuilding", manifest.name)
            return None, 0
        return index, manifest.snapshot.applied_seq

    def _replay(self, index: HnswIndex, after_seq: int) -> int:
        n = 0
        for changes in self._store.changes_since(after_seq):
            index.add(changes.labels, changes.vectors)
            index.delete(changes.deleted)
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

    def __len__(self) -> int:
        return len(self._index)

    def stats(self) -> dict[str, Any]:
        index = self._index
        snapshot = self._manifest.snapshot
        return {
            "documents": len(index),
            "index_slots": index.slot_count,
            "deleted_slots": index.deleted_count,
            "applied_seq": self._applied_seq,
            "snapshot_seq": snapshot.applied_seq if snapshot else 0,
        }

    # -- writes -------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[NewDocument]) -> WriteResult:
        """Insert or replace documents by id, all or nothing. Vectors are `(dim,)` each."""
        ids = [doc.id for doc in docs]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise Invalid(f"document id {dup!r} appears more than once in the batch", code="duplicate_id")
        if not docs:
            return WriteResult([], self._applied_seq, {})
        X = prepare(as_matrix([d.vector for d in docs], self.manifest.dim), self.manifest.metric)
        docs = [replace(doc, vector=x) for doc, x in zip(docs, X)]
        with self._write_mutex:
            self._check_open()
            t0 = time.perf_counter()
            seq, labels = self._store.put(docs)
            t1 = time.perf_counter()
            with self._applying(seq):
                self._index.add(labels, X)
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
                self._index.delete(labels)
            t2 = time.perf_counter()
        return WriteResult(deleted, seq, {"store": t1 - t0, "index_delete": t2 - t1})

    @contextmanager
    def _applying(self, seq: int) -> Iterator[None]:
        """Apply a committed write to the index. Should that fail (out of memory, say), the
        write is still durable: mark the index stale so maintenance rebuilds it from the store."""
        try:
            yield
        except BaseException:
            self._index_stale = True
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

    def search(self, Q: np.ndarray, k: int, *, ef: int | None = None, filter: dict[str, Any] | None = None,
               exact: bool = False, candidates: int | None = None, include: Sequence[str] = ()) -> SearchResult:
        """Top-k documents for each query of `Q (nq, dim)`, re-scored exactly from the store.

        `candidates` (≥ k) is how many ANN results are re-scored; `exact` skips the graph.
        Filters that leave few documents are answered exactly; so is any graph search that
        cannot find enough results.
        """
        if k < 1:
            raise Invalid("k must be at least 1")
        Q = prepare(as_matrix(Q, self.manifest.dim, "query vector"), self.manifest.metric)
        conditions = parse_filter(filter)
        timings: dict[str, float] = {}
        with self._reading():
            allowed = None
            if conditions:
                t0 = time.perf_counter()
                allowed = self._store.filter_labels(conditions)
                timings["filter"] = time.perf_counter() - t0
            index = self._index  # a rebuild may swap it; this search finishes on the one it saw
            exact = exact or (allowed is not None and len(allowed) <= self._exact_filter_limit(len(index)))
            t0 = time.perf_counter()
            if exact:
                hits = exact_search(self._store, Q, k, self.manifest.metric, allowed)
            else:
                shortlist = max(k, candidates or k)
                hits = index.search(Q, shortlist, ef=ef, allowed=None if allowed is None else frozenset(allowed.tolist()))
            t1 = time.perf_counter()
            matches = rerank(self._store, Q, hits, k, self.manifest.metric, include)
            t2 = time.perf_counter()
        timings.update({"exact_search" if exact else "index_search": t1 - t0, "rerank": t2 - t1})
        return SearchResult(matches, "exact" if exact else "hnsw", timings)

    def _exact_filter_limit(self, n: int) -> int:
        return max(self._options.exact_filter_min, int(self._options.exact_filter_fraction * n))

    # -- maintenance --------------------------------------------------------------------------
    @property
    def pending_writes(self) -> int:
        """Store seqs applied to the index but not yet in a snapshot (0: snapshot is current)."""
        snapshot = self._manifest.snapshot
        return self._applied_seq - (snapshot.applied_seq if snapshot else 0)

    @property
    def needs_rebuild(self) -> bool:
        if self._index_stale:
            return True
        deleted = self._index.deleted_count
        return deleted >= self._options.rebuild_min_deleted and deleted > self._options.rebuild_deleted_fraction * self._index.slot_count

    def snapshot(self) -> bool:
        """Save the index and point the manifest at it. Returns False when already current."""
        with self._maintenance:
            with self._write_mutex:
                self._check_open()
                if self._manifest.snapshot is not None and self.pending_writes == 0:
                    return False
                seq = self._applied_seq
                name = f"hnsw-{self.manifest.dim}-{seq:012d}.bin"
                self._index.save(os.path.join(self.path, SNAPSHOT_DIR, name))
                fsync_path(os.path.join(self.path, SNAPSHOT_DIR))  # the new files' names, before the manifest names them
                self._manifest = self._manifest.with_snapshot(Snapshot(name, seq))
                write_manifest(os.path.join(self.path, MANIFEST_FILE), self._manifest)
                # Replays start at `seq` from now on, so older tombstones are no longer needed.
                self._store.purge_tombstones(seq)
            self._remove_stale_snapshots()
            return True

    def rebuild(self) -> None:
        """Build a fresh graph without deleted slots while the old one keeps serving, then swap."""
        with self._maintenance:
            self._check_open()
            start_seq = self._store.last_seq()
            fresh = HnswIndex(self.manifest.dim, self.manifest.metric, self.manifest.hnsw, capacity=len(self._index) + 16)
            for labels, X in self._store.iter_vectors():
                fresh.add(labels, X)
            with self._write_mutex:
                self._check_open()
                # Rows written since the build began (or during it) are re-applied; replay is
                # idempotent, so rows the build already saw are simply updated in place.
                self._replay(fresh, start_seq)
                self._index = fresh
                self._applied_seq = self._store.last_seq()
                self._index_stale = False
        self.snapshot()

    def _remove_stale_snapshots(self) -> None:
        current = self._manifest.snapshot.file if self._manifest.snapshot else None
        folder = os.path.join(self.path, SNAPSHOT_DIR)
        for name in os.listdir(folder):
            if current is None or not name.startswith(current):
                try:
                    os.remove(os.path.join(folder, name))
                except FileNotFoundError:
                    pass

    # -- guards -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise NotFound(f"collection {self.name!r} was deleted", code="collection_not_found")

    def _reading(self):
        return _ReadGuard(self)


class _ReadGuard:
    """Turns "the store was closed under us" (the collection was dropped) into NotFound."""

    def __init__(self, collection: Collection):
        self._collection = collection

    def __enter__(self) -> None:
        self._collection._check_open()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is sqlite3.ProgrammingError and self._collection._closed:
            self._collection._check_open()
        return False
