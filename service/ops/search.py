"""Search: validate every request first, embed text queries together, search, shape the results.

One path for both kinds of collection: a request becomes an `index.Query`, the collection
validates its options (and its vectors or token matrices, when given) before any text is
embedded, and its kind decides what text becomes (a vector, or a token matrix per query). While
an encoder upgrade serves mapped queries, new-model text queries go through the upgrade's
mixed search instead.
"""

import time
from dataclasses import replace
from typing import Any

import numpy as np

from index import Fusion, Invalid, Query, SearchResult
from service import schemas
from service.async_collection import AsyncCollection
from service.engine import Engine
from service.ops.limits import (
    ResponseBudget,
    check_count,
    check_ef,
    check_k,
    check_shortlists,
    check_texts,
    for_collection,
)
from service.request_kinds import request_kind
from service.settings import Settings
from service.upgrade_manager import Serving


async def search(engine: Engine, name: str, requests: list[schemas.SearchRequest]) -> list[schemas.SearchResponse]:
    return await engine.upgrades.serving(name, lambda collection: _search(engine, collection, requests))


async def _search(
    engine: Engine, collection: AsyncCollection, requests: list[schemas.SearchRequest]
) -> list[schemas.SearchResponse]:
    s = for_collection(engine.settings, collection)
    check_count(len(requests), s.max_batch_queries, "searches", "too_many_queries")
    check_texts(s, ((f"search {i} query", r.query) for i, r in enumerate(requests) if r.query is not None))
    queries = [to_query(s, collection, r) for r in requests]
    check_shortlists(s, [collection.shortlist(q) for q in queries])
    started = time.perf_counter()
    serving = engine.upgrades.serving_info(collection)
    # Only dense searches go through an upgrade's map: a hybrid one's dense part uses the serving
    # model's own index, and a keyword one embeds nothing.
    mapped = {
        i
        for i, r in enumerate(requests)
        if r.query is not None and r.mode == "dense" and serving and serving.queries in ("mapped", "blended")
    }
    queries = await _embed(engine, collection, requests, queries, mapped)
    # A blend starts from each text's previous-model query: embed those texts with it too.
    anchors = (
        await _previous_model_queries(engine, collection, requests, sorted(mapped))
        if serving and serving.queries == "blended"
        else {}
    )
    budget = ResponseBudget(s)
    responses: list[schemas.SearchResponse] = [None] * len(requests)  # type: ignore[list-item]
    # Searches that differ only in their queries run as one call: one graph call, one store read
    # for the re-ranking, one scan for exact searches.
    # (Keyword and hybrid searches carry their own text: each runs alone.)
    groups: dict[tuple[bool, Query | int], list[int]] = {}
    for i, query in enumerate(queries):
        groups.setdefault((i in mapped, replace(query, queries=None) if query.mode == "dense" else i), []).append(i)
    for (through_map, _), idx in groups.items():
        query = queries[idx[0]]
        if len(idx) > 1:
            query = replace(query, queries=request_kind(collection).stack([queries[i].queries for i in idx]))
        query = replace(query, probe=query.mode == "dense" and engine.recall.should_sample(collection.backend))
        t0 = time.perf_counter()
        if through_map:
            old_queries = np.stack([anchors[i] for i in idx]) if anchors else None
            result = await engine.upgrades.mixed_search(collection, query, old_queries)
        elif query.mode != "dense":  # one text per query: nothing to merge with other requests
            result = await collection.search(query)
        else:
            result = await engine.searches.search(collection.backend, query, request_kind(collection).stack)
        took = (time.perf_counter() - t0) * 1e3 / len(idx)
        _record(engine, collection, result, len(idx), through_map)
        budget.spend(
            sum(m.nbytes + (12 * m.vector.size if m.vector is not None else 0) for ms in result.matches for m in ms)
        )
        for i, matches in zip(idx, result.matches):
            responses[i] = _response(matches, "text" in requests[i].include, took)
    _annotate(engine, collection, requests, responses, serving, started)
    return responses


def to_query(s: Settings, collection: AsyncCollection, r: schemas.SearchRequest) -> Query:
    """The request as an `index.Query` (its vectors or tokens, when given; its text is embedded
    later), after every check: what this kind of collection accepts, k, and the collection's own
    rules (dims, funnel, candidates, the vectors' shape)."""
    shape = request_kind(collection)
    given = shape.given_query(collection, r)  # the other kind's fields are refused here
    if r.mode == "keyword" and given is not None:
        raise Invalid("a keyword search reads query text, not vectors", code="invalid_mode")
    if (r.query is None) == (given is None):
        raise Invalid(f"give exactly one of query (text) or {shape.alternative}", code="missing_query")
    if r.query is not None and not r.query.strip():
        raise Invalid("query text is empty", code="empty_text")
    if r.layers is not None and given is not None:
        raise Invalid("layers applies to text queries only", code="invalid_layers")
    check_k(s, r.k)
    check_ef(collection, r.ef)
    keyword_text = r.keyword_query or r.query
    query = Query(
        queries=None if given is None else shape.one(given),
        k=r.k,
        dim=r.dim,
        ef=r.ef,
        filter=r.filter,
        exact=r.exact,
        rerank=r.rerank,
        rerank_factor=r.rerank_factor,
        candidates=r.candidates,
        ball_carving=r.ball_carving,
        include=shape.includable(r.include),
        mode=r.mode,
        texts=None if r.mode == "dense" or keyword_text is None else [keyword_text],
        fusion=None if r.fusion is None else Fusion(**r.fusion.model_dump()),
    )
    if r.mode == "dense" and r.keyword_query is not None:
        raise Invalid("keyword_query applies to keyword and hybrid searches (mode)", code="invalid_mode")
    collection.check(query)
    return query


async def _embed(
    engine: Engine,
    collection: AsyncCollection,
    requests: list[schemas.SearchRequest],
    queries: list[Query],
    mapped: set[int],
) -> list[Query]:
    """Every query with its vectors (or token matrices): text queries sharing a model and layers
    are embedded together; those in `mapped` with the upgrade's new model."""
    groups: dict[tuple[bool, int | None], list[int]] = {}
    for i, r in enumerate(requests):
        if r.query is not None and r.mode != "keyword":
            groups.setdefault((i in mapped, r.layers), []).append(i)
    out = list(queries)
    for (through_map, layers), idx in groups.items():
        texts = [requests[i].query or "" for i in idx]
        if through_map:
            encoder = engine.upgrades.new_encoder(collection.name)
            embedded: Any = await engine.embedder.embed(collection.name, encoder, texts, "query")
        else:
            embedded = await engine.embedder.embed_for(collection.backend, texts, "query", layers)
        for i, x in zip(idx, embedded):
            out[i] = replace(queries[i], queries=request_kind(collection).one(x))
    return out


async def _previous_model_queries(
    engine: Engine, collection: AsyncCollection, requests: list[schemas.SearchRequest], idx: list[int]
) -> dict[int, np.ndarray]:
    """Request index → `(d_old,)` query vector by the collection's serving (previous) model."""
    if not idx:
        return {}
    texts = [requests[i].query or "" for i in idx]
    embedded = await engine.embedder.embed_for(collection.backend, texts, "query", None)
    return dict(zip(idx, np.asarray(embedded, np.float32)))


def _record(engine: Engine, collection: AsyncCollection, result: SearchResult, n: int, through_map: bool) -> None:
    """Metrics, and the recall sample: mapped searches are named `<dim>@map`, and the ef
    controller leaves them out (the map, not ef, decides what they find)."""
    index = collection.index_name(result.dim) + ("@map" if through_map else "")
    engine.metrics.observe_stages(collection.name, index, result.timings)
    engine.metrics.searches.labels(collection.name, index, result.strategy).inc(n)
    if result.probe is not None:
        probe = replace(result.probe, index=index, pinned=True) if through_map else result.probe
        engine.recall.submit(collection.backend, probe)


def _response(matches: list, with_text: bool, took_ms: float) -> schemas.SearchResponse:
    # Built without validation (model_construct): every field comes from the collection, typed;
    # validating ten hits per search cost as much as the search (a batch of 100: 3 ms). A hit
    # holds only what was asked for (`include`): the others are left out of the answer anyway.
    hits: list[schemas.SearchHit] = []
    for m in matches:
        hit: schemas.SearchHit = {"id": m.id, "score": float(m.score)}
        if with_text and m.text is not None:
            hit["text"] = m.text
        if m.metadata is not None:
            hit["metadata"] = m.metadata
        if m.vector is not None:
            hit["vector"] = m.vector.tolist()
        hits.append(hit)
    return schemas.SearchResponse.model_construct(results=hits, took_ms=took_ms, upgrade=None, truncated=None)


def _annotate(
    engine: Engine,
    collection: AsyncCollection,
    requests: list[schemas.SearchRequest],
    responses: list[schemas.SearchResponse],
    serving: Serving | None,
    started: float,
) -> None:
    """How text queries were served during an upgrade; text the model read only the start of; a
    single search reports its whole time, encoding included."""
    texts = [i for i, r in enumerate(requests) if r.query is not None and r.mode != "keyword"]
    if texts:
        encoder = engine.embedder.of(collection.backend)
        for i in texts:
            if serving is not None:
                responses[i].upgrade = schemas.UpgradeServing(
                    upgrade=serving.upgrade, state=serving.state, queries=serving.queries, reason=serving.reason
                )
                engine.metrics.upgrade_queries.labels(collection.name, serving.queries).inc()
            if encoder is not None and len(requests[i].query or "") > encoder.max_chars:
                responses[i].truncated = True
    if len(requests) == 1:
        responses[0].took_ms = (time.perf_counter() - started) * 1e3
