"""vecnest's pure library: stores, indexes and collections (numpy, hnswlib, sqlite3 only).

Nothing here imports the service, FastAPI, pydantic-settings or torch: use it from a notebook,
a benchmark or a backfill job as well as from the server. This module is the interface: the
service imports from here and nowhere else in `index`.

- the seam: `CollectionBackend`, `CatalogBackend`, `Generations`, `Query`, `Filter`, `SearchResult`,
  `WriteResult` (`index.backend`), implemented by `Catalog` and `Collection`;
- documents and facts: `NewDocument`, `StoredDocument`, `Match`, `Manifest` and its parts;
- recall measurement: `RecallProbe`, `StageRecall`, `WhatIf`, `LadderController`, `EfController`;
- backups: `create_archive` and `BackupInfo` (`index.backup`; `Catalog.restore` restores);
- encoder upgrades: the `upgrades` module (records, generations, sync plans, the map);
- errors: `VecnestError` and its classes, which the service maps to HTTP statuses.
"""

from index import encoder_upgrade as upgrades
from index.backend import CatalogBackend, CollectionBackend, Generations, Query, SearchResult, WriteResult
from index.backup import (
    BackupInfo,
    archive_file,
    create_archive,
    list_archives,
    new_backup_id,
    open_archive,
    remove_archive,
)
from index.catalog import Catalog, check_name
from index.collection import DEFAULT_CANDIDATES, Collection, CollectionOptions
from index.collection.state import RERANK_MAX
from index.elastic import MAX_ROTATION_DIM, DimView, check_dims, fit_pca_rotation, sample_labels
from index.errors import (
    Conflict,
    InsufficientStorage,
    Invalid,
    NotFound,
    NotReady,
    Overloaded,
    ReadOnly,
    TooLarge,
    VecnestError,
    gone_meanwhile,
)
from index.exact import ExactIndex
from index.faults import fault_point
from index.fde import FdeEncoder, MultiVectorConfig
from index.filters import Filter, check_metadata
from index.hnsw import HnswIndex, HnswParams
from index.hybrid import Fusion
from index.manifest import Elasticizer, Manifest, RecallPolicy, Snapshot
from index.pacing import paced
from index.procrustes import QueryMap, ScoreCalibration
from index.protocols import Hits, VectorIndex
from index.recall_oracle import (
    EF,
    FACTOR,
    FINAL_STAGE,
    INDEX_STAGE,
    EfController,
    LadderController,
    RecallProbe,
    StageRecall,
    WhatIf,
)
from index.scoring import Match
from index.store import NewDocument, Store, StoredDocument
from index.vectors import check_metric


def open_milvus_catalog(
    *, uri: str, token: str | None = None, timeout_s: float = 10.0, refresh_s: float = 5.0
) -> CatalogBackend:
    """The collections on Milvus (index/milvus): a Milvus server or cluster, or milvus-lite's
    server, at `uri` (e.g. http://127.0.0.1:19530). Imported only here, when chosen."""
    try:
        import pymilvus
    except ImportError:
        raise Invalid("the Milvus backend needs pymilvus: pip install -e '.[milvus]'", code="backend_missing") from None
    from index.milvus import milvus_catalog

    try:
        client = pymilvus.MilvusClient(uri=uri, token=token or "", timeout=timeout_s)
    except Exception as exc:  # unreachable at start-up: the service reports it as not ready
        raise NotReady(f"the Milvus backend at {uri} is unreachable: {exc}", code="backend_unavailable") from exc
    return milvus_catalog(client, refresh_s)


def open_qdrant_catalog(
    *,
    url: str | None = None,
    api_key: str | None = None,
    path: str | None = None,
    timeout_s: float = 10.0,
    write_ordering: str = "strong",
    shards: int = 1,
    replication_factor: int = 1,
    write_consistency: int = 1,
    refresh_s: float = 5.0,
) -> CatalogBackend:
    """The collections on Qdrant (index/qdrant): a server or cluster at `url`, or qdrant-client's
    local mode at `path` (a folder, or ":memory:"). Imported only here, when chosen."""
    try:
        import qdrant_client
    except ImportError:
        raise Invalid(
            "the Qdrant backend needs qdrant-client: pip install -e '.[qdrant]'", code="backend_missing"
        ) from None
    from index.qdrant import qdrant_catalog

    if (url is None) == (path is None):
        raise Invalid("the Qdrant backend needs exactly one of a url and a path", code="invalid_backend")
    if url is not None:
        client = qdrant_client.QdrantClient(url=url, api_key=api_key, timeout=int(max(1, timeout_s)))
    else:
        client = (
            qdrant_client.QdrantClient(location=":memory:")
            if path == ":memory:"
            else qdrant_client.QdrantClient(path=path)
        )
    layout = {
        "shard_number": shards,
        "replication_factor": replication_factor,
        "write_consistency_factor": write_consistency,
    }
    return qdrant_catalog(client, write_ordering, refresh_s, collection_layout=layout)


__all__ = [
    "DEFAULT_CANDIDATES",
    "EF",
    "FACTOR",
    "FINAL_STAGE",
    "INDEX_STAGE",
    "MAX_ROTATION_DIM",
    "RERANK_MAX",
    "BackupInfo",
    "Catalog",
    "CatalogBackend",
    "Collection",
    "CollectionBackend",
    "CollectionOptions",
    "Conflict",
    "DimView",
    "EfController",
    "Elasticizer",
    "ExactIndex",
    "FdeEncoder",
    "Filter",
    "Fusion",
    "Generations",
    "Hits",
    "HnswIndex",
    "HnswParams",
    "InsufficientStorage",
    "Invalid",
    "LadderController",
    "Manifest",
    "Match",
    "MultiVectorConfig",
    "NewDocument",
    "NotFound",
    "NotReady",
    "Overloaded",
    "Query",
    "QueryMap",
    "ReadOnly",
    "RecallPolicy",
    "RecallProbe",
    "ScoreCalibration",
    "SearchResult",
    "Snapshot",
    "StageRecall",
    "Store",
    "StoredDocument",
    "TooLarge",
    "VecnestError",
    "VectorIndex",
    "WhatIf",
    "WriteResult",
    "archive_file",
    "check_dims",
    "check_metadata",
    "check_metric",
    "check_name",
    "create_archive",
    "fault_point",
    "fit_pca_rotation",
    "gone_meanwhile",
    "list_archives",
    "new_backup_id",
    "open_archive",
    "open_milvus_catalog",
    "open_qdrant_catalog",
    "paced",
    "remove_archive",
    "sample_labels",
    "upgrades",
]
