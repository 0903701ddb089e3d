"""Milvus as a shared engine (index/shared_catalog.py): the meta table is one Milvus collection,
`vecnest_meta` (a row per key, its value as JSON; Milvus asks every collection for a vector
field, so it carries a 2-d placeholder), and a collection's generation `g` is the Milvus
collection `vecnest_c_<name in hex>` (`g` = ".") or that name with `_g_<g>` (Milvus names allow
letters, digits and underscores only)."""

from typing import Any

import numpy as np

from index.manifest import Manifest
from index.shared_catalog import EntryStore, SharedCatalog

from .client import loading
from .collection import MilvusCollection, backend_errors, schema_of

META = "vecnest_meta"


def physical_name(name: str, generation: str = ".", incarnation: str = "") -> str:
    """`vecnest_c_<name in hex>[_g_<generation>][_i_<incarnation>]` (Milvus allows [A-Za-z0-9_])."""
    base = "vecnest_c_" + name.encode("utf-8").hex()
    base = base if generation == "." else f"{base}_g_{generation.replace('-', '_')}"
    return f"{base}_i_{incarnation}" if incarnation else base


class MilvusMeta:
    def __init__(self, client: Any):
        self._client = client

    def get(self, key: str) -> dict[str, Any] | None:
        found = self._client.get(META, ids=[key], output_fields=["value"])
        return {**found[0]["value"], "key": key} if found else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._client.upsert(META, [{"key": key, "value": value, "placeholder": [0.0, 0.0]}])

    def delete(self, keys: list[str]) -> None:
        if keys:
            self._client.delete(META, ids=keys)

    def find(self, kind: str, collection: str | None = None) -> list[dict[str, Any]]:
        # kinds are fixed words and collection names [A-Za-z0-9_-]: nothing to quote
        expr = f'value["kind"] == "{kind}"'
        if collection is not None:
            expr += f' and value["collection"] == "{collection}"'
        rows = self._client.query(META, filter=expr, output_fields=["key", "value"])
        return [{**r["value"], "key": r["key"]} for r in rows]


class MilvusEngine:
    """`SharedEngine` over a `pymilvus.MilvusClient` (a Milvus server, or milvus-lite's server)."""

    name = "Milvus"

    def __init__(self, client: Any):
        client = loading(client)  # client.py: collections a restart released are loaded again
        self._client = client
        self.meta = MilvusMeta(client)
        with backend_errors("open the catalog"):
            if not client.has_collection(META):
                self._create_meta()

    def _create_meta(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("value", DataType.JSON)
        schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
        indexes = MilvusClient.prepare_index_params()
        indexes.add_index("placeholder", index_type="FLAT", metric_type="L2")
        self._client.create_collection(META, schema=schema, index_params=indexes, consistency_level="Strong")

    def errors(self, what: str):
        return backend_errors(what)

    def validate(self, manifest: Manifest) -> Manifest:
        return MilvusCollection.validate(manifest)

    def physical(self, name: str, generation: str, incarnation: str) -> str:
        return physical_name(name, generation, incarnation)

    def exists(self, physical: str) -> bool:
        return bool(self._client.has_collection(physical))

    def create(self, physical: str, manifest: Manifest) -> None:
        schema, indexes = schema_of(manifest)
        self._client.create_collection(physical, schema=schema, index_params=indexes, consistency_level="Strong")

    def drop(self, physical: str) -> None:
        self._client.drop_collection(physical)

    def open(
        self, physical: str, manifest: Manifest, store: EntryStore, rotation: np.ndarray | None
    ) -> MilvusCollection:
        assert rotation is None  # validate() keeps Milvus collections without one
        return MilvusCollection(self._client, physical, manifest, store)

    def close(self) -> None:
        self._client.close()


def milvus_catalog(client: Any, refresh_s: float = 5.0) -> SharedCatalog:
    """The collections of a deployment on Milvus."""
    return SharedCatalog(MilvusEngine(client), refresh_s)
