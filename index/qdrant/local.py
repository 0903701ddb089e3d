"""qdrant-client's local mode (`QdrantClient(location=":memory:")` or `QdrantClient(path=...)`) is a
Python re-implementation of Qdrant: a collection is parallel Python lists and numpy arrays with no
lock. One thread's upsert grows them while another thread's scroll or search indexes into them, so
the reader fails with `IndexError: index 301 is out of bounds for axis 0 with size 301` (and
concurrent upserts can leave the arrays at different lengths: qdrant-client issue #1193). vecnest
calls the engine from a thread pool (requests, the upgrade backfill, recall probes), so every call
on a local client goes through one lock per client. A server or cluster is thread-safe and is
used as it is."""

import threading
import weakref
from typing import Any

from index.remote import WrappedClient

# One lock per local client, shared by every catalog opened over it (replicas in one process).
_locks: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def is_local(client: Any) -> bool:
    """True for qdrant-client's in-process engine (a folder or ":memory:"), False for a server."""
    options = getattr(client, "init_options", None) or {}
    return options.get("location") == ":memory:" or options.get("path") is not None


def thread_safe(client: Any) -> Any:
    """`client` as the catalog holds it: in local mode, its calls made one at a time."""
    if isinstance(client, WrappedClient) or not is_local(client):
        return client
    with _locks_guard:
        lock = _locks.setdefault(client, threading.RLock())

    def one_at_a_time(method: Any, args: tuple, kwargs: dict) -> Any:
        with lock:
            return method(*args, **kwargs)

    return WrappedClient(client, one_at_a_time)
