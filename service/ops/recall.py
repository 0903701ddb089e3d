"""On-demand recall: stored documents as queries, each graph searched as live traffic would be,
every result compared with exact search, and the figures exported with `source="probe"`."""

import time

import numpy as np

from index import MultiVectorCollection
from index.errors import Invalid
from service import schemas
from service.engine import Engine
from service.recall import PROBE

MAX_MULTIVECTOR_QUERIES = 200  # brute-force MaxSim: ~0.4 s per query over 50k short documents


async def measure(engine: Engine, name: str, req: schemas.RecallRequest) -> schemas.RecallReport:
    collection = engine.collection(name)
    multivector = isinstance(collection, MultiVectorCollection)
    if multivector and req.dim is not None:
        raise Invalid(
            f"collection {name!r} holds multi-vector documents: it has one FDE graph and no dims",
            code="multivector_collection",
        )
    if multivector and req.queries > MAX_MULTIVECTOR_QUERIES:
        raise Invalid(
            f"a multi-vector recall probe scores every document by brute-force MaxSim per query; at most "
            f"{MAX_MULTIVECTOR_QUERIES} queries",
            code="too_many_queries",
        )
    if not multivector and req.candidates is not None:
        raise Invalid("candidates applies to multi-vector collections", code="dense_collection")
    if req.dim is not None and req.dim not in collection.dims:
        raise Invalid(
            f"dim {req.dim} is not indexed in collection {name!r}; valid dims: {collection.dims}", code="invalid_dim"
        )
    if req.k > engine.settings.max_k:
        raise Invalid(f"k={req.k} exceeds the limit of {engine.settings.max_k}", code="k_too_large")
    started = time.perf_counter()
    queries = await engine.run(collection.sample_queries, req.queries, req.seed)
    if len(queries) == 0:
        raise Invalid(f"collection {name!r} is empty: add documents before measuring recall", code="empty_collection")
    stages, search_ms = [], {}
    for dim in [collection.manifest.dim] if multivector else ([req.dim] if req.dim else collection.dims):
        t0 = time.perf_counter()
        if multivector:
            result = await engine.run(
                collection.search_tokens,
                queries,
                req.k,
                candidates=req.candidates,
                ef=req.ef,
                filter=req.filter,
                probe=True,
            )
        else:
            result = await engine.run(
                collection.search, queries, req.k, dim=dim, ef=req.ef, filter=req.filter, probe=True
            )
        index = collection.index_name(dim)
        search_ms[index] = (time.perf_counter() - t0) * 1e3 / len(queries)
        if result.probe is None:  # the filter left few documents: the search was exact, recall is 1
            continue
        measured = await engine.run(engine.recall.evaluate, collection, result.probe, PROBE)
        stages += [_stage(s) for s in measured if s.values]
    return schemas.RecallReport(
        queries=len(queries), k=req.k, stages=stages, search_ms=search_ms, took_ms=(time.perf_counter() - started) * 1e3
    )


def _stage(s) -> schemas.RecallStage:
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
