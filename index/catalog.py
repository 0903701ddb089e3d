"""`Catalog`: the collections of one data directory.

Layout: `<data_dir>/collections/<name>/{manifest.json, store.sqlite, snapshots/}`. A collection
is created in a hidden staging directory and renamed into place, so a crash never leaves a
half-made one; a drop renames it away before deleting. A restore over a collection renames the
previous one aside (`.replaced-<name>-<hex>`) and then the archive's folder into its home: a
crash between the two renames leaves the name without a home, and the next start puts the
previous one back (the restore was never acknowledged), where a plain sweep of leftovers would
have deleted both. An exclusive lock file keeps a second process from opening the same data
directory.

A collection that cannot be opened (a corrupt manifest or pointer, a full or read-only disk,
too many open files) is kept as *failed* with its reason: listed, answered with that reason,
and droppable, while every healthy collection serves. Slow work (opening, creating, closing
a collection that is mid-snapshot) never runs under the catalog's lock, which the event loop
takes on every request.

A collection's home may hold several generations (an encoder upgrade builds one in
`gen-<id>/`); `current.json` names the one that serves, "." (the home itself) when absent.
Cutting over is rewriting that one file atomically.
"""

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import BinaryIO

from index.backup import BackupInfo, sweep_unfinished, unpack
from index.collection import MANIFEST_FILE, Collection, CollectionOptions, open_collection
from index.errors import Conflict, Invalid, NotFound, NotReady, VecnestError, being_restored
from index.faults import fault_point
from index.files import (
    FDS_PER_COLLECTION,
    fd_headroom,
    fd_limit,
    fds_in_use,
    fsync_path,
    json_bytes,
    near_fd_limit,
    write_atomic,
)
from index.manifest import Manifest
from index.store import storage_errors

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BACKUP_DIR = "backups"  # <data_dir>/backups/<name>/<id>.tar: outside the collections' own folders
UPLOADS_DIR = ".uploads"  # <data_dir>/backups/.uploads/: archives being received for a restore
CURRENT_FILE = "current.json"
# Hidden folders of the catalog's own steps, swept at start: staging for a restore or a create,
# and a dropped collection on its way out. A restore's displaced previous collection
# (REPLACED) is not swept blindly: see `_recover_leftovers`.
SWEPT = (".restore-", ".trash-", ".new-")
REPLACED = ".replaced-"


def active_generation(home: str) -> str:
    """The generation directory (relative to the collection's home) that serves: "." or "gen-<id>"."""
    try:
        with open(os.path.join(home, CURRENT_FILE)) as f:
            return json.load(f)["generation"]
    except FileNotFoundError:
        return "."


def set_active_generation(home: str, generation: str) -> None:
    """Point the collection at `generation`, atomically."""
    write_atomic(os.path.join(home, CURRENT_FILE), json_bytes({"generation": generation}))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise Invalid(f"collection name {name!r} must match {NAME_PATTERN.pattern}", code="invalid_name")
    return name


class Catalog:
    def __init__(
        self, data_dir: str, options: CollectionOptions = CollectionOptions(), max_collections: int | None = None
    ):
        self.data_dir = os.path.abspath(data_dir)
        self.options = options
        self.max_collections = max_collections
        self._root = os.path.join(self.data_dir, "collections")
        os.makedirs(self._root, exist_ok=True)
        self._lock_fd = _lock_directory(self.data_dir)
        self._collections: dict[str, Collection] = {}
        self._failed: dict[str, str] = {}  # name → why it could not be opened
        self._busy: dict[str, str] = {}  # name → what is under way: "created", "dropped" or "restored"
        self._lock = threading.Lock()
        # whoever holds the lock first finishes what a crash left (a server, `vecnest restore`)
        self._recover_leftovers()
        self._sweep_backups()

    def open_all(self, on_open: Callable[[Collection], None] | None = None) -> None:
        """Open every collection on disk (loading snapshots and replaying the store). One that
        cannot be opened is marked failed with its reason; the others open regardless."""
        for name in sorted(os.listdir(self._root)):
            path = os.path.join(self._root, name)
            if name.startswith("."):  # the lock, the service's model cache: not collections
                continue
            if not NAME_PATTERN.match(name) or not os.path.isdir(path):
                log.warning("ignoring %s in %s: not a collection", name, self._root)
                continue
            if fds_in_use() + FDS_PER_COLLECTION > fd_limit() - fd_headroom():
                reason = describe_open_error(OSError(errno.EMFILE, "Too many open files"))
                log.error("collection %s is not opened and is marked failed: %s", name, reason)
                self._failed[name] = reason
                continue
            try:
                active = os.path.normpath(os.path.join(path, active_generation(path)))
                if not os.path.exists(os.path.join(active, MANIFEST_FILE)):
                    raise FileNotFoundError(f"{MANIFEST_FILE} is missing")
                collection = open_collection(active, self.options)
            except Exception as exc:  # one broken collection must not keep the others down
                reason = describe_open_error(exc, path)
                log.error(
                    "collection %s cannot be opened and is marked failed: %s",
                    name,
                    reason,
                    exc_info=not isinstance(exc, (OSError, ValueError, KeyError)),
                )
                self._failed[name] = reason
                continue
            try:
                if on_open is not None:
                    on_open(collection)
            except Exception as exc:
                collection.close()
                self._failed[name] = describe_open_error(exc)
                continue
            with self._lock:
                self._collections[name] = collection

    def _recover_leftovers(self) -> None:
        """Finish what a crash interrupted, before any collection is opened: delete staging and
        dropped folders (`SWEPT`), and for each collection a restore displaced (`REPLACED`):
        delete it when its name has a home again (the archive took its place), or else put it
        back, since the process died between the restore's two renames."""
        for entry in sorted(os.listdir(self._root)):
            path = os.path.join(self._root, entry)
            if entry.startswith(SWEPT):
                shutil.rmtree(path, ignore_errors=True)
            elif entry.startswith(REPLACED):
                name = entry[len(REPLACED) :].rpartition("-")[0]
                home = os.path.join(self._root, name)
                if not NAME_PATTERN.match(name) or os.path.exists(home):
                    shutil.rmtree(path, ignore_errors=True)
                    continue
                try:
                    os.rename(path, home)
                    fsync_path(self._root)
                except OSError as exc:  # e.g. a read-only disk: say so, and start the others
                    reason = f"a restore over it was interrupted and {entry} could not be put back: " + (
                        describe_open_error(exc, path)
                    )
                    log.error("collection %s: %s", name, reason)
                    self._failed[name] = reason
                    continue
                log.warning(
                    "collection %s: a restore over it was interrupted before the archive took its place; "
                    "the previous collection is back",
                    name,
                )

    def _sweep_backups(self) -> None:
        """Delete what a crash left of backups being made and archives being received."""
        root = os.path.join(self.data_dir, BACKUP_DIR)
        for entry in os.listdir(root) if os.path.isdir(root) else []:
            path = os.path.join(root, entry)
            if entry == UPLOADS_DIR:
                shutil.rmtree(path, ignore_errors=True)
            elif NAME_PATTERN.match(entry) and os.path.isdir(path):
                sweep_unfinished(path)

    def close(self) -> None:
        with self._lock:
            collections, self._collections = list(self._collections.values()), {}
        for collection in collections:
            collection.close()
        os.close(self._lock_fd)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    def get(self, name: str, fresh: bool = False) -> Collection:
        """The open collection `name` (`fresh` changes nothing: one process, the copy is the truth)."""
        with self._lock:
            collection = self._collections.get(name)
            reason = self._failed.get(name)
            underway = self._busy.get(name)
        if collection is None:
            if underway == "restored":
                raise being_restored(name)
            if reason is not None:
                raise NotReady(
                    f"collection {name!r} could not be opened: {reason}; drop it (DELETE) or repair it and restart",
                    code="collection_unavailable",
                )
            raise NotFound(f"collection {name!r} not found", code="collection_not_found")
        return collection

    def home(self, name: str) -> str:
        """The directory holding every generation of collection `name`."""
        return os.path.join(self._root, check_name(name))

    def backup_dir(self, name: str) -> str:
        """Where the backups of collection `name` are kept (outside its home, so they outlive a drop)."""
        return os.path.join(self.data_dir, BACKUP_DIR, check_name(name))

    def uploads_dir(self) -> str:
        """Where uploaded archives are received before a restore (swept at start)."""
        return os.path.join(self.data_dir, BACKUP_DIR, UPLOADS_DIR)

    def restore(
        self,
        archive: str | BinaryIO,
        name: str | None = None,
        replace: bool = False,
        check: Callable[[Manifest], None] | None = None,
    ) -> tuple[Collection, BackupInfo]:
        """Recreate a collection from a backup archive, under `name` (default: the archive's).
        The archive is unpacked, verified (`check` sees its manifest: what the caller keeps in
        it) and opened (its store replayed) beside the live collections first; only then is an
        existing collection of that name (with `replace`) swapped out for it. A bad archive, or
        a name taken without `replace`, changes nothing."""
        staging = os.path.join(self._root, f".restore-{uuid.uuid4().hex[:8]}")
        try:
            with storage_errors():
                info, manifest = unpack(archive, staging, name)
            name = check_name(manifest.name)
            if check is not None:
                check(manifest)
            _open_unpacked(staging, self.options)
            with self._lock:
                if name in self._busy:
                    raise Conflict(f"collection {name!r} is being {self._busy[name]}", code="collection_busy")
                # on disk too: the offline `vecnest restore` opens no collection first
                exists = name in self._collections or name in self._failed or os.path.exists(self.home(name))
                if exists and not replace:
                    raise Conflict(f"collection {name!r} already exists", code="collection_exists")
                count = len(self._collections) + len(self._failed) + len(self._busy)
                if not exists and self.max_collections is not None and count >= self.max_collections:
                    raise Conflict(
                        f"this server holds its limit of {self.max_collections} collections", code="collection_limit"
                    )
                self._busy[name] = "restored"
                previous = self._collections.pop(name, None)
                self._failed.pop(name, None)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        home = os.path.join(self._root, name)
        displaced = os.path.join(self._root, f"{REPLACED}{name}-{uuid.uuid4().hex[:8]}")
        try:
            if previous is not None:
                previous.close(replaced=True)
            with storage_errors():
                if os.path.exists(home):
                    os.rename(home, displaced)
                    fault_point("restore.after_displace", name)
                os.rename(staging, home)
                fsync_path(self._root)
            collection = open_collection(home, self.options)
            with self._lock:
                self._collections[name] = collection
        except BaseException as exc:
            if not self._put_back(name, home, displaced):
                with self._lock:
                    self._failed[name] = f"could not be restored: {describe_open_error(exc)}"
            raise
        finally:
            with self._lock:
                self._busy.pop(name, None)
            shutil.rmtree(displaced, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
        return collection, info

    def _put_back(self, name: str, home: str, displaced: str) -> bool:
        """After a restore failed before the archive took its place: the previous collection
        back in its home and serving. False when there is nothing to put back, or it fails."""
        if os.path.exists(home) or not os.path.exists(displaced):
            return False
        try:
            os.rename(displaced, home)
            fsync_path(self._root)
            collection = open_collection(home, self.options)
        except Exception:
            log.exception("collection %s: the previous version could not be put back after a failed restore", name)
            return False
        with self._lock:
            self._collections[name] = collection
        return True

    def generations(self, name: str):
        """The generations of `name` (folders of its home) and its upgrade records."""
        from index.encoder_upgrade import FileGenerations  # it builds on this module

        self.get(name)  # 404 for an unknown collection
        return FileGenerations(self.home(name), self.options)

    def swap(self, name: str, collection: Collection) -> Collection:
        """Make `collection` (a generation inside the home of `name`) the one that serves; returns
        the one it replaces. Requests already holding the old object finish on it."""
        home = self.home(name)
        generation = os.path.relpath(collection.path, home)
        if generation.startswith(".."):
            raise Invalid(f"{collection.path} is not a generation of collection {name!r}")
        with self._lock:
            previous = self._collections.get(name)
            if previous is None:
                raise NotFound(f"collection {name!r} not found", code="collection_not_found")
            set_active_generation(home, generation)
            self._collections[name] = collection
        return previous

    def mark_failed(self, name: str, reason: str) -> None:
        """Take an open collection out of service (closed, kept on disk) with `reason`."""
        with self._lock:
            collection = self._collections.pop(name, None)
            self._failed[name] = reason
        if collection is not None:
            collection.close()

    def failed(self) -> dict[str, str]:
        """`name → reason` of the collections on disk that could not be opened."""
        with self._lock:
            return dict(self._failed)

    def create(self, manifest: Manifest) -> Collection:
        name = check_name(manifest.name)
        with self._lock:
            if name in self._collections or name in self._failed or name in self._busy:
                raise Conflict(f"collection {name!r} already exists", code="collection_exists")
            count = len(self._collections) + len(self._failed) + len(self._busy)
            if self.max_collections is not None and count >= self.max_collections:
                raise Conflict(
                    f"this server holds its limit of {self.max_collections} collections; drop one or "
                    f"raise VECNEST_MAX_COLLECTIONS",
                    code="collection_limit",
                )
            if fds_in_use() + FDS_PER_COLLECTION > fd_limit() - fd_headroom():
                raise NotReady(
                    describe_open_error(OSError(errno.EMFILE, "Too many open files")), code="too_many_open_files"
                )
            self._busy[name] = "created"
        try:
            staging = os.path.join(self._root, f".new-{name}-{uuid.uuid4().hex[:8]}")
            try:
                with storage_errors():
                    os.makedirs(staging)
                    Collection.create(staging, manifest, self.options).close()
                    os.rename(staging, os.path.join(self._root, name))
                    fsync_path(self._root)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            collection = open_collection(os.path.join(self._root, name), self.options)
            with self._lock:
                self._collections[name] = collection
        finally:
            with self._lock:
                self._busy.pop(name, None)
        return collection

    def drop(self, name: str) -> None:
        """Close and delete a collection (healthy or failed). Closing waits for a snapshot or
        write in progress on it, outside the catalog's lock: other requests go on meanwhile."""
        check_name(name)
        with self._lock:
            if name in self._busy:
                raise Conflict(f"collection {name!r} is being {self._busy[name]}", code="collection_busy")
            collection = self._collections.pop(name, None)
            reason = self._failed.pop(name, None)
            if collection is None and reason is None:
                raise NotFound(f"collection {name!r} not found", code="collection_not_found")
            self._busy[name] = "dropped"
        trash = os.path.join(self._root, f".trash-{name}-{uuid.uuid4().hex[:8]}")
        try:
            if collection is not None:
                collection.close()
            with storage_errors():
                os.rename(os.path.join(self._root, name), trash)
                fsync_path(self._root)
        except BaseException as exc:
            with self._lock:  # still on disk: keep the name visible, and say why
                self._failed[name] = f"could not be dropped: {describe_open_error(exc)}"
            raise
        finally:
            with self._lock:
                self._busy.pop(name, None)
        shutil.rmtree(trash, ignore_errors=True)


def _open_unpacked(path: str, options: CollectionOptions) -> None:
    """Open an unpacked archive once (it replays its store and rebuilds its vector file), and
    snapshot what the replay added, so the final open does not redo it. Its files passed their
    checksums, but an archive may come from anywhere: its graphs are checked before hnswlib
    reads them (a bad one is rebuilt from the store and saved), and a store that does not open
    as a collection is an invalid archive (422), not a server error. Storage errors stay what
    they are."""
    try:
        with storage_errors():
            staged = open_collection(path, replace(options, foreign_files=True))
            try:
                staged.snapshot()
            finally:
                staged.close()
    except (VecnestError, OSError):
        raise
    except Exception as exc:
        raise Invalid(
            f"not a valid vecnest backup archive: its collection does not open: {type(exc).__name__}: {exc}",
            code="invalid_archive",
        ) from None


def describe_open_error(exc: BaseException, path: str | None = None) -> str:
    """A one-line reason for an operator, naming the fix for the usual causes."""
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if path is not None and _read_only(path):
        return f"the data directory is on a read-only filesystem ({type(exc).__name__}: {exc})"
    emfile = (isinstance(cause, OSError) and cause.errno == errno.EMFILE) or "too many open files" in str(exc).lower()
    if emfile or ("unable to open database file" in str(exc) and near_fd_limit()):
        return (
            f"too many open files: raise the process limit (ulimit -n, now {fd_limit()}); each collection "
            f"keeps about {FDS_PER_COLLECTION} file descriptors open, more while busy"
        )
    if isinstance(cause, OSError) and cause.errno in (errno.EROFS, errno.EACCES):
        return f"the data directory cannot be written ({cause.strerror}): {exc}"
    return f"{type(exc).__name__}: {exc}"


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _lock_directory(data_dir: str) -> int:
    """Hold an exclusive lock on `<data_dir>/.lock` for this process's lifetime. On a read-only
    directory the lock is taken on the directory itself (flock needs no write access)."""
    try:
        fd = os.open(os.path.join(data_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES):
            raise
        fd = os.open(data_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(f"data directory {data_dir} is in use by another process") from None
    return fd
