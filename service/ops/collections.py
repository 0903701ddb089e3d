"""Collections: create (dense with Matryoshka dims, elasticizer, layers; or multi-vector), describe,
update the recall policy, drop, refit.

One create path for both kinds: the request is checked for its kind, the model (if any) is
loaded and checked against the dims given, and a `Manifest` is built; the index's one factory
validates it and makes the collection.
"""

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from index import (
    MAX_ROTATION_DIM,
    Elasticizer,
    HnswParams,
    Invalid,
    Manifest,
    MultiVectorConfig,
    RecallPolicy,
    check_metric,
)
from service import schemas
from service.async_collection import AsyncCollection
from service.encoders import Encoder, check_layers
from service.engine import Engine

# Fields a multi-vector collection refuses (it scores unit tokens by MaxSim through one FDE graph).
_DENSE_ONLY = ("dim", "dims", "elasticizer", "rerank_factor")


async def create(engine: Engine, req: schemas.CollectionCreate) -> schemas.CollectionInfo:
    engine.require_ready()
    check_metric(req.metric)
    multivector = req.multivector is not None
    if multivector:
        wrong = [f for f in _DENSE_ONLY if getattr(req, f) is not None]
        if "metric" in req.model_fields_set and req.metric != "cosine":
            wrong.append("metric")
        if wrong:
            raise Invalid(
                f"{', '.join(wrong)} apply to dense collections; a multi-vector collection scores unit "
                f"tokens by MaxSim (set multivector.token_dim for token matrices without a model)",
                code="multivector_collection",
            )
    dim_field = "token_dim" if multivector else "dim"
    given_dim = req.multivector.token_dim if req.multivector is not None else req.dim
    encoder = await _encoder(engine, req, given_dim, dim_field)
    dim = encoder.dim if encoder is not None else given_dim
    assert dim is not None
    manifest = (
        _multivector_manifest(engine, req, encoder, dim) if multivector else _dense_manifest(engine, req, encoder, dim)
    )
    collection = await engine.create_collection(manifest)
    engine.embedder.attach(collection.backend, encoder)
    return info(collection, engine)


async def _encoder(engine: Engine, req: schemas.CollectionCreate, given_dim: int | None, field: str) -> Encoder | None:
    """The collection's model: the one named, or the default when no dim is given; None for a
    collection of vectors (or token matrices) only."""
    if req.model is None and given_dim is not None:
        if req.layers is not None:
            what = "token matrices" if req.multivector is not None else "vectors"
            raise Invalid(f"layers needs a model; this collection holds {what} only", code="invalid_layers")
        return None
    model = req.model or engine.settings.default_model
    encoder = await engine.embedder.load(model)
    if given_dim is not None and given_dim != encoder.dim:
        raise Invalid(
            f"{field} {given_dim} does not match model {model!r} ({encoder.dim} dims)", code="wrong_dimension"
        )
    check_layers(encoder, req.layers)
    if req.multivector is not None and not getattr(encoder, "gives_tokens", True):
        raise Invalid(
            f"model {model!r} gives one vector per text; a multi-vector collection needs token embeddings "
            f"(use the model without its runtime suffix)",
            code="runtime_unsupported",
        )
    return encoder


def _encoder_info(engine: Engine, req: schemas.CollectionCreate, encoder: Encoder | None) -> dict[str, Any] | None:
    if encoder is None:
        return None
    info: dict[str, Any] = {
        "model": req.model or engine.settings.default_model,
        "dim": encoder.dim,
        "layers": req.layers,
    }
    if req.multivector is not None:
        info["tokens"] = True
    else:
        info["matryoshka_dims"] = encoder.matryoshka_dims
    return info


def _dense_manifest(engine: Engine, req: schemas.CollectionCreate, encoder: Encoder | None, dim: int) -> Manifest:
    return Manifest(
        name=req.name,
        dim=dim,
        metric=req.metric,
        hnsw=_hnsw(engine, req.hnsw),
        created_at=_now(),
        dims=req.dims,
        elasticizer=_elasticizer(req.elasticizer, encoder, dim),
        rerank_factor=req.rerank_factor,
        encoder=_encoder_info(engine, req, encoder),
        recall=recall_policy(req, RecallPolicy()),
        limits=_limits(req.limits),
    )


def _multivector_manifest(
    engine: Engine, req: schemas.CollectionCreate, encoder: Encoder | None, token_dim: int
) -> Manifest:
    """Token-set documents: the FDE is indexed, MaxSim re-ranks. Text is embedded token by token."""
    mv = req.multivector
    assert mv is not None
    config = MultiVectorConfig(**{**mv.model_dump(), "token_dim": token_dim}).check()
    return Manifest(
        name=req.name,
        dim=config.dim,
        metric="ip",
        hnsw=_hnsw(engine, req.hnsw),
        created_at=_now(),
        multivector=config,
        encoder=_encoder_info(engine, req, encoder),
        recall=recall_policy(req, RecallPolicy()),
        limits=_limits(req.limits),
    )


def _limits(req: schemas.CollectionLimits | None) -> dict[str, int]:
    return {k: v for k, v in req.model_dump().items() if v is not None} if req is not None else {}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def recall_policy(req: schemas.RecallPolicyIn, current: RecallPolicy) -> RecallPolicy:
    """`current` with the fields `req` sets (an explicit null clears target or sample rate)."""
    given = req.model_fields_set
    policy = RecallPolicy(
        target=req.target_recall if "target_recall" in given else current.target,
        sample_rate=req.recall_sample_rate if "recall_sample_rate" in given else current.sample_rate,
        ef_min=req.ef_min if req.ef_min is not None else current.ef_min,
        ef_max=req.ef_max if req.ef_max is not None else current.ef_max,
    )
    return policy.check()


async def update(engine: Engine, name: str, req: schemas.CollectionUpdate) -> schemas.CollectionInfo:
    """Change the recall policy (the controller follows it) and, when given, replace the limits;
    both are saved at once. No cut-over or rollback runs meanwhile: each carries the serving
    generation's settings over to the one that takes its place."""
    engine.require_ready()

    async def apply(collection: AsyncCollection) -> AsyncCollection:
        policy = recall_policy(req, collection.recall_policy)  # validated before anything is saved
        if req.limits is not None:
            await collection.set_limits(_limits(req.limits))
        await collection.set_recall_policy(policy)
        return collection

    async with engine.upgrades.lifecycle(name):
        # serving(): on a shared backend, a copy another process made stale is read again
        collection = await engine.upgrades.serving(name, apply)
    return info(collection, engine)


def _hnsw(engine: Engine, h: schemas.HnswConfig | None) -> HnswParams:
    s, h = engine.settings, h or schemas.HnswConfig()
    return HnswParams(
        m=h.m or s.hnsw_m,
        ef_construction=h.ef_construction or s.hnsw_ef_construction,
        ef_search=h.ef_search or s.hnsw_ef_search,
    )


def _elasticizer(cfg: schemas.ElasticizerConfig | None, encoder: Encoder | None, dim: int) -> Elasticizer:
    cfg = cfg or schemas.ElasticizerConfig()
    kind = cfg.kind
    if kind == "auto":  # a Matryoshka-trained model truncates natively; anything else gets PCA
        kind = "none" if (encoder is not None and encoder.matryoshka_dims) or dim > MAX_ROTATION_DIM else "pca"
    return Elasticizer(kind=kind, sample=cfg.sample, seed=cfg.seed, fit_at=cfg.fit_at)


def info(collection: AsyncCollection, engine: Engine) -> schemas.CollectionInfo:
    m, stats = collection.manifest, collection.stats()
    encoder = m.encoder or {}
    backend = collection.backend
    return schemas.CollectionInfo(
        name=m.name,
        model=encoder.get("model"),
        layers=encoder.get("layers"),
        dim=m.dim,
        dims=collection.dims,
        metric=m.metric,
        hnsw={"m": m.hnsw.m, "ef_construction": m.hnsw.ef_construction, "ef_search": m.hnsw.ef_search},
        elasticizer=vars(m.elasticizer),
        rotation=vars(m.rotation) if m.rotation else None,
        rerank_factors={str(d): collection.rerank_factor(d) for d in collection.dims if d < m.dim},
        created_at=m.created_at,
        documents=stats["documents"],
        index={k: v for k, v in stats.items() if k != "documents"},
        multivector=m.multivector.to_json() if m.multivector else None,
        recall={
            "target_recall": m.recall.target,
            "sample_rate": engine.recall.rate(backend),
            "ef_min": m.recall.ef_min,
            "ef_max": m.recall.ef_max,
            "ef_search": {collection.index_name(d): collection.ef_search(d) for d in collection.dims},
            **engine.recall.summary(backend),
        },
        limits=m.limits,
    )


def list_all(engine: Engine, visible: Callable[[str], bool] = lambda name: True) -> schemas.CollectionList:
    """Every collection (and every one that failed to open) for which `visible(name)` holds:
    a key limited to some collections sees only those."""
    catalog = engine.require_ready()
    return schemas.CollectionList(
        collections=[info(AsyncCollection(c), engine) for c in engine.collections() if visible(c.name)],
        failed=[
            schemas.FailedCollection(name=name, reason=reason)
            for name, reason in sorted(catalog.failed().items())
            if visible(name)
        ],
    )


def describe(engine: Engine, name: str) -> schemas.CollectionInfo:
    return info(engine.collection(name), engine)


async def drop(engine: Engine, name: str) -> None:
    await engine.drop_collection(name)


async def refit(engine: Engine, name: str, req: schemas.RefitRequest) -> schemas.RefitResponse:
    """Fit the PCA rotation on the collection's own vectors now and rebuild its low-dim graphs."""
    engine.settings.require_maintenance("refit the rotation")
    collection = await engine.current(name)
    start = time.perf_counter()
    record = await collection.fit_rotation(req.sample, req.seed)
    return schemas.RefitResponse(rotation=vars(record), took_ms=(time.perf_counter() - start) * 1e3)
