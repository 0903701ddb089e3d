"""Collections: create (dense with Matryoshka dims, elasticizer, layers; or multi-vector), describe,
drop, refit."""

import time
from datetime import UTC, datetime

from index import Collection, HnswParams, Manifest
from index.elastic import MAX_ROTATION_DIM, check_dims
from index.errors import Invalid
from index.fde import MultiVectorConfig
from index.manifest import Elasticizer, RecallPolicy
from index.vectors import check_metric
from service import schemas
from service.engine import Engine


async def create(engine: Engine, req: schemas.CollectionCreate) -> schemas.CollectionInfo:
    catalog = engine.require_ready()
    check_metric(req.metric)
    if req.multivector is not None:
        return await _create_multivector(engine, req)
    encoder = None
    model = req.model or engine.settings.default_model
    if req.model is not None or req.dim is None:
        encoder = await engine.load_encoder(model)
        if req.dim is not None and req.dim != encoder.dim:
            raise Invalid(f"dim {req.dim} does not match model {model!r} ({encoder.dim} dims)", code="wrong_dimension")
        encoder.check_layers(req.layers)
    elif req.layers is not None:
        raise Invalid("layers needs a model; this collection holds vectors only", code="invalid_layers")
    dim = encoder.dim if encoder else req.dim
    dims = check_dims(req.dims, dim)
    manifest = Manifest(
        name=req.name,
        dim=dim,
        metric=req.metric,
        hnsw=_hnsw(engine, req.hnsw),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        dims=dims,
        elasticizer=_elasticizer(req.elasticizer, encoder, dim),
        rerank_factor=req.rerank_factor,
        encoder={"model": model, "dim": dim, "layers": req.layers, "matryoshka_dims": encoder.matryoshka_dims}
        if encoder
        else None,
        recall=recall_policy(req, RecallPolicy()),
    )
    collection = await engine.run(catalog.create, manifest)
    engine.attach_encoder(collection, encoder)
    return info(collection, engine)


async def _create_multivector(engine: Engine, req: schemas.CollectionCreate) -> schemas.CollectionInfo:
    """Token-set documents: the FDE is indexed, MaxSim re-ranks. Text is embedded token by token."""
    mv = req.multivector
    dense_only = [f for f in ("dim", "dims", "elasticizer", "rerank_factor") if getattr(req, f) is not None]
    if "metric" in req.model_fields_set and req.metric != "cosine":
        dense_only.append("metric")
    if dense_only:
        raise Invalid(
            f"{', '.join(dense_only)} apply to dense collections; a multi-vector collection scores unit "
            f"tokens by MaxSim (set multivector.token_dim for token matrices without a model)",
            code="multivector_collection",
        )
    encoder = None
    model = req.model or engine.settings.default_model
    if req.model is not None or mv.token_dim is None:
        encoder = await engine.load_encoder(model)
        if mv.token_dim is not None and mv.token_dim != encoder.dim:
            raise Invalid(
                f"token_dim {mv.token_dim} does not match model {model!r} ({encoder.dim} dims)", code="wrong_dimension"
            )
        encoder.check_layers(req.layers)
    elif req.layers is not None:
        raise Invalid("layers needs a model; this collection holds token matrices only", code="invalid_layers")
    token_dim = encoder.dim if encoder else mv.token_dim
    config = MultiVectorConfig(
        token_dim=token_dim,
        repetitions=mv.repetitions,
        simhash_bits=mv.simhash_bits,
        projection_dim=mv.projection_dim,
        final_dim=mv.final_dim,
        seed=mv.seed,
        fill_empty=mv.fill_empty,
        max_tokens=mv.max_tokens,
    ).check()
    manifest = Manifest(
        name=req.name,
        dim=config.dim,
        metric="ip",
        hnsw=_hnsw(engine, req.hnsw),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        multivector=config,
        encoder={"model": model, "dim": token_dim, "layers": req.layers, "tokens": True} if encoder else None,
        recall=recall_policy(req, RecallPolicy()),
    )
    collection = await engine.run(engine.require_ready().create, manifest)
    engine.attach_encoder(collection, encoder)
    return info(collection, engine)


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
    """Change the recall policy; it is saved at once and the controller follows it."""
    collection = engine.collection(name)
    await engine.run(collection.set_recall_policy, recall_policy(req, collection.recall_policy))
    return info(collection, engine)


def _hnsw(engine: Engine, h: schemas.HnswConfig | None) -> HnswParams:
    s, h = engine.settings, h or schemas.HnswConfig()
    return HnswParams(
        m=h.m or s.hnsw_m,
        ef_construction=h.ef_construction or s.hnsw_ef_construction,
        ef_search=h.ef_search or s.hnsw_ef_search,
    )


def _elasticizer(cfg: schemas.ElasticizerConfig | None, encoder, dim: int) -> Elasticizer:
    cfg = cfg or schemas.ElasticizerConfig()
    kind = cfg.kind
    if kind == "auto":  # a Matryoshka-trained model truncates natively; anything else gets PCA
        kind = "none" if (encoder is not None and encoder.matryoshka_dims) or dim > MAX_ROTATION_DIM else "pca"
    return Elasticizer(kind=kind, sample=cfg.sample, seed=cfg.seed, fit_at=cfg.fit_at)


def info(collection: Collection, engine: Engine) -> schemas.CollectionInfo:
    m, stats = collection.manifest, collection.stats()
    encoder = m.encoder or {}
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
            "sample_rate": engine.recall.rate(collection),
            "ef_min": m.recall.ef_min,
            "ef_max": m.recall.ef_max,
            "ef_search": {collection.index_name(d): collection.ef_search(d) for d in collection.dims},
            **engine.recall.summary(collection),
        },
    )


def list_all(engine: Engine) -> schemas.CollectionList:
    catalog = engine.require_ready()
    return schemas.CollectionList(
        collections=[info(c, engine) for c in engine.collections()],
        failed=[
            schemas.FailedCollection(name=name, reason=reason) for name, reason in sorted(catalog.failed().items())
        ],
    )


def describe(engine: Engine, name: str) -> schemas.CollectionInfo:
    return info(engine.collection(name), engine)


async def drop(engine: Engine, name: str) -> None:
    """Drop a collection, serving or failed (one that could not be opened has no upgrade to stop)."""
    catalog = engine.require_ready()
    if name not in catalog.failed():
        engine.collection(name)  # 404 before touching any upgrade
        await engine.upgrades.forget(name)
    await engine.run(catalog.drop, name)
    engine.detach(name)


async def refit(engine: Engine, name: str, req: schemas.RefitRequest) -> schemas.RefitResponse:
    """Fit the PCA rotation on the collection's own vectors now and rebuild its low-dim graphs."""
    collection = engine.collection(name)
    if collection.manifest.multivector is not None:
        raise Invalid(
            f"collection {name!r} holds multi-vector documents; rotations apply to dense vectors",
            code="multivector_collection",
        )
    if min(collection.dims) == collection.manifest.dim:
        raise Invalid(
            f"collection {name!r} indexes only its full dim; declare lower dims to use a rotation", code="no_low_dims"
        )
    if collection.manifest.elasticizer.kind != "pca":
        raise Invalid(
            f"collection {name!r} truncates natively (elasticizer {collection.manifest.elasticizer.kind!r})",
            code="no_elasticizer",
        )
    start = time.perf_counter()
    record = await engine.run(collection.fit_rotation, req.sample, req.seed)
    return schemas.RefitResponse(rotation=vars(record), took_ms=(time.perf_counter() - start) * 1e3)
