"""The hot path (service/hot_path.py) answers searches and upserts exactly as FastAPI's own
routes do: the same bodies (None fields left out, metadata and vectors as stored), the same
errors; and it is what serves them (its requests skip FastAPI's dependency solving)."""

import asyncio

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.support import TEXTS, unique_name
from tests.support.app import fake_loader
from tests.support.server import wait_ready


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from fastapi.testclient import TestClient

    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("hot") / "data"), encoder_loader=fake_loader)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        wait_ready(client.get)
        yield app, client


def fastapi_only(app):
    """The FastAPI app without the middlewares (and so without the hot path): its router."""
    from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware

    router = AsyncExitStackMiddleware(app.router)

    async def asgi(scope, receive, send):
        scope["app"] = app
        await router(scope, receive, send)

    return asgi


def without_took(body):
    if isinstance(body, dict):
        return {k: without_took(v) for k, v in body.items() if k != "took_ms"}
    if isinstance(body, list):
        return [without_took(v) for v in body]
    return body


async def post_both(app, client, path, body, method="POST"):
    hot = client.request(method, path, json=body)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fastapi_only(app)), base_url="http://x") as plain:
        reference = await plain.request(method, path, json=body)
    return hot, reference


def test_searches_answer_as_fastapi_routes_do(app):
    app, client = app
    name = unique_name()
    assert client.post("/v1/collections", json={"name": name, "dims": [64, 384]}).status_code == 201
    docs = [
        {"id": k, "text": v, "metadata": {"topic": k, "none": None, "nested": {"a": [1, None]}}}
        for k, v in TEXTS.items()
    ]
    assert client.put(f"/v1/collections/{name}/documents", json={"documents": docs}).status_code == 200
    vector = client.post("/v1/embeddings", json={"input": "a cat", "model": "all-MiniLM-L6-v2"}).json()
    vector = vector["data"][0]["embedding"]
    bodies = [
        {"query": "a cat sat on the mat"},
        {"query": "space", "k": 2, "include": ["vector"]},
        {"vector": vector, "k": 3, "dim": 64, "include": ["text", "metadata", "vector"]},
        {"vector": vector, "include": [], "exact": True, "filter": {"topic": "cat"}},
    ]
    for body in bodies:
        hot, reference = asyncio.run(post_both(app, client, f"/v1/collections/{name}/search", body))
        assert hot.status_code == reference.status_code == 200
        assert without_took(hot.json()) == without_took(reference.json()), body
        assert hot.headers["content-type"] == "application/json"
    batch = {"searches": bodies}
    hot, reference = asyncio.run(post_both(app, client, f"/v1/collections/{name}/search/batch", batch))
    assert hot.status_code == reference.status_code == 200
    assert without_took(hot.json()) == without_took(reference.json())


def test_search_errors_keep_their_shape(app):
    _, client = app
    name = unique_name()
    assert client.post("/v1/collections", json={"name": name}).status_code == 201
    cases = [
        ({"query": "x", "k": 0}, 422, "invalid_request"),  # body validation: FastAPI's own 422
        ({"query": "x", "unknown": 1}, 422, "invalid_request"),
        ({"vector": [0.1] * 5}, 422, "wrong_dimension"),  # the collection's rule
        ({"query": "x", "dim": 7}, 422, None),
    ]
    for body, status, code in cases:
        r = client.post(f"/v1/collections/{name}/search", json=body)
        assert r.status_code == status, (body, r.text)
        assert set(r.json()) == {"error"} and (code is None or r.json()["error"]["code"] == code)
    r = client.post("/v1/collections/nope/search", json={"query": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"
    headers = {"content-type": "application/json"}
    r = client.post(f"/v1/collections/{name}/search", content=b"{not json", headers=headers)
    assert r.status_code == 422 and "error" in r.json()


def test_the_hot_path_serves_searches(app, monkeypatch):
    """A search does not reach FastAPI's dependency solver; another route does."""
    from fastapi import routing

    solved = []
    original = routing.solve_dependencies

    async def counting(*args, **kwargs):
        solved.append(1)
        return await original(*args, **kwargs)

    monkeypatch.setattr(routing, "solve_dependencies", counting)
    app, client = app
    name = unique_name()
    assert client.post("/v1/collections", json={"name": name}).status_code == 201
    assert len(solved) == 1
    r = client.post(f"/v1/collections/{name}/search", json={"query": "x"})
    assert r.status_code == 200 and len(solved) == 1
    r = client.put(f"/v1/collections/{name}/documents", json={"documents": [{"id": "a", "text": "x"}]})
    assert r.status_code == 200 and len(solved) == 1
    assert client.get(f"/v1/collections/{name}").status_code == 200 and len(solved) == 2


def test_upserts_answer_as_the_fastapi_route_does(app):
    app, client = app
    name = unique_name()
    assert client.post("/v1/collections", json={"name": name}).status_code == 201
    path = f"/v1/collections/{name}/documents"
    long_text = "word " * 2000  # longer than the model reads: reported in `truncated`
    bodies = [
        {"documents": [{"id": k, "text": v, "metadata": {"topic": k}} for k, v in TEXTS.items()]},
        {"documents": [{"id": "long", "text": long_text}]},
        {"documents": [{"id": "v", "vector": [0.5] * 384}]},
    ]
    for body in bodies:  # upserts are idempotent: both answers describe the same write
        hot, reference = asyncio.run(post_both(app, client, path, body, method="PUT"))
        assert hot.status_code == reference.status_code == 200, hot.text
        assert hot.json() == reference.json()
    assert client.get(f"/v1/collections/{name}").json()["documents"] == len(TEXTS) + 2
    cases = [
        ({"documents": []}, "invalid_request"),  # body validation: FastAPI's own 422
        ({"documents": [{"id": "x", "text": "a", "unknown": 1}]}, "invalid_request"),
        ({"documents": [{"id": "x", "vector": [0.1] * 5}]}, "wrong_dimension"),  # the collection's rule
        ({"documents": [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]}, "duplicate_id"),
    ]
    for body, code in cases:
        r = client.put(path, json=body)
        assert r.status_code == 422, (body, r.text)
        assert set(r.json()) == {"error"} and r.json()["error"]["code"] == code
    assert client.get(f"/v1/collections/{name}").json()["documents"] == len(TEXTS) + 2  # nothing changed
    r = client.put("/v1/collections/nope/documents", json=bodies[0])
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"


def test_an_unexpected_error_is_answered_as_a_500_not_raised_to_the_server(tmp_path, monkeypatch):
    """uvicorn closes a connection whose app raised, and Starlette's own 500 handler raises
    again after answering: a client's next request on that keep-alive connection met a reset.
    A TestClient that raises what the app raises shows what the server would see."""
    from fastapi.testclient import TestClient

    from service.ops import collections as ops

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    app = create_app(Settings(data_dir=tmp_path / "data"), encoder_loader=fake_loader)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=True) as client:
        wait_ready(client.get)
        monkeypatch.setattr(ops, "list_all", broken)
        r = client.get("/v1/collections")
        assert r.status_code == 500 and r.json() == {
            "error": {"code": "internal", "message": "internal error; the server log has the details"}
        }
        assert client.get("/healthz").status_code == 200
