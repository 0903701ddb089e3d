"""`Client` and `AsyncClient`: the vecnest API from Python, over HTTP or in-process.

    client = vecnest.Client(url="http://127.0.0.1:8000", api_key="...")   # a server
    client = vecnest.Client(path="./data")                                # the engine in-process
    client = vecnest.Client(path=":memory:")                              # in-process, thrown away at close

Both clients send the same calls (`vecnest._calls`); they retry 429 and 503 answers (honouring
Retry-After) and failed connections, up to `max_retries` times, and raise typed errors
(`vecnest.errors`) for every other error answer.
"""

import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import httpx
from tqdm import tqdm

from vecnest import _calls as calls
from vecnest._calls import SEARCH_OPTIONS, Call, batches, document_body, retry_wait, search_body
from vecnest.embedded import EmbeddedServer
from vecnest.errors import TransportError, error_for
from vecnest.models import (
    CollectionInfo,
    DeleteResult,
    Document,
    DocumentPage,
    Hit,
    RecallReport,
    SnapshotInfo,
    UpgradeInfo,
    UpsertResult,
)

__all__ = ["SEARCH_OPTIONS", "AsyncClient", "Client"]

DEFAULT_BATCH = 256  # documents per upsert request (the server's default limit is 1,000)


class _Setup:
    """What both clients share: where the server is (a URL, or an embedded one they start), the
    headers, and the retry policy."""

    def __init__(
        self,
        url: str | None,
        path: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        max_retry_wait: float,
        settings: dict[str, Any] | None,
    ):
        if (url is None) == (path is None):
            raise ValueError("give exactly one of url (a server) or path (the engine in-process, or ':memory:')")
        self.embedded = EmbeddedServer(path, settings or {}) if path is not None else None
        # In-process, requests go over the socket; the host header must still be a loopback name.
        self.base_url = url.rstrip("/") if url is not None else "http://localhost"
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(timeout)
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait

    def retryable(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retrying, or None to stop here."""
        if attempt >= self.max_retries:
            return None
        if response is not None and response.status_code not in calls.RETRY_STATUSES:
            return None
        retry_after = response.headers.get("retry-after") if response is not None else None
        return retry_wait(attempt, retry_after, self.max_retry_wait)

    @staticmethod
    def answer(call: Call, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise error_for(response.status_code, body)
        if response.status_code == 204 or not response.content:
            return call.read(None)
        return call.read(response.json())


def _progress(docs: Iterable[Any], progress: bool, what: str) -> tqdm:
    total = len(docs) if isinstance(docs, Sequence) else None
    return tqdm(total=total, unit=" docs", desc=what, disable=not progress, dynamic_ncols=True)


class Client:
    """The vecnest API, synchronously. `url`: a server; `path`: the engine in this process, on
    that data directory (":memory:": a temporary one), with `settings` as the server's settings
    (e.g. `{"snapshot_interval_s": 60}`). Use as a context manager, or call `close()`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        path: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        settings: dict[str, Any] | None = None,
    ):
        self._setup = _Setup(url, path, api_key, timeout, max_retries, max_retry_wait, settings)
        transport = self._setup.embedded.transport() if self._setup.embedded else None
        self._http = httpx.Client(
            base_url=self._setup.base_url, headers=self._setup.headers, timeout=self._setup.timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()
        if self._setup.embedded is not None:
            self._setup.embedded.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, json=call.json, params=call.params)
            except httpx.TransportError as exc:
                wait = self._setup.retryable(attempt, None)
                if wait is None:
                    raise TransportError(0, "unreachable", f"{self._setup.base_url}: {exc}") from exc
            else:
                wait = self._setup.retryable(attempt, response)
                if wait is None:
                    return self._setup.answer(call, response)
            time.sleep(wait)
            attempt += 1

    # -- collections ---------------------------------------------------------------------------
    def create_collection(self, name: str, **config: Any) -> CollectionInfo:
        """A new collection; `config` as the server's CollectionCreate: model, dims, metric,
        hnsw, elasticizer, multivector, dim (vectors only, model=None), target_recall, ..."""
        return self._run(calls.create_collection(name, config))

    def get_collection(self, name: str) -> CollectionInfo:
        return self._run(calls.get_collection(name))

    def list_collections(self) -> list[CollectionInfo]:
        return self._run(calls.list_collections())

    def update_collection(self, name: str, **changes: Any) -> CollectionInfo:
        """Change what may change: target_recall, recall_sample_rate, ef_min, ef_max, limits."""
        return self._run(calls.update_collection(name, changes))

    def delete_collection(self, name: str) -> None:
        self._run(calls.delete_collection(name))

    # -- documents -----------------------------------------------------------------------------
    def upsert(
        self, collection: str, documents: Iterable[Any], *, batch_size: int = DEFAULT_BATCH, progress: bool = False
    ) -> UpsertResult:
        """Insert or replace documents by id (dicts: id, and text, vector or vectors, and
        metadata), `batch_size` per request, each acknowledged once durable; `progress` shows a
        bar (rate, and ETA when the documents are a sequence)."""
        total = UpsertResult(upserted=0, ids=[])
        with _progress(documents, progress, f"upsert {collection}") as bar:
            for batch in batches((document_body(d) for d in documents), batch_size):
                result: UpsertResult = self._run(calls.upsert(collection, batch))
                total = _added(total, result)
                bar.update(len(batch))
        return total

    def get(self, collection: str, id: str, *, include_vector: bool = False) -> Document:
        return self._run(calls.get(collection, id, include_vector))

    def delete(self, collection: str, ids: str | Iterable[str], *, batch_size: int = 1000) -> DeleteResult:
        out = DeleteResult(deleted=0, ids=[], not_found=[])
        for batch in batches([ids] if isinstance(ids, str) else ids, batch_size):
            r: DeleteResult = self._run(calls.delete(collection, batch))
            out = _deleted(out, r)
        return out

    def page(
        self, collection: str, after: str | None = None, *, limit: int = 256, include_vector: bool = False
    ) -> DocumentPage:
        return self._run(calls.page(collection, after, limit, include_vector))

    def documents(self, collection: str, *, include_vector: bool = False, page_size: int = 256) -> Iterator[Document]:
        """Every live document in id order, fetched a page at a time."""
        after = None
        while True:
            p = self.page(collection, after, limit=page_size, include_vector=include_vector)
            yield from p.documents
            if p.next is None:
                return
            after = p.next

    # -- search --------------------------------------------------------------------------------
    def search(
        self,
        collection: str,
        query: str | None = None,
        *,
        vector: Any = None,
        vectors: Any = None,
        k: int = 10,
        **options: Any,
    ) -> list[Hit]:
        """Top-k by text (`query`), `vector`, or token matrix (`vectors`); options as the
        server's SearchRequest: dim, filter, include, mode ("dense", "keyword", "hybrid"),
        fusion, ef, exact, rerank_factor, candidates, ..."""
        return self._run(calls.search(collection, search_body(query, vector, vectors, {"k": k, **options})))

    def search_batch(self, collection: str, searches: list[dict[str, Any]]) -> list[list[Hit]]:
        """Several searches in one request: each a dict of search's arguments (query, vector, k, ...)."""
        bodies = [search_body(s.get("query"), s.get("vector"), s.get("vectors"), _options(s)) for s in searches]
        return self._run(calls.search_batch(collection, bodies))

    def measure_recall(self, collection: str, **options: Any) -> RecallReport:
        return self._run(calls.measure_recall(collection, options))

    def embed(
        self,
        texts: str | list[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        collection: str | None = None,
        layers: int | None = None,
    ) -> list[list[float]]:
        """Embeddings of `texts` (`/v1/embeddings`): by `model`, or by the model of `collection`;
        `dimensions` truncates (Matryoshka, or the collection's rotation)."""
        options = {"model": model, "dimensions": dimensions, "collection": collection, "layers": layers}
        return self._run(calls.embed([texts] if isinstance(texts, str) else list(texts), options))

    # -- upgrades and snapshots ------------------------------------------------------------------
    def start_upgrade(self, collection: str, model: str, **options: Any) -> UpgradeInfo:
        return self._run(calls.start_upgrade(collection, model, options))

    def get_upgrade(self, collection: str, upgrade_id: str) -> UpgradeInfo:
        return self._run(calls.get_upgrade(collection, upgrade_id))

    def list_upgrades(self, collection: str) -> list[UpgradeInfo]:
        return self._run(calls.list_upgrades(collection))

    def upgrade_step(self, collection: str, upgrade_id: str, step: str) -> UpgradeInfo:
        """step: "cutover", "rollback", "finalize" or "abort"."""
        return self._run(calls.upgrade_step(collection, upgrade_id, step))

    def create_snapshot(self, collection: str) -> SnapshotInfo:
        return self._run(calls.create_snapshot(collection))

    def list_snapshots(self, collection: str) -> list[SnapshotInfo]:
        return self._run(calls.list_snapshots(collection))

    def delete_snapshot(self, collection: str, snapshot_id: str) -> None:
        self._run(calls.delete_snapshot(collection, snapshot_id))

    def restore_snapshot(self, collection: str, snapshot_id: str) -> CollectionInfo:
        return self._run(calls.restore_snapshot(collection, snapshot_id))

    def ready(self) -> dict[str, Any]:
        return self._run(calls.ready())


class AsyncClient:
    """The vecnest API with `await` (httpx.AsyncClient); the same methods and arguments as `Client`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        path: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        settings: dict[str, Any] | None = None,
    ):
        self._setup = _Setup(url, path, api_key, timeout, max_retries, max_retry_wait, settings)
        transport = self._setup.embedded.async_transport() if self._setup.embedded else None
        self._http = httpx.AsyncClient(
            base_url=self._setup.base_url, headers=self._setup.headers, timeout=self._setup.timeout, transport=transport
        )

    async def close(self) -> None:
        await self._http.aclose()
        if self._setup.embedded is not None:
            self._setup.embedded.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, call: Call) -> Any:
        import asyncio

        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, json=call.json, params=call.params)
            except httpx.TransportError as exc:
                wait = self._setup.retryable(attempt, None)
                if wait is None:
                    raise TransportError(0, "unreachable", f"{self._setup.base_url}: {exc}") from exc
            else:
                wait = self._setup.retryable(attempt, response)
                if wait is None:
                    return self._setup.answer(call, response)
            await asyncio.sleep(wait)
            attempt += 1

    async def create_collection(self, name: str, **config: Any) -> CollectionInfo:
        return await self._run(calls.create_collection(name, config))

    async def get_collection(self, name: str) -> CollectionInfo:
        return await self._run(calls.get_collection(name))

    async def list_collections(self) -> list[CollectionInfo]:
        return await self._run(calls.list_collections())

    async def update_collection(self, name: str, **changes: Any) -> CollectionInfo:
        return await self._run(calls.update_collection(name, changes))

    async def delete_collection(self, name: str) -> None:
        await self._run(calls.delete_collection(name))

    async def upsert(
        self, collection: str, documents: Iterable[Any], *, batch_size: int = DEFAULT_BATCH, progress: bool = False
    ) -> UpsertResult:
        total = UpsertResult(upserted=0, ids=[])
        with _progress(documents, progress, f"upsert {collection}") as bar:
            for batch in batches((document_body(d) for d in documents), batch_size):
                total = _added(total, await self._run(calls.upsert(collection, batch)))
                bar.update(len(batch))
        return total

    async def get(self, collection: str, id: str, *, include_vector: bool = False) -> Document:
        return await self._run(calls.get(collection, id, include_vector))

    async def delete(self, collection: str, ids: str | Iterable[str], *, batch_size: int = 1000) -> DeleteResult:
        out = DeleteResult(deleted=0, ids=[], not_found=[])
        for batch in batches([ids] if isinstance(ids, str) else ids, batch_size):
            r: DeleteResult = await self._run(calls.delete(collection, batch))
            out = _deleted(out, r)
        return out

    async def page(
        self, collection: str, after: str | None = None, *, limit: int = 256, include_vector: bool = False
    ) -> DocumentPage:
        return await self._run(calls.page(collection, after, limit, include_vector))

    async def documents(
        self, collection: str, *, include_vector: bool = False, page_size: int = 256
    ) -> AsyncIterator[Document]:
        after = None
        while True:
            p = await self.page(collection, after, limit=page_size, include_vector=include_vector)
            for doc in p.documents:
                yield doc
            if p.next is None:
                return
            after = p.next

    async def search(
        self,
        collection: str,
        query: str | None = None,
        *,
        vector: Any = None,
        vectors: Any = None,
        k: int = 10,
        **options: Any,
    ) -> list[Hit]:
        return await self._run(calls.search(collection, search_body(query, vector, vectors, {"k": k, **options})))

    async def search_batch(self, collection: str, searches: list[dict[str, Any]]) -> list[list[Hit]]:
        bodies = [search_body(s.get("query"), s.get("vector"), s.get("vectors"), _options(s)) for s in searches]
        return await self._run(calls.search_batch(collection, bodies))

    async def measure_recall(self, collection: str, **options: Any) -> RecallReport:
        return await self._run(calls.measure_recall(collection, options))

    async def embed(
        self,
        texts: str | list[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        collection: str | None = None,
        layers: int | None = None,
    ) -> list[list[float]]:
        options = {"model": model, "dimensions": dimensions, "collection": collection, "layers": layers}
        return await self._run(calls.embed([texts] if isinstance(texts, str) else list(texts), options))

    async def start_upgrade(self, collection: str, model: str, **options: Any) -> UpgradeInfo:
        return await self._run(calls.start_upgrade(collection, model, options))

    async def get_upgrade(self, collection: str, upgrade_id: str) -> UpgradeInfo:
        return await self._run(calls.get_upgrade(collection, upgrade_id))

    async def list_upgrades(self, collection: str) -> list[UpgradeInfo]:
        return await self._run(calls.list_upgrades(collection))

    async def upgrade_step(self, collection: str, upgrade_id: str, step: str) -> UpgradeInfo:
        return await self._run(calls.upgrade_step(collection, upgrade_id, step))

    async def create_snapshot(self, collection: str) -> SnapshotInfo:
        return await self._run(calls.create_snapshot(collection))

    async def list_snapshots(self, collection: str) -> list[SnapshotInfo]:
        return await self._run(calls.list_snapshots(collection))

    async def delete_snapshot(self, collection: str, snapshot_id: str) -> None:
        await self._run(calls.delete_snapshot(collection, snapshot_id))

    async def restore_snapshot(self, collection: str, snapshot_id: str) -> CollectionInfo:
        return await self._run(calls.restore_snapshot(collection, snapshot_id))

    async def ready(self) -> dict[str, Any]:
        return await self._run(calls.ready())


def _options(search: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in search.items() if k not in ("query", "vector", "vectors")}


def _added(total: UpsertResult, r: UpsertResult) -> UpsertResult:
    truncated = (total.truncated or []) + (r.truncated or [])
    return UpsertResult(upserted=total.upserted + r.upserted, ids=total.ids + r.ids, truncated=truncated or None)


def _deleted(total: DeleteResult, r: DeleteResult) -> DeleteResult:
    return DeleteResult(
        deleted=total.deleted + r.deleted, ids=total.ids + r.ids, not_found=total.not_found + r.not_found
    )
