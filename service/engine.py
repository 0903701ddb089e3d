"""`Engine`: the runtime the use cases share, composed of parts with one job each.

- `catalog`: the collections (the seam's embedded implementation), opened at start-up;
- `embedder`: the models, the one inference thread, which model each collection uses;
- `recall`: the online recall estimator and the ef controllers;
- `upgrades`: live encoder upgrades, and `serving(name, use)`, the one place that knows a
  collection may change generation while a use case runs.

Start-up opens every collection and loads the models they need before going ready; the default
model waits for the first collection or request that needs it (a server of vectors only never
imports torch), unless `preload_default_model`. Model calls
go through the inference thread; index and store work runs on the thread pool (`AsyncCollection`),
so the event loop never blocks and encoding never holds an index lock. The use cases themselves
live in `service/ops/`.
"""

import gc
import logging
from typing import Any, BinaryIO

from starlette.concurrency import run_in_threadpool
from threadpoolctl import threadpool_limits

from index import (
    Catalog,
    CatalogBackend,
    CollectionBackend,
    CollectionOptions,
    Conflict,
    Invalid,
    Manifest,
    NotFound,
    NotReady,
    open_milvus_catalog,
    open_qdrant_catalog,
)
from service.async_collection import AsyncCollection
from service.cpu import CoreShare
from service.embedder import Embedder, check_encoder_info
from service.encoders import EncoderLoader
from service.metrics import Metrics
from service.recall_estimator import RecallEstimator
from service.search_batcher import SearchBatcher
from service.settings import Settings
from service.upgrade_manager import UpgradeManager

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics, encoder_loader: EncoderLoader | None = None):
        self.settings = settings
        self.metrics = metrics
        # the encoder's model calls and the exact re-runs of sampled searches share the cores
        cores = CoreShare(
            on_unit=metrics.background_unit_seconds.observe, on_wait=metrics.model_call_unit_wait_seconds.observe
        )
        self.embedder = Embedder(settings, metrics, encoder_loader, cores)
        self.catalog: CatalogBackend | None = None
        self.recall = RecallEstimator(
            metrics,
            settings.recall_sample_rate,
            settings.recall_queue_size,
            settings.recall_controller_window,
            settings.recall_max_busy,
            steer=settings.role != "serve",
            cores=cores,
            gather=settings.recall_gather,
            gather_s=settings.recall_gather_ms / 1000,
            settled_share=settings.recall_settled_share,
        )
        self.searches = SearchBatcher(
            settings.search_workers,
            settings.search_batch_rows,
            lambda requests, rows: metrics.search_batch_requests.observe(requests),
        )
        self.upgrades = UpgradeManager(self._opened_catalog, self.embedder, metrics, self.recall.reset, settings)
        self.ready = False
        self.fatal: str | None = None  # why start-up could not complete, if it could not
        metrics.watch_collections(self.scrape_stats)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Open every collection, load their encoders and the default model, then go ready.

        A collection that cannot be opened (or whose upgrade cannot resume) is marked failed
        with its reason and the others serve; only a data directory that cannot be opened at
        all (locked by another process, unreadable) fails the start, with that reason."""
        if self.settings.blas_threads is not None:
            # numpy's BLAS only: torch's own pool is OpenMP (libgomp), which user_api="blas" leaves
            # alone. With two threads, a background exact re-run made single-text encodes 4x slower
            # here; one thread, plus the worker's duty cycle, keeps them within 25%. (Keyed by
            # {"openblas": n}, as before, the limit matched no library and did nothing.)
            threadpool_limits(limits=self.settings.blas_threads, user_api="blas")
        self.embedder.start()
        self.recall.start()
        self.searches.start()
        self.catalog = await run_in_threadpool(self._open_catalog)
        if self.settings.preload_default_model:
            try:
                await self.embedder.load(self.settings.default_model)
            except (Invalid, OSError) as exc:  # collections of vectors only still work without it
                log.error("default model unavailable: %s", getattr(exc, "message", exc))
        for collection in self.collections():
            await self._attach_encoder(collection)
        if self.settings.role != "serve":  # serving replicas follow the upgrades the maintenance process runs
            await self.upgrades.resume_all(self.catalog.names())
        # What start-up loaded (models, collections, their caches) lives as long as the process:
        # move it out of the collector's reach, so a full collection walks only what requests
        # allocate instead of millions of long-lived objects (bench/search_latency.py: p99 at c=32).
        gc.collect()
        gc.freeze()
        self.ready = True
        self.metrics.ready.set(1)
        failed = self.catalog.failed()
        log.info(
            "ready: %d collections%s",
            len(self.catalog.names()),
            f"; {len(failed)} failed: {', '.join(sorted(failed))}" if failed else "",
        )

    def _open_catalog(self) -> CatalogBackend:
        s = self.settings
        options = CollectionOptions(
            rebuild_deleted_fraction=s.rebuild_deleted_fraction,
            exact_filter_fraction=s.exact_filter_fraction,
            exact_filter_min=s.exact_filter_min,
            synchronous=s.sqlite_synchronous,
            sqlite_mmap_bytes=s.sqlite_mmap_mb << 20,
        )
        if s.backend == "qdrant":
            return open_qdrant_catalog(
                url=s.qdrant_url,
                api_key=s.qdrant_api_key,
                path=s.qdrant_path,
                timeout_s=s.qdrant_timeout_s,
                write_ordering=s.qdrant_write_ordering,
                shards=s.qdrant_shards,
                replication_factor=s.qdrant_replication_factor,
                write_consistency=s.qdrant_write_consistency,
                refresh_s=s.manifest_refresh_s,
            )
        if s.backend == "milvus":
            return open_milvus_catalog(
                uri=str(s.milvus_uri),
                token=s.milvus_token,
                timeout_s=s.milvus_timeout_s,
                refresh_s=s.manifest_refresh_s,
            )
        catalog = Catalog(str(s.data_dir), options, max_collections=s.max_collections)
        catalog.open_all()
        return catalog

    def require_embedded(self, what: str) -> None:
        """`what` works on the embedded backend only (it keeps files under data_dir)."""
        if self.settings.backend != "embedded":
            backend = self.settings.backend
            raise Invalid(f"{what}: not available on the {backend} backend yet", code="backend_unsupported")

    async def stop(self) -> None:
        self.ready = False
        gc.unfreeze()  # a process that builds another app (tests, an embedded client) gets it back
        await self.upgrades.stop()
        await run_in_threadpool(self.searches.stop)
        self.recall.stop()
        if self.catalog is not None:
            await run_in_threadpool(self._snapshot_and_close)
        self.embedder.stop()

    def _snapshot_and_close(self) -> None:
        for collection in self.collections():
            try:
                collection.snapshot()
            except Exception:
                log.exception("snapshot of %s failed at shutdown; the store replays it next start", collection.name)
        assert self.catalog is not None
        self.catalog.close()

    # -- collections --------------------------------------------------------------------------
    def require_ready(self) -> CatalogBackend:
        if self.fatal is not None:
            raise NotReady(f"vecnest could not start: {self.fatal}", code="start_failed")
        if not self.ready or self.catalog is None:
            raise NotReady("vecnest is still loading collections; retry shortly")
        return self.catalog

    def _opened_catalog(self) -> CatalogBackend:
        """The catalog once start-up has opened it (upgrades resume before the server is ready)."""
        if self.catalog is None:
            raise NotReady("vecnest is still loading collections; retry shortly")
        return self.catalog

    def collection(self, name: str) -> AsyncCollection:
        """The collection `name` as it serves now (a use case that may outlive a generation goes
        through `upgrades.serving`)."""
        self.require_ready()
        return self.upgrades.collection(name)

    async def current(self, name: str) -> AsyncCollection:
        """`collection(name)` from the event loop: a shared backend's catalog read runs in the
        threadpool (`UpgradeManager.current`)."""
        self.require_ready()
        return await self.upgrades.current(name)

    def collections(self) -> list[CollectionBackend]:
        catalog = self.catalog
        if catalog is None:
            return []
        try:
            names = catalog.names()
        except NotReady as exc:  # the backend is unreachable (Qdrant): nothing to walk now
            log.warning("cannot list collections: %s", exc.message)
            return []
        out = []
        for name in names:
            try:
                out.append(catalog.get(name))
            except (NotFound, NotReady):  # dropped or failed meanwhile
                continue
        return out

    async def create_collection(self, manifest: Manifest) -> AsyncCollection:
        return AsyncCollection(await run_in_threadpool(self.require_ready().create, manifest))

    async def drop_collection(self, name: str) -> None:
        """Drop a collection, serving or failed, and forget everything the service kept about it."""
        catalog = self.require_ready()
        async with self.upgrades.lifecycle(name):  # no upgrade begins between the forget and the drop
            if name not in catalog.failed():
                await self.current(name)  # 404 before touching any upgrade
                await self.upgrades.forget(name)
            await run_in_threadpool(catalog.drop, name)
        self.embedder.forget(name)
        self.recall.reset(name)
        self.metrics.forget_collection(name)

    async def restore_collection(self, archive: str | BinaryIO, name: str | None, replace: bool) -> AsyncCollection:
        """Recreate a collection from a backup archive (see `Catalog.restore`); with `replace`,
        the collection of that name is swapped for it. Refused while that collection upgrades
        its encoder (its live generation would be thrown away), and no upgrade of `name` begins
        or ends while the restore runs (`UpgradeManager.lifecycle`). Without a `name` the
        archive's own name is one that does not exist (the catalog checks): nothing to forget."""
        catalog = self.require_ready()
        if name is None:
            collection, _ = await run_in_threadpool(catalog.restore, archive, name, replace, check_encoder_info)
        else:
            async with self.upgrades.lifecycle(name):
                if self.upgrades.progress(name)[0]:
                    raise Conflict(
                        f"collection {name!r} has an encoder upgrade in progress: finish or abort it before restoring",
                        code="upgrade_in_progress",
                    )
                collection, _ = await run_in_threadpool(catalog.restore, archive, name, replace, check_encoder_info)
                await self.upgrades.forget(name)  # nothing live (checked above); its records went with the home
        self.embedder.forget(collection.name)
        self.recall.reset(collection.name)
        await self._attach_encoder(collection)
        return AsyncCollection(collection)

    async def _attach_encoder(self, collection: CollectionBackend) -> None:
        """Load the collection's model now; one that cannot load leaves it serving vectors only."""
        try:
            await self.embedder.encoder_of(collection)
        except NotReady as exc:
            log.error("collection %s cannot encode text: %s", collection.name, exc.message)

    def scrape_stats(self) -> list[tuple[str, dict[str, Any]]]:
        """`(name, stats)` of every collection, for /metrics. A collection whose backend cannot
        answer now is left out of this scrape instead of failing it (and the other collections'
        gauges with it): metrics are wanted most while a backend is down."""
        if not self.ready:
            return []
        out = []
        for collection in self.collections():
            try:
                out.append((collection.name, self.stats(collection)))
            except NotReady as exc:
                log.warning("metrics: no stats of %s this scrape: %s", collection.name, exc.message)
        return out

    def stats(self, collection: CollectionBackend) -> dict[str, Any]:
        """`collection.stats()` plus the service's view: its recall target and upgrade state
        (an upgrade is active until finalized or undone; progress is its sync's done/total)."""
        active, progress = self.upgrades.progress(collection.name)
        m = collection.manifest
        funnels = [d for d in collection.dims if d < m.dim] if collection.kind == "dense" else []
        return {
            **collection.stats(),
            "rerank_factors": {collection.index_name(d): collection.rerank_factor(d) for d in funnels},
            "target_recall": collection.recall_policy.target,
            "upgrade_active": active,
            "backfill_progress": progress,
        }
