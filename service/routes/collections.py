"""Collections: create, list, describe, drop, refit the elasticizer."""

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from service import schemas
from service.auth import principal_of, require_collection
from service.engine import Engine
from service.ops import collections as ops
from service.ops import measure_recall as recall_ops
from service.routes import ERRORS, JsonRoute, get_engine

router = APIRouter(prefix="/v1/collections", tags=["collections"], responses=ERRORS, route_class=JsonRoute)


@router.post("", status_code=201, response_model=schemas.CollectionInfo)
async def create_collection(request: Request, body: schemas.CollectionCreate, engine: Engine = Depends(get_engine)):
    """Create a collection. Give `model` (or nothing, for the default model) to embed text, or
    `dim` without `model` for a vector-only collection. `dims` adds Matryoshka indexes; a PCA
    elasticizer (the default for models not trained as Matryoshka) makes their prefixes good."""
    require_collection(request, body.name)  # a key limited to collections creates only those
    return await ops.create(engine, body)


@router.get("", response_model=schemas.CollectionList)
async def list_collections(request: Request, engine: Engine = Depends(get_engine)):
    """Every collection the key may use, and those that failed to open (with the reason)."""
    # Off the event loop: on a shared backend the list and each collection's stats are calls to
    # the engine (up to its timeout each while it is away).
    return await run_in_threadpool(ops.list_all, engine, principal_of(request).may_use)


@router.get("/{name}", response_model=schemas.CollectionInfo)
async def describe_collection(name: str, engine: Engine = Depends(get_engine)):
    return await run_in_threadpool(ops.describe, engine, name)  # engine calls, as above


@router.patch("/{name}", response_model=schemas.CollectionInfo)
async def update_collection(name: str, body: schemas.CollectionUpdate, engine: Engine = Depends(get_engine)):
    """Change the recall policy: `target_recall` (null stops tuning and restores the default
    ef), `recall_sample_rate`, `ef_min`, `ef_max`. Fields left out keep their value."""
    return await ops.update(engine, name, body)


@router.post("/{name}/recall", response_model=schemas.RecallReport)
async def measure_recall(name: str, body: schemas.RecallRequest | None = None, engine: Engine = Depends(get_engine)):
    """Measure recall now: `queries` stored documents (a seeded sample) are searched in each graph
    as live searches would be and compared with exact search. The figures are returned and
    exported as `vecnest_recall{source="probe"}`. A stored document is its own nearest
    neighbour, so this measures the index, not a query distribution."""
    return await recall_ops.measure(engine, name, body or schemas.RecallRequest())


@router.delete("/{name}", status_code=204)
async def drop_collection(name: str, engine: Engine = Depends(get_engine)):
    await ops.drop(engine, name)
    return Response(status_code=204)


@router.post("/{name}/elasticizer/refit", response_model=schemas.RefitResponse)
async def refit_elasticizer(name: str, body: schemas.RefitRequest | None = None, engine: Engine = Depends(get_engine)):
    """Fit the PCA rotation on a sample of the collection's own vectors (deterministic for a
    seed) and rebuild its low-dim indexes from the stored vectors; the model is not run.
    Searches keep being served by the old indexes until the new ones are swapped in."""
    return await ops.refit(engine, name, body or schemas.RefitRequest())
