"""Polling for a condition in tests that coordinate threads (never a timing assertion: a
deadline only ends a wait that would otherwise hang)."""

import time


def wait_for(condition, seconds: float = 30.0) -> bool:
    """Poll `condition()` until it holds (True) or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True
