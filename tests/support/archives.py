"""Backup archives crafted as they could arrive from elsewhere: members changed, and the index
recomputed so that every checksum passes (only the checks of the content can refuse them)."""

import hashlib
import io
import json
import tarfile
from collections.abc import Callable

from index.backup import INDEX_FILE

RAW_INDEX = "raw index"  # a member name a change may set: the index file's bytes, as given


def repacked(archive: bytes, change: Callable[[dict[str, bytes]], None]) -> bytes:
    """`archive` with `change(members)` applied to its {name: bytes} (not the index), and its
    index listing each member's size and SHA-256 again."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    index = json.loads(members.pop(INDEX_FILE))
    change(members)
    raw_index = members.pop(RAW_INDEX, None)
    index["files"] = {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in members.items()}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in [(INDEX_FILE, raw_index or json.dumps(index).encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def manifest_with(**fields) -> Callable[[dict[str, bytes]], None]:
    """A change that sets `fields` in the archive's manifest."""

    def change(members: dict[str, bytes]) -> None:
        members["manifest.json"] = json.dumps({**json.loads(members["manifest.json"]), **fields}).encode()

    return change
