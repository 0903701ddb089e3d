"""`AsyncCollection`: a collection as the use cases see it, each blocking operation awaited by
name and run on the thread pool, never on the event loop.

Facts (name, kind, manifest, dims, stats, checks) are cheap and answered at once; everything
that reads or writes the store, a graph or the vector file is a coroutine. The wrapped
`backend` is what `CollectionBackend` promises, and its identity tells generations apart.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from index import (
    CollectionBackend,
    Manifest,
    NewDocument,
    Query,
    RecallPolicy,
    RecallProbe,
    SearchResult,
    StageRecall,
    StoredDocument,
    WhatIf,
    WriteResult,
)


class AsyncCollection:
    def __init__(self, backend: CollectionBackend):
        self.backend = backend

    # -- facts, at once -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def manifest(self) -> Manifest:
        return self.backend.manifest

    @property
    def dims(self) -> list[int]:
        return self.backend.dims

    @property
    def rotation(self) -> np.ndarray | None:
        return self.backend.rotation

    @property
    def recall_policy(self) -> RecallPolicy:
        return self.backend.recall_policy

    def __len__(self) -> int:
        return len(self.backend)

    def stats(self) -> dict[str, Any]:
        return self.backend.stats()

    def check(self, query: Query) -> None:
        self.backend.check(query)

    def check_documents(self, docs: Sequence[NewDocument]) -> None:
        self.backend.check_documents(docs)

    def shortlist(self, query: Query) -> int:
        return self.backend.shortlist(query)

    def index_name(self, dim: int) -> str:
        return self.backend.index_name(dim)

    def rerank_factor(self, dim: int) -> int:
        return self.backend.rerank_factor(dim)

    def ef_search(self, dim: int) -> int:
        return self.backend.ef_search(dim)

    # -- work, on the thread pool ---------------------------------------------------------------
    async def upsert(self, docs: Sequence[NewDocument]) -> WriteResult:
        return await run_in_threadpool(self.backend.upsert, docs)

    async def delete(self, ids: Sequence[str]) -> WriteResult:
        return await run_in_threadpool(self.backend.delete, ids)

    async def get(self, doc_id: str) -> StoredDocument:
        return await run_in_threadpool(self.backend.get, doc_id)

    async def scroll(self, after: str | None, limit: int) -> tuple[list[StoredDocument], str | None]:
        return await run_in_threadpool(self.backend.scroll, after, limit)

    async def contents(self, ids: Sequence[str] | None = None) -> dict[str, tuple[str | None, str]]:
        return await run_in_threadpool(self.backend.contents, ids)

    async def last_seq(self) -> int | None:
        return await run_in_threadpool(self.backend.last_seq)

    async def search(self, query: Query) -> SearchResult:
        return await run_in_threadpool(self.backend.search, query)

    async def evaluate_recall(self, probe: RecallProbe, what_if: WhatIf | None = None) -> list[StageRecall]:
        return await run_in_threadpool(self.backend.evaluate_recall, probe, what_if)

    async def sample_documents(self, n: int, seed: int = 0) -> list[StoredDocument]:
        return await run_in_threadpool(self.backend.sample_documents, n, seed)

    async def sample_queries(self, n: int, seed: int = 0) -> Any:
        return await run_in_threadpool(self.backend.sample_queries, n, seed)

    async def set_recall_policy(self, policy: RecallPolicy) -> None:
        await run_in_threadpool(self.backend.set_recall_policy, policy)

    async def set_limits(self, limits: dict[str, int]) -> None:
        await run_in_threadpool(self.backend.set_limits, limits)

    async def fit_rotation(self, sample: int | None = None, seed: int | None = None):
        return await run_in_threadpool(self.backend.fit_rotation, sample, seed)

    async def snapshot(self) -> bool:
        return await run_in_threadpool(self.backend.snapshot)

    async def close(self) -> None:
        await run_in_threadpool(self.backend.close)
