"""The manifest: a collection's build-time facts and its current snapshot, as one JSON file.

It is replaced atomically (write a temporary file, fsync, rename, fsync the directory), so a
reader sees either the old or the new manifest, never a torn one. Everything that shapes the
stored vectors or the graphs is here (dims, metric, M, rotation, encoder), plus the
collection's query defaults (ef_search, rerank_factor).
"""

import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from index.errors import Invalid
from index.fde import MAX_FDE_DIM, MultiVectorConfig
from index.files import json_bytes, write_atomic
from index.hnsw import HnswParams
from index.vectors import check_metric

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
    def from_json(cls, data: Any) -> "Manifest":
        """The manifest `to_json` wrote, checked (`check`): one read from an uploaded archive
        is foreign input. Invalid ("invalid_manifest") names what is wrong."""
        if not isinstance(data, dict):
            raise _bad(f"a manifest is a JSON object, not {type(data).__name__}")
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
        try:
            values = {k: (nested[k](**v) if k in nested and v is not None else v) for k, v in data.items()}
            return cls(**values).check()
        except (TypeError, ValueError) as exc:  # a missing or unknown field, a value of the wrong type
            raise _bad(str(exc)) from None

    def check(self) -> "Manifest":
        """Invalid unless every field has the type and range this code writes, and every file it
        names is a plain name inside the collection's folder."""

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise _bad(what)

        need(isinstance(self.name, str) and isinstance(self.created_at, str), "name and created_at are strings")
        need(_int(self.dim, 1, MAX_FDE_DIM), f"dim {self.dim!r} is not in 1..{MAX_FDE_DIM}")
        check_metric(self.metric)
        need(isinstance(self.dims, list) and all(_int(d, 1, self.dim) for d in self.dims), f"dims {self.dims!r}")
        self.hnsw.check()
        e = self.elasticizer
        need(e.kind in ("pca", "none") and _int(e.sample, 1) and _int(e.seed, 0) and _int(e.fit_at, 1), "elasticizer")
        r = self.rotation
        if r is not None:
            need(_file_name(r.file) and isinstance(r.sha256, str), f"rotation file {r.file!r}")
            need(_int(r.seed, 0) and _int(r.n_fit, 0) and _int(r.fitted_seq, 0), "rotation seed, n_fit, fitted_seq")
            need(_dim_map(r.energy, lambda v: isinstance(v, (int, float))), "rotation energy")
        need(self.rerank_factor is None or _int(self.rerank_factor, 1), f"rerank_factor {self.rerank_factor!r}")
        need(self.encoder is None or isinstance(self.encoder, dict), "encoder is an object or null")
        if self.multivector is not None:
            self.multivector.check()
        self.recall.check()
        need(_dim_map(self.limits, lambda v: _int(v, 1)), "limits")
        need(_dim_map(self.tuned_ef, lambda v: _int(v, 1)), "tuned_ef")
        need(_dim_map(self.tuned_rerank, lambda v: _int(v, 1)), "tuned_rerank")
        s = self.snapshot
        if s is not None:
            need(_dim_map(s.files, _file_name), f"snapshot files {s.files!r}")
            need(_int(s.applied_seq, 0), f"snapshot applied_seq {s.applied_seq!r}")
            need(s.rotation_sha256 is None or isinstance(s.rotation_sha256, str), "snapshot rotation_sha256")
        need(isinstance(self.extra, dict), "extra is an object")
        return self

    def replace(self, **changes: Any) -> "Manifest":
        return replace(self, **changes)


# A file a manifest names: a plain name in the collection's snapshots/ or rotations/ folder (on
# a shared backend, a key such as "map:c:.:rotation-..."): never a path out of it.
_FILE_NAME = re.compile(r"^(?!\.\.?$)[^/\\\x00]{1,255}$")


def _bad(what: str) -> Invalid:
    return Invalid(f"invalid manifest: {what}", code="invalid_manifest")


def _int(value: Any, low: int, high: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high)


def _file_name(value: Any) -> bool:
    return isinstance(value, str) and _FILE_NAME.match(value) is not None


def _dim_map(value: Any, valid: Any) -> bool:
    """A JSON object of string keys (dims, limit names) whose values pass `valid`."""
    return isinstance(value, dict) and all(isinstance(k, str) and valid(v) for k, v in value.items())


def write_manifest(path: str, manifest: Manifest) -> None:
    write_atomic(path, json_bytes(manifest.to_json()))


def read_manifest(path: str) -> Manifest:
    with open(path) as f:
        return Manifest.from_json(json.load(f))
