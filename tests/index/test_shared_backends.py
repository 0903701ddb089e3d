"""The shared backends' data path (index/qdrant, index/milvus) against the embedded one: the same
documents in, the same answers out. Qdrant runs in qdrant-client's local mode here (in-process,
brute force; a server or cluster speaks the same API), so graph search there is exact; Milvus is
milvus-lite's gRPC server in a child process (HNSW on faiss). Recall against the exact oracle is
checked; approximate-search quality is the embedded tests' job.

One contract, three backends: every test below takes `backend`, a factory for one of them
(Milvus stores dense collections only: the multi-vector tests check that it refuses them)."""

import dataclasses
import math
import sys
import time

import numpy as np
import pytest

from index import Collection, HnswParams, Manifest, NewDocument, Query
from index.errors import Conflict, Invalid, NotFound, NotReady
from tests.support.milvus import MilvusServer

qdrant_client = pytest.importorskip("qdrant_client", reason="the qdrant extra is part of the test install")
from index.qdrant import qdrant_catalog  # noqa: E402  (after the importorskip)

DIMS = [64, 384]


def manifest(name="c", dims=DIMS, metric="cosine") -> Manifest:
    return Manifest(name=name, dim=384, metric=metric, hnsw=HnswParams(), created_at="2026-01-01T00:00:00", dims=dims)


def metadata(i: int) -> dict:
    """Every kind of filterable value, and the traps: 1 == 1.0, True != 1, dotted keys, lists, null."""
    return {
        "parity": i % 2,  # an int ...
        "third": float(i % 3),  # ... and a float that equals an int
        "flag": i % 5 == 0,
        "tag": ["a", "b"][i % 2],
        "tags": [f"t{i % 4}", f"t{i % 7}"],
        "a.b": i % 3,  # a key with a dot: one key, not a path
        "maybe": None if i % 6 == 0 else i,
        "nested": {"x": i},  # stored, not filterable
    }


def docs(X, start=0):
    return [
        NewDocument(id=f"d{start + i}", vector=x, text=f"text {start + i}", metadata=metadata(start + i))
        for i, x in enumerate(X)
    ]


def _physicals(client) -> list[str]:
    return sorted(c.name for c in client.get_collections().collections if c.name != "vecnest.manifests")


@pytest.fixture(scope="module")
def milvus(tmp_path_factory):
    """One milvus-lite server for the module; each test gets a fresh catalog (collections dropped)."""
    pytest.importorskip("pymilvus", reason="the milvus extra is part of the test install")
    server = MilvusServer(tmp_path_factory.mktemp("milvus")).start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "qdrant", "milvus"])
def backend(request, tmp_path):
    """A factory: `make(manifest)` → a new collection on this backend."""
    if request.param == "embedded":
        made = []

        def make(m: Manifest):
            c = Collection.create(str(tmp_path / m.name), m)
            made.append(c)
            return c

        yield make
        for c in made:
            c.close()
    elif request.param == "qdrant":
        client = qdrant_client.QdrantClient(location=":memory:")
        catalog = qdrant_catalog(client)
        yield catalog.create
        client.close()
    else:
        from index import open_milvus_catalog

        catalog = open_milvus_catalog(uri=request.getfixturevalue("milvus").uri)
        yield catalog.create
        for name in catalog.names():
            catalog.drop(name)
        catalog.close()


@pytest.fixture
def loaded(backend, glosses):
    _, X = glosses
    c = backend(manifest())
    c.upsert(docs(X[:600]))
    return c, X


def ids(result) -> list[list[str]]:
    return [[m.id for m in row] for row in result.matches]


def test_documents_in_and_out(loaded):
    c, X = loaded
    assert len(c) == 600
    doc = c.get("d7")
    assert doc.id == "d7" and doc.text == "text 7" and doc.metadata == metadata(7)
    assert np.allclose(doc.vector, X[7] / np.linalg.norm(X[7]), atol=1e-6)
    c.upsert(docs(X[:10]))  # a retried write changes nothing
    assert len(c) == 600
    c.upsert([NewDocument(id="d7", vector=X[900], text="new", metadata={"k": 1})])  # replaced whole
    doc = c.get("d7")
    assert doc.text == "new" and doc.metadata == {"k": 1}
    assert c.search(Query(X[900][None], 1)).matches[0][0].id == "d7"
    assert sorted(c.delete(["d1", "d2", "missing", "d1"]).ids) == ["d1", "d2"]
    assert len(c) == 598
    with pytest.raises(NotFound):
        c.get("d1")
    assert "d1" not in ids(c.search(Query(X[1][None], 5, exact=True)))[0]


def test_bad_documents_and_queries_change_nothing(loaded):
    c, X = loaded
    bad = [
        [NewDocument(id="x", vector=X[0][:10])],  # wrong dimension
        [NewDocument(id="x", vector=np.full(384, np.nan, np.float32))],
        [NewDocument(id="x", vector=np.zeros(384, np.float32))],  # no direction under cosine
        [NewDocument(id="x", vector=X[0]), NewDocument(id="x", vector=X[1])],  # duplicate id
    ]
    for batch in bad:
        with pytest.raises(Invalid):
            c.check_documents(batch)
        with pytest.raises(Invalid):
            c.upsert(batch)
    assert len(c) == 600
    for query in (Query(X[:1], 0), Query(X[:1], 5, dim=96), Query(X[:1, :10], 5), Query(X[:1], 5, candidates=3)):
        with pytest.raises(Invalid):
            c.check(query)


FILTERS = [
    {"parity": 1},
    {"parity": 1.0},  # 1 == 1.0
    {"third": 2},  # an int matches a float that equals it
    {"flag": True},
    {"flag": 1},  # True is not 1
    {"tag": "a", "parity": 0},
    {"tag": "a", "parity": 1},  # nothing
    {"tags": "t3"},  # a list contains it
    {"a.b": 2},  # a dotted key is one key
    {"maybe": None},
    {"nested": 3},  # objects are not filterable: nothing
    {"absent": "x"},
]


def test_filters_mean_the_same_on_every_backend(loaded, glosses):
    c, X = loaded
    for f in FILTERS:
        expected = {f"d{i}" for i in range(600) if _matches(metadata(i), f)}
        found = ids(c.search(Query(X[700][None], 600, exact=True, filter=f)))[0]
        assert set(found) == expected, f
        graph = ids(c.search(Query(X[700][None], 10, filter=f)))[0]
        assert set(graph) <= expected and len(graph) == min(10, len(expected)), f


def _matches(meta: dict, f: dict) -> bool:
    """The filter rule of index/filters.py, written out: equality on top-level scalars, numbers
    numerically, booleans only booleans, a list when it contains the value."""

    def equal(a, b):
        if isinstance(a, bool) or isinstance(b, bool):
            return isinstance(a, bool) and isinstance(b, bool) and a == b
        if a is None or b is None:
            return a is None and b is None
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(a, b, rel_tol=0, abs_tol=0)
        return type(a) is type(b) and a == b

    for key, value in f.items():
        if key not in meta or isinstance(meta[key], dict):
            return False
        items = meta[key] if isinstance(meta[key], list) else [meta[key]]
        if not any(equal(item, value) for item in items):
            return False
    return True


def exact_oracle(X, Q, k, dim=None):
    """Top-k by cosine over the prefixes `dim` (re-normalised), as the embedded views."""
    V = X[:, :dim] if dim else X
    V = V / np.linalg.norm(V, axis=1, keepdims=True)
    W = Q[:, :dim] if dim else Q
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    return np.argsort(-(W @ V.T), axis=1, kind="stable")[:, :k]


def test_searches_route_by_dim_and_rescore_at_full_dim(loaded):
    c, X = loaded
    Q = X[2000:2040]
    truth = exact_oracle(X[:600], Q, 10)
    full = c.search(Query(Q, 10))
    assert full.dim == 384
    recall = np.mean([len({f"d{j}" for j in t} & set(r)) / 10 for t, r in zip(truth, ids(full))])
    assert recall >= 0.95
    exact = c.search(Query(Q, 10, exact=True))
    assert ids(exact) == [[f"d{j}" for j in t] for t in truth]
    scores = np.array([[m.score for m in row] for row in exact.matches])
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    Xn = X[:600] / np.linalg.norm(X[:600], axis=1, keepdims=True)
    assert np.allclose(scores, np.take_along_axis(Qn @ Xn.T, truth, axis=1), atol=1e-5)
    # the 64-d funnel: the exact 64-d shortlist re-scored at full dim, as the embedded funnel does
    funnel = c.search(Query(Q, 10, dim=64, exact=True, rerank_factor=4))
    shortlist = exact_oracle(X[:600], Q, 40, dim=64)
    for row, short, q in zip(funnel.matches, shortlist, Qn):
        rescored = sorted(short.tolist(), key=lambda j: -float(Xn[j] @ q))[:10]
        assert [m.id for m in row] == [f"d{j}" for j in rescored]
    assert funnel.dim == 64 and funnel.candidates == 40
    # rerank=False keeps the 64-d scores: its order is the 64-d order
    low = c.search(Query(Q, 10, dim=64, exact=True, rerank=False))
    assert ids(low) == [[f"d{j}" for j in t] for t in exact_oracle(X[:600], Q, 10, dim=64)]


def test_vectors_and_fields_come_back_when_asked(loaded):
    c, X = loaded
    row = c.search(Query(X[5][None], 1, include=("text", "metadata", "vector"))).matches[0][0]
    assert row.id == "d5" and row.text == "text 5" and row.metadata == metadata(5)
    assert np.allclose(row.vector, X[5] / np.linalg.norm(X[5]), atol=1e-6)
    bare = c.search(Query(X[5][None], 1)).matches[0][0]
    assert bare.text is None and bare.metadata is None and bare.vector is None


def test_writes_and_reads_from_many_threads_at_once(backend, glosses):
    """The service calls a collection from a thread pool: upserts, deletes, scrolls (an upgrade's
    backfill plan) and searches at once. None of them fails, and what is left is exactly what
    was written. qdrant-client's local mode is not thread-safe (index/qdrant/local.py): without
    its lock, a scroll beside an upsert indexes past the end of an array."""
    import threading

    _, X = glosses
    c = backend(manifest())
    c.upsert(docs(X[:50]))
    errors: list[BaseException] = []
    writing = threading.Event()

    def guarded(work):
        def run():
            try:
                work()
            except BaseException as exc:  # any failure fails the test below
                errors.append(exc)

        return threading.Thread(target=run)

    def writer(w: int):
        def work():
            for b in range(10):
                start = 100 + 50 * w + 5 * b
                c.upsert(docs(X[start : start + 5], start))
                c.delete([f"d{w * 10 + b}"])  # one of the first 50 each time: 40 in all

        return work

    def reader():
        while writing.is_set():
            cursor = None
            while True:
                page, cursor = c.scroll(cursor, 16)
                assert all(d.id.startswith("d") for d in page)
                if cursor is None:
                    break
            assert len(c.contents()) >= 50
            c.search(Query(X[:2], 5))

    writers = [guarded(writer(w)) for w in range(4)]
    readers = [guarded(reader) for _ in range(2)]
    writing.set()
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    writing.clear()
    for t in readers:
        t.join()
    assert not errors, errors
    want = {f"d{i}" for i in range(40, 50)} | {f"d{i}" for i in range(100, 300)}
    assert set(c.contents()) == want and len(c) == len(want)


def test_l2_scores_are_minus_the_distance(backend, glosses):
    _, X = glosses
    c = backend(manifest("l2", dims=[384], metric="l2"))
    c.upsert(docs(X[:50]))
    top = c.search(Query(X[60][None], 3, exact=True)).matches[0]
    d = np.linalg.norm(X[:50] - X[60], axis=1)
    assert [m.id for m in top] == [f"d{j}" for j in np.argsort(d)[:3]]
    assert np.allclose([m.score for m in top], -np.sort(d)[:3], atol=1e-4)


def test_the_catalog_keeps_manifests_in_qdrant(tmp_path, glosses):
    """A second client on the same storage (another replica) sees the same collections: the
    replica itself keeps nothing."""
    _, X = glosses
    path = str(tmp_path / "qdrant")
    first = qdrant_client.QdrantClient(path=path)
    catalog = qdrant_catalog(first)
    c = catalog.create(manifest("one"))
    c.upsert(docs(X[:20]))
    catalog.create(manifest("two", dims=[384]))
    with pytest.raises(Conflict):
        catalog.create(manifest("one"))
    with pytest.raises(Invalid):
        catalog.create(manifest("bad/name"))
    first.close()  # local mode locks its folder: one process at a time
    second = qdrant_client.QdrantClient(path=path)
    again = qdrant_catalog(second)
    assert again.names() == ["one", "two"]
    one = again.get("one")
    assert one.manifest == c.manifest and len(one) == 20 and one.dims == [64, 384]
    again.drop("two")
    assert again.names() == ["one"]
    with pytest.raises(NotFound):
        again.get("two")
    with pytest.raises(NotFound):
        again.drop("two")
    second.close()


def test_importing_index_does_not_import_the_shared_backends():
    import subprocess

    engines = "{'qdrant_client', 'index.qdrant', 'pymilvus', 'index.milvus'}"
    code = f"import sys, index; assert not {engines} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sampled_searches_measure_their_recall(loaded):
    """A sampled search re-run exactly: the index stage and the final results, each against its
    oracle. The 64-d funnel's final recall is what a plain 64-d prefix allows (no rotation is
    fitted on 600 documents), so it is compared with that oracle, not with 1."""
    c, X = loaded
    Q = X[2000:2008]
    Xn = X[:600] / np.linalg.norm(X[:600], axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    truth = exact_oracle(X[:600], Q, 10)
    for dim in DIMS:
        result = c.search(Query(Q, 10, dim=dim, probe=True))
        assert result.probe is not None and result.probe.dim == dim
        stages = {s.stage: s for s in c.evaluate_recall(result.probe)}
        assert set(stages) == {"index", "final"}
        assert stages["final"].k == 10 and stages["index"].k == result.candidates
        assert np.nanmean(stages["index"].recall) >= 0.95
        shortlist = exact_oracle(X[:600], Q, result.candidates, dim=dim)
        funnel = [sorted(s.tolist(), key=lambda j: -float(Xn[j] @ q))[:10] for s, q in zip(shortlist, Qn)]
        oracle = np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(funnel, truth)])
        assert abs(np.nanmean(stages["final"].recall) - oracle) <= 0.05, (dim, oracle)
        assert dim < 384 or oracle == 1.0


def test_samples_are_deterministic_and_settings_are_kept(loaded):
    c, _ = loaded
    first, again = c.sample_queries(50, seed=3), c.sample_queries(50, seed=3)
    assert first.shape == (50, 384) and np.array_equal(first, again)
    assert not np.array_equal(first, c.sample_queries(50, seed=4))
    assert len({d.id for d in c.sample_documents(600, seed=1)}) == 600  # wraps round: every document
    c.set_ef_search(64, 77)
    assert c.ef_search(64) == 77
    with pytest.raises(Invalid):
        c.set_ef_search(96, 10)
    c.set_rerank_factor(64, 9)  # the recall controller's choice for the funnel: the default now
    assert c.rerank_factor(64) == 9 and c.search(Query(c.sample_queries(1, seed=5), 10, dim=64)).candidates == 90
    assert c.search(Query(c.sample_queries(1, seed=5), 10, dim=64, rerank_factor=2)).candidates == 20
    with pytest.raises(Invalid):
        c.set_rerank_factor(96, 3)


def test_settings_reach_every_replica(tmp_path, glosses):
    path = str(tmp_path / "qdrant")
    client = qdrant_client.QdrantClient(path=path)
    qdrant_catalog(client).create(manifest("one")).set_ef_search(384, 55)
    client.close()
    client = qdrant_client.QdrantClient(path=path)
    assert qdrant_catalog(client).get("one").ef_search(384) == 55
    client.close()


def test_an_unreachable_backend_is_a_clean_503():
    import socket

    from index.errors import NotReady

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = qdrant_client.QdrantClient(url=f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(NotReady) as failure:
        qdrant_catalog(client)
    assert failure.value.code == "backend_unavailable"


def test_a_milvus_that_goes_away_is_a_clean_503(tmp_path, glosses):
    """Unreachable at start, or stopped under a catalog: NotReady (503), within the timeout; and
    once it is back (its collections released by the restart), the same objects serve again."""
    pytest.importorskip("pymilvus", reason="the milvus extra is part of the test install")
    from index import open_milvus_catalog
    from index.errors import NotReady
    from tests.support.server import free_port

    with pytest.raises(NotReady) as failure:
        open_milvus_catalog(uri=f"http://127.0.0.1:{free_port()}", timeout_s=2)
    assert failure.value.code == "backend_unavailable"
    _, X = glosses
    server = MilvusServer(tmp_path / "milvus").start()
    catalog = open_milvus_catalog(uri=server.uri, timeout_s=2)
    c = catalog.create(manifest("gone"))
    c.upsert(docs(X[:10]))
    server.stop()
    for attempt in (lambda: c.search(Query(X[:1], 3)), lambda: c.upsert(docs(X[10:12])), lambda: len(c)):
        with pytest.raises(NotReady) as failure:
            attempt()
        assert failure.value.code == "backend_unavailable"
    server.start()

    def serves():
        try:
            return len(c) == 10
        except NotReady:  # the client reconnects on its own; the first calls may still fail
            return False

    deadline = time.monotonic() + 30
    while not serves() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [m.id for m in c.search(Query(X[3:4], 1)).matches[0]] == ["d3"]
    assert c.get("d7").text == "text 7" and catalog.get("gone") is not None
    server.stop()


# -- multi-vector collections: the FDE shortlist re-ranked by MaxSim, on both backends ---------
@pytest.fixture(scope="module")
def token_sets():
    """600 WordNet glosses as token matrices (model-free FakeEncoder), 20 held-out queries."""
    import random

    from tests.support.datasets import wordnet_glosses
    from tests.support.fake_encoder import FakeEncoder

    rows = random.Random(5).sample(wordnet_glosses(), 620)
    texts = [f"{lemmas}: {gloss}" for _, _, lemmas, gloss in rows]
    encoder = FakeEncoder(dim=64)
    return encoder.encode_tokens(texts[:600], "document"), encoder.encode_tokens(texts[600:], "query")


def token_manifest() -> Manifest:
    from index.fde import MultiVectorConfig

    return Manifest(
        name="mv", dim=0, metric="ip", hnsw=HnswParams(), created_at="t", multivector=MultiVectorConfig(token_dim=64)
    )


@pytest.fixture
def token_collection(backend, token_sets, request):
    if request.node.callspec.params["backend"] == "milvus":
        with pytest.raises(Invalid) as refused:
            backend(token_manifest())
        assert refused.value.code == "backend_unsupported"
        pytest.skip("Milvus stores dense collections only (refused with backend_unsupported, checked above)")
    docs, queries = token_sets
    c = backend(token_manifest())
    c.upsert([NewDocument(id=f"d{i}", vector=None, tokens=t, metadata={"part": i % 3}) for i, t in enumerate(docs)])
    return c, docs, queries


def test_multivector_searches_are_maxsim_over_stored_tokens(token_collection):
    from index.maxsim import chamfer

    c, docs, queries = token_collection
    assert c.kind == "multivector" and len(c) == 600
    stored = [t.astype(np.float16).astype(np.float32) for t in docs]  # what both backends keep
    for f in (None, {"part": 1}):
        allowed = [i for i in range(600) if f is None or i % 3 == 1]
        exact = c.search(Query(queries, 10, exact=True, filter=f))
        for q, row in zip(queries, exact.matches):
            s = chamfer(q, [stored[i] for i in allowed])
            best = np.argsort(-s, kind="stable")[:10]
            assert [m.id for m in row] == [f"d{allowed[j]}" for j in best]
            assert np.allclose([m.score for m in row], s[best], atol=1e-3)
    shortlisted = c.search(Query(queries, 10, candidates=600))  # every document a candidate: exact again
    assert ids(shortlisted) == ids(c.search(Query(queries, 10, exact=True)))
    default = c.search(Query(queries, 10))  # 100 FDE candidates
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids(default), ids(shortlisted))])
    assert recall >= 0.8
    doc = c.get("d3")
    assert doc.vector is None and np.allclose(doc.tokens, stored[3], atol=1e-3)
    with pytest.raises(Invalid):
        c.check(Query(queries, 10, dim=64))
    with pytest.raises(Invalid):
        c.upsert([NewDocument(id="x", vector=None, tokens=np.zeros((3, 64), np.float32))])


def test_multivector_recall_probes(token_collection):
    c, _, queries = token_collection
    result = c.search(Query(queries, 10, probe=True))
    stages = {s.stage: s for s in c.evaluate_recall(result.probe)}
    assert np.nanmean(stages["index"].recall) >= 0.95 and np.nanmean(stages["final"].recall) >= 0.8
    assert stages["index"].index == "fde" and stages["final"].k == 10
    sample = c.sample_queries(5, seed=1)
    assert len(sample) == 5 and all(t.ndim == 2 and t.shape[1] == 64 for t in sample)


def test_a_replica_sees_what_another_changed(glosses):
    """Two catalogs over one Qdrant (two vecnest replicas): a setting one of them changes, and a
    drop, reach the other once its manifest is older than `refresh_s`."""
    _, X = glosses
    client = qdrant_client.QdrantClient(location=":memory:")
    one, two = qdrant_catalog(client, refresh_s=0.0), qdrant_catalog(client, refresh_s=0.0)
    c = one.create(manifest("shared"))
    c.upsert(docs(X[:20]))
    seen = two.get("shared")
    assert len(seen) == 20 and seen.ef_search(384) == 100
    one.get("shared").set_ef_search(384, 321)
    assert two.get("shared").ef_search(384) == 321 and two.get("shared") is seen
    one.drop("shared")
    with pytest.raises(NotFound):
        two.get("shared")
    client.close()


@pytest.mark.parametrize("created_again", [False, True])
def test_a_replica_that_missed_a_drop_never_writes_its_copy_back(glosses, created_again):
    """A replica holds its copy of a collection for `refresh_s`. If another one drops the
    collection meanwhile (and perhaps creates another under its name), a setting saved through
    the stale copy must not write the dropped collection's entry back: before, it left an entry
    with no data under it (every replica's listing then answered 503), or the old manifest over
    the new collection's (its dims no longer those of its vectors)."""
    _, X = glosses
    client = qdrant_client.QdrantClient(location=":memory:")
    one, two = qdrant_catalog(client, refresh_s=0.0), qdrant_catalog(client, refresh_s=3600.0)
    one.create(manifest("shared")).upsert(docs(X[:20]))
    stale = two.get("shared")
    one.drop("shared")
    if created_again:
        one.create(manifest("shared", dims=[384])).upsert(docs(X[:3]))
    with pytest.raises(NotFound) as gone:
        stale.set_ef_search(384, 321)
    assert gone.value.code == "collection_not_found"
    third = qdrant_catalog(client)  # a process started now reads what is stored
    if created_again:
        now = third.get("shared")
        assert now.dims == [384] and len(now) == 3 and now.ef_search(384) == 100
        fresh = two.get("shared", fresh=True)  # read again at once, not after refresh_s
        assert fresh is not stale and fresh.dims == [384] and len(fresh) == 3
    else:
        assert third.names() == [] and two.names() == []
        with pytest.raises(NotFound) as dropped:  # the engine's "no such collection": not a 503
            len(stale)
        assert dropped.value.code == "collection_not_found"
        with pytest.raises(NotFound):
            two.get("shared", fresh=True)
    client.close()


def test_a_setting_saved_while_another_replica_drops_the_collection_is_taken_back(glosses, monkeypatch):
    """The check that the entry is still of its incarnation and the write are two calls: a drop
    landing between them would have its entry written back, naming data that is gone."""
    _, X = glosses
    client = qdrant_client.QdrantClient(location=":memory:")
    one, two = qdrant_catalog(client, refresh_s=0.0), qdrant_catalog(client, refresh_s=3600.0)
    one.create(manifest("x")).upsert(docs(X[:5]))
    held, put = two.get("x"), two._put_collection

    def put_after_a_drop(*args, **kwargs):
        one.drop("x")
        put(*args, **kwargs)

    monkeypatch.setattr(two, "_put_collection", put_after_a_drop)
    with pytest.raises(NotFound) as gone:
        held.set_ef_search(384, 321)
    assert gone.value.code == "collection_not_found"
    assert qdrant_catalog(client).names() == [] and _physicals(client) == []
    client.close()


def test_an_upgrade_of_a_dropped_collection_writes_nothing_into_the_one_created_after(glosses):
    """The maintenance process runs an upgrade of x; a replica drops x and creates it again. The
    upgrade's records, maps and new generation went into the new x by name: a record "fitting"
    that nothing ran and no abort could end."""
    from index import encoder_upgrade as upgrades

    _, X = glosses
    client = qdrant_client.QdrantClient(location=":memory:")
    maintenance, replica = qdrant_catalog(client, refresh_s=3600.0), qdrant_catalog(client, refresh_s=0.0)
    source = maintenance.create(manifest("x"))
    source.upsert(docs(X[:20]))
    gens = maintenance.generations("x")
    record = upgrades.new_record(
        source, ".", {"model": "new", "dim": 384}, sample=10, holdout=0.2, seed=0, min_cosine=0.8, min_recall=0.8
    )
    replica.drop("x")
    replica.create(manifest("x")).upsert(docs(X[:2]))
    W = np.eye(384, dtype=np.float32)
    for write in (
        lambda: gens.save_record(record),
        lambda: gens.save_map(record.id, W),
        lambda: gens.create(record.new_generation, manifest("x", dims=[384])),
    ):
        with pytest.raises(NotFound) as gone:
            write()
        assert gone.value.code == "collection_not_found"
    now = replica.generations("x")
    assert now.records() == [] and len(replica.get("x")) == 2 and len(_physicals(client)) == 1
    assert maintenance.engine.meta.find("map", "x") == [] and maintenance.engine.meta.find("generation", "x") == []
    client.close()


def test_a_collection_created_again_with_the_same_settings_is_another_collection(glosses):
    """Same name, same manifest: the entry's incarnation tells the copies apart, so a replica
    that refreshes opens the new collection rather than reloading settings into the old object."""
    _, X = glosses
    client = qdrant_client.QdrantClient(location=":memory:")
    one, two = qdrant_catalog(client, refresh_s=0.0), qdrant_catalog(client, refresh_s=0.0)
    one.create(manifest("shared")).upsert(docs(X[:20]))
    seen = two.get("shared")
    assert two.get("shared") is seen  # a refresh of the same collection keeps its object
    one.drop("shared")
    one.create(manifest("shared")).upsert(docs(X[:2]))
    assert two.get("shared") is not seen and len(two.get("shared")) == 2
    with pytest.raises(NotFound):
        two.swap("shared", seen)  # an upgrade's cut-over from the old one writes nothing
    assert one.get("shared").ef_search(384) == 100 and len(one.get("shared")) == 2
    client.close()


def test_a_create_landing_inside_another_replicas_drop_keeps_its_data(glosses, monkeypatch):
    """Replica two drops x; between its removal of the entry and of the data, replica one creates
    x again and writes to it. Physical collections were named by collection name alone, so the
    drop removed the new collection's data under its new entry (every request then failed)."""
    _, X = glosses
    client = qdrant_client.QdrantClient(location=":memory:")
    one, two = qdrant_catalog(client, refresh_s=0.0), qdrant_catalog(client, refresh_s=0.0)
    one.create(manifest("x")).upsert(docs(X[:5]))
    created, drop = [], two.engine.drop

    def drop_once_another_create_ran(physical: str) -> None:
        if not created:
            created.append(one.create(manifest("x", dims=[384])))
            created[0].upsert(docs(X[:3]))
        drop(physical)

    monkeypatch.setattr(two.engine, "drop", drop_once_another_create_ran)
    two.drop("x")
    now = qdrant_catalog(client).get("x")
    assert now.dims == [384] and len(now) == 3 and len(_physicals(client)) == 1
    client.close()


def test_two_creates_of_one_name_at_once_make_one_collection(glosses, monkeypatch):
    """Replica two creates x while replica one is creating it: one collection comes out, the
    other create answers `collection_exists` and leaves nothing behind."""
    _, X = glosses
    client = qdrant_client.QdrantClient(location=":memory:")
    one, two = qdrant_catalog(client, refresh_s=0.0), qdrant_catalog(client, refresh_s=0.0)
    create, raced = one.engine.create, []

    def create_while_another_does(physical: str, m: Manifest) -> None:
        create(physical, m)
        if not raced:
            raced.append(two.create(manifest("x", dims=[384])))
            raced[0].upsert(docs(X[:4]))

    monkeypatch.setattr(one.engine, "create", create_while_another_does)
    with pytest.raises(Conflict) as second:
        one.create(manifest("x"))
    assert second.value.code == "collection_exists"
    now = qdrant_catalog(client).get("x")
    assert now.dims == [384] and len(now) == 4 and len(_physicals(client)) == 1
    assert client.scroll("vecnest.manifests", limit=100)[0] and not one.engine.meta.find("leftover", "x")
    client.close()


def _dies_half_way(catalog, step: str, call) -> None:
    """Runs `call` with the catalog's `step` failing as a process that died there would."""

    def dies(*args, **kwargs):
        raise RuntimeError("the process died here")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(catalog, step, dies)
        with pytest.raises(NotReady):
            call()


def test_what_a_create_that_died_half_way_left_is_removed_by_the_next(glosses, monkeypatch):
    from index import shared_catalog

    _, X = glosses
    client = qdrant_client.QdrantClient(location=":memory:")
    catalog = qdrant_catalog(client, refresh_s=0.0)
    _dies_half_way(catalog, "_put_collection", lambda: catalog.create(manifest("x")))
    assert len(_physicals(client)) == 1 and catalog.names() == []  # data no entry names
    catalog.create(manifest("x")).upsert(docs(X[:2]))  # too soon: the create may still be running
    assert len(_physicals(client)) == 2
    catalog.drop("x")
    monkeypatch.setattr(shared_catalog, "LEFTOVER_AGE_S", 0.0)
    catalog.create(manifest("x"))
    assert len(_physicals(client)) == 1 and catalog.engine.meta.find("leftover", "x") == []
    client.close()


def test_the_sweep_removes_what_died_half_way_under_every_name_and_nothing_that_serves(glosses, monkeypatch):
    """The maintenance process's sweep, with no create of the names to come: a create that died
    before its entry and a drop that died after its entry went leave data no entry serves, which
    goes; a create that died after its entry and a drop that died before it leave notes on data
    that serves, which stays."""
    from index import shared_catalog

    _, X = glosses
    client = qdrant_client.QdrantClient(location=":memory:")
    catalog = qdrant_catalog(client, refresh_s=0.0)

    _dies_half_way(catalog, "_put_collection", lambda: catalog.create(manifest("a")))
    catalog.create(manifest("b")).upsert(docs(X[:2]))
    _dies_half_way(catalog, "_drop_physical", lambda: catalog.drop("b"))
    # What a create that died after writing its entry, and a drop that died before removing it,
    # leave: a note of the incarnation that serves.
    for name, by in (("c", "create"), ("d", "drop")):
        catalog.create(manifest(name)).upsert(docs(X[:3]))
        incarnation = catalog.engine.meta.get(f"collection:{name}")["incarnation"]
        catalog._leave(name, [catalog.engine.physical(name, shared_catalog.ACTIVE, incarnation)], incarnation, by)
    assert catalog.names() == ["c", "d"] and len(_physicals(client)) == 4
    assert catalog.sweep_leftovers() == 0  # too soon: each may still be running elsewhere
    assert len(_physicals(client)) == 4 and len(catalog.engine.meta.find("leftover")) == 4
    monkeypatch.setattr(shared_catalog, "LEFTOVER_AGE_S", 0.0)
    assert catalog.sweep_leftovers() == 3
    assert len(_physicals(client)) == 2 and [n["by"] for n in catalog.engine.meta.find("leftover")] == ["drop"]
    assert [len(catalog.get(name)) for name in ("c", "d")] == [3, 3]
    catalog.drop("d")  # a drop again ends the one that died; the next sweep clears its note
    assert catalog.sweep_leftovers() == 1 and catalog.engine.meta.find("leftover") == []
    assert len(_physicals(client)) == 1 and catalog.names() == ["c"]
    client.close()


def test_a_collection_from_before_incarnations_opens_and_drops(glosses, monkeypatch):
    """Entries written before incarnations have none, and their data sits under the plain name."""
    from index import shared_catalog
    from index.qdrant import qdrant_name

    _, X = glosses
    client = qdrant_client.QdrantClient(location=":memory:")
    old = qdrant_catalog(client)
    monkeypatch.setattr(shared_catalog.uuid, "uuid4", lambda: type("U", (), {"hex": ""})())
    old.create(manifest("x")).upsert(docs(X[:6]))
    monkeypatch.undo()
    entry = old.engine.meta.get("collection:x")
    old.engine.meta.put("collection:x", {k: v for k, v in entry.items() if k not in ("key", "incarnation")})
    assert _physicals(client) == [qdrant_name("x")]
    now = qdrant_catalog(client)
    assert len(now.get("x")) == 6
    now.get("x").set_ef_search(384, 50)  # saved: the entry is of the same (no) incarnation
    assert qdrant_catalog(client).get("x").ef_search(384) == 50
    now.drop("x")
    assert _physicals(client) == [] and now.names() == []
    client.close()


# -- generations and upgrade records (what an encoder upgrade stores), on every backend -------
@pytest.fixture(params=["embedded", "qdrant", "milvus"])
def catalogs(request, tmp_path):
    """`(catalog, replica)`: a catalog, and a factory of a second catalog over the same storage
    (another vecnest process; None for the embedded backend, which one process owns)."""
    from index import Catalog

    if request.param == "embedded":
        catalog = Catalog(str(tmp_path / "data"))
        yield catalog, None
    elif request.param == "qdrant":
        client = qdrant_client.QdrantClient(location=":memory:")
        catalog = qdrant_catalog(client, refresh_s=0.0)
        yield catalog, lambda: qdrant_catalog(client, refresh_s=0.0)
    else:
        from index import open_milvus_catalog

        uri = request.getfixturevalue("milvus").uri
        catalog = open_milvus_catalog(uri=uri)
        yield catalog, lambda: open_milvus_catalog(uri=uri)
        for name in catalog.names():
            catalog.drop(name)
    catalog.close()


@pytest.mark.parametrize("name", ["a'b", 'a"b', "a\\b", "a\rb", "a b", "é", "x" * 65, "kb'] or key like '%"])
def test_a_name_no_collection_can_have_is_not_found_and_changes_nothing(catalogs, glosses, name):
    """Collection names come from request paths; an engine must never see one it could parse
    as part of a query (Milvus answered a quote with a parse error, a 503)."""
    catalog, _ = catalogs
    _, X = glosses
    catalog.create(manifest("kb")).upsert(docs(X[:5]))
    with pytest.raises(NotFound):
        catalog.get(name)
    with pytest.raises(Invalid) as refused:
        catalog.drop(name)
    assert refused.value.code == "invalid_name"
    assert catalog.names() == ["kb"] and len(catalog.get("kb")) == 5


def test_generations_switch_serving_for_every_replica_and_records_persist(catalogs, glosses):
    from index import encoder_upgrade as upgrades

    catalog, replica = catalogs
    _, X = glosses
    source = catalog.create(manifest("kb"))
    source.upsert(docs(X[:20]))
    gens = catalog.generations("kb")
    assert gens.active() == "." and gens.generation_of(source) == "."
    record = upgrades.new_record(
        source, ".", {"model": "new", "dim": 384}, sample=10, holdout=0.2, seed=0, min_cosine=0.8, min_recall=0.8
    )
    W = np.random.default_rng(0).standard_normal((384, 384)).astype(np.float32)
    record = dataclasses.replace(record, map_sha256=gens.save_map(record.id, W))
    gens.save_record(record)
    assert gens.records() == [record] and np.array_equal(gens.load_map(record), W)
    shadow = gens.create(record.new_generation, manifest("kb", dims=[384]))
    shadow.upsert(docs(X[100:105], start=100))
    assert len(shadow) == 5 and len(catalog.get("kb")) == 20  # the shadow does not serve yet
    assert gens.open(record.new_generation).dims == [384]
    retired = catalog.swap("kb", shadow)
    assert retired is source and catalog.get("kb") is shadow and gens.active() == record.new_generation
    shadow.set_ef_search(384, 66)  # a setting of the serving generation
    if replica is not None:  # another process sees the cut-over, and the setting
        other = replica()
        assert len(other.get("kb")) == 5 and other.get("kb").ef_search(384) == 66
        assert other.generations("kb").records() == [record]
    assert upgrades.reconcile(gens.active(), record).state == upgrades.CUT_OVER
    catalog.swap("kb", retired)  # a rollback
    assert gens.active() == "." and len(catalog.get("kb")) == 20
    gens.remove(record.new_generation)
    with pytest.raises(NotFound):
        gens.open(record.new_generation)
    catalog.drop("kb")
    assert catalog.names() == []
    with pytest.raises(NotFound):
        catalog.generations("kb")


# -- the PCA rotation: fitted, stored in the catalog, applied to every low-dim vector -----------
def pca_manifest(name="pca") -> Manifest:
    from index.manifest import Elasticizer

    return manifest(name).replace(elasticizer=Elasticizer(kind="pca", fit_at=100))


def test_a_pca_rotation_is_fitted_and_serves_the_funnel(backend, glosses, request):
    from index.elastic import fit_pca_rotation

    _, X = glosses
    c = backend(pca_manifest())
    if request.node.callspec.params["backend"] == "milvus":
        assert c.manifest.elasticizer.kind == "none" and not c.wants_rotation_fit  # plain prefixes, said plainly
        return
    c.upsert(docs(X[:600]))
    assert c.wants_rotation_fit
    record = c.fit_rotation()
    assert c.manifest.rotation == record and c.rotation is not None and not c.wants_rotation_fit
    Xn = X[:600] / np.linalg.norm(X[:600], axis=1, keepdims=True)
    expected = fit_pca_rotation(Xn).rotation[:, :64]
    overlap = np.linalg.norm(c.rotation[:, :64].T @ expected) ** 2 / 64  # the same 64-d subspace
    assert overlap >= 0.99, overlap
    # the 64-d funnel: the exact shortlist in the rotated view, re-scored at full dim
    Q = X[2000:2030]
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    R64 = c.rotation[:, :64]
    V, W = Xn @ R64, Qn @ R64
    V, W = V / np.linalg.norm(V, axis=1, keepdims=True), W / np.linalg.norm(W, axis=1, keepdims=True)
    shortlist = np.argsort(-(W @ V.T), axis=1, kind="stable")[:, :40]
    funnel = c.search(Query(Q, 10, dim=64, exact=True, rerank_factor=4))
    agree = [
        [m.id for m in row] == [f"d{j}" for j in sorted(short.tolist(), key=lambda j: -float(Xn[j] @ q))[:10]]
        for row, short, q in zip(funnel.matches, shortlist, Qn)
    ]
    assert np.mean(agree) >= 0.95
    # documents written after the fit are rotated too: each finds itself first in the 64-d view
    c.upsert(docs(X[700:720], start=700))
    own = c.search(Query(X[700:720], 1, dim=64, exact=True, rerank=False))
    assert [row[0].id for row in own.matches] == [f"d{i}" for i in range(700, 720)]


def test_points_a_lagging_replica_wrote_are_rewritten(glosses, monkeypatch):
    """A replica that has not read the manifest since the rotation was fitted writes plain
    prefixes; the maintenance process finds those points and rewrites their low-dim vectors."""
    from index.elastic import DimView
    from index.qdrant import collection as qdrant_collection
    from index.qdrant import point_id, qdrant_name

    monkeypatch.setattr(qdrant_collection, "STALE_CHECK_S", 0.0)
    _, X = glosses
    client = qdrant_client.QdrantClient(location=":memory:")
    maintenance, lagging = qdrant_catalog(client, refresh_s=0.0), qdrant_catalog(client, refresh_s=3600.0)
    maintenance.create(pca_manifest("c")).upsert(docs(X[:300]))
    stale = lagging.get("c")
    maintenance.get("c").fit_rotation()
    stale.upsert(docs(X[400:420], start=400))  # still without the rotation
    current = maintenance.get("c")
    assert current.needs_rebuild
    current.rebuild()
    assert not current.needs_rebuild
    view = DimView(64, 384, "cosine", current.rotation)
    physical = qdrant_name("c", ".", maintenance._bound[current].incarnation)
    points = client.retrieve(physical, [point_id(f"d{i}") for i in range(400, 420)], with_vectors=True)
    for p in points:
        full = np.asarray(p.vector["d384"], np.float32)
        assert np.allclose(p.vector["d64"], view.apply(full[None])[0], atol=1e-5)
    client.close()
