"""What the API answers, as typed models. Each mirrors a schema of the server's OpenAPI document
(named in its docstring); tests/client/test_schema_drift.py compares them field by field, so
they cannot drift. Fields the server adds later are kept (extra="allow"), not refused."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Hit(_Answer):
    """One search result (SearchHit): best first; `score` is the similarity (cosine, inner
    product, -L2²), BM25 for keyword searches, or the fused score of a hybrid one."""

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = None


class SearchResponse(_Answer):
    """(SearchResponse) The hits of one search, and how it was served."""

    results: list[Hit]
    took_ms: float
    upgrade: dict[str, Any] | None = None
    truncated: bool | None = None


class Document(_Answer):
    """A stored document (DocumentOut): `vector` for dense collections, `vectors` (a token
    matrix) for multi-vector ones, when asked for."""

    id: str
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    vector: list[float] | None = None
    vectors: list[list[float]] | None = None


class DocumentPage(_Answer):
    """(DocumentPage) One page of documents in id order; `next` is the cursor of the next one."""

    documents: list[Document]
    next: str | None = None


class UpsertResult(_Answer):
    """(UpsertResponse) What one upsert request wrote."""

    upserted: int
    ids: list[str]
    truncated: list[str] | None = None


class DeleteResult(_Answer):
    """(DeleteResponse)"""

    deleted: int
    ids: list[str]
    not_found: list[str]


class CollectionInfo(_Answer):
    """(CollectionInfo) A collection's configuration and state."""

    name: str
    model: str | None
    dim: int
    dims: list[int]
    metric: str
    hnsw: dict[str, Any]
    elasticizer: dict[str, Any]
    rerank_factors: dict[str, int]
    created_at: str
    documents: int
    index: dict[str, Any]
    layers: int | None = None
    rotation: dict[str, Any] | None = None
    multivector: dict[str, Any] | None = None
    recall: dict[str, Any] | None = None
    limits: dict[str, Any] | None = None


class UpgradeInfo(_Answer):
    """(UpgradeInfo) An encoder upgrade: its state, gate, progress and history."""

    id: str
    collection: str
    state: str
    model: dict[str, Any]  # the new encoder: model, dim, layers, matryoshka_dims
    previous_model: dict[str, Any] | None
    old_generation: str
    new_generation: str
    created_at: float  # Unix time
    updated_at: float
    sample: int
    holdout: float
    seed: int
    min_cosine: float
    min_recall: float
    map_kinds: list[str] | None = None
    labelled_queries: int | None = None
    fit: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    map_sha256: str | None = None
    error: str | None = None
    history: list[dict[str, Any]] | None = None
    progress: dict[str, Any] | None = None


class SnapshotInfo(_Answer):
    """(SnapshotInfo) A consistent copy of a collection on the server."""

    id: str
    collection: str
    seq: int
    documents: int
    created_at: str
    bytes: int
    sha256: str


class RecallReport(_Answer):
    """(RecallReport) Recall measured now against exact search, per stage."""

    queries: int
    k: int
    stages: list[dict[str, Any]]
    search_ms: dict[str, float]  # mean search time per query, per index
    took_ms: float


# Each model and the server schema it mirrors (for the drift test).
MIRRORS: dict[type[BaseModel], str] = {
    Hit: "SearchHit",
    SearchResponse: "SearchResponse",
    Document: "DocumentOut",
    DocumentPage: "DocumentPage",
    UpsertResult: "UpsertResponse",
    DeleteResult: "DeleteResponse",
    CollectionInfo: "CollectionInfo",
    UpgradeInfo: "UpgradeInfo",
    SnapshotInfo: "SnapshotInfo",
    RecallReport: "RecallReport",
}
