"""`VectorFile`: the full-dim vectors of a collection, one float32 row per label, memory-mapped.

A cache of the store, like the graphs: re-ranking gathers a shortlist's rows in microseconds
and exact search is one matrix product per chunk, where SQLite would need a B-tree lookup per
row. Rows are written after the store commit, flushed with every snapshot and replayed from
the store after a crash; a missing or mis-sized file is rebuilt from the store. The file is
paged in by the OS as needed, so it costs disk, not resident memory.
"""

import os
import threading

import numpy as np

_GROW = 2.0


class VectorFile:
    def __init__(self, path: str, dim: int, capacity: int = 1024):
        self.path = path
        self.dim = int(dim)
        self._lock = threading.Lock()  # guards growth; rows are written under the collection's write mutex
        exists = os.path.exists(path) and os.path.getsize(path) % (self.dim * 4) == 0 and os.path.getsize(path) > 0
        self.fresh = not exists  # True: the caller must fill it from the store
        if not exists:
            with open(path, "wb") as f:
                f.truncate(max(capacity, 16) * self.dim * 4)
        rows = os.path.getsize(path) // (self.dim * 4)
        # (rows memmap, live mask) as ONE attribute: growth swaps both at once, so a reader
        # never pairs a new map with an old mask (or the reverse).
        self._state = (np.memmap(path, dtype=np.float32, mode="r+", shape=(rows, self.dim)), np.zeros(rows, bool))

    @property
    def _live(self) -> np.ndarray:
        return self._state[1]

    @property
    def capacity(self) -> int:
        return len(self._live)

    def set_live(self, labels: np.ndarray) -> None:
        """Mark exactly `labels` live (from the store, at open)."""
        self._ensure(int(labels.max()) + 1 if len(labels) else 0)
        self._live[:] = False
        self._live[labels] = True

    # -- writes (under the collection's write mutex) ------------------------------------------
    def add(self, labels: np.ndarray, X: np.ndarray) -> None:
        labels = np.asarray(labels, np.int64)
        if len(labels) == 0:
            return
        self._ensure(int(labels.max()) + 1)
        rows, live = self._state
        rows[labels] = X
        live[labels] = True

    def delete(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels, np.int64)
        labels = labels[labels < self.capacity]
        self._live[labels] = False

    def flush(self) -> None:
        self._state[0].flush()

    def _ensure(self, rows_needed: int) -> None:
        if rows_needed <= len(self._live):
            return
        with self._lock:
            old_rows, old_live = self._state
            size = max(rows_needed, int(len(old_live) * _GROW))
            old_rows.flush()
            with open(self.path, "r+b") as f:
                f.truncate(size * self.dim * 4)
            live = np.zeros(size, bool)
            live[: len(old_live)] = old_live
            # Readers holding the old pair keep a valid view of the rows they asked for.
            self._state = (np.memmap(self.path, dtype=np.float32, mode="r+", shape=(size, self.dim)), live)

    # -- reads ----------------------------------------------------------------------------------
    def gather(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(labels (m,), rows (m, dim))` for the live ones among `labels`, in the given order."""
        rows, live = self._state
        labels = np.asarray(labels, np.int64)
        labels = labels[(labels >= 0) & (labels < len(live))]
        labels = labels[live[labels]]
        return labels, np.asarray(rows[labels], np.float32)

    def chunks(self, size: int = 32768):
        """Yield `(labels (n,), rows (n, dim))` of live rows, chunk by chunk."""
        rows, live = self._state
        for start in range(0, len(live), size):
            mask = live[start : start + size]
            if mask.any():
                labels = np.flatnonzero(mask) + start
                block = np.asarray(rows[start : start + size], np.float32)
                yield labels, block[mask] if not mask.all() else block

    def __len__(self) -> int:
        return int(self._live.sum())
