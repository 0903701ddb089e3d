"""A background thread that keeps index snapshots fresh, rebuilds graphs full of deletes, and
fits a collection's PCA rotation once it holds enough documents.

Snapshots bound how much of the store a restart must replay; rebuilds keep deleted slots
from degrading recall and memory. All of it runs off the request path.
"""

import logging
import threading
import time

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, engine, snapshot_interval_s: float, tick_s: float = 1.0):
        self._engine = engine
        self._interval = snapshot_interval_s
        self._tick = min(tick_s, snapshot_interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_snapshot: dict[str, float] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vecnest-maintenance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            for collection in self._engine.collections():
                if self._stop.is_set():
                    return
                try:
                    self.run_once(collection)
                except Exception:  # a failed snapshot is retried next tick; the store is safe
                    log.exception("maintenance of collection %s failed", collection.name)

    def run_once(self, collection) -> None:
        if collection.wants_rotation_fit:
            log.info("fitting the PCA rotation of %s on its first %d documents", collection.name, len(collection))
            collection.fit_rotation()
            self._last_snapshot[collection.name] = time.monotonic()
            return
        if collection.needs_rebuild:
            log.info("rebuilding the index of %s (%s)", collection.name, collection.stats())
            collection.rebuild()
            self._last_snapshot[collection.name] = time.monotonic()
            return
        due = time.monotonic() - self._last_snapshot.get(collection.name, 0.0) >= self._interval
        if due and collection.needs_snapshot:
            collection.snapshot()
            self._last_snapshot[collection.name] = time.monotonic()
