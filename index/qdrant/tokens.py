"""Multi-vector collections on Qdrant: the MUVERA FDE as a dense named vector, the token matrix
as a Qdrant multivector compared by `max_sim`.

A search is one Qdrant request per query: a prefetch of `candidates` documents by the query's
FDE on `fde`, re-ranked by exact MaxSim of the query tokens against each candidate's stored
tokens on `tokens` (Qdrant's `max_sim` with dot products is vecnest's Chamfer: the sum over query
tokens of the best dot product). `exact` is brute-force MaxSim over every document. The tokens
are stored as the embedded store keeps them (unit rows rounded to float16), so both backends
score the same numbers; the token vector has no HNSW of its own (`m=0`): it only re-ranks.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from index.backend import Query
from index.collection.multivector import FDE_INDEX, TokenScoring, default_candidates
from index.manifest import Manifest
from index.maxsim import ball_carve
from index.recall_oracle import FINAL_STAGE, INDEX_STAGE, RecallProbe, StageRecall, per_query_recall
from index.store import NewDocument

from .common import Runner, as_hits, scores

FDE, TOKENS = "fde", "tokens"


@dataclass(frozen=True)
class _Probe:
    scoring: list[np.ndarray]  # (m_i, token_dim) query tokens as scored (after ball carving)
    fdes: np.ndarray  # (nq, fde_dim)
    filter: Any
    final: np.ndarray  # (nq, k) exact MaxSim of the results returned; -inf pads


class TokensOnQdrant:
    kind = "multivector"
    returns_vectors = False  # documents come back as token matrices, never as their FDE

    def __init__(self, manifest: Manifest, rotation: Any = None):  # no rotation: the FDE is its own space
        self._m = manifest
        self._tokens = TokenScoring(manifest)  # the one home of token validation and the FDE

    @staticmethod
    def validate(manifest: Manifest) -> Manifest:
        return TokenScoring.validate(manifest)

    @staticmethod
    def vectors_config(manifest: Manifest) -> dict[str, Any]:
        from qdrant_client import models

        assert manifest.multivector is not None
        hnsw = models.HnswConfigDiff(m=manifest.hnsw.m, ef_construct=manifest.hnsw.ef_construction)
        return {
            FDE: models.VectorParams(size=manifest.dim, distance=models.Distance.DOT, hnsw_config=hnsw),
            TOKENS: models.VectorParams(
                size=manifest.multivector.token_dim,
                distance=models.Distance.DOT,
                multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
                hnsw_config=models.HnswConfigDiff(m=0),  # re-ranking only: no graph over tokens
            ),
        }

    # -- documents ------------------------------------------------------------------------------
    stored = TOKENS

    def check_documents(self, docs: Sequence[NewDocument]) -> None:
        self._tokens.prepare(docs)

    def points(self, docs: Sequence[NewDocument]) -> tuple[list[NewDocument], list[dict[str, list]]]:
        docs, F, _ = self._tokens.prepare(docs)
        return docs, [
            {FDE: F[i].tolist(), TOKENS: np.asarray(d.tokens, np.float32).tolist()} for i, d in enumerate(docs)
        ]

    def present(self, vectors: dict[str, Any]) -> dict[str, Any]:
        tokens = vectors.get(TOKENS)
        return {"vector": None, "tokens": np.asarray(tokens, np.float32) if tokens is not None else None}

    def sample_query(self, vectors: dict[str, Any]) -> np.ndarray:
        return np.asarray(vectors[TOKENS], np.float32)

    # -- searches -------------------------------------------------------------------------------
    @property
    def dims(self) -> list[int]:
        return self._m.indexed_dims

    def index_name(self, dim: int) -> str:
        return FDE_INDEX

    def default_dim(self) -> int:
        return self._m.dim

    def rerank_factor(self, dim: int) -> int:
        return 1

    def check(self, name: str, query: Query) -> None:
        # TokenScoring.check reads only the collection's name from the state it is given.
        self._tokens.check(cast(Any, SimpleNamespace(name=name)), query)

    def shortlist(self, query: Query) -> int:
        tuned = self._m.tuned_rerank.get(str(self._m.dim))
        return max(query.k, query.candidates or default_candidates(tuned, query.k))

    def search(self, run: Runner, query: Query, ef: int, flt: Any, with_payload: list[str], with_vector: Any):
        from qdrant_client import models

        Qs = [self._tokens._check_tokens(q, "query tokens") for q in query.queries]
        scoring = [ball_carve(q, query.ball_carving) for q in Qs] if query.ball_carving is not None else Qs
        n = self.shortlist(query)
        out = {"using": TOKENS, "limit": query.k, "filter": flt, "with_payload": with_payload, "with_vector": False}
        F = None
        if query.exact:
            exact = models.SearchParams(exact=True)
            requests = [models.QueryRequest(query=q.tolist(), params=exact, **out) for q in scoring]
        else:
            F = self._tokens.fde.queries(Qs)
            params = models.SearchParams(hnsw_ef=max(ef, n))
            requests = [
                models.QueryRequest(
                    prefetch=models.Prefetch(query=f.tolist(), using=FDE, limit=n, params=params),
                    query=q.tolist(),
                    **out,
                )
                for f, q in zip(F, scoring)
            ]
        answers = run(requests)
        probe = None
        if query.probe and F is not None:
            params = models.SearchParams(hnsw_ef=max(ef, n))
            found = run(
                [models.QueryRequest(query=f.tolist(), using=FDE, limit=n, filter=flt, params=params) for f in F]
            )
            probe = RecallProbe(
                FDE_INDEX,
                self._m.dim,
                query.k,
                n,
                max(ef, n),
                ef,
                query.ef is not None,
                as_hits(scores([[p.score for p in row] for row in found], n)),
                None,
                _Probe(scoring, F, flt, scores([[p.score for p in row] for row in answers], query.k)),
                funnel=True,
                rerank_pinned=query.candidates is not None,
            )
        return answers, self._m.dim, n, probe

    def score(self, qdrant_score: float) -> float:
        return qdrant_score

    def evaluate_recall(self, run: Runner, probe: RecallProbe) -> list[StageRecall]:
        """The FDE shortlist against exact inner-product search over every FDE; the MaxSim
        top-k of those candidates against brute-force MaxSim over every document."""
        from qdrant_client import models

        q: _Probe = probe.payload
        exact = models.SearchParams(exact=True)
        fde = run(
            [
                models.QueryRequest(query=f.tolist(), using=FDE, limit=probe.shortlist, filter=q.filter, params=exact)
                for f in q.fdes
            ]
        )
        maxsim = run(
            [
                models.QueryRequest(query=t.tolist(), using=TOKENS, limit=probe.k, filter=q.filter, params=exact)
                for t in q.scoring
            ]
        )
        index = per_query_recall(
            probe.found.scores, as_hits(scores([[p.score for p in a] for a in fde], probe.shortlist))
        )
        final = per_query_recall(q.final, as_hits(scores([[p.score for p in a] for a in maxsim], probe.k)))
        return [
            StageRecall(probe.index, INDEX_STAGE, index, probe.shortlist, probe.ef, probe.shortlist),
            StageRecall(probe.index, FINAL_STAGE, final, probe.k, probe.ef, probe.shortlist),
        ]

    def stats(self) -> dict[str, Any]:
        return {"fde_dim": self._tokens.fde.dim}
