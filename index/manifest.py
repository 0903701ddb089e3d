"""The manifest: a collection's build-time facts and its current snapshot, as one JSON file.

It is replaced atomically (write a temporary file, fsync, rename, fsync the directory), so a
reader sees either the old or the new manifest, never a torn one. Query-time settings do not
belong here; everything that shapes the stored vectors or the graphs does.
"""

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from index.errors import Invalid
from index.files import fsync_path
from index.hnsw import HnswParams

FORMAT = 1


@dataclass(frozen=True)
class Snapshot:
    """An index file and the last store `seq` it contains."""

    file: str
    applied_seq: int


@dataclass(frozen=True)
class Manifest:
    name: str
    dim: int
    metric: str
    hnsw: HnswParams
    created_at: str
    # Opaque to index/: the service records which encoder made the vectors (None: vectors only).
    encoder: dict[str, Any] | None = None
    snapshot: Snapshot | None = None
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def with_snapshot(self, snapshot: Snapshot) -> "Manifest":
        return replace(self, snapshot=snapshot)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        if data.get("format") != FORMAT:
            raise Invalid(f"manifest format {data.get('format')!r} is not supported (expected {FORMAT})")
        snapshot = data.get("snapshot")
        return cls(
            name=data["name"],
            dim=int(data["dim"]),
            metric=data["metric"],
            hnsw=HnswParams(**data["hnsw"]),
            created_at=data["created_at"],
            encoder=data.get("encoder"),
            snapshot=Snapshot(**snapshot) if snapshot else None,
            extra=data.get("extra", {}),
        )


def write_manifest(path: str, manifest: Manifest) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest.to_json(), f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(os.path.dirname(path) or ".")


def read_manifest(path: str) -> Manifest:
    with open(path) as f:
        return Manifest.from_json(json.load(f))
