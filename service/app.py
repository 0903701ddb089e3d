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

from fastapi import FastAPI

from service import __version__, openapi
from service.encoders import EncoderLoader
from service.engine import Engine
from service.errors import install_error_handlers
from service.maintenance import Maintenance
from service.metrics import Metrics
from service.middleware import BodySizeLimit, RequestMetrics
from service.routes import collections, documents, embeddings, health, search, upgrades
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

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = Engine(settings, metrics, encoder_loader)
        app.state.engine = engine
        maintenance = Maintenance(engine, settings.snapshot_interval_s)

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
    for module in (health, collections, documents, search, embeddings, upgrades):
        app.include_router(module.router)
    # Outermost last: metrics see every response, including the 413s of the size limit.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
