"""`UpgradeManager`: encoder upgrades as background tasks, one live upgrade per collection.

A task per live upgrade runs on the event loop: it fits the map (embedding a sample with the
new model), then keeps the shadow generation in sync with the serving one, batch by batch,
through the shared inference thread and with a duty cycle so user encodes keep their latency.
Cut-over and rollback take the collection's write gate (writes wait, searches do not) and the
upgrade's sync lock, finish the sync, and flip `current.json`. The model-free parts (records,
plans, the map, mixed searches) live in `index/upgrade.py`.
"""

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from index import Collection, MultiVectorCollection, NewDocument
from index import upgrade as up
from index.errors import Conflict, Invalid, NotFound
from index.faults import fault_point
from index.procrustes import ScoreCalibration

log = logging.getLogger(__name__)


@dataclass
class LiveUpgrade:
    """A running upgrade: its record, the generation kept in sync (the shadow) and its encoder."""

    record: up.UpgradeRecord
    home: str
    shadow: Collection
    shadow_encoder: Any
    new_encoder: Any
    W: np.ndarray | None = None
    calibration: ScoreCalibration = field(default_factory=ScoreCalibration)
    sync_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task | None = None
    epoch: int = 0  # bumped when the roles flip: a plan made before is void
    done: int = 0
    total: int = 0
    synced_seq: int = -1  # the serving generation's last seq the shadow fully reflects
    rate: float = 0.0  # documents re-embedded per second (moving average)
    embedded: int = 0

    @property
    def caught_up(self) -> bool:
        """The last plan was applied in full (see `UpgradeManager.caught_up` for "and nothing since")."""
        return self.synced_seq >= 0 and self.done >= self.total


class UpgradeManager:
    def __init__(self, engine):
        self.engine = engine
        self.settings = engine.settings
        self._live: dict[str, LiveUpgrade] = {}
        self._gates: dict[str, asyncio.Lock] = {}

    # -- lookups ------------------------------------------------------------------------------
    def write_gate(self, name: str) -> asyncio.Lock:
        """Writes to `name` hold this while they resolve the serving generation and write to it,
        so a cut-over (which holds it too) never lets a write land on a retired generation."""
        return self._gates.setdefault(name, asyncio.Lock())

    def live(self, name: str) -> LiveUpgrade | None:
        return self._live.get(name)

    def progress(self, name: str) -> tuple[int, float]:
        """(1 while an upgrade is live else 0, the sync's done/total or 1.0)."""
        live = self._live.get(name)
        if live is None:
            return 0, 1.0
        return 1, (live.done / live.total if live.total else (1.0 if live.caught_up else 0.0))

    def records(self, name: str) -> list[dict[str, Any]]:
        collection = self.engine.collection(name)
        return [self._view(r) for r in up.load_records(up.home_of(collection))]

    def get(self, name: str, upgrade_id: str) -> dict[str, Any]:
        return self._view(self._record(name, upgrade_id))

    def _record(self, name: str, upgrade_id: str) -> up.UpgradeRecord:
        live = self._live.get(name)
        if live is not None and live.record.id == upgrade_id:
            return live.record
        for record in up.load_records(up.home_of(self.engine.collection(name))):
            if record.id == upgrade_id:
                return record
        raise NotFound(f"upgrade {upgrade_id!r} of collection {name!r} not found", code="upgrade_not_found")

    def caught_up(self, name: str, live: LiveUpgrade) -> bool:
        """The shadow reflects every write the serving generation has (a cheap seq comparison)."""
        return live.caught_up and self.engine.collection(name).last_seq() == live.synced_seq

    def _view(self, record: up.UpgradeRecord) -> dict[str, Any]:
        view = record.to_json()
        live = self._live.get(record.collection)
        if live is not None and live.record.id == record.id:
            remaining = live.total - live.done
            done = self.caught_up(record.collection, live)
            view["progress"] = {
                "done": live.done,
                "total": live.total,
                "caught_up": done,
                "rate_docs_per_s": round(live.rate, 2),
                "embedded": live.embedded,
                "eta_s": round(remaining / live.rate, 1) if live.rate > 0 and remaining else (0.0 if done else None),
                "syncing": "new generation" if record.state != up.CUT_OVER else "previous generation (for rollback)",
            }
        return view

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
    ) -> dict[str, Any]:
        engine, s = self.engine, self.settings
        async with self.write_gate(name):
            source = engine.collection(name)
            if isinstance(source, MultiVectorCollection):
                raise Invalid(
                    f"collection {name!r} holds multi-vector (token) documents; upgrades re-embed dense "
                    f"text collections with a dense model",
                    code="unsupported_upgrade",
                )
            current = source.manifest.encoder
            if current is None:
                raise Invalid(
                    f"collection {name!r} holds vectors only; there is no model to upgrade", code="unsupported_upgrade"
                )
            if name in self._live:
                raise Conflict(
                    f"upgrade {self._live[name].record.id} of collection {name!r} is still "
                    f"{self._live[name].record.state}; finalize, roll back or abort it first",
                    code="upgrade_in_progress",
                )
            ref = engine.encoders.resolve(model)
            if ref.name == current["model"] or ref.path == engine.encoders.resolve(current["model"]).path:
                raise Invalid(f"collection {name!r} already uses model {model!r}", code="same_model")
            new_encoder = await engine.load_encoder(model)
            contents = await engine.run(source.contents)
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
            record = up.new_record(
                source,
                model_info,
                sample=sample or s.upgrade_sample,
                holdout=holdout or s.upgrade_holdout,
                seed=seed,
                min_cosine=s.upgrade_min_cosine if min_cosine is None else min_cosine,
                min_recall=s.upgrade_min_recall if min_recall is None else min_recall,
            )
            home = up.home_of(source)
            manifest = up.new_generation_manifest(
                source.manifest, model_info, new_encoder.dim, bool(new_encoder.matryoshka_dims)
            )
            shadow = await engine.run(
                up.create_generation, home, record.new_generation, manifest, engine.catalog.options
            )
            await engine.run(up.save_record, home, record)
            live = LiveUpgrade(record, home, shadow, new_encoder, new_encoder, total=len(contents))
            self._live[name] = live
            live.task = asyncio.create_task(self._run(name, live))
        return self._view(record)

    async def resume_all(self) -> None:
        """At start-up: reconcile every record with `current.json`, clean up what a crash left,
        and restart the live upgrades where they stopped (their plans are recomputed)."""
        for collection in self.engine.collections():
            home = up.home_of(collection)
            try:
                records = up.load_records(home)
            except ValueError as exc:  # which generation must be kept in sync is unknown: do not guess
                reason = f"{exc}; repair or delete that file and restart, or drop the collection"
                log.error("collection %s is marked failed: %s", collection.name, reason)
                await self.engine.run(self.engine.catalog.mark_failed, collection.name, reason)
                continue
            for record in records:
                try:
                    await self._resume(collection, home, record)
                except Exception as exc:
                    log.exception("upgrade %s of %s cannot resume", record.id, collection.name)
                    try:
                        await self.engine.run(
                            up.save_record, home, record.moved(up.FAILED, error=f"cannot resume: {exc}")
                        )
                    except Exception:
                        log.exception("cannot record that upgrade %s of %s failed", record.id, collection.name)

    async def _resume(self, collection: Collection, home: str, record: up.UpgradeRecord) -> None:
        engine = self.engine
        fixed = up.reconcile(home, record)
        if fixed is not record:
            await engine.run(up.save_record, home, fixed)
            record = fixed
        if record.state in (up.ABORTED, up.ROLLED_BACK):
            await engine.run(up.remove_generation, home, record.new_generation)  # a crash may have left it
        if not record.live:
            return
        new_encoder = await engine.load_encoder(record.model["model"], record.model["dim"])
        if record.state == up.CUT_OVER:
            shadow_dir, shadow_encoder = (
                record.old_generation,
                await engine.load_encoder(record.previous_model["model"]),
            )
            engine.attach_encoder(collection, new_encoder)
        else:
            shadow_dir, shadow_encoder = record.new_generation, new_encoder
        shadow = await engine.run(
            Collection.open, os.path.normpath(os.path.join(home, shadow_dir)), engine.catalog.options
        )
        live = LiveUpgrade(record, home, shadow, shadow_encoder, new_encoder)
        if record.map_sha256:
            live.W = await engine.run(up.load_map, home, record)
            live.calibration = ScoreCalibration(**record.calibration)
        self._live[collection.name] = live
        live.task = asyncio.create_task(self._run(collection.name, live))
        log.info("upgrade %s of %s resumed in state %s", record.id, collection.name, record.state)

    # -- the background task ------------------------------------------------------------------
    async def _run(self, name: str, live: LiveUpgrade) -> None:
        try:
            if live.record.state == up.FITTING:
                await self._fit(name, live)
            while True:
                if not await self._sync_step(name, live, throttle=True):
                    await asyncio.sleep(self.settings.upgrade_poll_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("upgrade %s of %s failed", live.record.id, name)
            live.record = live.record.moved(up.FAILED, error=f"{type(exc).__name__}: {exc}")
            await self.engine.run(up.save_record, live.home, live.record)
            self._live.pop(name, None)
            if live.record.old_generation != up.active_generation_of(live.shadow):
                await self.engine.run(self._discard_shadow, live)

    async def _fit(self, name: str, live: LiveUpgrade) -> None:
        """Embed a sample with the new model, fit and evaluate the map, apply the gate. The
        sample's new vectors are written to the new generation: the fit's work is not wasted."""
        engine, record = self.engine, live.record
        source = engine.collection(name)
        docs = await engine.run(source.sample_documents, record.sample, record.seed)
        t0 = time.perf_counter()
        X_new = await self._embed(name, live.new_encoder, [d.text for d in docs], throttle=True)
        embed_s = time.perf_counter() - t0
        if len(docs) < 10:
            fit = {"n_fit": len(docs), "reason": "too few documents"}
            verdict = {
                "passed": False,
                "reason": f"{len(docs)} documents are too few to fit a map (need 10): "
                f"queries keep using the previous model until cut-over",
            }
        else:
            X_old = np.stack([d.vector for d in docs])
            fit_rows, held_rows = up.split_sample(len(docs), record.holdout, record.seed)
            result = await engine.run(
                up.fit_map, X_new, X_old, held_rows, fit_rows, source, [docs[i].id for i in held_rows]
            )
            fit = {**result.figures, "embed_seconds": embed_s, "sample_docs_per_s": len(docs) / max(embed_s, 1e-9)}
            verdict = up.gate(result.figures, record.min_cosine, record.min_recall)
            live.W, live.calibration = result.W, result.calibration
            sha = await engine.run(up.save_map, live.home, record.id, result.W)
            record = replace(record, map_sha256=sha, calibration=vars(result.calibration))
        await self._write_shadow(live, docs, X_new)
        live.record = record.moved(up.BACKFILLING, fit=fit, gate=verdict)
        await engine.run(up.save_record, live.home, live.record)
        log.info("upgrade %s of %s fitted: %s; gate %s", record.id, name, fit, verdict)

    async def _sync_step(self, name: str, live: LiveUpgrade, throttle: bool) -> bool:
        """Plan once and apply the plan in batches. False when there was nothing to do."""
        source = self.engine.collection(name)
        if live.caught_up and await self.engine.run(source.last_seq) == live.synced_seq:
            return False
        epoch = live.epoch
        plan = await self.engine.run(up.plan_sync, source, live.shadow)
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
                await self.engine.run(live.shadow.delete, plan.deletes)
            live.synced_seq = plan.source_seq
        if live.shadow.needs_snapshot and plan.upserts:
            await self.engine.run(live.shadow.snapshot)
        return True

    async def _apply(
        self, name: str, live: LiveUpgrade, items: list[tuple[str, str | None, str]], throttle: bool
    ) -> None:
        items = [item for item in items if item[1] is not None]  # writes without text are refused while live
        if not items:
            return
        t0 = time.perf_counter()
        X = await self._embed(name, live.shadow_encoder, [text for _, text, _ in items], throttle=False)
        docs = [
            NewDocument(id=doc_id, vector=x, text=text, metadata=json.loads(meta))
            for (doc_id, text, meta), x in zip(items, X)
        ]
        await self.engine.run(live.shadow.upsert, docs)
        fault_point("upgrade.after_backfill_batch", name)
        if live.shadow.wants_rotation_fit:
            await self.engine.run(live.shadow.fit_rotation)
        busy = time.perf_counter() - t0
        live.done += len(docs)
        live.embedded += len(docs)
        live.rate = len(docs) / busy if live.rate == 0 else 0.8 * live.rate + 0.2 * len(docs) / busy
        self.engine.metrics.backfilled.labels(name).inc(len(docs))
        if throttle:
            await asyncio.sleep(busy * (1 / self.settings.upgrade_max_busy - 1))

    async def _embed(self, name: str, encoder, texts: list[str], throttle: bool) -> np.ndarray:
        """Encode in batches through the shared inference thread (never one long call)."""
        out = []
        batch = self.settings.upgrade_batch_size
        for start in range(0, len(texts), batch):
            t0 = time.perf_counter()
            out.append(await self.engine.encode(name, encoder, texts[start : start + batch], "document"))
            if throttle:
                await asyncio.sleep((time.perf_counter() - t0) * (1 / self.settings.upgrade_max_busy - 1))
        return np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)

    async def _write_shadow(self, live: LiveUpgrade, docs, X: np.ndarray) -> None:
        new = [NewDocument(id=d.id, vector=x, text=d.text, metadata=d.metadata or {}) for d, x in zip(docs, X)]
        for start in range(0, len(new), 1000):
            await self.engine.run(live.shadow.upsert, new[start : start + 1000])

    # -- cut-over, rollback, finalize, abort ---------------------------------------------------
    async def cut_over(self, name: str, upgrade_id: str, force: bool = False) -> dict[str, Any]:
        """Make the new generation serve. Unless `force`, the backfill must have caught up; with
        it, writes wait while the rest is re-embedded. Either way no document is left behind."""
        live = self._require_live(name, upgrade_id, (up.BACKFILLING,), "cut over")
        if not force and not self.caught_up(name, live):
            raise Conflict(
                f"backfill of upgrade {upgrade_id} is at {live.done}/{live.total} documents; wait for it "
                f"or cut over with force=true (writes then wait until it is done)",
                code="backfill_incomplete",
            )
        await self._flip(name, live, to_shadow_state=up.CUT_OVER)
        return self._view(live.record)

    async def rollback(self, name: str, upgrade_id: str) -> dict[str, Any]:
        """Serve the previous generation again (kept in sync since the cut-over); the new one is deleted."""
        live = self._require_live(name, upgrade_id, (up.CUT_OVER,), "roll back")
        await self._flip(name, live, to_shadow_state=up.ROLLED_BACK)
        await self._end(name, live)
        return self._view(live.record)

    async def finalize(self, name: str, upgrade_id: str) -> dict[str, Any]:
        """Delete the previous generation: the upgrade can no longer be rolled back."""
        live = self._require_live(name, upgrade_id, (up.CUT_OVER,), "finalize")
        async with live.sync_lock:
            live.record = live.record.moved(up.FINALIZED)
            await self.engine.run(up.save_record, live.home, live.record)
        await self._end(name, live)
        return self._view(live.record)

    async def abort(self, name: str, upgrade_id: str) -> dict[str, Any]:
        """Stop an upgrade before cut-over and delete its new generation; nothing else changes."""
        live = self._require_live(name, upgrade_id, (up.FITTING, up.BACKFILLING), "abort")
        async with live.sync_lock:
            live.record = live.record.moved(up.ABORTED)
            await self.engine.run(up.save_record, live.home, live.record)
        await self._end(name, live)
        return self._view(live.record)

    async def _flip(self, name: str, live: LiveUpgrade, to_shadow_state: str) -> None:
        """Under the write gate and the sync lock: sync the shadow completely, then swap it in."""
        engine = self.engine
        async with self.write_gate(name), live.sync_lock:
            source = engine.collection(name)
            while True:  # writes are held, so this converges; searches go on meanwhile
                plan = await engine.run(up.plan_sync, source, live.shadow)
                if plan.empty:
                    break
                for start in range(0, len(plan.upserts), self.settings.upgrade_batch_size):
                    await self._apply(name, live, plan.upserts[start : start + self.settings.upgrade_batch_size], False)
                if plan.deletes:
                    await engine.run(live.shadow.delete, plan.deletes)
            await engine.run(live.shadow.snapshot)
            engine.attach_encoder(live.shadow, live.shadow_encoder)
            fault_point("upgrade.before_swap", name)
            retired = await engine.run(engine.catalog.swap, name, live.shadow)
            fault_point("upgrade.after_swap", name)  # current.json is flipped, the record not yet: reconcile fixes it
            live.record = live.record.moved(to_shadow_state)
            await engine.run(up.save_record, live.home, live.record)
            previous_encoder = engine.encoder_for(retired)
            live.shadow, live.shadow_encoder = retired, previous_encoder
            live.epoch += 1
            live.synced_seq, live.done, live.total = -1, plan.total, plan.total
            engine.recall.reset(name)
        log.info("upgrade %s of %s: %s", live.record.id, name, to_shadow_state)

    async def _end(self, name: str, live: LiveUpgrade) -> None:
        """The upgrade is over: stop its task and delete the generation it was keeping in sync."""
        if self._live.get(name) is live:
            del self._live[name]
        await self._cancel(live)
        await self.engine.run(self._discard_shadow, live)

    def _discard_shadow(self, live: LiveUpgrade) -> None:
        generation = up.active_generation_of(live.shadow)
        live.shadow.close()
        up.remove_generation(live.home, generation)

    def _require_live(self, name: str, upgrade_id: str, states: tuple[str, ...], action: str) -> LiveUpgrade:
        record = self._record(name, upgrade_id)
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
            await self.engine.run(live.shadow.close)
        self._gates.pop(name, None)

    async def stop(self) -> None:
        """Shutdown: stop the tasks, snapshot and close the shadows; they resume next start."""
        for name, live in list(self._live.items()):
            await self._cancel(live)
            try:
                await self.engine.run(live.shadow.snapshot)
            except Exception:
                log.exception("snapshot of the shadow generation of %s failed; it replays next start", name)
            await self.engine.run(live.shadow.close)
        self._live.clear()
