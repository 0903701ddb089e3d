"""Files: durable writes (the one atomic-write helper, fsync by path), checksums, and the
process's budget of file descriptors."""

import hashlib
import io
import json
import os
import resource
from typing import Any

import numpy as np


def write_atomic(path: str, data: bytes) -> None:
    """Replace `path` with `data` so that a reader (or a crash) sees the old file or the new one,
    never a torn one: write a temporary file, fsync it, rename it over `path`, fsync the directory."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(os.path.dirname(path) or ".")


def json_bytes(value: Any) -> bytes:
    """`value` as indented, key-sorted JSON: what every JSON file vecnest writes holds."""
    return json.dumps(value, indent=2, sort_keys=True).encode()


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` in the .npy format (float32, C order)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, np.float32))
    return buffer.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_path(path: str) -> None:
    """fsync a file's contents, or a directory's entries (after a rename into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A collection holds its SQLite writer (database, WAL and shared-memory files), one reader (the
# same three), and the maps of its vector file and checksums: about 8. Busy, up to 8 readers.
FDS_PER_COLLECTION = 8


def fd_limit() -> int:
    """The process's soft limit on open file descriptors."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fds_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: assume plenty left
        return 0


def fd_headroom() -> int:
    """Descriptors kept free for everything but collections: HTTP connections, model files,
    imports. Opening collections stops short of it, so the server stays able to answer."""
    return max(32, fd_limit() // 10)


def near_fd_limit(margin: int = 16) -> bool:
    """SQLite reports EMFILE only as "unable to open database file": compare the descriptors
    this process holds with its limit."""
    return fds_in_use() >= fd_limit() - margin
