"""Settings: every knob, with its default, readable from `VECNEST_*` environment variables.

Built once by the caller (CLI, tests) and passed to `create_app`; nothing reads it at import.
Nested values use `__`, e.g. `VECNEST_MODELS='{"e5": "/models/e5-small"}'`.
"""

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from index import CollectionOptions, Conflict, HnswParams

DEFAULT_MODEL = "all-MiniLM-L6-v2"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
Role = Literal["read", "write", "admin"]


class ApiKey(BaseModel):
    """One API key. `admin` may do everything; `write` documents, search, embeddings and recall
    probes; `read` search, get, embeddings and collection info. `collections` limits the key
    to those collections (absent: all). `name` is what logs show (default: a hash prefix)."""

    model_config = ConfigDict(extra="forbid")

    key: SecretStr = Field(..., min_length=16, description="the secret; at least 16 characters")
    role: Role
    collections: list[str] | None = None
    name: str | None = Field(None, max_length=64)
    rate_limit: float | None = Field(None, gt=0, description="requests per second (default: key_rate_limit)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VECNEST_", env_nested_delimiter="__", extra="ignore")

    # server
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("data")
    model_cache_dir: Path | None = Field(
        None, description="where converted models are kept (ONNX int8); default <data_dir>/.model-cache"
    )
    # storage: the embedded default, or collections kept in a shared engine (README "Scaling out")
    backend: Literal["embedded", "qdrant", "milvus"] = Field(
        "embedded",
        description="embedded: SQLite + hnswlib under data_dir; qdrant: a Qdrant server, cluster or local mode; "
        "milvus: a Milvus server or milvus-lite's server (dense collections only)",
    )
    qdrant_url: str | None = Field(None, description="backend=qdrant: the server or cluster, e.g. http://qdrant:6333")
    qdrant_api_key: str | None = Field(None, description="backend=qdrant: Qdrant's API key")
    qdrant_path: str | None = Field(
        None, description='backend=qdrant: qdrant-client local mode instead of a server: a folder, or ":memory:"'
    )
    qdrant_timeout_s: float = Field(10.0, gt=0, description="backend=qdrant: how long one Qdrant call may take")
    qdrant_shards: int = Field(1, ge=1, description="backend=qdrant: shards of each new collection")
    qdrant_replication_factor: int = Field(
        1, ge=1, description="backend=qdrant: copies of each shard (2 or more for a cluster that survives a node)"
    )
    qdrant_write_consistency: int = Field(
        1, ge=1, description="backend=qdrant: replicas that must apply a write before it is acknowledged"
    )
    manifest_refresh_s: float = Field(
        5.0, gt=0, description="shared backend: how old a process's copy of a collection's manifest may get"
    )
    milvus_uri: str | None = Field(None, description="backend=milvus: the server, e.g. http://milvus:19530")
    milvus_token: str | None = Field(None, description="backend=milvus: Milvus's token (user:password or API key)")
    milvus_timeout_s: float = Field(10.0, gt=0, description="backend=milvus: how long one Milvus call may take")
    role: Literal["all", "serve", "maintenance"] = Field(
        "all",
        description="a shared backend (qdrant server, milvus) with several processes: serve (answers requests, "
        "changes no setting) or "
        "maintenance (the one process that steers ef to recall targets); all: one process does both",
    )
    recall_probe_interval_s: float = Field(
        10.0, gt=0, description="role=maintenance: how often each collection with a recall target is measured"
    )
    recall_probe_queries: int = Field(
        32, ge=1, le=1000, description="role=maintenance: stored documents per measurement"
    )
    qdrant_write_ordering: Literal["weak", "medium", "strong"] = Field(
        "strong", description="backend=qdrant: Qdrant's write ordering for every write (acknowledged after wait=true)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(False, description="log every request (uvicorn's access log): off, it costs the hot path")
    tls_cert: Path | None = Field(None, description="PEM certificate (chain): serve HTTPS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")

    # security: who may call, from where (README "Security")
    api_keys: list[ApiKey] = Field(default_factory=list, description="JSON list of keys; none: loopback only")
    api_keys_file: Path | None = Field(None, description="a JSON file holding the same list (read at start-up)")
    allow_unauthenticated: bool = Field(
        False, description="serve a non-loopback address without keys (behind a proxy that authenticates)"
    )
    public_metrics: bool = Field(False, description="/metrics without a key (when keys are configured)")
    public_docs: bool = Field(False, description="/docs, /redoc and /openapi.json without a key")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description='Host headers accepted besides the listen address and localhost forms; ["*"]: any',
    )
    cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed by CORS (off: none)")
    key_rate_limit: float | None = Field(None, gt=0, description="requests per second per key (none: unlimited)")

    # encoders
    default_model: str = DEFAULT_MODEL
    models: dict[str, str] = Field(
        default_factory=dict, description="model alias → local sentence-transformers directory"
    )
    model_dirs: list[Path] = Field(
        default_factory=list, description="directories whose model folders requests may name (by name or path)"
    )
    allow_model_paths: bool = Field(False, description="a request may name any local model directory by path")
    device: str = "cpu"
    preload_default_model: bool = Field(
        False, description="load the default model at start-up, not when a collection or request first needs it"
    )
    torch_threads: int | None = Field(
        None, description="torch intra-op threads (default: the cores other processes leave free, checked each second)"
    )
    encode_batch_size: int = Field(64, ge=1, description="most texts encoded in one model call")
    # Forward passes of at most this many texts (of similar length: each call sorts its texts).
    # Measured here on MiniLM (glosses, 2 threads): 16 texts per pass 210/s, 64 per pass 153/s.
    model_batch_size: int = Field(16, ge=1, description="texts per forward pass within a model call")
    encode_batch_wait_ms: float = Field(
        0.0, ge=0, le=100, description="under load, how long a model call waits for more requests to join it"
    )
    # Background encoding (an upgrade's sample and backfill) runs after every waiting user
    # request, in model calls of about this length. A user request waits for one transformer
    # block of the call in flight (service/inference.py), or for one forward pass of
    # `model_batch_size` texts where the runtime runs a pass whole (ONNX).
    background_call_ms: float = Field(
        200.0,
        gt=0,
        le=10000,
        description="length of one background model call (upgrades), so user requests wait little",
    )
    encode_queue_size: int = Field(256, ge=1, description="pending encode requests before 429")
    encode_queue_texts: int = Field(8192, ge=1, description="pending texts (all requests together) before 429")

    # request limits: every one is a 4xx with a message naming it, never a slow or huge request
    max_batch_documents: int = Field(1000, ge=1, description="documents (or ids, or inputs) per request")
    max_batch_queries: int = Field(100, ge=1, description="searches per batch request")
    max_k: int = Field(1000, ge=1, description="largest k")
    max_candidates: int = Field(
        10000,
        ge=1,
        description="largest shortlist of one search: k · rerank_factor, or a multi-vector search's candidates",
    )
    max_request_candidates: int = Field(100000, ge=1, description="sum of the shortlists of a batch request")
    max_response_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="text, metadata and vectors one search response may return"
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="larger bodies get 413; a body holds the "
        "event loop while it is parsed (about 8 ms per MB of vectors)",
    )
    max_metadata_bytes: int = Field(64 * 1024, ge=2)
    max_id_length: int = Field(512, ge=1)
    max_text_chars: int = Field(100_000, ge=1, description="longest text of a document, query or embeddings input")
    max_request_chars: int = Field(4_000_000, ge=1, description="characters of text in one request")
    max_archive_bytes: int = Field(
        64 * 1024**3, ge=1024, description="largest backup archive a restore upload may send (streamed to disk)"
    )
    max_collections: int = Field(
        1000,
        ge=1,
        description="collections one server holds (each keeps about 8 file descriptors open, more while busy)",
    )

    # index defaults for new collections
    hnsw_m: int = HnswParams.m
    hnsw_ef_construction: int = HnswParams.ef_construction
    hnsw_ef_search: int = HnswParams.ef_search

    # durability and maintenance
    sqlite_synchronous: Literal["FULL", "NORMAL"] = CollectionOptions.synchronous  # type: ignore[assignment]
    sqlite_mmap_mb: int = Field(
        CollectionOptions.sqlite_mmap_bytes >> 20, ge=0, description="MiB of a store each SQLite connection maps"
    )
    snapshot_interval_s: float = Field(30.0, gt=0, description="how often changed indexes are saved")
    rebuild_deleted_fraction: float = Field(CollectionOptions.rebuild_deleted_fraction, gt=0, le=1)
    exact_filter_fraction: float = Field(CollectionOptions.exact_filter_fraction, ge=0, le=1)
    exact_filter_min: int = Field(CollectionOptions.exact_filter_min, ge=0)

    # concurrent searches of one collection run as one backend call (service/search_batcher.py)
    search_workers: int = Field(1, ge=1, le=64, description="threads that run (batched) searches")
    search_batch_rows: int = Field(256, ge=1, description="most query rows merged into one search call")

    # online recall estimation (per-collection overrides: recall_sample_rate, target_recall)
    recall_sample_rate: float = Field(
        0.03, ge=0, le=1, description="share of searches re-run exactly in the background"
    )
    recall_queue_size: int = Field(
        64, ge=1, description="sampled searches waiting for their exact re-run; more are dropped"
    )
    recall_gather: int = Field(
        32, ge=1, description="sampled searches re-run together in one exact pass (the pass reads every vector once)"
    )
    recall_gather_ms: float = Field(
        1000.0, ge=0, description="the longest a sampled search waits for others to share its exact pass"
    )
    recall_controller_window: int = Field(50, ge=5, description="measured queries per ef controller decision")
    # 0.25 cost vector search at c=1 10% of its rate (bench/peers.py: 630 vs 701 req/s with sampling off)
    recall_max_busy: float = Field(0.05, gt=0, le=1, description="most of one core the exact re-runs may take")
    recall_settled_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="share of recall_max_busy the re-runs take while every controller they feed holds a converged "
        "setting (a target met: watching it costs less than finding it)",
    )
    blas_threads: int | None = Field(
        1,
        ge=1,
        description="numpy's OpenBLAS threads (None: its default); idle OpenBLAS threads spin and slow the encoder",
    )

    # encoder upgrades (per-upgrade overrides in the request)
    upgrade_sample: int = Field(10000, ge=2, description="documents embedded with both models to fit the map")
    upgrade_holdout: float = Field(0.2, gt=0, lt=1, description="share of the sample held out to evaluate the map")
    upgrade_min_cosine: float = Field(0.8, ge=-1, le=1, description="gate: mean cosine of mapped vs old vectors")
    upgrade_min_recall: float = Field(0.8, ge=0, le=1, description="gate: recall@10 of mapped queries vs old queries")
    upgrade_batch_size: int = Field(32, ge=1, description="documents re-embedded per backfill step")
    upgrade_max_busy: float = Field(0.5, gt=0, le=1, description="most of the encoder's time the backfill may take")
    upgrade_poll_s: float = Field(0.5, gt=0, description="how often a caught-up backfill looks for new writes")
    upgrade_shared_poll_s: float = Field(
        10.0,
        gt=0,
        description="shared backend: how often a caught-up backfill compares both generations in full (writes "
        "land in both during an upgrade; the comparison repairs any that failed half-way)",
    )
    upgrade_backend_patience_s: float = Field(
        600.0,
        ge=0,
        description="how long a backfill waits, retrying, for a backend that is unavailable (an engine restart, a "
        "network blip) before the upgrade fails",
    )
    upgrade_settle_s: float = Field(
        15.0,
        ge=0,
        description="shared backend: how long every replica is given to notice an upgrade's new state before a "
        "cut-over or a generation's removal (replicas read it every upgrade_follow_s)",
    )
    upgrade_follow_s: float = Field(
        5.0, gt=0, description="shared backend, serving replicas: how often they read the upgrades of a collection"
    )

    @model_validator(mode="after")
    def _keys_from_file(self) -> "Settings":
        if self.api_keys_file is not None:
            try:
                loaded = json.loads(self.api_keys_file.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"api_keys_file {self.api_keys_file}: {exc}") from None
            self.api_keys = [*self.api_keys, *(ApiKey.model_validate(k) for k in loaded)]
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.role != "all" and self.backend == "embedded":
            raise ValueError(
                "role serve or maintenance needs a shared backend (backend=qdrant or milvus): one process owns data_dir"
            )
        if self.qdrant_write_consistency > self.qdrant_replication_factor:
            raise ValueError("qdrant_write_consistency cannot exceed qdrant_replication_factor")
        if self.backend == "qdrant" and (self.qdrant_url is None) == (self.qdrant_path is None):
            raise ValueError("backend=qdrant needs exactly one of qdrant_url and qdrant_path")
        if self.backend != "embedded" and self.upgrade_settle_s < self.upgrade_follow_s + self.manifest_refresh_s:
            raise ValueError(
                "upgrade_settle_s must cover upgrade_follow_s + manifest_refresh_s: replicas need that long"
            )
        if self.backend == "milvus" and not self.milvus_uri:
            raise ValueError("backend=milvus needs milvus_uri")
        return self

    def require_maintenance(self, action: str) -> None:
        """Upgrades and rotation fits run in one process: on a shared backend the maintenance
        process (or a single process with role all); serving replicas follow what it does."""
        if self.role == "serve":
            raise Conflict(
                f"cannot {action} here: this is a serving replica; it runs on the maintenance process "
                f"(VECNEST_ROLE=maintenance): send this request to it",
                code="maintenance_only",
            )

    def model_cache(self) -> Path:
        return self.model_cache_dir or self.data_dir / ".model-cache"

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS
