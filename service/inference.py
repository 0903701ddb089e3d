"""All model calls run on one dedicated thread, fed by a bounded queue.

torch is fastest here when a single thread makes every call (a second calling thread halves
throughput on this machine). Encode requests that wait together for the same encoder and
kind are merged into one model call (micro-batching), then split back per request.

The queue is bounded twice, by waiting requests and by waiting texts (one request may carry a
thousand): past either, a request gets 429 at once. A job whose waiter is gone (the client
disconnected, its future cancelled) is skipped, never encoded for nobody.

The thread also hands freed heap memory back to the OS (`malloc_trim`): torch's tensors change
shape with every batch, and glibc kept what they freed. Measured here, encoding glosses grew
the resident set by 100 MB in 2 minutes; with a trim, it stayed flat.
"""

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index import Overloaded
from service.cpu import FreeCores
from service.encoders import Encoder, Kind

log = logging.getLogger(__name__)


@dataclass
class _Job:
    future: concurrent.futures.Future
    enqueued: float = field(default_factory=time.perf_counter)
    # an encode job: encoder + texts + kind; otherwise a plain call
    encoder: Encoder | None = None
    texts: list[str] | None = None
    kind: Kind = "query"
    layers: int | None = None
    tokens: bool = False  # token embeddings (multi-vector) instead of one vector per text
    call: Callable[[], Any] | None = None

    @property
    def group(self) -> tuple:
        """Jobs with equal groups can share one model call."""
        return self.encoder, self.kind, self.layers, self.tokens


@dataclass(frozen=True)
class EncodeStats:
    """What one model call looked like, for metrics."""

    model: str
    texts: int
    requests: int
    seconds: float
    queue_wait_s: list[float]


class InferenceQueue:
    def __init__(
        self,
        max_pending: int = 256,
        max_batch_texts: int = 64,
        on_batch: Callable[[EncodeStats], None] | None = None,
        torch_threads: int | None = None,
        max_pending_texts: int = 8192,
        batch_wait_s: float = 0.0,
    ):
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._max_pending = max_pending
        self._max_pending_texts = max_pending_texts
        self._pending_texts = 0  # texts of the encode jobs queued or running
        self._count_lock = threading.Lock()
        self._max_batch = max_batch_texts
        # Under load (the last model call merged several requests), a call waits up to this long
        # for as many to join it: closed-loop clients come back a few ms after their answer.
        self._batch_wait_s = batch_wait_s
        self._last_requests = 0
        self._on_batch = on_batch
        self._torch_threads = torch_threads  # None: follow the free cores (service/cpu.py)
        self._free_cores = FreeCores()
        self.threads = 0  # torch's intra-op threads now (0: not set yet)
        self._held: deque[_Job] = deque()  # jobs taken while batching that did not fit the batch
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize() + len(self._held)

    @property
    def pending_texts(self) -> int:
        """Texts of the admitted requests not yet encoded."""
        return self._pending_texts

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vecnest-inference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    async def encode(
        self, encoder: Encoder, texts: list[str], kind: Kind = "query", layers: int | None = None
    ) -> np.ndarray:
        """`(len(texts), encoder.dim)` float32 unit rows, computed on the inference thread."""
        if not texts:
            return np.zeros((0, encoder.dim), np.float32)
        return np.stack(await self._encode_chunks(encoder, texts, kind, layers, tokens=False))

    async def encode_tokens(
        self, encoder: Encoder, texts: list[str], kind: Kind = "query", layers: int | None = None
    ) -> list[np.ndarray]:
        """One `(n_i, encoder.dim)` matrix of unit token embeddings per text, on the inference thread."""
        if not texts:
            return []
        return await self._encode_chunks(encoder, texts, kind, layers, tokens=True)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the inference thread (model loading, tokenising)."""
        job = _Job(concurrent.futures.Future(), call=fn)
        self._queue.put(job)
        return await asyncio.wrap_future(job.future)

    async def _encode_chunks(
        self, encoder: Encoder, texts: list[str], kind: Kind, layers: int | None, tokens: bool
    ) -> list[np.ndarray]:
        """Each text's result, in order. The request is admitted whole or refused (429), then
        encoded as jobs of at most `max_batch_texts`, one after the other, longest texts first
        (less padding, as sentence-transformers sorts a batch). Between its jobs, other
        requests take their turn; a request cancelled meanwhile (its client gone) submits no
        more, and its job still queued is skipped."""
        self._admit(len(texts))
        waiting = len(texts)
        results: list[Any] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        try:
            for start in range(0, len(order), self._max_batch):
                chunk = order[start : start + self._max_batch]
                job = _Job(
                    concurrent.futures.Future(),
                    encoder=encoder,
                    texts=[texts[i] for i in chunk],
                    kind=kind,
                    layers=layers,
                    tokens=tokens,
                )
                self._queue.put(job)
                for i, result in zip(chunk, await asyncio.wrap_future(job.future)):
                    results[i] = result
                self._release(len(chunk))
                waiting -= len(chunk)
        finally:
            self._release(waiting)
        return results

    def _admit(self, texts: int) -> None:
        with self._count_lock:
            if self.depth >= self._max_pending:
                raise Overloaded(
                    f"the encoder queue is full ({self._max_pending} requests waiting); retry shortly",
                    retry_after_s=1.0,
                )
            # One request larger than the whole budget is still taken when nothing else waits.
            if self._pending_texts and self._pending_texts + texts > self._max_pending_texts:
                raise Overloaded(
                    f"the encoder queue is full ({self._pending_texts} texts waiting); retry shortly", retry_after_s=1.0
                )
            self._pending_texts += texts

    def _release(self, texts: int) -> None:
        with self._count_lock:
            self._pending_texts -= texts

    # -- the inference thread -----------------------------------------------------------------
    def _set_threads(self) -> None:
        """torch's intra-op threads: as configured, or as many as other processes leave cores."""
        torch = sys.modules.get("torch")  # not loaded: no encoder uses it (a model-free encoder)
        if torch is None:
            return
        threads = self._torch_threads or self._free_cores.threads(self._free_cores.cores)
        if threads != self.threads:
            torch.set_num_threads(threads)
            log.info("torch intra-op threads: %d (%.1f cores free)", threads, self._free_cores.free())
            self.threads = threads

    def _run(self) -> None:
        trim = _HeapTrim()
        while True:
            job = self._held.popleft() if self._held else self._queue.get()
            if job is None:
                break
            if not _start(job):  # its waiter is gone
                continue
            if job.call is not None:
                self._finish([job], job.call)
            else:
                self._encode_batch(job)
            trim.after_work(idle=self._queue.empty() and not self._held)

    def _encode_batch(self, first: _Job) -> None:
        batch, n = [first], len(first.texts)
        # Merge whatever else waits for this encoder; under load, wait (up to batch_wait_s) until
        # as many requests have joined as the last call merged, then take what is there.
        expected = self._last_requests if self._last_requests > 1 else 0
        deadline = time.perf_counter() + self._batch_wait_s
        while n < self._max_batch:
            try:
                left = deadline - time.perf_counter() if len(batch) < expected else 0.0
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.call is None and job.group == first.group:
                if _start(job):
                    batch.append(job)
                    n += len(job.texts)
            else:
                self._held.append(job)
                if job is None:  # stopping: no more waiting
                    break
        self._last_requests = len(batch)
        self._set_threads()
        start = time.perf_counter()
        texts = [t for job in batch for t in job.texts]
        encode = first.encoder.encode_tokens if first.tokens else first.encoder.encode
        done = self._finish(batch, lambda: encode(texts, first.kind, first.layers))
        if done is not None and self._on_batch is not None:
            self._on_batch(
                EncodeStats(
                    first.encoder.id,
                    len(texts),
                    len(batch),
                    time.perf_counter() - start,
                    [start - job.enqueued for job in batch],
                )
            )

    def _finish(self, batch: list[_Job], fn: Callable[[], Any]) -> Any:
        # A waiter may have gone away meanwhile (client disconnected, shutdown): its future is
        # cancelled and must not be resolved, or the inference thread would die.
        try:
            result = fn()
        except BaseException as exc:  # hand the failure to every waiter; the thread lives on
            for job in batch:
                _resolve(job.future, error=exc)
            return None
        offset = 0
        for job in batch:
            part = result if len(batch) == 1 else result[offset : offset + len(job.texts)]
            offset += len(job.texts or ())
            _resolve(job.future, result=part)
        return result


class _HeapTrim:
    """Calls glibc's `malloc_trim(0)` (about 5 ms here) after work: at most once a second and
    when no request waits, or after 10 s of uninterrupted load. A no-op without glibc."""

    def __init__(self, every_s: float = 1.0, at_most_s: float = 10.0):
        name = ctypes.util.find_library("c")
        self._trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        self._every, self._at_most, self._last = every_s, at_most_s, time.monotonic()

    def after_work(self, idle: bool) -> None:
        since = time.monotonic() - self._last
        if self._trim is not None and since >= self._every and (idle or since >= self._at_most):
            self._trim(0)
            self._last = time.monotonic()


def _start(job: _Job) -> bool:
    """Mark a job running; False when its waiter is gone (the future was cancelled)."""
    return job.future.set_running_or_notify_cancel()


def _resolve(future: concurrent.futures.Future, result: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:  # cancelled meanwhile: nobody is waiting
        pass
