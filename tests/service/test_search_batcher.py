"""Concurrent searches batched (service/search_batcher.py): merged searches answer exactly what
each search answers alone, an invalid one fails alone, a cancelled one is never searched."""

import asyncio
import threading

import numpy as np
import pytest

from index import Catalog, Elasticizer, HnswParams, Invalid, Manifest, NewDocument, Query
from service.request_kinds import DenseRequests
from service.search_batcher import SearchBatcher
from tests.support.vectors import glosses

STACK = DenseRequests().stack


class Gated:
    """A collection whose searches wait for `gate` (so that searches pile up behind the first)
    and which records how many query rows each call searched."""

    def __init__(self, collection):
        self.collection = collection
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []

    def search(self, query: Query):
        self.entered.set()
        self.gate.wait(30)
        self.calls.append(len(query.queries))
        return self.collection.search(query)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    _, X = glosses()
    catalog = Catalog(str(tmp_path_factory.mktemp("batcher") / "data"))
    manifest = Manifest(
        name="kb",
        dim=X.shape[1],
        metric="cosine",
        hnsw=HnswParams(),
        created_at="t",
        dims=[64, X.shape[1]],
        elasticizer=Elasticizer(kind="none"),
    )
    c = catalog.create(manifest)
    c.upsert([NewDocument(id=f"d{i}", vector=x, metadata={"i": i}) for i, x in enumerate(X[:2500])])
    yield c
    catalog.close()


def run_gated(collection, queries: list[Query], cancel: set[int] = frozenset()):  # type: ignore[assignment]
    """Every query submitted while the worker is held by a first search, then released."""
    gated = Gated(collection)
    sizes: list[tuple[int, int]] = []
    batcher = SearchBatcher(workers=1, on_batch=lambda requests, rows: sizes.append((requests, rows)))
    batcher.start()

    async def main():
        first = asyncio.ensure_future(batcher.search(gated, queries[0], STACK))
        while not gated.entered.is_set():  # the worker holds the first search
            await asyncio.sleep(0.005)
        tasks = [asyncio.ensure_future(batcher.search(gated, q, STACK)) for q in queries[1:]]
        await asyncio.sleep(0)  # every other search is queued now
        for i in cancel:
            tasks[i - 1].cancel()
        gated.gate.set()
        return await asyncio.gather(first, *tasks, return_exceptions=True)

    try:
        return asyncio.run(main()), gated.calls, sizes
    finally:
        batcher.stop()


def ids_scores(result):
    return [[(m.id, m.score) for m in row] for row in result.matches]


def test_merged_searches_answer_as_each_alone(collection):
    _, X = glosses()
    Q = X[2600:2640]
    options = [dict(k=10), dict(k=5, dim=64), dict(k=10, dim=64, include=("metadata",))]
    queries = [Query(Q[i : i + 1], **options[i % 3]) for i in range(len(Q))]
    results, calls, sizes = run_gated(collection, queries)
    assert max(requests for requests, _ in sizes) > 1, sizes  # searches were merged
    assert sum(calls) == len(Q) and len(calls) < len(Q)
    for query, result in zip(queries, results):
        alone = collection.search(query)
        assert [[m.id for m in row] for row in result.matches] == [[m.id for m in row] for row in alone.matches]
        got, want = ids_scores(result), ids_scores(alone)
        np.testing.assert_allclose([s for _, s in got[0]], [s for _, s in want[0]], atol=1e-5)
        assert [m.metadata for m in result.matches[0]] == [m.metadata for m in alone.matches[0]]
    assert sum(r.probe is not None for r in results) == 0


def test_an_invalid_search_fails_alone(collection):
    _, X = glosses()
    Q = X[2600:2610].copy()
    Q[4, 7] = np.nan  # refused by the collection, merged or not
    results, _, _ = run_gated(collection, [Query(Q[i : i + 1], k=10) for i in range(len(Q))])
    assert isinstance(results[4], Invalid)
    for i, result in enumerate(results):
        if i != 4:
            alone = collection.search(Query(Q[i : i + 1]))
            assert [m.id for m in result.matches[0]] == [m.id for m in alone.matches[0]]


def test_a_cancelled_search_is_not_run(collection):
    _, X = glosses()
    queries = [Query(X[2600 + i : 2601 + i], k=10) for i in range(8)]
    results, calls, _ = run_gated(collection, queries, cancel={3, 5})
    assert isinstance(results[3], asyncio.CancelledError) and isinstance(results[5], asyncio.CancelledError)
    assert sum(calls) == 6  # the two cancelled searches were never searched
    assert all(len(results[i].matches) == 1 for i in (0, 1, 2, 4, 6, 7))
