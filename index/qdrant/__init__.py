"""vecnest on Qdrant (architecture.md §6): the collection seam implemented over a Qdrant server,
cluster or qdrant-client's local mode, for stateless vecnest replicas. Needs the `qdrant` extra
(`pip install -e '.[qdrant]'`); nothing else in `index/` imports this package."""

from .catalog import QdrantEngine, qdrant_catalog, qdrant_name
from .collection import QdrantCollection
from .common import point_id

__all__ = ["QdrantCollection", "QdrantEngine", "point_id", "qdrant_catalog", "qdrant_name"]
