"""`VectorFile`: the full-dim vectors of a collection, one float32 row per label, memory-mapped.

A cache of the store, like the graphs: re-ranking gathers a shortlist's rows in microseconds
and exact search is one matrix product per chunk, where SQLite would need a B-tree lookup per
row. Rows are written after the store commit, flushed with every snapshot and replayed from
the store after a crash. The file is paged in by the OS as needed, so it costs disk, not
resident memory.

Two guards make the mirror trustworthy:
- **Space is allocated for real** (`posix_fallocate`) before any row is written through the
  map. A sparse file on a full disk turns a write into SIGBUS; an allocation fails cleanly
  with ENOSPC, before the collection commits anything (`reserve`).
- **Every row has a CRC-32** in `<path>.crc` (uint32 per label), written with the row.
  `verify()` names the live rows that do not match (a flipped bit on disk, a crash between a
  row and its checksum); the collection re-reads those from the store.
"""

import os
import threading
import zlib

import numpy as np

_GROW = 2.0
CRC_SUFFIX = ".crc"


class VectorFile:
    def __init__(self, path: str, dim: int, capacity: int = 1024):
        self.path = path
        self.dim = int(dim)
        self._row_bytes = self.dim * 4
        self._lock = threading.Lock()  # guards growth; rows are written under the collection's write mutex
        rows = min(_size(path) // self._row_bytes, _size(path + CRC_SUFFIX) // 4)
        # True: nothing usable on disk, the caller fills the mirror from the store. Otherwise a
        # partial file (a crash or ENOSPC mid-growth) keeps its whole rows and `verify` finds the rest.
        self.fresh = rows == 0
        rows = max(rows, capacity, 16)
        _allocate(path, rows * self._row_bytes)
        _allocate(path + CRC_SUFFIX, rows * 4)
        # (rows, checksums, live mask) as ONE attribute: growth swaps them at once, so a reader
        # never pairs a new map with an old mask (or the reverse).
        self._state = self._map(rows, np.zeros(rows, bool))

    def _map(self, rows: int, live: np.ndarray) -> tuple[np.memmap, np.memmap, np.ndarray]:
        return (
            np.memmap(self.path, dtype=np.float32, mode="r+", shape=(rows, self.dim)),
            np.memmap(self.path + CRC_SUFFIX, dtype=np.uint32, mode="r+", shape=(rows,)),
            live,
        )

    @property
    def _live(self) -> np.ndarray:
        return self._state[2]

    @property
    def capacity(self) -> int:
        return len(self._live)

    def set_live(self, labels: np.ndarray) -> None:
        """Mark exactly `labels` live (from the store, at open)."""
        self.reserve(int(labels.max()) + 1 if len(labels) else 0)
        self._live[:] = False
        self._live[labels] = True

    # -- writes (under the collection's write mutex) ------------------------------------------
    def reserve(self, rows_needed: int) -> None:
        """Make room for labels below `rows_needed`, allocating disk blocks for real. Raises
        OSError (ENOSPC) and changes nothing when the disk is full."""
        if rows_needed <= len(self._live):
            return
        with self._lock:
            old_rows, old_crc, old_live = self._state
            size = max(rows_needed, int(len(old_live) * _GROW))
            old_rows.flush()
            old_crc.flush()
            _allocate(self.path, size * self._row_bytes)
            _allocate(self.path + CRC_SUFFIX, size * 4)
            live = np.zeros(size, bool)
            live[: len(old_live)] = old_live
            # Readers holding the old triple keep a valid view of the rows they asked for.
            self._state = self._map(size, live)

    def add(self, labels: np.ndarray, X: np.ndarray) -> None:
        labels = np.asarray(labels, np.int64)
        if len(labels) == 0:
            return
        self.reserve(int(labels.max()) + 1)
        rows, crc, live = self._state
        X = np.ascontiguousarray(X, np.float32)
        rows[labels] = X
        crc[labels] = row_crcs(X)
        live[labels] = True

    def delete(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels, np.int64)
        labels = labels[labels < self.capacity]
        self._live[labels] = False

    def flush(self) -> None:
        rows, crc, _ = self._state
        rows.flush()
        crc.flush()

    def verify(self, chunk: int = 8192) -> np.ndarray:
        """Sorted live labels whose row does not match its checksum."""
        rows, crc, live = self._state
        bad = []
        for start in range(0, len(live), chunk):
            labels = np.flatnonzero(live[start : start + chunk]) + start
            if len(labels):
                found = row_crcs(np.asarray(rows[labels], np.float32))
                bad.append(labels[found != crc[labels]])
        return np.concatenate(bad) if bad else np.zeros(0, np.int64)

    # -- reads ----------------------------------------------------------------------------------
    def gather(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(labels (m,), rows (m, dim))` for the live ones among `labels`, in the given order."""
        rows, _, live = self._state
        labels = np.asarray(labels, np.int64)
        labels = labels[(labels >= 0) & (labels < len(live))]
        labels = labels[live[labels]]
        return labels, np.asarray(rows[labels], np.float32)

    def checksums(self, labels: np.ndarray) -> np.ndarray:
        """`(n,)` uint32 CRC-32 of the rows of `labels` (all below `capacity`) as stored now: a
        row's checksum changes when it is rewritten with other values."""
        return np.asarray(self._state[1][labels], np.uint32)

    def chunks(self, size: int = 32768):
        """Yield `(labels (n,), rows (n, dim))` of live rows, chunk by chunk."""
        rows, _, live = self._state
        for start in range(0, len(live), size):
            mask = live[start : start + size].copy()  # a snapshot: writers flip bits of `live` meanwhile
            if mask.any():
                labels = np.flatnonzero(mask) + start
                block = np.asarray(rows[start : start + size], np.float32)
                yield labels, block[mask] if not mask.all() else block

    def __len__(self) -> int:
        return int(self._live.sum())


def row_crcs(X: np.ndarray) -> np.ndarray:
    """`(n,)` uint32 CRC-32 of each float32 row of `X (n, d)`."""
    X = np.ascontiguousarray(X, "<f4")
    return np.fromiter((zlib.crc32(row) for row in X), np.uint32, len(X))


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _allocate(path: str, size: int) -> None:
    """Make `path` exactly `size` bytes with every block allocated (a shorter file grows, a
    longer one is cut). Raises OSError (ENOSPC) on a full disk, leaving the old size."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        current = os.fstat(fd).st_size
        if current > size:
            os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)  # also fills holes in a sparse file left by an older version
    except OSError:
        if os.fstat(fd).st_size != current:
            os.ftruncate(fd, current)
        raise
    finally:
        os.close(fd)
