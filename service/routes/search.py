"""Search: one query, or a batch of queries in one request."""

import time

from fastapi import APIRouter, Depends

from service import schemas
from service.engine import Engine
from service.ops import search as ops
from service.routes import ERRORS, JsonRoute, get_engine

router = APIRouter(prefix="/v1/collections/{name}", tags=["search"], responses=ERRORS, route_class=JsonRoute)


@router.post("/search", response_model=schemas.SearchResponse, response_model_exclude_none=True)
async def search(name: str, body: schemas.SearchRequest, engine: Engine = Depends(get_engine)):
    """Top-k documents for a text `query` or a `vector`; scores are exact and higher is better
    (cosine similarity, inner product, or minus the Euclidean distance). `dim` routes to a
    Matryoshka index whose shortlist is re-scored at full dim (`rerank: false` keeps its scores)."""
    (response,) = await ops.search(engine, name, [body])
    return response


@router.post("/search/batch", response_model=schemas.BatchSearchResponse, response_model_exclude_none=True)
async def search_batch(name: str, body: schemas.BatchSearchRequest, engine: Engine = Depends(get_engine)):
    """Many searches in one request; text queries are embedded together."""
    start = time.perf_counter()
    results = await ops.search(engine, name, body.searches)
    return schemas.BatchSearchResponse(results=results, took_ms=(time.perf_counter() - start) * 1e3)
