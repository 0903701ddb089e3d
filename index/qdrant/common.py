"""What both kinds of Qdrant collection share: point ids, vector names, error mapping, the
searcher strategies call (score arrays come from index.remote)."""

import uuid
from collections.abc import Callable
from typing import Any

from index.errors import Invalid
from index.remote import as_hits, engine_errors, scores, unsupported_on

__all__ = ["ID_NAMESPACE", "Runner", "as_hits", "backend_errors", "point_id", "scores", "unsupported", "vector_name"]

# Caller ids map to point ids in this namespace: the same id is the same point on every replica.
ID_NAMESPACE = uuid.UUID("5a0e3b47-4f57-4c3c-9a53-7f1de3c0a1b2")

# `run(requests)`: Qdrant's answers (lists of scored points) to a batch of QueryRequests.
Runner = Callable[[list[Any]], list[list[Any]]]


def point_id(doc_id: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, doc_id))


def vector_name(dim: int) -> str:
    return f"d{dim}"


def backend_errors(what: str):
    """Qdrant's failures (unreachable, timed out, refused) as `NotReady`: a clean 503."""
    return engine_errors("Qdrant", what, missing=_collection_missing)


def _collection_missing(exc: Exception) -> bool:
    """Qdrant's "collection not found": a server's 404 on a collection path, local mode's ValueError."""
    text = str(exc)
    if getattr(exc, "status_code", None) == 404:
        return "ollection" in text
    return isinstance(exc, ValueError) and text.startswith("Collection ") and text.endswith(" not found")


def unsupported(what: str) -> Invalid:
    return unsupported_on("Qdrant", what + " yet")
