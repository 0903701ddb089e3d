"""Keyword and hybrid search: BM25 over the documents' text, fused with the dense results.

Every collection keeps a keyword index of its documents' text in its SQLite store (FTS5, see
`index.store`), written in the same transaction as the document. A search's `mode` says what
answers it:
- "dense" (the default): the graphs, as always;
- "keyword": BM25 alone; a query's text is split into terms (lower-cased, Porter-stemmed by the
  index's tokenizer, English stop words dropped) and any term may match;
- "hybrid": the dense top-`candidates` and the BM25 top-`candidates`, fused by reciprocal rank
  fusion: score(d) = Σ_list weight_list / (rrf_k + rank_list(d)), ranks from 1 (Cormack et al.,
  2009; the fusion Qdrant, Weaviate, Elasticsearch and OpenSearch offer).
RRF needs no score calibration between BM25 (unbounded) and cosine (bounded), which is why it is
the default everywhere; the weights tilt it toward one side.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from index.errors import Invalid
from index.protocols import Hits
from index.scoring import Match

MODES = ("dense", "keyword", "hybrid")
DEFAULT_RRF_K = 60  # the constant of the original paper, and every peer's default
DEFAULT_FUSION_CANDIDATES = 100  # per list: deep enough that rank ~100 still counts a little
MAX_TERMS = 64  # terms a keyword query keeps (each is an index lookup)

# Lucene's English stop words (what Elasticsearch's `english` analyzer drops, the BM25 baseline
# of BEIR): frequent words that match nearly every document and only slow an OR query down.
_STOP_WORDS = (
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with"
)
STOP_WORDS = frozenset(_STOP_WORDS.split())
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Fusion:
    """How a hybrid search fuses its two lists: their weights, RRF's constant, and how many
    results of each list take part (None: max(k, DEFAULT_FUSION_CANDIDATES))."""

    dense_weight: float = 1.0
    keyword_weight: float = 1.0
    rrf_k: int = DEFAULT_RRF_K
    candidates: int | None = None

    def depth(self, k: int) -> int:
        return max(k, self.candidates or DEFAULT_FUSION_CANDIDATES)


def check(mode: str, texts: Sequence[str] | None, fusion: Fusion | None, nq: int | None) -> None:
    """Refuse a mode that does not exist, a keyword part without text, and fusion settings that
    cannot rank (negative weights, both zero, rrf_k < 1)."""
    if mode not in MODES:
        raise Invalid(f"mode must be one of {', '.join(MODES)}, not {mode!r}", code="invalid_mode")
    if mode == "dense":
        return
    if texts is None or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise Invalid(
            f"a {mode} search needs query text for its keyword part (query, or keyword_query with a vector)",
            code="keyword_text_required",
        )
    if nq is not None and len(texts) != nq:
        raise Invalid(f"{len(texts)} keyword texts for {nq} queries", code="keyword_text_required")
    if fusion is not None:
        if fusion.dense_weight < 0 or fusion.keyword_weight < 0 or fusion.dense_weight + fusion.keyword_weight <= 0:
            raise Invalid("fusion weights must be ≥ 0 and not both 0", code="invalid_fusion")
        if fusion.rrf_k < 1 or (fusion.candidates is not None and fusion.candidates < 1):
            raise Invalid("rrf_k and candidates must be at least 1", code="invalid_fusion")


def terms(text: str) -> list[str]:
    """The distinct words of `text` a keyword query looks up, in order (at most MAX_TERMS)."""
    out: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in STOP_WORDS:
            out.setdefault(word, None)
    return list(out)[:MAX_TERMS]


def match_expression(words: Sequence[str]) -> str | None:
    """An FTS5 query any of `words` satisfies, each quoted (so no word is read as FTS5 syntax:
    AND, NEAR, a column filter...). None when there is nothing to look up."""
    if not words:
        return None
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def keyword_hits(store: Any, texts: Sequence[str], k: int, allowed: np.ndarray | None) -> Hits:
    """BM25 top-k `(nq, k)` of each text among live documents (and `allowed` labels, if given);
    scores are BM25, higher is better; rows pad with -1 / -inf."""
    out = Hits.empty(len(texts), k)
    for i, text in enumerate(texts):
        expression = match_expression(terms(text))
        if expression is None:
            continue
        labels, scores = store.keyword_search(expression, k, allowed)
        out.labels[i, : len(labels)] = labels
        out.scores[i, : len(scores)] = scores
    return out


def fuse(lists: Sequence[list[Match]], weights: Sequence[float], rrf_k: int, k: int) -> list[Match]:
    """Reciprocal rank fusion of ranked match lists (best first) into the top k; a match keeps
    the fields of the first list it appears in, and its score becomes its fused score."""
    fused: dict[str, float] = {}
    first: dict[str, Match] = {}
    for matches, weight in zip(lists, weights):
        for rank, m in enumerate(matches, start=1):
            fused[m.id] = fused.get(m.id, 0.0) + weight / (rrf_k + rank)
            first.setdefault(m.id, m)
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [replace(first[doc_id], score=score) for doc_id, score in best]
