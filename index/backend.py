"""The collection-level seam: what the service asks of a collection, whatever stores it.

A `CollectionBackend` is one collection: documents in, documents out, searches by `Query`. A
`CatalogBackend` holds the collections of one deployment: create, get, drop, list. The
embedded implementation (one process: SQLite + hnswlib + a memory-mapped vector file) is
`index.collection.Collection` and `index.catalog.Catalog`; a distributed engine plugs in here
(../shared/design/architecture.md §6). Only plain values cross the seam: documents by the
caller's ids, filters as `Filter` values, queries as arrays; internal labels never do.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from index.filters import Filter
from index.manifest import Manifest, RecallPolicy, Rotation
from index.recall_oracle import RecallProbe, StageRecall
from index.scoring import Match
from index.store import NewDocument, StoredDocument

INCLUDABLE = ("text", "metadata", "vector")


@dataclass(frozen=True)
class Query:
    """One search of a collection, for one or many queries.

    `queries` is a `(nq, D)` array of full-dim vectors (dense collections) or a list of `nq`
    token matrices `(m_i, token_dim)` (multi-vector collections). The rest says how to search:
    `dim` picks a Matryoshka graph (dense), `rerank`/`rerank_factor` the funnel's exact
    re-scoring, `candidates`/`ball_carving` the multi-vector shortlist and query merging;
    `exact` is brute force, `probe` keeps what a recall measurement needs.
    """

    queries: Any = None  # None: options only, for `check` before the text is embedded
    k: int = 10
    dim: int | None = None
    ef: int | None = None
    filter: Filter | None = None
    exact: bool = False
    rerank: bool = True
    rerank_factor: int | None = None
    candidates: int | None = None
    ball_carving: float | None = None
    include: tuple[str, ...] = ()
    probe: bool = False

    def __post_init__(self) -> None:
        # A filter may be given in its JSON form; it is validated once, here.
        object.__setattr__(self, "filter", Filter.parse(self.filter))
        object.__setattr__(self, "include", tuple(self.include))


@dataclass(frozen=True)
class SearchResult:
    matches: list[list[Match]]  # per query, best first
    strategy: str  # "hnsw" or "exact"
    dim: int  # the index (view) that produced the candidates
    candidates: int  # how many candidates were re-scored (k when not a funnel)
    timings: dict[str, float]  # stage → seconds
    ef: int = 0  # the ef setting the graph searched with (0: exact search, no graph)
    probe: RecallProbe | None = None  # kept for an exact re-run when the search was sampled


@dataclass(frozen=True)
class WriteResult:
    ids: list[str]
    seq: int
    timings: dict[str, float] = field(default_factory=dict)


class CollectionBackend(Protocol):
    """One collection. `kind` is "dense" (one vector per document) or "multivector" (a token
    matrix per document); `check` validates a query's options (not its vectors) before anything
    costly, such as embedding its text, is spent on it."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def manifest(self) -> Manifest: ...
    @property
    def dims(self) -> list[int]: ...
    @property
    def rotation(self) -> np.ndarray | None: ...
    def __len__(self) -> int: ...
    def stats(self) -> dict[str, Any]: ...

    def check_documents(self, docs: Sequence[NewDocument]) -> None: ...
    def upsert(self, docs: Sequence[NewDocument]) -> WriteResult: ...
    def delete(self, ids: Sequence[str]) -> WriteResult: ...
    def get(self, doc_id: str) -> StoredDocument: ...
    def contents(self, ids: Sequence[str] | None = None) -> dict[str, tuple[str | None, str]]: ...
    def scroll(self, after: str | None = None, limit: int = 256) -> tuple[list[StoredDocument], str | None]: ...
    def last_seq(self) -> int: ...

    def check(self, query: Query) -> None: ...
    def shortlist(self, query: Query) -> int: ...
    def search(self, query: Query) -> SearchResult: ...
    def evaluate_recall(self, probe: RecallProbe) -> list[StageRecall]: ...
    def sample_documents(self, n: int, seed: int = 0) -> list[StoredDocument]: ...
    def sample_queries(self, n: int, seed: int = 0) -> Any: ...

    def index_name(self, dim: int) -> str: ...
    def rerank_factor(self, dim: int) -> int: ...
    def ef_search(self, dim: int) -> int: ...
    def set_ef_search(self, dim: int, ef: int) -> None: ...
    @property
    def recall_policy(self) -> RecallPolicy: ...
    def set_recall_policy(self, policy: RecallPolicy) -> None: ...
    def set_limits(self, limits: dict[str, int]) -> None: ...

    def snapshot(self, force: bool = False, wait: bool = True) -> bool: ...
    def rebuild(self) -> None: ...
    def fit_rotation(self, sample: int | None = None, seed: int | None = None) -> Rotation: ...
    @property
    def needs_snapshot(self) -> bool: ...
    @property
    def needs_rebuild(self) -> bool: ...
    @property
    def wants_rotation_fit(self) -> bool: ...
    def close(self) -> None: ...


class CatalogBackend(Protocol):
    """The collections of one deployment, by name. A collection that exists but cannot be
    opened is `failed` (name → reason): listed, droppable, not served."""

    def create(self, manifest: Manifest) -> CollectionBackend: ...
    def get(self, name: str) -> CollectionBackend: ...
    def drop(self, name: str) -> None: ...
    def names(self) -> list[str]: ...
    def failed(self) -> dict[str, str]: ...
    def mark_failed(self, name: str, reason: str) -> None: ...
    def close(self) -> None: ...
