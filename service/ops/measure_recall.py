"""On-demand recall: stored documents as queries, each graph searched as live traffic would be,
every result compared with exact search, and the figures exported with `source="probe"`."""

import time
from dataclasses import replace

import numpy as np
from starlette.concurrency import run_in_threadpool

from index import Invalid, Query, StageRecall
from service import schemas
from service.engine import Engine
from service.ops.limits import check_ef, check_k, for_collection
from service.recall_estimator import PROBE
from service.request_kinds import request_kind


async def measure(engine: Engine, name: str, req: schemas.RecallRequest) -> schemas.RecallReport:
    collection = await engine.current(name)
    shape = request_kind(collection)
    limit = shape.max_probe_queries
    if limit is not None and req.queries > limit:
        raise Invalid(
            f"a multi-vector recall probe scores every document by brute-force MaxSim per query; at most "
            f"{limit} queries",
            code="too_many_queries",
        )
    check_k(for_collection(engine.settings, collection), req.k)
    check_ef(collection, req.ef)
    # One query per graph measured, validated by the collection before any work (dims, candidates).
    options = Query(k=req.k, ef=req.ef, filter=req.filter, candidates=req.candidates, probe=True)
    dims = shape.probe_dims(collection, req.dim)
    plans = [replace(options, dim=dim) for dim in dims]
    for query in plans:
        collection.check(query)
    started = time.perf_counter()
    queries = await collection.sample_queries(req.queries, req.seed)
    if len(queries) == 0:
        raise Invalid(f"collection {name!r} is empty: add documents before measuring recall", code="empty_collection")
    stages: list[schemas.RecallStage] = []
    search_ms: dict[str, float] = {}
    for plan in plans:
        t0 = time.perf_counter()
        result = await collection.search(replace(plan, queries=queries))
        search_ms[collection.index_name(result.dim)] = (time.perf_counter() - t0) * 1e3 / len(queries)
        if result.probe is None:  # the filter left few documents: the search was exact, recall is 1
            continue
        measured = await run_in_threadpool(engine.recall.evaluate, collection.backend, result.probe, PROBE)
        stages += [_stage(s) for s in measured if s.values]
    return schemas.RecallReport(
        queries=len(queries), k=req.k, stages=stages, search_ms=search_ms, took_ms=(time.perf_counter() - started) * 1e3
    )


def _stage(s: StageRecall) -> schemas.RecallStage:
    values = np.asarray(s.values)
    return schemas.RecallStage(
        index=s.index,
        stage=s.stage,
        k=s.k,
        ef=s.ef,
        candidates=s.candidates,
        recall=float(values.mean()),
        recall_min=float(values.min()),
        recall_p10=float(np.quantile(values, 0.1)),
        queries=len(values),
    )
