"""Creating and opening a collection's state on disk.

Opening loads the newest sound snapshot and replays the store's later writes into it (and into
the vector file), then re-reads from the store every vector row that fails its checksum. A
missing, corrupt or mismatched snapshot is rebuilt from the store: the graphs are a cache.
"""

import logging
import os

from index.hnsw import CorruptSnapshot
from index.indexset import IndexSet
from index.manifest import Manifest, read_manifest, write_manifest
from index.rotation import load_rotation
from index.store import Store, storage_errors
from index.vectorfile import VectorFile

from .layout import MANIFEST_FILE, ROTATION_DIR, SNAPSHOT_DIR, STORE_FILE, VECTOR_FILE, make_folders, remove_stale_files
from .state import CollectionOptions, CollectionState, views_of

log = logging.getLogger(__name__)


def make_store(path: str, manifest: Manifest, options: CollectionOptions) -> Store:
    token_dim = manifest.multivector.token_dim if manifest.multivector else None
    store_path = os.path.join(path, STORE_FILE)
    return Store(store_path, manifest.dim, options.synchronous, token_dim, options.sqlite_mmap_bytes)


def create_state(path: str, manifest: Manifest, options: CollectionOptions) -> CollectionState:
    """A new, empty collection in the (existing, empty) directory `path`; `manifest` is final."""
    make_folders(path)
    store = make_store(path, manifest, options)
    vectors = VectorFile(os.path.join(path, VECTOR_FILE), manifest.dim)
    write_manifest(os.path.join(path, MANIFEST_FILE), manifest)
    return CollectionState(
        path, manifest, store, vectors, IndexSet.empty(views_of(manifest, None), manifest.hnsw), 0, options
    )


def open_state(path: str, options: CollectionOptions) -> CollectionState:
    """Open a collection: load its snapshot (if sound), replay newer store writes, repair rows."""
    manifest = read_manifest(os.path.join(path, MANIFEST_FILE))
    make_folders(path)
    store = make_store(path, manifest, options)
    try:
        with storage_errors():
            vectors = VectorFile(os.path.join(path, VECTOR_FILE), manifest.dim, capacity=store.label_ceiling(0))
        if vectors.fresh:  # missing: rebuild the mirror from the store
            for labels, X in store.iter_vectors():
                vectors.add(labels, X)
        vectors.set_live(store.live_labels())
        rotation = load_rotation(os.path.join(path, ROTATION_DIR), manifest)
        if rotation is None and manifest.rotation is not None:
            manifest = manifest.replace(rotation=None)  # unusable: prefixes fall back to plain
        indexes, applied = _load_snapshot(path, manifest, rotation, options.foreign_files)
        if indexes is None:
            indexes, applied = IndexSet.empty(views_of(manifest, rotation), manifest.hnsw, store.count() + 16), 0
            # the graphs are rebuilt: the snapshot the manifest named (unusable) is not theirs, so
            # the next snapshot saves them even if no write comes first (else each start rebuilds)
            manifest = manifest.replace(snapshot=None)
        state = CollectionState(path, manifest, store, vectors, indexes, applied, options)
        replayed = state.replay(indexes, applied, vectors)
        repaired = _repair_vectors(state)
    except BaseException:
        store.close()
        raise
    state.applied_seq = max(applied, store.last_seq())
    remove_stale_files(path, state.manifest)
    log.info(
        "opened collection %s: %d documents, dims %s, replayed %d rows after seq %d%s",
        manifest.name,
        len(indexes),
        indexes.dims,
        replayed,
        applied,
        f", re-read {repaired} corrupt vector rows from the store" if repaired else "",
    )
    return state


def _load_snapshot(path: str, manifest: Manifest, rotation, foreign: bool) -> tuple[IndexSet | None, int]:
    snapshot = manifest.snapshot
    if snapshot is None:
        return None, 0
    views = views_of(manifest, rotation)
    rotation_sha = manifest.rotation.sha256 if manifest.rotation else None
    if snapshot.rotation_sha256 != rotation_sha and any(d < manifest.dim for d in views):
        log.warning("collection %s: snapshot was built with another rotation; rebuilding", manifest.name)
        return None, 0
    try:
        indexes = IndexSet.load(os.path.join(path, SNAPSHOT_DIR), snapshot.files, views, check=foreign)
    except CorruptSnapshot as exc:
        log.warning("collection %s: %s; rebuilding the indexes from the store", manifest.name, exc)
        return None, 0
    if any(i.params != manifest.hnsw for i in indexes.indexes.values()):
        log.warning("collection %s: snapshot parameters differ from the manifest; rebuilding", manifest.name)
        return None, 0
    return indexes, snapshot.applied_seq


def _repair_vectors(state: CollectionState) -> int:
    """Re-read from the store every live row of the vector file that fails its checksum (a
    flipped bit on disk, a crash between a row and its checksum). Returns how many."""
    bad = state.vectors.verify()
    if len(bad):
        log.warning(
            "collection %s: %d rows of %s fail their checksum; re-reading them from the store",
            state.name,
            len(bad),
            VECTOR_FILE,
        )
        for labels, X in state.store.iter_vectors(bad.tolist()):
            state.vectors.add(labels, X)
    return len(bad)
