"""Layer elasticity: (layers, dim) → SciFact nDCG@10 and encode speed.

    python bench/layers.py [--model all-MiniLM-L6-v2] [--layers 1,2,3,4,5,6]

For each layer count L, the corpus and the test queries are embedded with only the first L
transformer layers (then the model's pooling and normalisation, as vecnest's `layers` option
does); nDCG@10 is exact search at full dim and at PCA-rotated prefixes (the rotation fitted on
that L's corpus vectors). Speed: single-query encode latency (one text per call, as a search
sees it) and batched document throughput, both on this machine's CPU.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.embed import cached
from index.elastic import DimView, fit_pca_rotation
from tests.support.datasets import scifact_corpus, scifact_qrels, scifact_queries, scifact_text
from tests.support.evaluate import ndcg_at_k

DIMS = [64, 128, 384]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--layers", default="1,2,3,4,5,6")
    parser.add_argument("--out", default="bench/out/layers.json")
    args = parser.parse_args()
    from service.encoders import EncoderRegistry
    from service.settings import Settings

    registry = EncoderRegistry(Settings())
    encoder = registry.load(registry.resolve(args.model))
    corpus = scifact_corpus()
    ids, texts = [d["_id"] for d in corpus], [scifact_text(d) for d in corpus]
    qrels = scifact_qrels("test")
    qids = list(qrels)
    queries = [scifact_queries()[q] for q in qids]
    rows = []
    for L in [int(x) for x in args.layers.split(",")]:
        layers = None if encoder.num_layers == L else L
        X = cached(
            "scifact-corpus",
            f"{encoder.path}|layers={L}",
            texts,
            lambda t, layers=layers: encoder.encode(t, "document", layers),
        )
        Q = cached(
            "scifact-test-queries",
            f"{encoder.path}|layers={L}",
            queries,
            lambda t, layers=layers: encoder.encode(t, "query", layers),
        )
        R = fit_pca_rotation(X).rotation
        quality = {}
        for d in DIMS:
            view = DimView(d, X.shape[1], "cosine", R)
            top = np.argsort(-(view.apply(Q) @ view.apply(X).T), axis=1)[:, :10]
            quality[d] = ndcg_at_k({q: [ids[j] for j in top[i]] for i, q in enumerate(qids)}, qrels)
        for q in queries[:20]:  # warm-up
            encoder.encode([q], "query", layers)
        start = time.perf_counter()
        for q in queries:
            encoder.encode([q], "query", layers)
        query_ms = (time.perf_counter() - start) / len(queries) * 1e3
        start = time.perf_counter()
        encoder.encode(texts[:256], "document", layers)
        docs_per_s = 256 / (time.perf_counter() - start)
        rows.append({"layers": L, "ndcg": quality, "query_ms": query_ms, "docs_per_s": docs_per_s})
        print(f"  layers {L}: {rows[-1]}", flush=True)

    full = rows[-1]
    print(
        f"\n{encoder.id} on SciFact (300 test queries): nDCG@10 by (layers, dim), PCA-rotated prefixes; encode speed\n"
    )
    print(
        "| layers | "
        + " | ".join(f"nDCG@10 dim {d}" for d in DIMS)
        + " | query encode ms | docs/s (abstracts) | speed-up |"
    )
    print("|---" * (len(DIMS) + 4) + "|")
    for r in rows:
        print(
            f"| {r['layers']} | "
            + " | ".join(f"{r['ndcg'][d]:.4f}" for d in DIMS)
            + f" | {r['query_ms']:.1f} | {r['docs_per_s']:.1f} | {r['docs_per_s'] / full['docs_per_s']:.2f}x |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
