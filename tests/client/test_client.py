"""The Python client (clients/python, `import vecnest`) against a real vecnest: one suite, run
against a server process over loopback HTTP and against the engine in-process
(`Client(path=...)`), with the real model. Sync and async clients alike."""

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest
import vecnest

from tests.support import TEXTS, unique_name
from tests.support.server import Server

pytestmark = pytest.mark.slow
KEY = "client-suite-admin-key-0123456789"


@pytest.fixture(scope="module", params=["server", "embedded"])
def target(request, tmp_path_factory):
    """How to reach a vecnest: `(kwargs for Client/AsyncClient)`."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "server":
        with Server(root / "data") as server:
            yield {"url": server.url}
    else:
        yield {"path": str(root / "data")}


@pytest.fixture(scope="module")
def client(target):
    with vecnest.Client(**target) as c:
        yield c


@pytest.fixture
def animals(client):
    name = unique_name()
    client.create_collection(name, dims=[64, 384])
    docs = [{"id": k, "text": v, "metadata": {"topic": k}} for k, v in TEXTS.items()]
    assert client.upsert(name, docs).upserted == 5
    return name


def test_collections_lifecycle_and_typed_errors(client):
    name = unique_name()
    info = client.create_collection(name, metric="cosine", hnsw={"m": 16})
    assert isinstance(info, vecnest.CollectionInfo) and info.dim == 384 and info.documents == 0
    assert name in [c.name for c in client.list_collections()]
    assert client.update_collection(name, target_recall=0.95).recall["target_recall"] == 0.95
    with pytest.raises(vecnest.Conflict) as exists:
        client.create_collection(name)
    assert exists.value.status == 409 and exists.value.code
    client.delete_collection(name)
    with pytest.raises(vecnest.NotFound) as gone:
        client.get_collection(name)
    assert gone.value.code == "collection_not_found"


def test_documents_in_batches_with_progress_then_read_back(client, capsys):
    name = unique_name()
    client.create_collection(name, dim=8, model=None)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((700, 8)).astype(np.float32)
    docs = ({"id": f"d{i:04d}", "vector": X[i], "metadata": {"even": i % 2 == 0}} for i in range(700))
    result = client.upsert(name, docs, batch_size=128, progress=True)
    assert result.upserted == 700 and len(result.ids) == 700
    assert "700" in capsys.readouterr().err  # the bar counted them
    stored = list(client.documents(name, include_vector=True, page_size=100))
    assert [d.id for d in stored] == [f"d{i:04d}" for i in range(700)]
    assert np.allclose(stored[5].vector, X[5] / np.linalg.norm(X[5]), atol=1e-6)
    hits = client.search(name, vector=X[3], k=3, filter={"even": False})
    assert hits[0].id == "d0003" and all(int(h.id[1:]) % 2 for h in hits)
    assert client.delete(name, ["d0003", "nope"]).not_found == ["nope"]
    with pytest.raises(vecnest.NotFound):
        client.get(name, "d0003")
    with pytest.raises(vecnest.InvalidRequest) as bad:
        client.search(name, vector=[1.0, 2.0])
    assert bad.value.code == "wrong_dimension" and bad.value.status == 422
    client.delete_collection(name)


def test_search_modes_batches_embeddings_and_recall(client, animals):
    top = client.search(animals, "a cat resting on a mat", k=2)
    assert top[0].id == "cat" and top[0].text == TEXTS["cat"] and top[0].metadata == {"topic": "cat"}
    assert client.search(animals, "dough", mode="keyword")[0].id == "bread"
    hybrid = client.search(animals, "knead the dough", mode="hybrid", dim=64, fusion={"keyword_weight": 2})
    assert hybrid[0].id == "bread"
    batch = client.search_batch(animals, [{"query": "stock markets", "k": 1}, {"query": "rain tomorrow", "k": 1}])
    assert [b[0].id for b in batch] == ["stocks", "rain"]
    full, short = client.embed(["hello world"]), client.embed("hello world", dimensions=64, collection=animals)
    assert len(full[0]) == 384 and len(short[0]) == 64
    report = client.measure_recall(animals, queries=5)
    assert report.queries == 5 and report.stages
    snapshot = client.create_snapshot(animals)
    assert [s.id for s in client.list_snapshots(animals)] == [snapshot.id] and snapshot.documents == 5
    assert client.list_upgrades(animals) == []
    with pytest.raises(TypeError):
        client.search(animals, "cat", colour="red")


def test_multivector_documents(client):
    name = unique_name()
    client.create_collection(name, multivector={})
    client.upsert(name, [{"id": k, "text": v} for k, v in TEXTS.items()])
    assert client.search(name, "a cat resting on a mat", k=1)[0].id == "cat"
    stored = client.get(name, "cat", include_vector=True)
    assert stored.vectors is not None and len(stored.vectors[0]) == 384


def test_async_client_speaks_the_same_api(target):
    # One engine per data directory: in-process, the module's sync client holds that one.
    where = {"path": ":memory:"} if "path" in target else target

    async def flow() -> tuple[list[str], str]:
        async with vecnest.AsyncClient(**where) as c:
            name = unique_name()
            await c.create_collection(name)
            await c.upsert(name, [{"id": k, "text": v} for k, v in TEXTS.items()], batch_size=2)
            ids = [d.id async for d in c.documents(name, page_size=2)]
            hits = await c.search(name, "baking bread", mode="hybrid")
            with pytest.raises(vecnest.NotFound):
                await c.get(name, "missing")
            await c.delete_collection(name)
            return ids, hits[0].id

    assert asyncio.run(flow()) == (sorted(TEXTS), "bread")


def test_calls_during_a_restore_are_retried_until_the_collection_is_back(tmp_path):
    """While a restore swaps a collection, the server answers 503 collection_restoring with
    Retry-After (it was a 404 "not found"); the client waits and retries, so writes and reads
    beside a run of restores all succeed. (A server: two embedded clients cannot share a data
    directory.)"""
    with Server(tmp_path / "data") as server, vecnest.Client(url=server.url) as c:
        c.create_collection("kb", dim=4)
        c.upsert("kb", [{"id": "base", "vector": [1, 0, 0, 0]}])
        snapshot = c.create_snapshot("kb").id
        done, failed = threading.Event(), []

        def met() -> bool:  # the server has answered collection_restoring at least once
            return 'code="collection_restoring"' in httpx.get(f"{server.url}/metrics").text

        def restore_a_few_times():
            try:
                with vecnest.Client(url=server.url) as restorer:
                    for i in range(200):  # until a call met a restore's window, and a few more
                        restorer.restore_snapshot("kb", snapshot)
                        time.sleep(0.05)
                        if i >= 5 and met():
                            break
            except Exception as exc:
                failed.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=restore_a_few_times)
        thread.start()
        written = 0
        while not done.is_set():
            c.upsert("kb", [{"id": f"w{written}", "vector": [0, 1, 0, written]}])
            assert c.get("kb", "base").id == "base"
            written += 1
        thread.join()
        assert not failed and written > 0 and met()


def test_rate_limited_calls_are_retried_after_the_servers_retry_after(tmp_path):
    keys = [{"key": KEY, "role": "admin", "rate_limit": 1}]
    with vecnest.Client(path=str(tmp_path / "data"), api_key=KEY, settings={"api_keys": keys}) as c:
        for _ in range(4):  # one request a second: three of these wait for their turn
            c.list_collections()
        impatient = vecnest.Client(path=":memory:", api_key=KEY, max_retries=0, settings={"api_keys": keys})
        with impatient:
            impatient.list_collections()
            with pytest.raises(vecnest.RateLimited) as limited:
                impatient.list_collections()
        assert limited.value.status == 429
    with vecnest.Client(path=":memory:", settings={"api_keys": keys}) as anonymous, pytest.raises(vecnest.Unauthorized):
        anonymous.list_collections()


def test_an_unreachable_server_is_a_transport_error():
    with (
        vecnest.Client(url="http://127.0.0.1:9", max_retries=1, max_retry_wait=0.1) as c,
        pytest.raises(vecnest.TransportError),
    ):
        c.list_collections()
