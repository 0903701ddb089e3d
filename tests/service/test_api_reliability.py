"""Over the API: rejected requests change nothing, committed writes are searchable, no input is a
500, every request is bounded, broken collections are listed with a reason and can be dropped."""

import json
import os
import shutil

import pytest

from service.settings import Settings
from tests.support import unique_name
from tests.support.app import app_client

LIMITS = dict(
    max_k=1000,
    max_candidates=2000,
    max_request_candidates=3000,
    max_response_bytes=40_000,
    max_text_chars=5000,
    max_request_chars=12_000,
    max_collections=40,
    max_batch_queries=10,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability") / "data"


@pytest.fixture(scope="module")
def client(data_dir):
    with app_client(Settings(data_dir=data_dir, snapshot_interval_s=3600, **LIMITS), fake=True) as c:
        yield c


def error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body
    return body["error"]


def vectors_collection(client, metric: str, dim: int = 4, **extra) -> str:
    name = unique_name(metric)
    assert client.post("/v1/collections", json={"name": name, "dim": dim, "metric": metric, **extra}).status_code == 201
    return name


def count(client, name: str) -> int:
    return client.get(f"/v1/collections/{name}").json()["documents"]


def test_a_huge_cosine_vector_in_a_batch_leaves_every_document_searchable(client):
    name = vectors_collection(client, "cosine")
    batch = [
        {"id": "p", "vector": [1e30, 1e30, 0, 0]},
        {"id": "q", "vector": [0, 0, 1, 0]},
        {"id": "r", "vector": [0, 1, 0, 0]},
    ]
    r = client.put(f"/v1/collections/{name}/documents", json={"documents": batch})
    assert r.status_code == 200 and r.json()["upserted"] == 3
    for doc_id, vector in [("p", [1, 1, 0, 0]), ("q", [0, 0, 1, 0]), ("r", [0, 1, 0, 0])]:
        hit = client.post(f"/v1/collections/{name}/search", json={"vector": vector, "k": 1}).json()["results"][0]
        assert hit["id"] == doc_id and hit["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_overflowing_vectors_are_rejected_and_change_nothing(client, metric):
    name = vectors_collection(client, metric)
    good = [{"id": "a", "vector": [1e17, 0, 0, 0]}, {"id": "b", "vector": [0, 1e17, 0, 0]}]
    assert client.put(f"/v1/collections/{name}/documents", json={"documents": good}).status_code == 200
    bad = [{"id": "c", "vector": [1, 2, 3, 4]}, {"id": "d", "vector": [1e30, 1e30, 0, 0]}]
    error(client.put(f"/v1/collections/{name}/documents", json={"documents": bad}), 422, "vector_too_large")
    assert count(client, name) == 2
    assert client.get(f"/v1/collections/{name}/documents/c").status_code == 404
    error(client.post(f"/v1/collections/{name}/search", json={"vector": [1e30, 0, 0, 0]}), 422, "vector_too_large")
    hits = client.post(f"/v1/collections/{name}/search", json={"vector": [1e17, 1e17, 0, 0], "k": 2}).json()["results"]
    assert len(hits) == 2  # a score overflowing to inf used to drop a hit


def test_deep_metadata_is_rejected_at_write_time(client):
    name = vectors_collection(client, "cosine")

    def nested(depth: int) -> dict:
        value: dict = {"leaf": 1}
        for _ in range(depth - 1):
            value = {"x": value}
        return value

    ok = {"id": "ok", "vector": [1, 0, 0, 0], "metadata": nested(32)}
    assert client.put(f"/v1/collections/{name}/documents", json={"documents": [ok]}).status_code == 200
    for depth in (33, 150):
        deep = {"id": f"deep{depth}", "vector": [0, 1, 0, 0], "metadata": {"list": [nested(depth)]}}
        error(client.put(f"/v1/collections/{name}/documents", json={"documents": [deep]}), 422, "metadata_too_deep")
    # deeper than the JSON parser reads (about 200 levels): refused as it is parsed
    deep = {"id": "deep300", "vector": [0, 1, 0, 0], "metadata": {"list": [nested(300)]}}
    r = client.put(f"/v1/collections/{name}/documents", json={"documents": [deep]})
    assert "recursion limit" in error(r, 422, "invalid_request")["message"]
    hits = client.post(f"/v1/collections/{name}/search", json={"vector": [1, 1, 0, 0], "k": 5}).json()["results"]
    assert [h["id"] for h in hits] == ["ok"] and hits[0]["metadata"] == nested(32)


LONE_SURROGATE = "\\ud83d"  # JSON's escape of half a UTF-16 pair: valid JSON syntax, no character


@pytest.mark.parametrize(
    "method, route, body",
    [
        ("PUT", "documents", '{"documents": [{"id": "s", "vector": [1, 0, 0, 0], "metadata": {"x": "%s"}}]}'),
        ("PUT", "documents", '{"documents": [{"id": "s", "vector": [1, 0, 0, 0], "metadata": {"%s": 1}}]}'),
        ("PUT", "documents", '{"documents": [{"id": "s", "vector": [1, 0, 0, 0], "metadata": {"x": ["%s"]}}]}'),
        ("PUT", "documents", '{"documents": [{"id": "s", "vector": [1, 0, 0, 0], "text": "cat %s"}]}'),
        ("POST", "search", '{"vector": [1, 0, 0, 0], "filter": {"x": "%s"}}'),
        ("POST", "search", '{"query": "cat %s"}'),
        ("POST", "documents/delete", '{"ids": ["a", "%s"]}'),
        ("POST", "/v1/embeddings", '{"input": "cat %s"}'),
    ],
    ids=["metadata value", "metadata key", "metadata list", "text", "filter", "query", "delete ids", "embeddings"],
)
def test_a_lone_surrogate_anywhere_in_a_body_is_a_422_and_changes_nothing(client, method, route, body):
    """Python's json module takes "\\ud83d" alone; no UTF-8 store or tokenizer can encode it."""
    name = vectors_collection(client, "cosine")
    a = {"documents": [{"id": "a", "vector": [0, 1, 0, 0]}]}
    assert client.put(f"/v1/collections/{name}/documents", json=a).status_code == 200
    url = route if route.startswith("/") else f"/v1/collections/{name}/{route}"
    r = client.request(method, url, content=body % LONE_SURROGATE, headers={"content-type": "application/json"})
    assert "could not be read as JSON" in error(r, 422, "invalid_request")["message"]
    assert count(client, name) == 1 and client.get(f"/v1/collections/{name}/documents/a").status_code == 200
    paired = body % "\\ud83d\\ude00"  # a whole pair is one character, 😀: taken
    if route == "documents":
        r = client.put(url, content=paired, headers={"content-type": "application/json"})
        assert r.status_code == 200 and count(client, name) == 2, r.text


@pytest.mark.parametrize("big", [1 << 63, -(1 << 63) - 1], ids=["2^63", "-2^63-1"])
def test_integers_past_64_bits_in_metadata_or_filters_are_a_422_and_change_nothing(client, big):
    name = vectors_collection(client, "cosine")
    url = f"/v1/collections/{name}"
    for metadata in ({"x": big}, {"x": [1, big]}, {"x": {"y": big}}):
        batch = [{"id": "ok", "vector": [1, 0, 0, 0]}, {"id": "big", "vector": [0, 1, 0, 0], "metadata": metadata}]
        error(client.put(f"{url}/documents", json={"documents": batch}), 422, "invalid_metadata")
    assert count(client, name) == 0
    edge = (1 << 63) - 1 if big > 0 else -(1 << 63)
    docs = [{"id": "edge", "vector": [1, 0, 0, 0], "metadata": {"x": edge}}, {"id": "near", "vector": [1, 1, 0, 0]}]
    docs[1]["metadata"] = {"x": edge - 1 if big > 0 else edge + 1}
    assert client.put(f"{url}/documents", json={"documents": docs}).status_code == 200
    hits = client.post(f"{url}/search", json={"vector": [1, 0, 0, 0], "filter": {"x": edge}}).json()["results"]
    assert [(h["id"], h["metadata"]["x"]) for h in hits] == [("edge", edge)]
    search = {"vector": [1, 0, 0, 0], "filter": {"x": big}}
    error(client.post(f"{url}/search", json=search), 422, "invalid_filter")
    error(client.post(f"{url}/search/batch", json={"searches": [search]}), 422, "invalid_filter")
    error(client.post(f"{url}/recall", json={"queries": 2, "filter": {"x": big}}), 422, "invalid_filter")


def test_405_says_which_methods_are_allowed(client):
    r = client.put("/v1/collections")
    assert r.status_code == 405 and set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}


def test_every_request_is_sized_by_what_exists_and_bounded(client):
    name = vectors_collection(client, "cosine", dim=4, dims=[2, 4])
    docs = [{"id": "a", "vector": [1, 0, 0, 0]}, {"id": "b", "vector": [0, 1, 0, 0]}]
    assert client.put(f"/v1/collections/{name}/documents", json={"documents": docs}).status_code == 200
    # k · rerank_factor far beyond the 2 documents: answered from what exists
    ok = client.post(
        f"/v1/collections/{name}/search", json={"vector": [1, 0, 0, 0], "k": 1000, "dim": 2, "rerank_factor": 2}
    )
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2
    error(
        client.post(
            f"/v1/collections/{name}/search", json={"vector": [1, 0, 0, 0], "k": 1000, "dim": 2, "rerank_factor": 1000}
        ),
        422,
        "too_many_candidates",
    )
    batch = {"searches": [{"vector": [1, 0, 0, 0], "k": 1000}] * 4}  # 4 × 1000 > 3000
    error(client.post(f"/v1/collections/{name}/search/batch", json=batch), 422, "too_many_candidates")


def test_response_bytes_are_bounded(client):
    name = vectors_collection(client, "cosine")
    docs = [{"id": f"d{i}", "vector": [1, i, 0, 0], "text": "x" * 2500} for i in range(20)]
    for start in (0, 4, 8, 12, 16):  # 4 × 2,500 characters per request: under max_request_chars
        assert (
            client.put(f"/v1/collections/{name}/documents", json={"documents": docs[start : start + 4]}).status_code
            == 200
        )
    small = client.post(f"/v1/collections/{name}/search", json={"vector": [1, 0, 0, 0], "k": 10})
    assert small.status_code == 200 and len(small.json()["results"]) == 10
    many = {"searches": [{"vector": [1, 0, 0, 0], "k": 20}] * 2}  # 40 × 2.5 kB > 40 kB
    error(client.post(f"/v1/collections/{name}/search/batch", json=many), 422, "response_too_large")
    ids_only = {"searches": [{"vector": [1, 0, 0, 0], "k": 20, "include": []}] * 2}
    assert client.post(f"/v1/collections/{name}/search/batch", json=ids_only).status_code == 200


def test_text_limits_per_text_and_per_request(client):
    name = unique_name()
    assert client.post("/v1/collections", json={"name": name}).status_code == 201
    error(
        client.put(f"/v1/collections/{name}/documents", json={"documents": [{"id": "x", "text": "a" * 5001}]}),
        422,
        "text_too_long",
    )
    three = [{"id": f"t{i}", "text": "word " * 900} for i in range(3)]  # 3 × 4,500 > 12,000 characters
    error(client.put(f"/v1/collections/{name}/documents", json={"documents": three}), 422, "request_too_large")
    error(client.post(f"/v1/collections/{name}/search", json={"query": "q" * 5001}), 422, "text_too_long")
    error(client.post("/v1/embeddings", json={"input": ["a" * 5001]}), 422, "text_too_long")
    assert count(client, name) == 0


def test_texts_longer_than_the_model_reads_are_reported(client):
    name = unique_name()
    assert client.post("/v1/collections", json={"name": name}).status_code == 201
    long_text = "Aspirin inhibits cyclooxygenase. " * 140  # 4,620 characters > 16 × 256
    docs = [{"id": "long", "text": long_text}, {"id": "short", "text": "Aspirin inhibits cyclooxygenase."}]
    r = client.put(f"/v1/collections/{name}/documents", json={"documents": docs}).json()
    assert r["upserted"] == 2 and r["truncated"] == ["long"]
    assert client.get(f"/v1/collections/{name}/documents/long").json()["text"] == long_text  # stored whole
    assert "truncated" not in client.put(f"/v1/collections/{name}/documents", json={"documents": docs[1:]}).json()
    assert client.post(f"/v1/collections/{name}/search", json={"query": long_text}).json()["truncated"] is True
    assert "truncated" not in client.post(f"/v1/collections/{name}/search", json={"query": "aspirin"}).json()
    embedded = client.post("/v1/embeddings", json={"input": ["short", long_text]}).json()
    assert embedded["truncated"] == [1] and embedded["usage"]["prompt_tokens"] <= 256 + 3


def test_a_dropped_collection_leaves_no_metric_series(client):
    name = vectors_collection(client, "cosine")
    client.put(f"/v1/collections/{name}/documents", json={"documents": [{"id": "a", "vector": [1, 0, 0, 0]}]})
    for _ in range(5):
        client.post(f"/v1/collections/{name}/search", json={"vector": [1, 0, 0, 0]})
    client.post(f"/v1/collections/{name}/recall", json={"queries": 1})
    assert f'collection="{name}"' in client.get("/metrics").text
    assert client.delete(f"/v1/collections/{name}").status_code == 204
    assert f'collection="{name}"' not in client.get("/metrics").text


def test_the_number_of_collections_is_limited(data_dir):
    with app_client(Settings(data_dir=data_dir.parent / "few", max_collections=2), fake=True) as c:
        for name in ("one", "two"):
            assert c.post("/v1/collections", json={"name": name, "dim": 2}).status_code == 201
        error(c.post("/v1/collections", json={"name": "three", "dim": 2}), 409, "collection_limit")
        assert c.delete("/v1/collections/one").status_code == 204
        assert c.post("/v1/collections", json={"name": "three", "dim": 2}).status_code == 201


@pytest.mark.parametrize("damage", ["manifest", "current", "upgrade_record"])
def test_a_collection_that_cannot_open_is_listed_with_its_reason_and_can_be_dropped(tmp_path, damage):
    data = tmp_path / "data"
    settings = Settings(data_dir=data, snapshot_interval_s=3600)
    with app_client(settings, fake=True) as c:
        for name in ("good", "bad"):
            assert c.post("/v1/collections", json={"name": name, "dim": 2}).status_code == 201
            c.put(f"/v1/collections/{name}/documents", json={"documents": [{"id": "a", "vector": [1, 0]}]})
    home = data / "collections" / "bad"
    if damage == "manifest":
        (home / "manifest.json").write_text("{truncated")
    elif damage == "current":
        (home / "current.json").write_text('{"generation": ')
    else:
        (home / "upgrades").mkdir()
        (home / "upgrades" / "abc.json").write_text(json.dumps({"id": "abc", "surprise": True}))
    with app_client(settings, fake=True) as c:
        listed = c.get("/v1/collections").json()
        assert [x["name"] for x in listed["collections"]] == ["good"]
        assert [(f["name"], f["state"]) for f in listed["failed"]] == [("bad", "failed")]
        reason = listed["failed"][0]["reason"]
        assert reason and reason in c.get("/readyz").json()["failed"]["bad"]
        assert reason in error(c.get("/v1/collections/bad"), 503, "collection_unavailable")["message"]
        error(c.post("/v1/collections/bad/search", json={"vector": [1, 0]}), 503, "collection_unavailable")
        error(c.post("/v1/collections", json={"name": "bad", "dim": 2}), 409, "collection_exists")
        assert c.post("/v1/collections/good/search", json={"vector": [1, 0]}).json()["results"][0]["id"] == "a"
        assert c.delete("/v1/collections/bad").status_code == 204
        assert not os.path.exists(home)
        assert c.post("/v1/collections", json={"name": "bad", "dim": 2}).status_code == 201
        assert c.get("/v1/collections").json()["failed"] == []
    shutil.rmtree(data)


def test_a_pca_rotation_is_bounded_in_dims(client):
    """A PCA fit holds several (D, D) float64 matrices: at 16,384 dims, 2 GiB each."""
    wide = unique_name()
    r = client.post("/v1/collections", json={"name": wide, "dim": 5000, "dims": [64, 5000]})
    assert r.status_code == 201 and r.json()["elasticizer"]["kind"] == "none"  # auto: prefixes as they are
    r = client.post(
        "/v1/collections", json={"name": unique_name(), "dim": 5000, "dims": [64, 5000], "elasticizer": {"kind": "pca"}}
    )
    error(r, 422, "rotation_too_large")


@pytest.mark.parametrize("path", ["/metrics", "/v1/collections", "/v1/collections/{name}"])
def test_reading_a_slow_collections_stats_holds_up_no_other_request(client, monkeypatch, path):
    """A scrape, the list and a description read collections' stats: on a shared backend each
    read is a call to the engine, up to its timeout while the engine is away. They run off the
    event loop, so other requests are answered meanwhile (here the read is held until /healthz
    has been answered)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    name = unique_name()
    assert client.post("/v1/collections", json={"name": name, "dim": 4}).status_code == 201
    collection = client.app.state.engine.catalog.get(name)
    stats, entered, release = collection.stats, threading.Event(), threading.Event()

    def held_stats():
        entered.set()
        release.wait(60)
        return stats()

    monkeypatch.setattr(collection, "stats", held_stats)
    with ThreadPoolExecutor(1) as pool:
        read = pool.submit(client.get, path.format(name=name))
        try:
            assert entered.wait(30), "the request never read the collection's stats"
            assert client.get("/healthz").status_code == 200  # answered while the read is held
            assert not read.done()
        finally:
            release.set()
        assert read.result(60).status_code == 200


def test_a_write_whose_generation_keeps_changing_is_a_503_to_retry_and_changes_nothing(client, monkeypatch):
    """A write runs again on the generation that serves when a cut-over, rollback or restore
    retires the one it held (`UpgradeManager.serving`), three times at most. Past that it was a
    409 with the code "retry", which no client retried and the docs did not name; the state is
    transient, as a restore's swap is, so it is a 503 with Retry-After, which clients retry."""
    from service.upgrade_manager import Retired

    name = vectors_collection(client, "cosine")
    upgrades = client.app.state.engine.upgrades
    tries = []

    async def retired_each_time(collection, docs):
        tries.append(collection)
        raise Retired()

    monkeypatch.setattr(upgrades, "write", retired_each_time)
    r = client.put(f"/v1/collections/{name}/documents", json={"documents": [{"id": "a", "vector": [1, 0, 0, 0]}]})
    error(r, 503, "collection_changing")
    assert r.headers["retry-after"] == "1" and len(tries) == 3
    monkeypatch.undo()
    assert count(client, name) == 0
