"""Keyword and hybrid searches of an embedded collection (the rules: `index.hybrid`)."""

from collections.abc import Callable
from dataclasses import replace
from time import perf_counter

from index.backend import Query, SearchResult
from index.hybrid import Fusion, fuse, keyword_hits
from index.scoring import hydrate

from .state import CollectionState


def search(s: CollectionState, dense_search: Callable[[Query], SearchResult], query: Query) -> SearchResult:
    """A keyword or hybrid search; `dense_search(query)` runs the dense part (graphs, funnels,
    FDE + MaxSim). Keyword results carry BM25 scores, hybrid ones fused (RRF) scores. Neither is
    sampled for recall: a fusion approximates no exact answer."""
    assert query.texts is not None  # Collection.check refused it otherwise
    fusion = query.fusion or Fusion()
    depth = query.k if query.mode == "keyword" else fusion.depth(query.k)
    t0 = perf_counter()
    with s.reading():
        allowed = s.store.filter_labels(query.filter.conditions()) if query.filter else None
        hits = keyword_hits(s.store, query.texts, depth, allowed)
        t1 = perf_counter()
        keyword = hydrate(s.store, hits, query.include)
    timings = {"keyword": t1 - t0, "hydrate": perf_counter() - t1}
    if query.mode == "keyword":
        return SearchResult(keyword, "keyword", s.manifest.dim, depth, timings)
    dense = dense_search(replace(query, mode="dense", k=depth, probe=False))
    t2 = perf_counter()
    weights = (fusion.dense_weight, fusion.keyword_weight)
    matches = [fuse((d, kw), weights, fusion.rrf_k, query.k) for d, kw in zip(dense.matches, keyword)]
    timings = {**dense.timings, **timings, "fusion": perf_counter() - t2}
    return SearchResult(matches, "hybrid", dense.dim, dense.candidates, timings, dense.ef)
