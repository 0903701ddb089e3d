"""Durable file writes: fsync a file or a directory entry by path."""

import os


def fsync_path(path: str) -> None:
    """fsync a file's contents, or a directory's entries (after a rename into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
