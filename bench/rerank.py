"""A multi-vector search's exact MaxSim re-rank: packing the candidates against streaming them.

    python bench/rerank.py [--docs 1000] [--queries 100]

SciFact abstracts and test claims, all-MiniLM-L6-v2 token embeddings (float16, as the store
holds them; cached under bench/out/cache). For N candidate abstracts per query, the time to
score one claim against them exactly, side by side in one run:
  * packed: `TokenBatch(sets).chamfer(Q)`, a fresh float32 copy of every candidate token per
    query (what a search's re-rank did until this benchmark);
  * streamed: `chamfer(Q, sets)`, the sets converted slice by slice into one reused buffer
    (what it does now).
Both give the same scores (checked to 1e-4); the table prints per-query milliseconds.
"""

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.muvera import token_sets
from index.maxsim import TokenBatch, chamfer
from tests.support.datasets import scifact_corpus, scifact_queries, scifact_text

NS = (100, 300, 640)


def timed(score, queries: list[np.ndarray], candidates: list[list[np.ndarray]]) -> tuple[list[float], list[np.ndarray]]:
    """Per-query seconds and scores of `score(Q, sets)` over each query's own candidates."""
    seconds, scores = [], []
    for Q, sets in zip(queries, candidates):
        start = time.perf_counter()
        scores.append(score(Q, sets))
        seconds.append(time.perf_counter() - start)
    return seconds, scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1000, help="SciFact abstracts to draw candidates from")
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    from service.encoders import EncoderRegistry
    from service.settings import Settings

    registry = EncoderRegistry(Settings())
    encoder = registry.load(registry.resolve(None))
    corpus = scifact_corpus()[: args.docs]
    docs = token_sets(f"scifact-{args.docs}", [scifact_text(d) for d in corpus], "document", encoder)
    claims = list(scifact_queries().values())[: args.queries]
    queries = [q.astype(np.float32) for q in token_sets(f"scifact-claims-{args.queries}", claims, "query", encoder)]
    rng = random.Random(0)
    rows = []
    for n in NS:
        candidates = [[docs[i] for i in rng.sample(range(len(docs)), min(n, len(docs)))] for _ in queries]
        timed(chamfer, queries[:5], candidates[:5])  # warm-up
        timed(lambda Q, sets: TokenBatch(sets).chamfer(Q), queries[:5], candidates[:5])
        packed, packed_scores = timed(lambda Q, sets: TokenBatch(sets).chamfer(Q), queries, candidates)
        streamed, streamed_scores = timed(chamfer, queries, candidates)
        gap = max(float(np.abs(a - b).max()) for a, b in zip(packed_scores, streamed_scores))
        assert gap < 1e-4, f"the two scorings differ by {gap}"
        tokens = np.mean([sum(len(s) for s in sets) for sets in candidates])
        rows.append((n, tokens, packed, streamed))
        print(f"  N={n} done", flush=True)
    print(f"\nExact MaxSim of one SciFact claim against N candidate abstracts ({len(queries)} claims, ms per query)\n")
    print("| candidates N | tokens | packed p50 | packed mean | streamed p50 | streamed mean | speed-up (mean) |")
    print("|---|---|---|---|---|---|---|")
    for n, tokens, packed, streamed in rows:
        p, s = np.array(packed) * 1e3, np.array(streamed) * 1e3
        print(
            f"| {n} | {tokens:,.0f} | {np.median(p):.1f} | {p.mean():.1f} | {np.median(s):.1f} | {s.mean():.1f} | "
            f"{p.mean() / s.mean():.1f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
