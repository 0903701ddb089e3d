"""What the backends on a shared engine (index/qdrant, index/milvus) have in common: filter
tokens, error mapping, and score arrays for recall probes.

Filters: each engine's own conditions differ from vecnest's filter rule in small ways that would
change answers (a key with a dot is a nested path, 1 does not match 1.0, a float cannot be matched
by value). So each document carries its filterable fields as one list of keyword tokens, built by
the same function the embedded store fills its field table with (`index.filters.metadata_fields`),
one token per `(key, kind, value)`; a filter `{key: value}` becomes one keyword match per
condition, ANDed. The rule keeps one home; the translation cannot drift from it.
"""

import functools
import json
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from index.errors import Invalid, NotFound, NotReady, VecnestError
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
def engine_errors(engine: str, what: str, missing: Callable[[Exception], bool] = lambda exc: False) -> Iterator[None]:
    """The engine's failures (unreachable, timed out, refused) as `NotReady`: a clean 503; one
    that `missing` says names a physical collection that is not there as `collection_not_found`
    (another process dropped the collection meanwhile: the request runs again on what the
    catalog names now, background work drops its job)."""
    try:
        yield
    except VecnestError:
        raise
    except Exception as exc:  # clients raise transport, HTTP and gRPC errors alike
        if missing(exc):
            raise NotFound(f"{what}: the collection was dropped meanwhile", code="collection_not_found") from exc
        raise NotReady(
            f"{what}: the {engine} backend failed: {type(exc).__name__}: {str(exc)[:300]}", code="backend_unavailable"
        ) from exc


class WrappedClient:
    """An engine's client whose method calls go through `around(method, args, kwargs)` (a lock,
    a retry: index/qdrant/local.py, index/milvus/client.py); other attributes pass through."""

    def __init__(self, client: Any, around: Callable[[Callable[..., Any], tuple, dict], Any]):
        self.wrapped = client
        self._around = around

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.wrapped, name)
        if not callable(attr):
            return attr
        around = self._around

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return around(attr, args, kwargs)

        return call


def unsupported_on(engine: str, what: str) -> Invalid:
    return Invalid(f"{what}: not available on the {engine} backend", code="backend_unsupported")


def dense_only(engine: str, mode: str) -> None:
    """Keyword and hybrid searches read the embedded store's keyword index (SQLite FTS5)."""
    if mode != "dense":
        raise unsupported_on(engine, f"{mode} search (the keyword index lives in the embedded store)")


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


class ManifestKeeper:
    """A shared-engine collection's manifest and the settings kept in it (ef per dim, recall
    policy, limits), saved through the catalog's entry store so every replica reads them."""

    def __init__(self, manifest: Any, store: Any, errors: Any, on_change: Callable[[Any], None] | None = None):
        """`store.save(manifest)` writes it where replicas read it; `errors(what)` maps the
        engine's failures to NotReady; `on_change(manifest)` runs after every change."""
        self.manifest = manifest
        self._store = store
        self._errors = errors
        self._on_change = on_change
        self._lock = threading.Lock()  # manifest changes: read, change, save, one at a time

    def ef_search(self, dim: int) -> int:
        return int(self.manifest.tuned_ef.get(str(dim), self.manifest.hnsw.ef_search))

    def set_ef_search(self, dim: int, ef: int, dims: list[int]) -> None:
        from index.indexset import require_dim

        require_dim(dim, dims, self.manifest.name)
        self.change(lambda m: m.replace(tuned_ef={**m.tuned_ef, str(dim): int(ef)}))

    def set_rerank_factor(self, dim: int, factor: int, dims: list[int]) -> None:
        from index.indexset import require_dim

        require_dim(dim, dims, self.manifest.name)
        self.change(lambda m: m.replace(tuned_rerank={**m.tuned_rerank, str(dim): int(factor)}))

    def set_recall_policy(self, policy: Any) -> None:
        """As on the embedded backend: without a target the tuned values go; with one, tuned efs
        are clamped to its bounds."""
        policy.check()

        def change(m: Any) -> Any:
            if policy.target is None:
                return m.replace(recall=policy, tuned_ef={}, tuned_rerank={})
            clamped = {d: min(max(e, policy.ef_min), policy.ef_max) for d, e in m.tuned_ef.items()}
            return m.replace(recall=policy, tuned_ef=clamped)

        self.change(change)

    def change(self, change: Callable[[Any], Any]) -> Any:
        """Apply `change` to the manifest, save it, and keep it; returns the new manifest."""
        with self._lock:
            manifest = change(self.manifest)
            with self._errors(f"update {self.manifest.name!r}"):
                self._store.save(manifest)
            self.manifest = manifest
        if self._on_change is not None:
            self._on_change(manifest)
        return manifest

    def reload(self, manifest: Any) -> None:
        """The manifest as another replica left it: its settings take effect here; what shapes
        the stored vectors (dims, metric) never changes under an open collection."""
        with self._lock:
            same_shape = (manifest.dim, manifest.metric, manifest.indexed_dims) == (
                self.manifest.dim,
                self.manifest.metric,
                self.manifest.indexed_dims,
            )
            if not same_shape:
                return
            self.manifest = manifest
        if self._on_change is not None:
            self._on_change(manifest)
