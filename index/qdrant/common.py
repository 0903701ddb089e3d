"""What both kinds of Qdrant collection share: point ids, vector names, error mapping, the
searcher strategies call, score arrays."""

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from index.errors import Invalid, NotReady, VecnestError
from index.protocols import Hits

# Caller ids map to point ids in this namespace: the same id is the same point on every replica.
ID_NAMESPACE = uuid.UUID("5a0e3b47-4f57-4c3c-9a53-7f1de3c0a1b2")

# `run(requests)`: Qdrant's answers (lists of scored points) to a batch of QueryRequests.
Runner = Callable[[list[Any]], list[list[Any]]]


def point_id(doc_id: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, doc_id))


def vector_name(dim: int) -> str:
    return f"d{dim}"


@contextmanager
def backend_errors(what: str) -> Iterator[None]:
    """Qdrant's failures (unreachable, timed out, refused) as `NotReady`: a clean 503."""
    try:
        yield
    except VecnestError:
        raise
    except Exception as exc:  # qdrant-client raises transport, HTTP and gRPC errors alike
        raise NotReady(
            f"{what}: the Qdrant backend failed: {type(exc).__name__}: {str(exc)[:300]}", code="backend_unavailable"
        ) from exc


def scores(rows: list[list[float]], width: int) -> np.ndarray:
    """`(len(rows), width)` float32, each row's scores then -inf."""
    out = np.full((len(rows), width), -np.inf, np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row[:width]
    return out


def as_hits(S: np.ndarray) -> Hits:
    """Scores without labels (Qdrant has none to give): slot i is found where its score is finite.
    Recall compares scores (`per_query_recall`), so that is all a probe needs."""
    return Hits(np.where(np.isfinite(S), 0, -1).astype(np.int64), S)


def unsupported(what: str) -> Invalid:
    return Invalid(f"{what}: not available on the Qdrant backend yet", code="backend_unsupported")
