"""Concurrent searches batched: requests that wait together become one backend call.

A search request puts its `Query` in a queue and awaits a future. A worker thread takes
everything waiting, merges the searches that differ only in their query vectors (the same
collection object, the same options) into one `Query` with all their rows, and runs each merged
search as one call: one graph call over many rows (hnswlib spreads the rows over both cores),
one store read, one re-ranking. The result is split back per request, and one callback per
batch wakes every waiter on the event loop.

There is no deliberate wait: a batch starts as soon as a worker is free, so a lone search is not
delayed, and batches grow with the load instead of the per-request cost (a thread-pool round
trip, a store read, a re-ranking each) growing with it. A merged search that fails is run again
request by request, so an error reaches only the request that caused it. A waiter that has gone
(its future cancelled: the client disconnected) is skipped before its batch runs.
"""

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from starlette.concurrency import run_in_threadpool

from index import CollectionBackend, Query, SearchResult

Stack = Callable[[list[Any]], Any]  # several queries' rows as one `Query.queries`


@dataclass
class _Waiting:
    backend: CollectionBackend
    query: Query
    stack: Stack
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    @property
    def rows(self) -> int:
        return len(self.query.queries)

    @property
    def merge_key(self) -> tuple:
        # The collection object, not its name: a search never crosses generations.
        return id(self.backend), replace(self.query, queries=None)


class SearchBatcher:
    """`await search(backend, query, stack)`: `backend.search(query)`, batched with the
    searches waiting beside it. `workers` threads take batches (up to `max_rows` query rows
    each); `on_batch(requests, rows)` is told the size of each merged call (metrics)."""

    def __init__(self, workers: int = 1, max_rows: int = 256, on_batch: Callable[[int, int], None] | None = None):
        self.workers = workers
        self.max_rows = max_rows
        self.on_batch = on_batch
        self._waiting: deque[_Waiting] = deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"vecnest-search-{i}", daemon=True) for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Finish what is waiting, then end the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []

    async def search(self, backend: CollectionBackend, query: Query, stack: Stack) -> SearchResult:
        if not self._threads or self._stopping:  # not started, or stopping: search alone
            return await run_in_threadpool(backend.search, query)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            self._waiting.append(_Waiting(backend, query, stack, future, loop))
            self._cond.notify()
        return await future

    # -- the worker threads ---------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:
                    return
                batch = self._take()
            outcomes = self._run(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}
            for waiting, outcome in outcomes:
                by_loop.setdefault(waiting.loop, []).append((waiting.future, outcome))
            for loop, delivered in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_deliver, delivered)
                except RuntimeError:  # that loop has closed: nobody is waiting any more
                    pass

    def _take(self) -> list[_Waiting]:
        """Waiting searches, oldest first, up to `max_rows` rows (at least one search)."""
        batch = [self._waiting.popleft()]
        rows = batch[0].rows
        while self._waiting and rows + self._waiting[0].rows <= self.max_rows:
            rows += self._waiting[0].rows
            batch.append(self._waiting.popleft())
        return batch

    def _run(self, batch: list[_Waiting]) -> list[tuple[_Waiting, Any]]:
        groups: dict[tuple, list[_Waiting]] = {}
        for waiting in batch:
            if not waiting.future.done():  # a cancelled waiter is not searched for
                groups.setdefault(waiting.merge_key, []).append(waiting)
        outcomes: list[tuple[_Waiting, Any]] = []
        for group in groups.values():
            outcomes += self._run_group(group)
        return outcomes

    def _run_group(self, group: list[_Waiting]) -> list[tuple[_Waiting, Any]]:
        if len(group) == 1:
            outcome = _call(group[0].backend, group[0].query)
            if self.on_batch is not None and not isinstance(outcome, BaseException):
                self.on_batch(1, len(outcome.matches))
            return [(group[0], outcome)]
        first = group[0]
        rows = [w.query.queries for w in group]
        result = _call(first.backend, first.query, lambda q: replace(q, queries=first.stack(rows)))
        if isinstance(result, BaseException):  # one request's fault, most likely: find whose
            return [(w, _call(w.backend, w.query)) for w in group]
        if self.on_batch is not None:
            self.on_batch(len(group), len(result.matches))
        outcomes: list[tuple[_Waiting, Any]] = []
        start = 0
        for i, waiting in enumerate(group):
            end = start + waiting.rows
            # The probe (a sampled search's rows, for an exact re-run) goes to one request only.
            part = replace(result, matches=result.matches[start:end], probe=result.probe if i == 0 else None)
            outcomes.append((waiting, part))
            start = end
        return outcomes


def _call(
    backend: CollectionBackend, query: Query, merge: Callable[[Query], Query] | None = None
) -> SearchResult | BaseException:
    """`backend.search(query)` (of `merge(query)`, the rows of a group), or what it raised."""
    try:
        return backend.search(merge(query) if merge is not None else query)
    except Exception as exc:  # delivered to the request, which answers it as any search error
        return exc


def _deliver(delivered: list[tuple[asyncio.Future, Any]]) -> None:
    """On the event loop: each waiter's result or exception (a cancelled one is left alone)."""
    for future, outcome in delivered:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
