"""Security in the app: every route × every role, keys scoped to collections, both key headers,
constant-time lookups, open and closed paths, Host and Origin checks, JSON-only bodies, per-key
rate limits, the refusal to serve a network without keys, and the model allowlist."""

import json
import re

import pytest

from service import auth
from service.app import create_app
from service.auth import unauthenticated_exposure
from service.settings import Settings
from tests.support.app import app_client

KEYS = {
    "admin": "admin-key-0123456789",
    "write": "write-key-0123456789",
    "read": "read-key-01234567890",
    "kb-writer": "kb-writer-key-012345",
    "kb-admin": "kb-admin-key-0123456",
}

# The specification, written out independently of service/auth.py: the least role each route
# needs (None: open), and whether the key must be allowed the path's collection.
EXPECTED = {
    "healthz": (None, False),
    "readyz": (None, False),
    "metrics": ("read", False),
    "create_collection": ("admin", False),
    "list_collections": ("read", False),
    "describe_collection": ("read", True),
    "update_collection": ("admin", True),
    "drop_collection": ("admin", True),
    "refit_elasticizer": ("admin", True),
    "measure_recall": ("write", True),
    "upsert_documents": ("write", True),
    "delete_documents": ("write", True),
    "delete_document": ("write", True),
    "get_document": ("read", True),
    "list_documents": ("read", True),
    "search": ("read", True),
    "search_batch": ("read", True),
    "create_embeddings": ("read", False),
    "start_upgrade": ("admin", True),
    "list_upgrades": ("admin", True),
    "get_upgrade": ("admin", True),
    "cut_over": ("admin", True),
    "roll_back": ("admin", True),
    "finalize": ("admin", True),
    "abort": ("admin", True),
    "create_snapshot": ("admin", True),
    "list_snapshots": ("admin", True),
    "download_snapshot": ("admin", True),
    "delete_snapshot": ("admin", True),
    "restore_snapshot": ("admin", True),
    "restore_upload": ("admin", False),
}
RANK = {"read": 0, "write": 1, "admin": 2}


def key_settings(settings: Settings, **extra) -> Settings:
    keys = [{"key": KEYS[r], "role": r} for r in ("admin", "write", "read")]
    keys.append({"key": KEYS["kb-writer"], "role": "write", "collections": ["kb"], "name": "kb-writer"})
    keys.append({"key": KEYS["kb-admin"], "role": "admin", "collections": ["kb", "kb-new"], "name": "kb-admin"})
    return settings.model_copy(update={"api_keys": Settings(api_keys=keys).api_keys, **extra})


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def api_routes() -> list[tuple[str, str, str]]:
    """(name, method, path template) of every route the app serves, read from the app itself."""
    app = create_app(Settings())
    schema = app.openapi()
    out = [
        (op["operationId"], method.upper(), path) for path, ops in schema["paths"].items() for method, op in ops.items()
    ]
    return [*out, ("metrics", "GET", "/metrics")]  # not in the schema


def test_every_route_has_an_expected_rule_and_the_app_refuses_a_route_without_one():
    served = {name for name, _, _ in api_routes()}
    assert served == set(EXPECTED), "a route was added or removed: add it to EXPECTED and to auth.RULES"
    assert {n: (r.role, r.collection) for n, r in auth.RULES.items()} == EXPECTED
    with pytest.raises(RuntimeError, match="without an authorization rule"):
        auth.check_rules(["search", "a_new_route"])


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    settings = key_settings(Settings(data_dir=tmp_path_factory.mktemp("sec") / "data", snapshot_interval_s=3600))
    with app_client(settings, fake=True) as client:
        for name in ("kb", "other"):
            r = client.post("/v1/collections", json={"name": name}, headers=bearer("admin"))
            assert r.status_code == 201, r.text
        yield client


def call(client, method: str, template: str, collection: str, headers: dict[str, str]):
    path = template.replace("{name}", collection).replace("{doc_id}", "d1").replace("{upgrade_id}", "u1")
    path = path.replace("{snapshot_id}", "s1")
    body = {"input": "a test", "collection": collection} if path == "/v1/embeddings" else {}
    json_body = method in ("POST", "PUT", "PATCH") and path != "/v1/snapshots/restore"  # that one takes a tar
    kwargs = {"json": body} if json_body else {}
    return client.request(method, path, headers=headers, **kwargs)


# Routes whose success would change what the other cases see are left out of the matrix's
# "allowed" calls: dropping a collection (asserted separately below).
MUTATING = {"drop_collection"}


@pytest.mark.parametrize("role", ["read", "write", "admin", "kb-writer", None])
def test_route_role_matrix(guarded, role):
    failures = []
    for name, method, template in api_routes():
        least, scoped = EXPECTED[name]
        key_role = "write" if role == "kb-writer" else role
        for collection in ("kb", "other"):
            if name in MUTATING and role is not None and key_role == "admin":
                continue
            r = call(guarded, method, template, collection, bearer(role) if role else {})
            if least is None:
                expected = "allowed"
            elif role is None:
                expected = 401
            elif RANK[key_role] < RANK[least] or (
                role == "kb-writer" and collection == "other" and (scoped or name == "create_embeddings")
            ):
                expected = 403
            else:
                expected = "allowed"
            got = r.status_code
            if (expected == "allowed" and got in (401, 403)) or (expected != "allowed" and got != expected):
                failures.append(
                    f"{role} {method} {template} [{collection}]: expected {expected}, got {got} {r.text[:120]}"
                )
            if got in (401, 403):
                assert r.json()["error"]["code"] in ("unauthorized", "forbidden"), r.text
    assert not failures, "\n".join(failures)


def test_drop_needs_admin_and_a_key_limited_to_one_collection_sees_only_it(guarded):
    assert guarded.delete("/v1/collections/other", headers=bearer("write")).status_code == 403
    listed = guarded.get("/v1/collections", headers=bearer("kb-writer")).json()
    assert [c["name"] for c in listed["collections"]] == ["kb"]
    assert {c["name"] for c in guarded.get("/v1/collections", headers=bearer("read")).json()["collections"]} >= {
        "kb",
        "other",
    }


def test_an_admin_key_limited_to_collections_creates_and_restores_only_those(guarded):
    """It could create any collection, and restore an archive over any other (replace=true)."""
    other = guarded.get("/v1/collections/other", headers=bearer("admin")).json()
    r = guarded.post("/v1/collections", json={"name": "elsewhere", "dim": 4}, headers=bearer("kb-admin"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    snap = guarded.post("/v1/collections/kb/snapshots", headers=bearer("kb-admin")).json()
    tar = guarded.get(f"/v1/collections/kb/snapshots/{snap['id']}", headers=bearer("kb-admin")).content
    upload = {**bearer("kb-admin"), "Content-Type": "application/x-tar"}
    for query in ("?collection=other&replace=true", "?collection=elsewhere", ""):
        r = guarded.post(f"/v1/snapshots/restore{query}", content=tar, headers=upload)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (query, r.text)
    names = {c["name"] for c in guarded.get("/v1/collections", headers=bearer("admin")).json()["collections"]}
    assert "elsewhere" not in names and guarded.get("/v1/collections/other", headers=bearer("admin")).json() == other
    # within its list, both work
    r = guarded.post("/v1/snapshots/restore?collection=kb-new", content=tar, headers=upload)
    assert r.status_code == 201, r.text
    assert guarded.delete("/v1/collections/kb-new", headers=bearer("kb-admin")).status_code == 204
    assert guarded.post("/v1/collections", json={"name": "kb-new"}, headers=bearer("kb-admin")).status_code == 201
    assert guarded.delete("/v1/collections/kb-new", headers=bearer("kb-admin")).status_code == 204


def test_readyz_names_failed_collections_only_to_keys_that_may_see_them(tmp_path):
    """/readyz is open (probes need no key): it named every collection that failed, with its
    reason, to anyone who could reach the server."""
    settings = key_settings(Settings(data_dir=tmp_path / "data", snapshot_interval_s=3600))
    with app_client(settings, fake=True) as c:
        for name in ("kb", "other"):
            assert c.post("/v1/collections", json={"name": name, "dim": 2}, headers=bearer("admin")).status_code == 201
    for name in ("kb", "other"):
        (tmp_path / "data" / "collections" / name / "manifest.json").write_text("{truncated")
    with app_client(settings, fake=True) as c:
        seen = {
            who: c.get("/readyz", headers=bearer(who) if who else {}).json()
            for who in (None, "admin", "kb-writer", "read")
        }
        assert {who: sorted(r["failed"]) for who, r in seen.items()} == {
            None: [],
            "admin": ["kb", "other"],
            "kb-writer": ["kb"],
            "read": ["kb", "other"],
        }
        assert all(r["status"] == "ready" and r["failed_count"] == 2 for r in seen.values())
        bad_key = c.get("/readyz", headers={"Authorization": "Bearer not-a-key-at-all-0000"})
        assert bad_key.status_code == 200 and bad_key.json()["failed"] == {}


def test_both_key_headers_and_the_401_shape(guarded):
    assert guarded.get("/v1/collections", headers={"api-key": KEYS["read"]}).status_code == 200
    assert guarded.get("/v1/collections", headers={"Authorization": f"bearer {KEYS['read']}"}).status_code == 200
    for headers in ({}, {"Authorization": "Bearer not-a-key-at-all-0000"}, {"api-key": KEYS["read"] + "x"}):
        r = guarded.get("/v1/collections", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized"
    r = guarded.post("/v1/collections", json={"name": "x"}, headers=bearer("read"))
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    assert KEYS["read"] not in r.text


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    ring = auth.KeyRing(key_settings(Settings()).api_keys)
    assert ring.authenticate(KEYS["admin"]).role == "admin"  # the first key: the loop still visits all
    assert len(calls) == len(KEYS)
    calls.clear()
    assert ring.authenticate("wrong-key-00000000000") is None
    assert len(calls) == len(KEYS) and all(len(a) == len(b) == 32 for a, b in calls)  # digests, never the raw keys


def test_open_and_closed_paths(settings):
    with app_client(key_settings(settings), fake=True) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 401, path
        assert client.get("/metrics", headers=bearer("read")).status_code == 200
    with app_client(key_settings(settings, public_metrics=True, public_docs=True), fake=True) as client:
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert client.get("/v1/collections").status_code == 401


def test_host_origin_and_content_type(settings):
    with app_client(settings, fake=True) as client:
        r = client.get("/v1/collections", headers={"Host": "rebound.example:8000"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
            assert client.get("/v1/collections", headers={"Host": host}).status_code == 200, host
        # A web page's cross-site POST, with a body or without one, changes nothing.
        r = client.post("/v1/collections", json={"name": "csrf"}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
        r = client.post("/v1/collections/x/upgrades/u/finalize", headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        r = client.post(
            "/v1/collections", content=json.dumps({"name": "plain"}), headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        r = client.post("/v1/collections", data={"name": "form"})
        assert r.status_code == 415
        assert client.get("/v1/collections").json()["collections"] == []
        # The server's own pages (Swagger UI) post with its own origin.
        r = client.post("/v1/collections", json={"name": "own"}, headers={"Origin": "http://127.0.0.1:8000"})
        assert r.status_code == 201
    allowed = settings.model_copy(
        update={"allowed_hosts": ["search.internal"], "cors_origins": ["https://app.example"]}
    )
    with app_client(allowed, fake=True) as client:
        assert client.get("/v1/collections", headers={"Host": "search.internal:8000"}).status_code == 200
        preflight = client.options(
            "/v1/collections",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        r = client.post("/v1/collections", json={"name": "cors"}, headers={"Origin": "https://app.example"})
        assert r.status_code == 201 and r.headers["access-control-allow-origin"] == "https://app.example"


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(settings):
    keys = [{"key": "slow-key-0123456789", "role": "read", "rate_limit": 0.5}, {"key": KEYS["admin"], "role": "admin"}]
    with app_client(settings.model_copy(update={"api_keys": Settings(api_keys=keys).api_keys}), fake=True) as client:
        slow = {"api-key": "slow-key-0123456789"}
        assert client.get("/v1/collections", headers=slow).status_code == 200
        r = client.get("/v1/collections", headers=slow)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
        assert client.get("/v1/collections", headers=bearer("admin")).status_code == 200  # other keys unaffected


def test_no_network_without_keys_unless_said_so():
    assert unauthenticated_exposure(Settings()) is None
    assert "VECNEST_API_KEYS" in unauthenticated_exposure(Settings(host="0.0.0.0"))
    assert unauthenticated_exposure(Settings(host="0.0.0.0", allow_unauthenticated=True)) is None
    assert unauthenticated_exposure(key_settings(Settings(host="0.0.0.0"))) is None


def test_settings_reject_short_keys_and_read_a_keys_file(tmp_path):
    with pytest.raises(ValueError):
        Settings(api_keys=[{"key": "short", "role": "admin"}])
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{"key": KEYS["read"], "role": "read", "name": "reader"}]))
    s = Settings(api_keys_file=path)
    assert [(k.name, k.role) for k in s.api_keys] == [("reader", "read")]
    assert KEYS["read"] not in repr(s)  # secrets are not printed


def test_models_only_by_alias_or_under_a_model_root(settings, tmp_path):
    root = tmp_path / "models"
    (root / "mini").mkdir(parents=True)
    (root / "mini" / "config.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (root / "escape").symlink_to(outside)
    with app_client(settings.model_copy(update={"model_dirs": [root]}), fake=True) as client:
        assert client.post("/v1/collections", json={"name": "a", "model": "mini"}).status_code == 201
        r = client.post("/v1/collections", json={"name": "b", "model": str(root / "mini")})
        assert r.status_code == 201, r.text
        messages = set()
        for model in (str(outside), "/nonexistent/model", "/etc", "escape", "../outside", "mini/../../outside"):
            r = client.post("/v1/collections", json={"name": "c", "model": model})
            assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_model", (model, r.text)
            messages.add(re.sub(r"unknown model '[^']*'", "unknown model X", r.json()["error"]["message"]))
        assert len(messages) == 1  # the same answer whether the path exists or not
    with app_client(settings.model_copy(update={"allow_model_paths": True}), fake=True) as client:
        assert client.post("/v1/collections", json={"name": "d", "model": str(outside)}).status_code == 201


def test_strict_collection_limits_apply_before_any_work_and_survive_restart(settings):
    limits = {"max_k": 5, "max_ef": 50, "max_batch_documents": 2, "max_batch_queries": 2, "max_text_chars": 40}
    with app_client(settings, fake=True) as client:
        r = client.post("/v1/collections", json={"name": "strict", "limits": {**limits, "max_metadata_bytes": 20}})
        assert r.status_code == 201 and r.json()["limits"]["max_k"] == 5
        client.post("/v1/collections", json={"name": "loose"})
        docs = [{"id": "a", "text": "a short text"}, {"id": "b", "text": "another one"}]
        assert client.put("/v1/collections/strict/documents", json={"documents": docs}).status_code == 200
        refused = [
            ("put", "/documents", {"documents": [*docs, {"id": "c", "text": "x"}]}, "too_many_documents"),
            ("put", "/documents", {"documents": [{"id": "c", "text": "x" * 41}]}, "text_too_long"),
            ("put", "/documents", {"documents": [{"id": "c", "text": "x", "metadata": {"k": "x" * 20}}]}, None),
            ("post", "/search", {"query": "text", "k": 6}, "k_too_large"),
            ("post", "/search", {"query": "text", "k": 3, "ef": 51}, "ef_too_large"),
            ("post", "/search/batch", {"searches": [{"query": "a"}] * 3}, "too_many_queries"),
            ("post", "/recall", {"k": 6}, "k_too_large"),
        ]
        for method, path, body, code in refused:
            r = getattr(client, method)(f"/v1/collections/strict{path}", json=body)
            assert r.status_code == 422, (path, body, r.text)
            assert code is None or r.json()["error"]["code"] == code, r.text
        assert client.get("/v1/collections/strict").json()["documents"] == 2  # nothing was written
        assert client.post("/v1/collections/loose/search", json={"query": "text", "k": 6}).status_code == 200
        r = client.patch("/v1/collections/strict", json={"limits": {"max_k": 8}})
        assert r.status_code == 200 and r.json()["limits"] == {"max_k": 8}
    with app_client(settings, fake=True) as client:  # the limits are part of the collection, kept on disk
        assert client.get("/v1/collections/strict").json()["limits"] == {"max_k": 8}
        assert client.post("/v1/collections/strict/search", json={"query": "text", "k": 9}).status_code == 422
        assert client.post("/v1/collections/strict/search", json={"query": "text", "k": 8}).status_code == 200


def test_the_schema_declares_the_keys_when_there_are_keys(settings):
    schema = create_app(key_settings(settings)).openapi()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert schema["paths"]["/v1/collections"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert "securitySchemes" not in create_app(settings).openapi()["components"]
