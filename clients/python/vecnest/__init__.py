"""vecnest's Python client: `Client` / `AsyncClient` over HTTP or with the engine in-process.

import vecnest
client = vecnest.Client(url="http://127.0.0.1:8000")          # or Client(path="./data")
client.create_collection("docs")
client.upsert("docs", [{"id": "1", "text": "The cat sat on the mat."}])
hits = client.search("docs", "where did the cat sit?", k=3, mode="hybrid")
"""

from vecnest.client import AsyncClient, Client
from vecnest.errors import (
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
    VecnestError,
)
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

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "CollectionInfo",
    "Conflict",
    "DeleteResult",
    "Document",
    "DocumentPage",
    "Forbidden",
    "Hit",
    "InsufficientStorage",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RecallReport",
    "ServerError",
    "SnapshotInfo",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UpgradeInfo",
    "UpsertResult",
    "VecnestError",
]
