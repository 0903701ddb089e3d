"""The model-free half of encoder upgrades: sync plans, mixed searches, generations, records."""

import os

import numpy as np
import pytest

from index import Catalog, HnswParams, Manifest, NewDocument, Query, QueryMap, upgrades
from index.catalog import active_generation
from index.procrustes import BLEND_ALPHAS, MAP_KINDS, fit_orthogonal_map
from index.vectors import normalize


def manifest(name: str, dim: int) -> Manifest:
    return Manifest(
        name=name,
        dim=dim,
        metric="cosine",
        hnsw=HnswParams(m=16, ef_construction=100, ef_search=200),
        created_at="test",
        encoder={"model": "old", "dim": dim},
    )


def docs(ids, X, texts=None):
    return [
        NewDocument(id=i, vector=x, text=(texts or {}).get(i, f"text {i}"), metadata={"n": n})
        for n, (i, x) in enumerate(zip(ids, X))
    ]


@pytest.fixture
def catalog(tmp_path):
    c = Catalog(str(tmp_path / "data"))
    yield c
    c.close()


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d))
    return normalize((centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, d))).astype(np.float32))


def test_sync_plan_finds_missing_stale_and_deleted_documents(catalog):
    source = catalog.create(manifest("kb", 8))
    home = catalog.home("kb")
    shadow = upgrades.create_generation(
        home, "gen-x", manifest("kb", 4).replace(encoder={"model": "new", "dim": 4}), catalog.options
    )
    X = clustered(10, 8, 0)
    ids = [f"d{i}" for i in range(10)]
    source.upsert(docs(ids, X))
    plan = upgrades.plan_sync(source, shadow)
    assert [u[0] for u in plan.upserts] == ids and plan.deletes == [] and plan.done == 0 and plan.total == 10
    shadow.upsert(docs([*ids[:6], "gone"], clustered(7, 4, 1)))
    source.upsert(docs(["d2"], X[2:3], {"d2": "changed"}))  # stale in the shadow now
    plan = upgrades.plan_sync(source, shadow)
    assert sorted(u[0] for u in plan.upserts) == ["d2", "d6", "d7", "d8", "d9"]
    assert plan.deletes == ["gone"] and plan.done == 5 and plan.source_seq == source.last_seq()
    shadow.upsert(
        [
            NewDocument(id=i, vector=np.ones(4, np.float32), text=t, metadata=__import__("json").loads(m))
            for i, t, m in plan.upserts
        ]
    )
    shadow.delete(plan.deletes)
    assert upgrades.plan_sync(source, shadow).empty


def test_mixed_search_with_an_exact_map_equals_the_old_results_and_ignores_stale_shadow_hits(catalog):
    """New = old rotated: the map is exact, so new→old, mixed at 50% and old→old agree; a
    shadow document whose source text changed is scored through the map, not from the shadow."""
    n, d = 2000, 32
    X_old = clustered(n, d, 2)
    R = np.linalg.qr(np.random.default_rng(3).standard_normal((d, d)))[0].astype(np.float32)
    X_new = X_old @ R.T  # new model = old one rotated; the map back is R
    ids = [f"d{i}" for i in range(n)]
    source = catalog.create(manifest("kb", d))
    source.upsert(docs(ids, X_old))
    shadow = upgrades.create_generation(catalog.home("kb"), "gen-y", manifest("kb", d), catalog.options)
    half = np.arange(0, n, 2)
    shadow.upsert(docs([ids[i] for i in half], X_new[half]))
    W = fit_orthogonal_map(X_new[:1500], X_old[:1500])
    assert np.abs(W - R).max() < 1e-4
    Q_old = clustered(50, d, 4)
    Q_new = Q_old @ R.T
    plain = source.search(Query(Q_old, 10))
    assert set(upgrades.fit_map(X_new, X_old, np.arange(1500, n), np.arange(1500), source, ids[1500:]).maps) == {
        "orthogonal",
        "ridge",
        "affine",
    }  # a blend is fitted when asked for
    fitted = upgrades.fit_map(X_new, X_old, np.arange(1500, n), np.arange(1500), source, ids[1500:], kinds=MAP_KINDS)
    assert set(fitted.maps) == {"orthogonal", "ridge", "affine", "blend"}
    for family in fitted.maps.values():  # a pure rotation: every family recovers it (a blend of equals too)
        assert family.figures["mean_cosine"] > 0.999 and family.figures["recall_at_10"] > 0.98, family.kind
    fit = fitted.maps["orthogonal"]
    assert fit.figures["mean_cosine"] > 0.9999 and fit.figures["recall_at_10"] > 0.99
    assert fit.calibration.scale == pytest.approx(1.0, abs=1e-3) and abs(fit.calibration.offset) < 1e-3
    verdict = upgrades.gate(fitted.figures, 0.8, 0.8)
    assert verdict["passed"] and verdict["map"] in {"orthogonal", "ridge", "affine"}
    assert {kind for kind, result in verdict["maps"].items() if result == "passed"} == {"orthogonal", "ridge", "affine"}
    assert "labelled" in verdict["maps"]["blend"]  # a blend serves only on labelled queries
    mixed = upgrades.mixed_search(source, shadow, QueryMap(W), fit.calibration, Query(Q_new, 10))
    blend = fitted.maps["blend"]
    assert blend.alpha == 0.5 and blend.figures["base"] in {"orthogonal", "ridge", "affine"}
    blended = upgrades.mixed_search(source, shadow, blend.query_map, fit.calibration, Query(Q_new, 10), Q_old)
    # a blend searches the old generation alone (merged, it fell below old→old on SciFact)
    assert fit.query_map.merges_backfilled and not blend.query_map.merges_backfilled
    alone = source.search(Query(blend.query_map(Q_new, Q_old), 10))
    assert [[m.id for m in ms] for ms in blended.matches] == [[m.id for m in ms] for ms in alone.matches]
    assert blended.candidates == alone.candidates
    for a, b, c in zip(plain.matches, mixed.matches, blended.matches):
        assert [m.id for m in a] == [m.id for m in b] == [m.id for m in c]
        assert [m.score for m in a] == pytest.approx([m.score for m in b], abs=1e-4)
    # labelled queries: the blend's alpha is chosen on them, each one tried reported
    truth = [{m.id for m in row[:3]} for row in plain.matches]
    labelled = upgrades.Labelled(Q_old, Q_new, truth)
    by_labels = upgrades.fit_map(
        X_new, X_old, np.arange(1500, n), np.arange(1500), source, ids[1500:], kinds=MAP_KINDS, labelled=labelled
    )
    tried = by_labels.maps["blend"].figures["labelled_ndcg_at_10_by_alpha"]
    assert set(tried) == {str(a) for a in BLEND_ALPHAS} and by_labels.maps["blend"].alpha in BLEND_ALPHAS
    assert by_labels.maps["blend"].figures["labelled_ndcg_at_10"] == max(tried.values()) > 0.95
    assert by_labels.figures["labelled"]["old_to_old_ndcg_at_10"] > 0.95
    with pytest.raises(ValueError, match="old model's queries"):
        upgrades.mixed_search(source, shadow, blend.query_map, fit.calibration, Query(Q_new, 10))
    # a stale shadow document: the source moved it away; the shadow still has it near the query
    top = mixed.matches[0][0].id
    far = normalize(-Q_old[:1])[0]
    source.upsert(docs([top], far[None, :], {top: "rewritten"}))
    again = upgrades.mixed_search(source, shadow, QueryMap(W), fit.calibration, Query(Q_new[:1], 10))
    assert top not in [m.id for m in again.matches[0]]
    assert [m.id for m in again.matches[0]] == [m.id for m in source.search(Query(Q_old[:1], 10)).matches[0]]


def test_swap_generations_is_persistent_and_old_generation_files_can_be_removed(tmp_path):
    data = str(tmp_path / "data")
    catalog = Catalog(data)
    old = catalog.create(manifest("kb", 4))
    old.upsert(docs(["a"], clustered(1, 4, 5)))
    new = upgrades.create_generation(catalog.home("kb"), "gen-z", manifest("kb", 6), catalog.options)
    new.upsert(docs(["a", "b"], clustered(2, 6, 6)))
    new.snapshot()
    assert catalog.swap("kb", new) is old
    assert catalog.get("kb") is new and active_generation(catalog.home("kb")) == "gen-z"
    old.close()
    upgrades.remove_generation(catalog.home("kb"), ".")
    assert sorted(os.listdir(catalog.home("kb"))) == ["current.json", "gen-z"]
    catalog.close()
    reopened = Catalog(data)
    reopened.open_all()
    assert reopened.get("kb").manifest.dim == 6 and len(reopened.get("kb")) == 2
    reopened.close()


def test_records_reconcile_with_the_pointer(catalog):
    source = catalog.create(manifest("kb", 4))
    gens = catalog.generations("kb")
    record = upgrades.new_record(
        source,
        gens.generation_of(source),
        {"model": "new", "dim": 4},
        sample=10,
        holdout=0.2,
        seed=0,
        min_cosine=0.8,
        min_recall=0.8,
    ).moved(upgrades.BACKFILLING)
    assert record.old_generation == "." and record.new_generation == f"gen-{record.id}"
    gens.save_record(record)
    assert gens.records() == [record]
    assert upgrades.reconcile(gens.active(), record) is record
    shadow = gens.create(record.new_generation, manifest("kb", 4))
    catalog.swap("kb", shadow)  # crashed after the pointer moved, before the record said so
    assert upgrades.reconcile(gens.active(), record).state == upgrades.CUT_OVER
    catalog.swap("kb", source)  # ... and after a rollback's pointer move
    assert upgrades.reconcile(gens.active(), record.moved(upgrades.CUT_OVER)).state == upgrades.ROLLED_BACK


def test_new_generation_manifest_keeps_settings_and_drops_dims_above_the_new_model():
    old = manifest("kb", 768).replace(dims=[128, 512, 768])
    new = upgrades.new_generation_manifest(old, {"model": "new", "dim": 384}, 384, matryoshka=False)
    assert new.dim == 384 and new.dims == [128, 384] and new.elasticizer.kind == "pca"
    assert new.hnsw == old.hnsw and new.rotation is None and new.snapshot is None
    assert (
        upgrades.new_generation_manifest(old, {"model": "m", "dim": 384}, 384, matryoshka=True).elasticizer.kind
        == "none"
    )
    plain = upgrades.new_generation_manifest(manifest("kb", 384), {"model": "m", "dim": 256}, 256, matryoshka=False)
    assert plain.dims == [] and plain.indexed_dims == [256]


def test_records_read_while_their_home_is_removed_are_the_ones_still_there(catalog, monkeypatch):
    """A record listed, then gone when opened (a drop or a restore took the home meanwhile),
    was "unreadable" (ValueError: a 500 for GET upgrades); it is skipped, and a folder gone
    before the listing reads as no records. A damaged record is still named."""
    import index.encoder_upgrade as encoder_upgrade

    source = catalog.create(manifest("kb", 4))
    gens = catalog.generations("kb")
    made = [
        upgrades.new_record(
            source, ".", {"model": f"new{i}", "dim": 4}, sample=10, holdout=0.2, seed=0, min_cosine=0.8, min_recall=0.8
        )
        for i in range(3)
    ]
    for record in made:
        gens.save_record(record)
    folder = os.path.join(gens.home, "upgrades")
    listdir = os.listdir

    def listed_then_one_removed(path):
        names = listdir(path)
        os.remove(os.path.join(folder, f"{made[1].id}.json"))
        return names

    monkeypatch.setattr(encoder_upgrade.os, "listdir", listed_then_one_removed)
    assert [r.id for r in gens.records()] == [made[0].id, made[2].id]
    monkeypatch.undo()
    with open(os.path.join(folder, f"{made[2].id}.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        gens.records()
    import shutil

    shutil.rmtree(folder)
    assert gens.records() == []
