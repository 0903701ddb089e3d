"""`MultiVectorCollection`: documents are token sets (ColBERT-style), searched by MaxSim.

The token matrices (float16, in the store) are the source of truth. Each document's MUVERA
FDE is derived from them and indexed like a dense vector (store column, vector file, one
inner-product HNSW graph), so durability, snapshots, replay, deletes, filters and rebuilds
are the dense collection's own. A search encodes the query's FDE, takes the graph's top-N
candidates and re-ranks them by exact Chamfer over their stored tokens.
"""

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from index.collection import MANIFEST_FILE, Collection, CollectionOptions, SearchResult, WriteResult
from index.elastic import sample_labels
from index.errors import Invalid
from index.fde import FdeEncoder
from index.filters import parse_filter
from index.manifest import Elasticizer, Manifest, read_manifest
from index.maxsim import TokenBatch, ball_carve
from index.protocols import Hits
from index.recall import FINAL_STAGE, INDEX_STAGE, RecallProbe, StageRecall, per_query_recall
from index.scoring import Match, exact_search, hydrate, label_scores
from index.store import NewDocument, StoredDocument
from index.vectors import normalize, row_norms, top_k

DEFAULT_CANDIDATES = 100
FDE_INDEX = "fde"  # the graph's name in recall probes and metrics


@dataclass(frozen=True)
class _TokenQueries:
    """What a multi-vector probe's exact re-run needs: the scoring token sets and their FDEs."""

    scoring: list[np.ndarray]  # (m_i, token_dim) each, after ball carving if any
    fdes: np.ndarray  # (nq, fde_dim)


def check_tokens(tokens: Any, token_dim: int, max_tokens: int, what: str = "token matrix") -> np.ndarray:
    """Validate a token matrix and return it `(n, token_dim)` float32 with unit-length rows.

    Rejects ragged or empty input, a wrong token dim, more than `max_tokens` rows, NaN or
    infinity, and all-zero tokens (no direction to compare)."""
    try:
        T = np.array(tokens, dtype=np.float32, order="C", copy=True)
    except (ValueError, TypeError):
        raise Invalid(
            f"{what} must be a rectangular list of lists of numbers (one row per token)", code="invalid_tokens"
        ) from None
    if T.ndim != 2 or T.shape[0] == 0:
        raise Invalid(
            f"{what} must be a non-empty (tokens, {token_dim}) matrix, got shape {T.shape}", code="invalid_tokens"
        )
    if T.shape[1] != token_dim:
        raise Invalid(f"{what} has {T.shape[1]}-dim tokens; expected {token_dim}", code="wrong_dimension")
    if len(T) > max_tokens:
        raise Invalid(f"{what} has {len(T)} tokens; the limit is {max_tokens}", code="too_many_tokens")
    if not np.isfinite(T).all():
        raise Invalid(f"{what} contains NaN or infinity", code="non_finite")
    if (row_norms(T) == 0).any():
        raise Invalid(f"{what} contains an all-zero token", code="zero_vector")
    return normalize(T)


class MultiVectorCollection(Collection):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fde = FdeEncoder(self._manifest.multivector)

    @classmethod
    def create(cls, path: str, manifest: Manifest, options: CollectionOptions = CollectionOptions()) -> "Collection":
        """A multi-vector collection indexes the FDE (its dim) by inner product, without dims or
        rotations: those belong to dense vectors."""
        config = manifest.multivector.check()
        manifest = manifest.replace(
            dim=config.dim, metric="ip", dims=[], elasticizer=Elasticizer(kind="none"), rerank_factor=None
        )
        return super().create(path, manifest, options)

    @property
    def config(self):
        return self._manifest.multivector

    def index_name(self, dim: int) -> str:
        return FDE_INDEX

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "fde_dim": self.fde.dim}

    def check_tokens(self, tokens: Any, what: str = "token matrix") -> np.ndarray:
        return check_tokens(tokens, self.config.token_dim, self.config.max_tokens, what)

    # -- writes -------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[NewDocument]) -> WriteResult:
        """Insert or replace documents by id, all or nothing; each carries `tokens (n, token_dim)`
        (its `vector` is ignored: the FDE is derived here). Tokens are unit-normalised and kept as
        float16; each FDE is computed from its own document's float16 values alone, so it does not
        depend on the rest of the batch (see `FdeEncoder.encode`)."""
        if self._check_batch(docs):
            return WriteResult([], self._applied_seq, {})
        t0 = time.perf_counter()
        tokens = [self.check_tokens(d.tokens, f"document {d.id!r} tokens").astype(np.float16) for d in docs]
        F = self.fde.documents([t.astype(np.float32) for t in tokens])
        result = self._write([replace(d, vector=f, tokens=t) for d, f, t in zip(docs, F, tokens)], F)
        return replace(
            result, timings={"fde": time.perf_counter() - t0 - sum(result.timings.values()), **result.timings}
        )

    def derive_fdes(self, labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(labels, FDEs)` recomputed from the stored tokens alone (no model): what the index holds."""
        out_labels, out = [], []
        for found, sets in self._store.iter_tokens(labels):
            out_labels.append(found)
            out.append(self.fde.documents([s.astype(np.float32) for s in sets]))
        if not out:
            return np.zeros(0, np.int64), np.zeros((0, self.fde.dim), np.float32)
        return np.concatenate(out_labels), np.concatenate(out)

    # -- reads --------------------------------------------------------------------------------
    def get(self, doc_id: str) -> StoredDocument:
        doc = super().get(doc_id)
        return replace(doc, vector=None, tokens=doc.tokens.astype(np.float32))

    def search(self, *args: Any, **kwargs: Any) -> SearchResult:
        raise Invalid(
            f"collection {self.name!r} holds multi-vector documents: search it with token matrices "
            f"or text, not a single vector",
            code="multivector_collection",
        )

    def fit_rotation(self, *args: Any, **kwargs: Any):
        raise Invalid(
            f"collection {self.name!r} holds multi-vector documents; rotations apply to dense vectors",
            code="multivector_collection",
        )

    def search_tokens(
        self,
        queries: Sequence[Any],
        k: int,
        *,
        candidates: int | None = None,
        ef: int | None = None,
        filter: dict[str, Any] | None = None,
        exact: bool = False,
        ball_carving: float | None = None,
        include: Sequence[str] = (),
        probe: bool = False,
    ) -> SearchResult:
        """Top-k documents by Chamfer (MaxSim) for each query token matrix `(m_i, token_dim)`.

        The FDE graph's top-`candidates` (default 100, at least k) are re-ranked by exact
        Chamfer over their stored tokens. `exact` (or a filter leaving few documents) scores
        every document instead. `ball_carving` (a threshold, e.g. 0.7) first merges similar
        query tokens, so the re-ranking multiplies fewer rows. With `probe`, a graph search also
        returns a `RecallProbe` for `evaluate_recall`.
        """
        if k < 1:
            raise Invalid("k must be at least 1")
        if candidates is not None and candidates < 1:
            raise Invalid("candidates must be at least 1", code="invalid_candidates")
        if ball_carving is not None and not -1.0 <= ball_carving <= 1.0:
            raise Invalid("ball_carving is a similarity threshold in [-1, 1]", code="invalid_ball_carving")
        Qs = [self.check_tokens(q, "query tokens") for q in queries]
        live = max(len(self), 1)  # arrays are sized by what exists, not by what was asked for
        k = min(k, live)
        n_candidates = min(max(k, candidates or DEFAULT_CANDIDATES), live)
        conditions = parse_filter(filter)
        dim = self.manifest.dim
        ef_setting = ef if ef is not None else self.ef_search(dim)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        scoring = [ball_carve(q, ball_carving) for q in Qs] if ball_carving is not None else Qs
        with self._reading():
            allowed = None
            if conditions:
                allowed = self._store.filter_labels(conditions)
                timings["filter"] = time.perf_counter() - t0
            exact = exact or (allowed is not None and len(allowed) <= self._exact_filter_limit(len(self)))
            if exact:
                t1 = time.perf_counter()
                hits = self._brute_force(scoring, k, allowed)
                timings["maxsim"] = time.perf_counter() - t1
            else:
                t1 = time.perf_counter()
                F = self.fde.queries(Qs)
                t2 = time.perf_counter()
                found = self._indexes.search(
                    dim, F, n_candidates, ef_setting, None if allowed is None else frozenset(allowed.tolist())
                )
                t3 = time.perf_counter()
                hits = self._rerank(scoring, found, k)
                timings.update({"fde": t2 - t1, "index_search": t3 - t2, "maxsim": time.perf_counter() - t3})
            t4 = time.perf_counter()
            matches: list[list[Match]] = hydrate(self._store, hits, [i for i in include if i != "vector"])
            timings["hydrate"] = time.perf_counter() - t4
        sampled = None
        if probe and not exact:
            sampled = RecallProbe(
                self.index_name(dim),
                dim,
                k,
                n_candidates,
                max(ef_setting, n_candidates),
                ef_setting,
                ef is not None,
                found,
                allowed,
                _TokenQueries(scoring, F),
            )
        return SearchResult(
            matches,
            "exact" if exact else "hnsw",
            dim,
            len(self) if exact else n_candidates,
            timings,
            0 if exact else ef_setting,
            sampled,
        )

    def evaluate_recall(self, probe: RecallProbe) -> list[StageRecall]:
        """Re-run a sampled search exactly and compare.

        Index stage: the FDE graph's top-N against exact inner-product search over every FDE.
        Final stage: the MaxSim top-k of those candidates against brute-force MaxSim over every
        document's tokens (the expensive part: it reads every token matrix)."""
        q: _TokenQueries = probe.payload
        with self._reading():
            truth = exact_search(self._vectors, q.fdes, probe.shortlist, "ip", probe.allowed)
            index = per_query_recall(label_scores(self._vectors, q.fdes, probe.found.labels, "ip"), truth)
            returned = self._rerank(q.scoring, probe.found, probe.k)
            final = per_query_recall(returned.scores, self._brute_force(q.scoring, probe.k, probe.allowed))
        return [
            StageRecall(probe.index, INDEX_STAGE, index, probe.shortlist, probe.ef, probe.shortlist),
            StageRecall(probe.index, FINAL_STAGE, final, probe.k, probe.ef, probe.shortlist),
        ]

    def sample_queries(self, n: int, seed: int = 0) -> list[np.ndarray]:
        """Stored token matrices `(n_i, token_dim)` of a deterministic sample of at most `n` live
        documents, to use as queries when measuring recall on demand."""
        with self._reading():
            labels = sample_labels(self._store.live_labels(), n, seed)
            tokens = self._store.tokens(labels.tolist())
        return [tokens[label].astype(np.float32) for label in labels.tolist() if label in tokens]

    def _rerank(self, Qs: list[np.ndarray], candidates: Hits, k: int) -> Hits:
        """Exact Chamfer of each query against its own candidates (one store read for all)."""
        tokens = self._store.tokens(np.unique(candidates.labels[candidates.labels >= 0]).tolist())
        out = Hits.empty(len(Qs), k)
        for i, Q in enumerate(Qs):  # per query, never per token
            labels = np.asarray([label for label in candidates.labels[i].tolist() if label in tokens], np.int64)
            if not len(labels):
                continue
            S = TokenBatch([tokens[label] for label in labels.tolist()]).chamfer(Q)
            pos, best = top_k(S[None, :], k)
            out.labels[i, : pos.shape[1]] = labels[pos[0]]
            out.scores[i, : pos.shape[1]] = best[0]
        return out

    def _brute_force(self, Qs: list[np.ndarray], k: int, allowed: np.ndarray | None) -> Hits:
        """Exact Chamfer against every live (or allowed) document, streaming tokens from the store."""
        best = Hits.empty(len(Qs), 0)
        for labels, sets in self._store.iter_tokens(None if allowed is None else allowed.tolist()):
            batch = TokenBatch(sets)
            best = best.merged(labels, np.stack([batch.chamfer(Q) for Q in Qs]), k)
        return best.padded(k)


def collection_class(manifest: Manifest) -> type[Collection]:
    return MultiVectorCollection if manifest.multivector is not None else Collection


def open_collection(path: str, options: CollectionOptions = CollectionOptions()) -> Collection:
    """Open a dense or multi-vector collection, whichever its manifest says."""
    return collection_class(read_manifest(os.path.join(path, MANIFEST_FILE))).open(path, options)
