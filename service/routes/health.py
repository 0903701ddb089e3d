"""Liveness, readiness and the Prometheus scrape endpoint."""

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from service.auth import ANONYMOUS, PRINCIPAL
from service.engine import Engine
from service.errors import error_response
from service.routes import ERRORS, get_engine

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Collections are loaded and replayed (503 before)", responses={503: ERRORS[503]})
async def readyz(request: Request, engine: Engine = Depends(get_engine)) -> JSONResponse:
    """200 once start-up is done, with the collections that could not be opened (`failed`:
    name → reason, those the caller may see; `failed_count`: all of them); 503 while loading,
    or with the reason start-up could not complete. The route is open (orchestrators probe it
    without a key), so on a server with keys a caller without one sees no collection's name or
    reason, and a key limited to collections sees only those, as in the collection list."""
    if engine.fatal is not None:
        return error_response(503, "start_failed", f"vecnest could not start: {engine.fatal}")
    if not engine.ready:
        return error_response(503, "not_ready", "loading collections and models")
    failed = engine.catalog.failed() if engine.catalog else {}
    names = await run_in_threadpool(engine.catalog.names)  # a shared engine's list: a network call
    keyed = request.app.state.keys.enabled
    caller = request.scope.get(PRINCIPAL) if keyed else ANONYMOUS
    shown = {name: reason for name, reason in failed.items() if caller is not None and caller.may_use(name)}
    return JSONResponse({"status": "ready", "collections": len(names), "failed": shown, "failed_count": len(failed)})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(engine: Engine = Depends(get_engine)) -> Response:
    # Off the event loop: on a shared backend the collection gauges call the engine (up to its
    # timeout each while it is away), and every other request would wait for the scrape.
    return Response(await run_in_threadpool(engine.metrics.render), media_type=CONTENT_TYPE_LATEST)
