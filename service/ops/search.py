"""Search: validate, embed text queries together, route to the requested dim, shape results."""

import time
from dataclasses import replace
from functools import partial

import numpy as np

from index import Collection, MultiVectorCollection, SearchResult
from index import upgrade as up
from index.errors import Invalid, NotFound
from index.multivector import DEFAULT_CANDIDATES
from service import schemas
from service.engine import Engine
from service.ops.limits import ResponseBudget, check_shortlists, check_texts
from service.ops.tokens import has_tokens, token_matrix


async def search(engine: Engine, name: str, requests: list[schemas.SearchRequest]) -> list[schemas.SearchResponse]:
    collection = engine.collection(name)
    try:
        return await _search(engine, name, collection, requests)
    except NotFound:
        # An upgrade's rollback or finalize closed the generation this search started on: the
        # collection itself is still there, so answer from the generation that serves now.
        current = engine.collection(name)
        if current is collection:
            raise
        return await _search(engine, name, current, requests)


async def _search(
    engine: Engine, name: str, collection: Collection, requests: list[schemas.SearchRequest]
) -> list[schemas.SearchResponse]:
    if len(requests) > engine.settings.max_batch_queries:
        raise Invalid(
            f"{len(requests)} searches in one request; the limit is {engine.settings.max_batch_queries}",
            code="too_many_queries",
        )
    check_texts(
        engine.settings, ((f"search {i} query", r.query) for i, r in enumerate(requests) if r.query is not None)
    )
    if isinstance(collection, MultiVectorCollection):
        return await search_multivector(engine, collection, requests)
    for r in requests:
        check_search(engine, collection, r)
    check_shortlists(engine.settings, [_shortlist(collection, r) for r in requests])
    budget = ResponseBudget(engine.settings)
    started = time.perf_counter()
    serving = upgrade_serving(engine, collection)
    mapped = [i for i, r in enumerate(requests) if r.query is not None and serving and serving.queries == "mapped"]
    vectors = await query_vectors(engine, collection, requests, skip=set(mapped))
    responses: list[schemas.SearchResponse | None] = [None] * len(requests)
    if mapped:
        live = engine.upgrades.live(name)
        encoded = await engine.encode(name, live.new_encoder, [requests[i].query for i in mapped], "query")
        for i, x in zip(mapped, encoded):
            vectors[i] = x
    # Searches that differ only in their vector run as one call: one graph call, one store
    # read for the re-ranking, and one scan for exact searches.
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(str(i in mapped) + r.model_dump_json(exclude={"query", "vector", "layers"}), []).append(i)
    for idx in groups.values():
        r = requests[idx[0]]
        fn = collection.search
        if idx[0] in mapped:
            fn = partial(up.mixed_search, collection, live.shadow, live.W, live.calibration)
        await run_group(
            engine,
            collection,
            idx,
            "text" in r.include,
            responses,
            budget,
            fn,
            np.stack([vectors[i] for i in idx]),
            r.k,
            dim=r.dim,
            ef=r.ef,
            filter=r.filter,
            exact=r.exact,
            rerank=r.rerank,
            rerank_factor=r.rerank_factor,
            include=tuple(r.include),
            mapped=idx[0] in mapped,
        )
    for i, r in enumerate(requests):
        if serving is not None and r.query is not None:
            responses[i].upgrade = serving
            engine.metrics.upgrade_queries.labels(name, serving.queries).inc()
    return _finish(engine, collection, requests, responses, started)


def _finish(
    engine: Engine,
    collection: Collection,
    requests: list[schemas.SearchRequest],
    responses: list[schemas.SearchResponse],
    started: float,
) -> list[schemas.SearchResponse]:
    """Flag text queries the model read only the start of; a single search reports its whole
    time, encoding included."""
    if any(r.query is not None for r in requests):
        encoder = engine.encoder_for(collection)
        for r, response in zip(requests, responses):
            if r.query is not None and encoder is not None and len(r.query) > encoder.max_chars:
                response.truncated = True
    if len(requests) == 1:
        responses[0].took_ms = (time.perf_counter() - started) * 1e3
    return responses


def _shortlist(collection: Collection, r: schemas.SearchRequest) -> int:
    """How many candidates a search will re-rank: `k · rerank_factor` for a low-dim funnel, or
    a multi-vector search's candidates (at least k); k otherwise."""
    if isinstance(collection, MultiVectorCollection):
        return max(r.k, r.candidates or DEFAULT_CANDIDATES)
    dim = r.dim or max(collection.dims)
    if r.rerank and dim < collection.manifest.dim:
        return r.k * (r.rerank_factor or collection.rerank_factor(dim))
    return r.k


def upgrade_serving(engine: Engine, collection: Collection) -> schemas.UpgradeServing | None:
    """How text queries are served while an upgrade of `collection` is before its cut-over."""
    live = engine.upgrades.live(collection.name)
    if live is None or live.record.state not in (up.FITTING, up.BACKFILLING) or live.shadow is collection:
        return None
    record = live.record
    if record.serves_mapped and live.W is not None:
        return schemas.UpgradeServing(
            upgrade=record.id, state=record.state, queries="mapped", reason=record.gate["reason"]
        )
    reason = record.gate["reason"] if record.gate else "the map is still being fitted: queries use the previous model"
    return schemas.UpgradeServing(upgrade=record.id, state=record.state, queries="previous_model", reason=reason)


async def run_group(
    engine: Engine,
    collection: Collection,
    idx: list[int],
    with_text: bool,
    responses: list,
    budget: ResponseBudget,
    search,
    *args,
    mapped: bool = False,
    **kwargs,
) -> None:
    """Run one grouped search call, record its metrics, maybe sample it for recall, and fill
    `responses[i]` for the requests `idx` it answered. `mapped`: new-model queries through an
    upgrade's map; metrics and recall probes name the index `<dim>@map`, and the ef controller
    leaves them out (the map, not ef, decides what they find)."""
    probe = engine.recall.should_sample(collection)
    t0 = time.perf_counter()
    result: SearchResult = await engine.run(search, *args, probe=probe, **kwargs)
    took = (time.perf_counter() - t0) * 1e3 / len(idx)
    index = collection.index_name(result.dim) + ("@map" if mapped else "")
    engine.metrics.observe_stages(collection.name, index, result.timings)
    engine.metrics.searches.labels(collection.name, index, result.strategy).inc(len(idx))
    if result.probe is not None:
        engine.recall.submit(collection, replace(result.probe, index=index, pinned=True) if mapped else result.probe)
    budget.spend(
        sum(
            m.nbytes + (12 * m.vector.size if m.vector is not None else 0)
            for matches in result.matches
            for m in matches
        )
    )
    for i, matches in zip(idx, result.matches):
        hits = [
            schemas.SearchHit(
                id=m.id,
                score=m.score,
                text=m.text if with_text else None,
                metadata=m.metadata,
                vector=m.vector.tolist() if m.vector is not None else None,
            )
            for m in matches
        ]
        responses[i] = schemas.SearchResponse(results=hits, took_ms=took)


def check_search(engine: Engine, collection: Collection, r: schemas.SearchRequest) -> None:
    if has_tokens(r) or r.candidates is not None or r.ball_carving is not None:
        raise Invalid(
            f"collection {collection.name!r} holds one vector per document; vectors, vectors_b64, "
            f"candidates and ball_carving are for multi-vector collections",
            code="dense_collection",
        )
    if (r.query is None) == (r.vector is None):
        raise Invalid("give exactly one of query (text) or vector", code="missing_query")
    if r.query is not None and not r.query.strip():
        raise Invalid("query text is empty", code="empty_text")
    if r.k > engine.settings.max_k:
        raise Invalid(f"k={r.k} exceeds the limit of {engine.settings.max_k}", code="k_too_large")
    if r.vector is not None and len(r.vector) != collection.manifest.dim:
        raise Invalid(
            f"query vector has {len(r.vector)} dimensions; collection {collection.name!r} expects "
            f"{collection.manifest.dim}",
            code="wrong_dimension",
        )
    if r.dim is not None and r.dim not in collection.dims:
        raise Invalid(
            f"dim {r.dim} is not indexed in collection {collection.name!r}; valid dims: {collection.dims}",
            code="invalid_dim",
        )
    if r.layers is not None and r.vector is not None:
        raise Invalid("layers applies to text queries only", code="invalid_layers")


async def search_multivector(
    engine: Engine, collection: MultiVectorCollection, requests: list[schemas.SearchRequest]
) -> list[schemas.SearchResponse]:
    """Query token matrices (given, or every token of the text) → FDE candidates → exact MaxSim."""
    token_dim = collection.config.token_dim
    queries: list = []
    for r in requests:
        dense_only = [f for f in ("vector", "dim", "rerank_factor") if getattr(r, f) is not None]
        if not r.rerank:
            dense_only.append("rerank")
        if dense_only:
            raise Invalid(
                f"{', '.join(dense_only)} apply to dense collections; search collection "
                f"{collection.name!r} with query (text) or vectors (a token matrix)",
                code="multivector_collection",
            )
        tokens = token_matrix(r, token_dim, "query")
        if (r.query is None) == (tokens is None):
            raise Invalid("give exactly one of query (text) or vectors (a token matrix)", code="missing_query")
        if r.query is not None and not r.query.strip():
            raise Invalid("query text is empty", code="empty_text")
        if r.k > engine.settings.max_k:
            raise Invalid(f"k={r.k} exceeds the limit of {engine.settings.max_k}", code="k_too_large")
        if r.layers is not None and tokens is not None:
            raise Invalid("layers applies to text queries only", code="invalid_layers")
        queries.append(tokens)
    check_shortlists(engine.settings, [_shortlist(collection, r) for r in requests])
    budget = ResponseBudget(engine.settings)
    started = time.perf_counter()
    await embed_queries(engine, collection, requests, queries, engine.encode_tokens, "vectors (a token matrix)")
    responses: list[schemas.SearchResponse | None] = [None] * len(requests)
    groups_by_params: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        groups_by_params.setdefault(
            r.model_dump_json(include={"k", "ef", "filter", "include", "exact", "candidates", "ball_carving"}), []
        ).append(i)
    for idx in groups_by_params.values():
        r = requests[idx[0]]
        await run_group(
            engine,
            collection,
            idx,
            "text" in r.include,
            responses,
            budget,
            collection.search_tokens,
            [queries[i] for i in idx],
            r.k,
            candidates=r.candidates,
            ef=r.ef,
            filter=r.filter,
            exact=r.exact,
            ball_carving=r.ball_carving,
            include=[i for i in r.include if i != "vector"],
        )
    return _finish(engine, collection, requests, responses, started)


async def query_vectors(
    engine: Engine, collection: Collection, requests: list[schemas.SearchRequest], skip: set[int] = frozenset()
) -> list[np.ndarray]:
    """One full-dim vector per request (but those in `skip`); text queries sharing `layers` are
    embedded together."""
    out: list[np.ndarray | None] = [
        np.asarray(r.vector, np.float32) if r.vector is not None else None for r in requests
    ]
    todo = [r if i not in skip else r.model_copy(update={"query": None}) for i, r in enumerate(requests)]
    await embed_queries(engine, collection, todo, out, engine.encode, "a vector")
    return out


async def embed_queries(
    engine: Engine, collection: Collection, requests: list[schemas.SearchRequest], out: list, encode, alternative: str
) -> None:
    """Fill `out[i]` for every text query with `encode(...)`; texts sharing `layers` go together."""
    pending = [i for i, r in enumerate(requests) if r.query is not None]
    if not pending:
        return
    encoder = engine.encoder_for(collection)
    if encoder is None:
        raise Invalid(f"collection {collection.name!r} has no model: search with {alternative}", code="vector_required")
    default_layers = collection.manifest.encoder.get("layers")
    groups: dict[int | None, list[int]] = {}
    for i in pending:
        groups.setdefault(requests[i].layers or default_layers, []).append(i)
    for layers, idx in groups.items():
        encoded = await encode(collection.name, encoder, [requests[i].query for i in idx], "query", layers)
        for i, x in zip(idx, encoded):
            out[i] = x
