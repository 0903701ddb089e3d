"""Property tests of index/: random sequences of upserts, deletes, searches, snapshots, rebuilds,
refits and reopenings (hypothesis) against an exact oracle kept in plain Python.

After every step: the documents are exactly the oracle's, an exact search returns the oracle's
top-k (same ids, same scores), and a graph search returns only live documents, best first,
with exact scores. Rejected writes (zero vectors under cosine, duplicate ids) change nothing.
"""

import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from index import Collection, HnswParams, Manifest, NewDocument, Query
from index.errors import Invalid, NotFound
from index.manifest import Elasticizer
from index.vectors import scores

DIM = 6
IDS = [f"d{i}" for i in range(24)]
coordinate = st.integers(-4, 4).map(float)  # small integers: exact in float32, frequent ties and zeros
vector = st.lists(coordinate, min_size=DIM, max_size=DIM)


def machine(metric: str):
    class IndexMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.dir = tempfile.mkdtemp(prefix="vecnest-prop-")
            m = Manifest(
                name="p",
                dim=DIM,
                metric=metric,
                hnsw=HnswParams(m=4, ef_construction=32, ef_search=64),
                created_at="2026-01-01T00:00:00",
                dims=[3, DIM],
                elasticizer=Elasticizer(kind="pca", sample=64, seed=0, fit_at=10**9),
            )
            self.c = Collection.create(self.dir, m)
            self.oracle: dict[str, np.ndarray] = {}

        def teardown(self):
            self.c.close()
            shutil.rmtree(self.dir, ignore_errors=True)

        # -- writes -------------------------------------------------------------------------
        @rule(batch=st.lists(st.tuples(st.sampled_from(IDS), vector), min_size=1, max_size=6))
        def upsert(self, batch):
            ids = [i for i, _ in batch]
            X = np.asarray([v for _, v in batch], np.float32)
            valid = len(set(ids)) == len(ids) and (metric != "cosine" or (np.abs(X).sum(1) > 0).all())
            try:
                self.c.upsert([NewDocument(id=i, vector=x) for i, x in zip(ids, X)])
            except Invalid:
                assert not valid  # rejected: nothing may have changed (the invariants check it)
                return
            assert valid
            for i, x in zip(ids, X):
                self.oracle[i] = x

        @rule(ids=st.lists(st.sampled_from(IDS), min_size=1, max_size=5, unique=True))
        def delete(self, ids):
            deleted = self.c.delete(ids).ids
            assert sorted(deleted) == sorted(i for i in ids if i in self.oracle)
            for i in ids:
                self.oracle.pop(i, None)

        # -- maintenance ----------------------------------------------------------------------
        @rule()
        def snapshot(self):
            self.c.snapshot()

        @rule()
        def rebuild(self):
            self.c.rebuild()

        @precondition(lambda self: len(self.oracle) > 0)
        @rule()
        def refit(self):
            self.c.fit_rotation()

        @rule()
        def reopen(self):
            self.c.close()
            self.c = Collection.open(self.dir)

        # -- reads ----------------------------------------------------------------------------
        @rule(q=vector, k=st.integers(1, 8))
        def search(self, q, k):
            q = np.asarray(q, np.float32)
            if metric == "cosine" and not q.any():
                with pytest.raises(Invalid):
                    self.c.search(Query(q[None, :], k))
                return
            if not self.oracle:
                assert self.c.search(Query(q[None, :], k, exact=True)).matches == [[]]
                return
            ids = sorted(self.oracle)
            X = np.stack([self.oracle[i] for i in ids])
            prep = lambda A: A / np.linalg.norm(A, axis=1, keepdims=True) if metric == "cosine" else A  # noqa: E731
            truth = scores(prep(q[None, :]), prep(X), metric)[0].astype(np.float64)
            kth = np.sort(truth)[::-1][min(k, len(ids)) - 1]
            exact = self.c.search(Query(q[None, :], k, exact=True)).matches[0]
            assert len(exact) == min(k, len(ids))
            got = np.array([m.score for m in exact])
            assert np.allclose(got, np.sort(truth)[::-1][: len(exact)], atol=1e-4)
            for m in exact:  # each returned id scores what the oracle says, and makes the cut
                assert truth[ids.index(m.id)] == pytest.approx(m.score, abs=1e-4) and m.score >= kth - 1e-4
            for dim in (3, DIM):
                graph = self.c.search(Query(q[None, :], k, dim=dim, ef=64)).matches[0]
                assert len({m.id for m in graph}) == len(graph) and {m.id for m in graph} <= set(ids)
                assert [m.score for m in graph] == sorted((m.score for m in graph), reverse=True)
                for m in graph:
                    assert truth[ids.index(m.id)] == pytest.approx(m.score, abs=1e-4)
            # with ef above the document count the full-dim graph finds the exact top-k (ties aside)
            assert np.allclose([m.score for m in graph], got, atol=1e-4)

        @invariant()
        def same_documents(self):
            assert len(self.c) == len(self.oracle)
            for i in IDS[::5]:
                if i in self.oracle:
                    assert np.array_equal(self.c.get(i).vector, _prepared(self.oracle[i], metric))
                else:
                    with pytest.raises(NotFound):
                        self.c.get(i)

    return IndexMachine


def _prepared(x: np.ndarray, metric: str) -> np.ndarray:
    if metric != "cosine":
        return x
    return (x.astype(np.float64) / np.linalg.norm(x.astype(np.float64))).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_index_matches_an_exact_oracle_under_random_operations(metric):
    test = machine(metric).TestCase
    test.settings = settings(
        max_examples=25,
        stateful_step_count=30,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    test().runTest()
