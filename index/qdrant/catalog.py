"""Qdrant as a shared engine (index/shared_catalog.py): the meta table is one Qdrant collection,
`vecnest.manifests` (points without vectors, the value in the payload), and a collection's
generation `g` is the Qdrant collection `vecnest.<name>` (`g` = ".") or `vecnest.<name>.<g>`
(see collection.py for what one holds)."""

from typing import Any

import numpy as np

from index.manifest import Manifest
from index.shared_catalog import EntryStore, SharedCatalog

from .collection import QdrantCollection, scoring_for
from .common import backend_errors, point_id
from .fields import FIELDS
from .local import thread_safe

MANIFESTS = "vecnest.manifests"


def qdrant_name(name: str, generation: str = ".", incarnation: str = "") -> str:
    """`vecnest.<name>[.<generation>][.i-<incarnation>]` (collections created before incarnations
    have none)."""
    base = f"vecnest.{name}" if generation == "." else f"vecnest.{name}.{generation}"
    return f"{base}.i-{incarnation}" if incarnation else base


class QdrantMeta:
    """The meta table: a point per key (id: a UUID of the key), its value as the payload."""

    def __init__(self, client: Any, ordering: str):
        self._client = client
        self._ordering = ordering

    def get(self, key: str) -> dict[str, Any] | None:
        found = self._client.retrieve(MANIFESTS, [point_id(key)], with_payload=True)
        return dict(found[0].payload) if found else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        from qdrant_client import models

        point = models.PointStruct(id=point_id(key), vector={}, payload={**value, "key": key})
        self._client.upsert(MANIFESTS, [point], wait=True, ordering=models.WriteOrdering(self._ordering))

    def delete(self, keys: list[str]) -> None:
        from qdrant_client import models

        if keys:
            selector = models.PointIdsList(points=[point_id(k) for k in keys])
            self._client.delete(MANIFESTS, selector, wait=True, ordering=models.WriteOrdering(self._ordering))

    def find(self, kind: str, collection: str | None = None) -> list[dict[str, Any]]:
        from qdrant_client import models

        must: list[Any] = [models.FieldCondition(key="kind", match=models.MatchValue(value=kind))]
        if collection is not None:
            must.append(models.FieldCondition(key="collection", match=models.MatchValue(value=collection)))
        out, offset = [], None
        while True:
            points, offset = self._client.scroll(
                MANIFESTS, scroll_filter=models.Filter(must=must), limit=256, offset=offset, with_payload=True
            )
            out += [dict(p.payload) for p in points]
            if offset is None:
                return out


class QdrantEngine:
    """`SharedEngine` over a `qdrant_client.QdrantClient` (a server or cluster, or local mode)."""

    name = "Qdrant"

    def __init__(self, client: Any, write_ordering: str = "strong", collection_layout: dict[str, int] | None = None):
        """`collection_layout`: Qdrant's `shard_number`, `replication_factor` and
        `write_consistency_factor` for new collections (a server or cluster; local mode has one copy).
        A local-mode client is used through one lock (local.py: it is not thread-safe)."""
        client = thread_safe(client)
        self._client = client
        self._ordering = write_ordering
        self._layout = dict(collection_layout or {})
        self.meta = QdrantMeta(client, write_ordering)
        with backend_errors("open the catalog"):
            if not client.collection_exists(MANIFESTS):
                from qdrant_client import models

                client.create_collection(MANIFESTS, vectors_config={})
                for key in ("kind", "collection"):
                    client.create_payload_index(MANIFESTS, key, models.PayloadSchemaType.KEYWORD, wait=True)

    def errors(self, what: str):
        return backend_errors(what)

    def validate(self, manifest: Manifest) -> Manifest:
        return scoring_for(manifest).validate(manifest)

    def physical(self, name: str, generation: str, incarnation: str) -> str:
        return qdrant_name(name, generation, incarnation)

    def exists(self, physical: str) -> bool:
        return bool(self._client.collection_exists(physical))

    def create(self, physical: str, manifest: Manifest) -> None:
        from qdrant_client import models

        config = scoring_for(manifest).vectors_config(manifest)
        self._client.create_collection(physical, vectors_config=config, **self._layout)
        self._client.create_payload_index(physical, FIELDS, models.PayloadSchemaType.KEYWORD, wait=True)

    def drop(self, physical: str) -> None:
        self._client.delete_collection(physical)

    def open(
        self, physical: str, manifest: Manifest, store: EntryStore, rotation: np.ndarray | None
    ) -> QdrantCollection:
        return QdrantCollection(self._client, physical, manifest, store, self._ordering, rotation)

    def close(self) -> None:
        self._client.close()


def qdrant_catalog(
    client: Any,
    write_ordering: str = "strong",
    refresh_s: float = 5.0,
    collection_layout: dict[str, int] | None = None,
) -> SharedCatalog:
    """The collections of a deployment on Qdrant (`client`: a server or cluster, or local mode)."""
    return SharedCatalog(QdrantEngine(client, write_ordering, collection_layout), refresh_s)
