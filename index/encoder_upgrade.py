"""Encoder upgrades, the model-free part: records, generations, the sync plan, the map's fit and
evaluation, and searches over a half-backfilled collection.

An upgrade builds a second *generation* of a collection (`<home>/gen-<id>/`, an ordinary
`Collection` whose manifest names the new encoder) while the first keeps serving. The new model
queries the old generation at once through a fitted map (`index/procrustes.py`); a sync
re-embeds every document into the new generation; cut-over points `current.json` at it. After
cut-over the roles flip: the old generation becomes the one kept in sync, so a rollback loses
no write, until the upgrade is finalized and the old generation deleted.

The sync compares contents, not logs: a document is in sync when the shadow generation holds
the same id with the same text and metadata. So a crash anywhere resumes by planning again,
writes made meanwhile are simply found stale by the next plan, and upserts by id never index a
document twice. The service does the embedding (models live there); this module never imports
one.
"""

import io
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from index.backend import CollectionBackend, Query, SearchResult
from index.catalog import active_generation
from index.collection import COLLECTION_FILES, Collection
from index.errors import Invalid, NotFound
from index.files import fsync_path, json_bytes, npy_bytes, sha256_hex, write_atomic
from index.manifest import Elasticizer, Manifest
from index.procrustes import (
    BLEND,
    BLEND_ALPHAS,
    DEFAULT_BLEND_ALPHA,
    DEFAULT_MAP_KINDS,
    LINEAR_KINDS,
    QueryMap,
    ScoreCalibration,
    fit_calibration,
    fit_map_kind,
    orthogonality_error,
)
from index.scoring import Match
from index.vectors import top_k

UPGRADES_DIR = "upgrades"

# Lifecycle: fitting → backfilling → cut_over → finalized; or → rolled_back (from cut_over),
# aborted (before cut-over) or failed (an error the sync cannot get past).
FITTING, BACKFILLING, CUT_OVER = "fitting", "backfilling", "cut_over"
FINALIZED, ROLLED_BACK, ABORTED, FAILED = "finalized", "rolled_back", "aborted", "failed"
LIVE_STATES = (FITTING, BACKFILLING, CUT_OVER)


@dataclass(frozen=True)
class UpgradeRecord:
    """Everything an upgrade is, persisted as `<home>/upgrades/<id>.json` (the map beside it)."""

    id: str
    collection: str
    state: str
    model: dict[str, Any]  # the new generation's encoder (the manifest's `encoder` block)
    previous_model: dict[str, Any]
    old_generation: str  # "." or "gen-<id>", relative to the home
    new_generation: str
    created_at: float
    updated_at: float
    sample: int  # documents embedded with both models for the fit
    holdout: float  # share of the sample kept out of the fit to evaluate it
    seed: int
    min_cosine: float  # the compatibility gate
    min_recall: float
    fit: dict[str, Any] | None = None  # figures of the fit and its evaluation
    gate: dict[str, Any] | None = None  # {"passed": bool, "reason": str}
    calibration: dict[str, float] | None = None  # ScoreCalibration fields
    map_sha256: str | None = None
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # [{"state", "at"}]
    map_kinds: list[str] = field(default_factory=lambda: list(DEFAULT_MAP_KINDS))  # the families fitted and gated
    labelled: list[dict[str, Any]] | None = None  # [{"query", "relevant": [ids]}]: the labelled gate

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def serves_mapped(self) -> bool:
        """New-model text queries go through the map (the gate passed, cut-over not yet done)."""
        return self.state == BACKFILLING and bool(self.gate and self.gate["passed"])

    def moved(self, state: str, **changes: Any) -> "UpgradeRecord":
        now = time.time()
        return replace(
            self, state=state, updated_at=now, history=[*self.history, {"state": state, "at": now}], **changes
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def new_record(
    collection: CollectionBackend,
    old_generation: str,
    model: dict[str, Any],
    *,
    sample: int,
    holdout: float,
    seed: int,
    min_cosine: float,
    min_recall: float,
    map_kinds: list[str] | None = None,
    labelled: list[dict[str, Any]] | None = None,
) -> UpgradeRecord:
    upgrade_id = uuid.uuid4().hex[:12]
    now = time.time()
    return UpgradeRecord(
        id=upgrade_id,
        collection=collection.name,
        state=FITTING,
        model=model,
        previous_model=dict(collection.manifest.encoder or {}),
        old_generation=old_generation,
        new_generation=f"gen-{upgrade_id}",
        created_at=now,
        updated_at=now,
        sample=sample,
        holdout=holdout,
        seed=seed,
        min_cosine=min_cosine,
        min_recall=min_recall,
        history=[{"state": FITTING, "at": now}],
        map_kinds=list(map_kinds or DEFAULT_MAP_KINDS),
        labelled=labelled,
    )


def active_generation_of(collection: Collection) -> str:
    """ "." when `collection` lives in its home directly, else its `gen-<id>` name."""
    name = os.path.basename(collection.path)
    return name if name.startswith("gen-") else "."


def home_of(collection: Collection) -> str:
    return os.path.dirname(collection.path) if active_generation_of(collection) != "." else collection.path


# -- persistence -------------------------------------------------------------------------------
def save_record(home: str, record: UpgradeRecord) -> None:
    folder = os.path.join(home, UPGRADES_DIR)
    os.makedirs(folder, exist_ok=True)
    write_atomic(os.path.join(folder, f"{record.id}.json"), json_bytes(record.to_json()))


def load_records(home: str) -> list[UpgradeRecord]:
    """Every upgrade of the collection at `home`, oldest first; ValueError names an unreadable one.

    A record is only ever replaced whole (`write_atomic`), never deleted alone: one listed and
    gone when opened, or the folder gone, went with the home (a drop, or a restore moving it
    aside) while this read; the caller checks the collection again (it is then "not found" or
    "being restored"). Before, that was an "unreadable record" and a 500."""
    folder = os.path.join(home, UPGRADES_DIR)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    records = []
    for name in names:
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as f:
                    records.append(UpgradeRecord(**json.load(f)))
            except FileNotFoundError:
                continue  # removed with its home meanwhile
            except (OSError, ValueError, TypeError) as exc:
                raise ValueError(
                    f"upgrade record {UPGRADES_DIR}/{name} is unreadable ({type(exc).__name__}: {exc})"
                ) from exc
    return sorted(records, key=lambda r: r.created_at)


def reconcile(active: str, record: UpgradeRecord) -> UpgradeRecord:
    """Make a record agree with the generation that serves (`active`, the one source of truth:
    `current.json`, or the shared engine's collection entry): a crash between the switch and the
    record's write leaves them apart."""
    if record.state in (FITTING, BACKFILLING) and active == record.new_generation:
        return record.moved(CUT_OVER)
    if record.state == CUT_OVER and active == record.old_generation:
        return record.moved(ROLLED_BACK)
    return record


def save_map(home: str, record_id: str, W: np.ndarray) -> str:
    """Write the map as `<home>/upgrades/<id>.map.npy`; returns its sha256."""
    os.makedirs(os.path.join(home, UPGRADES_DIR), exist_ok=True)
    data = npy_bytes(W)
    write_atomic(os.path.join(home, UPGRADES_DIR, f"{record_id}.map.npy"), data)
    return sha256_hex(data)


def load_map(home: str, record: UpgradeRecord) -> np.ndarray:
    path = os.path.join(home, UPGRADES_DIR, f"{record.id}.map.npy")
    with open(path, "rb") as f:
        data = f.read()
    if sha256_hex(data) != record.map_sha256:
        raise Invalid(f"upgrade {record.id}: map file {path} does not match its checksum")
    return np.load(io.BytesIO(data))


class FileGenerations:
    """`Generations` of an embedded collection: folders under its home (`.` is the home itself,
    `gen-<id>` a folder in it), `current.json` naming the one that serves, records and maps as
    files in `<home>/upgrades/`."""

    def __init__(self, home: str, options):
        self.home = home
        self._options = options

    def __repr__(self) -> str:
        return f"FileGenerations({self.home!r})"

    def generation_of(self, collection: Collection) -> str:
        return active_generation_of(collection)

    def active(self) -> str:
        return active_generation(self.home)

    def create(self, generation: str, manifest: Manifest) -> Collection:
        return create_generation(self.home, generation, manifest, self._options)

    def open(self, generation: str) -> Collection:
        path = os.path.normpath(os.path.join(self.home, generation))
        if not os.path.exists(os.path.join(path, "manifest.json")):
            raise NotFound(f"generation {generation} not found in {self.home}", code="generation_not_found")
        return open_generation(path, self._options)

    def remove(self, generation: str) -> None:
        remove_generation(self.home, generation)

    def records(self) -> list[UpgradeRecord]:
        return load_records(self.home)

    def save_record(self, record: UpgradeRecord) -> None:
        save_record(self.home, record)

    def save_map(self, record_id: str, W: np.ndarray) -> str:
        return save_map(self.home, record_id, W)

    def load_map(self, record: UpgradeRecord) -> np.ndarray:
        return load_map(self.home, record)


# -- generations -------------------------------------------------------------------------------
def new_generation_manifest(old: Manifest, model: dict[str, Any], dim: int, matryoshka: bool) -> Manifest:
    """The new generation's manifest: the old one's settings, the new encoder and dim, no
    rotation or snapshot yet. Indexed dims above the new model's dim are dropped; a PCA
    elasticizer is kept (refitted on the new vectors) unless the new model is Matryoshka-trained."""
    dims = sorted({d for d in old.indexed_dims if d < dim} | {dim}) if old.dims else []
    kind = (
        "none"
        if matryoshka or not old.dims or len(dims) == 1
        else (old.elasticizer.kind if old.elasticizer.kind != "none" else "pca")
    )
    return old.replace(
        dim=dim,
        dims=dims,
        encoder=model,
        elasticizer=replace(old.elasticizer, kind=kind) if old.dims else Elasticizer(),
        rotation=None,
        snapshot=None,
        tuned_ef={},
    )


def open_generation(path: str, options) -> Collection:
    """Open a generation's collection (the shadow an upgrade keeps in sync)."""
    return Collection.open(path, options)


def create_generation(home: str, generation: str, manifest: Manifest, options) -> Collection:
    """Create (or, after a crash, reopen) the collection directory of `generation`."""
    path = os.path.join(home, generation)
    if os.path.exists(os.path.join(path, "manifest.json")):
        return Collection.open(path, options)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    Collection.create(path, manifest, options).close()
    fsync_path(home)
    return Collection.open(path, options)


def remove_generation(home: str, generation: str) -> None:
    """Delete a generation's files: its directory, or for "." the collection files in the home."""
    if generation != ".":
        shutil.rmtree(os.path.join(home, generation), ignore_errors=True)
        return
    for name in COLLECTION_FILES:
        path = os.path.join(home, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)


# -- sync --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyncPlan:
    """What the shadow generation lacks: documents to (re-)embed and ids to delete."""

    upserts: list[tuple[str, str | None, str]]  # (id, text, metadata JSON), in the source's label order
    deletes: list[str]
    total: int  # live documents in the source
    source_seq: int | None  # the source's last write when planned (a newer one means plan again); None: no sequence

    @property
    def done(self) -> int:
        return self.total - len(self.upserts)

    @property
    def empty(self) -> bool:
        return not self.upserts and not self.deletes


def plan_sync(source: Collection, shadow: Collection) -> SyncPlan:
    """Compare the two generations by content. Reading the seq first means a write landing
    during the comparison is seen again by the next plan, never lost."""
    seq = source.last_seq()
    want = source.contents()
    have = shadow.contents()
    upserts = [(doc_id, text, meta) for doc_id, (text, meta) in want.items() if have.get(doc_id) != (text, meta)]
    deletes = [doc_id for doc_id in have if doc_id not in want]
    return SyncPlan(upserts, deletes, len(want), seq)


# -- fit and evaluation ------------------------------------------------------------------------
@dataclass(frozen=True)
class FittedMap:
    """One family's map, its score calibration, and its held-out figures."""

    kind: str
    W: np.ndarray  # (d_new, d_old), or (d_new + 1, d_old) for an affine map (a blend: its base map's)
    calibration: ScoreCalibration
    figures: dict[str, Any]
    alpha: float | None = None  # a blend's weight on the mapped query

    @property
    def query_map(self) -> QueryMap:
        return QueryMap(self.W, self.alpha)


@dataclass(frozen=True)
class MapFit:
    """Every family fitted on one sample: `maps` by kind, and the figures they share."""

    maps: dict[str, FittedMap]
    figures: dict[str, Any]  # sample sizes and dims, and "maps": each family's figures


@dataclass(frozen=True)
class Labelled:
    """Labelled queries for the gate: each embedded by both models, and its relevant ids."""

    old_queries: np.ndarray  # (m, d_old)
    new_queries: np.ndarray  # (m, d_new)
    relevant: list[set[str]]


def ndcg_at_k(found: list[list[str]], relevant: list[set[str]], k: int = 10) -> float:
    """Mean nDCG@k with binary relevance over queries that have relevant ids."""
    scores = []
    for ids, rel in zip(found, relevant):
        if not rel:
            continue
        dcg = sum(1.0 / np.log2(i + 2) for i, doc in enumerate(ids[:k]) if doc in rel)
        ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(rel), k)))
        scores.append(dcg / ideal)
    return float(np.mean(scores)) if scores else 0.0


def split_sample(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices `(fit, heldout)` of a sample of `n`: a seeded `holdout` share held out (≥ 1 each)."""
    order = np.random.default_rng(seed).permutation(n)
    held = min(max(1, round(holdout * n)), n - 1)
    return np.sort(order[held:]), np.sort(order[:held])


def fit_map(
    X_new: np.ndarray,
    X_old: np.ndarray,
    held: np.ndarray,
    fit: np.ndarray,
    old: Collection,
    held_ids: list[str],
    k: int = 10,
    kinds: tuple[str, ...] = DEFAULT_MAP_KINDS,
    labelled: Labelled | None = None,
    seed: int = 0,
) -> MapFit:
    """Fit every map family of `kinds` on rows `fit` and evaluate each on rows `held` (paired
    texts of both models).

    Figures per family: the mean (and 10th-percentile) cosine of mapped vs old vectors over
    held-out rows; recall@k of the held-out documents' mapped new vectors used as queries against
    the old generation's index, relative to their old vectors as queries (each document's own id
    left out of both lists); with `labelled` queries, nDCG@k of the mapped new-model queries
    against the old index (and, shared, of the old model's own queries: the bar to reach). The
    score calibration is fitted on held-out queries against the fit rows: new→new scores of each
    query's top-k neighbours against their mapped→old scores.

    A blend's base is the best of the linear families (all three are fitted for it when `kinds`
    names none), its `alpha` the best of BLEND_ALPHAS on the labelled queries, or
    DEFAULT_BLEND_ALPHA without any. A held-out document's old vector stands for the old model's
    query.
    """
    nn = X_new[held] @ X_new[fit].T
    cols, _ = top_k(nn, k)
    same = np.take_along_axis(nn, cols, 1)

    def evaluate(kind: str, W: np.ndarray, alpha: float | None, fit_s: float) -> FittedMap:
        qmap = QueryMap(W, alpha)
        mapped = qmap(X_new[held], X_old[held])
        cosines = np.einsum("ij,ij->i", mapped, X_old[held])
        cross = np.take_along_axis(mapped @ X_old[fit].T, cols, 1)
        figures: dict[str, Any] = {
            "mean_cosine": float(cosines.mean()),
            "p10_cosine": float(np.percentile(cosines, 10)),
            f"recall_at_{k}": _relative_recall(old, mapped, X_old[held], held_ids, k),
            "orthogonality_error": orthogonality_error(W),
            "fit_seconds": fit_s,
        }
        if labelled is not None:
            figures[f"labelled_ndcg_at_{k}"] = _ndcg(
                old, qmap(labelled.new_queries, labelled.old_queries), labelled.relevant, k
            )
        return FittedMap(kind, W, fit_calibration(cross, same), figures, alpha)

    linear = [kind for kind in kinds if kind in LINEAR_KINDS] or (list(LINEAR_KINDS) if BLEND in kinds else [])
    maps: dict[str, FittedMap] = {}
    for kind in linear:
        t0 = time.perf_counter()
        W = fit_map_kind(kind, X_new[fit], X_old[fit], seed)
        maps[kind] = evaluate(kind, W, None, time.perf_counter() - t0)
    if BLEND in kinds:
        base = max(linear, key=lambda kind: _merit(maps[kind].figures, labelled is not None, k))
        W, alpha, by_alpha = maps[base].W, DEFAULT_BLEND_ALPHA, {}
        if labelled is not None:  # alpha is chosen on the labelled queries alone: one search each
            for a in BLEND_ALPHAS:
                blended = QueryMap(W, a)(labelled.new_queries, labelled.old_queries)
                by_alpha[a] = _ndcg(old, blended, labelled.relevant, k)
            alpha = max(BLEND_ALPHAS, key=lambda a: (by_alpha[a], -a))  # a tie: the one nearer the old model
        chosen = evaluate(BLEND, W, alpha, maps[base].figures["fit_seconds"])
        chosen.figures.update(base=base, alpha=alpha)
        if labelled is not None:
            chosen.figures[f"labelled_ndcg_at_{k}_by_alpha"] = {str(a): v for a, v in by_alpha.items()}
        maps[BLEND] = chosen
    maps = {kind: maps[kind] for kind in kinds if kind in maps}  # only the families asked for
    shared: dict[str, Any] = {
        "n_fit": len(fit),
        "n_heldout": len(held),
        "d_new": int(X_new.shape[1]),
        "d_old": int(X_old.shape[1]),
        "maps": {kind: m.figures for kind, m in maps.items()},
    }
    if labelled is not None:
        shared["labelled"] = {
            "queries": len(labelled.relevant),
            f"old_to_old_ndcg_at_{k}": _ndcg(old, labelled.old_queries, labelled.relevant, k),
        }
    return MapFit(maps, shared)


def _merit(figures: dict[str, Any], labelled: bool, k: int) -> tuple[float, ...]:
    """How a family ranks against the others: its labelled nDCG, else its relative recall; then
    its mean cosine."""
    first = figures[f"labelled_ndcg_at_{k}"] if labelled else figures[f"recall_at_{k}"]
    return (first, figures["mean_cosine"])


def _ndcg(old: Collection, queries: np.ndarray, relevant: list[set[str]], k: int) -> float:
    found = old.search(Query(queries, k))
    return ndcg_at_k([[m.id for m in row] for row in found.matches], relevant, k)


def _relative_recall(old: Collection, mapped: np.ndarray, old_queries: np.ndarray, ids: list[str], k: int) -> float:
    """Mean |top-k(mapped) ∩ top-k(old)| / k over the queries, each query's own id excluded."""
    got = old.search(Query(mapped, k + 1))
    want = old.search(Query(old_queries, k + 1))
    overlaps = []
    for own, g, w in zip(ids, got.matches, want.matches):
        truth = [m.id for m in w if m.id != own][:k]
        found = {m.id for m in g if m.id != own}
        if truth:
            overlaps.append(len(found.intersection(truth)) / len(truth))
    return float(np.mean(overlaps)) if overlaps else 0.0


def gate(figures: dict[str, Any], min_cosine: float, min_recall: float, k: int = 10) -> dict[str, Any]:
    """The compatibility gate over every fitted family: with labelled queries a family passes
    when its mapped new-model queries reach the old model's own nDCG@k on them (M(new→old) ≥
    M(old→old), the published criterion); without, when its held-out figures reach both
    thresholds. The best family that passes serves (labelled nDCG, else relative recall, then
    mean cosine); `map` names it, or the best one when none passed. A blend passes only on
    labelled queries: the held-out figures measure closeness to the old model's own queries,
    which a blend has by construction (it starts from them), not whether it finds more. A blend
    that serves also gives its `alpha` and `base` map."""
    labelled = figures.get("labelled")
    results: dict[str, str] = {}
    for kind, f in figures["maps"].items():
        failures = []
        if labelled is not None:
            bar, got = labelled[f"old_to_old_ndcg_at_{k}"], f[f"labelled_ndcg_at_{k}"]
            if got < bar:
                failures.append(f"nDCG@{k} of mapped queries on the labelled queries {got:.4f} < old→old {bar:.4f}")
        elif kind == BLEND:
            failures.append("a blend serves only on labelled queries (labelled_queries)")
        else:
            if f["mean_cosine"] < min_cosine:
                failures.append(f"mean cosine of mapped vs old vectors {f['mean_cosine']:.3f} < {min_cosine}")
            if f[f"recall_at_{k}"] < min_recall:
                failures.append(
                    f"recall@{k} of mapped queries relative to old queries {f[f'recall_at_{k}']:.3f} < {min_recall}"
                )
        results[kind] = "; ".join(failures) or "passed"

    def merit(kind: str) -> tuple[float, ...]:
        rank = _merit(figures["maps"][kind], labelled is not None, k)
        return rank if labelled is not None or len(results) == 1 else (float(kind != BLEND), *rank)

    passing = [kind for kind, result in results.items() if result == "passed"]
    chosen = max(passing or list(results), key=merit)
    served = figures["maps"][chosen]
    extra = {"alpha": served["alpha"], "base": served["base"]} if chosen == BLEND else {}
    if passing:
        how = (
            f"a blend of each query's previous-model embedding and its {extra['base']} map (alpha {extra['alpha']})"
            if chosen == BLEND
            else f"the {chosen} map"
        )
        reason = f"new-model queries are served against the old index through {how}"
        return {"passed": True, "map": chosen, **extra, "maps": results, "reason": reason}
    why = "; ".join(f"{kind}: {result}" for kind, result in results.items())
    return {
        "passed": False,
        "map": chosen,
        **extra,
        "maps": results,
        "reason": f"no map passed ({why}): queries keep using the previous model until cut-over",
    }


def query_map_of(record: UpgradeRecord, W: np.ndarray) -> QueryMap:
    """The record's served map `W` (its map file) as a QueryMap: a blend's alpha is in its gate."""
    chosen = record.gate or {}
    return QueryMap(W, chosen.get("alpha") if chosen.get("map") == BLEND else None)


# -- searches while mixed ----------------------------------------------------------------------
def mixed_search(
    source: Collection,
    shadow: Collection,
    qmap: QueryMap,
    calibration: ScoreCalibration,
    query: Query,
    old_queries: np.ndarray | None = None,
    merge: bool | None = None,
) -> SearchResult:
    """Top-k for new-model queries (`query.queries (nq, d_new)`) while the shadow is half backfilled.

    The source (every document, old vectors) is searched with the mapped queries (a blend also
    reads the same texts' old-model queries, `old_queries (nq, d_old)`); the shadow
    (backfilled documents, new vectors) with the queries as they are. A shadow hit counts only
    while its document is in sync (same text and metadata as the source), and keeps its new→new
    score; every other candidate gets its mapped score calibrated onto the new→new scale, so the
    two kinds rank on one scale (the mixed-gallery pitfall of algorithms.md §3.3 step 4).

    `merge` (default: `qmap.merges_backfilled`) False searches the source alone: what a blend
    serves, every document being there.
    """
    k, include = query.k, query.include
    old = source.search(replace(query, queries=qmap(query.queries, old_queries)))
    if not (qmap.merges_backfilled if merge is None else merge):
        return old
    new_dim = query.dim if query.dim in shadow.dims else None
    shadow_include = tuple(i for i in include if i != "vector")
    new = shadow.search(replace(query, dim=new_dim, include=shadow_include, probe=False))
    shadow_ids = sorted({m.id for ms in new.matches for m in ms})
    in_sync = _in_sync(source, shadow, shadow_ids)
    merged = []
    for old_matches, new_matches in zip(old.matches, new.matches):
        by_id: dict[str, Match] = {}
        scaled = calibration(np.asarray([m.score for m in old_matches], np.float32))
        for m, s in zip(old_matches, scaled):
            by_id[m.id] = replace(m, score=float(s))
        for m in new_matches:
            if m.id in in_sync:
                kept = by_id.get(m.id)
                by_id[m.id] = replace(kept, score=m.score) if kept is not None else _with_vector(source, m, include)
        merged.append(sorted(by_id.values(), key=lambda m: -m.score)[:k])
    timings = {key: old.timings.get(key, 0.0) + new.timings.get(key, 0.0) for key in {*old.timings, *new.timings}}
    return replace(old, matches=merged, timings=timings, candidates=old.candidates + new.candidates)


def _in_sync(source: Collection, shadow: Collection, ids: list[str]) -> set[str]:
    if not ids:
        return set()
    want, have = source.contents(ids), shadow.contents(ids)
    return {i for i in ids if i in want and want[i] == have.get(i)}


def _with_vector(source: Collection, match: Match, include: tuple[str, ...]) -> Match:
    """A shadow-only hit, with its vector (if asked for) from the serving generation's space."""
    if "vector" not in include:
        return match
    return replace(match, vector=source.get(match.id).vector)
