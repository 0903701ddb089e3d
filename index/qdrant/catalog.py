"""The collections of a deployment on Qdrant: each one's manifest lives in Qdrant itself.

Manifests are points of one Qdrant collection, `vecnest.manifests` (no vectors; the manifest
JSON in the payload), so every vecnest replica reads the same facts and keeps no local state.
A collection's documents live in `vecnest.<name>` (see collection.py).
"""

import json
import threading
import time
from typing import Any

from index.catalog import check_name
from index.errors import Conflict, Invalid, NotFound, NotReady
from index.manifest import Manifest

from .collection import QdrantCollection, scoring_for
from .common import backend_errors, point_id
from .fields import FIELDS

MANIFESTS = "vecnest.manifests"


def qdrant_name(name: str) -> str:
    return f"vecnest.{name}"


class QdrantCatalog:
    """`client`: a `qdrant_client.QdrantClient` (a server or cluster URL, or local mode)."""

    def __init__(
        self,
        client: Any,
        write_ordering: str = "strong",
        refresh_s: float = 5.0,
        collection_layout: dict[str, int] | None = None,
    ):
        """`refresh_s`: how old a served manifest may get before it is read again, so that what
        another replica changes (ef per dim, recall policy, limits, a drop) reaches this one.
        `collection_layout`: Qdrant's `shard_number`, `replication_factor` and
        `write_consistency_factor` for new collections (a server or cluster; local mode has one copy)."""
        self._client = client
        self._layout = dict(collection_layout or {})
        self._refresh_s = refresh_s
        self._read_at: dict[str, float] = {}
        self._ordering = write_ordering
        self._failed: dict[str, str] = {}
        # One object per collection and process, as the embedded catalog keeps: the service
        # attaches its encoder and recall state to the object. (A manifest another replica
        # changes is read again when this object is dropped and re-opened.)
        self._open_collections: dict[str, QdrantCollection] = {}
        self._lock = threading.Lock()
        with backend_errors("open the catalog"):
            if not self._client.collection_exists(MANIFESTS):
                self._client.create_collection(MANIFESTS, vectors_config={})

    def create(self, manifest: Manifest) -> QdrantCollection:
        from qdrant_client import models

        check_name(manifest.name)
        manifest = scoring_for(manifest).validate(manifest)
        with backend_errors(f"create {manifest.name!r}"):
            if self._read(manifest.name) is not None:
                raise Conflict(f"collection {manifest.name!r} already exists", code="collection_exists")
            qname = qdrant_name(manifest.name)
            if self._client.collection_exists(qname):  # left by a create that failed half-way
                self._client.delete_collection(qname)
            self._client.create_collection(
                qname, vectors_config=scoring_for(manifest).vectors_config(manifest), **self._layout
            )
            self._client.create_payload_index(qname, FIELDS, models.PayloadSchemaType.KEYWORD, wait=True)
            self._write(manifest)  # last: a collection exists once its manifest does
        return self._open(manifest)

    def get(self, name: str) -> QdrantCollection:
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
        from qdrant_client import models

        with backend_errors(f"drop {name!r}"):
            if not self._client.retrieve(MANIFESTS, [point_id(name)]):  # unread: a failed one drops too
                raise NotFound(f"collection {name!r} not found", code="collection_not_found")
            # The manifest goes first: a drop that fails half-way leaves data no one serves,
            # which the next create of that name clears, never a manifest without data.
            self._client.delete(MANIFESTS, models.PointIdsList(points=[point_id(name)]), wait=True)
            self._client.delete_collection(qdrant_name(name))
        with self._lock:
            self._open_collections.pop(name, None)
        self._failed.pop(name, None)

    def names(self) -> list[str]:
        with backend_errors("list collections"):
            names, offset = [], None
            while True:
                points, offset = self._client.scroll(MANIFESTS, limit=256, offset=offset, with_payload=["name"])
                names += [p.payload["name"] for p in points]
                if offset is None:
                    return sorted(n for n in names if n not in self._failed)

    def failed(self) -> dict[str, str]:
        """Collections listed but not servable (name → reason): a manifest this version cannot
        read, or one marked failed since."""
        return dict(self._failed)

    def mark_failed(self, name: str, reason: str) -> None:
        self._failed[name] = reason

    def backup_dir(self, name: str) -> str:
        raise Invalid(
            "backup archives are not available on the Qdrant backend: use Qdrant's snapshots",
            code="backend_unsupported",
        )

    def restore(self, archive: str, name: str | None = None, replace: bool = False) -> tuple[Any, Any]:
        raise Invalid(
            "backup archives are not available on the Qdrant backend: use Qdrant's snapshots",
            code="backend_unsupported",
        )

    def close(self) -> None:
        self._client.close()

    def _open(self, manifest: Manifest) -> QdrantCollection:
        with self._lock:
            collection = self._open_collections.get(manifest.name)
            if collection is None:
                collection = QdrantCollection(
                    self._client, qdrant_name(manifest.name), manifest, self._write, self._ordering
                )
                self._open_collections[manifest.name] = collection
            self._read_at[manifest.name] = time.monotonic()
            return collection

    def _read(self, name: str) -> Manifest | None:
        found = self._client.retrieve(MANIFESTS, [point_id(name)], with_payload=True)
        if not found:
            return None
        try:
            return Manifest.from_json(json.loads(found[0].payload["manifest"]))
        except (Invalid, KeyError, TypeError, ValueError) as exc:  # written by another version, or damaged
            self._failed[name] = f"its manifest cannot be read: {exc}"
            raise NotReady(
                f"collection {name!r} could not be opened: {self._failed[name]}", code="collection_unavailable"
            ) from None

    def _write(self, manifest: Manifest) -> None:
        from qdrant_client import models

        point = models.PointStruct(
            id=point_id(manifest.name),
            vector={},
            payload={"name": manifest.name, "manifest": json.dumps(manifest.to_json())},
        )
        self._client.upsert(MANIFESTS, [point], wait=True, ordering=models.WriteOrdering(self._ordering))
