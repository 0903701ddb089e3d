"""`FreeCores`: how many of this process's cores other processes leave free, so that torch's
intra-op threads match the cores it can actually have; `CoreShare`: the same between the
encoder and this process's own background work.

torch runs a model call on N OpenMP threads that meet at a barrier after every operator. On an
oversubscribed machine one of them is descheduled and the others spin waiting for it: measured
here with a one-core busy loop beside the server (2 cores), text search at c=8 fell from 139 to
50 requests/s with 2 threads, and ran at 86 with 1. Unloaded, 2 threads give 139 and 1 gives 89.
So the thread count follows the load: every `every_s` seconds, the CPU time the whole machine
spent (/proc/stat) minus this process's own (/proc/self/stat) says how busy the others are.
"""

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from index import paced

# How long torch's OpenMP threads (libgomp) spin for more work before they sleep. Its default
# (300,000) kept a core busy for ~10 ms after every model call (measured here: 1.0 core of CPU
# time over the 10 ms after a single-text encode); with the next request's non-model work, the
# recall re-runs and the tokenizer waiting for that core, that time was stolen from them. At
# 10,000 the spin after a call is gone (0.01 cores) and neither single-text encodes nor 32-text
# batches got slower (four alternating runs each: p50 9.6 vs 9.8 ms, 251 vs 232 texts/s);
# at 1,000 encodes were slower (11.4 vs 9.2 ms).
OPENMP_SPIN_COUNT = "10000"

# The niceness of the recall re-runs' thread. Its units run in the gaps between model calls,
# where the requests' own non-model work (HTTP, tokenizer, graph search, JSON), the event loop
# and clients on the same machine want the cores; at nice 19 a thread weighs 15 against a normal
# one's 1024 under Linux's scheduler, so a unit takes a core that work wants only briefly, and
# still progresses (~1.5% of a contended core) under any load. A thread blocked on a lock or on
# the GIL that a unit holds is not runnable, so such a wait lets the unit run on and release it;
# but on a busy machine a unit holding a graph's read lock could take ~70x its CPU time, and a
# writer waiting for it would hold up every search, so searches pass such a writer
# (`index/rwlock.py`: search p99 141 ms without that, 0.8 ms with it, in a contrived worst case).
BACKGROUND_NICENESS = 19


def lower_this_threads_priority(niceness: int = BACKGROUND_NICENESS) -> bool:
    """Set the calling thread's niceness (Linux: a thread's own; raising it needs no
    privilege). False, changing nothing, where priorities are per process (elsewhere: the
    whole service would slow) or the OS refuses."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except OSError:
        return False
    return True


def limit_openmp_spin() -> None:
    """Set GOMP_SPINCOUNT (unless set): libgomp reads it once, when torch loads it, so this
    must run before torch is imported (`service/__init__.py` calls it)."""
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)


class FreeCores:
    def __init__(self, every_s: float = 1.0, cores: int | None = None, clock=time.monotonic, read=None):
        """`read()`: (ticks the machine spent busy, ticks this process spent), from /proc by default."""
        self.every_s = every_s
        self.cores = cores or len(os.sched_getaffinity(0))
        self._clock = clock
        self._read = read or (lambda: (_machine_busy_ticks(), _own_ticks()))
        self._tick = os.sysconf("SC_CLK_TCK")
        self._last: tuple[float, int, int] | None = None
        self._free = float(self.cores)

    def free(self) -> float:
        """Cores not used by other processes over the last interval (all of them at first, or
        where /proc cannot be read)."""
        now = self._clock()
        if self._last is not None and now - self._last[0] < self.every_s:
            return self._free
        try:
            machine, own = self._read()
        except (OSError, ValueError, IndexError):
            return self._free
        if self._last is not None:
            seconds = now - self._last[0]
            others = max(0, (machine - self._last[1]) - (own - self._last[2])) / self._tick / seconds
            self._free = max(0.0, self.cores - others)
        self._last = (now, machine, own)
        return self._free

    def threads(self, most: int) -> int:
        """Threads for the next model call: the free cores, rounded, between 1 and `most`."""
        return max(1, min(most, int(self.free() + 0.5)))


def _machine_busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)


def _own_ticks() -> int:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


class CoreShare:
    """This process's cores, shared between the encoder's model calls and background numpy work
    (the recall estimator's exact re-runs), so the two never oversubscribe them.

    The same barrier trap as `FreeCores`, inside the process: a model call on every core beside
    one busy background thread waits at each operator for the thread the background work
    displaced. Measured here (2 cores, single-text MiniLM encodes, a one-thread re-run of 16
    queries over 117k vectors at a 25% duty cycle beside them): p99 10.3 ms alone, 70 ms with
    both. Leaving the re-run a core (model calls on one thread while it ran) brought that to
    14 ms, but every call that met a re-run was slower (encode p50 12.5 ms against 9.0 on two
    threads, on the WordNet benchmark), so sampling still showed at p99.

    So background work is paced (`index.pacing`): it runs in units of about a millisecond
    (p50 1.3, p99 5 ms on that benchmark) between checkpoints, and before each unit it waits
    while a model call holds every core (at most `yield_s`, so that it progresses under any
    load). A model call that starts while a unit runs waits for the unit to end (at most
    `unit_wait_s`) and then takes every core; if the unit is still running, the call leaves it
    a core. Measured the same way: calls that met a unit waited p50 0.5 ms and then ran as fast
    as the others (encode p50 11.1 vs 10.9 ms).

    The units still share the gaps between model calls with the requests' own work; the
    thread that runs them lowers its priority (`lower_this_threads_priority`).
    """

    def __init__(
        self,
        cores: int | None = None,
        unit_wait_s: float = 0.02,
        yield_s: float = 0.05,
        on_unit: Callable[[float], None] = lambda seconds: None,
        on_wait: Callable[[float], None] = lambda seconds: None,
    ):
        """`on_unit(seconds)`: each background unit's length; `on_wait(seconds)`: how long a
        model call that met a unit waited for it (what sampling adds to that request)."""
        self.cores = cores or len(os.sched_getaffinity(0))
        self.unit_wait_s, self.yield_s = unit_wait_s, yield_s
        self._on_unit, self._on_wait = on_unit, on_wait
        self._unit_started = threading.local()
        self._changed = threading.Condition()
        self._units = 0  # background units running now
        self._full_calls = 0  # model calls running on every core
        self._waiting_calls = 0  # model calls waiting for a unit to end, to run on every core

    @contextmanager
    def model_call(self, threads: int) -> Iterator[int]:
        """Run a model call: yields the threads it may use (`threads`, or one less while a
        background unit runs on past `unit_wait_s`; at least one)."""
        with self._changed:
            if self._units and threads >= self.cores > 1:
                self._waiting_calls += 1  # the next unit waits for this call: no overtaking
                waited = time.perf_counter()
                try:
                    self._changed.wait_for(lambda: not self._units, timeout=self.unit_wait_s)
                finally:
                    self._waiting_calls -= 1
                    self._on_wait(time.perf_counter() - waited)
                if self._units:
                    threads = self.cores - 1
            full = threads >= self.cores
            self._full_calls += full
        try:
            yield threads
        finally:
            if full:
                with self._changed:
                    self._full_calls -= 1
                    self._changed.notify_all()

    @contextmanager
    def background(self) -> Iterator[None]:
        """Run one piece of background work on this thread, paced: every `index.pacing`
        checkpoint in it ends a unit and waits for the next turn."""
        self._next_unit()
        try:
            with paced(self._between_units):
                yield
        finally:
            self._end_unit()

    def _next_unit(self) -> None:
        with self._changed:
            try:
                self._changed.wait_for(lambda: not (self._full_calls or self._waiting_calls), timeout=self.yield_s)
            finally:  # counted even if the wait is interrupted: `background` always ends one unit
                self._units += 1
                self._unit_started.at = time.perf_counter()

    def _end_unit(self) -> None:
        with self._changed:
            self._units -= 1
            self._changed.notify_all()
        self._on_unit(time.perf_counter() - self._unit_started.at)

    def _between_units(self) -> None:
        self._end_unit()
        self._next_unit()
