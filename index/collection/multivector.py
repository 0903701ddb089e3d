"""Multi-vector collections: each document is a token set (ColBERT-style), searched by MaxSim.

The token matrices (float16, in the store) are the source of truth. Each document's MUVERA
FDE is derived from them and indexed like a dense vector (the store's vector column, the vector
file, one inner-product graph), so durability, snapshots, replay, deletes, filters and rebuilds
are the shared ones. A search encodes each query's FDE, takes the graph's top-N candidates and
re-ranks them by exact Chamfer over their stored tokens.
"""

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from index.backend import Query, SearchResult
from index.elastic import sample_labels
from index.errors import Invalid
from index.fde import FdeEncoder
from index.manifest import Elasticizer, Manifest
from index.maxsim import ball_carve, chamfer, chamfer_many
from index.pacing import checkpoint, in_slices
from index.protocols import Hits
from index.recall_oracle import (
    EF,
    FACTOR,
    FINAL_STAGE,
    INDEX_STAGE,
    RecallProbe,
    StageRecall,
    WhatIf,
    per_query_recall,
)
from index.scoring import exact_search, hydrate, label_scores
from index.store import NewDocument, StoredDocument
from index.vectors import normalize, row_norms, top_k

from .state import CollectionState

DEFAULT_CANDIDATES = 100


def default_candidates(tuned_factor: int | None, k: int) -> int:
    """The FDE shortlist of a search that does not ask for one: k · the factor the recall
    controller chose (a target on final recall), else DEFAULT_CANDIDATES."""
    return k * tuned_factor if tuned_factor else DEFAULT_CANDIDATES


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
    if T.shape == (0, token_dim):  # only a text gives this: its tokenizer kept no token to embed
        raise Invalid(
            f"{what}: the text holds no token the model embeds (special tokens are dropped; control and "
            f"zero-width characters read as nothing)",
            code="empty_text",
        )
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


class TokenScoring:
    kind = "multivector"
    supports_rotation = False

    # -- creation -------------------------------------------------------------------------------
    @staticmethod
    def validate(manifest: Manifest) -> Manifest:
        """A multi-vector collection indexes the FDE (its dim) by inner product, without dims or
        rotations: those belong to dense vectors."""
        assert manifest.multivector is not None
        config = manifest.multivector.check()
        return manifest.replace(
            dim=config.dim,
            metric="ip",
            dims=[],
            elasticizer=Elasticizer(kind="none"),
            rerank_factor=None,
            rotation=None,
            snapshot=None,
        )

    def __init__(self, manifest: Manifest):
        assert manifest.multivector is not None
        self.config = manifest.multivector
        self.fde = FdeEncoder(self.config)

    def _check_tokens(self, tokens: Any, what: str) -> np.ndarray:
        return check_tokens(tokens, self.config.token_dim, self.config.max_tokens, what)

    # -- documents ------------------------------------------------------------------------------
    def prepare(self, docs: Sequence[NewDocument]) -> tuple[list[NewDocument], np.ndarray, dict[str, float]]:
        """Documents with validated tokens (unit rows, kept as float16) and their FDEs `(n, fde_dim)`.
        Each FDE is computed from its own document's float16 tokens alone, so it does not depend on
        the rest of the batch (see `FdeEncoder.encode`); a document's `vector` is ignored."""
        t0 = time.perf_counter()
        tokens = [self._check_tokens(d.tokens, f"document {d.id!r} tokens").astype(np.float16) for d in docs]
        F = self.fde.documents([t.astype(np.float32) for t in tokens])
        prepared = [replace(d, vector=f, tokens=t) for d, f, t in zip(docs, F, tokens)]
        return prepared, F, {"fde": time.perf_counter() - t0}

    def present(self, doc: StoredDocument) -> StoredDocument:
        """A stored document as callers see it: its tokens (float32), not its FDE."""
        assert doc.tokens is not None
        return replace(doc, vector=None, tokens=doc.tokens.astype(np.float32))

    def derive_fdes(self, s: CollectionState, labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(labels, FDEs)` recomputed from the stored tokens alone (no model): what the index holds."""
        out_labels, out = [], []
        for found, sets in s.store.iter_tokens(labels):
            out_labels.append(found)
            out.append(self.fde.documents([t.astype(np.float32) for t in sets]))
        if not out:
            return np.zeros(0, np.int64), np.zeros((0, self.fde.dim), np.float32)
        return np.concatenate(out_labels), np.concatenate(out)

    # -- searches -------------------------------------------------------------------------------
    def index_name(self, dim: int) -> str:
        return FDE_INDEX

    def check(self, s: CollectionState, query: Query) -> None:
        """Everything about a query but its tokens: k, candidates, ball carving, no dense options."""
        if query.k < 1:
            raise Invalid("k must be at least 1")
        dense_only = [name for name in ("dim", "rerank_factor") if getattr(query, name) is not None]
        if not query.rerank:
            dense_only.append("rerank")
        if dense_only:
            raise Invalid(
                f"{', '.join(dense_only)} apply to dense collections; search collection {s.name!r} with query "
                f"(text) or vectors (a token matrix)",
                code="multivector_collection",
            )
        if query.candidates is not None and query.candidates < 1:
            raise Invalid("candidates must be at least 1", code="invalid_candidates")
        if query.ball_carving is not None and not -1.0 <= query.ball_carving <= 1.0:
            raise Invalid("ball_carving is a similarity threshold in [-1, 1]", code="invalid_ball_carving")
        if query.queries is not None:
            if isinstance(query.queries, np.ndarray) and query.queries.ndim != 3:
                raise Invalid(
                    f"collection {s.name!r} holds multi-vector documents: search it with token matrices, one per query",
                    code="multivector_collection",
                )
            for tokens in query.queries:
                self._check_tokens(tokens, "query tokens")

    def shortlist(self, s: CollectionState, query: Query) -> int:
        """How many FDE candidates the search re-ranks by MaxSim (at least k)."""
        return max(query.k, query.candidates or default_candidates(s.tuned_rerank.get(s.manifest.dim), query.k))

    def search(self, s: CollectionState, query: Query) -> SearchResult:
        """Top-k documents by Chamfer (MaxSim) for each query token matrix `(m_i, token_dim)`.

        The FDE graph's top-`candidates` (default 100, at least k) are re-ranked by exact
        Chamfer over their stored tokens. `exact` (or a filter leaving few documents) scores
        every document instead. `ball_carving` (a threshold, e.g. 0.7) first merges similar
        query tokens, so the re-ranking multiplies fewer rows.
        """
        self.check(s, query)
        Qs = [self._check_tokens(q, "query tokens") for q in query.queries]
        live = max(len(s.indexes), 1)  # arrays are sized by what exists, not by what was asked for
        k = min(query.k, live)
        n_candidates = min(self.shortlist(s, replace(query, k=k)), live)
        dim = s.manifest.dim
        ef_setting = query.ef if query.ef is not None else s.ef_search(dim)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        scoring = [ball_carve(q, query.ball_carving) for q in Qs] if query.ball_carving is not None else Qs
        found = F = None
        with s.reading():
            allowed = None
            if query.filter:
                allowed = s.store.filter_labels(query.filter.conditions())
                timings["filter"] = time.perf_counter() - t0
            exact = query.exact or (allowed is not None and len(allowed) <= s.exact_filter_limit())
            if exact:
                t1 = time.perf_counter()
                hits = self._brute_force(s, scoring, k, allowed)
                timings["maxsim"] = time.perf_counter() - t1
            else:
                t1 = time.perf_counter()
                F = self.fde.queries(Qs)
                t2 = time.perf_counter()
                labels = None if allowed is None else frozenset(allowed.tolist())
                found = s.indexes.search(dim, F, n_candidates, ef_setting, labels)
                t3 = time.perf_counter()
                hits = self._rerank(s, scoring, found, k)
                timings.update({"fde": t2 - t1, "index_search": t3 - t2, "maxsim": time.perf_counter() - t3})
            t4 = time.perf_counter()
            matches = hydrate(s.store, hits, [i for i in query.include if i != "vector"])
            timings["hydrate"] = time.perf_counter() - t4
        probe = None
        if query.probe and found is not None and F is not None:
            probe = RecallProbe(
                FDE_INDEX,
                dim,
                k,
                n_candidates,
                max(ef_setting, n_candidates),
                ef_setting,
                query.ef is not None,
                found,
                allowed,
                _TokenQueries(scoring, F),
                funnel=True,  # FDE candidates re-ranked by MaxSim: final recall follows their number
                rerank_pinned=query.candidates is not None,
            )
        return SearchResult(
            matches,
            "exact" if exact else "hnsw",
            dim,
            len(s.indexes) if exact else n_candidates,
            timings,
            0 if exact else ef_setting,
            probe,
        )

    # -- recall ---------------------------------------------------------------------------------
    def evaluate_recall(
        self, s: CollectionState, probe: RecallProbe, what_if: WhatIf | None = None
    ) -> list[StageRecall]:
        """Re-run a sampled search exactly and compare.

        Index stage: the FDE graph's top-N against exact inner-product search over every FDE.
        Final stage: the MaxSim top-k of those candidates against brute-force MaxSim over every
        document's tokens (the expensive part: it reads every token matrix). `what_if`: the FDE
        graph searched again (on this thread) at each ef, and at each factor (k·factor
        candidates, the probe's ef setting): the final recall of their MaxSim top-k (what either
        knob buys the user: the candidates are only a means), each against the same exact
        answers."""
        q: _TokenQueries = probe.payload
        what_if = what_if or WhatIf()
        allowed = None if probe.allowed is None else frozenset(probe.allowed.tolist())

        # the search as it ran is one of them (hnswlib's search is deterministic)
        searched: dict[tuple[int, int], Hits] = {(probe.shortlist, probe.ef): probe.found}

        def graph(shortlist: int, ef: int) -> Hits:
            # an ef below the shortlist searches as broad as the shortlist: one search for all
            key = (shortlist, max(ef, shortlist))
            if key not in searched:

                def run(part: np.ndarray) -> Hits:
                    return s.indexes.search(probe.dim, part, shortlist, ef, allowed, threads=1)

                searched[key] = Hits.stacked(in_slices(run, q.fdes))  # a few searches a unit of work
            return searched[key]

        def index_recall(labels: np.ndarray) -> np.ndarray:
            return per_query_recall(label_scores(s.vectors, q.fdes, labels, "ip"), truth)

        with s.reading():
            truth = exact_search(s.vectors, q.fdes, probe.shortlist, "ip", probe.allowed)
            index = StageRecall(
                probe.index, INDEX_STAGE, index_recall(probe.found.labels), probe.shortlist, probe.ef, probe.shortlist
            )
            at_ef = {ef: graph(probe.shortlist, ef) for ef in what_if.efs}
            shortlists = {f: min(probe.k * f, max(len(s.indexes), probe.k)) for f in what_if.factors}
            candidates = {f: graph(n, probe.ef_setting) for f, n in shortlists.items()}
            # The brute-force pass scores every document anyway: it keeps the exact scores of
            # every candidate of every search here, and each search's final results (the MaxSim
            # top-k of its candidates) are read from them. Re-ranking each what-if search on its
            # own tokens converted ~50k tokens per search and query: more work than the pass.
            every = np.concatenate([h.labels for h in (probe.found, *at_ef.values(), *candidates.values())], axis=1)
            exact, known = self._brute_force_keeping(s, q.scoring, probe.k, probe.allowed, every)

            scored: dict[int, np.ndarray] = {}  # by search: efs below the shortlist share one

            def final_recall(hits: Hits) -> np.ndarray:
                if id(hits) not in scored:
                    scored[id(hits)] = per_query_recall(known.top_k(hits.labels, probe.k), exact)
                return scored[id(hits)]

            final = StageRecall(probe.index, FINAL_STAGE, final_recall(probe.found), probe.k, probe.ef, probe.shortlist)
            what_ifs = [
                StageRecall(
                    probe.index,
                    FINAL_STAGE,
                    final_recall(hits),
                    probe.k,
                    max(ef, probe.shortlist),
                    probe.shortlist,
                    EF,
                    ef,
                )
                for ef, hits in at_ef.items()
            ]
            what_ifs += [
                StageRecall(
                    probe.index,
                    FINAL_STAGE,
                    final_recall(candidates[f]),
                    probe.k,
                    max(probe.ef_setting, shortlists[f]),
                    shortlists[f],
                    FACTOR,
                    f,
                )
                for f in what_if.factors
            ]
        return [index, final, *what_ifs]

    @staticmethod
    def combine_payloads(payloads: list[_TokenQueries]) -> _TokenQueries:
        """The payloads of probes on the FDE graph as one: a brute-force MaxSim re-run streams
        every stored token matrix from the store, so one pass for many queries costs about the
        same as one for a single query."""
        return _TokenQueries([q for p in payloads for q in p.scoring], np.concatenate([p.fdes for p in payloads]))

    def sample_queries(self, s: CollectionState, n: int, seed: int) -> list[np.ndarray]:
        """Stored token matrices `(n_i, token_dim)` of a deterministic sample of at most `n` live
        documents, to use as queries when measuring recall on demand."""
        with s.reading():
            labels = sample_labels(s.store.live_labels(), n, seed)
            tokens = s.store.tokens(labels.tolist())
        return [tokens[label].astype(np.float32) for label in labels.tolist() if label in tokens]

    def stats(self) -> dict[str, Any]:
        return {"fde_dim": self.fde.dim}

    # -- exact MaxSim ---------------------------------------------------------------------------
    def _rerank(self, s: CollectionState, Qs: list[np.ndarray], candidates: Hits, k: int) -> Hits:
        """Exact Chamfer of each query against its own candidates (one store read for all)."""
        tokens = s.store.tokens(np.unique(candidates.labels[candidates.labels >= 0]).tolist())
        out = Hits.empty(len(Qs), k)
        for i, Q in enumerate(Qs):  # per query, never per token
            labels = np.asarray([label for label in candidates.labels[i].tolist() if label in tokens], np.int64)
            if not len(labels):
                continue
            S = chamfer(Q, [tokens[label] for label in labels.tolist()])
            pos, best = top_k(S[None, :], k)
            out.labels[i, : pos.shape[1]] = labels[pos[0]]
            out.scores[i, : pos.shape[1]] = best[0]
        return out

    def _brute_force(self, s: CollectionState, Qs: list[np.ndarray], k: int, allowed: np.ndarray | None) -> Hits:
        """Exact Chamfer against every live (or allowed) document, streaming tokens from the store."""
        return self._brute_force_keeping(s, Qs, k, allowed, np.empty((len(Qs), 0), np.int64))[0]

    def _brute_force_keeping(
        self, s: CollectionState, Qs: list[np.ndarray], k: int, allowed: np.ndarray | None, wanted: np.ndarray
    ) -> tuple[Hits, "KnownScores"]:
        """`_brute_force`, and the exact scores of the labels in `wanted (nq, w)` (row i: query
        i's; -1 pads) read off the same pass."""
        best, known = Hits.empty(len(Qs), 0), KnownScores(wanted)
        for labels, S in self._exact_scores(s, Qs, allowed):
            checkpoint()  # 512 documents a unit of work
            best = best.merged(labels, S, k)
            known.record(labels, S)
        return best.padded(k), known

    @staticmethod
    def _exact_scores(
        s: CollectionState, Qs: list[np.ndarray], allowed: np.ndarray | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`(labels (n,) ascending, Chamfer scores (len(Qs), n))` of every live (or allowed)
        document, streamed from the store 512 documents a read (~100 MB of float16 SciFact
        tokens, not the ~750 MB of 4,096)."""
        for labels, sets in s.store.iter_tokens(None if allowed is None else allowed.tolist(), batch=512):
            yield labels, chamfer_many(Qs, sets)


class KnownScores:
    """Exact scores of a few labels per query, gathered from a brute-force pass: `wanted (nq, w)`
    labels (-1 pads), each row's score -inf until `record` sees the label (so documents deleted
    since the search score -inf, as per_query_recall expects)."""

    def __init__(self, wanted: np.ndarray):
        self.labels = [np.unique(row[row >= 0]) for row in np.asarray(wanted, np.int64)]
        self.scores = [np.full(len(row), -np.inf, np.float32) for row in self.labels]

    def record(self, labels: np.ndarray, S: np.ndarray) -> None:
        """Take the scores `S (nq, n)` of the ascending `labels (n,)` of one pass step."""
        if not len(labels):
            return
        for i, want in enumerate(self.labels):
            pos = np.minimum(np.searchsorted(labels, want), len(labels) - 1)
            found = labels[pos] == want
            self.scores[i][found] = S[i, pos[found]]

    def top_k(self, labels: np.ndarray, k: int) -> np.ndarray:
        """`(nq, k)` the best k exact scores among each row of `labels (nq, c)` (-1 pads, all of
        them wanted), descending, -inf padded: the scores of a MaxSim re-rank of those
        candidates."""
        out = np.full((len(labels), k), -np.inf, np.float32)
        for i, row in enumerate(np.asarray(labels, np.int64)):
            row = row[row >= 0]
            if len(row):
                best = -np.sort(-self.scores[i][np.searchsorted(self.labels[i], row)])[:k]
                out[i, : len(best)] = best
        return out
