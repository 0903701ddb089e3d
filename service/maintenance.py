"""Background upkeep: keep index snapshots fresh, rebuild graphs full of deletes, and fit a
collection's PCA rotation once it holds enough documents; on a shared backend, also remove what
creates and drops that died half-way left.

Snapshots bound how much of the store a restart must replay; rebuilds keep deleted slots
from degrading recall and memory. All of it runs off the request path, on two threads: the
tick thread snapshots, and one worker runs the heavy jobs (rebuilds, rotation fits), so a
long rebuild of one collection never holds up the snapshots of the others. A snapshot of a
collection that is being rebuilt is simply skipped until the rebuild (which ends with one)
is over. A job that fails is retried with exponential backoff, not every tick.
"""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from index import gone_meanwhile

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0
# How often the maintenance process sweeps a shared backend for what creates and drops that died
# half-way left (each note is acted on only once index.shared_catalog.LEFTOVER_AGE_S old).
LEFTOVER_SWEEP_S = 60.0


class Maintenance:
    def __init__(
        self,
        engine,
        snapshot_interval_s: float,
        tick_s: float = 1.0,
        recall_probe_interval_s: float | None = None,
        heavy_jobs: bool = True,
    ):
        """`recall_probe_interval_s` (the maintenance role): how often each collection with a
        recall target is measured with its own stored documents as queries, to steer its ef
        when the searches that would be sampled run on other processes (None: never).
        `heavy_jobs`: rebuilds and rotation fits run here (not on serving replicas of a shared
        backend: the maintenance process does them once for all)."""
        self._engine = engine
        self._heavy_jobs = heavy_jobs
        self._probe_interval = recall_probe_interval_s
        self._last_probe: dict[str, float] = {}
        self._probe_round = 0
        self._interval = snapshot_interval_s
        self._tick = min(tick_s, snapshot_interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heavy = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vecnest-rebuild")
        self._last_snapshot: dict[str, float] = {}
        self._running: set[str] = set()  # collections with a heavy job queued or running
        self._failures: dict[str, tuple[int, float]] = {}  # name → (consecutive failures, retry after)
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vecnest-maintenance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._heavy.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            for collection in self._engine.collections():
                if self._stop.is_set():
                    return
                self.run_once(collection)
            if self._heavy_jobs and time.monotonic() - self._last_sweep >= LEFTOVER_SWEEP_S:
                self._last_sweep = time.monotonic()
                self.sweep_leftovers()

    def sweep_leftovers(self) -> None:
        """A shared backend's leftovers (index.shared_catalog): physical collections that a
        create or drop which died half-way left to no entry. The embedded catalog has none to
        sweep: it recovers its folders when it opens."""
        sweep = getattr(getattr(self._engine, "catalog", None), "sweep_leftovers", None)
        if sweep is None:
            return
        try:
            resolved = sweep()
        except Exception as exc:  # the engine is away: the next sweep tries again
            log.warning("sweeping leftovers of creates and drops failed: %s", exc)
            return
        if resolved:
            log.info("removed what %d creates or drops that died half-way left", resolved)

    def run_once(self, collection) -> None:
        name = collection.name
        with self._lock:
            if name in self._running or time.monotonic() < self._failures.get(name, (0, 0.0))[1]:
                return
        job = None
        if self._heavy_jobs:
            job = (
                "fit the PCA rotation"
                if collection.wants_rotation_fit
                else "rebuild"
                if collection.needs_rebuild
                else None
            )
        if job is not None:
            with self._lock:
                self._running.add(name)
            self._heavy.submit(self._attempt, collection, job)
            return
        due = time.monotonic() - self._last_snapshot.get(name, 0.0) >= self._interval
        if due and collection.needs_snapshot:
            self._attempt(collection, "snapshot")
        probe_due = self._probe_interval is not None and collection.recall_policy.target is not None
        if probe_due and time.monotonic() - self._last_probe.get(name, 0.0) >= self._probe_interval:
            self._last_probe[name] = time.monotonic()
            self._probe_recall(collection)

    def _probe_recall(self, collection) -> None:
        """Search each graph of `collection` with a fresh sample of its stored documents at the
        current ef, as live searches, and hand the probes to the recall estimator (its ef
        controller steers from them as from sampled traffic)."""
        from index import Query

        self._probe_round += 1
        try:
            queries = collection.sample_queries(self._engine.settings.recall_probe_queries, seed=self._probe_round)
            if len(queries) == 0:
                return
            dims = collection.dims if collection.kind == "dense" else [None]
            for dim in dims:
                result = collection.search(Query(queries, k=10, dim=dim, probe=True))
                if result.probe is not None:
                    self._engine.recall.submit(collection, result.probe)
        except Exception as exc:
            log.warning("recall probe of collection %s failed: %s", collection.name, exc)

    def _attempt(self, collection, job: str) -> None:
        name = collection.name
        try:
            if job == "snapshot":
                if not collection.snapshot(wait=False):  # a rebuild or refit holds it: next tick
                    return
            elif job == "rebuild":
                log.info("rebuilding the index of %s (%s)", name, collection.stats())
                collection.rebuild()
            else:
                log.info("fitting the PCA rotation of %s on its first %d documents", name, len(collection))
                collection.fit_rotation()
            self._last_snapshot[name] = time.monotonic()
            with self._lock:
                self._failures.pop(name, None)
        except Exception as exc:  # the store is safe; retry later, not every tick
            with self._lock:
                count = self._failures.get(name, (0, 0.0))[0] + 1
                delay = min(MAX_BACKOFF_S, self._tick * 2**count)
                self._failures[name] = (count, time.monotonic() + delay)
            if gone_meanwhile(exc):
                return
            log.error(
                "%s of collection %s failed (attempt %d, next in %.0f s): %s",
                job,
                name,
                count,
                delay,
                exc,
                exc_info=not hasattr(exc, "code"),
            )
        finally:
            if job != "snapshot":
                with self._lock:
                    self._running.discard(name)
