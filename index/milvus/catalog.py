"""The collections of a deployment on Milvus: each one's manifest lives in Milvus itself.

Manifests are rows of one Milvus collection, `vecnest_manifests` (the manifest JSON; Milvus asks
every collection for a vector field, so it carries a 2-d placeholder), so every vecnest replica
reads the same facts and keeps no local state. A collection's documents live in
`vecnest_c_<name in hex>` (Milvus names allow letters, digits and underscores only).
"""

import threading
import time
from typing import Any

from index.catalog import check_name
from index.errors import Conflict, Invalid, NotFound, NotReady
from index.manifest import Manifest

from .collection import MilvusCollection, backend_errors, schema_of, unsupported

MANIFESTS = "vecnest_manifests"


def physical_name(name: str) -> str:
    return "vecnest_c_" + name.encode("utf-8").hex()


class MilvusCatalog:
    """`client`: a `pymilvus.MilvusClient` (a Milvus server or cluster, or milvus-lite's server)."""

    def __init__(self, client: Any, refresh_s: float = 5.0):
        """`refresh_s`: how old a served manifest may get before it is read again, so that what
        another replica changes (ef per dim, recall policy, limits, a drop) reaches this one."""
        self._client = client
        self._refresh_s = refresh_s
        self._read_at: dict[str, float] = {}
        self._failed: dict[str, str] = {}
        self._open_collections: dict[str, MilvusCollection] = {}  # one object per collection and process
        self._lock = threading.Lock()
        with backend_errors("open the catalog"):
            if not self._client.has_collection(MANIFESTS):
                self._create_manifests()

    def _create_manifests(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field("manifest", DataType.JSON)
        schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
        indexes = MilvusClient.prepare_index_params()
        indexes.add_index("placeholder", index_type="FLAT", metric_type="L2")
        self._client.create_collection(MANIFESTS, schema=schema, index_params=indexes, consistency_level="Strong")

    def create(self, manifest: Manifest) -> MilvusCollection:
        check_name(manifest.name)
        manifest = MilvusCollection.validate(manifest)
        with backend_errors(f"create {manifest.name!r}"):
            if self._read(manifest.name) is not None:
                raise Conflict(f"collection {manifest.name!r} already exists", code="collection_exists")
            table = physical_name(manifest.name)
            if self._client.has_collection(table):  # left by a create that failed half-way
                self._client.drop_collection(table)
            schema, indexes = schema_of(manifest)
            self._client.create_collection(table, schema=schema, index_params=indexes, consistency_level="Strong")
            self._write(manifest)  # last: a collection exists once its manifest does
        return self._open(manifest)

    def get(self, name: str) -> MilvusCollection:
        if name in self._failed:
            raise NotReady(
                f"collection {name!r} could not be opened: {self._failed[name]}; drop it (DELETE) or repair it",
                code="collection_unavailable",
            )
        with self._lock:
            collection = self._open_collections.get(name)
            fresh = time.monotonic() - self._read_at.get(name, 0.0) < self._refresh_s
        if collection is not None and fresh:
            return collection
        with backend_errors(f"open {name!r}"):
            manifest = self._read(name)
        if manifest is None:
            with self._lock:
                self._open_collections.pop(name, None)
            raise NotFound(f"collection {name!r} not found", code="collection_not_found")
        if collection is not None:
            collection.reload(manifest)
            with self._lock:
                self._read_at[name] = time.monotonic()
            return collection
        return self._open(manifest)

    def drop(self, name: str) -> None:
        with backend_errors(f"drop {name!r}"):
            if not self._client.get(MANIFESTS, ids=[name], output_fields=["name"]):
                raise NotFound(f"collection {name!r} not found", code="collection_not_found")
            # The manifest goes first: a drop that fails half-way leaves data no one serves,
            # which the next create of that name clears, never a manifest without data.
            self._client.delete(MANIFESTS, ids=[name])
            self._client.drop_collection(physical_name(name))
        with self._lock:
            self._open_collections.pop(name, None)
        self._failed.pop(name, None)

    def names(self) -> list[str]:
        with backend_errors("list collections"):
            rows = self._client.query(MANIFESTS, filter='name != ""', output_fields=["name"])
        return sorted(r["name"] for r in rows if r["name"] not in self._failed)

    def failed(self) -> dict[str, str]:
        return dict(self._failed)

    def mark_failed(self, name: str, reason: str) -> None:
        self._failed[name] = reason

    def backup_dir(self, name: str) -> str:
        raise unsupported("backup archives")

    def restore(self, archive: str, name: str | None = None, replace: bool = False) -> tuple[Any, Any]:
        raise unsupported("backup archives")

    def close(self) -> None:
        self._client.close()

    def _open(self, manifest: Manifest) -> MilvusCollection:
        with self._lock:
            collection = self._open_collections.get(manifest.name)
            if collection is None:
                collection = MilvusCollection(self._client, physical_name(manifest.name), manifest, self._write)
                self._open_collections[manifest.name] = collection
            self._read_at[manifest.name] = time.monotonic()
            return collection

    def _read(self, name: str) -> Manifest | None:
        found = self._client.get(MANIFESTS, ids=[name], output_fields=["manifest"])
        if not found:
            return None
        try:
            return Manifest.from_json(found[0]["manifest"])
        except (Invalid, KeyError, TypeError, ValueError) as exc:  # written by another version, or damaged
            self._failed[name] = f"its manifest cannot be read: {exc}"
            raise NotReady(
                f"collection {name!r} could not be opened: {self._failed[name]}", code="collection_unavailable"
            ) from None

    def _write(self, manifest: Manifest) -> None:
        row = {"name": manifest.name, "manifest": manifest.to_json(), "placeholder": [0.0, 0.0]}
        self._client.upsert(MANIFESTS, [row])
