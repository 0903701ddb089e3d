"""`IndexSet`: one HNSW graph per indexed dim, each over its view of the stored vectors.

The set is the rebuildable cache of a collection: every write reaches every graph, a snapshot
saves them together at one `seq`, and a rebuild (or a new rotation) builds a new set from the
store and swaps it in while the old one serves.
"""

import os
import shutil
import threading
import uuid
from collections.abc import Set as LabelSet
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from index.elastic import DimView
from index.errors import InsufficientStorage, Invalid
from index.hnsw import CorruptSnapshot, HnswIndex, HnswParams
from index.protocols import Hits
from index.vectorfile import VectorFile


def require_dim(dim: int, dims: list[int], collection: str) -> None:
    """Invalid unless `dim` is one of a collection's indexed `dims`: the one home of that rule,
    whatever stores the indexes (the embedded graphs, Qdrant's named vectors)."""
    if dim not in dims:
        raise Invalid(f"dim {dim} is not indexed in collection {collection!r}; valid dims: {dims}", code="invalid_dim")


class IndexSet:
    def __init__(self, views: dict[int, DimView], indexes: dict[int, HnswIndex]):
        assert views.keys() == indexes.keys()
        self.views = views
        self.indexes = indexes

    @classmethod
    def empty(
        cls,
        views: dict[int, DimView],
        params: HnswParams,
        capacity: int = 1024,
        reuse: dict[int, HnswIndex] | None = None,
    ) -> "IndexSet":
        """New, empty graphs for `views`; graphs in `reuse` (same view) are kept as they are."""
        reuse = reuse or {}
        indexes = {d: reuse.get(d) or HnswIndex(d, v.metric, params, capacity) for d, v in views.items()}
        return cls(views, indexes)

    @classmethod
    def load(cls, folder: str, files: dict[str, str], views: dict[int, DimView], check: bool = False) -> "IndexSet":
        """Load a snapshot: one file per dim (`check`: files from elsewhere, see `HnswIndex.load`).
        Raises `CorruptSnapshot` if any is unusable."""
        if set(files) != {str(d) for d in views}:
            raise CorruptSnapshot(f"snapshot holds dims {sorted(files)}, the collection indexes {sorted(views)}")
        indexes = {}
        for d, view in views.items():
            index = HnswIndex.load(os.path.join(folder, files[str(d)]), check=check)
            if (index.dim, index.metric) != (d, view.metric):
                raise CorruptSnapshot(f"snapshot for dim {d} holds a {index.dim}-dim {index.metric} graph")
            indexes[d] = index
        return cls(views, indexes)

    def fill_from(self, vectors: VectorFile, skip: LabelSet = frozenset()) -> None:
        """Add every live full-dim vector to each graph not in `skip` (those are already full)."""
        targets = {d: i for d, i in self.indexes.items() if d not in skip}
        if targets:
            for labels, X in vectors.chunks():
                for d, index in targets.items():
                    index.add(labels, self.views[d].apply(X), num_threads=-1)  # bulk: every core

    # -- writes: full-dim prepared vectors in, each graph gets its view --------------------------
    def add(self, labels: np.ndarray, X: np.ndarray) -> None:
        """Insert into every graph, each in label order on one thread: hnswlib's multi-threaded
        insert order varies run to run, and replaying writes after a crash must rebuild the same
        graphs (same answers after a kill as before it). The graphs of an elastic collection are
        independent, so they fill side by side (hnswlib releases the GIL), largest first."""
        dims = sorted(self.indexes, reverse=True)
        if len(dims) == 1 or len(labels) < _PARALLEL_MIN_ROWS:
            for d in dims:
                self._add_one(d, labels, X)
            return
        jobs = [_graph_pool().submit(self._add_one, d, labels, X) for d in dims]
        for job in jobs:
            job.result()  # every graph is done (or the first error is raised) before returning

    def _add_one(self, d: int, labels: np.ndarray, X: np.ndarray) -> None:
        self.indexes[d].add(labels, self.views[d].apply(X), num_threads=1)

    def delete(self, labels: np.ndarray) -> None:
        for index in self.indexes.values():
            index.delete(labels)

    # -- reads --------------------------------------------------------------------------------
    @property
    def dims(self) -> list[int]:
        return sorted(self.indexes)

    def require(self, dim: int, collection: str) -> None:
        """Invalid unless `dim` has a graph."""
        require_dim(dim, self.dims, collection)

    @property
    def default_dim(self) -> int:
        return max(self.indexes)

    def search(
        self, dim: int, Qv: np.ndarray, k: int, ef: int | None, allowed: LabelSet | None, threads: int | None = None
    ) -> Hits:
        """Search the graph of `dim` with queries already in its view `(nq, dim)`."""
        return self.indexes[dim].search(Qv, k, ef=ef, allowed=allowed, threads=threads)

    def __len__(self) -> int:
        return len(self.indexes[self.default_dim])

    @property
    def deleted_count(self) -> int:
        return max(index.deleted_count for index in self.indexes.values())

    @property
    def slot_count(self) -> int:
        return max(index.slot_count for index in self.indexes.values())

    def stats(self) -> dict[int, dict[str, int]]:
        return {
            d: {
                "slots": i.slot_count,
                "deleted": i.deleted_count,
                "vector_bytes": i.slot_count * d * 4,
                "bytes": i.memory_bytes,
            }
            for d, i in sorted(self.indexes.items())
        }

    def reserve(self, n: int) -> None:
        """Grow every graph so that `n` more vectors fit without a resize (before a commit)."""
        for index in self.indexes.values():
            index.reserve(n)

    def save(self, folder: str, seq: int) -> dict[str, str]:
        """Save every graph as `hnsw-<dim>-<seq>-<nonce>.bin`, never over an existing file;
        returns `{str(dim): file name}`. On a failure (a full disk) the files written so far are
        removed and `InsufficientStorage` or `OSError` is raised."""
        needed = sum(index.file_bytes for index in self.indexes.values())
        free = shutil.disk_usage(folder).free
        if free < needed * 1.1 + (1 << 20):
            raise InsufficientStorage(
                f"a snapshot needs about {needed >> 20} MiB and {free >> 20} MiB are free; "
                f"it is postponed (the store keeps every write)"
            )
        nonce = uuid.uuid4().hex[:8]
        files: dict[str, str] = {}
        try:
            for d, index in self.indexes.items():
                name = f"hnsw-{d}-{seq:012d}-{nonce}.bin"
                files[str(d)] = name
                index.save(os.path.join(folder, name))
        except BaseException:
            for name in files.values():
                for path in (os.path.join(folder, name), os.path.join(folder, name + ".json")):
                    if os.path.exists(path):
                        os.remove(path)
            raise
        return files


# Below this many rows a write is a few milliseconds: handing it to other threads costs more.
_PARALLEL_MIN_ROWS = 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _graph_pool() -> ThreadPoolExecutor:
    """One small pool for the whole process, one thread per core, shared by every collection
    (a write holds its collection's write mutex, so one collection uses at most its graph count)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="vecnest-graph-add")
        return _pool
