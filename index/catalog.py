"""`Catalog`: the collections of one data directory.

Layout: `<data_dir>/collections/<name>/{manifest.json, store.sqlite, snapshots/}`. A collection
is created in a hidden staging directory and renamed into place, so a crash never leaves a
half-made one; a drop renames it away before deleting. An exclusive lock file keeps a second
process from opening the same data directory.

A collection's home may hold several generations (an encoder upgrade builds one in
`gen-<id>/`); `current.json` names the one that serves, "." (the home itself) when absent.
Cutting over is rewriting that one file atomically.
"""

import fcntl
import json
import logging
import os
import re
import shutil
import threading
import uuid
from typing import Callable

from index.collection import MANIFEST_FILE, Collection, CollectionOptions
from index.errors import Conflict, Invalid, NotFound
from index.files import fsync_path
from index.manifest import Manifest
from index.multivector import collection_class, open_collection

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CURRENT_FILE = "current.json"


def active_generation(home: str) -> str:
    """The generation directory (relative to the collection's home) that serves: "." or "gen-<id>"."""
    try:
        with open(os.path.join(home, CURRENT_FILE)) as f:
            return json.load(f)["generation"]
    except FileNotFoundError:
        return "."


def set_active_generation(home: str, generation: str) -> None:
    """Point the collection at `generation`, atomically (write, fsync, rename, fsync the dir)."""
    tmp = os.path.join(home, CURRENT_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"generation": generation}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(home, CURRENT_FILE))
    fsync_path(home)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise Invalid(f"collection name {name!r} must match {NAME_PATTERN.pattern}", code="invalid_name")
    return name


class Catalog:
    def __init__(self, data_dir: str, options: CollectionOptions = CollectionOptions()):
        self.data_dir = os.path.abspath(data_dir)
        self.options = options
        self._root = os.path.join(self.data_dir, "collections")
        os.makedirs(self._root, exist_ok=True)
        self._lock_file = open(os.path.join(self.data_dir, ".lock"), "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise Conflict(f"data directory {self.data_dir} is in use by another process") from None
        self._collections: dict[str, Collection] = {}
        self._failed: dict[str, str] = {}  # name → why it could not be opened
        self._lock = threading.Lock()

    def open_all(self, on_open: Callable[[Collection], None] | None = None) -> None:
        """Open every collection on disk (loading snapshots and replaying the store)."""
        for name in sorted(os.listdir(self._root)):
            path = os.path.join(self._root, name)
            if name.startswith("."):  # staging or trash left by a crash
                shutil.rmtree(path, ignore_errors=True)
                continue
            try:
                active = os.path.normpath(os.path.join(path, active_generation(path)))
            except (OSError, ValueError, KeyError) as exc:
                self._failed[name] = f"unreadable {CURRENT_FILE}: {exc}"
                continue
            if not os.path.exists(os.path.join(active, MANIFEST_FILE)):
                continue
            try:
                collection = open_collection(active, self.options)
                if on_open is not None:
                    on_open(collection)
            except Exception as exc:  # one broken collection must not keep the others down
                log.exception("cannot open collection %s", name)
                self._failed[name] = f"{type(exc).__name__}: {exc}"
                continue
            with self._lock:
                self._collections[name] = collection

    def close(self) -> None:
        with self._lock:
            collections, self._collections = list(self._collections.values()), {}
        for collection in collections:
            collection.close()
        self._lock_file.close()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    def get(self, name: str) -> Collection:
        with self._lock:
            collection = self._collections.get(name)
        if collection is None:
            if name in self._failed:
                raise NotFound(f"collection {name!r} could not be opened: {self._failed[name]}", code="collection_unavailable")
            raise NotFound(f"collection {name!r} not found", code="collection_not_found")
        return collection

    def home(self, name: str) -> str:
        """The directory holding every generation of collection `name`."""
        return os.path.join(self._root, check_name(name))

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

    def failed(self) -> dict[str, str]:
        return dict(self._failed)

    def create(self, manifest: Manifest) -> Collection:
        check_name(manifest.name)
        with self._lock:
            if manifest.name in self._collections or manifest.name in self._failed:
                raise Conflict(f"collection {manifest.name!r} already exists", code="collection_exists")
            staging = os.path.join(self._root, f".new-{manifest.name}-{uuid.uuid4().hex[:8]}")
            os.makedirs(staging)
            try:
                collection_class(manifest).create(staging, manifest, self.options).close()
                os.rename(staging, os.path.join(self._root, manifest.name))
                fsync_path(self._root)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            collection = open_collection(os.path.join(self._root, manifest.name), self.options)
            self._collections[manifest.name] = collection
        return collection

    def drop(self, name: str) -> None:
        with self._lock:
            collection = self._collections.pop(name, None)
            if collection is None and self._failed.pop(name, None) is None:
                raise NotFound(f"collection {name!r} not found", code="collection_not_found")
            if collection is not None:
                collection.close()
            trash = os.path.join(self._root, f".trash-{name}-{uuid.uuid4().hex[:8]}")
            os.rename(os.path.join(self._root, name), trash)
        shutil.rmtree(trash, ignore_errors=True)
