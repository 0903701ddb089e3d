"""The OpenAPI schema says what the service enforces: the limits that come from settings
(batch sizes, k, text and id lengths) are written into it when it is built, and links tell
clients (and the fuzzer's stateful phase) which responses feed which requests."""

from typing import Any

from fastapi import FastAPI

from service.settings import Settings


def install(app: FastAPI, settings: Settings) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _limits(schema["components"]["schemas"], settings)
            _links(schema["paths"])
            if settings.api_keys:
                _security(schema)
        return app.openapi_schema

    app.openapi = openapi


def _security(schema: dict[str, Any]) -> None:
    """With keys configured: both ways of sending one, required by every operation but the
    health checks (so /docs offers "Authorize")."""
    schema["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"},
    }
    for path, operations in schema["paths"].items():
        if path not in ("/healthz", "/readyz"):
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]


def _limits(models: dict[str, Any], s: Settings) -> None:
    text = {"maxLength": s.max_text_chars}
    for model, field, bound in [
        ("UpsertRequest", "documents", {"maxItems": s.max_batch_documents}),
        ("DeleteRequest", "ids", {"maxItems": s.max_batch_documents}),
        ("BatchSearchRequest", "searches", {"maxItems": s.max_batch_queries}),
        ("SearchRequest", "k", {"maximum": s.max_k}),
        ("RecallRequest", "k", {"maximum": s.max_k}),
        ("SearchRequest", "candidates", {"maximum": s.max_candidates}),
        ("SearchRequest", "query", text),
        ("DocumentIn", "text", text),
        ("DocumentIn", "id", {"maxLength": s.max_id_length}),
    ]:
        _constrain(models[model]["properties"][field], bound)
    for branch in models["EmbeddingsRequest"]["properties"]["input"]["anyOf"]:
        if branch.get("type") == "array":
            branch["maxItems"] = s.max_batch_documents
            branch["items"].update(text)
        else:
            branch.update(text)


def _constrain(prop: dict[str, Any], bound: dict[str, Any]) -> None:
    """Add `bound` to a property, or to its non-null branches when it is optional."""
    targets = [b for b in prop.get("anyOf", []) if b.get("type") != "null"] or [prop]
    for target in targets:
        if "maximum" in bound and "maximum" in target:
            target["maximum"] = min(target["maximum"], bound["maximum"])
        else:
            target.update(bound)


def _link(operation: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation, "parameters": parameters}


_BY_NAME = "$response.body#/name"
_SAME_COLLECTION = "$request.path.name"
_LINKS = {
    ("/v1/collections", "post", "201"): {
        op: _link(op, name=_BY_NAME)
        for op in (
            "describe_collection",
            "update_collection",
            "upsert_documents",
            "delete_documents",
            "search",
            "search_batch",
            "measure_recall",
            "refit_elasticizer",
            "start_upgrade",
            "list_upgrades",
            "drop_collection",
        )
    },
    ("/v1/collections/{name}/documents", "put", "200"): {
        op: _link(op, name=_SAME_COLLECTION, doc_id="$response.body#/ids/0")
        for op in ("get_document", "delete_document")
    },
    ("/v1/collections/{name}/upgrades", "post", "202"): {
        op: _link(op, name=_SAME_COLLECTION, upgrade_id="$response.body#/id")
        for op in ("get_upgrade", "cut_over", "roll_back", "finalize", "abort")
    },
}


def _links(paths: dict[str, Any]) -> None:
    for (path, method, status), links in _LINKS.items():
        paths[path][method]["responses"][status]["links"] = links
