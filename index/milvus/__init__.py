"""vecnest on Milvus: the collection seam over a Milvus server (or milvus-lite's gRPC server) for
dense collections, a second shared backend for stateless replicas. Needs the `milvus` extra
(`pip install -e '.[milvus]'`); nothing else in `index/` imports this package."""

from .catalog import MilvusEngine, milvus_catalog, physical_name
from .collection import MilvusCollection, pk_of

__all__ = ["MilvusCollection", "MilvusEngine", "milvus_catalog", "physical_name", "pk_of"]
