"""`Collection`: the embedded implementation of the collection seam (`index.backend`).

One facade composed of parts with one job each: the shared state and its locks (`state`),
the directory layout (`layout`), opening and replay (`lifecycle`), the write path (`writes`),
snapshots, rebuilds and refits (`upkeep`), and a scoring strategy that knows what a document
and a query are: `DenseScoring` (a vector per document, Matryoshka funnels) or `TokenScoring`
(a token matrix per document, MUVERA FDE + exact MaxSim). The manifest says which; this file
holds the one factory.
"""

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from index import hybrid
from index.backend import Query, SearchResult, WriteResult
from index.elastic import sample_labels
from index.errors import Invalid, NotFound
from index.manifest import Manifest, RecallPolicy, Rotation
from index.recall_oracle import RecallProbe, StageRecall, WhatIf, merge_probes
from index.store import NewDocument, StoredDocument

from .dense import DenseScoring
from .hybrid_search import search as search_text
from .layout import COLLECTION_FILES, MANIFEST_FILE, STORE_FILE, VECTOR_FILE, file_size
from .lifecycle import create_state, open_state
from .multivector import DEFAULT_CANDIDATES, FDE_INDEX, TokenScoring, check_tokens
from .state import CollectionOptions, CollectionState, default_rerank_factor
from .upkeep import Upkeep
from .writes import Writes, check_batch

__all__ = [
    "COLLECTION_FILES",
    "DEFAULT_CANDIDATES",
    "FDE_INDEX",
    "MANIFEST_FILE",
    "Collection",
    "CollectionOptions",
    "check_tokens",
    "default_rerank_factor",
    "open_collection",
]


def _scoring(manifest: Manifest) -> DenseScoring | TokenScoring:
    return TokenScoring(manifest) if manifest.multivector is not None else DenseScoring(manifest)


class Collection:
    def __init__(self, state: CollectionState):
        self._state = state
        self._scoring = _scoring(state.manifest)
        self._writes = Writes(state)
        self._upkeep = Upkeep(state)

    # -- the one factory ----------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, manifest: Manifest, options: CollectionOptions = CollectionOptions()) -> "Collection":
        """Initialise a new collection, dense or multi-vector as `manifest` says, in the
        (existing, empty) directory `path`."""
        kind = TokenScoring if manifest.multivector is not None else DenseScoring
        return cls(create_state(path, kind.validate(manifest), options))

    @classmethod
    def open(cls, path: str, options: CollectionOptions = CollectionOptions()) -> "Collection":
        """Open a collection: load its snapshot (if sound) and replay newer store writes."""
        return cls(open_state(path, options))

    def close(self, replaced: bool = False) -> None:
        """`replaced`: a restore puts another collection under this name (see `CollectionState.close`)."""
        self._state.close(replaced)

    # -- facts --------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._state.path

    @property
    def manifest(self) -> Manifest:
        return self._state.manifest

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def kind(self) -> str:
        """ "dense" (a vector per document) or "multivector" (a token matrix per document)."""
        return self._scoring.kind

    @property
    def dims(self) -> list[int]:
        return self._state.indexes.dims

    def __len__(self) -> int:
        return len(self._state.indexes)

    @property
    def rotation(self) -> np.ndarray | None:
        """The fitted `(D, D)` PCA rotation the low-dim graphs use, or None (plain prefixes)."""
        indexes = self._state.indexes
        return indexes.views[indexes.default_dim].rotation

    def index_name(self, dim: int) -> str:
        """The graph of `dim` as metrics and recall probes name it ("384", or "fde")."""
        return self._scoring.index_name(dim)

    def rerank_factor(self, dim: int) -> int:
        return self._state.rerank_factor(dim)

    def ef_search(self, dim: int) -> int:
        return self._state.ef_search(dim)

    def set_ef_search(self, dim: int, ef: int) -> None:
        self._upkeep.set_ef_search(dim, ef)

    def set_rerank_factor(self, dim: int, factor: int) -> None:
        self._upkeep.set_rerank_factor(dim, factor)

    @property
    def recall_policy(self) -> RecallPolicy:
        return self.manifest.recall

    def set_recall_policy(self, policy: RecallPolicy) -> None:
        self._upkeep.set_recall_policy(policy)

    def set_limits(self, limits: dict[str, int]) -> None:
        self._upkeep.set_limits(limits)

    def export(self, folder: str) -> tuple[int, int]:
        """A consistent copy of this collection in the new `folder`: `(seq, live documents)` it holds.
        The graphs are saved first when they changed, so a restore loads them instead of
        re-adding every write since the last periodic snapshot."""
        self._upkeep.snapshot(False, True)
        return self._upkeep.export(folder)

    def stats(self) -> dict[str, Any]:
        s = self._state
        snapshot = s.manifest.snapshot
        store_file = f"{s.path}/{STORE_FILE}"
        return {
            "documents": len(s.indexes),
            "index_slots": s.indexes.slot_count,
            "deleted_slots": s.indexes.deleted_count,
            "applied_seq": s.applied_seq,
            "snapshot_seq": snapshot.applied_seq if snapshot else 0,
            "store_bytes": file_size(store_file) + file_size(store_file + "-wal"),
            "vector_file_bytes": file_size(f"{s.path}/{VECTOR_FILE}"),
            "indexes": {
                self.index_name(d): {**stats, "ef_search": s.ef_search(d)} for d, stats in s.indexes.stats().items()
            },
            **self._scoring.stats(),
        }

    # -- documents ----------------------------------------------------------------------------
    def upsert(self, docs: Sequence[NewDocument]) -> WriteResult:
        """Insert or replace documents by id, all or nothing: dense documents carry `vector
        (D,)`, multi-vector ones `tokens (n, token_dim)`. Validated completely before the commit."""
        check_batch(docs)
        if not docs:
            return WriteResult([], self._state.applied_seq)
        prepared, X, timings = self._scoring.prepare(docs)
        result = self._writes.upsert(prepared, X)
        return replace(result, timings={**timings, **result.timings})

    def check_documents(self, docs: Sequence[NewDocument]) -> None:
        """Validate documents without writing them: duplicate ids, and the vectors (or token
        matrices) of those that carry them; those that carry neither yet (their text is still to
        be embedded) are checked at `upsert`."""
        check_batch(docs)
        given = [d for d in docs if (d.tokens if self.kind == "multivector" else d.vector) is not None]
        if given:
            self._scoring.prepare(given)

    def delete(self, ids: Sequence[str]) -> WriteResult:
        return self._writes.delete(ids)

    def get(self, doc_id: str) -> StoredDocument:
        with self._state.reading():
            doc = self._state.store.get(doc_id)
        if doc is None:
            raise NotFound(f"document {doc_id!r} not found in collection {self.name!r}", code="document_not_found")
        return self._scoring.present(doc)

    def contents(self, ids: Sequence[str] | None = None) -> dict[str, tuple[str | None, str]]:
        """`id → (text, metadata JSON)` of live documents (all, or those among `ids`)."""
        with self._state.reading():
            return self._state.store.contents(ids)

    def scroll(self, after: str | None = None, limit: int = 256) -> tuple[list[StoredDocument], str | None]:
        """One page of live documents in id order, and the cursor of the next page (None at
        the end): export, backfills and migrations read a collection through this."""
        if limit < 1:
            raise Invalid("limit must be at least 1")
        with self._state.reading():
            docs = self._state.store.scroll(after, limit)
        cursor = docs[-1].id if len(docs) == limit else None
        return [self._scoring.present(d) for d in docs], cursor

    def last_seq(self) -> int:
        """The store's latest write: it changes whenever a document does."""
        with self._state.reading():
            return self._state.store.last_seq()

    def sample_documents(self, n: int, seed: int = 0) -> list[StoredDocument]:
        """A deterministic sample of `m <= n` live documents with text, metadata and vector."""
        with self._state.reading():
            labels = sample_labels(self._state.store.live_labels(), n, seed)
            docs = self._state.store.fetch(labels.tolist(), text=True, metadata=True)
        return [docs[label] for label in labels.tolist() if label in docs]

    # -- searches -----------------------------------------------------------------------------
    def check(self, query: Query) -> None:
        """Validate a query's options (not its vectors): before its text is embedded."""
        hybrid.check(query.mode, query.texts, query.fusion, None if query.queries is None else len(query.queries))
        if query.mode != "keyword":
            self._scoring.check(self._state, query)

    def shortlist(self, query: Query) -> int:
        """How many candidates `query` would re-rank (before sizing it by what exists)."""
        return self._scoring.shortlist(self._state, query)

    def search(self, query: Query) -> SearchResult:
        """Top-k of each query: by the graphs (mode "dense"), by BM25 over the documents' text
        ("keyword"), or both fused ("hybrid"; see `index.hybrid`)."""
        if query.mode == "dense":
            return self._scoring.search(self._state, query)
        self.check(query)
        return search_text(self._state, lambda q: self._scoring.search(self._state, q), query)

    def evaluate_recall(self, probe: RecallProbe, what_if: WhatIf | None = None) -> list[StageRecall]:
        """Re-run a sampled search exactly, off the request path, and compare stage by stage
        (and at the `what_if` settings: see `index.recall_oracle.WhatIf`)."""
        return self._scoring.evaluate_recall(self._state, probe, what_if)

    def merge_probes(self, probes: list[RecallProbe]) -> list[RecallProbe]:
        """Probes one exact pass can answer together, merged (see `index.recall_oracle.merge_probes`)."""
        combine = getattr(self._scoring, "combine_payloads", None)
        return merge_probes(probes, combine) if combine is not None else list(probes)

    def sample_queries(self, n: int, seed: int = 0) -> Any:
        """Stored vectors `(m, D)` (or token matrices) of a deterministic sample of `m <= n`
        documents, to use as queries when measuring recall on demand."""
        return self._scoring.sample_queries(self._state, n, seed)

    def derive_fdes(self, labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Multi-vector collections: `(labels, FDEs)` recomputed from the stored tokens alone."""
        if not isinstance(self._scoring, TokenScoring):
            raise Invalid(f"collection {self.name!r} holds dense vectors: it has no FDEs", code="dense_collection")
        return self._scoring.derive_fdes(self._state, labels)

    # -- upkeep -------------------------------------------------------------------------------
    @property
    def pending_writes(self) -> int:
        return self._upkeep.pending_writes

    @property
    def needs_snapshot(self) -> bool:
        return self._upkeep.needs_snapshot

    @property
    def needs_rebuild(self) -> bool:
        return self._upkeep.needs_rebuild

    @property
    def wants_rotation_fit(self) -> bool:
        return self._scoring.supports_rotation and self._upkeep.wants_rotation_fit

    def snapshot(self, force: bool = False, wait: bool = True) -> bool:
        return self._upkeep.snapshot(force, wait)

    def rebuild(self) -> None:
        self._upkeep.rebuild()

    def fit_rotation(self, sample: int | None = None, seed: int | None = None) -> Rotation:
        """Fit the PCA rotation now (see `Upkeep.fit_rotation`): dense collections with a PCA
        elasticizer and low dims only."""
        m = self.manifest
        if not self._scoring.supports_rotation:
            raise Invalid(
                f"collection {self.name!r} holds multi-vector documents; rotations apply to dense vectors",
                code="multivector_collection",
            )
        if min(self.dims) == m.dim:
            raise Invalid(
                f"collection {self.name!r} indexes only its full dim; declare lower dims to use a rotation",
                code="no_low_dims",
            )
        if m.elasticizer.kind != "pca":
            raise Invalid(
                f"collection {self.name!r} truncates natively (elasticizer {m.elasticizer.kind!r})",
                code="no_elasticizer",
            )
        return self._upkeep.fit_rotation(sample, seed)


def open_collection(path: str, options: CollectionOptions = CollectionOptions()) -> Collection:
    """Open the collection at `path`, dense or multi-vector, whichever its manifest says."""
    return Collection.open(path, options)
