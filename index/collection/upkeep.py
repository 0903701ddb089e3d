"""Keeping a collection's caches in shape: snapshots, rebuilds, and fitting the PCA rotation.

A snapshot saves every graph under fresh file names, then points the manifest at them, so the
files the current manifest names are never overwritten and a crash (or a full disk) midway
leaves the last snapshot whole. A rebuild makes a fresh `IndexSet` from the vector file while
the old one serves, replays what was written meanwhile and swaps. A refit saves a rotation
(named by its checksum), rebuilds the low-dim graphs with it, and snapshots.
"""

import os

from index.faults import fault_point
from index.files import fsync_path
from index.indexset import IndexSet
from index.manifest import Manifest, RecallPolicy, Rotation, Snapshot
from index.rotation import fit_from_store, save_rotation
from index.store import storage_errors

from .layout import ROTATION_DIR, SNAPSHOT_DIR, export_files, remove_stale_files
from .state import CollectionState, views_of


class Upkeep:
    def __init__(self, state: CollectionState):
        self._s = state

    # -- what is due ----------------------------------------------------------------------------
    @property
    def pending_writes(self) -> int:
        """Store seqs applied to the graphs but not yet in a snapshot (0: snapshot is current)."""
        snapshot = self._s.manifest.snapshot
        return self._s.applied_seq - (snapshot.applied_seq if snapshot else 0)

    @property
    def needs_snapshot(self) -> bool:
        """Writes or tuned efs that are not on disk yet."""
        return self.pending_writes > 0 or self._s.tuned_dirty

    @property
    def needs_rebuild(self) -> bool:
        s = self._s
        if s.stale:
            return True
        deleted = s.indexes.deleted_count
        return (
            deleted >= s.options.rebuild_min_deleted
            and deleted > s.options.rebuild_deleted_fraction * s.indexes.slot_count
        )

    @property
    def wants_rotation_fit(self) -> bool:
        """The PCA elasticizer has not fitted yet and enough documents exist to fit it."""
        m = self._s.manifest
        return (
            m.elasticizer.kind == "pca"
            and m.rotation is None
            and min(self._s.indexes.dims) < m.dim
            and len(self._s.indexes) >= m.elasticizer.fit_at
        )

    # -- doing it -------------------------------------------------------------------------------
    def snapshot(self, force: bool = False, wait: bool = True) -> bool:
        """Save every graph and point the manifest at them. Returns False when already current,
        or (with `wait=False`) when a rebuild or refit of this collection is running."""
        if not self._s.maintenance.acquire(blocking=wait):
            return False
        try:
            return self._snapshot_locked(force)
        finally:
            self._s.maintenance.release()

    def rebuild(self) -> None:
        """Rebuild every graph without deleted slots while the old ones serve, then swap."""
        with self._s.maintenance:
            self._rebuild_locked(self._s.indexes.views, reuse={})
            self._snapshot_locked(force=True)

    def fit_rotation(self, sample: int | None = None, seed: int | None = None) -> Rotation:
        """Fit the PCA rotation on a deterministic sample of stored vectors, rebuild the low-dim
        graphs from the vector file (no model needed) and swap them in. Full-dim results do not
        change."""
        s = self._s
        with s.maintenance:
            s.check_open()
            m = s.manifest
            sample = sample or m.elasticizer.sample
            seed = m.elasticizer.seed if seed is None else seed
            fit = fit_from_store(s.store, s.vectors, sample, seed)
            with s.write_mutex, storage_errors():
                s.check_open()  # a dropped collection's path may already hold a new collection
                record = save_rotation(os.path.join(s.path, ROTATION_DIR), fit, seed, s.applied_seq, s.indexes.dims)
            fault_point("rotation.after_save", s.name)
            views = views_of(m, fit.rotation)
            full = {d: i for d, i in s.indexes.indexes.items() if views[d].is_full}
            self._rebuild_locked(views, reuse=full, manifest=m.replace(rotation=record))
            self._snapshot_locked(force=True)
            return record

    def set_recall_policy(self, policy: RecallPolicy) -> None:
        """Replace the recall policy (saved at once). Without a target, tuned efs are dropped; with
        one, they are clamped to the new bounds and the controller goes on from there."""
        policy.check()
        s = self._s
        with s.maintenance, s.write_mutex:
            s.check_open()
            if policy.target is None:
                s.tuned_ef, s.tuned_rerank = {}, {}
            else:
                s.tuned_ef = {d: min(max(e, policy.ef_min), policy.ef_max) for d, e in s.tuned_ef.items()}
            s.save_manifest(s.manifest.replace(recall=policy))

    def export(self, folder: str) -> tuple[int, int]:
        """A consistent copy of the collection in `folder` (see `index.backup`): graph and
        rotation files as the manifest names them, then the store. Writes go on meanwhile;
        snapshots, rebuilds and refits wait (they would replace or purge what is being copied)."""
        s = self._s
        with s.maintenance, s.reading():  # a drop may close the store meanwhile: NotFound, not a store error
            return export_files(folder, s.manifest, s.path, s.store.backup_to)

    def set_limits(self, limits: dict[str, int]) -> None:
        """Replace the per-collection request limits the service keeps in the manifest (saved at once)."""
        s = self._s
        with s.maintenance, s.write_mutex:
            s.check_open()
            s.save_manifest(s.manifest.replace(limits=dict(limits)))

    def set_ef_search(self, dim: int, ef: int) -> None:
        """Set the default ef of one graph (the recall controller does); saved with the next snapshot."""
        s = self._s
        s.indexes.require(dim, s.name)
        s.tuned_ef = {**s.tuned_ef, dim: int(ef)}  # replaced, never mutated: a snapshot may be reading it
        s.tuned_dirty = True

    def set_rerank_factor(self, dim: int, factor: int) -> None:
        """Set the default funnel factor of one dim (the recall controller does); saved with the next snapshot."""
        s = self._s
        s.indexes.require(dim, s.name)
        s.tuned_rerank = {**s.tuned_rerank, dim: int(factor)}
        s.tuned_dirty = True

    # -- under the maintenance lock -------------------------------------------------------------
    def _snapshot_locked(self, force: bool) -> bool:
        s = self._s
        with s.write_mutex:
            s.check_open()
            if s.manifest.snapshot is not None and self.pending_writes == 0 and not force:
                if s.tuned_dirty:  # only the tuned efs changed: the graphs on disk are current
                    s.save_manifest(s.manifest)
                return False
            seq = s.applied_seq
            folder = os.path.join(s.path, SNAPSHOT_DIR)
            with storage_errors():
                s.vectors.flush()  # the full-dim mirror is durable up to `seq` as well
                files = s.indexes.save(folder, seq)
                try:
                    fsync_path(folder)  # the new files' names, before the manifest names them
                    fault_point("snapshot.after_graphs", s.name)
                    rotation_sha = s.manifest.rotation.sha256 if s.manifest.rotation else None
                    s.save_manifest(s.manifest.replace(snapshot=Snapshot(files, seq, rotation_sha)))
                except BaseException:
                    remove_stale_files(s.path, s.manifest)
                    raise
            fault_point("snapshot.after_manifest", s.name)
            # Replays start at `seq` from now on, so older tombstones are no longer needed.
            s.store.purge_tombstones(seq)
            # Under the write mutex: once a drop has closed this collection, its path may already
            # hold a new collection of the same name, whose files are not ours to remove.
            remove_stale_files(s.path, s.manifest)
        return True

    def _rebuild_locked(self, views: dict, reuse: dict, manifest: Manifest | None = None) -> None:
        s = self._s
        s.check_open()
        with s.write_mutex:
            # Every write up to `start_seq` is already in the vector file the build reads (a
            # write commits and applies under this mutex); later ones are replayed below.
            start_seq = s.applied_seq
        fresh = IndexSet.empty(views, s.manifest.hnsw, capacity=len(s.indexes) + 16, reuse=reuse)
        fresh.fill_from(s.vectors, skip=set(reuse))
        with s.write_mutex:
            s.check_open()
            # Rows written since the build began are re-applied; replay is idempotent, so rows
            # the build already saw are simply updated in place.
            s.replay(fresh, start_seq)
            fault_point("rebuild.before_swap", s.name)
            s.indexes = fresh
            s.applied_seq = s.store.last_seq()
            s.stale = False
            if manifest is not None:
                s.manifest = manifest
