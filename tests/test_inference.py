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
            queue._queue.put(_Job(gone, call=outcome))
            # (before the fix the thread died here, and this call would wait forever)
            assert asyncio.run(asyncio.wait_for(queue.call(lambda: 42), timeout=10)) == 42
        assert queue._thread.is_alive()
    finally:
        queue.stop()
