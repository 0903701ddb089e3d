"""`UpgradeManager`: encoder upgrades as background tasks, one live upgrade per collection, and
`serving(name, use)`: the one place that knows a collection may change generation under a use case.

A task per live upgrade runs on the event loop: it fits the map (embedding a sample with the
new model), then keeps the shadow generation in sync with the serving one, batch by batch,
through the shared inference thread and with a duty cycle so user encodes keep their latency.
Cut-over and rollback take the collection's write gate (writes wait, searches do not) and the
upgrade's sync lock, finish the sync, and flip `current.json`. The model-free parts (records,
plans, the map, mixed searches) are `index.upgrades`.

Its dependencies are passed in and narrow: the catalog (generations live in it), the embedder
(models and the inference thread), the metrics, a callback that forgets a collection's recall
measurements, and the settings.
"""

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

from index import (
    CatalogBackend,
    Conflict,
    Generations,
    Invalid,
    NewDocument,
    NotFound,
    NotReady,
    Query,
    QueryMap,
    ScoreCalibration,
    SearchResult,
    fault_point,
    gone_meanwhile,
    upgrades,
)
from service.async_collection import AsyncCollection
from service.embedder import Embedder
from service.encoders import Encoder
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class Retired(Exception):
    """The generation a use case started on stopped serving meanwhile (a cut-over, rollback or
    finalize): `serving` runs the use case again on the one that serves now."""


@dataclass(frozen=True)
class Serving:
    """How a text search is answered while an upgrade is before its cut-over."""

    upgrade: str
    state: str
    # "mapped": new model through the map; "blended": both models (a blend); "previous_model": the
    # gate did not pass
    queries: str
    reason: str


@dataclass
class LiveUpgrade:
    """A running upgrade: its record, the generation kept in sync (the shadow) and its encoder."""

    record: upgrades.UpgradeRecord
    gens: Generations
    shadow: AsyncCollection
    shadow_encoder: Encoder
    new_encoder: Encoder
    qmap: QueryMap | None = None  # how new-model queries reach the old index, once the gate passed
    calibration: ScoreCalibration = field(default_factory=ScoreCalibration)
    sync_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task | None = None
    epoch: int = 0  # bumped when the roles flip: a plan made before is void
    done: int = 0
    total: int = 0
    synced: bool = False  # the last plan was applied in full
    synced_seq: int | None = None  # the serving generation's last seq then (None: a shared engine has none)
    planned_at: float = 0.0  # monotonic time of the last plan
    rate: float = 0.0  # documents re-embedded per second (moving average)
    embedded: int = 0
    follower: bool = False  # a serving replica's view of an upgrade the maintenance process runs
    unavailable_since: float | None = None  # monotonic time the backend became unavailable to the backfill
    unavailable: str | None = None  # why, while it is

    @property
    def caught_up(self) -> bool:
        """The last plan was applied in full (see `UpgradeManager.caught_up` for "and nothing since")."""
        return self.synced and self.done >= self.total


class UpgradeManager:
    def __init__(
        self,
        catalog: Callable[[], CatalogBackend],
        embedder: Embedder,
        metrics: Metrics,
        forget_recall: Callable[[str], None],
        settings: Settings,
    ):
        self._catalog = catalog  # the catalog exists once start-up has opened it
        self._embedder = embedder
        self._metrics = metrics
        self._forget_recall = forget_recall
        self.settings = settings
        self._live: dict[str, LiveUpgrade] = {}
        self._gates: dict[str, asyncio.Lock] = {}
        # held only while in use: a name's lock outlives no step that holds or awaits it
        self._lifecycles: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._followed_at: dict[str, float] = {}  # serving replicas: when each collection's upgrades were read
        self._discarding: set[asyncio.Task] = set()

    @property
    def _shared(self) -> bool:
        """Collections live in a shared engine: other vecnest processes may write them too."""
        return self.settings.backend != "embedded"

    def _generations(self, name: str) -> Generations:
        return self._catalog().generations(name)

    # -- the serving generation ---------------------------------------------------------------
    def collection(self, name: str) -> AsyncCollection:
        """The generation of `name` that serves now."""
        return AsyncCollection(self._catalog().get(name))

    async def current(self, name: str, fresh: bool = False) -> AsyncCollection:
        """`collection(name)`, from the event loop. On a shared backend the catalog reads the
        engine to see other replicas' changes (once per `manifest_refresh_s` a collection, or
        now when `fresh`), up to the engine's timeout while it is away: that read runs in the
        threadpool, so the event loop never waits for it."""
        if not self._shared:
            return self.collection(name)  # in memory
        return AsyncCollection(await run_in_threadpool(self._catalog().get, name, fresh))

    async def serving(self, name: str, use: Callable[[AsyncCollection], Awaitable[T]]) -> T:
        """Run `use` on the generation of `name` that serves; if an upgrade retires it meanwhile
        (its store closes under the use case, or the use case raises `Retired`), or a restore
        replaces it, run `use` again on the collection that serves now. On a shared backend a
        failure may come from a copy another process made stale (it dropped the collection, or
        dropped and created it again, within `manifest_refresh_s`): the entry is read again at
        once, and `use` runs again on what it names (or the answer is 404)."""
        if self._shared and self.settings.role == "serve":
            await self._follow(name)
        for _ in range(3):
            collection = await self.current(name)
            try:
                return await use(collection)
            except (Retired, NotFound, NotReady) as exc:
                # closed under the use case: by a cut-over or a drop ("not found"), or by a restore
                stale_copy = self._shared and getattr(exc, "code", None) == "backend_unavailable"
                if not isinstance(exc, Retired) and not gone_meanwhile(exc) and not stale_copy:
                    raise
                if (await self.current(name, fresh=self._shared)).backend is collection.backend:
                    if isinstance(exc, Retired):
                        continue
                    raise
        # a transient state, as a restore's swap is: 503 with Retry-After, which clients retry
        raise NotReady(
            f"collection {name!r} kept changing generation while this request ran; retry",
            code="collection_changing",
            retry_after_s=1.0,
        )

    def lifecycle(self, name: str) -> asyncio.Lock:
        """Held for its whole length by each step that begins or ends an upgrade of `name` (start,
        cut-over, rollback, finalize, abort) and by a restore over `name` or its drop. Without it
        an upgrade could begin while a restore swapped the collection's home: its generation and
        record landed in the home being moved aside (a 500), or in the restored one after the
        restore had forgotten the live upgrades, leaving a record "fitting" that nothing ran and
        nothing could abort."""
        lock = self._lifecycles.get(name)
        if lock is None:
            lock = self._lifecycles[name] = asyncio.Lock()
        return lock

    def write_gate(self, name: str) -> asyncio.Lock:
        """Writes to `name` hold this while they write to the serving generation, so a cut-over
        (which holds it too) never lets a write land on a retired generation."""
        return self._gates.setdefault(name, asyncio.Lock())

    async def write(self, collection: AsyncCollection, docs: list[NewDocument]):
        """Write `docs` (embedded for `collection`) under the gate; `Retired` if it no longer serves."""
        async with self.write_gate(collection.name):
            if (await self.current(collection.name)).backend is not collection.backend:
                raise Retired()
            live = self._live.get(collection.name)
            if live is not None and any(d.text is None for d in docs):
                raise Conflict(
                    f"collection {collection.name!r} is being upgraded to a new model: every document needs text "
                    f"so the other model can embed it too",
                    code="upgrade_in_progress",
                )
            result = await collection.upsert(docs)
            if self._shared and live is not None and live.shadow.backend is not collection.backend:
                # Other processes write this collection too, so no sequence tells the sync what
                # changed: every write lands in both generations before it is acknowledged.
                X = await self._embed(collection.name, live.shadow_encoder, [d.text or "" for d in docs], False)
                await live.shadow.upsert(
                    [NewDocument(id=d.id, vector=x, text=d.text, metadata=d.metadata or {}) for d, x in zip(docs, X)]
                )
            return result

    async def delete(self, collection: AsyncCollection, ids: list[str]):
        async with self.write_gate(collection.name):
            if (await self.current(collection.name)).backend is not collection.backend:
                raise Retired()
            result = await collection.delete(ids)
            live = self._live.get(collection.name)
            if self._shared and live is not None and live.shadow.backend is not collection.backend:
                await live.shadow.delete(ids)
            return result

    # -- searches during an upgrade -----------------------------------------------------------
    def serving_info(self, collection: AsyncCollection) -> Serving | None:
        """How text queries are served while an upgrade of `collection` is before its cut-over."""
        live = self._live.get(collection.name)
        if live is None or live.record.state not in (upgrades.FITTING, upgrades.BACKFILLING):
            return None
        if live.shadow.backend is collection.backend:
            return None
        record = live.record
        if record.serves_mapped and live.qmap is not None:
            mode = "blended" if live.qmap.needs_old_queries else "mapped"
            return Serving(record.id, record.state, mode, record.gate["reason"])
        reason = (
            record.gate["reason"] if record.gate else "the map is still being fitted: queries use the previous model"
        )
        return Serving(record.id, record.state, "previous_model", reason)

    def new_encoder(self, name: str) -> Encoder:
        """The upgrade's new model, for the queries `serving_info` said it serves; `Retired` when
        the upgrade ended since (`serving` then runs the request again)."""
        live = self._live.get(name)
        if live is None or not live.record.serves_mapped:
            raise Retired(f"the upgrade of {name!r} ended while a search ran")
        return live.new_encoder

    async def mixed_search(
        self, collection: AsyncCollection, query: Query, old_queries: np.ndarray | None = None
    ) -> SearchResult:
        """New-model queries (`query.queries`) through the map (a blend: with the same texts'
        previous-model queries, `old_queries`), merged with the backfilled part."""
        live = self._live.get(collection.name)
        if (
            live is None
            or live.qmap is None
            or live.shadow.backend is collection.backend
            or (live.qmap.needs_old_queries and old_queries is None)
        ):
            # The upgrade moved on (cut over, ended, another began) while this search embedded
            # its queries for the way `serving_info` named: run the request again on what
            # serves now (`serving`).
            raise Retired(f"the upgrade of {collection.name!r} changed while a search ran")
        return await run_in_threadpool(
            upgrades.mixed_search,
            collection.backend,
            live.shadow.backend,
            live.qmap,
            live.calibration,
            query,
            old_queries,
        )

    # -- what exists --------------------------------------------------------------------------
    def live(self, name: str) -> LiveUpgrade | None:
        return self._live.get(name)

    def progress(self, name: str) -> tuple[int, float]:
        """(1 while an upgrade is live else 0, the sync's done/total or 1.0)."""
        live = self._live.get(name)
        if live is None:
            return 0, 1.0
        return 1, (live.done / live.total if live.total else (1.0 if live.caught_up else 0.0))

    async def records(self, name: str) -> list[tuple[upgrades.UpgradeRecord, dict[str, Any] | None]]:
        gens = await run_in_threadpool(self._generations, name)
        records = await run_in_threadpool(gens.records)
        await run_in_threadpool(self._generations, name)  # dropped or being restored while read: 404 / 503
        return [(r, await self._progress_of(r)) for r in records]

    async def get(self, name: str, upgrade_id: str) -> tuple[upgrades.UpgradeRecord, dict[str, Any] | None]:
        record = await self._record(name, upgrade_id)
        return record, await self._progress_of(record)

    async def _record(self, name: str, upgrade_id: str) -> upgrades.UpgradeRecord:
        live = self._live.get(name)
        if live is not None and live.record.id == upgrade_id:
            return live.record
        gens = await run_in_threadpool(self._generations, name)
        records = await run_in_threadpool(gens.records)
        await run_in_threadpool(self._generations, name)  # dropped or being restored while read: 404 / 503
        for record in records:
            if record.id == upgrade_id:
                return record
        raise NotFound(f"upgrade {upgrade_id!r} of collection {name!r} not found", code="upgrade_not_found")

    async def caught_up(self, name: str, live: LiveUpgrade) -> bool:
        """The shadow reflects every write the serving generation has (a cheap seq comparison)."""
        source = await self.current(name)
        seq = await source.last_seq()
        return live.caught_up and (seq is None or seq == live.synced_seq)

    async def _progress_of(self, record: upgrades.UpgradeRecord) -> dict[str, Any] | None:
        live = self._live.get(record.collection)
        if live is None or live.record.id != record.id or live.follower:
            return None
        remaining = live.total - live.done
        done = await self.caught_up(record.collection, live)
        return {
            "done": live.done,
            "total": live.total,
            "caught_up": done,
            "rate_docs_per_s": round(live.rate, 2),
            "embedded": live.embedded,
            "eta_s": round(remaining / live.rate, 1) if live.rate > 0 and remaining else (0.0 if done else None),
            "syncing": "new generation" if record.state != upgrades.CUT_OVER else "previous generation (for rollback)",
            "waiting_for_backend": live.unavailable,  # null unless the backend is unavailable now
        }

    # -- start --------------------------------------------------------------------------------
    async def start(
        self,
        name: str,
        model: str,
        *,
        sample: int | None = None,
        holdout: float | None = None,
        seed: int = 0,
        min_cosine: float | None = None,
        min_recall: float | None = None,
        maps: list[str] | None = None,
        labelled: list[dict[str, Any]] | None = None,
    ) -> upgrades.UpgradeRecord:
        s = self.settings
        self.settings.require_maintenance("start an upgrade")
        async with self.lifecycle(name), self.write_gate(name):
            source = await self.current(name)
            current = source.manifest.encoder
            if source.kind != "dense" or current is None:
                what = "multi-vector (token) documents" if source.kind != "dense" else "vectors only"
                raise Invalid(
                    f"collection {name!r} holds {what}; upgrades re-embed dense text collections with a dense model",
                    code="unsupported_upgrade",
                )
            if name in self._live:
                raise Conflict(
                    f"upgrade {self._live[name].record.id} of collection {name!r} is still "
                    f"{self._live[name].record.state}; finalize, roll back or abort it first",
                    code="upgrade_in_progress",
                )
            ref = self._embedder.registry.resolve(model)
            if self._embedder.same_model(ref.name, current["model"]):
                raise Invalid(f"collection {name!r} already uses model {model!r}", code="same_model")
            new_encoder = await self._embedder.load(model)
            contents = await source.contents()
            missing = [doc_id for doc_id, (text, _) in contents.items() if text is None]
            if missing:
                raise Invalid(
                    f"{len(missing)} documents have no text to re-embed (e.g. {missing[0]!r}); give them "
                    f"text or delete them before upgrading",
                    code="documents_without_text",
                )
            model_info = {
                "model": ref.name,
                "dim": new_encoder.dim,
                "layers": None,
                "matryoshka_dims": new_encoder.matryoshka_dims,
            }
            gens = await run_in_threadpool(self._generations, name)
            record = upgrades.new_record(
                source.backend,
                gens.generation_of(source.backend),
                model_info,
                sample=sample or s.upgrade_sample,
                holdout=holdout or s.upgrade_holdout,
                seed=seed,
                min_cosine=s.upgrade_min_cosine if min_cosine is None else min_cosine,
                min_recall=s.upgrade_min_recall if min_recall is None else min_recall,
                map_kinds=list(dict.fromkeys(maps)) if maps else None,
                labelled=labelled,
            )
            manifest = upgrades.new_generation_manifest(
                source.manifest, model_info, new_encoder.dim, bool(new_encoder.matryoshka_dims)
            )
            shadow = await run_in_threadpool(gens.create, record.new_generation, manifest)
            await run_in_threadpool(gens.save_record, record)
            live = LiveUpgrade(record, gens, AsyncCollection(shadow), new_encoder, new_encoder, total=len(contents))
            self._live[name] = live
            live.task = asyncio.create_task(self._run(name, live))
        return record

    async def resume_all(self, names: list[str]) -> None:
        """At start-up: reconcile every record with the generation that serves, clean up what a
        crash left, and restart the live upgrades where they stopped (their plans are recomputed)."""
        for name in names:
            collection = await self.current(name)
            gens = await run_in_threadpool(self._generations, name)
            try:
                records = await run_in_threadpool(gens.records)
            except ValueError as exc:  # which generation must be kept in sync is unknown: do not guess
                reason = f"{exc}; repair or delete that file and restart, or drop the collection"
                log.error("collection %s is marked failed: %s", name, reason)
                await run_in_threadpool(self._catalog().mark_failed, name, reason)
                continue
            for record in records:
                try:
                    await self._resume(collection, gens, record)
                except Exception as exc:
                    log.exception("upgrade %s of %s cannot resume", record.id, name)
                    try:
                        failed = record.moved(upgrades.FAILED, error=f"cannot resume: {exc}")
                        await run_in_threadpool(gens.save_record, failed)
                    except Exception:
                        log.exception("cannot record that upgrade %s of %s failed", record.id, name)

    async def _resume(self, collection: AsyncCollection, gens: Generations, record: upgrades.UpgradeRecord) -> None:
        active = await run_in_threadpool(gens.active)
        fixed = upgrades.reconcile(active, record)
        if fixed is not record:
            await run_in_threadpool(gens.save_record, fixed)
            record = fixed
        # A crash may have left the generation the upgrade's end was deleting.
        if record.state in (upgrades.ABORTED, upgrades.ROLLED_BACK) and record.new_generation != active:
            await run_in_threadpool(gens.remove, record.new_generation)
        if record.state == upgrades.FINALIZED and self._shared and record.old_generation != active:
            await run_in_threadpool(gens.remove, record.old_generation)
        if not record.live:
            return
        new_encoder = await self._embedder.load(record.model["model"], record.model["dim"])
        if record.state == upgrades.CUT_OVER:
            shadow_dir, shadow_encoder = (
                record.old_generation,
                await self._embedder.load(record.previous_model["model"]),
            )
            self._embedder.attach(collection.backend, new_encoder)
        else:
            shadow_dir, shadow_encoder = record.new_generation, new_encoder
        shadow = await run_in_threadpool(gens.open, shadow_dir)
        live = LiveUpgrade(record, gens, AsyncCollection(shadow), shadow_encoder, new_encoder)
        if record.map_sha256:
            live.qmap = upgrades.query_map_of(record, await run_in_threadpool(gens.load_map, record))
            live.calibration = ScoreCalibration(**(record.calibration or {}))
        self._live[collection.name] = live
        live.task = asyncio.create_task(self._run(collection.name, live))
        log.info("upgrade %s of %s resumed in state %s", record.id, collection.name, record.state)

    # -- serving replicas: following an upgrade another process runs --------------------------
    async def _follow(self, name: str) -> None:
        """Read the upgrade records of `name` (at most every `upgrade_follow_s`) and mirror the
        live one: its shadow generation and encoders (every write then lands in both
        generations) and its map (new-model queries are served through it, as on the process
        that runs the upgrade)."""
        now = time.monotonic()
        if now - self._followed_at.get(name, -1e9) < self.settings.upgrade_follow_s:
            return
        self._followed_at[name] = now
        try:
            gens = await run_in_threadpool(self._generations, name)
            records = await run_in_threadpool(gens.records)
        except (NotFound, ValueError):
            return  # an unknown collection answers 404 where it is used; an unreadable record is the owner's to report
        record = next((r for r in reversed(records) if r.live), None)
        held = self._live.get(name)
        if record is None:
            if held is not None:
                del self._live[name]
            return
        if held is not None and held.record.id == record.id and held.record.state == record.state:
            held.record = record
            return
        new_encoder = await self._embedder.load(record.model["model"], record.model["dim"])
        if record.state == upgrades.CUT_OVER:
            shadow_generation = record.old_generation
            shadow_encoder = await self._embedder.load(record.previous_model["model"], record.previous_model["dim"])
        else:
            shadow_generation, shadow_encoder = record.new_generation, new_encoder
        shadow = await run_in_threadpool(gens.open, shadow_generation)
        live = LiveUpgrade(record, gens, AsyncCollection(shadow), shadow_encoder, new_encoder, follower=True)
        if record.map_sha256:
            live.qmap = upgrades.query_map_of(record, await run_in_threadpool(gens.load_map, record))
            live.calibration = ScoreCalibration(**(record.calibration or {}))
        self._live[name] = live

    # -- the background task ------------------------------------------------------------------
    async def _run(self, name: str, live: LiveUpgrade) -> None:
        try:
            if live.record.state == upgrades.FITTING:
                await self._fit(name, live)
            while True:
                try:
                    busy = await self._sync_step(name, live, throttle=True)
                except NotReady as exc:
                    await self._wait_for_backend(name, live, exc)
                    continue
                live.unavailable_since, live.unavailable = None, None
                if not busy:
                    await asyncio.sleep(self.settings.upgrade_poll_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if gone_meanwhile(exc):  # dropped or replaced (by another replica): its records went with it
                log.warning("upgrade %s of %s ended: %s", live.record.id, name, exc)
            else:
                log.exception("upgrade %s of %s failed", live.record.id, name)
                live.record = live.record.moved(upgrades.FAILED, error=f"{type(exc).__name__}: {exc}")
                await self._store_outcome(name, live)
            if self._live.get(name) is live:  # never a later upgrade's entry
                del self._live[name]
            if live.record.old_generation != live.gens.generation_of(live.shadow.backend):
                await self._discard_shadow(live)

    async def _wait_for_backend(self, name: str, live: LiveUpgrade, exc: NotReady) -> None:
        """A backfill runs for hours; an engine restart or a network blip meanwhile is waited out
        (retried with backoff), not the end of the upgrade. Past `upgrade_backend_patience_s` of
        failing without a break, the error is raised and the upgrade fails as before."""
        now = time.monotonic()
        if live.unavailable_since is None:
            live.unavailable_since = now
            log.warning("upgrade %s of %s waits for the backend: %s", live.record.id, name, exc)
        live.unavailable = str(exc)
        waited = now - live.unavailable_since
        if waited >= self.settings.upgrade_backend_patience_s:
            raise exc
        pause = min(max(self.settings.upgrade_poll_s, waited / 4), 10.0)  # back off, at most 10 s apart
        await asyncio.sleep(min(pause, self.settings.upgrade_backend_patience_s - waited))

    async def _store_outcome(self, name: str, live: LiveUpgrade) -> None:
        """Save the failed record, however long the backend takes to come back: most often the
        upgrade failed *because* the backend was away past its patience, and an unsaved
        "failed" would leave the stored record "backfilling", resumed by the next start-up.
        Until it is saved the live record (what the API shows) already says "failed"."""
        pause = self.settings.upgrade_poll_s
        while True:
            try:
                await run_in_threadpool(live.gens.save_record, live.record)
                return
            except NotReady as exc:
                if gone_meanwhile(exc):
                    return  # the record went with the collection
                live.unavailable = str(exc)
                log.warning("upgrade %s of %s: its failure is not stored yet: %s", live.record.id, name, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)  # back off, at most 10 s apart

    async def _fit(self, name: str, live: LiveUpgrade) -> None:
        """Embed a sample with the new model, fit and evaluate the map, apply the gate. The
        sample's new vectors are written to the new generation: the fit's work is not wasted."""
        record = live.record
        source = await self.current(name)
        docs = await source.sample_documents(record.sample, record.seed)
        t0 = time.perf_counter()
        X_new = await self._embed(name, live.new_encoder, [d.text or "" for d in docs], throttle=True)
        embed_s = time.perf_counter() - t0
        if len(docs) < 10:
            fit: dict[str, Any] = {"n_fit": len(docs), "reason": "too few documents"}
            verdict = {
                "passed": False,
                "reason": f"{len(docs)} documents are too few to fit a map (need 10): "
                f"queries keep using the previous model until cut-over",
            }
        else:
            X_old = np.stack([d.vector for d in docs])
            fit_rows, held_rows = upgrades.split_sample(len(docs), record.holdout, record.seed)
            labelled = await self._labelled(name, live, record)
            result = await run_in_threadpool(
                lambda: upgrades.fit_map(
                    X_new,
                    X_old,
                    held_rows,
                    fit_rows,
                    source.backend,
                    [docs[i].id for i in held_rows],
                    kinds=tuple(record.map_kinds),
                    labelled=labelled,
                    seed=record.seed,
                )
            )
            fit = {**result.figures, "embed_seconds": embed_s, "sample_docs_per_s": len(docs) / max(embed_s, 1e-9)}
            verdict = upgrades.gate(result.figures, record.min_cosine, record.min_recall)
            chosen = result.maps[verdict["map"]]
            live.qmap, live.calibration = chosen.query_map, chosen.calibration
            sha = await run_in_threadpool(live.gens.save_map, record.id, chosen.W)
            record = replace(record, map_sha256=sha, calibration=vars(chosen.calibration))
        await self._write_shadow(live, docs, X_new)
        live.record = record.moved(upgrades.BACKFILLING, fit=fit, gate=verdict)
        await run_in_threadpool(live.gens.save_record, live.record)
        log.info("upgrade %s of %s fitted: %s; gate %s", record.id, name, fit, verdict)

    async def _labelled(self, name: str, live: LiveUpgrade, record: upgrades.UpgradeRecord):
        """The upgrade's labelled queries embedded by both models (None without any)."""
        if not record.labelled:
            return None
        texts = [q["query"] for q in record.labelled]
        old_encoder = await self._embedder.encoder_of((await self.current(name)).backend)
        assert old_encoder is not None  # upgrades are of text collections
        old = await self._embed(name, old_encoder, texts, throttle=True, kind="query")
        new = await self._embed(name, live.new_encoder, texts, throttle=True, kind="query")
        return upgrades.Labelled(old, new, [set(q["relevant"]) for q in record.labelled])

    async def _sync_step(self, name: str, live: LiveUpgrade, throttle: bool) -> bool:
        """Plan once and apply the plan in batches. False when there was nothing to do."""
        source = await self.current(name)
        if live.caught_up:
            seq = await source.last_seq()
            if seq is not None and seq == live.synced_seq:
                return False
            if seq is None and time.monotonic() - live.planned_at < self.settings.upgrade_shared_poll_s:
                return False  # writes reach both generations; a full comparison now and then repairs the rest
        epoch = live.epoch
        live.planned_at = time.monotonic()
        plan = await run_in_threadpool(upgrades.plan_sync, source.backend, live.shadow.backend)
        live.total, live.done = plan.total, plan.done
        batch = self.settings.upgrade_batch_size
        for start in range(0, len(plan.upserts), batch):
            async with live.sync_lock:
                if live.epoch != epoch:  # cut over or rolled back meanwhile: plan again
                    return True
                await self._apply(name, live, plan.upserts[start : start + batch], throttle)
        async with live.sync_lock:
            if live.epoch != epoch:
                return True
            if plan.deletes:
                await live.shadow.delete(plan.deletes)
            live.synced, live.synced_seq = True, plan.source_seq
        if live.shadow.backend.needs_snapshot and plan.upserts:
            await live.shadow.snapshot()
        return True

    async def _apply(
        self, name: str, live: LiveUpgrade, items: list[tuple[str, str | None, str]], throttle: bool
    ) -> None:
        texts = [(doc_id, text, meta) for doc_id, text, meta in items if text is not None]  # live: text required
        if not texts:
            return
        t0 = time.perf_counter()
        X = await self._embed(name, live.shadow_encoder, [text for _, text, _ in texts], throttle=False)
        docs = [
            NewDocument(id=doc_id, vector=x, text=text, metadata=json.loads(meta))
            for (doc_id, text, meta), x in zip(texts, X)
        ]
        await live.shadow.upsert(docs)
        fault_point("upgrade.after_backfill_batch", name)
        if live.shadow.backend.wants_rotation_fit:
            await live.shadow.fit_rotation()
        busy = time.perf_counter() - t0
        live.done += len(docs)
        live.embedded += len(docs)
        live.rate = len(docs) / busy if live.rate == 0 else 0.8 * live.rate + 0.2 * len(docs) / busy
        self._metrics.backfilled.labels(name).inc(len(docs))
        if throttle:
            await asyncio.sleep(busy * (1 / self.settings.upgrade_max_busy - 1))

    async def _embed(
        self, name: str, encoder: Encoder, texts: list[str], throttle: bool, kind: str = "document"
    ) -> np.ndarray:
        """Encode in batches through the shared inference thread (never one long call)."""
        out = []
        batch = self.settings.upgrade_batch_size
        for start in range(0, len(texts), batch):
            t0 = time.perf_counter()
            out.append(await self._embedder.embed(name, encoder, texts[start : start + batch], kind, background=True))
            if throttle:
                await asyncio.sleep((time.perf_counter() - t0) * (1 / self.settings.upgrade_max_busy - 1))
        return np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)

    async def _write_shadow(self, live: LiveUpgrade, docs, X: np.ndarray) -> None:
        new = [NewDocument(id=d.id, vector=x, text=d.text, metadata=d.metadata or {}) for d, x in zip(docs, X)]
        for start in range(0, len(new), 1000):
            await live.shadow.upsert(new[start : start + 1000])

    # -- cut-over, rollback, finalize, abort ---------------------------------------------------
    async def cut_over(self, name: str, upgrade_id: str, force: bool = False) -> upgrades.UpgradeRecord:
        """Make the new generation serve. Unless `force`, the backfill must have caught up; with
        it, writes wait while the rest is re-embedded. Either way no document is left behind."""
        self.settings.require_maintenance("cut over")
        async with self.lifecycle(name):
            live = await self._require_live(name, upgrade_id, (upgrades.BACKFILLING,), "cut over")
            if not force and not await self.caught_up(name, live):
                raise Conflict(
                    f"backfill of upgrade {upgrade_id} is at {live.done}/{live.total} documents; wait for it "
                    f"or cut over with force=true (writes then wait until it is done)",
                    code="backfill_incomplete",
                )
            await self._flip(name, live, to_shadow_state=upgrades.CUT_OVER)
            return live.record

    async def rollback(self, name: str, upgrade_id: str) -> upgrades.UpgradeRecord:
        """Serve the previous generation again (kept in sync since the cut-over); the new one is deleted."""
        self.settings.require_maintenance("roll back")
        async with self.lifecycle(name):
            live = await self._require_live(name, upgrade_id, (upgrades.CUT_OVER,), "roll back")
            await self._flip(name, live, to_shadow_state=upgrades.ROLLED_BACK)
            await self._end(name, live)
            return live.record

    async def finalize(self, name: str, upgrade_id: str) -> upgrades.UpgradeRecord:
        """Delete the previous generation: the upgrade can no longer be rolled back."""
        self.settings.require_maintenance("finalize")
        async with self.lifecycle(name):
            live = await self._require_live(name, upgrade_id, (upgrades.CUT_OVER,), "finalize")
            async with live.sync_lock:
                live.record = live.record.moved(upgrades.FINALIZED)
                await run_in_threadpool(live.gens.save_record, live.record)
            await self._end(name, live)
            return live.record

    async def abort(self, name: str, upgrade_id: str) -> upgrades.UpgradeRecord:
        """Stop an upgrade before cut-over and delete its new generation; nothing else changes."""
        self.settings.require_maintenance("abort")
        async with self.lifecycle(name):
            record, live = await self._record(name, upgrade_id), self._live.get(name)
            running = live is not None and live.record.id == record.id
            if record.state in (upgrades.FITTING, upgrades.BACKFILLING) and not running:
                return await self._abort_orphan(name, record)
            live = await self._require_live(name, upgrade_id, (upgrades.FITTING, upgrades.BACKFILLING), "abort")
            async with live.sync_lock:
                live.record = live.record.moved(upgrades.ABORTED)
                await run_in_threadpool(live.gens.save_record, live.record)
            await self._end(name, live)
            return live.record

    async def _abort_orphan(self, name: str, record: upgrades.UpgradeRecord) -> upgrades.UpgradeRecord:
        """An upgrade whose record says it runs while nothing here runs it (this process is the
        one that runs upgrades): its start died half-way, or it was written by a process that
        no longer runs it. It ends aborted, and its new generation (if any) goes."""
        gens = await run_in_threadpool(self._generations, name)
        record = record.moved(upgrades.ABORTED)
        await run_in_threadpool(gens.save_record, record)
        try:
            await run_in_threadpool(gens.remove, record.new_generation)
        except NotFound:
            pass  # never created
        log.warning("upgrade %s of %s was live with nothing running it: aborted", record.id, name)
        return record

    async def _flip(self, name: str, live: LiveUpgrade, to_shadow_state: str) -> None:
        """Under the write gate and the sync lock: sync the shadow completely, then swap it in.
        On a shared backend, first give every replica time to see the upgrade (they then write
        both generations), so no write lands on one generation only once the roles flip."""
        await self._settle(live.record.created_at)
        async with self.write_gate(name), live.sync_lock:
            source = await self.current(name)
            batch = self.settings.upgrade_batch_size
            while True:  # writes are held, so this converges; searches go on meanwhile
                plan = await run_in_threadpool(upgrades.plan_sync, source.backend, live.shadow.backend)
                if plan.empty:
                    break
                for start in range(0, len(plan.upserts), batch):
                    await self._apply(name, live, plan.upserts[start : start + batch], False)
                if plan.deletes:
                    await live.shadow.delete(plan.deletes)
            # Limits and the recall policy are the collection's, not a generation's: a PATCH since
            # the upgrade began (or, for a rollback, since the cut-over) reached the serving one only.
            await live.shadow.set_limits(source.manifest.limits)
            await live.shadow.set_recall_policy(source.recall_policy)
            await live.shadow.snapshot()
            previous_encoder = await self._embedder.encoder_of(source.backend)  # before anything flips
            assert previous_encoder is not None  # upgrades are of text collections
            self._embedder.attach(live.shadow.backend, live.shadow_encoder)
            fault_point("upgrade.before_swap", name)
            retired = await run_in_threadpool(self._catalog().swap, name, live.shadow.backend)
            fault_point("upgrade.after_swap", name)  # the pointer is flipped, the record not yet: reconcile fixes it
            live.record = live.record.moved(to_shadow_state)
            await run_in_threadpool(live.gens.save_record, live.record)
            live.shadow, live.shadow_encoder = AsyncCollection(retired), previous_encoder
            live.epoch += 1
            live.synced, live.synced_seq, live.done, live.total = False, None, plan.total, plan.total
            self._forget_recall(name)
        log.info("upgrade %s of %s: %s", live.record.id, name, to_shadow_state)

    async def _end(self, name: str, live: LiveUpgrade) -> None:
        """The upgrade is over: stop its task and delete the generation it was keeping in sync."""
        if self._live.get(name) is live:
            del self._live[name]
        await self._cancel(live)
        if self._shared:  # replicas may still write the shadow until they see the upgrade end
            task = asyncio.create_task(self._discard_shadow(live, settle=True))
            self._discarding.add(task)
            task.add_done_callback(self._discarding.discard)
        else:
            await self._discard_shadow(live)

    async def _discard_shadow(self, live: LiveUpgrade, settle: bool = False) -> None:
        """Delete the generation the upgrade kept in sync (after the settle time, on a shared backend)."""
        if settle:
            await self._settle(live.record.updated_at)
        generation = live.gens.generation_of(live.shadow.backend)
        try:
            await live.shadow.close()
            await run_in_threadpool(live.gens.remove, generation)
        except Exception as exc:  # the next start-up removes it (_resume), from the record
            if gone_meanwhile(exc):  # the drop that took the collection took its generations
                return
            log.exception("generation %s of %s could not be removed", generation, live.record.collection)

    async def _settle(self, since: float) -> None:
        """On a shared backend: wait until `upgrade_settle_s` have passed since `since` (wall
        clock), the time every replica is given to notice an upgrade's new state."""
        if self._shared:
            wait = self.settings.upgrade_settle_s - (time.time() - since)
            if wait > 0:
                await asyncio.sleep(wait)

    async def _require_live(self, name: str, upgrade_id: str, states: tuple[str, ...], action: str) -> LiveUpgrade:
        record = await self._record(name, upgrade_id)
        live = self._live.get(name)
        if live is None or live.record.id != upgrade_id or record.state not in states:
            raise Conflict(f"cannot {action} upgrade {upgrade_id}: it is {record.state}", code="invalid_upgrade_state")
        return live

    async def _cancel(self, live: LiveUpgrade) -> None:
        task = live.task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    # -- lifecycle ----------------------------------------------------------------------------
    async def forget(self, name: str) -> None:
        """The collection is being dropped: stop its upgrade and close the shadow (files go with it)."""
        live = self._live.pop(name, None)
        if live is not None:
            await self._cancel(live)
            await live.shadow.close()
        self._gates.pop(name, None)

    async def stop(self) -> None:
        """Shutdown: stop the tasks, snapshot and close the shadows; they resume next start."""
        for name, live in list(self._live.items()):
            await self._cancel(live)
            try:
                await live.shadow.snapshot()
            except Exception:
                log.exception("snapshot of the shadow generation of %s failed; it replays next start", name)
            await live.shadow.close()
        self._live.clear()
