"""`Engine`: the runtime the use cases share: catalog, encoders, inference thread, metrics.

Start-up opens every collection and loads the models they need before going ready. Model
calls go through the inference thread; index and store calls run in the thread pool, so the
event loop never blocks and encoding never holds an index lock. The use cases themselves live
in `service/ops/`.
"""

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from threadpoolctl import threadpool_limits

from index import Catalog, Collection, CollectionOptions
from index.errors import Invalid, NotFound, NotReady
from service.encoders import Encoder, EncoderRegistry, Kind
from service.inference import EncodeStats, InferenceQueue
from service.metrics import Metrics
from service.recall import RecallEstimator
from service.settings import Settings
from service.upgrades import UpgradeManager

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.encoders = EncoderRegistry(settings)
        self.inference = InferenceQueue(
            settings.encode_queue_size,
            settings.encode_batch_size,
            self._on_encode_batch,
            settings.torch_threads,
            settings.encode_queue_texts,
        )
        self.catalog: Catalog | None = None
        # Keyed by the generation's directory: during an upgrade two generations share a name.
        self._collection_encoders: dict[str, Encoder] = {}
        self._unavailable: dict[str, str] = {}
        self.recall = RecallEstimator(
            metrics,
            settings.recall_sample_rate,
            settings.recall_queue_size,
            settings.recall_controller_window,
            settings.recall_max_busy,
        )
        self.ready = False
        self.fatal: str | None = None  # why start-up could not complete, if it could not
        self.upgrades = UpgradeManager(self)
        metrics.watch_collections(lambda: [(c.name, self.stats(c)) for c in self.collections()] if self.ready else [])

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Open every collection, load their encoders and the default model, then go ready.

        A collection that cannot be opened (or whose upgrade cannot resume) is marked failed
        with its reason and the others serve; only a data directory that cannot be opened at
        all (locked by another process, unreadable) fails the start, with that reason."""
        if self.settings.blas_threads is not None:
            # numpy's OpenBLAS only (torch sizes its own pool): with two threads, a background exact
            # re-run made single-text encodes 4x slower here; one thread, plus the worker's duty
            # cycle, keeps them within 25%.
            threadpool_limits(limits={"openblas": self.settings.blas_threads})
        self.inference.start()
        self.recall.start()
        self.catalog = await run_in_threadpool(self._open_catalog)
        try:
            await self.load_encoder(self.settings.default_model)
        except (Invalid, OSError) as exc:  # vector-only collections still work without it
            log.error("default model unavailable: %s", getattr(exc, "message", exc))
        for collection in self.collections():
            info = collection.manifest.encoder
            if info is None:
                continue
            try:
                self._collection_encoders[collection.path] = await self.load_encoder(info["model"], info["dim"])
            except Invalid as exc:
                log.error("collection %s cannot encode text: %s", collection.name, exc.message)
                self._unavailable[collection.name] = exc.message
        await self.upgrades.resume_all()
        self.ready = True
        self.metrics.ready.set(1)
        failed = self.catalog.failed()
        log.info(
            "ready: %d collections%s",
            len(self.catalog.names()),
            f"; {len(failed)} failed: {', '.join(sorted(failed))}" if failed else "",
        )

    def _open_catalog(self) -> Catalog:
        s = self.settings
        options = CollectionOptions(
            rebuild_deleted_fraction=s.rebuild_deleted_fraction,
            exact_filter_fraction=s.exact_filter_fraction,
            exact_filter_min=s.exact_filter_min,
            synchronous=s.sqlite_synchronous,
        )
        catalog = Catalog(str(s.data_dir), options, max_collections=s.max_collections)
        catalog.open_all()
        return catalog

    async def stop(self) -> None:
        self.ready = False
        await self.upgrades.stop()
        self.recall.stop()
        if self.catalog is not None:
            await run_in_threadpool(self._snapshot_and_close)
        self.inference.stop()

    def _snapshot_and_close(self) -> None:
        for collection in self.collections():
            try:
                collection.snapshot()
            except Exception:
                log.exception("snapshot of %s failed at shutdown; the store replays it next start", collection.name)
        self.catalog.close()

    # -- collections --------------------------------------------------------------------------
    def require_ready(self) -> Catalog:
        if self.fatal is not None:
            raise NotReady(f"vecnest could not start: {self.fatal}", code="start_failed")
        if not self.ready or self.catalog is None:
            raise NotReady("vecnest is still loading collections; retry shortly")
        return self.catalog

    def collection(self, name: str) -> Collection:
        return self.require_ready().get(name)

    def collections(self) -> list[Collection]:
        catalog = self.catalog
        if catalog is None:
            return []
        out = []
        for name in catalog.names():
            try:
                out.append(catalog.get(name))
            except NotFound:  # dropped meanwhile
                continue
        return out

    def stats(self, collection: Collection) -> dict[str, Any]:
        """`collection.stats()` plus the service's view: its recall target and upgrade state
        (an upgrade is active until finalized or undone; progress is its sync's done/total)."""
        active, progress = self.upgrades.progress(collection.name)
        return {
            **collection.stats(),
            "target_recall": collection.recall_policy.target,
            "upgrade_active": active,
            "backfill_progress": progress,
        }

    def attach_encoder(self, collection: Collection, encoder: Encoder | None) -> None:
        if encoder is not None:
            self._collection_encoders[collection.path] = encoder

    def detach(self, name: str) -> None:
        home = self.require_ready().home(name)
        for path in [p for p in self._collection_encoders if p == home or p.startswith(home + os.sep)]:
            del self._collection_encoders[path]
        self._unavailable.pop(name, None)
        self.recall.reset(name)
        self.metrics.forget_collection(name)

    # -- encoders -----------------------------------------------------------------------------
    async def load_encoder(self, model: str | None, expected_dim: int | None = None) -> Encoder:
        ref = self.encoders.resolve(model)
        encoder = await self.inference.call(lambda: self.encoders.load(ref))
        if expected_dim is not None and encoder.dim != expected_dim:
            raise Invalid(
                f"model {ref.name!r} now produces {encoder.dim}-dim vectors but the collection holds "
                f"{expected_dim}-dim ones; restore the model or recreate the collection",
                code="model_mismatch",
            )
        return encoder

    def encoder_for(self, collection: Collection) -> Encoder | None:
        """The collection's encoder; None for vector-only collections."""
        if collection.name in self._unavailable:
            raise NotReady(
                f"collection {collection.name!r} cannot encode text: {self._unavailable[collection.name]}",
                code="encoder_unavailable",
            )
        return self._collection_encoders.get(collection.path)

    async def encode(
        self, label: str, encoder: Encoder, texts: list[str], kind: Kind, layers: int | None = None
    ) -> np.ndarray:
        """Encode on the inference thread; `label` is the collection name for the metrics."""
        return await self._timed_encode(self.inference.encode, label, encoder, texts, kind, layers)

    async def encode_tokens(
        self, label: str, encoder: Encoder, texts: list[str], kind: Kind, layers: int | None = None
    ) -> list[np.ndarray]:
        """Token embeddings (one `(n_i, dim)` matrix per text) on the inference thread."""
        return await self._timed_encode(self.inference.encode_tokens, label, encoder, texts, kind, layers)

    async def _timed_encode(
        self, encode, label: str, encoder: Encoder, texts: list[str], kind: Kind, layers: int | None
    ) -> Any:
        if layers is not None:
            encoder.check_layers(layers)
        t0 = time.perf_counter()
        out = await encode(encoder, texts, kind, layers)
        self.metrics.stage_seconds.labels(label, "", "encode").observe(time.perf_counter() - t0)
        return out

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run blocking index/store work in the thread pool."""
        return await run_in_threadpool(fn, *args, **kwargs)

    def _on_encode_batch(self, stats: EncodeStats) -> None:
        m = self.metrics
        m.encode_batch_texts.labels(stats.model).observe(stats.texts)
        m.encode_batch_requests.labels(stats.model).observe(stats.requests)
        m.encoded_texts.labels(stats.model).inc(stats.texts)
        for wait in stats.queue_wait_s:
            m.stage_seconds.labels("", "", "queue_wait").observe(wait)
        m.encode_queue_depth.set(self.inference.depth)
