"""Recall measurement and the ef controller, in the index package (no service).

The estimator's numbers are checked against an oracle written here with plain numpy on real
GloVe vectors, a hard set for HNSW, so recall at small ef is well below 1.
"""

import itertools
import math

import numpy as np
import pytest

from index import Collection, HnswParams, Manifest, NewDocument, Query
from index.pacing import paced
from index.protocols import Hits
from index.recall_oracle import FINAL_STAGE, INDEX_STAGE, EfController, LadderController, WhatIf, per_query_recall
from index.scoring import scan_rows
from tests.support.datasets import read_vecs, shared_path


@pytest.fixture(scope="module")
def glove() -> tuple[np.ndarray, np.ndarray]:
    """20,000 GloVe base vectors and 200 of the benchmark's queries, both unit-normalised."""
    folder = shared_path("glove-6B-50d-100k")
    X = read_vecs(folder / "glove-6B-50d-100k_base.fvecs.gz", "float32")[:20000]
    Q = read_vecs(folder / "glove-6B-50d-100k_query.fvecs.gz", "float32")[:200]
    return X / np.linalg.norm(X, axis=1, keepdims=True), Q / np.linalg.norm(Q, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def glove_collection(tmp_path_factory, glove) -> Collection:
    X, _ = glove
    manifest = Manifest(
        name="glove",
        dim=50,
        metric="cosine",
        hnsw=HnswParams(m=6, ef_construction=40, ef_search=10),
        created_at="now",
        dims=[16, 50],
    )
    collection = Collection.create(str(tmp_path_factory.mktemp("glove")), manifest)
    for s in range(0, len(X), 5000):
        collection.upsert([NewDocument(id=str(i), vector=X[i]) for i in range(s, min(s + 5000, len(X)))])
    return collection


def oracle_recall(X: np.ndarray, Q: np.ndarray, returned_ids: list[list[str]], k: int) -> np.ndarray:
    """Per-query recall@k of returned ids against numpy brute force (cosine) over `X`."""
    S = Q @ X.T
    out = []
    for i, ids in enumerate(returned_ids):
        kth = np.sort(S[i])[-k]
        out.append(sum(S[i, int(d)] >= kth - 1e-5 for d in ids) / k)
    return np.array(out)


def test_per_query_recall_counts_ties_at_the_cut_off_and_skips_empty_truth():
    truth = Hits(np.array([[1, 2, 3], [-1, -1, -1]]), np.array([[0.9, 0.8, 0.7], [-np.inf] * 3], np.float32))
    # query 0 returned label 1, a different document tied with the 3rd (0.7), and a miss
    found = np.array([[0.9, 0.7, 0.1], [0.5, 0.4, 0.3]], np.float32)
    r = per_query_recall(found, truth)
    assert r[0] == pytest.approx(2 / 3) and math.isnan(r[1])


def test_estimated_recall_equals_an_independent_oracle(glove_collection, glove):
    X, Q = glove
    for dim, ef in ((50, 10), (50, 40), (16, 10)):
        result = glove_collection.search(Query(Q, 10, dim=dim, ef=ef, probe=True))
        stages = {s.stage: s for s in glove_collection.evaluate_recall(result.probe)}
        returned = [[m.id for m in row] for row in result.matches]
        expected = oracle_recall(X, Q, returned, 10)
        assert np.allclose(stages[FINAL_STAGE].recall, expected), dim
        assert result.probe.ef == max(ef, result.candidates) and stages[INDEX_STAGE].k == result.candidates
    # the oracle must be able to fail: at ef=10 on GloVe, HNSW misses a real share of neighbours
    low = glove_collection.search(Query(Q, 10, ef=10, probe=True))
    high = glove_collection.search(Query(Q, 10, ef=200, probe=True))
    mean = lambda r: np.nanmean(glove_collection.evaluate_recall(r.probe)[1].recall)  # noqa: E731
    assert mean(low) < 0.9 < mean(high)


def test_probes_merge_into_one_exact_pass_with_the_same_readings(glove_collection, glove):
    """Single-query probes of one graph merge into one; its per-query recall is exactly what each
    probe measured alone. Probes of other dims, another ef or another k stay apart."""
    _, Q = glove
    singles = [glove_collection.search(Query(Q[i : i + 1], 10, dim=16, probe=True)).probe for i in range(40)]
    others = [
        glove_collection.search(Query(Q[:2], 10, dim=50, probe=True)).probe,
        glove_collection.search(Query(Q[:2], 10, dim=16, ef=77, probe=True)).probe,
        glove_collection.search(Query(Q[:1], 5, dim=16, probe=True)).probe,
    ]
    merged = glove_collection.merge_probes(singles + others)
    assert len(merged) == 4 and merged[0].queries == 40 and [p.queries for p in merged[1:]] == [2, 2, 1]
    # a merged funnel probe still feeds the funnel's rerank-factor controller
    assert singles[0].funnel and merged[0].funnel and not merged[0].rerank_pinned
    alone = np.concatenate([glove_collection.evaluate_recall(p)[1].recall for p in singles])
    together = glove_collection.evaluate_recall(merged[0])[1].recall
    assert np.array_equal(np.nan_to_num(alone, nan=-1), np.nan_to_num(together, nan=-1))


def test_probe_respects_filters_and_exact_search_is_not_probed(glove_collection, glove):
    _, Q = glove
    assert glove_collection.search(Query(Q[:5], 10, exact=True, probe=True)).probe is None
    assert glove_collection.search(Query(Q[:5], 10)).probe is None


def test_tuned_ef_is_the_default_and_survives_a_reopen(tmp_path, glove):
    X, Q = glove
    manifest = Manifest(name="t", dim=50, metric="cosine", hnsw=HnswParams(m=8, ef_search=100), created_at="now")
    c = Collection.create(str(tmp_path / "t"), manifest)
    c.upsert([NewDocument(id=str(i), vector=X[i]) for i in range(2000)])
    assert c.search(Query(Q[:3], 5)).ef == 100
    c.set_ef_search(50, 33)
    assert c.search(Query(Q[:3], 5)).ef == 33 and c.search(Query(Q[:3], 5, ef=70)).ef == 70
    assert c.needs_snapshot
    c.snapshot()
    c.close()
    again = Collection.open(str(tmp_path / "t"))
    assert again.ef_search(50) == 33 and not again.needs_snapshot
    again.close()


def test_a_tuned_rerank_factor_is_the_default_and_survives_a_reopen(tmp_path, glove):
    X, Q = glove
    manifest = Manifest(
        name="t", dim=50, metric="cosine", hnsw=HnswParams(m=8, ef_search=100), created_at="now", dims=[16, 50]
    )
    c = Collection.create(str(tmp_path / "t"), manifest)
    c.upsert([NewDocument(id=str(i), vector=X[i]) for i in range(2000)])
    assert c.rerank_factor(16) == 5 and c.search(Query(Q[:3], 5, dim=16)).candidates == 25
    c.set_rerank_factor(16, 12)
    assert c.search(Query(Q[:3], 5, dim=16)).candidates == 60 and c.needs_snapshot
    c.snapshot()
    c.close()
    again = Collection.open(str(tmp_path / "t"))
    assert again.rerank_factor(16) == 12 and again.manifest.tuned_rerank == {"16": 12}
    again.set_recall_policy(again.recall_policy)  # no target: tuned values go back to the defaults
    assert again.rerank_factor(16) == 5
    again.close()


class _Curve:
    """Synthetic recall-vs-ef: a per-query recall@10 drawn around 1 - exp(-ef / scale)."""

    def __init__(self, scale: float, seed: int = 0):
        self.scale, self.rng = scale, np.random.default_rng(seed)

    def mean(self, ef: int) -> float:
        return 1.0 - math.exp(-ef / self.scale)

    def draw(self, ef: int, n: int) -> list[float]:
        return list(self.rng.binomial(10, self.mean(ef), n) / 10)


def _run(controller: EfController, curve: _Curve, windows: int) -> list[int]:
    trace = []
    for _ in range(windows):
        controller.observe(controller.ef, curve.draw(controller.ef, controller.window))
        trace.append(controller.ef)
    return trace


@pytest.mark.parametrize("target", [0.9, 0.95, 0.99])
def test_controller_converges_to_the_smallest_ef_meeting_the_target(target):
    curve = _Curve(scale=30)
    needed = math.ceil(-30 * math.log(1 - target))  # 70, 90, 139
    c = EfController(target, ef=100, ef_min=10, ef_max=1000, window=200)
    trace = _run(c, curve, 40)
    # holds the target (within the window's noise) and costs at most ~15% more ef than needed;
    # most of the time it sits there (the rest: re-probing a cheaper ef now and then)
    held = max(set(trace[20:]), key=trace[20:].count)
    assert c.high is not None and all(needed * 0.93 <= e <= needed * 1.2 for e in (c.high, held)), (needed, trace)
    assert curve.mean(c.high) >= target - 0.005


@pytest.mark.parametrize("target", [0.9, 0.95, 0.99])
def test_controller_settles_at_the_target_not_at_a_lucky_window_below_it(target):
    """With the default 50-query window a mean is only good to about ±0.03 at 0.9: a setting
    whose truth is below the target passes now and then. The sequential test measures close
    calls longer, so over many runs the setting the controller first calls converged holds
    the target within 0.01 in every run (0.005 on average), after about a thousand queries."""
    queries, shortfall = [], []
    for seed in range(20):
        curve = _Curve(scale=30, seed=seed)
        c = EfController(target, ef=100, ef_min=10, ef_max=1000, window=50)
        fed = 0
        while not c.converged and fed < 5000:
            c.observe(c.ef, curve.draw(c.ef, 10))
            fed += 10
        assert c.converged, (seed, c.low, c.high)
        queries.append(fed)
        shortfall.append(target - curve.mean(c.high))
    assert max(shortfall) <= 0.015 and np.mean(shortfall) <= 0.005, shortfall
    assert np.median(queries) <= 1200, queries


def test_controller_follows_data_that_gets_harder_and_saturates_at_its_bound():
    curve = _Curve(scale=20)
    c = EfController(0.95, ef=100, ef_min=10, ef_max=400, window=200)
    _run(c, curve, 30)
    easy = c.ef
    curve.scale = 60  # e.g. many near-duplicates inserted: the same ef now finds less
    _run(c, curve, 30)
    assert c.ef > 2 * easy and curve.mean(c.ef) >= 0.94
    curve.scale = 1000  # out of reach within the bounds
    _run(c, curve, 10)
    assert c.ef == 400 and c.saturated


def test_controller_ignores_measurements_from_an_older_ef():
    c = EfController(0.95, ef=100, ef_min=10, ef_max=1000, window=10)
    assert c.observe(50, [0.0] * 100) is None and c.ef == 100


def test_controller_drops_pending_recalls_when_the_other_settings_change():
    """A funnel's final recall follows the graph's ef and the rerank factor: a window that
    mixed recalls measured under two graph efs would judge neither."""
    c = EfController(0.9, ef=8, ef_min=1, ef_max=64, window=10)
    assert c.observe(8, [1.0] * 6, context=100) is None
    assert c.observe(8, [0.0] * 6, context=50) is None  # the graph's ef changed: the six 1.0s are gone
    assert c.observe(8, [0.0] * 4, context=50) == 16  # ten failures under one condition: a clear fail


class _PairedCurve:
    """Synthetic recall of the same queries at several settings: each query's ten neighbours
    are found at ef with probability 1 - exp(-ef / scale), from one uniform draw per neighbour,
    so a query's recall never drops as ef grows (as a graph search's, nearly)."""

    def __init__(self, scale: float, seed: int = 0):
        self.scale, self.rng = scale, np.random.default_rng(seed)

    def mean(self, ef: int) -> float:
        return 1.0 - math.exp(-ef / self.scale)

    def draw(self, settings: tuple[int, ...], n: int) -> dict[int, list[float]]:
        u = self.rng.random((n, 10))
        return {e: list((u < self.mean(e)).mean(axis=1)) for e in settings}


def _smallest_on_grid(grid: tuple[int, ...], curve: _PairedCurve, target: float) -> int:
    return next((g for g in grid if curve.mean(g) >= target), grid[-1])


@pytest.mark.parametrize("target", [0.9, 0.95, 0.99])
def test_ladder_converges_to_the_cheapest_grid_setting_in_a_few_windows(target):
    """Every window judges seven settings on the same queries: over 20 runs the setting first
    called converged is the cheapest grid setting that holds the target or the one next to it,
    holds the target within 0.01 (0.005 on average), and is reached from ef 20 in a few hundred
    queries, a fraction of what the bracket search needs (about a thousand)."""
    queries, shortfall = [], []
    for seed in range(20):
        curve = _PairedCurve(scale=30, seed=seed)
        c = LadderController(target, 20, 10, 1000, window=50)
        best = _smallest_on_grid(c.grid, curve, target)
        fed = 0
        while not c.converged and fed < 5000:
            c.observe(curve.draw(c.settings(), 10))
            fed += 10
        assert c.converged and abs(c.grid.index(c.ef) - c.grid.index(best)) <= 1, (seed, c.ef, best)
        queries.append(fed)
        shortfall.append(target - curve.mean(c.ef))
    assert max(shortfall) <= 0.01 and np.mean(shortfall) <= 0.005, shortfall
    assert np.median(queries) <= 600, queries  # on a grid 9% apart: 550 at 0.99, fewer below


def test_ladder_holds_its_setting_follows_harder_data_and_saturates():
    curve = _PairedCurve(scale=20)
    c = LadderController(0.95, 100, 10, 400, window=50)
    held = []
    for _ in range(100):
        c.observe(curve.draw(c.settings(), 50))
        held.append(c.ef)
    assert c.converged and len(set(held[-50:])) == 1  # hysteresis: no flapping once converged
    easy = c.ef
    curve.scale = 60  # harder data: the same ef now finds less
    for _ in range(40):
        c.observe(curve.draw(c.settings(), 50))
    assert c.ef > 2 * easy and curve.mean(c.ef) >= 0.94
    curve.scale = 1000  # out of reach within the bounds
    for _ in range(20):
        c.observe(curve.draw(c.settings(), 50))
    assert c.ef == 400 and c.saturated and not c.converged


def test_a_ladder_settles_once_its_held_setting_is_confirmed_on_max_window_queries():
    """Converged after one window that passed clearly; settled (what lets the estimator
    measure less) only once the held setting has `max_window` queries behind it."""
    c = LadderController(0.9, 10, 10, 1000, window=10, max_window=40)
    perfect = lambda n: {s: [1.0] * n for s in c.settings()}  # noqa: E731
    c.observe(perfect(10))
    assert c.converged and c.ef == 10 and not c.settled  # the grid's first, passing on 10 queries
    c.observe(perfect(20))
    assert not c.settled
    c.observe(perfect(10))
    assert c.settled and c.ef == 10


def test_a_converged_ladder_does_not_step_down_on_a_lucky_stretch():
    """The step below the held setting falls 0.003 short of a 0.90 target. A converged ladder
    judges it again every window, so a short memory (400 queries) now and then sees it two
    standard errors above the target by chance and steps down; the default memory (1,600) and
    its wider margin for the step below hold. Per-query recalls drawn with the spread measured
    on WordNet at 0.90 (standard deviation 0.13), 20 runs of 15,000 queries on the same draws."""
    means = {10: 0.75, 12: 0.80, 14: 0.85, 17: 0.875, 20: 0.897, 24: 0.915, 29: 0.93, 34: 0.945}

    def steps_down(memory: int | None, seed: int) -> int:
        rng = np.random.default_rng(seed)
        c = LadderController(0.90, 20, 10, 1000, window=50, memory=memory, ratio=2**0.25)
        count = 0
        for _ in range(300):
            batch = {}
            for e in c.settings():
                m = means.get(e, 0.97)
                spread = m * (1 - m) / 0.13**2 - 1  # a beta distribution of mean m, sd 0.13
                batch[e] = list(rng.beta(m * spread, (1 - m) * spread, 50))
            held = (c.converged, c.ef)
            c.observe(batch)
            count += held == (True, 24) and c.ef != 24
        return count

    assert sum(steps_down(None, seed) for seed in range(20)) == 0
    assert sum(steps_down(400, seed) for seed in range(20)) > 0  # the failure mode, on the same draws


def _beta_draws(rng, means: dict[int, float], settings, n: int) -> dict[int, list[float]]:
    """Per-query recalls of mean `means[setting]` and standard deviation 0.13 (measured on
    WordNet at 0.90), drawn apart per setting."""
    batch = {}
    for e in settings:
        m = means.get(e, 0.97)
        spread = m * (1 - m) / 0.13**2 - 1  # a beta distribution of mean m, sd 0.13
        batch[e] = list(rng.beta(m * spread, (1 - m) * spread, n))
    return batch


def test_a_setting_0005_short_of_the_target_is_not_held_for_long():
    """Grid setting 24 falls 0.005 short of a 0.90 target (the limit a chosen setting must
    hold), 29 clears it. A lucky close call can accept 24; the hysteresis then gives it up
    once its mean is a standard error below the target. In 40 runs of 10,000 queries, none
    held it for more than a tenth of the time after the first 1,000. Two standard errors
    (0.0065 at 1,600 queries) kept it most of the time in some runs, on the same draws (the
    benchmark held WordNet's ef 29 at 0.894 offline for a 0.90 target)."""
    means = {10: 0.75, 12: 0.80, 14: 0.85, 17: 0.87, 20: 0.88, 24: 0.895, 29: 0.915, 34: 0.93}

    def time_short(give_up_below: float, seed: int) -> float:
        rng = np.random.default_rng(seed)
        c = LadderController(0.90, 20, 10, 1000, window=50, ratio=2**0.25, give_up_below=give_up_below)
        held = []
        for _ in range(200):
            c.observe(_beta_draws(rng, means, c.settings(), 50))
            held.append(c.ef)
        return held[20:].count(24) / len(held[20:])

    assert max(time_short(1.0, seed) for seed in range(40)) <= 0.1
    assert max(time_short(2.0, seed) for seed in range(40)) > 0.5  # the failure mode, on the same draws


def _converged_ladder(**options) -> LadderController:
    """A ladder converged at 24 for a 0.90 target: everything below fails, 24 and up pass."""
    c = LadderController(0.90, 24, 10, 1000, window=50, max_window=400, ratio=2**0.25, **options)
    c.observe({e: [0.8 if e < 24 else 0.95] * 50 for e in c.settings()})
    assert (c.ef, c.converged, c.settings()) == (24, True, (20, 24, 29))
    return c


def _recalls(mean: float, sd: float, n: int = 1600) -> list[float]:
    """`n` (even) recalls of exactly this mean and (population) standard deviation."""
    return [mean + sd, mean - sd] * (n // 2)


def _feed(c: LadderController, by_setting: dict[int, list[float]]) -> None:
    """Each setting's recalls, 50 queries a call (one decision each)."""
    n = len(next(iter(by_setting.values())))
    for s in range(0, n, 50):
        c.observe({e: r[s : s + 50] for e, r in by_setting.items()})


def test_the_step_below_a_held_setting_is_taken_once_it_clears_the_target_by_its_margin():
    """1,600 queries at 20 with a mean 2.7 standard errors above the target: the default
    (2.5) takes it, a ladder asking for 3 keeps 24."""
    below = _recalls(0.90 + 2.7 * 0.05 / 40, 0.05)  # SE = 0.05 / sqrt(1600)
    for clear, held in ((None, 20), (3.0, 24)):
        c = _converged_ladder() if clear is None else _converged_ladder(step_down_clear=clear)
        _feed(c, {20: below, 24: [0.95] * 1600, 29: [0.97] * 1600})
        assert c.ef == held, clear


def test_a_held_setting_is_given_up_a_standard_error_below_the_target():
    """24 measured half a standard error below the target stays (a ladder allowing no slack
    gives it up); 1.5 standard errors below, it is given up for 29."""
    for below, slack, held in ((0.5, None, 24), (0.5, 0.0, 29), (1.5, None, 29)):
        c = _converged_ladder() if slack is None else _converged_ladder(give_up_below=slack)
        _feed(c, {20: [0.8] * 1600, 24: _recalls(0.90 - below * 0.05 / 40, 0.05), 29: [0.97] * 1600})
        assert c.ef == held, (below, slack)


def test_ladder_asks_for_the_settings_around_its_own_and_drops_recalls_of_another_context():
    c = LadderController(0.9, 17, 10, 1000, window=10, ratio=2**0.25)
    assert c.settings() == (10, 12, 14, 17, 20, 24, 29)
    assert c.observe({13: [0.0] * 20}) is None  # off the grid: ignored
    assert c.observe({e: [1.0] * 6 for e in c.settings()}, context=100) is None
    # the other knob changed: the six passing queries are gone, and ten failing ones move it up
    assert c.observe({e: [0.0] * 10 for e in c.settings()}, context=50) == 57
    assert c.settings()[0] == 34  # the next window starts just above the one that failed


def test_ladder_keeps_the_recalls_of_settings_whose_own_experiment_did_not_change():
    """A funnel's factors searched at breadth max(ef, k·factor): an ef change alters only the
    factors whose shortlist is shorter than the ef, and only their recalls are dropped."""
    c = LadderController(0.9, 17, 1, 64, window=10, ratio=2**0.25)
    factors = c.settings()  # (10, 12, 14, 17, 20, 24, 29)
    breadth = {f: (10 * f, max(150, 10 * f)) for f in factors}
    assert c.observe({f: [1.0] * 6 for f in factors}, setting_contexts=breadth) is None
    breadth = {f: (10 * f, max(220, 10 * f)) for f in factors}  # ef 150 → 220: factors 10..20 change
    assert c.observe({f: [1.0] * 3 for f in factors}, setting_contexts=breadth) is None
    held = c.evidence()
    assert {f: held[f]["queries"] for f in factors} == {f: 9 if 10 * f >= 220 else 3 for f in factors}
    # the next query completes a window: only the factors that kept their recalls are judged
    assert c.observe({f: [1.0] for f in factors}, setting_contexts=breadth) == 24
    assert not c.converged  # nothing below 24 is judged yet


def test_what_if_reruns_measure_what_searches_at_those_settings_get(glove_collection, glove):
    """A probe re-run at other efs (and, in a funnel, other factors) against the same exact
    answer reads what a search at that setting would have measured itself: the final recall
    (at full dim the same as the index stage's; in a funnel what the ef buys after re-ranking)."""
    _, Q = glove
    for dim in (50, 16):
        probe = glove_collection.search(Query(Q[:60], 10, dim=dim, ef=10, probe=True)).probe
        factors = (2, 9) if dim == 16 else ()
        measured = glove_collection.evaluate_recall(probe, WhatIf(efs=(10, 60), factors=factors))
        assert [(s.stage, s.knob) for s in measured[:2]] == [(INDEX_STAGE, None), (FINAL_STAGE, None)]
        what_if = {(s.knob, s.setting): s.recall for s in measured[2:]}
        assert set(what_if) == {("ef", 10), ("ef", 60)} | {("factor", f) for f in factors}
        for ef in (10, 60):
            own = glove_collection.search(Query(Q[:60], 10, dim=dim, ef=ef, probe=True)).probe
            assert np.allclose(what_if["ef", ef], glove_collection.evaluate_recall(own)[1].recall, equal_nan=True)
        assert np.nanmean(what_if["ef", 60]) > np.nanmean(what_if["ef", 10])
        for f in factors:
            own = glove_collection.search(Query(Q[:60], 10, dim=dim, ef=10, rerank_factor=f, probe=True)).probe
            assert np.allclose(what_if["factor", f], glove_collection.evaluate_recall(own)[1].recall, equal_nan=True)
        if factors:
            assert np.nanmean(what_if["factor", 9]) > np.nanmean(what_if["factor", 2])


def test_an_exact_rerun_is_cut_into_short_units_and_reads_the_same(glove_collection, glove):
    """Paced (`index.pacing`), a re-run stops at a checkpoint before every scan chunk of
    `scan_rows` rows and every slice of a what-if graph search, so the service can pause it for the
    encoder; the readings are those of the unpaced re-run."""
    _, Q = glove
    n = len(glove_collection)
    for dim, efs in ((50, (10, 60, 120)), (16, (10, 60))):
        probe = glove_collection.search(Query(Q[:30], 10, dim=dim, ef=10, probe=True)).probe
        what_if = WhatIf(efs=efs, factors=(2, 9) if dim == 16 else ())
        plain = glove_collection.evaluate_recall(probe, what_if)
        pauses = itertools.count()
        with paced(pauses.__next__):
            stepped = glove_collection.evaluate_recall(probe, what_if)
        scans = 1 if dim == 50 else 2  # a funnel scans its view and the full dim
        searches = len([ef for ef in efs if ef != 10])  # the probe's own search is not re-run
        assert next(pauses) >= scans * math.ceil(n / scan_rows(30, 50)) + searches
        for a, b in zip(plain, stepped):
            assert (a.stage, a.knob, a.setting) == (b.stage, b.knob, b.setting)
            assert np.allclose(a.recall, b.recall, equal_nan=True)
