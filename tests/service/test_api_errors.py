"""Every 4xx the API promises: a clear JSON error, and nothing changed by a rejected request."""

import pytest

from service.settings import Settings
from tests.support import unique_name
from tests.support.app import app_client

LIMIT = 20


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("errors") / "data",
        snapshot_interval_s=3600,
        max_batch_documents=LIMIT,
        max_batch_queries=3,
        max_k=100,
        max_body_bytes=200_000,
    )
    with app_client(settings, fake=True) as c:
        yield c


@pytest.fixture(scope="module")
def coll(client):
    name = unique_name()
    assert client.post("/v1/collections", json={"name": name}).status_code == 201
    docs = [{"id": "a", "text": "alpha particle physics", "metadata": {"n": 1}}, {"id": "b", "text": "baking bread"}]
    assert client.put(f"/v1/collections/{name}/documents", json={"documents": docs}).status_code == 200
    return name


def error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def unchanged(client, coll):
    assert client.get(f"/v1/collections/{coll}").json()["documents"] == 2
    assert client.get(f"/v1/collections/{coll}/documents/a").json()["text"] == "alpha particle physics"


# -- 404 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, path, body",
    [
        ("get", "/v1/collections/nope", None),
        ("delete", "/v1/collections/nope", None),
        ("put", "/v1/collections/nope/documents", {"documents": [{"id": "x", "text": "t"}]}),
        ("post", "/v1/collections/nope/search", {"query": "q"}),
        ("get", "/v1/collections/nope/documents/x", None),
    ],
)
def test_unknown_collection(client, method, path, body):
    kwargs = {"json": body} if body is not None else {}
    error(getattr(client, method)(path, **kwargs), 404, "collection_not_found")


def test_unknown_document_and_route(client, coll):
    error(client.get(f"/v1/collections/{coll}/documents/zzz"), 404, "document_not_found")
    error(client.delete(f"/v1/collections/{coll}/documents/zzz"), 404, "document_not_found")
    error(client.get("/v2/whatever"), 404, "route_not_found")
    error(client.put(f"/v1/collections/{coll}"), 405, "method_not_allowed")


# -- 409 ------------------------------------------------------------------------------------------
def test_duplicate_collection(client, coll):
    error(client.post("/v1/collections", json={"name": coll}), 409, "collection_exists")


# -- 422 on collections ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, code",
    [
        ({"name": "bad name!"}, "invalid_request"),
        ({"name": "x" * 65}, "invalid_request"),
        ({"name": unique_name(), "metric": "hamming"}, "unknown_metric"),
        ({"name": unique_name(), "model": "no-such-model"}, "unknown_model"),
        ({"name": unique_name(), "model": "/definitely/not/a/dir"}, "unknown_model"),
        ({"name": unique_name(), "dim": 0}, "invalid_request"),
        ({"name": unique_name(), "model": "all-MiniLM-L6-v2", "dim": 10}, "wrong_dimension"),
        ({"name": unique_name(), "hnsw": {"m": 1000}}, "invalid_request"),
        ({"name": unique_name(), "surprise": 1}, "invalid_request"),
        ({}, "invalid_request"),
    ],
)
def test_bad_collection_requests(client, body, code):
    error(client.post("/v1/collections", json=body), 422, code)
    if "name" in body:
        assert client.get(f"/v1/collections/{body['name']}").status_code in (404, 422)


# -- 422 on documents: each rejected batch changes nothing --------------------------------------
GOOD = {"id": "new", "text": "a fine document"}


@pytest.mark.parametrize(
    "docs, code",
    [
        ([GOOD, {"id": "v", "vector": [0.1, 0.2]}], "wrong_dimension"),
        ([GOOD, {"id": "e", "text": "   "}], "empty_text"),
        ([GOOD, {"id": "n"}], "missing_content"),
        ([GOOD, {"id": "", "text": "no id"}], "invalid_request"),
        ([GOOD, {"id": "m", "text": "t", "metadata": "not an object"}], "invalid_request"),
        ([GOOD, {**GOOD, "text": "same id twice"}], "duplicate_id"),
        ([{"id": f"d{i}", "text": "t"} for i in range(LIMIT + 1)], "too_many_documents"),
        ([], "invalid_request"),  # the schema says minItems 1
    ],
)
def test_bad_documents(client, coll, docs, code):
    error(client.put(f"/v1/collections/{coll}/documents", json={"documents": docs}), 422, code)
    unchanged(client, coll)
    assert client.get(f"/v1/collections/{coll}/documents/new").status_code == 404


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_vectors(client, coll, literal):
    vector = ", ".join(["0.1"] * 383 + [literal])
    body = f'{{"documents": [{{"id": "nan", "vector": [{vector}]}}]}}'
    r = client.put(f"/v1/collections/{coll}/documents", content=body, headers={"content-type": "application/json"})
    error(r, 422, "invalid_request")
    r = client.post(
        f"/v1/collections/{coll}/search",
        content=f'{{"vector": [{vector}]}}',
        headers={"content-type": "application/json"},
    )
    error(r, 422, "invalid_request")
    unchanged(client, coll)


def test_malformed_bodies(client, coll):
    url = f"/v1/collections/{coll}/documents"
    error(client.put(url, content=b"{not json", headers={"content-type": "application/json"}), 422, "invalid_request")
    error(client.put(url, content=b"\xff\xfe\x00garbage", headers={"content-type": "application/json"}), 422)
    error(client.put(url, json=[1, 2, 3]), 422, "invalid_request")
    error(client.put(url, json={"documents": "many"}), 422, "invalid_request")
    error(client.put(url, json={"documents": [{"id": 5, "text": "numeric id"}]}), 422, "invalid_request")
    unchanged(client, coll)


def test_oversized_body(client, coll):
    docs = [{"id": f"big{i}", "text": "word " * 5000} for i in range(10)]  # ~250 kB > 200 kB
    error(client.put(f"/v1/collections/{coll}/documents", json={"documents": docs}), 413, "body_too_large")
    unchanged(client, coll)


# -- 422 on search --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, code",
    [
        ({}, "missing_query"),
        ({"query": "q", "vector": [0.0] * 384}, "missing_query"),
        ({"query": "  "}, "empty_text"),
        ({"vector": [1.0, 2.0]}, "wrong_dimension"),
        ({"query": "q", "k": 0}, "invalid_request"),
        ({"query": "q", "k": 101}, "k_too_large"),
        ({"query": "q", "ef": 0}, "invalid_request"),
        ({"query": "q", "filter": {"n": {"$gt": 1}}}, "invalid_filter"),
        ({"query": "q", "filter": {"n": [1, 2]}}, "invalid_filter"),
        ({"query": "q", "include": ["everything"]}, "invalid_request"),
        ({"vector": [0.0] * 384}, "zero_vector"),
        ({"query": "q", "mode": "both"}, "invalid_request"),
        ({"vector": [0.1] * 384, "mode": "keyword"}, "invalid_mode"),
        ({"vector": [0.1] * 384, "mode": "hybrid"}, "keyword_text_required"),
        ({"query": "q", "keyword_query": "words"}, "invalid_mode"),
        ({"query": "q", "mode": "hybrid", "fusion": {"dense_weight": 0, "keyword_weight": 0}}, "invalid_fusion"),
        ({"query": "q", "mode": "hybrid", "fusion": {"rrf_k": 0}}, "invalid_request"),
    ],
)
def test_bad_searches(client, coll, body, code):
    error(client.post(f"/v1/collections/{coll}/search", json=body), 422, code)


def test_bad_batch_searches(client, coll):
    url = f"/v1/collections/{coll}/search/batch"
    error(client.post(url, json={"searches": []}), 422, "invalid_request")
    error(client.post(url, json={"searches": [{"query": "q"}] * 4}), 422, "too_many_queries")
    error(client.post(url, json={"searches": [{"query": "q"}, {"query": ""}]}), 422, "empty_text")


def test_bad_deletes(client, coll):
    error(client.post(f"/v1/collections/{coll}/documents/delete", json={"ids": []}), 422, "invalid_request")
    error(
        client.post(f"/v1/collections/{coll}/documents/delete", json={"ids": ["x"] * (LIMIT + 1)}),
        422,
        "too_many_documents",
    )
    unchanged(client, coll)


@pytest.mark.parametrize(
    "body, code",
    [
        ({"input": []}, "invalid_request"),  # the schema says minItems 1
        ({"input": ["ok", ""]}, "empty_text"),
        ({"input": "x", "model": "gpt-9"}, "unknown_model"),
        ({"input": "x", "dimensions": 999}, "invalid_dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "invalid_request"),
        ({"input": [[1, 2, 3]]}, "invalid_request"),
        ({"model": "all-MiniLM-L6-v2"}, "invalid_request"),
    ],
)
def test_bad_embeddings(client, body, code):
    error(client.post("/v1/embeddings", json=body), 422, code)


def test_errors_are_counted(client):
    client.get("/v1/collections/nope")
    assert 'vecnest_errors_total{code="collection_not_found"}' in client.get("/metrics").text
