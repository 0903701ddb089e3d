"""All model calls run on one dedicated thread, fed by a bounded queue.

torch is fastest here when a single thread makes every call (a second calling thread halves
throughput on this machine). Encode requests that wait together for the same encoder and
kind are merged into one model call (micro-batching), then split back per request.

The queue is bounded twice, by waiting requests and by waiting texts (one request may carry a
thousand): past either, a request gets 429 at once. A job whose waiter is gone (the client
disconnected, its future cancelled) is skipped, never encoded for nobody.

Background work (an upgrade's sample and backfill) waits behind every user request. While
users are about, it is encoded in model calls sized to about `background_call_s` (from the time
per text its last call took); a backfill batch of 32 abstracts through all-mpnet-base-v2 held
the thread for ~3 s. With no user request for `USER_IDLE_S`, it runs in full batches (short
calls batch less: one abstract per call ran mpnet at about half its rate). A model call cannot
be cut short, but a transformer run block by block can pause between its blocks: there, the
user jobs waiting run first (`_serve_waiting_users`), so a user request that arrives during a
background call waits for one block of it, not the whole call (one abstract through mpnet:
~0.4 s, twelve blocks). ONNX Runtime runs a forward pass whole, so there the points are between
the passes of a call (`model_batch_size` texts each): 64 SciFact abstracts through MiniLM int8
are four passes, and a user request waited ~0.4 s of the call's ~1.55 s.

The thread also hands freed heap memory back to the OS (`malloc_trim`): torch's tensors change
shape with every batch, and glibc kept what they freed. Measured here, encoding glosses grew
the resident set by 100 MB in 2 minutes; with a trim, it stayed flat.
"""

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import itertools
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index import Overloaded
from service.cpu import CoreShare, FreeCores
from service.encoders import Encoder, Kind, pause_points

log = logging.getLogger(__name__)

USER_IDLE_S = 2.0  # background work runs at full batch once no user request came for this long


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
    background: bool = False  # served after every waiting user request

    @property
    def group(self) -> tuple:
        """Jobs with equal groups can share one model call."""
        return self.encoder, self.kind, self.layers, self.tokens, self.background


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
        background_call_s: float = 0.2,
        cores: CoreShare | None = None,
    ):
        # (priority, arrival, job): user work (0) before background work (1) before the stop
        # sentinel (2, job None); first come, first served within a priority.
        self._queue: queue.PriorityQueue[tuple[int, int, _Job | None]] = queue.PriorityQueue()
        self._arrivals = itertools.count()
        self._background_call_s = background_call_s
        self._background_per_text: dict[Any, float] = {}  # encoder → seconds per text of its last background call
        self._user_seen = -float("inf")  # when the last user job was queued (monotonic)
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
        self.cores = cores or CoreShare(self._free_cores.cores)  # shared with background work
        self.threads = 0  # torch's intra-op threads now (0: not set yet)
        self._pausing = False  # user jobs are running between the layers of a background call
        self._paused_s = 0.0  # seconds background calls spent paused for them, in all
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def pending_texts(self) -> int:
        """Texts of the admitted requests not yet encoded."""
        return self._pending_texts

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vecnest-inference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put((2, next(self._arrivals), None))
            self._thread.join(timeout=30)
            self._thread = None

    async def encode(
        self,
        encoder: Encoder,
        texts: list[str],
        kind: Kind = "query",
        layers: int | None = None,
        background: bool = False,
    ) -> np.ndarray:
        """`(len(texts), encoder.dim)` float32 unit rows, computed on the inference thread."""
        if not texts:
            return np.zeros((0, encoder.dim), np.float32)
        return np.stack(await self._encode_chunks(encoder, texts, kind, layers, False, background))

    async def encode_tokens(
        self,
        encoder: Encoder,
        texts: list[str],
        kind: Kind = "query",
        layers: int | None = None,
        background: bool = False,
    ) -> list[np.ndarray]:
        """One `(n_i, encoder.dim)` matrix of unit token embeddings per text, on the inference thread."""
        if not texts:
            return []
        return await self._encode_chunks(encoder, texts, kind, layers, True, background)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the inference thread (model loading, tokenising)."""
        job = _Job(concurrent.futures.Future(), call=fn)
        self._put(job)
        return await asyncio.wrap_future(job.future)

    def _put(self, job: _Job) -> None:
        if not job.background:
            self._user_seen = time.monotonic()
        self._queue.put((1 if job.background else 0, next(self._arrivals), job))

    def _chunk_size(self, encoder: Encoder, background: bool) -> int:
        """Texts per job: `max_batch_texts`. Background work while users are about (a user
        request in the last `USER_IDLE_S`): as many texts as the last background call's time
        per text fits in `background_call_s`, at least one (the first such call is one text,
        which prices the rest); with no user about it runs at full batch, full speed."""
        if not background or time.monotonic() - self._user_seen > USER_IDLE_S:
            return self._max_batch
        per_text = self._background_per_text.get(encoder)
        if per_text is None:
            return 1
        return max(1, min(self._max_batch, int(self._background_call_s / max(per_text, 1e-6))))

    async def _encode_chunks(
        self, encoder: Encoder, texts: list[str], kind: Kind, layers: int | None, tokens: bool, background: bool
    ) -> list[np.ndarray]:
        """Each text's result, in order. The request is admitted whole or refused (429), then
        encoded as jobs of at most `max_batch_texts` (background: see `_chunk_size`), one after
        the other, longest texts first (less padding, as sentence-transformers sorts a batch).
        Between its jobs, other requests take their turn; a request cancelled meanwhile (its
        client gone) submits no more, and its job still queued is skipped."""
        self._admit(len(texts))
        waiting = len(texts)
        results: list[Any] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        try:
            start = 0
            while start < len(order):
                size = self._chunk_size(encoder, background)
                chunk = order[start : start + size]
                start += len(chunk)
                job = _Job(
                    concurrent.futures.Future(),
                    encoder=encoder,
                    texts=[texts[i] for i in chunk],
                    kind=kind,
                    layers=layers,
                    tokens=tokens,
                    background=background,
                )
                self._put(job)
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
    def _threads_wanted(self) -> int:
        """torch's intra-op threads: as configured, or as many as other processes leave cores."""
        return self._torch_threads or self._free_cores.threads(self._free_cores.cores)

    def _set_threads(self, threads: int) -> None:
        torch = sys.modules.get("torch")  # not loaded: no encoder uses it (a model-free encoder)
        if torch is None:
            return
        if threads != self.threads:
            # debug: a call that meets a long background unit runs on one core less
            # (`CoreShare`), and the next one on all again
            torch.set_num_threads(threads)
            log.debug("torch intra-op threads: %d (%.1f cores free)", threads, self._free_cores.free())
            self.threads = threads

    def _run(self) -> None:
        trim = _HeapTrim()
        while True:
            _, _, job = self._queue.get()
            if job is None:
                break
            self._run_job(job)
            trim.after_work(idle=self._queue.empty())

    def _run_job(self, job: _Job) -> None:
        if not _start(job):  # its waiter is gone
            return
        if job.call is not None:
            self._finish([job], job.call)
        else:
            self._encode_batch(job)

    def _serve_waiting_users(self) -> None:
        """At a pause point of a background model call (before a transformer block, or between
        two ONNX passes): run every user job waiting now, here on this thread, then let the
        paused call go on. A user request then waits for one layer of a background call (mpnet,
        one abstract: ~35 ms of ~0.4 s) or one ONNX pass, not for the whole call."""
        if self._pausing:  # a user call made from here meets the points too
            return
        self._pausing, paused, threads = True, time.perf_counter(), self.threads
        try:
            while (job := self._waiting_user_job()) is not None:
                self._run_job(job)
        finally:
            self._set_threads(threads)  # as the paused call was given them
            self._paused_s += time.perf_counter() - paused
            self._pausing = False

    def _waiting_user_job(self) -> _Job | None:
        """The first user job in the queue, taken from it; None when none waits. (Only this
        thread takes from the queue, and nothing queued later goes before a user job at the head.)"""
        with self._queue.mutex:
            head = self._queue.queue[0] if self._queue.queue else None
        if head is None or head[0] != 0:
            return None
        return self._queue.get_nowait()[2]

    def _encode_batch(self, first: _Job) -> None:
        batch, n = [first], len(first.texts)
        # Merge whatever else waits for this encoder; under load, wait (up to batch_wait_s) until
        # as many requests have joined as the last call merged, then take what is there.
        expected = self._last_requests if self._last_requests > 1 and not first.background else 0
        deadline = time.perf_counter() + self._batch_wait_s
        held = []  # taken while batching but not part of this call: queued again, in their place
        limit = len(first.texts) if first.background else self._max_batch  # background: its size is chosen
        while n < limit:
            try:
                left = deadline - time.perf_counter() if len(batch) < expected else 0.0
                entry = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            job = entry[2]
            if job is not None and job.call is None and job.group == first.group:
                if _start(job):
                    batch.append(job)
                    n += len(job.texts)
            else:
                held.append(entry)
                if job is None:  # stopping: no more waiting
                    break
        for entry in held:
            self._queue.put(entry)
        self._last_requests = len(batch)
        start, paused_before = time.perf_counter(), self._paused_s
        texts = [t for job in batch for t in job.texts]
        encode = first.encoder.encode_tokens if first.tokens else first.encoder.encode
        # A background call lets waiting user jobs run at its pause points (between its layers,
        # or its ONNX passes): a call cannot be cut short.
        points = pause_points(first.encoder, self._serve_waiting_users) if first.background else nullcontext()
        with self.cores.model_call(self._threads_wanted()) as threads, points:
            self._set_threads(threads)
            done = self._finish(batch, lambda: encode(texts, first.kind, first.layers))
        seconds = time.perf_counter() - start - (self._paused_s - paused_before)  # its own, not the users'
        if first.background:
            self._background_per_text[first.encoder] = seconds / len(texts)
        if done is not None and self._on_batch is not None:
            self._on_batch(
                EncodeStats(first.encoder.id, len(texts), len(batch), seconds, [start - job.enqueued for job in batch])
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
