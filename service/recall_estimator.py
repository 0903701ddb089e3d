"""`RecallEstimator`: re-runs sampled searches exactly, off the request path, and exports recall.

A search is sampled with the collection's rate (default a few percent) and hands its
`RecallProbe` to `submit`, which never blocks: the queue is bounded and a full queue drops the
sample (counted). One background thread takes probes, asks the collection for the exact
answer (`CollectionBackend.evaluate_recall`), and records per-query recall per index and stage, a
rolling mean, and the ef and candidate counts used. For collections with `target_recall`, a
controller per graph steers its default ef from the index-stage recall, and one per funnel
(or multi-vector collection) its shortlist factor from the final recall; there the graph
searches as broad as the shortlist (ef at `ef_min`), see `_factor_steers`. Where the backend
re-runs a probe at other settings against the same exact answer (`WhatIf`), each controller
is a `LadderController` that asks for the settings around the one it holds and judges them
all on the same queries; otherwise an `EfController` searches over the live setting.
"""

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from statistics import fmean
from typing import Any

from index import (
    EF,
    FACTOR,
    FINAL_STAGE,
    INDEX_STAGE,
    RERANK_MAX,
    CollectionBackend,
    EfController,
    LadderController,
    NotFound,
    RecallProbe,
    StageRecall,
    WhatIf,
    gone_meanwhile,
)
from service.cpu import CoreShare, lower_this_threads_priority
from service.metrics import Metrics

log = logging.getLogger(__name__)

LIVE, PROBE = "live", "probe"  # where a measurement came from (the `source` label)
RERANK = "rerank"  # the controller of a funnel's rerank factor (beside each graph's ef controller)


class FreshestFirst:
    """The bounded queue of probes waiting for their exact re-run, newest first. When it is full
    a new probe pushes out the oldest, and the worker takes the newest: a probe sampled before
    the last ef change tells a controller little, and a backlog of old probes served first (a
    FIFO that drops new arrivals) kept controllers from ever seeing their own settings' effect
    under steady traffic."""

    def __init__(
        self, size: int, clock: Callable[[], float] = time.monotonic, weight: Callable[[Any], int] = lambda _: 1
    ):
        """`weight(item)`: what an item counts for in `take`'s `n` and `gather` (the estimator's:
        a probe's queries, so a sampled 50-query batch search is not one 64th of a pass)."""
        self._items: deque[tuple[float, Any]] = deque()  # (queued at, item), oldest first
        self._weight = weight
        self._size = max(1, size)
        self._pending = 0  # queued or being measured
        self._closed = False
        self._flushing = 0  # callers waiting for the queue to drain: no gathering meanwhile
        self._clock = clock
        self._cond = threading.Condition()

    def put(self, item: Any) -> Any:
        """Queue `item`; returns the oldest item it pushed out, or None."""
        with self._cond:
            dropped = None
            if len(self._items) >= self._size:
                dropped = self._items.popleft()[1]
                self._pending -= 1
            self._items.append((self._clock(), item))
            self._pending += 1
            self._cond.notify_all()
            return dropped

    def take(self, n: int, gather: int = 1, gather_s: float = 0.0) -> list[Any] | None:
        """The newest items weighing up to `n` together (at least one), once `gather` worth
        are queued or the oldest has waited `gather_s` seconds (or someone waits in `join`);
        None once closed."""
        with self._cond:
            while not self._closed:
                if self._items:
                    left = self._items[0][0] + gather_s - self._clock()
                    queued = sum(self._weight(item) for _, item in self._items)
                    if queued >= min(gather, n, self._size) or left <= 0 or self._flushing:
                        break
                    self._cond.wait(left)
                else:
                    self._cond.wait()
            if self._closed:
                return None
            taken, weight = [], 0
            while self._items and (not taken or weight + self._weight(self._items[-1][1]) <= n):
                weight += self._weight(self._items[-1][1])
                taken.append(self._items.pop()[1])
            return taken

    def done(self, n: int) -> None:
        with self._cond:
            self._pending -= n
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait until everything queued has been measured (taking it without gathering)."""
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._pending <= 0, timeout)
            finally:
                self._flushing -= 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._pending -= len(self._items)
            self._items.clear()
            self._cond.notify_all()

    def qsize(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed


def _factor_steers(probe: RecallProbe) -> bool:
    """Whether a funnel's final recall is steered through its shortlist factor alone. A graph
    search is as broad as max(ef, shortlist), and at one breadth a longer shortlist re-ranked
    never finds less: breadth is bought through the factor, and an ef above the shortlist
    would only add search cost (and, changing under the factor controller, restart its
    measurements). A funnel whose factor the request pins keeps an ef controller."""
    return probe.funnel and not probe.rerank_pinned and not probe.pinned


class RecallEstimator:
    def __init__(
        self,
        metrics: Metrics,
        sample_rate: float,
        queue_size: int = 64,
        controller_window: int = 50,
        max_busy: float = 0.25,
        rolling: int = 256,
        seed: int | None = None,
        steer: bool = True,
        batch: int = 64,
        cores: CoreShare | None = None,
        gather: int = 1,
        gather_s: float = 0.0,
        settled_share: float = 1.0,
    ):
        """`steer`: apply the controllers' ef changes (False on a serving replica: one maintenance
        process steers, and every replica reads the ef it sets). `cores`: shared with the
        encoder: each re-run runs in short units between its model calls on every core
        (`CoreShare`)."""
        self.metrics = metrics
        self._steering = steer
        self.sample_rate = sample_rate
        # The worker rests (its CPU time) x (1/max_busy - 1) after each re-run, so it never takes
        # more than this share of one core from searches and the encoder (BLAS helper threads
        # aside); the bounded queue absorbs bursts and drops the excess. CPU time, not wall time:
        # under search traffic the thread waits for the GIL between numpy calls, and a wall-clock
        # measure rested 19 times that waiting too at 5% (117k glosses, 600 searches/s: ~13
        # queries re-run a second).
        self._max_busy, self._settled_share = max_busy, settled_share
        self._cores = cores or CoreShare()
        self.controller_window = controller_window
        # queries taken from the queue at once (newest probes first), merged where one exact pass
        # answers them; counted in queries, not probes: 64 sampled 50-query batch searches made
        # one 3,200-query pass that kept every controller waiting for minutes (multi-vector)
        self._batch = batch
        # ...and taken once `gather` wait or the oldest has waited `gather_s`: an exact pass over
        # 117k vectors costs 15 ms for one query (it reads every vector), 62 ms for 16, 117 ms for
        # 64, so gathering cuts the time the re-runs take a core from the encoder (under light
        # traffic the duty cycle does not bind and each probe had a pass of its own)
        self._gather, self._gather_s = gather, gather_s
        self._rolling_size = rolling
        self._queue = FreshestFirst(queue_size, weight=lambda item: item[1].queries)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # guards the dictionaries below (worker vs request threads)
        self._recalls: dict[tuple[str, str, str, str], deque[float]] = {}  # (collection, index, stage, source)
        self._breadth: dict[tuple[str, str, str], deque[tuple[int, int]]] = {}  # → (ef, candidates)
        # (collection, dim) → the graph's ef controller; (collection, dim, RERANK) → its funnel's factor
        self._controllers: dict[tuple, EfController | LadderController] = {}
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vecnest-recall", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._queue.close()  # pending samples are simply not measured
        self._thread.join(timeout=30)
        self._thread = None

    # -- the request path: decide and hand over, never wait -----------------------------------
    def rate(self, collection: CollectionBackend) -> float:
        policy_rate = collection.recall_policy.sample_rate
        return self.sample_rate if policy_rate is None else policy_rate

    def should_sample(self, collection: CollectionBackend) -> bool:
        rate = self.rate(collection)
        return rate > 0 and self._rng.random() < rate

    def submit(self, collection: CollectionBackend, probe: RecallProbe) -> bool:
        """Queue a probe for its exact re-run, never waiting. A full queue drops its oldest probe
        to make room (counted as dropped; returns False): the freshest measurements are the ones
        a controller can use."""
        dropped = self._queue.put((collection, probe))
        if dropped is not None:
            self.metrics.recall_samples.labels(dropped[0].name, "dropped").inc(dropped[1].queries)
        self.metrics.recall_queue_depth.set(self._queue.qsize())
        return dropped is None

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until every queued probe has been measured (for tests and benchmarks)."""
        return self._queue.join(timeout)

    # -- measuring ----------------------------------------------------------------------------
    def evaluate(self, collection: CollectionBackend, probe: RecallProbe, source: str) -> list[StageRecall]:
        """Re-run `probe` exactly now (on the caller's thread), with the what-if settings its
        controllers ask for, and record the result."""
        what_if = self._what_if(collection, probe) if source == LIVE else WhatIf()
        stages = collection.evaluate_recall(probe, what_if)
        self._record(collection, probe, stages, source, what_if)
        return stages

    def _run(self) -> None:
        """Take the newest queued probes (up to `batch` queries), merge the probes one exact pass can
        answer together (`CollectionBackend.merge_probes`), measure, then rest for the duty cycle.
        At a low priority: the units run beside the requests' non-model work (`service.cpu`)."""
        lower_this_threads_priority()
        while True:
            items = self._queue.take(self._batch, self._gather, self._gather_s)
            if items is None:
                return
            try:
                self.metrics.recall_queue_depth.set(self._queue.qsize())
                started = time.thread_time()
                by_collection: dict[int, tuple[CollectionBackend, list[RecallProbe]]] = {}
                for collection, probe in items:
                    by_collection.setdefault(id(collection), (collection, []))[1].append(probe)
                for collection, probes in by_collection.values():
                    self._measure(collection, probes)
                fed = [(c, {p.dim for p in probes}) for c, probes in by_collection.values()]
                self._rest(time.thread_time() - started, fed)
            finally:
                self._queue.done(len(items))

    def _rest(
        self,
        busy_s: float,
        fed: list[tuple[CollectionBackend, set[int]]],
        step_s: float = 0.05,
        sleep=time.sleep,
    ) -> None:
        """Sleep `busy_s` x (1/duty - 1) after a pass that measured the graphs `fed` (each
        collection with the dims of its probes), the duty read again every `step_s`: a pass that
        left its controllers settled rests long, and a target changed meanwhile ends that rest
        early (its new controllers are not settled), so the next target's search starts at
        once; `stop` ends it too (a settled multi-vector pass of seconds rests for minutes)."""
        slept = 0.0
        while not self._queue.closed and (left := busy_s * (1.0 / self.duty(fed) - 1.0) - slept) > 0:
            sleep(min(left, step_s))
            slept += min(left, step_s)

    def duty(self, fed: list[tuple[CollectionBackend, set[int]]]) -> float:
        """The share of one core's CPU time the re-runs may take after a pass that measured the
        graphs `fed`: `max_busy` while a controller they feed is searching (fast convergence is
        bought here), and `max_busy` x `settled_share` once every collection of the pass has a
        target and each of those graphs' controllers has settled on a setting for it (converged
        and confirmed, or saturated: `settled`). Settled controllers go on measuring the held
        setting and its neighbours, and one that stops holding unsettles, which restores
        `max_busy`. Collections without a target (estimates only) keep `max_busy`. Only the
        graphs the pass fed count: a graph that no search reaches any more (its controller left
        mid-search by the last of its queued probes) must not keep another graph's settled
        re-runs at the full duty cycle."""
        with self._lock:
            settled = all(self._settled(c, dims) for c, dims in fed)
        duty = self._max_busy * (self._settled_share if settled else 1.0)
        self.metrics.recall_duty_cycle.set(duty)
        return duty

    def _settled(self, collection: CollectionBackend, dims: set[int]) -> bool:
        """Whether the controllers of the collection's graphs `dims` for its current target have
        all settled (at least one). A controller left with an earlier target belongs to a graph
        no search has reached since the target changed (its next probe replaces it). Holds
        `_lock`."""
        target = collection.recall_policy.target
        current = [
            c
            for key, c in self._controllers.items()
            if key[0] == collection.name and key[1] in dims and c.target == target
        ]
        return target is not None and bool(current) and all(c.settled for c in current)

    def _measure(self, collection: CollectionBackend, probes: list[RecallProbe]) -> None:
        try:
            merged = collection.merge_probes(probes)
        except Exception:
            log.exception("merging recall probes of %s failed; measuring them one by one", collection.name)
            merged = probes
        for probe in merged:
            try:
                with self._cores.background():
                    self.evaluate(collection, probe, LIVE)
            except Exception as exc:
                if isinstance(exc, NotFound) or gone_meanwhile(exc):
                    continue
                self.metrics.recall_samples.labels(collection.name, "failed").inc(probe.queries)
                log.exception("recall measurement of a %s search failed", collection.name)

    def _record(
        self,
        collection: CollectionBackend,
        probe: RecallProbe,
        measured: list[StageRecall],
        source: str,
        what_if: WhatIf,
    ) -> None:
        name, m = collection.name, self.metrics
        m.recall_samples.labels(name, "evaluated").inc(probe.queries)
        stages = [s for s in measured if s.knob is None]  # the search as it ran
        with self._lock:
            for stage in stages:
                values = stage.values
                key = (name, stage.index, stage.stage, source)
                window = self._recalls.setdefault(key, deque(maxlen=self._rolling_size))
                window.extend(values)
                histogram = m.recall.labels(*key)
                for value in values:
                    histogram.observe(value)
                if window:
                    m.recall_estimate.labels(*key).set(fmean(window))
            breadth = self._breadth.setdefault((name, probe.index, source), deque(maxlen=self._rolling_size))
            breadth.extend([(probe.ef, probe.shortlist)] * probe.queries)
            m.recall_ef.labels(name, probe.index, source).set(fmean(e for e, _ in breadth))
            m.recall_candidates.labels(name, probe.index, source).set(fmean(c for _, c in breadth))
            if source == LIVE and self._steering:
                if _factor_steers(probe):
                    self._hold_ef_at_floor(collection, probe)
                elif not probe.pinned:
                    # a funnel's ef (its factor pinned) is judged by what it buys the user, the
                    # final recall (its what-ifs are re-ranked too), not by an exact shortlist
                    steered = next(s for s in stages if s.stage == (FINAL_STAGE if probe.funnel else INDEX_STAGE))
                    what_ifs = {s.setting: s.values for s in measured if s.knob == EF}
                    self._steer(collection, probe, steered.values, what_ifs, bool(what_if.efs))
                if probe.funnel and not probe.rerank_pinned:
                    final_stage = next(s for s in stages if s.stage == FINAL_STAGE)
                    factor_stages = [s for s in measured if s.knob == FACTOR]
                    what_ifs = {s.setting: s.values for s in factor_stages}
                    # a factor's experiment is its shortlist searched this broad: an ef change that
                    # leaves the breadth as it was (a shortlist longer than either ef) keeps its recalls
                    experiments = {s.setting: (s.candidates, s.ef) for s in factor_stages}
                    self._steer_rerank(
                        collection, probe, final_stage.values, what_ifs, bool(what_if.factors), experiments
                    )

    # -- steering -----------------------------------------------------------------------------
    def _what_if(self, collection: CollectionBackend, probe: RecallProbe) -> WhatIf:
        """The settings the probe's ladder controllers want measured (none for a controller
        that searches over the live setting, or without a target)."""
        if not self._steering or collection.recall_policy.target is None:
            return WhatIf()
        with self._lock:
            efs: tuple[int, ...] = ()
            factors: tuple[int, ...] = ()
            if not probe.pinned and not _factor_steers(probe):
                c = self._ef_controller(collection, probe)
                efs = c.settings() if isinstance(c, LadderController) else ()
            if probe.funnel and not probe.rerank_pinned:
                c = self._rerank_controller(collection, probe)
                factors = c.settings() if isinstance(c, LadderController) else ()
            return WhatIf(efs, factors)

    def _ef_controller(self, collection: CollectionBackend, probe: RecallProbe) -> EfController | LadderController:
        """The graph's ef controller, new when there is none or the policy changed (a ladder
        unless this graph's backend has shown it cannot re-run at other settings). Holds `_lock`."""
        policy, key = collection.recall_policy, (collection.name, probe.dim)
        controller = self._controllers.get(key)
        assert policy.target is not None
        if controller is None or (controller.target, controller.ef_min, controller.ef_max) != (
            policy.target,
            policy.ef_min,
            policy.ef_max,
        ):
            kind = EfController if isinstance(controller, EfController) else LadderController
            controller = kind(
                policy.target,
                collection.ef_search(probe.dim),
                policy.ef_min,
                policy.ef_max,
                window=self.controller_window,
            )
            self._controllers[key] = controller
        return controller

    def _rerank_controller(self, collection: CollectionBackend, probe: RecallProbe) -> EfController | LadderController:
        """The funnel's factor controller (as `_ef_controller`). Holds `_lock`."""
        policy, key = collection.recall_policy, (collection.name, probe.dim, RERANK)
        controller = self._controllers.get(key)
        assert policy.target is not None
        if controller is None or controller.target != policy.target:
            kind = EfController if isinstance(controller, EfController) else LadderController
            factor = max(1, probe.shortlist // probe.k)  # a multi-vector search's candidates per result
            controller = kind(policy.target, factor, 1, RERANK_MAX, window=self.controller_window)
            self._controllers[key] = controller
        return controller

    def _feed(
        self,
        key: tuple,
        controller: EfController | LadderController,
        setting: int,
        recalls: list[float],
        what_ifs: dict[int, list[float]],
        asked: bool,
        context: object,
        setting_contexts: dict[int, object] | None = None,
    ) -> int | None:
        """Hand the measurements to `controller`; returns its new setting, if any. A ladder
        that asked for what-if re-runs and got none (a backend that cannot re-run) is replaced
        by an `EfController` at its setting. Holds `_lock`."""
        if isinstance(controller, LadderController):
            if what_ifs:
                if setting_contexts is not None:  # finer than the scalar context: it replaces it
                    return controller.observe(what_ifs, setting_contexts=setting_contexts)
                return controller.observe(what_ifs, context=context)
            if not asked:  # asked for nothing (the target was set meanwhile): wait for the next probe
                return None
            controller = EfController(
                controller.target, controller.ef, controller.ef_min, controller.ef_max, window=controller.window
            )
            self._controllers[key] = controller
        return controller.observe(setting, recalls, context=context)

    def _steer(
        self,
        collection: CollectionBackend,
        probe: RecallProbe,
        recalls: list[float],
        what_ifs: dict[int, list[float]],
        asked: bool,
    ) -> None:
        """Feed the graph's controller; apply its new ef. Holds `_lock`."""
        policy, key = collection.recall_policy, (collection.name, probe.dim)
        if policy.target is None:
            self._controllers.pop(key, None)
            return
        controller = self._ef_controller(collection, probe)
        new_ef = self._feed(key, controller, probe.ef_setting, recalls, what_ifs, asked, probe.shortlist)
        controller = self._controllers[key]
        if new_ef is not None:
            log.info(
                "collection %s index %s: recall %.3f (target %.3f) → ef %d",
                collection.name,
                probe.index,
                controller.last_mean,
                policy.target,
                new_ef,
            )
            collection.set_ef_search(probe.dim, new_ef)

    def _hold_ef_at_floor(self, collection: CollectionBackend, probe: RecallProbe) -> None:
        """A funnel whose factor is steered searches as broad as its shortlist: the graph's ef
        goes to `ef_min` (at or below any shortlist). Holds `_lock`."""
        policy, key = collection.recall_policy, (collection.name, probe.dim)
        self._controllers.pop(key, None)
        if policy.target is not None and collection.ef_search(probe.dim) != policy.ef_min:
            log.info(
                "collection %s index %s: the rerank factor steers the final recall → ef %d (the shortlist's breadth)",
                collection.name,
                probe.index,
                policy.ef_min,
            )
            collection.set_ef_search(probe.dim, policy.ef_min)

    def _steer_rerank(
        self,
        collection: CollectionBackend,
        probe: RecallProbe,
        recalls: list[float],
        what_ifs: dict[int, list[float]],
        asked: bool,
        experiments: dict[int, object],
    ) -> None:
        """A funnel's final recall follows its shortlist (k · factor): a controller per dim finds
        the smallest factor whose final recall holds the target, as the ef controller does for the
        graph stage. `experiments`: `{factor: (shortlist, search breadth)}` of the what-ifs (a
        ladder keeps a factor's recalls while these stay). Holds `_lock`."""
        policy, key = collection.recall_policy, (collection.name, probe.dim, RERANK)
        if policy.target is None:
            self._controllers.pop(key, None)
            return
        factor = max(1, probe.shortlist // probe.k)  # a multi-vector search's candidates per result
        controller = self._rerank_controller(collection, probe)
        new_factor = self._feed(key, controller, factor, recalls, what_ifs, asked, probe.ef_setting, experiments)
        controller = self._controllers[key]
        if new_factor is not None:
            log.info(
                "collection %s index %s: final recall %.3f (target %.3f) → rerank factor %d",
                collection.name,
                probe.index,
                controller.last_mean,
                policy.target,
                new_factor,
            )
            collection.set_rerank_factor(probe.dim, new_factor)

    # -- reading ------------------------------------------------------------------------------
    def summary(self, collection: CollectionBackend) -> dict[str, Any]:
        """Rolling estimates and controller state of one collection, for its description."""
        name = collection.name
        with self._lock:
            estimates: dict[str, dict[str, Any]] = {}
            for (c, index, stage, source), window in self._recalls.items():
                if c == name and window:
                    estimates.setdefault(index, {}).setdefault(source, {})[stage] = {
                        "recall": round(fmean(window), 4),
                        "queries": len(window),
                    }
            controllers: dict[str, dict[str, Any]] = {}
            for key, c in self._controllers.items():
                if key[0] != name:
                    continue
                state = {
                    # ladder: settings judged side by side (what-if re-runs); bracket: the live one
                    "search": "ladder" if isinstance(c, LadderController) else "bracket",
                    "target": c.target,
                    "low": c.low,
                    "high": c.high,
                    "last_window_recall": c.last_mean,
                    "converged": c.converged,
                    "saturated": c.saturated,
                    "settled": c.settled,
                }
                if isinstance(c, LadderController):  # its evidence: queries, mean recall, verdict per setting
                    state["ladder"] = {str(setting): e for setting, e in c.evidence().items()}
                if len(key) == 3:  # a funnel's rerank factor, steered by its final recall
                    controllers[f"{collection.index_name(key[1])}:rerank"] = {"rerank_factor": c.ef, **state}
                else:
                    controllers[collection.index_name(key[1])] = {"ef": c.ef, **state}
        return {"estimates": estimates, "controllers": controllers}

    def reset(self, name: str) -> None:
        """Forget a dropped collection: its measurements, controllers and labelled series."""
        m = self.metrics
        with self._lock:
            for key in [k for k in self._recalls if k[0] == name]:
                del self._recalls[key]
                for metric in (m.recall_estimate, m.recall):
                    _remove(metric, key)
            for key in [k for k in self._breadth if k[0] == name]:
                del self._breadth[key]
                for metric in (m.recall_ef, m.recall_candidates):
                    _remove(metric, key)
            for key in [k for k in self._controllers if k[0] == name]:
                del self._controllers[key]


def _remove(metric, labels: tuple) -> None:
    try:
        metric.remove(*labels)
    except KeyError:  # never observed under these labels
        pass
