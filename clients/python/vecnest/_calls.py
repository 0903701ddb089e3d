"""Every API call as data: method, path, body, query parameters and how to read the answer.
`Client` sends them synchronously and `AsyncClient` asynchronously, so both speak exactly the
same API; neither builds a request itself."""

import base64
import random
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from vecnest.models import (
    CollectionInfo,
    DeleteResult,
    Document,
    DocumentPage,
    Hit,
    RecallReport,
    SearchResponse,
    SnapshotInfo,
    UpgradeInfo,
    UpsertResult,
)

# Options `search` passes through to the server as they are (see SearchRequest in its OpenAPI).
SEARCH_OPTIONS = (
    "k", "ef", "filter", "include", "exact", "dim", "rerank", "rerank_factor", "layers", "candidates",
    "ball_carving", "mode", "keyword_query", "fusion", "vectors_b64", "dtype",
)  # fmt: skip
RETRY_STATUSES = (429, 503)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    read: Callable[[Any], Any] = lambda body: body
    json: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)


def _c(name: str) -> str:
    return "/v1/collections/" + quote(name, safe="")


def plain(value: Any) -> Any:
    """JSON-ready: numpy arrays and scalars (anything with `tolist`) become lists and numbers."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def document_body(doc: Any) -> dict[str, Any]:
    """A document to upsert: a dict with id and text, vector or vectors (a token matrix), and
    metadata; or a `Document`."""
    if isinstance(doc, Document):
        doc = doc.model_dump(exclude_none=True)
    if not isinstance(doc, Mapping) or "id" not in doc:
        raise TypeError(f"a document is a dict with an 'id' (and text, vector or vectors), not {doc!r:.80}")
    return {k: plain(v) for k, v in doc.items() if v is not None}


# -- collections -----------------------------------------------------------------------------------
def create_collection(name: str, config: dict[str, Any]) -> Call:
    return Call("POST", "/v1/collections", CollectionInfo.model_validate, json={"name": name, **plain(config)})


def get_collection(name: str) -> Call:
    return Call("GET", _c(name), CollectionInfo.model_validate)


def list_collections() -> Call:
    return Call("GET", "/v1/collections", lambda b: [CollectionInfo.model_validate(c) for c in b["collections"]])


def update_collection(name: str, changes: dict[str, Any]) -> Call:
    return Call("PATCH", _c(name), CollectionInfo.model_validate, json=plain(changes))


def delete_collection(name: str) -> Call:
    return Call("DELETE", _c(name), lambda _: None)


# -- documents ---------------------------------------------------------------------------------------
def upsert(collection: str, docs: list[dict[str, Any]]) -> Call:
    return Call("PUT", _c(collection) + "/documents", UpsertResult.model_validate, json={"documents": docs})


def get(collection: str, doc_id: str, include_vector: bool) -> Call:
    params = {"include_vector": "true"} if include_vector else {}
    return Call("GET", f"{_c(collection)}/documents/{quote(doc_id, safe='')}", Document.model_validate, params=params)


def page(collection: str, after: str | None, limit: int, include_vector: bool) -> Call:
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        params["after"] = after
    if include_vector:
        params["include_vector"] = "true"
    return Call("GET", _c(collection) + "/documents", DocumentPage.model_validate, params=params)


def delete(collection: str, ids: list[str]) -> Call:
    return Call("POST", _c(collection) + "/documents/delete", DeleteResult.model_validate, json={"ids": ids})


def batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- search --------------------------------------------------------------------------------------------
def search_body(query: str | None, vector: Any, vectors: Any, options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(SEARCH_OPTIONS)
    if unknown:
        raise TypeError(f"unknown search options: {', '.join(sorted(unknown))}")
    body = {k: plain(v) for k, v in options.items() if v is not None}
    for key, value in (("query", query), ("vector", vector), ("vectors", vectors)):
        if value is not None:
            body[key] = plain(value)
    return body


def search(collection: str, body: dict[str, Any]) -> Call:
    return Call("POST", _c(collection) + "/search", lambda b: SearchResponse.model_validate(b).results, json=body)


def search_batch(collection: str, bodies: list[dict[str, Any]]) -> Call:
    def read(b: Any) -> list[list[Hit]]:
        return [SearchResponse.model_validate(r).results for r in b["results"]]

    return Call("POST", _c(collection) + "/search/batch", read, json={"searches": bodies})


def measure_recall(collection: str, options: dict[str, Any]) -> Call:
    return Call("POST", _c(collection) + "/recall", RecallReport.model_validate, json=plain(options) or None)


# -- embeddings ------------------------------------------------------------------------------------------
def embed(texts: list[str], options: dict[str, Any]) -> Call:
    def read(b: Any) -> list[list[float]]:
        out = []
        for item in sorted(b["data"], key=lambda d: d["index"]):
            floats = array("f")
            floats.frombytes(base64.b64decode(item["embedding"]))
            out.append(floats.tolist())
        return out

    body = {"input": texts, "encoding_format": "base64", **{k: v for k, v in options.items() if v is not None}}
    return Call("POST", "/v1/embeddings", read, json=body)


# -- upgrades and snapshots -----------------------------------------------------------------------------
def start_upgrade(collection: str, model: str, options: dict[str, Any]) -> Call:
    body = {"model": model, **plain(options)}
    return Call("POST", _c(collection) + "/upgrades", UpgradeInfo.model_validate, json=body)


def get_upgrade(collection: str, upgrade_id: str) -> Call:
    return Call("GET", f"{_c(collection)}/upgrades/{quote(upgrade_id, safe='')}", UpgradeInfo.model_validate)


def list_upgrades(collection: str) -> Call:
    return Call("GET", _c(collection) + "/upgrades", lambda b: [UpgradeInfo.model_validate(u) for u in b["upgrades"]])


def upgrade_step(collection: str, upgrade_id: str, step: str) -> Call:
    """step: cutover, rollback, finalize or abort."""
    path = f"{_c(collection)}/upgrades/{quote(upgrade_id, safe='')}/{step}"
    return Call("POST", path, UpgradeInfo.model_validate)


def create_snapshot(collection: str) -> Call:
    return Call("POST", _c(collection) + "/snapshots", SnapshotInfo.model_validate)


def list_snapshots(collection: str) -> Call:
    return Call(
        "GET", _c(collection) + "/snapshots", lambda b: [SnapshotInfo.model_validate(s) for s in b["snapshots"]]
    )


def delete_snapshot(collection: str, snapshot_id: str) -> Call:
    return Call("DELETE", f"{_c(collection)}/snapshots/{quote(snapshot_id, safe='')}", lambda _: None)


def restore_snapshot(collection: str, snapshot_id: str) -> Call:
    path = f"{_c(collection)}/snapshots/{quote(snapshot_id, safe='')}/restore"
    return Call("POST", path, CollectionInfo.model_validate)


def ready() -> Call:
    return Call("GET", "/readyz")


# -- retries ----------------------------------------------------------------------------------------------
def retry_wait(attempt: int, retry_after: str | None, cap: float) -> float:
    """Seconds to wait before retry `attempt` (0-based): the server's Retry-After when it gives
    one, else exponential backoff with jitter (0.25 s, 0.5 s, 1 s, ...), never above `cap`."""
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), cap)
        except ValueError:
            pass
    return min(0.25 * 2**attempt * (0.5 + random.random() / 2), cap)
