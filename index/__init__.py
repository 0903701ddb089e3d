"""vecnest's pure library: stores, indexes and collections (numpy, hnswlib, sqlite3 only).

Nothing here imports the service, FastAPI, pydantic-settings or torch: use it from a notebook,
a benchmark or a backfill job as well as from the server.
"""

from index.catalog import Catalog, check_name
from index.collection import Collection, CollectionOptions, SearchResult, WriteResult
from index.errors import Conflict, Invalid, NotFound, NotReady, Overloaded, TooLarge, VecnestError
from index.exact import ExactIndex
from index.fde import FdeEncoder, MultiVectorConfig
from index.hnsw import HnswIndex, HnswParams
from index.manifest import Manifest, Snapshot
from index.multivector import MultiVectorCollection
from index.protocols import Hits, VectorIndex
from index.scoring import Match
from index.store import NewDocument, Store, StoredDocument

__all__ = [
    "Catalog",
    "Collection",
    "CollectionOptions",
    "Conflict",
    "ExactIndex",
    "FdeEncoder",
    "Hits",
    "HnswIndex",
    "HnswParams",
    "Invalid",
    "Manifest",
    "Match",
    "MultiVectorCollection",
    "MultiVectorConfig",
    "NewDocument",
    "NotFound",
    "NotReady",
    "Overloaded",
    "SearchResult",
    "Snapshot",
    "Store",
    "StoredDocument",
    "TooLarge",
    "VecnestError",
    "VectorIndex",
    "WriteResult",
    "check_name",
]
