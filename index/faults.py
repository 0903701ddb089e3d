"""Named crash points for the fault harness (tests/e2e/test_faults.py, bench/faults.py).

`fault_point(name, where)` kills the whole process with SIGKILL, exactly as `kill -9` would,
when the environment variable `VECNEST_CRASH_AT` names that point: `snapshot.after_graphs`
crashes at its first pass, `snapshot.after_graphs:3` at the third, `write.after_commit@mv` at
the first write to collection `mv` (`where`). Several points may be listed, comma-separated.
Without the variable (always, outside the harness) a call is one lookup.

The points sit where a crash is most likely to expose a half-done step: between a commit and
its apply, between writing index files and the manifest naming them, between a rebuild and
its swap, between a rotation's file and the graphs built with it, around an upgrade's cut-over,
between a restore's two renames.
"""

import os
import signal
import threading

ENV = "VECNEST_CRASH_AT"
_passes: dict[str, int] = {}  # per process: the process is what a crash point ends
_lock = threading.Lock()


def fault_point(name: str, where: str | None = None) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    for entry in spec.split(","):
        point, _, nth = entry.strip().partition(":")
        if point != name and point != f"{name}@{where}":
            continue
        with _lock:
            _passes[point] = _passes.get(point, 0) + 1
            due = _passes[point] == int(nth or 1)
        if due:
            os.kill(os.getpid(), signal.SIGKILL)
