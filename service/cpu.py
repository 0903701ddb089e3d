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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


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
    both, 14 ms when the encodes that overlap the background work run on one thread and the
    background work waits for a call already using every core. So: while background work runs
    or waits, model calls leave it one core; background work starts only when no call holds
    every core (it waits at most one model call: the calls after it leave it its core).
    """

    def __init__(self, cores: int | None = None):
        self.cores = cores or len(os.sched_getaffinity(0))
        self._changed = threading.Condition()
        self._background = 0  # background jobs running or waiting to
        self._full_calls = 0  # model calls running on every core

    @contextmanager
    def model_call(self, threads: int) -> Iterator[int]:
        """Run a model call: yields the threads it may use (`threads`, or one less while
        background work runs or waits; at least one)."""
        with self._changed:
            if self._background and self.cores > 1:
                threads = max(1, min(threads, self.cores - 1))
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
        """Run one piece of background work (one thread): first wait for the model calls on every
        core to end; meanwhile and until it ends, new calls leave it a core."""
        with self._changed:
            self._background += 1
            try:
                while self._full_calls:
                    self._changed.wait()
            except BaseException:
                self._background -= 1
                raise
        try:
            yield
        finally:
            with self._changed:
                self._background -= 1
