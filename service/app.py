"""`create_app(settings)`: the one composition root.

Everything is built inside the lifespan. Start-up (opening collections, replaying their
stores, loading models) runs in the background so `/healthz` answers at once and `/readyz`
turns 200 only when it is done. A start-up that cannot complete at all (the data directory is
locked or unreadable) is logged with its reason, shown by `/readyz`, and handed to `on_fatal`
(the CLI stops the server and exits 1): never a server that hangs "not ready" in silence.
"""

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__, auth, openapi
from service.encoders import EncoderLoader
from service.engine import Engine
from service.errors import install_error_handlers
from service.hot_path import HotPath, hot
from service.maintenance import Maintenance
from service.metrics import Metrics
from service.middleware import BodySizeLimit, Guard, RequestMetrics
from service.routes import collections, documents, embeddings, get_engine, health, search, snapshots, upgrades
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    on_fatal: Callable[[str], None] | None = None,
    encoder_loader: EncoderLoader | None = None,
) -> FastAPI:
    """The app. `encoder_loader` turns a resolved model into an encoder (default:
    sentence-transformers); tests pass a model-free one where the model is not the point."""
    settings = settings or Settings()
    metrics = Metrics()
    keys = auth.KeyRing(settings.api_keys, settings.key_rate_limit)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = Engine(settings, metrics, encoder_loader)
        app.state.engine = engine
        app.state.keys = keys
        if keys.enabled:
            log.info("API keys: %d configured; every route but /healthz and /readyz needs one", len(settings.api_keys))
        else:
            log.warning(
                "no API keys configured: vecnest is UNAUTHENTICATED; whoever reaches %s:%d is admin",
                settings.host,
                settings.port,
            )
        probes = settings.recall_probe_interval_s if settings.role == "maintenance" else None
        maintenance = Maintenance(
            engine, settings.snapshot_interval_s, recall_probe_interval_s=probes, heavy_jobs=settings.role != "serve"
        )

        def started(task: asyncio.Task) -> None:
            if task.cancelled():
                return
            if task.exception() is None:
                maintenance.start()
                return
            exc = task.exception()
            engine.fatal = f"{type(exc).__name__}: {exc}"
            log.critical("vecnest cannot start: %s", engine.fatal, exc_info=exc)
            if on_fatal is not None:
                on_fatal(engine.fatal)

        starting = asyncio.create_task(engine.start())
        starting.add_done_callback(started)
        try:
            yield
        finally:
            if not starting.done():
                starting.cancel()
            maintenance.stop()
            await engine.stop()

    app = FastAPI(
        title="vecnest",
        version=__version__,
        summary="Vector search with elastic-dimension encoders, HNSW and durable storage.",
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operationIds: the handlers' names
    )
    openapi.install(app, settings)
    install_error_handlers(app, metrics)
    modules = (health, collections, documents, search, embeddings, upgrades, snapshots)
    routers = [module.router for module in modules]
    auth.check_rules(route.name for router in routers for route in router.routes)  # type: ignore[attr-defined]
    for module, router in zip(modules, routers):
        # Backup archives are files under data_dir: on a shared backend their routes answer 422
        # backend_unsupported and stay out of the schema, which lists what this server serves.
        listed = module is not snapshots or settings.backend == "embedded"
        app.include_router(router, dependencies=[Depends(auth.authorize)], include_in_schema=listed)
    # Outermost last: the guard refuses before a body is read; metrics see every response.
    # Searches and upserts skip FastAPI's per-request machinery (service/hot_path.py), not the
    # checks above it.
    loaded = [*search.router.routes, documents.upsert_route()]
    app.add_middleware(
        HotPath, routes=[hot(r, get_engine) for r in loaded], engine=lambda: app.state.engine, metrics=metrics
    )
    # An archive upload streams to disk under its own limit (max_archive_bytes), not into memory.
    unbuffered = {snapshots.RESTORE_UPLOAD_PATH}
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, metrics=metrics, unbuffered=unbuffered)
    app.add_middleware(Guard, settings=settings, keys=keys, metrics=metrics, archives=unbuffered)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["authorization", "api-key", "content-type"],
        )
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
