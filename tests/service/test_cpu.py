"""FreeCores: torch's threads follow the cores other processes leave free; CoreShare: and the
cores this process's background work takes."""

import os
import subprocess
import sys
import threading

from index.pacing import checkpoint, paced
from service.cpu import BACKGROUND_NICENESS, OPENMP_SPIN_COUNT, CoreShare, FreeCores, lower_this_threads_priority
from tests.support.waiting import wait_for


def test_threads_follow_what_other_processes_use():
    tick = os.sysconf("SC_CLK_TCK")
    now, machine, own = [0.0], [0], [0]
    cores = FreeCores(every_s=1.0, cores=2, clock=lambda: now[0], read=lambda: (machine[0], own[0]))

    def second(others: float, mine: float) -> int:
        now[0] += 1.0
        machine[0] += int((others + mine) * tick)
        own[0] += int(mine * tick)
        return cores.threads(2)

    assert cores.threads(2) == 2  # nothing measured yet: every core
    assert second(others=0.1, mine=1.8) == 2  # our own load never counts against us
    assert second(others=1.0, mine=0.9) == 1  # a busy neighbour takes a core
    assert cores.free() == 1.0
    assert second(others=1.9, mine=0.1) == 1  # never fewer than one
    assert second(others=0.2, mine=1.0) == 2  # the neighbour left
    assert cores.threads(1) == 1  # never more than asked


def test_reads_this_machine():
    cores = FreeCores(every_s=0.0)
    assert 0 <= cores.free() <= cores.cores and cores.threads(cores.cores) >= 1


def _in_thread(fn) -> threading.Thread:
    worker = threading.Thread(target=fn, daemon=True)
    worker.start()
    return worker


def test_background_work_waits_for_a_call_on_every_core_then_runs_in_units_between_calls():
    units: list[float] = []
    waits: list[float] = []
    share = CoreShare(cores=2, unit_wait_s=30.0, yield_s=30.0, on_unit=units.append, on_wait=waits.append)
    started, passed, go_on, finished = (threading.Event() for _ in range(4))

    def background():
        with share.background():
            started.set()
            go_on.wait(30)
            checkpoint()  # the unit ends; the next waits for the cores
            passed.set()
            finished.wait(30)

    with share.model_call(2) as threads:
        assert threads == 2  # nothing in the background: every core
        worker = _in_thread(background)
        assert not started.wait(0.2)  # the background work waits for this call
    assert started.wait(30)  # the call on every core ended: the first unit runs

    # a call that meets a running unit waits for the unit's end, then has every core
    got: list[int] = []

    def call():
        with share.model_call(2) as threads:
            got.append(threads)
            finished.wait(30)

    caller = _in_thread(call)
    assert not got and not caller.join(0.2)  # waiting for the unit
    go_on.set()  # the unit reaches its checkpoint
    caller.join(0.2)
    assert wait_for(lambda: got == [2])
    assert not passed.wait(0.2)  # ...and the next unit waits for that call
    finished.set()
    assert passed.wait(30)
    worker.join(30)
    caller.join(30)
    with share.model_call(2) as threads:
        assert threads == 2  # the background work is done
    with share.model_call(1) as threads:
        assert threads == 1  # never more than asked
    # both units and the one wait were reported, the first unit and the wait at least as long
    # as the call was held back (0.2 s)
    assert len(units) == 2 and units[0] >= 0.2
    assert len(waits) == 1 and 0.2 <= waits[0] <= units[0]


def test_a_unit_that_runs_on_keeps_a_core_and_background_work_progresses_under_any_load():
    share = CoreShare(cores=2, unit_wait_s=0.05, yield_s=0.05)
    running, done = threading.Event(), threading.Event()

    def background():
        with share.background():
            running.set()
            done.wait(30)

    with share.model_call(2) as threads:
        assert threads == 2
        worker = _in_thread(background)
        # a call on every core that does not end holds the background work back only yield_s
        assert running.wait(30)
    # a unit that does not reach a checkpoint within unit_wait_s: the call leaves it a core
    with share.model_call(2) as threads:
        assert threads == 1
    done.set()
    worker.join(30)
    with share.model_call(2) as threads:
        assert threads == 2


def test_checkpoints_pause_only_inside_paced_work():
    calls: list[str] = []
    checkpoint()  # nothing paces this thread: a no-op
    with paced(lambda: calls.append("outer")):
        checkpoint()
        with paced(lambda: calls.append("inner")):
            checkpoint()
        checkpoint()
        other = _in_thread(checkpoint)  # another thread is not paced by this one
        other.join(30)
    checkpoint()
    assert calls == ["outer", "inner", "outer"]


def test_one_core_is_never_taken_from_the_encoder():
    share = CoreShare(cores=1, unit_wait_s=0.01)
    with share.background(), share.model_call(1) as threads:
        assert threads == 1


def test_torchs_openmp_threads_are_told_to_sleep_soon_before_torch_loads():
    """libgomp reads GOMP_SPINCOUNT once, when torch loads it: importing the service sets it
    (unless the user did) before anything has imported torch."""
    code = "import os, sys, service; print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert ours.stdout.split() == [OPENMP_SPIN_COUNT, "False"]
    theirs = subprocess.run(
        [sys.executable, "-c", code], env={**env, "GOMP_SPINCOUNT": "500"}, capture_output=True, text=True, check=True
    )
    assert theirs.stdout.split() == ["500", "False"]


def test_the_recall_re_runs_thread_runs_at_a_low_priority_and_nothing_else_does():
    """The re-runs' units share the cores with the requests' non-model work: their thread (and
    only it) is niced, so a unit takes a core such work wants only briefly."""
    from service.metrics import Metrics
    from service.recall_estimator import RecallEstimator

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    estimator = RecallEstimator(Metrics(), 0.0)
    estimator.start()
    try:
        worker = estimator._thread
        assert worker is not None
        assert wait_for(lambda: os.getpriority(os.PRIO_PROCESS, worker.native_id) == BACKGROUND_NICENESS)
    finally:
        estimator.stop()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # this thread's own is kept
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == before  # the process's too

    got: list[int] = []

    def lower() -> None:
        assert lower_this_threads_priority(BACKGROUND_NICENESS)
        got.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    _in_thread(lower).join(30)
    assert got == [BACKGROUND_NICENESS]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
