"""The inference thread survives waiters that went away (a cancelled future)."""

import asyncio
import concurrent.futures
import time

from service.inference import InferenceQueue, _Job


def test_a_cancelled_waiter_does_not_kill_the_inference_thread():
    queue = InferenceQueue()
    queue.start()
    try:
        for outcome in (lambda: (time.sleep(0.05), 1)[1], lambda: 1 / 0):  # a result, then a failure
            gone = concurrent.futures.Future()
            gone.cancel()  # e.g. the client disconnected or the server is shutting down
            queue._put(_Job(gone, call=outcome))
            # (before the fix the thread died here, and this call would wait forever)
            assert asyncio.run(asyncio.wait_for(queue.call(lambda: 42), timeout=10)) == 42
        assert queue._thread.is_alive()
    finally:
        queue.stop()


class _CountingEncoder:
    """Records every text it encodes (the encoder API, without a model)."""

    id, dim, max_chars = "counting", 4, 1000

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts, kind="query", layers=None):
        self.seen.extend(texts)
        import numpy as np

        return np.ones((len(texts), 4), np.float32)


def test_the_queue_is_bounded_by_texts_and_skips_waiters_that_are_gone():
    import threading

    from index.errors import Overloaded

    encoder = _CountingEncoder()
    queue = InferenceQueue(max_pending=100, max_batch_texts=64, max_pending_texts=10)
    release = threading.Event()
    queue.start()

    async def scenario():
        blocker = asyncio.ensure_future(queue.call(lambda: release.wait(30)))  # holds the inference thread
        await asyncio.sleep(0.05)
        first = asyncio.ensure_future(queue.encode(encoder, ["a"] * 6))
        await asyncio.sleep(0.05)
        try:  # 6 + 6 texts > 10: refused at once, whatever the request count
            await queue.encode(encoder, ["b"] * 6)
            raise AssertionError("not refused")
        except Overloaded:
            pass
        gone = asyncio.ensure_future(queue.encode(encoder, ["gone"] * 3))
        await asyncio.sleep(0.05)
        gone.cancel()  # the client disconnected while its texts waited
        await asyncio.gather(gone, return_exceptions=True)  # its job's future is cancelled by now
        release.set()
        await blocker
        assert (await first).shape == (6, 4)
        assert (await queue.encode(encoder, ["c"] * 10)).shape == (10, 4)  # the budget is free again
        return queue.pending_texts

    try:
        assert asyncio.run(asyncio.wait_for(scenario(), timeout=30)) == 0
        assert "gone" not in encoder.seen and encoder.seen.count("a") == 6 and "b" not in encoder.seen
    finally:
        queue.stop()


def test_blas_threads_really_limits_numpys_blas_and_not_torchs_pool(settings):
    from threadpoolctl import threadpool_info

    from tests.support.app import app_client

    def pools(api: str) -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == api]

    openmp_before = pools("openmp")
    with app_client(settings.model_copy(update={"blas_threads": 1}), fake=True):
        assert pools("blas") and set(pools("blas")) == {1}  # threadpoolctl's own report
        assert pools("openmp") == openmp_before


class _CallsEncoder(_CountingEncoder):
    """Records the texts of each model call."""

    def __init__(self):
        super().__init__()
        self.calls: list[list[str]] = []

    def encode(self, texts, kind="query", layers=None):
        self.calls.append(list(texts))
        return super().encode(texts, kind, layers)


def test_under_load_a_model_call_waits_for_requests_to_join_it():
    """With `batch_wait_s`, a call after a merged one waits for more requests; a call after a
    lone one does not wait at all (a single client never pays the wait)."""
    encoder = _CallsEncoder()
    queue = InferenceQueue(batch_wait_s=60.0)  # long: the test must not depend on timing
    queue.start()

    async def scenario():
        alone = await asyncio.wait_for(queue.encode(encoder, ["alone"]), timeout=30)  # no load: no wait
        assert alone.shape == (1, 4) and encoder.calls == [["alone"]]
        queue._last_requests = 2  # as after a model call that merged two requests
        first = asyncio.ensure_future(queue.encode(encoder, ["first"]))
        await asyncio.sleep(0.2)  # the call waits for company...
        assert len(encoder.calls) == 1
        second = asyncio.ensure_future(queue.encode(encoder, ["second"]))
        await asyncio.wait_for(asyncio.gather(first, second), timeout=30)  # ...and runs once it has come
        return encoder.calls

    try:
        calls = asyncio.run(scenario())
    finally:
        queue._batch_wait_s = 0.0
        queue.stop()
    # The waiting call ran as soon as as many requests had joined as the last call merged.
    assert calls[1] == ["first", "second"]


def test_user_requests_go_before_background_work_which_runs_in_short_calls():
    """An upgrade's backfill queued before a user request is encoded after it, and in calls
    sized to `background_call_s` (here: so short that every call holds one text), so a user
    request never waits behind a long background call."""
    import threading

    encoder = _CallsEncoder()
    queue = InferenceQueue(background_call_s=1e-9)
    release = threading.Event()
    queue.start()

    async def scenario():
        # holds the inference thread (and, being user work, makes users "about")
        blocker = asyncio.ensure_future(queue.call(lambda: release.wait(30)))
        await asyncio.sleep(0.05)
        backfill = asyncio.ensure_future(queue.encode(encoder, ["b1", "b2", "b3"], "document", background=True))
        await asyncio.sleep(0.05)
        user = asyncio.ensure_future(queue.encode(encoder, ["u1"]))
        await asyncio.sleep(0.05)
        release.set()
        await blocker
        await asyncio.wait_for(asyncio.gather(backfill, user), timeout=30)

    try:
        asyncio.run(scenario())
    finally:
        queue.stop()
    assert encoder.calls == [["u1"], ["b1"], ["b2"], ["b3"]]


def test_with_no_user_about_background_work_runs_in_full_batches():
    encoder = _CallsEncoder()
    queue = InferenceQueue(background_call_s=1e-9)
    queue.start()
    try:
        asyncio.run(asyncio.wait_for(queue.encode(encoder, ["b1", "b2", "b3"], "document", background=True), 30))
    finally:
        queue.stop()
    assert encoder.calls == [["b1", "b2", "b3"]]


class _ThreadsEncoder(_CountingEncoder):
    """Records torch's intra-op threads during each model call."""

    def __init__(self):
        super().__init__()
        self.threads: list[int] = []

    def encode(self, texts, kind="query", layers=None):
        import torch

        self.threads.append(torch.get_num_threads())
        return super().encode(texts, kind, layers)


def test_model_calls_leave_a_core_to_background_work_while_it_runs():
    import threading

    import torch

    from service.cpu import CoreShare

    share = CoreShare(cores=2)
    queue = InferenceQueue(torch_threads=2, cores=share)
    encoder = _ThreadsEncoder()
    queue.start()
    running, done = threading.Event(), threading.Event()

    def background():
        with share.background():
            running.set()
            done.wait(30)

    before = torch.get_num_threads()
    try:
        asyncio.run(asyncio.wait_for(queue.encode(encoder, ["alone"]), timeout=30))
        worker = threading.Thread(target=background)
        worker.start()
        assert running.wait(30)
        asyncio.run(asyncio.wait_for(queue.encode(encoder, ["beside the background work"]), timeout=30))
        done.set()
        worker.join(30)
        asyncio.run(asyncio.wait_for(queue.encode(encoder, ["alone again"]), timeout=30))
        assert encoder.threads == [2, 1, 2]
    finally:
        done.set()
        queue.stop()
        torch.set_num_threads(before)
