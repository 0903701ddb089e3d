"""A collection's directory: what it holds, and the removal of files no manifest names.

<path>/manifest.json        build-time facts and the current snapshot (atomically replaced)
<path>/store.sqlite (-wal, -shm)   the source of truth
<path>/vectors.f32 (.crc)   the full-dim vector mirror and its per-row checksums
<path>/snapshots/           graph files, named per snapshot, with their sidecars
<path>/rotations/           PCA rotations, named by their checksum
"""

import os
import shutil
from collections.abc import Callable
from contextlib import suppress

from index.files import json_bytes
from index.manifest import Manifest, read_manifest
from index.vectorfile import CRC_SUFFIX

MANIFEST_FILE = "manifest.json"
STORE_FILE = "store.sqlite"
VECTOR_FILE = "vectors.f32"
SNAPSHOT_DIR = "snapshots"
ROTATION_DIR = "rotations"
# Everything one collection directory holds (SQLite adds -wal and -shm beside the store).
COLLECTION_FILES = (
    MANIFEST_FILE,
    STORE_FILE,
    STORE_FILE + "-wal",
    STORE_FILE + "-shm",
    VECTOR_FILE,
    VECTOR_FILE + CRC_SUFFIX,
    SNAPSHOT_DIR,
    ROTATION_DIR,
)


def make_folders(path: str) -> None:
    for folder in (SNAPSHOT_DIR, ROTATION_DIR):
        os.makedirs(os.path.join(path, folder), exist_ok=True)


def remove_stale_files(path: str, manifest: Manifest) -> None:
    """Delete snapshot and rotation files that neither `manifest` (the one in memory) nor the
    manifest on disk names: the two differ while a refit or snapshot is half done, and a file
    either names may still be needed."""
    keep = set()
    manifests = [manifest]
    with suppress(OSError, ValueError, TypeError, KeyError):
        manifests.append(read_manifest(os.path.join(path, MANIFEST_FILE)))
    for m in manifests:
        if m.snapshot is not None:
            keep |= {f for name in m.snapshot.files.values() for f in (name, name + ".json")}
        if m.rotation is not None:
            keep.add(m.rotation.file)
    for folder in (SNAPSHOT_DIR, ROTATION_DIR):
        for name in os.listdir(os.path.join(path, folder)):
            if name not in keep:
                with suppress(OSError):
                    os.remove(os.path.join(path, folder, name))


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def export_files(
    folder: str, manifest: Manifest, source: str, store_backup: Callable[[str], tuple[int, int]]
) -> tuple[int, int]:
    """Fill `folder` with a consistent copy of the collection at `source` described by
    `manifest` (the one in effect): its snapshot and rotation files, then the store through
    `store_backup(path) -> (seq, documents)`. The caller holds the collection's maintenance
    lock, so no snapshot, rebuild or purge changes these files meanwhile."""
    os.makedirs(os.path.join(folder, SNAPSHOT_DIR))
    os.makedirs(os.path.join(folder, ROTATION_DIR))
    names = []
    if manifest.snapshot is not None:
        names += [
            os.path.join(SNAPSHOT_DIR, f) for name in manifest.snapshot.files.values() for f in (name, name + ".json")
        ]
    if manifest.rotation is not None:
        names.append(os.path.join(ROTATION_DIR, manifest.rotation.file))
    for name in names:
        if os.path.exists(os.path.join(source, name)):  # a sidecar may predate its format
            shutil.copyfile(os.path.join(source, name), os.path.join(folder, name))
    with open(os.path.join(folder, MANIFEST_FILE), "wb") as f:
        f.write(json_bytes(manifest.to_json()))
    # After the graph files: the store's seq is then >= the snapshot's, so opening replays forward.
    return store_backup(os.path.join(folder, STORE_FILE))
