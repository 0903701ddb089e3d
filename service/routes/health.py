"""Liveness, readiness and the Prometheus scrape endpoint."""

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from service.engine import Engine
from service.errors import error_response
from service.routes import ERRORS, get_engine

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Collections are loaded and replayed (503 before)", responses={503: ERRORS[503]})
async def readyz(engine: Engine = Depends(get_engine)) -> JSONResponse:
    """200 once start-up is done, with the collections that could not be opened (`failed`:
    name → reason); 503 while loading, or with the reason start-up could not complete."""
    if engine.fatal is not None:
        return error_response(503, "start_failed", f"vecnest could not start: {engine.fatal}")
    if not engine.ready:
        return error_response(503, "not_ready", "loading collections and models")
    failed = engine.catalog.failed() if engine.catalog else {}
    names = await run_in_threadpool(engine.catalog.names)  # a shared engine's list: a network call
    return JSONResponse({"status": "ready", "collections": len(names), "failed": failed})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(engine: Engine = Depends(get_engine)) -> Response:
    # Off the event loop: on a shared backend the collection gauges call the engine (up to its
    # timeout each while it is away), and every other request would wait for the scrape.
    return Response(await run_in_threadpool(engine.metrics.render), media_type=CONTENT_TYPE_LATEST)
