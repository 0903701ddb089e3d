"""vecnest on Milvus: the collection seam over a Milvus server (or milvus-lite's gRPC server) for
dense collections, a second shared backend for stateless replicas. Needs the `milvus` extra
(`pip install -e '.[milvus]'`); nothing else in `index/` imports this package."""

from .catalog import MilvusCatalog, physical_name
from .collection import MilvusCollection, pk_of

__all__ = ["MilvusCatalog", "MilvusCollection", "physical_name", "pk_of"]
