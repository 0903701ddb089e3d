"""The catalog of a shared engine (Qdrant, Milvus): collections, their generations and their
upgrade records, all kept in the engine, so every vecnest replica reads the same facts and keeps
no local state. The engine-specific parts are small (`SharedEngine`: a key → JSON table and
physical collections); the rules live here once, for every engine.

What is stored, as entries of the engine's meta table (each a small JSON object):
- `collection` entries, one per collection: the manifest of the generation that serves, which
  generation that is (`"."` until an encoder upgrade cuts over, then `gen-<id>`), and the
  collection's incarnation (a random id drawn at create: a collection dropped and created
  again under its name by another process is a different one, never a copy to refresh);
- `generation` entries: the manifest of every other generation (an upgrade's shadow, or the
  retired one kept for rollback);
- `upgrade` entries: upgrade records (index.encoder_upgrade), and `map` entries: blobs in
  chunks (engines cap the size of one value): an upgrade's fitted map, a PCA rotation matrix;
- `leftover` entries: physical collections a create or drop that dies half-way would leave,
  noted first and removed by the next create of the name, or by the maintenance process's
  sweep (`sweep_leftovers`), whichever comes first.

A collection's generation `g` is stored in the engine's physical collection
`engine.physical(name, g, incarnation)`. Cut-over is one write: the `collection` entry names
the new generation. Replicas re-read an entry once the copy they hold is `refresh_s` old, so
what one process changes (settings, a drop, a cut-over) reaches every other within that. A
collection object saves its settings only while the entry is still of its incarnation: a
replica that has not yet seen a drop (or a drop and a create) never writes a dropped
collection back, nor its old manifest over the new collection's.
"""

import base64
import hashlib
import io
import json
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

import numpy as np

from index.backend import CollectionBackend
from index.catalog import NAME_PATTERN, check_name
from index.errors import Conflict, Invalid, NotFound, NotReady
from index.files import npy_bytes
from index.manifest import Manifest

ACTIVE = "."  # the generation a collection is created with
_CHUNK = 45_000  # base64 characters per map entry: under Milvus's 64 KiB JSON values
LEFTOVER_AGE_S = 600.0  # a create still running after this long (or a clock this far off) is not waited for


class MetaTable(Protocol):
    """The engine's small key → JSON object table. Values carry `kind` and `collection`."""

    def get(self, key: str) -> dict[str, Any] | None: ...
    def put(self, key: str, value: dict[str, Any]) -> None: ...
    def delete(self, keys: list[str]) -> None: ...
    def find(self, kind: str, collection: str | None = None) -> list[dict[str, Any]]: ...


class SharedEngine(Protocol):
    """What one engine gives the shared catalog."""

    name: str  # "Qdrant", "Milvus": in messages

    @property
    def meta(self) -> MetaTable: ...

    def errors(self, what: str) -> Any: ...  # a context manager: the engine's failures as NotReady
    def validate(self, manifest: Manifest) -> Manifest: ...
    def physical(self, name: str, generation: str, incarnation: str) -> str: ...  # "" before incarnations
    def exists(self, physical: str) -> bool: ...
    def create(self, physical: str, manifest: Manifest) -> None: ...
    def drop(self, physical: str) -> None: ...
    def open(
        self, physical: str, manifest: Manifest, store: "EntryStore", rotation: np.ndarray | None
    ) -> CollectionBackend: ...
    def close(self) -> None: ...


def _key(kind: str, name: str, part: str = "") -> str:
    """The meta table's key of an entry of collection `name`. A name no collection can have
    (index.catalog.NAME_PATTERN) is not found, here, before it reaches the engine: names come
    from request paths, and an engine may build a query expression from the key (pymilvus's
    `get(ids=...)` quotes nothing: a quote in it was Milvus's parse error, answered as a 503)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise NotFound(f"collection {name!r} not found", code="collection_not_found")
    return f"{kind}:{name}" + (f":{part}" if part else "")


def put_blob(meta: MetaTable, name: str, label: str, data: bytes) -> list[str]:
    """Store `data` as `map` entries of collection `name` (chunked: engines cap one value's
    size); returns their keys, the first the one to read it back with."""
    key = _key("map", name, label)
    text = base64.b64encode(data).decode("ascii")
    chunks = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]
    keys = [key if i == 0 else f"{key}#{i}" for i in range(len(chunks))]
    for i, (part, chunk) in enumerate(zip(keys, chunks)):
        meta.put(part, {"kind": "map", "collection": name, "part": i, "of": len(chunks), "data": chunk})
    return keys


def get_blob(meta: MetaTable, key: str) -> bytes:
    first = meta.get(key)
    if first is None:
        raise Invalid(f"{key} is missing from the catalog")
    parts = [first] + [meta.get(f"{key}#{i}") for i in range(1, first["of"])]
    if any(p is None for p in parts):
        raise Invalid(f"part of {key} is missing from the catalog")
    return base64.b64decode("".join(p["data"] for p in parts if p is not None))


class EntryStore:
    """What one collection object writes back to the catalog: its changed manifest (to the
    `collection` entry while it serves, else to its `generation` entry; a cut-over re-binds)
    and blobs (a rotation matrix)."""

    def __init__(self, catalog: "SharedCatalog", name: str, generation: str, serving: bool, incarnation: str):
        self._catalog = catalog
        self.name = name
        self.generation = generation
        self.serving = serving
        self.incarnation = incarnation  # of the collection entry this object was opened from

    def save(self, manifest: Manifest) -> None:
        """Write `manifest` to this generation's entry, unless the collection was dropped (or
        dropped and created again) meanwhile: then `collection_not_found`, and nothing kept."""
        if self.serving:
            self._catalog._rewrite_collection(self.name, self.generation, manifest, self.incarnation)
        else:
            self._catalog._entry_of(self.name, self.incarnation)
            self._catalog._put_generation(self.name, self.generation, manifest)

    def put_blob(self, label: str, data: bytes) -> str:
        keys: list[str] = []

        def put() -> list[str]:
            keys.extend(put_blob(self._catalog.engine.meta, self.name, f"{self.generation}:{label}", data))
            return keys

        self._catalog._write_for(self.name, self.incarnation, put)
        return keys[0]

    def get_blob(self, key: str) -> bytes:
        return get_blob(self._catalog.engine.meta, key)


class SharedCatalog:
    """`CatalogBackend` over a `SharedEngine`, with `generations(name)` and `swap` for upgrades."""

    def __init__(self, engine: SharedEngine, refresh_s: float = 5.0):
        """`refresh_s`: how old a served manifest may get before it is read again."""
        self.engine = engine
        self._refresh_s = refresh_s
        self._failed: dict[str, str] = {}
        # name → (generation, collection object, read at): one object per collection and process,
        # as the embedded catalog keeps (the service attaches its encoder and recall state to it).
        self._open: dict[str, tuple[str, CollectionBackend, float]] = {}
        # Each collection object's store: its generation, and where its changes go.
        self._bound: weakref.WeakKeyDictionary[CollectionBackend, EntryStore] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    # -- collections ----------------------------------------------------------------------------
    def create(self, manifest: Manifest) -> CollectionBackend:
        check_name(manifest.name)
        manifest = self.engine.validate(manifest)
        name = manifest.name
        meta = self.engine.meta

        def exists() -> Conflict:
            return Conflict(f"collection {name!r} already exists", code="collection_exists")

        with self.engine.errors(f"create {name!r}"):
            if meta.get(_key("collection", name)) is not None:
                raise exists()
            self._sweep_leftovers(name)
            # Each incarnation has physical collections of its own, so a create never touches
            # the data of another create, or of a drop, running at the same time elsewhere.
            incarnation = uuid.uuid4().hex
            physical = self.engine.physical(name, ACTIVE, incarnation)
            leftover = self._leave(name, [physical], incarnation, "create")  # swept if this create dies half-way
            self.engine.create(physical, manifest)
            # Two creates of one name at once: the one that finds the other's entry (before
            # writing its own, or after: the entry written last is the collection) drops what it
            # made and answers as if it had come second.
            if meta.get(_key("collection", name)) is None:
                self._put_collection(name, ACTIVE, manifest, incarnation)  # a collection exists once its entry does
            if (meta.get(_key("collection", name)) or {}).get("incarnation") != incarnation:
                self.engine.drop(physical)
                meta.delete([leftover])
                raise exists()
            meta.delete([leftover])
        return self._serve(name, ACTIVE, manifest, incarnation)

    def get(self, name: str, fresh: bool = False) -> CollectionBackend:
        """The collection object that serves `name`; its entry is read again once the copy held
        is `refresh_s` old, or now when `fresh` (a request that failed on the copy it held)."""
        if name in self._failed:
            raise NotReady(
                f"collection {name!r} could not be opened: {self._failed[name]}; drop it (DELETE) or repair it",
                code="collection_unavailable",
            )
        with self._lock:
            held = self._open.get(name)
        if held is not None and time.monotonic() - held[2] < self._refresh_s and not fresh:
            return held[1]
        with self.engine.errors(f"open {name!r}"):
            entry = self.engine.meta.get(_key("collection", name))
        if entry is None:
            with self._lock:
                self._open.pop(name, None)
            raise NotFound(f"collection {name!r} not found", code="collection_not_found")
        generation, manifest = entry.get("generation", ACTIVE), self._manifest(name, entry)
        incarnation = entry.get("incarnation", "")
        if held is not None and self._bound[held[1]].incarnation != incarnation:
            held = None  # dropped and created again by another process: another collection
        if held is not None and held[0] == generation and held[1].manifest.rotation == manifest.rotation:
            reload = getattr(held[1], "reload", None)
            if reload is not None:
                reload(manifest)  # settings another replica changed
            with self._lock:
                self._open[name] = (generation, held[1], time.monotonic())
            return held[1]
        # New here, re-created, or another process cut over or fitted a rotation: a new object.
        return self._serve(name, generation, manifest, incarnation, fresh=held is not None)

    def drop(self, name: str) -> None:
        check_name(name)  # as the embedded catalog: a name that breaks the rule is a 422 here
        meta = self.engine.meta
        with self.engine.errors(f"drop {name!r}"):
            entry = meta.get(_key("collection", name))
            if entry is None:
                raise NotFound(f"collection {name!r} not found", code="collection_not_found")
            incarnation = entry.get("incarnation", "")
            generations = {entry.get("generation", ACTIVE)} | {e["generation"] for e in meta.find("generation", name)}
            physicals = [self.engine.physical(name, g, incarnation) for g in sorted(generations)]
            # The entry goes (after a note of what to remove) before the data: a drop that fails
            # half-way leaves data no one serves, which the next create of that name clears,
            # never an entry without data.
            leftover = self._leave(name, physicals, incarnation, "drop")
            meta.delete([_key("collection", name)])
            for physical in physicals:
                self._drop_physical(physical)
            meta.delete([e["key"] for kind in ("generation", "upgrade", "map") for e in meta.find(kind, name)])
            meta.delete([leftover])
        with self._lock:
            self._open.pop(name, None)
        self._failed.pop(name, None)

    def names(self) -> list[str]:
        with self.engine.errors("list collections"):
            found = [e["collection"] for e in self.engine.meta.find("collection")]
        return sorted(n for n in found if n not in self._failed)

    def failed(self) -> dict[str, str]:
        """Collections listed but not servable (name → reason): a manifest this version cannot
        read, or one marked failed since."""
        return dict(self._failed)

    def mark_failed(self, name: str, reason: str) -> None:
        self._failed[name] = reason

    def backup_dir(self, name: str) -> str:
        raise self._no_archives()

    def restore(self, archive: str | BinaryIO, name: str | None = None, replace: bool = False) -> tuple[Any, Any]:
        raise self._no_archives()

    def _no_archives(self) -> Invalid:
        return Invalid(
            f"backup archives are not available on the {self.engine.name} backend: use its own snapshots",
            code="backend_unsupported",
        )

    def close(self) -> None:
        self.engine.close()

    # -- generations (encoder upgrades) ------------------------------------------------------
    def generations(self, name: str) -> "SharedGenerations":
        serving = self.get(name)  # 404 for an unknown collection
        return SharedGenerations(self, name, self._bound[serving].incarnation)

    def swap(self, name: str, collection: CollectionBackend) -> CollectionBackend:
        """Make `collection` (a generation of `name`, see `SharedGenerations.open`) the one that
        serves; returns the one it replaces. One write switches every replica (within refresh_s)."""
        generation = self.generation_of(collection)
        with self._lock:
            held = self._open.get(name)
        if held is None:
            raise NotFound(f"collection {name!r} not found", code="collection_not_found")
        previous_generation, previous, _ = held
        incarnation = self._bound[previous].incarnation
        if self._bound[collection].incarnation != incarnation:  # an upgrade of a collection dropped since
            raise NotFound(f"collection {name!r} was dropped and created again meanwhile", code="collection_not_found")
        self._entry_of(name, incarnation)
        meta = self.engine.meta
        with self.engine.errors(f"cut over {name!r}"):
            # The retired generation stays reopenable (for a rollback) before the switch.
            self._put_generation(name, previous_generation, previous.manifest)
            self._rewrite_collection(name, generation, collection.manifest, incarnation)
            meta.delete([_key("generation", name, generation)])
        self._bound[collection].serving = True
        self._bound[previous].serving = False
        with self._lock:
            self._open[name] = (generation, collection, time.monotonic())
        return previous

    # -- entries --------------------------------------------------------------------------------
    def _manifest(self, name: str, entry: dict[str, Any]) -> Manifest:
        try:
            return Manifest.from_json(json.loads(entry["manifest"]))
        except (Invalid, KeyError, TypeError, ValueError) as exc:  # written by another version, or damaged
            self._failed[name] = f"its manifest cannot be read: {exc}"
            raise NotReady(
                f"collection {name!r} could not be opened: {self._failed[name]}", code="collection_unavailable"
            ) from None

    def _leave(self, name: str, physicals: list[str], incarnation: str, by: str) -> str:
        """Note physical collections (of `incarnation`) to remove should this create or drop die
        half-way; returns the note's key. A drop's note also tells a concurrent settings write
        that the entry it wrote names data on its way out (`_rewrite_collection`)."""
        key = _key("leftover", name, uuid.uuid4().hex)
        value = {"physicals": physicals, "incarnation": incarnation, "by": by, "at": time.time()}
        self.engine.meta.put(key, {"kind": "leftover", "collection": name, **value})
        return key

    def sweep_leftovers(self) -> int:
        """Remove what creates and drops of any collection that died half-way left, once their
        notes are LEFTOVER_AGE_S old (the maintenance process runs this now and then, so the
        engine gets the space back without a create of the same name); returns how many notes
        it resolved."""
        with self.engine.errors("sweep leftovers"):
            return self._sweep(self.engine.meta.find("leftover"))

    def _sweep_leftovers(self, name: str) -> None:
        self._sweep(self.engine.meta.find("leftover", name))

    def _sweep(self, notes: list[dict[str, Any]]) -> int:
        """Resolve the notes at least LEFTOVER_AGE_S old (until then a create or drop may still
        be running in another process): the physical collections of an incarnation no entry
        serves are dropped. Where the entry is of the note's incarnation, the data serves: a
        create's note is only removed (the create got as far as its entry), and a drop's note
        stays (the drop died before its entry went; a drop again ends it)."""
        resolved = 0
        for note in notes:
            if time.time() - float(note.get("at", 0.0)) < LEFTOVER_AGE_S:
                continue
            name = note.get("collection")
            if not isinstance(name, str) or not NAME_PATTERN.match(name):  # not a note vecnest wrote
                continue
            entry = self.engine.meta.get(_key("collection", name))
            serving = entry is not None and entry.get("incarnation", "") == note.get("incarnation")
            if serving and note.get("by") == "drop":
                continue
            if not serving:
                for physical in note.get("physicals", []):
                    self._drop_physical(physical)
            self.engine.meta.delete([note["key"]])
            resolved += 1
        return resolved

    def _drop_physical(self, physical: str) -> None:
        """Drop `physical` if it exists; a failure is not one when the collection is gone anyway,
        now or within a second (two drops of one collection at once: milvus-lite fails the one
        that loses the race half-way, while the other is still removing the files)."""
        try:
            if self.engine.exists(physical):
                self.engine.drop(physical)
        except Exception:
            for _ in range(10):
                if not self.engine.exists(physical):
                    return
                time.sleep(0.1)
            raise

    def _rewrite_collection(self, name: str, generation: str, manifest: Manifest, incarnation: str) -> None:
        """Write the collection entry of a collection that exists (a setting, a cut-over) only
        while it is still of `incarnation`. The engines have no compare-and-set, so a drop may
        land between the check and the write; the write is then taken back: a drop notes what it
        removes before it deletes the entry, and once the write is done either that note or the
        missing data says the drop ran."""
        self._entry_of(name, incarnation)
        self._put_collection(name, generation, manifest, incarnation)
        meta = self.engine.meta
        with self.engine.errors(f"update {name!r}"):
            gone = not self.engine.exists(self.engine.physical(name, generation, incarnation))
            if gone or self._drop_noted(name, incarnation):
                if (meta.get(_key("collection", name)) or {}).get("incarnation") == incarnation:
                    meta.delete([_key("collection", name)])
                raise NotFound(f"collection {name!r} was dropped meanwhile", code="collection_not_found")

    def _write_for(self, name: str, incarnation: str, write: Callable[[], list[str]]) -> None:
        """Write entries of the collection `name` of `incarnation` (an upgrade record, a map, a
        generation: `write()` returns their keys), only while it is that collection: a process
        still running an upgrade of a collection another one dropped (and perhaps created again)
        meanwhile must not write into the new one's. As `_rewrite_collection`, a drop that lands
        between the check and the write has the write taken back."""
        self._entry_of(name, incarnation)
        with self.engine.errors(f"update {name!r}"):
            keys = write()
        meta = self.engine.meta
        with self.engine.errors(f"update {name!r}"):
            entry = meta.get(_key("collection", name)) or {}
            if entry.get("incarnation") != incarnation or self._drop_noted(name, incarnation):
                meta.delete(keys)
                raise NotFound(f"collection {name!r} was dropped meanwhile", code="collection_not_found")

    def _drop_noted(self, name: str, incarnation: str) -> bool:
        """A drop of `name`'s `incarnation` has begun (its note is written before the entry goes)."""
        notes = self.engine.meta.find("leftover", name)
        return any(n.get("by") == "drop" and n.get("incarnation") == incarnation for n in notes)

    def _entry_of(self, name: str, incarnation: str) -> dict[str, Any]:
        """The collection entry of `name` if it is still of `incarnation`, else `collection_not_found`."""
        with self.engine.errors(f"read {name!r}"):
            entry = self.engine.meta.get(_key("collection", name))
        if entry is None or entry.get("incarnation", "") != incarnation:
            again = "" if entry is None else " and created again"
            raise NotFound(f"collection {name!r} was dropped{again} meanwhile", code="collection_not_found")
        return entry

    def _put_collection(self, name: str, generation: str, manifest: Manifest, incarnation: str) -> None:
        value = {"kind": "collection", "collection": name, "generation": generation, "incarnation": incarnation}
        self.engine.meta.put(_key("collection", name), {**value, "manifest": json.dumps(manifest.to_json())})

    def _put_generation(self, name: str, generation: str, manifest: Manifest) -> None:
        value = {"kind": "generation", "collection": name, "generation": generation}
        self.engine.meta.put(
            _key("generation", name, generation), {**value, "manifest": json.dumps(manifest.to_json())}
        )

    def _serve(
        self, name: str, generation: str, manifest: Manifest, incarnation: str, fresh: bool = False
    ) -> CollectionBackend:
        with self._lock:
            held = self._open.get(name)
            if (
                held is not None
                and not fresh
                and (held[0], self._bound[held[1]].incarnation) == (generation, incarnation)
            ):
                self._open[name] = (generation, held[1], time.monotonic())
                return held[1]
        collection = self._opened(name, generation, manifest, serving=True, incarnation=incarnation)
        with self._lock:
            self._open[name] = (generation, collection, time.monotonic())
        return collection

    def _opened(
        self, name: str, generation: str, manifest: Manifest, serving: bool, incarnation: str
    ) -> CollectionBackend:
        """A collection object for one generation, with its rotation matrix (when fitted)."""
        store = EntryStore(self, name, generation, serving, incarnation)
        rotation = None
        if manifest.rotation is not None:
            with self.engine.errors(f"open {name!r}"):
                data = store.get_blob(manifest.rotation.file)
            if hashlib.sha256(data).hexdigest() != manifest.rotation.sha256:
                raise NotReady(
                    f"collection {name!r}: its rotation does not match its checksum", code="collection_unavailable"
                )
            rotation = np.load(io.BytesIO(data))
        collection = self.engine.open(self.engine.physical(name, generation, incarnation), manifest, store, rotation)
        self._bound[collection] = store
        return collection

    def generation_of(self, collection: CollectionBackend) -> str:
        bound = self._bound.get(collection)
        if bound is None:
            raise Invalid(f"{collection.name!r} is not a collection of this catalog")
        return bound.generation


class SharedGenerations:
    """`Generations` of one collection in a shared engine (see index.encoder_upgrade)."""

    def __init__(self, catalog: SharedCatalog, name: str, incarnation: str):
        self._catalog = catalog
        self._engine = catalog.engine
        self.name = name
        self._incarnation = incarnation  # generations opened here save only while it is the collection's

    def __repr__(self) -> str:
        return f"SharedGenerations({self.name!r})"

    def generation_of(self, collection: CollectionBackend) -> str:
        return self._catalog.generation_of(collection)

    def active(self) -> str:
        with self._engine.errors(f"read {self.name!r}"):
            entry = self._engine.meta.get(_key("collection", self.name))
        if entry is None:
            raise NotFound(f"collection {self.name!r} not found", code="collection_not_found")
        return entry.get("generation", ACTIVE)

    def create(self, generation: str, manifest: Manifest) -> CollectionBackend:
        """The generation's physical collection (emptied if a crash left one) and its entry."""
        manifest = self._engine.validate(manifest)
        physical = self._engine.physical(self.name, generation, self._incarnation)
        with self._engine.errors(f"create a generation of {self.name!r}"):
            entry = self._engine.meta.get(_key("generation", self.name, generation))
            if entry is not None and self._engine.exists(physical):
                return self.open(generation)
            if self._engine.exists(physical):
                self._engine.drop(physical)
            self._engine.create(physical, manifest)

        def put() -> list[str]:
            self._catalog._put_generation(self.name, generation, manifest)
            return [_key("generation", self.name, generation)]

        try:
            self._catalog._write_for(self.name, self._incarnation, put)
        except NotFound:  # the collection was dropped meanwhile: its new generation goes too
            self._catalog._drop_physical(physical)
            raise
        return self._catalog._opened(self.name, generation, manifest, serving=False, incarnation=self._incarnation)

    def open(self, generation: str) -> CollectionBackend:
        with self._engine.errors(f"open a generation of {self.name!r}"):
            entry = self._engine.meta.get(_key("generation", self.name, generation))
        if entry is None:
            raise NotFound(
                f"generation {generation} of collection {self.name!r} not found", code="generation_not_found"
            )
        manifest = self._catalog._manifest(self.name, entry)
        return self._catalog._opened(self.name, generation, manifest, serving=False, incarnation=self._incarnation)

    def remove(self, generation: str) -> None:
        """Delete a generation that does not serve: its physical collection, then its entry."""
        if generation == self.active():
            raise Conflict(f"generation {generation} of {self.name!r} serves: it cannot be removed")
        with self._engine.errors(f"remove a generation of {self.name!r}"):
            physical = self._engine.physical(self.name, generation, self._incarnation)
            if self._engine.exists(physical):
                self._engine.drop(physical)
            self._engine.meta.delete([_key("generation", self.name, generation)])

    # -- records and maps -----------------------------------------------------------------------
    def records(self) -> list[Any]:
        """Every upgrade record of the collection, oldest first."""
        from index.encoder_upgrade import UpgradeRecord

        with self._engine.errors(f"read the upgrades of {self.name!r}"):
            found = self._engine.meta.find("upgrade", self.name)
        try:
            records = [UpgradeRecord(**json.loads(e["record"])) for e in found]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"an upgrade record of {self.name!r} is unreadable ({type(exc).__name__}: {exc})") from exc
        return sorted(records, key=lambda r: r.created_at)

    def save_record(self, record: Any) -> None:
        value = {"kind": "upgrade", "collection": self.name, "record": json.dumps(record.to_json())}
        key = _key("upgrade", self.name, record.id)

        def put() -> list[str]:
            self._engine.meta.put(key, value)
            return [key]

        self._catalog._write_for(self.name, self._incarnation, put)

    def save_map(self, record_id: str, W: np.ndarray) -> str:
        """Store the map; returns the sha256 of its .npy bytes."""
        data = npy_bytes(np.asarray(W, np.float32))
        self._catalog._write_for(
            self.name, self._incarnation, lambda: put_blob(self._engine.meta, self.name, f"map-{record_id}", data)
        )
        return hashlib.sha256(data).hexdigest()

    def load_map(self, record: Any) -> np.ndarray:
        with self._engine.errors(f"read a map of {self.name!r}"):
            data = get_blob(self._engine.meta, _key("map", self.name, f"map-{record.id}"))
        if hashlib.sha256(data).hexdigest() != record.map_sha256:
            raise Invalid(f"upgrade {record.id}: its stored map does not match its checksum")
        return np.load(io.BytesIO(data))
