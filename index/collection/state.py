"""`CollectionState`: the parts every piece of a collection works on, and the locks that order them.

- `store` is the source of truth; `vectors` (the full-dim mirror) and `indexes` (the graphs)
  equal it as of `applied_seq`.
- `write_mutex` serialises writers, so store order is graph order, and guards every swap of
  `indexes` or `manifest`; searches never take it.
- `maintenance` allows one snapshot, rebuild or refit at a time.
- `closed`: the collection was dropped (or shut); its path may already hold another one.
"""

import contextlib
import math
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from index.elastic import DimView
from index.errors import NotFound, being_restored
from index.indexset import IndexSet
from index.manifest import Manifest, write_manifest
from index.store import Store
from index.vectorfile import VectorFile

from .layout import MANIFEST_FILE


@dataclass(frozen=True)
class CollectionOptions:
    """Runtime policy (not persisted): when to rebuild, when a filter goes exact, durability."""

    rebuild_deleted_fraction: float = 0.2  # rebuild the graphs once deleted slots pass this
    rebuild_min_deleted: int = 64
    exact_filter_fraction: float = 0.02  # filters allowing at most this share of docs go exact
    exact_filter_min: int = 512  # ... or at most this many documents
    synchronous: str = "FULL"  # SQLite fsync policy: FULL survives power loss, not just a crash
    # Of the store file, per connection: 0 reads through SQLite's page cache. Measured on a 20k x
    # 384-d vector server after 2,000 searches: RSS 263 MiB with 64 MiB maps, 186 MiB without
    # (each pooled connection maps the file again); searches read a few rows each.
    sqlite_mmap_bytes: int = 0
    # The graph files come from elsewhere (an uploaded archive): each is checked for what hnswlib
    # would read (`check_hnswlib_file`) before it loads. Files this server wrote are trusted:
    # their CRC guards them against the disk, and the check would add ~0.2 s per 100k vectors
    # to every start.
    foreign_files: bool = False


def default_rerank_factor(dim: int, full_dim: int) -> int:
    """Shortlist multiplier that keeps funnel recall@10 ≥ 0.95 on real text embeddings: about
    D/d candidates per result were needed on SciFact with PCA prefixes, plus half again for
    the graph's own approximation."""
    return max(2, math.ceil(1.5 * full_dim / dim))


RERANK_MAX = 64  # the largest funnel factor the recall controller tries


def rerank_factor_of(manifest: Manifest, dim: int) -> int:
    """The funnel factor of `dim` when a search does not pin one: the recall controller's, else
    the collection's own, else sized per dim."""
    return manifest.tuned_rerank.get(str(dim)) or manifest.rerank_factor or default_rerank_factor(dim, manifest.dim)


def views_of(manifest: Manifest, rotation: np.ndarray | None) -> dict[int, DimView]:
    """How each indexed dim derives its vectors from the stored full-dim ones."""
    return {d: DimView(d, manifest.dim, manifest.metric, rotation) for d in manifest.indexed_dims}


class CollectionState:
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
        self.manifest = manifest
        self.store = store
        self.vectors = vectors
        self.indexes = indexes
        self.applied_seq = applied_seq
        self.options = options
        self.write_mutex = threading.Lock()
        self.maintenance = threading.Lock()
        self.closed = False
        self.replaced = False  # closed by a restore that puts another collection under its name
        self.stale = False  # a committed write failed to reach the graphs: rebuild
        # ef per dim as the recall controller set it; saved in the manifest with the next snapshot.
        # Replaced, never mutated: a snapshot may be iterating it on another thread.
        self.tuned_ef = {int(d): e for d, e in manifest.tuned_ef.items() if int(d) in indexes.views}
        self.tuned_rerank = {int(d): f for d, f in manifest.tuned_rerank.items() if int(d) in indexes.views}
        self.tuned_dirty = False

    @property
    def name(self) -> str:
        return self.manifest.name

    def check_open(self) -> None:
        if self.closed and self.replaced:  # a request that found it before the restore: retry
            raise being_restored(self.name)
        if self.closed:
            raise NotFound(f"collection {self.name!r} was deleted", code="collection_not_found")

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Around a read: "the store was closed under us" (the collection was dropped, its
        connections closed and its files renamed away) becomes NotFound."""
        self.check_open()
        try:
            yield
        except (sqlite3.Error, OSError):
            self.check_open()
            raise

    def ef_search(self, dim: int) -> int:
        """The ef a search of the `dim` graph uses when the request does not pin one."""
        return self.tuned_ef.get(dim, self.manifest.hnsw.ef_search)

    def rerank_factor(self, dim: int) -> int:
        """The funnel factor a search of the `dim` graph uses when the request does not pin one."""
        return self.tuned_rerank.get(dim) or rerank_factor_of(self.manifest, dim)

    def save_manifest(self, manifest: Manifest) -> None:
        """Write `manifest` with the current tuned efs and factors (callers hold the write mutex)."""
        self.manifest = manifest.replace(
            tuned_ef={str(d): e for d, e in sorted(self.tuned_ef.items())},
            tuned_rerank={str(d): f for d, f in sorted(self.tuned_rerank.items())},
        )
        write_manifest(os.path.join(self.path, MANIFEST_FILE), self.manifest)
        self.tuned_dirty = False

    def exact_filter_limit(self) -> int:
        """Filters that allow at most this many documents are answered by exact search."""
        return max(self.options.exact_filter_min, int(self.options.exact_filter_fraction * len(self.indexes)))

    def replay(self, indexes: IndexSet, after_seq: int, vectors: VectorFile | None = None) -> int:
        """Apply every store change after `after_seq` to `indexes` (and `vectors`); idempotent."""
        n = 0
        # closed on any exit: the iterator holds a store connection, which `Store.close` waits for
        with contextlib.closing(self.store.changes_since(after_seq)) as all_changes:
            for changes in all_changes:
                for target in (indexes, vectors) if vectors is not None else (indexes,):
                    target.add(changes.labels, changes.vectors)
                    target.delete(changes.deleted)
                n += len(changes.labels) + len(changes.deleted)
        return n

    def close(self, replaced: bool = False) -> None:
        """`replaced`: a restore puts another collection under this name (requests that held
        this one are told to retry, not that it was deleted)."""
        with self.write_mutex:
            self.closed = True
            self.replaced = replaced
            self.store.close()
