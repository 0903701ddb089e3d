"""The manifest: a collection's build-time facts and its current snapshot, as one JSON file.

It is replaced atomically (write a temporary file, fsync, rename, fsync the directory), so a
reader sees either the old or the new manifest, never a torn one. Everything that shapes the
stored vectors or the graphs is here (dims, metric, M, rotation, encoder), plus the
collection's query defaults (ef_search, rerank_factor).
"""

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from index.errors import Invalid
from index.fde import MultiVectorConfig
from index.files import json_bytes, write_atomic
from index.hnsw import HnswParams

FORMAT = 1


@dataclass(frozen=True)
class Snapshot:
    """Index files (one per dim) and the last store `seq` they all contain."""

    files: dict[str, str]  # str(dim) → file name in snapshots/
    applied_seq: int
    rotation_sha256: str | None = None  # the rotation the low-dim graphs were built with


@dataclass(frozen=True)
class Elasticizer:
    """How prefixes are made truncatable: "pca" fits an uncentred PCA rotation, "none" truncates
    as is (for Matryoshka-trained models). The fit samples `sample` vectors with `seed`, and runs
    by itself once the collection holds `fit_at` documents."""

    kind: str = "none"
    sample: int = 20000
    seed: int = 0
    fit_at: int = 1000


@dataclass(frozen=True)
class Rotation:
    """A fitted rotation: the matrix lives in `file` (float32 .npy), verified by `sha256`."""

    file: str
    sha256: str
    seed: int
    n_fit: int
    fitted_seq: int
    energy: dict[str, float]  # str(dim) → share of the second moment its prefix keeps


@dataclass(frozen=True)
class RecallPolicy:
    """How a collection watches and steers its recall. A fraction `sample_rate` of searches
    (None: the server's default) is re-run exactly in the background; with a `target`, each
    graph's ef is tuned within `[ef_min, ef_max]` so its measured recall holds the target."""

    target: float | None = None
    sample_rate: float | None = None
    ef_min: int = 10
    ef_max: int = 1000

    def check(self) -> "RecallPolicy":
        if self.target is not None and not 0.0 < self.target <= 1.0:
            raise Invalid("target_recall must be in (0, 1]", code="invalid_target_recall")
        if self.sample_rate is not None and not 0.0 <= self.sample_rate <= 1.0:
            raise Invalid("recall_sample_rate must be in [0, 1]", code="invalid_sample_rate")
        if not 1 <= self.ef_min <= self.ef_max:
            raise Invalid(
                f"need 1 <= ef_min <= ef_max, got ef_min={self.ef_min}, ef_max={self.ef_max}", code="invalid_ef_bounds"
            )
        return self


@dataclass(frozen=True)
class Manifest:
    name: str
    dim: int
    metric: str
    hnsw: HnswParams
    created_at: str
    dims: list[int] = field(default_factory=list)  # indexed dims; empty means [dim]
    elasticizer: Elasticizer = Elasticizer()
    rotation: Rotation | None = None
    rerank_factor: int | None = None  # funnel shortlist = k · factor; None: sized per dim
    # Opaque to index/: the service records which encoder made the vectors (None: vectors only).
    encoder: dict[str, Any] | None = None
    # Multi-vector collections: the frozen FDE parameters; `dim` is then the FDE's dim.
    multivector: MultiVectorConfig | None = None
    recall: RecallPolicy = RecallPolicy()
    # Opaque to index/: the service's per-collection request limits (name → maximum).
    limits: dict[str, int] = field(default_factory=dict)
    # ef per indexed dim (str) as the recall controller last set it; absent: hnsw.ef_search.
    tuned_ef: dict[str, int] = field(default_factory=dict)
    # str(dim) → the funnel's rerank factor the recall controller chose (a target on final recall)
    tuned_rerank: dict[str, int] = field(default_factory=dict)
    snapshot: Snapshot | None = None
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def indexed_dims(self) -> list[int]:
        return sorted(self.dims) if self.dims else [self.dim]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        if data.get("format") != FORMAT:
            raise Invalid(f"manifest format {data.get('format')!r} is not supported (expected {FORMAT})")
        nested = {
            "hnsw": HnswParams,
            "elasticizer": Elasticizer,
            "rotation": Rotation,
            "snapshot": Snapshot,
            "multivector": MultiVectorConfig,
            "recall": RecallPolicy,
        }
        values = {k: (nested[k](**v) if k in nested and v is not None else v) for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> "Manifest":
        return replace(self, **changes)


def write_manifest(path: str, manifest: Manifest) -> None:
    write_atomic(path, json_bytes(manifest.to_json()))


def read_manifest(path: str) -> Manifest:
    with open(path) as f:
        return Manifest.from_json(json.load(f))
