"""What the backends on a shared engine (index/qdrant, index/milvus) have in common: filter
tokens, error mapping, and score arrays for recall probes.

Filters: each engine's own conditions differ from vecnest's filter rule in small ways that would
change answers (a key with a dot is a nested path, 1 does not match 1.0, a float cannot be matched
by value). So each document carries its filterable fields as one list of keyword tokens, built by
the same function the embedded store fills its field table with (`index.filters.metadata_fields`),
one token per `(key, kind, value)`; a filter `{key: value}` becomes one keyword match per
condition, ANDed. The rule keeps one home; the translation cannot drift from it.
"""

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from index.errors import Invalid, NotReady, VecnestError
from index.filters import metadata_fields
from index.protocols import Hits


def token(key: str, kind: str, value: Any) -> str:
    """One filterable field as a keyword: numbers in one canonical spelling (1 == 1.0)."""
    if kind == "n" and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return json.dumps([key, kind, value], separators=(",", ":"), ensure_ascii=False)


def field_tokens(metadata: dict[str, Any]) -> list[str]:
    """The tokens of one document's metadata (top-level scalars, and scalars inside lists)."""
    return [token(key, kind, value) for key, kind, value in metadata_fields(metadata)]


@contextmanager
def engine_errors(engine: str, what: str) -> Iterator[None]:
    """The engine's failures (unreachable, timed out, refused) as `NotReady`: a clean 503."""
    try:
        yield
    except VecnestError:
        raise
    except Exception as exc:  # clients raise transport, HTTP and gRPC errors alike
        raise NotReady(
            f"{what}: the {engine} backend failed: {type(exc).__name__}: {str(exc)[:300]}", code="backend_unavailable"
        ) from exc


def unsupported_on(engine: str, what: str) -> Invalid:
    return Invalid(f"{what}: not available on the {engine} backend", code="backend_unsupported")


def scores(rows: list[list[float]], width: int) -> np.ndarray:
    """`(len(rows), width)` float32, each row's scores then -inf."""
    out = np.full((len(rows), width), -np.inf, np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row[:width]
    return out


def as_hits(S: np.ndarray) -> Hits:
    """Scores without labels (a shared engine has none to give): slot i is found where its score
    is finite. Recall compares scores (`per_query_recall`), so that is all a probe needs."""
    return Hits(np.where(np.isfinite(S), 0, -1).astype(np.int64), S)
