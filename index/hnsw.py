"""`HnswIndex`: the one place that knows hnswlib's footguns.

- k is clamped to the live (or allowed) count, so hnswlib is never asked for more than exists.
- ef is per query and thread-safe: hnswlib searches with `max(index.ef, k)`, so we keep the
  index's ef at 1 and ask for `max(ef, k)` results, keeping the best k. `set_ef` is global state
  that concurrent searches would race on; this trick never calls it after construction.
- "Cannot return the results in a contiguous 2D array" (too few reachable results: heavy
  deletes, a selective filter) falls back to exact search over the index's own vectors.
- Capacity grows by doubling before an add; `resize_index` runs under the write lock.
- A readers-writer lock: searches share it; add, delete, resize and save exclude writers.
- hnswlib's file stores neither space, dim, ef nor the deleted set: a JSON sidecar does, with
  the file's size and CRC-32. hnswlib writes without checking for errors, so a save on a full
  disk would leave a short file: the size is checked after the save, the CRC at every load.
"""

import json
import math
import os
import struct
import zlib
from collections.abc import Set as LabelSet
from dataclasses import asdict, dataclass
from typing import ClassVar

import hnswlib
import numpy as np

from index.errors import Invalid
from index.exact import exact_top_k
from index.files import fsync_path, json_bytes, write_atomic
from index.pacing import in_background
from index.protocols import Hits
from index.rwlock import RWLock
from index.vectors import as_matrix, check_metric, index_rows

# Cosine vectors arrive unit-length (`prepare`), so hnswlib's plain inner product is exact for
# them and `get_items` returns what we stored.
_SPACE = {"cosine": "ip", "ip": "ip", "l2": "l2"}
_SIDECAR_FORMAT = 2
_TOO_FEW_RESULTS = "contiguous 2D array"


@dataclass(frozen=True)
class HnswParams:
    """Build-time graph parameters (M, ef_construction, seed) and the default query ef."""

    m: int = 32
    ef_construction: int = 200
    ef_search: int = 100
    seed: int = 100

    # what a collection may be created with (the API's bounds) and a manifest may hold
    M_RANGE: ClassVar[tuple[int, int]] = (2, 128)
    EF_CONSTRUCTION_RANGE: ClassVar[tuple[int, int]] = (8, 4096)
    EF_SEARCH_RANGE: ClassVar[tuple[int, int]] = (1, 10000)

    def check(self) -> "HnswParams":
        """Invalid ("invalid_hnsw") unless every parameter is an integer in its range."""
        for name, (low, high) in (
            ("m", self.M_RANGE),
            ("ef_construction", self.EF_CONSTRUCTION_RANGE),
            ("ef_search", self.EF_SEARCH_RANGE),
            ("seed", (0, 2**64 - 1)),  # hnswlib's random_seed is a size_t
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise Invalid(f"hnsw.{name} must be an integer in {low}..{high}, got {value!r}", code="invalid_hnsw")
        return self


class CorruptSnapshot(Exception):
    """A snapshot file is missing, truncated or does not match its sidecar."""


class HnswIndex:
    def __init__(
        self,
        dim: int,
        metric: str = "cosine",
        params: HnswParams = HnswParams(),
        capacity: int = 1024,
        *,
        _load_from: str | None = None,
        _slots: int = 0,
    ):
        self.dim = int(dim)
        self.metric = check_metric(metric)
        self.params = params
        self._index = hnswlib.Index(space=_SPACE[metric], dim=self.dim)
        if _load_from is None:
            self._index.init_index(
                max_elements=max(capacity, 16),
                M=params.m,
                ef_construction=params.ef_construction,
                random_seed=params.seed,
            )
        else:
            self._index.load_index(_load_from, max_elements=max(16, int(_slots * 1.25)))
        self._index.set_ef(1)  # also after a load, which resets ef to 10; see the module docstring
        self._deleted: set[int] = set()
        self._lock = RWLock()

    # -- size ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._index.element_count - len(self._deleted)

    @property
    def deleted_count(self) -> int:
        """Slots held by deleted vectors: they stay in the graph until a rebuild."""
        return len(self._deleted)

    @property
    def slot_count(self) -> int:
        return self._index.element_count

    @property
    def memory_bytes(self) -> int:
        """Approximate graph memory: per slot, hnswlib keeps the vector, the label and 2M level-0
        links (plus a count); about 1/ln(M) of the slots also hold M links on upper levels."""
        m = self.params.m
        per_slot = self.dim * 4 + 8 + (2 * m + 1) * 4 + (m + 1) * 4 / math.log(max(m, 2))
        return int(self._index.get_max_elements() * per_slot)  # hnswlib allocates the whole capacity

    @property
    def file_bytes(self) -> int:
        """About what `save` writes: every slot's level-0 record (links, vector, label) plus
        its upper-level links (about 1/ln(M) of the slots hold M links on each upper level)."""
        m = self.params.m
        per_slot = (2 * m + 1) * 4 + self.dim * 4 + 8 + 4 + (m + 1) * 4 / math.log(max(m, 2))
        return int(self._index.element_count * per_slot) + 4096

    def _level0_bytes(self) -> int:
        """The exact size of the level-0 records in hnswlib's file: a shorter file is truncated."""
        return self._index.element_count * ((2 * self.params.m + 1) * 4 + self.dim * 4 + 8)

    # -- writes -------------------------------------------------------------------------------
    def reserve(self, n: int) -> None:
        """Grow the capacity so that `n` more vectors fit (before a commit, so the add after it
        never has to allocate)."""
        with self._lock.write():
            needed = self._index.element_count + n
            if needed > self._index.max_elements:
                self._index.resize_index(max(needed, 2 * self._index.max_elements))

    def add(self, labels: np.ndarray, X: np.ndarray, num_threads: int = -1) -> None:
        labels = np.asarray(labels, np.int64).reshape(-1)
        X = index_rows(as_matrix(X, self.dim), self.metric)
        if len(labels) != len(X):
            raise Invalid(f"{len(labels)} labels for {len(X)} vectors")
        if len(labels) == 0:
            return
        with self._lock.write():
            needed = self._index.element_count + len(labels)
            if needed > self._index.max_elements:
                self._index.resize_index(max(needed, 2 * self._index.max_elements))
            # An existing label is updated in place; a deleted one is revived and updated.
            self._index.add_items(X, labels, num_threads=num_threads)
            self._deleted.difference_update(labels.tolist())

    def delete(self, labels: np.ndarray) -> None:
        with self._lock.write():
            for label in np.asarray(labels, np.int64).reshape(-1).tolist():
                if label in self._deleted:
                    continue
                try:
                    self._index.mark_deleted(label)
                except RuntimeError:  # "Label not found": deleting an absent label is a no-op
                    continue
                self._deleted.add(label)

    # -- reads --------------------------------------------------------------------------------
    def search(
        self, Q: np.ndarray, k: int, ef: int | None = None, allowed: LabelSet | None = None, threads: int | None = None
    ) -> Hits:
        """Approximate top-k with search breadth `max(ef, k)` (default ef: `params.ef_search`);
        `threads` as in `VectorIndex.search` (default: hnswlib's pool, one thread when filtered)."""
        Q = index_rows(as_matrix(Q, self.dim, "query"), self.metric)
        if allowed is not None and not isinstance(allowed, (set, frozenset)):
            allowed = frozenset(int(x) for x in allowed)
        with self._lock.read(background=in_background()):  # a recall re-run's: index/rwlock.py
            available = len(self) if allowed is None else min(len(self), len(allowed))
            k_eff = min(k, available)
            if k_eff <= 0:
                return Hits.empty(len(Q), k)
            breadth = min(max(ef or self.params.ef_search, k_eff), available)
            try:
                labels, dist = self._index.knn_query(
                    Q,
                    k=breadth,
                    num_threads=threads or (1 if allowed is not None else -1),
                    filter=None if allowed is None else allowed.__contains__,
                )
            except RuntimeError as exc:
                if _TOO_FEW_RESULTS not in str(exc):
                    raise
                return self._exact_locked(Q, k, allowed)
        hits = Hits.empty(len(Q), k)
        hits.labels[:, :k_eff] = labels[:, :k_eff].astype(np.int64)
        hits.scores[:, :k_eff] = self._to_scores(dist[:, :k_eff])
        return hits

    def exact_search(self, Q: np.ndarray, k: int, allowed: LabelSet | None = None) -> Hits:
        """Brute force over this index's own vectors (the graph is not used)."""
        Q = index_rows(as_matrix(Q, self.dim, "query"), self.metric)
        with self._lock.read(background=in_background()):
            return self._exact_locked(Q, k, allowed)

    def _exact_locked(self, Q: np.ndarray, k: int, allowed: LabelSet | None) -> Hits:
        labels = np.asarray(self._index.get_ids_list(), np.int64)
        keep = ~np.isin(labels, np.fromiter(self._deleted, np.int64, len(self._deleted)))
        if allowed is not None:
            keep &= np.isin(labels, np.fromiter(allowed, np.int64, len(allowed)))
        labels = labels[keep]
        if len(labels) == 0:
            return Hits.empty(len(Q), k)
        X = np.asarray(self._index.get_items(labels), np.float32)
        return exact_top_k(Q, [(labels, X)], k, self.metric)

    def _to_scores(self, dist: np.ndarray) -> np.ndarray:
        if self.metric == "l2":  # hnswlib's l2 is the squared distance
            return -np.sqrt(np.maximum(dist, 0.0))
        return 1.0 - dist  # hnswlib's ip distance is 1 - <q, x>

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the graph to `path` and its facts (with the file's size and CRC-32) to
        `path + '.json'`, both fsynced. Raises OSError when the graph file came out short."""
        with self._lock.read():  # a save reads the graph: searches may go on, writes may not
            # a copy, not hnswlib's save_index: that holds the GIL for its whole write, and when
            # the write waits for the disk every thread waits too (395 ms for 20k 384-d vectors)
            state = self._index.__getstate__()[0]
            expected = self._level0_bytes()
            sidecar = {
                "format": _SIDECAR_FORMAT,
                "dim": self.dim,
                "metric": self.metric,
                "params": asdict(self.params),
                "slots": self._index.element_count,
                "deleted": sorted(self._deleted),
            }
        write_hnswlib_file(state, path)
        fsync_path(path)
        size = os.path.getsize(path)
        if size < expected:
            raise OSError(28, f"hnswlib wrote {size} of at least {expected} bytes to {path} (disk full?)")
        sidecar.update(bytes=size, crc32=_file_crc(path))
        write_atomic(path + ".json", json_bytes(sidecar))

    @classmethod
    def load(cls, path: str, check: bool = False) -> "HnswIndex":
        """Restore a `save`d index; raises `CorruptSnapshot` when the files do not match, or with
        `check` (a file from elsewhere) when hnswlib would misread it (`check_hnswlib_file`)."""
        try:
            with open(path + ".json") as f:
                meta = json.load(f)
            if meta.get("format") not in (1, _SIDECAR_FORMAT):  # format 1: saved before checksums
                raise CorruptSnapshot(f"unknown snapshot format {meta.get('format')!r}")
            if "crc32" in meta and (os.path.getsize(path) != meta["bytes"] or _file_crc(path) != meta["crc32"]):
                raise CorruptSnapshot(f"snapshot {path} does not match the size and checksum it was saved with")
            if check:
                check_hnswlib_file(path, meta["dim"], meta["slots"])
            index = cls(
                meta["dim"], meta["metric"], HnswParams(**meta["params"]), _load_from=path, _slots=meta["slots"]
            )
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, MemoryError) as exc:
            raise CorruptSnapshot(f"cannot load snapshot {path}: {exc}") from exc
        if index._index.element_count != meta["slots"]:
            raise CorruptSnapshot(
                f"snapshot {path} holds {index._index.element_count} slots, sidecar says {meta['slots']}"
            )
        index._deleted = set(meta["deleted"])
        return index


# hnswlib's index file header, as its saveIndex writes it: offsetLevel0, max_elements,
# cur_element_count, size_data_per_element, label_offset, offsetData (size_t), maxlevel (int),
# enterpoint_node (uint32), maxM, maxM0, M (size_t), mult (double), ef_construction (size_t)
_HNSWLIB_HEADER = struct.Struct("<6QiI3QdQ")


def write_hnswlib_file(state: dict, path: str) -> None:
    """Write the file hnswlib's `save_index` writes (byte for byte; tested), from the copy its
    `__getstate__` returns: the header, the level-0 records `(n, size_data_per_element)`, then
    per element a uint32 size and its upper-level links (`link_lists`: those of every element
    with a level above 0, in element order). Python writes it in a few large blocks, so other
    threads run while it goes to disk."""
    n, record = state["cur_element_count"], state["size_data_per_element"]
    header = _HNSWLIB_HEADER.pack(
        *(state[k] for k in ("offset_level0", "max_elements", "cur_element_count", "size_data_per_element")),
        *(state[k] for k in ("label_offset", "offset_data", "max_level", "enterpoint_node", "max_M", "max_M0")),
        *(state[k] for k in ("M", "mult", "ef_construction")),
    )
    levels = np.asarray(state["element_levels"][:n], np.int64)
    sizes = np.where(levels > 0, state["size_links_per_element"] * levels, 0)
    links = np.asarray(state["link_lists"]).view(np.uint8)
    if int(sizes.sum()) != len(links):
        raise ValueError(f"hnswlib's state holds {len(links)} bytes of links, its levels say {int(sizes.sum())}")
    before = np.cumsum(sizes) - sizes  # link bytes of the elements before each one
    tail = np.zeros(4 * n + len(links), np.uint8)  # per element: its size, then its links
    starts = 4 * np.arange(n) + before
    tail[starts[:, None] + np.arange(4)] = sizes.astype("<u4").view(np.uint8).reshape(n, 4)
    tail[np.arange(len(links)) + np.repeat(starts + 4 - before, sizes)] = links  # each element's block moves as one
    with open(path, "wb") as f:
        f.write(header)
        f.write(np.asarray(state["data_level0"]).view(np.uint8)[: n * record].data)
        f.write(tail.data)


_MAX_LEVEL = 64  # hnswlib draws levels from -ln(U)·mult: past 64 no real graph reaches


def check_hnswlib_file(path: str, dim: int, slots: int | None = None) -> None:
    """Raise `CorruptSnapshot` unless `path` is an hnswlib graph of `dim`-float32 vectors that
    hnswlib can load and search without reading outside its memory: the header agrees with
    itself and `dim`, the file holds exactly the records it announces, every link count fits
    its list, every link names an element, upper-level links name elements on that level, the
    entry point sits on the top level, every vector is finite and every label distinct.
    hnswlib checks none of this (it trusts its file), and the CRC in the sidecar only shows that
    the file is the one its
    sidecar describes: one link out of range in a graph from an uploaded archive crashed the
    process at the first search. `slots`: the element count the sidecar gives (hnswlib sizes
    its allocation from it)."""
    raw = np.memmap(path, np.uint8, mode="r") if os.path.getsize(path) else np.zeros(0, np.uint8)
    if len(raw) < _HNSWLIB_HEADER.size:
        raise CorruptSnapshot(f"{path}: {len(raw)} bytes, shorter than hnswlib's header")
    (off0, _, n, record, label_at, links_end, top, entry, max_m, max_m0, m, mult, _) = _HNSWLIB_HEADER.unpack_from(
        raw[: _HNSWLIB_HEADER.size].tobytes()
    )

    def bad(what: str) -> CorruptSnapshot:
        return CorruptSnapshot(f"{path} is not a graph hnswlib can use: {what}")

    if slots is not None and n != slots:
        raise bad(f"{n} elements, the sidecar says {slots}")
    level0_links = 4 + 4 * max_m0  # per element: a 4-byte count word, then max_M0 links
    if off0 != 0 or max_m != m or max_m0 != 2 * m or not 2 <= m <= HnswParams.M_RANGE[1] or not math.isfinite(mult):
        raise bad(f"header M={m}, maxM={max_m}, maxM0={max_m0}, offsetLevel0={off0}")
    if links_end != level0_links or label_at != links_end + 4 * dim or record != label_at + 8:
        raise bad(f"records of {record} bytes do not hold {dim}-dim vectors")
    empty = n == 0 and top == -1
    if not empty and not (0 <= top <= _MAX_LEVEL and entry < n):
        raise bad(f"top level {top}, entry point {entry} of {n} elements")
    base = _HNSWLIB_HEADER.size
    if empty:
        if len(raw) != base:
            raise bad(f"{len(raw) - base} bytes after the header of an empty graph")
        return
    if len(raw) < base + n * record:
        raise bad("truncated level-0 records")

    def strided(offset: int, width: int, dtype: str) -> np.ndarray:  # one field of every record, no copy
        return np.ndarray(
            (n, width), dtype, buffer=raw, offset=base + offset, strides=(record, np.dtype(dtype).itemsize)
        )

    counts = strided(0, 1, "<u2")[:, 0]
    links = strided(4, max_m0, "<u4")
    if (counts > max_m0).any() or (links[np.arange(max_m0) < counts[:, None]] >= n).any():
        raise bad("a level-0 link list is too long or names no element")
    if not np.isfinite(strided(links_end, dim, "<f4")).all():
        raise bad("a vector is not finite")
    if len(np.unique(strided(label_at, 1, "<u8"))) != n:  # hnswlib maps each label to one element
        raise bad("two elements carry the same label")
    # the upper levels: per element a uint32 byte size (0, or its levels × one list's size), then its lists
    per_level = 4 + 4 * max_m
    tail = raw[base + n * record :].tobytes()  # about 1/ln(M) of the elements have lists here
    at, levels = 0, np.zeros(n, np.int64)
    starts: list[tuple[int, int]] = []
    for i in range(n):
        if at + 4 > len(tail):
            raise bad("truncated upper-level links")
        (size,) = struct.unpack_from("<I", tail, at)
        if size % per_level or size // per_level > max(top, 0) or at + 4 + size > len(tail):
            raise bad(f"element {i} has {size} bytes of upper-level links")
        levels[i] = size // per_level
        starts.extend((level, at + 4 + (level - 1) * per_level) for level in range(1, levels[i] + 1))
        at += 4 + size
    if at != len(tail):
        raise bad(f"{len(tail) - at} bytes after the last element")
    if not empty and levels[entry] != top:
        raise bad(f"the entry point is on level {levels[entry]}, not the top level {top}")
    if starts:  # every upper-level list at once: (level, offset in the tail) per list
        level, offset = np.asarray(starts, np.int64).T
        blocks = np.frombuffer(tail, np.uint8)[offset[:, None] + np.arange(per_level)]
        counts = blocks[:, :2].copy().view("<u2")[:, 0]
        ids = blocks[:, 4:].copy().view("<u4")
        used = np.arange(max_m) < counts[:, None]
        if (counts > max_m).any() or (ids[used] >= n).any():
            raise bad("an upper-level link list is too long or names no element")
        if (levels[ids[used]] < np.broadcast_to(level[:, None], ids.shape)[used]).any():
            raise bad("a link on an upper level names an element absent from that level")


def _file_crc(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return crc
