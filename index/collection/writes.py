"""The write path: commit to the store, then apply to the vector file and every graph.

Documents arrive validated (the scoring strategy prepared them, index vectors included).
Everything the apply step could run out of is reserved before the commit, under the write
mutex: vector-file blocks on disk (ENOSPC is a clean 507, nothing written) and graph capacity.
The commit is the acknowledgement point; applying validated rows after it cannot fail. Should
it fail anyway (out of memory), the write is still durable: the graphs are marked stale and
maintenance rebuilds them.
"""

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from index.backend import WriteResult
from index.errors import Invalid
from index.faults import fault_point
from index.store import NewDocument, storage_errors

from .state import CollectionState

log = logging.getLogger(__name__)


def check_batch(docs: Sequence[NewDocument]) -> None:
    """Reject duplicate ids in one batch."""
    ids = [doc.id for doc in docs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise Invalid(f"document id {dup!r} appears more than once in the batch", code="duplicate_id")


class Writes:
    def __init__(self, state: CollectionState):
        self._s = state

    def upsert(self, docs: Sequence[NewDocument], X: np.ndarray) -> WriteResult:
        """Commit `docs` (whose index vectors are the rows of `X (n, dim)`, validated), then apply."""
        s = self._s
        with s.write_mutex:
            s.check_open()
            t0 = time.perf_counter()
            with storage_errors():
                s.vectors.reserve(s.store.label_ceiling(len(docs)))
            s.indexes.reserve(len(docs))
            seq, labels = s.store.put(docs)
            fault_point("write.after_commit", s.name)
            t1 = time.perf_counter()
            with self._applying(seq):
                s.vectors.add(labels, X)
                s.indexes.add(labels, X)
            t2 = time.perf_counter()
        return WriteResult([doc.id for doc in docs], seq, {"store": t1 - t0, "index_add": t2 - t1})

    def delete(self, ids: Sequence[str]) -> WriteResult:
        """Delete documents by id; returns the ids that existed. Absent ids are ignored."""
        s = self._s
        with s.write_mutex:
            s.check_open()
            t0 = time.perf_counter()
            seq, labels, deleted = s.store.delete(list(ids))
            t1 = time.perf_counter()
            with self._applying(seq):
                s.vectors.delete(labels)
                s.indexes.delete(labels)
            t2 = time.perf_counter()
        return WriteResult(deleted, seq, {"store": t1 - t0, "index_delete": t2 - t1})

    @contextmanager
    def _applying(self, seq: int) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self._s.stale = True
            log.exception("collection %s: index update for seq %d failed; scheduling a rebuild", self._s.name, seq)
            raise
        self._s.applied_seq = seq
