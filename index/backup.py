"""Backups of one collection: a consistent archive taken while writes go on, and its restore.

An archive is an uncompressed tar (vectors do not compress) holding, first, `vecnest-backup.json`
(format, collection, seq, documents, and every file's size and SHA-256), then:

    manifest.json           the collection's manifest, naming the graph snapshot below
    store.sqlite            the store as of `seq` (SQLite's online backup: one read transaction)
    snapshots/<files>       the graph files of that manifest's snapshot (taken at seq0 <= seq)
    rotations/<file>        the PCA rotation, when the collection has one

Restoring is opening that folder as a collection: the graphs load as of seq0 and the store
replays seq0..seq, as after a restart, so the restored collection answers exactly as the
original did at `seq`. The vector file is not archived: it mirrors the store and is rebuilt
from it at the first open.

`unpack` checks everything before anything is used (member names, sizes, checksums, the
manifest, SQLite's integrity check): a corrupt or truncated archive is `Invalid`
("invalid_archive") and leaves nothing behind.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tarfile
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, BinaryIO

from index.collection.layout import MANIFEST_FILE, ROTATION_DIR, SNAPSHOT_DIR, STORE_FILE
from index.errors import Invalid
from index.faults import fault_point
from index.files import fsync_path, json_bytes, write_atomic
from index.manifest import Manifest
from index.store import check_archived_store

FORMAT = 1
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# The ids `new_backup_id` makes: the only archives a start may delete for lack of a sidecar (a
# file of another name in a backups folder was put there by someone else)
_NEW_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
INDEX_FILE = "vecnest-backup.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BackupInfo:
    """What an archive holds: `seq` is the store's last write in it, `documents` its live
    documents; `bytes` and `sha256` describe the archive file itself."""

    id: str
    collection: str
    seq: int
    documents: int
    created_at: str
    bytes: int = 0
    sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def create_archive(collection: Any, folder: str, backup_id: str, created_at: str) -> BackupInfo:
    """Back `collection` (a `CollectionBackend`) up to `<folder>/<backup_id>.tar`, described by
    the sidecar `<backup_id>.json` (written last: an archive without one is unfinished)."""
    if not _ID.match(backup_id):
        raise Invalid(f"backup id {backup_id!r} must match {_ID.pattern}", code="invalid_backup_id")
    os.makedirs(folder, exist_ok=True)
    archive = os.path.join(folder, f"{backup_id}.tar")
    staging = f"{archive}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        seq, documents = collection.export(staging)
        info = BackupInfo(id=backup_id, collection=collection.name, seq=seq, documents=documents, created_at=created_at)
        info = pack(staging, archive, info)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fault_point("backup.before_sidecar", collection.name)
    write_atomic(os.path.join(folder, f"{backup_id}.json"), json_bytes(info.to_json()))
    return info


def new_backup_id(now: datetime) -> str:
    """A fresh archive id: `now` (UTC) to the second, then 8 random hex digits."""
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def sweep_unfinished(folder: str) -> None:
    """Delete what an interrupted backup left in `folder`: an export's staging folder, files
    being written (`.tar.tmp`, `.json.tmp`), and an archive of a `new_backup_id` without its
    sidecar (the sidecar is written last and removed first, so such an archive was never
    finished, or was being removed). Called at start, before any backup can run: one of a
    collection's size could otherwise stay on disk for good after each crash."""
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if entry.endswith(".tar.staging"):
            shutil.rmtree(path, ignore_errors=True)
        elif entry.endswith((".tar.tmp", ".json.tmp")) or (
            entry.endswith(".tar") and _NEW_ID.match(entry[:-4]) and not os.path.exists(path[:-4] + ".json")
        ):
            with contextlib.suppress(OSError):  # a read-only disk: they stay, the start goes on
                os.remove(path)


def list_archives(folder: str) -> list[BackupInfo]:
    """The finished archives in `folder`, oldest first."""
    found = []
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if entry.endswith(".json") and os.path.exists(os.path.join(folder, entry[:-5] + ".tar")):
            with open(os.path.join(folder, entry)) as f:
                found.append(BackupInfo(**json.load(f)))
    return found


def archive_file(folder: str, backup_id: str) -> str | None:
    """The path of a finished archive, or None (unknown or malformed id)."""
    path = os.path.join(folder, f"{backup_id}.tar")
    done = _ID.match(backup_id) and os.path.exists(path) and os.path.exists(path[:-4] + ".json")
    return path if done else None


def open_archive(folder: str, backup_id: str) -> BinaryIO | None:
    """A finished archive open for reading, or None (unknown or malformed id, or removed
    meanwhile). Whoever holds it reads it whole even if a delete removes it meanwhile (an open
    file outlives its name); a path checked first and opened later could be gone in between:
    a download then sent its headers and dropped the connection, and a restore called the
    archive invalid."""
    path = archive_file(folder, backup_id)
    if path is None:
        return None
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def remove_archive(folder: str, backup_id: str) -> bool:
    """Delete an archive and its sidecar; False when there is none (or another call removed it
    first: two deletes of one archive at once answer 204 once and 404 once)."""
    path = archive_file(folder, backup_id)
    if path is None:
        return False
    try:
        os.remove(path[:-4] + ".json")  # first: a half-removed archive is no longer listed
    except FileNotFoundError:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    return True


def pack(folder: str, archive: str, info: BackupInfo) -> BackupInfo:
    """Write the tar of `folder` to `archive` (atomically: a temporary name, fsync, rename) and
    return `info` with the archive's size and SHA-256."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = {"bytes": os.path.getsize(path), "sha256": _sha256_file(path)}
    index = json_bytes({"format": FORMAT, **info.to_json(), "files": files})
    tmp = f"{archive}.tmp"
    with open(tmp, "wb") as out:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            entry = tarfile.TarInfo(INDEX_FILE)
            entry.size = len(index)
            tar.addfile(entry, _BytesReader(index))
            for rel in sorted(files):
                tar.add(os.path.join(folder, rel), arcname=rel, recursive=False)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, archive)
    fsync_path(os.path.dirname(archive))
    return BackupInfo(**{**info.to_json(), "bytes": os.path.getsize(archive), "sha256": _sha256_file(archive)})


def unpack(archive: str | BinaryIO, folder: str, name: str | None = None) -> tuple[BackupInfo, Manifest]:
    """Extract and verify `archive` (a path, or a file open for reading) into `folder` (which
    must not exist); with `name`, the
    collection is renamed. Invalid ("invalid_archive") when anything is wrong; `folder` is then
    removed."""
    try:
        return _unpack(archive, folder, name)
    except Invalid:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError, TypeError, sqlite3.Error) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise _bad(f"{type(exc).__name__}: {exc}") from None


def _unpack(archive: str | BinaryIO, folder: str, name: str | None) -> tuple[BackupInfo, Manifest]:
    os.makedirs(folder)
    with (
        tarfile.open(archive, mode="r:")
        if isinstance(archive, str)
        else tarfile.open(fileobj=archive, mode="r:") as tar
    ):
        first = tar.next()
        if first is None or first.name != INDEX_FILE or not first.isfile():
            raise _bad(f"the archive does not start with {INDEX_FILE}")
        reader = tar.extractfile(first)
        assert reader is not None
        index = _check_index(json.loads(reader.read()))
        files: dict[str, dict[str, Any]] = index["files"]
        seen = set()
        while (member := tar.next()) is not None:  # streaming, in order (iterating would start over)
            rel = os.path.normpath(member.name)
            if rel not in files or rel in seen or not member.isfile() or rel.startswith(("/", "..")):
                raise _bad(f"unexpected member {member.name!r}")
            if member.size != files[rel]["bytes"]:
                raise _bad(f"{rel} holds {member.size} bytes; the index says {files[rel]['bytes']}")
            target = os.path.join(folder, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            digest = hashlib.sha256()
            with open(target, "wb") as out:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != files[rel]["sha256"]:
                raise _bad(f"{rel} does not match its checksum")
            seen.add(rel)
    missing = sorted(set(files) - seen)
    if missing:
        raise _bad(f"the archive is truncated: {', '.join(missing[:5])} missing")
    for sub in (SNAPSHOT_DIR, ROTATION_DIR):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    with open(os.path.join(folder, MANIFEST_FILE)) as f:
        try:
            manifest = Manifest.from_json(json.load(f))
        except Invalid as exc:
            raise _bad(exc.message) from None
    if name is not None and name != manifest.name:
        manifest = manifest.replace(name=name)
        with open(os.path.join(folder, MANIFEST_FILE), "wb") as f:
            f.write(json_bytes(manifest.to_json()))
    conn = sqlite3.connect(os.path.join(folder, STORE_FILE))
    try:
        verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    if verdict != "ok":
        raise _bad(f"the store fails SQLite's integrity check: {verdict}")
    token_dim = manifest.multivector.token_dim if manifest.multivector is not None else None
    try:
        check_archived_store(os.path.join(folder, STORE_FILE), manifest.dim, token_dim, index["documents"])
    except Invalid as exc:
        raise _bad(exc.message) from None
    info = BackupInfo(**{k: index[k] for k in ("id", "collection", "seq", "documents", "created_at")})
    return info, manifest


def _check_index(index: Any) -> dict[str, Any]:
    """The archive's index as `pack` writes it, or Invalid: every field of the expected type."""
    if not isinstance(index, dict):
        raise _bad(f"{INDEX_FILE} is not a JSON object")
    if index.get("format") != FORMAT:
        raise _bad(f"archive format {index.get('format')!r} is not supported (expected {FORMAT})")
    files = index.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(name, str)
        and isinstance(entry, dict)
        and isinstance(entry.get("bytes"), int)
        and isinstance(entry.get("sha256"), str)
        for name, entry in files.items()
    ):
        raise _bad(f"{INDEX_FILE} lists its files as something other than {{name: {{bytes, sha256}}}}")
    for key, kind in (("id", str), ("collection", str), ("created_at", str), ("seq", int), ("documents", int)):
        if not isinstance(index.get(key), kind) or isinstance(index.get(key), bool):
            raise _bad(f"{INDEX_FILE}: {key} must be a {kind.__name__}")
    return index


def _bad(message: str) -> Invalid:
    return Invalid(f"not a valid vecnest backup archive: {message}", code="invalid_archive")


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _BytesReader:
    def __init__(self, data: bytes):
        self._data, self._at = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._at + n
        out, self._at = self._data[self._at : end], min(end, len(self._data))
        return out
