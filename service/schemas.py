"""Request and response bodies of the HTTP API (pydantic), with the limits that need no state."""

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from index import Elasticizer, HnswParams, MultiVectorConfig, RecallPolicy

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Include = Literal["text", "metadata", "vector"]
FiniteFloat = float  # finiteness is enforced by `allow_inf_nan=False` on the models below
# Text must hold a non-space character. The schema says so; the service enforces it with its own
# error code (empty_text), so pydantic does not.
NON_BLANK = {"pattern": r"\S"}


def _one_of(*fields: str, at_least: bool = False) -> dict:
    """JSON Schema for "exactly one (or, with `at_least`, at least one) of these fields, not null"."""
    branches = [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in fields]
    return {"anyOf" if at_least else "oneOf": branches}


class _Body(BaseModel):
    # strict: the schema's types are the whole story (no "3" for 3, no false for 0.0)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


# -- collections ------------------------------------------------------------------------------
class HnswConfig(_Body):
    m: int | None = Field(
        None, ge=HnswParams.M_RANGE[0], le=HnswParams.M_RANGE[1], description="graph degree (build-time)"
    )
    ef_construction: int | None = Field(
        None,
        ge=HnswParams.EF_CONSTRUCTION_RANGE[0],
        le=HnswParams.EF_CONSTRUCTION_RANGE[1],
        description="build breadth (build-time)",
    )
    ef_search: int | None = Field(
        None, ge=HnswParams.EF_SEARCH_RANGE[0], le=HnswParams.EF_SEARCH_RANGE[1], description="default query breadth"
    )


class ElasticizerConfig(_Body):
    kind: Literal["auto", "pca", "none"] = Field(
        "auto",
        description='"pca": fit an orthogonal PCA rotation so prefixes keep the most energy; "none": '
        'truncate as is (Matryoshka-trained models); "auto": none for declared Matryoshka models, '
        "else pca",
    )
    sample: int = Field(Elasticizer.sample, ge=16, le=1_000_000, description="vectors sampled for the fit")
    seed: int = Field(Elasticizer.seed, ge=0)
    fit_at: int = Field(
        Elasticizer.fit_at, ge=1, description="fit by itself once the collection holds this many documents"
    )


class MultiVectorIn(_Body):
    """MUVERA FDE parameters, frozen at creation (defaults: the paper's (20, 5, 16) → 10240 dims)."""

    token_dim: int | None = Field(
        None, ge=1, le=MultiVectorConfig.MAX_TOKEN_DIM, description="token embedding dim (default: the model's)"
    )
    repetitions: int = Field(MultiVectorConfig.repetitions, ge=1, le=MultiVectorConfig.MAX_REPETITIONS)
    simhash_bits: int = Field(
        MultiVectorConfig.simhash_bits,
        ge=0,
        le=MultiVectorConfig.MAX_SIMHASH_BITS,
        description="2^bits buckets per repetition",
    )
    projection_dim: int | None = Field(
        MultiVectorConfig.projection_dim, ge=1, description="inner projection dim; null: identity (token_dim)"
    )
    final_dim: int | None = Field(None, ge=1, description="optional Count-Sketch to this many dims")
    seed: int = Field(MultiVectorConfig.seed, ge=0)
    fill_empty: bool = Field(
        MultiVectorConfig.fill_empty, description="fill empty document buckets with the nearest token"
    )
    max_tokens: int = Field(
        MultiVectorConfig.max_tokens,
        ge=1,
        le=MultiVectorConfig.MAX_TOKENS_LIMIT,
        description="token limit per document and query",
    )


class RecallPolicyIn(_Body):
    """How vecnest watches (and optionally steers) a collection's recall."""

    target_recall: float | None = Field(
        None,
        gt=0,
        le=1,
        description="tune each graph's ef so its measured recall holds this (e.g. 0.95); null: ef stays fixed",
    )
    recall_sample_rate: float | None = Field(
        None, ge=0, le=1, description="share of searches re-run exactly in the background (default: the server's)"
    )
    ef_min: int | None = Field(
        None, ge=1, le=10000, description=f"lower bound for the tuned ef (default {RecallPolicy.ef_min})"
    )
    ef_max: int | None = Field(
        None, ge=1, le=10000, description=f"upper bound for the tuned ef (default {RecallPolicy.ef_max})"
    )


class SnapshotInfo(BaseModel):
    """A backup archive of one collection: consistent as of the store's write `seq`."""

    id: str
    collection: str
    seq: int = Field(description="the last write the archive holds")
    documents: int
    created_at: str
    bytes: int
    sha256: str = Field(description="SHA-256 of the archive file, as downloaded")


class SnapshotList(BaseModel):
    snapshots: list[SnapshotInfo]


class CollectionLimits(_Body):
    """Strict limits of one collection (admin only), enforced before any work, on top of the
    server's own: the lower of the two applies. Absent: the server's limit."""

    max_k: int | None = Field(None, ge=1, description="largest k of a search or recall probe")
    max_ef: int | None = Field(None, ge=1, description="largest ef a search may ask for")
    max_batch_documents: int | None = Field(None, ge=1, description="documents (or ids) per request")
    max_batch_queries: int | None = Field(None, ge=1, description="searches per batch request")
    max_text_chars: int | None = Field(None, ge=1, description="longest document or query text")
    max_metadata_bytes: int | None = Field(None, ge=2, description="largest metadata object (JSON bytes)")


class CollectionUpdate(RecallPolicyIn):
    """`PATCH /v1/collections/{name}`: change the recall policy or the limits; fields left out
    keep their value, an explicit null clears `target_recall` or `recall_sample_rate`; `limits`
    replaces every limit of the collection (`{}` removes them)."""

    limits: CollectionLimits | None = None


class CollectionCreate(RecallPolicyIn):
    name: str = Field(..., pattern=NAME_PATTERN)
    model: str | None = Field(None, description="model alias or local directory; omit with `dim` for vectors only")
    metric: str = Field("cosine", description='"cosine", "ip" or "l2"')
    dim: int | None = Field(None, ge=1, le=16384, description="required for vector-only collections")
    dims: list[Annotated[int, Field(ge=1, le=16384)]] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="Matryoshka dims to index, e.g. [64, 128, 384] (default: full "
        "dim only); each at most the vectors' dim",
    )
    elasticizer: ElasticizerConfig | None = None
    rerank_factor: int | None = Field(
        None, ge=1, le=100, description="funnel shortlist = k · factor (default: per dim)"
    )
    layers: int | None = Field(None, ge=1, description="encode with the model's first `layers` layers only")
    hnsw: HnswConfig | None = None
    multivector: MultiVectorIn | None = Field(None, description="multi-vector (token set) documents searched by MaxSim")
    limits: CollectionLimits | None = Field(None, description="strict per-collection request limits")


class CollectionInfo(BaseModel):
    name: str
    model: str | None
    layers: int | None = None
    dim: int
    dims: list[int]
    metric: str
    hnsw: dict[str, int]
    elasticizer: dict[str, Any]
    rotation: dict[str, Any] | None = None
    rerank_factors: dict[str, int]
    created_at: str
    documents: int
    index: dict[str, Any]
    multivector: dict[str, Any] | None = None
    recall: dict[str, Any] = Field(default_factory=dict, description="policy, ef per graph, rolling estimates")
    limits: dict[str, int] = Field(default_factory=dict, description="the collection's own strict limits")


class RecallRequest(_Body):
    """Measure recall now: sampled stored documents serve as queries, each graph is searched as
    a live search would be, and the results are compared with exact search."""

    queries: int = Field(100, ge=1, le=2000, description="stored documents sampled as queries")
    k: int = Field(10, ge=1, le=1000)
    dim: int | None = Field(None, description="one indexed dim (dense collections; default: every dim)")
    ef: int | None = Field(None, ge=1, le=10000, description="default: each graph's current ef")
    candidates: int | None = Field(None, ge=1, le=10000, description="multi-vector: FDE candidates re-ranked")
    filter: dict[str, Any] | None = None
    seed: int = Field(0, ge=0)


class RecallStage(BaseModel):
    index: str
    stage: str = Field(
        description='"index": graph candidates vs exact search in the graph\'s space; '
        '"final": the results returned vs the exact answer'
    )
    k: int
    ef: int
    candidates: int
    recall: float = Field(description="mean per-query recall")
    recall_min: float
    recall_p10: float
    queries: int


class RecallReport(BaseModel):
    queries: int
    k: int
    stages: list[RecallStage]
    search_ms: dict[str, float] = Field(description="mean search time per query, per index")
    took_ms: float


class RefitRequest(_Body):
    sample: int | None = Field(None, ge=16, le=1_000_000, description="default: the collection's elasticizer sample")
    seed: int | None = Field(None, ge=0)


class RefitResponse(BaseModel):
    rotation: dict[str, Any]
    took_ms: float


class FailedCollection(BaseModel):
    """A collection on disk that could not be opened. It answers 503 with this reason until it
    is repaired (then restart) or dropped (DELETE frees its name)."""

    name: str
    state: Literal["failed"] = "failed"
    reason: str


class CollectionList(BaseModel):
    collections: list[CollectionInfo]
    failed: list[FailedCollection] = Field(default_factory=list, description="collections that could not be opened")


# -- documents --------------------------------------------------------------------------------
class TokensIn(_Body):
    """A token matrix for multi-vector collections: `vectors` as JSON rows, or the compact
    `vectors_b64` (little-endian float32 or float16, row-major, `dtype`)."""

    vectors: list[list[FiniteFloat]] | None = Field(None, description="token matrix, one row per token")
    vectors_b64: str | None = Field(None, description="base64 of the row-major token matrix")
    dtype: Literal["float32", "float16"] = Field("float32", description="element type of vectors_b64")


class DocumentIn(TokensIn):
    """A document: text (embedded by the collection's model), a vector or a token matrix, or text
    with either."""

    model_config = ConfigDict(json_schema_extra=_one_of("text", "vector", "vectors", "vectors_b64", at_least=True))

    id: str = Field(..., min_length=1)
    text: str | None = Field(None, json_schema_extra=NON_BLANK)
    vector: list[FiniteFloat] | None = None
    metadata: dict[str, Any] | None = Field(None, description="a JSON object nested at most 32 levels")


class UpsertRequest(_Body):
    documents: list[DocumentIn] = Field(..., min_length=1)


class UpsertResponse(BaseModel):
    upserted: int
    ids: list[str]
    truncated: list[str] | None = Field(
        None,
        description="present when some texts are longer than the model "
        "reads: their ids (each embedded from its start; the whole text is stored)",
    )


class DocumentOut(BaseModel):
    id: str
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    vector: list[float] | None = None
    vectors: list[list[float]] | None = None


class DocumentPage(BaseModel):
    """One page of documents in id order; `next` is the cursor of the following page (`after`),
    null at the end."""

    documents: list[DocumentOut]
    next: str | None = None


class DeleteRequest(_Body):
    ids: list[str] = Field(..., min_length=1)


class DeleteResponse(BaseModel):
    deleted: int
    ids: list[str]
    not_found: list[str]


# -- search -----------------------------------------------------------------------------------
class FusionIn(_Body):
    """How a hybrid search fuses its dense and keyword lists (reciprocal rank fusion):
    score = dense_weight / (rrf_k + dense rank) + keyword_weight / (rrf_k + keyword rank)."""

    dense_weight: float = Field(1.0, ge=0, le=1000)
    keyword_weight: float = Field(1.0, ge=0, le=1000)
    rrf_k: int = Field(60, ge=1, le=10000, description="RRF's rank constant")
    candidates: int | None = Field(
        None, ge=1, le=10000, description="results of each list that take part (default: max(k, 100))"
    )


class SearchRequest(TokensIn):
    """One search: by text (`query`), by `vector`, or (multi-vector collections) by a token matrix."""

    model_config = ConfigDict(json_schema_extra=_one_of("query", "vector", "vectors", "vectors_b64"))

    query: str | None = Field(
        None, description="text, embedded with the collection's model", json_schema_extra=NON_BLANK
    )
    vector: list[FiniteFloat] | None = None
    k: int = Field(10, ge=1)
    ef: int | None = Field(None, ge=1, le=100000, description="HNSW search breadth (≥ k is enforced)")
    filter: dict[str, Any] | None = Field(None, description="metadata equality conditions, ANDed")
    include: list[Include] = Field(default_factory=lambda: ["text", "metadata"])
    exact: bool = Field(False, description="brute force (in the chosen dim) instead of the graph")
    dim: int | None = Field(None, ge=1, description="search the index of this Matryoshka dim (default: the largest)")
    rerank: bool = Field(True, description="re-score a low-dim shortlist exactly at full dim")
    rerank_factor: int | None = Field(None, ge=1, le=1000, description="shortlist = k · factor for a low-dim funnel")
    layers: int | None = Field(None, ge=1, description="encode the query with the first `layers` layers")
    candidates: int | None = Field(
        None, ge=1, le=10000, description="multi-vector: FDE candidates re-ranked by MaxSim (default 100)"
    )
    ball_carving: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="multi-vector: merge query tokens more similar than this before re-ranking (e.g. 0.7)",
    )
    mode: Literal["dense", "keyword", "hybrid"] = Field(
        "dense",
        description='"dense": the vector indexes; "keyword": BM25 over the documents\' text (needs query text); '
        '"hybrid": both, fused by reciprocal rank fusion',
    )
    keyword_query: str | None = Field(
        None,
        description="the text of the keyword part (default: query); lets a hybrid search by vector",
        json_schema_extra=NON_BLANK,
    )
    fusion: FusionIn | None = Field(None, description="hybrid searches: the fusion's weights and depth")


class BatchSearchRequest(_Body):
    searches: list[SearchRequest] = Field(..., min_length=1)


class SearchHit(TypedDict):
    """One result. A TypedDict, not a model: a batch answers thousands of hits, and building a
    model for each cost more than serialising them (100 searches of k=10: 3.3 against 0.5 ms).
    The optional fields are present only when asked for (`include`)."""

    id: str
    score: float
    text: NotRequired[str | None]
    metadata: NotRequired[dict[str, Any] | None]
    vector: NotRequired[list[float] | None]


class UpgradeServing(BaseModel):
    """How a text search was served while an encoder upgrade is under way."""

    upgrade: str
    state: str
    queries: Literal["mapped", "blended", "previous_model"] = Field(
        ...,
        description="mapped: the new model's query through the map; blended: a blend of it with the previous "
        "model's query (both models embed it); previous_model: the gate did not pass",
    )
    reason: str


class SearchResponse(BaseModel):
    results: list[SearchHit]
    took_ms: float
    upgrade: UpgradeServing | None = None
    truncated: bool | None = Field(
        None, description="true when the query text is longer than the model reads: it was embedded from its start"
    )


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]
    took_ms: float


# -- embeddings (OpenAI shape) ----------------------------------------------------------------
class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # OpenAI clients send fields we do not use (user)

    input: (
        Annotated[str, Field(json_schema_extra=NON_BLANK)]
        | Annotated[list[Annotated[str, Field(json_schema_extra=NON_BLANK)]], Field(min_length=1)]
    )
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        None, ge=1, description="truncate and re-normalise (rotated first for a collection with a PCA elasticizer)"
    )
    collection: str | None = Field(
        None, description="vecnest extension: embed as this collection does (its model, layers and rotation)"
    )
    layers: int | None = Field(None, ge=1, description="vecnest extension: run the first `layers` layers only")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage
    truncated: list[int] | None = Field(
        None,
        description="vecnest extension, present when some inputs are longer "
        "than the model reads: their indexes (each embedded from its start)",
    )


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# -- encoder upgrades -------------------------------------------------------------------------
class LabelledQuery(_Body):
    query: str = Field(..., min_length=1, max_length=10_000)
    relevant: list[str] = Field(..., min_length=1, max_length=1000, description="ids of the relevant documents")


class UpgradeCreate(_Body):
    """`POST /v1/collections/{name}/upgrades`: start re-embedding the collection with `model`."""

    model: str = Field(
        ..., min_length=1, description="a model alias or an absolute path to a local sentence-transformers directory"
    )
    sample: int | None = Field(
        None,
        ge=2,
        le=1_000_000,
        description="documents embedded with both models to fit the map (default: the server's, 10000)",
    )
    holdout: float | None = Field(None, gt=0, lt=1, description="share of the sample held out to evaluate the map")
    seed: int = Field(0, ge=0)
    min_cosine: float | None = Field(None, ge=-1, le=1, description="gate: mean cosine of mapped vs old vectors")
    min_recall: float | None = Field(
        None, ge=0, le=1, description="gate: recall@10 of mapped queries relative to old queries against the old index"
    )
    maps: list[Literal["orthogonal", "ridge", "affine", "blend"]] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="map families to fit and gate (default the three linear maps); the best one that passes "
        "serves. blend moves each query's previous-model embedding towards the best linear map's (both models "
        "embed queries while it serves); it is fitted only when asked for, and serves only on labelled queries",
    )
    labelled_queries: list[LabelledQuery] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="queries with their relevant documents: the gate then requires nDCG@10 of mapped new-model "
        "queries ≥ that of the old model's queries on them (instead of the cosine and recall thresholds)",
    )


class CutOverRequest(_Body):
    force: bool = Field(
        False, description="cut over before the backfill caught up: writes wait while the rest is re-embedded"
    )


class UpgradeGate(BaseModel):
    passed: bool
    reason: str
    map: str | None = Field(None, description="the map family that serves (or the best one, when none passed)")
    alpha: float | None = Field(None, description="blend: the weight on the mapped query (0: the previous model's)")
    base: str | None = Field(None, description="blend: the linear map it starts from")
    maps: dict[str, str] | None = Field(None, description='each family\'s verdict: "passed", or why not')


class UpgradeEvent(BaseModel):
    state: str
    at: float = Field(..., description="unix time")


class UpgradeProgress(BaseModel):
    """The sync of a live upgrade: the new generation before cut-over, the previous one after."""

    done: int
    total: int
    caught_up: bool
    rate_docs_per_s: float
    embedded: int
    eta_s: float | None
    syncing: Literal["new generation", "previous generation (for rollback)"]
    waiting_for_backend: str | None = Field(
        None, description="while the backend is unavailable: the error the backfill retries (it waits, then fails)"
    )


class UpgradeInfo(BaseModel):
    """An encoder upgrade: its record (as persisted) and, while it is live, its progress."""

    id: str
    collection: str
    state: Literal["fitting", "backfilling", "cut_over", "finalized", "rolled_back", "aborted", "failed"]
    model: dict[str, Any] = Field(..., description="the new encoder (model, dim, layers, matryoshka_dims)")
    previous_model: dict[str, Any]
    old_generation: str
    new_generation: str
    created_at: float
    updated_at: float
    sample: int
    holdout: float
    seed: int
    min_cosine: float
    min_recall: float
    map_kinds: list[str] = Field(default_factory=list, description="the map families fitted and gated")
    labelled_queries: int = Field(0, description="labelled queries the gate used (0: the thresholds decided)")
    fit: dict[str, Any] | None = Field(None, description="figures of each map family's fit and held-out evaluation")
    gate: UpgradeGate | None = None
    calibration: dict[str, float] | None = None
    map_sha256: str | None = None
    error: str | None = None
    history: list[UpgradeEvent] = Field(default_factory=list)
    progress: UpgradeProgress | None = None


class UpgradeList(BaseModel):
    upgrades: list[UpgradeInfo]
