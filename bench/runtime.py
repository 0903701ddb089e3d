"""The int8 ONNX runtime against the float model it is made from: quality and speed, in process.

    python bench/runtime.py [--model all-MiniLM-L6-v2]

Quality: BEIR SciFact nDCG@10 and recall@100, exact search over the full corpus (5,183 abstracts,
300 test claims), for `<model>` (torch, float32) and `<model>@onnx-int8`. The runtime is accepted
when its nDCG@10 is within 0.005 of the float model's (exit status 1 otherwise).
Speed: texts per second for one query per call, 32 queries per call, and the corpus in calls of
1,000 (as an upsert), each encoder alone on this machine.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.datasets import scifact_corpus, scifact_qrels, scifact_queries, scifact_text
from tests.support.evaluate import ndcg_at_k, recall_at_k

TOLERANCE = 0.005


def measure(model: str) -> dict:
    from service.encoders import EncoderRegistry
    from service.settings import Settings

    registry = EncoderRegistry(Settings())
    start = time.perf_counter()
    encoder = registry.load(registry.resolve(model))
    load_s = time.perf_counter() - start
    corpus = scifact_corpus()
    texts = [scifact_text(d) for d in corpus]
    qrels = scifact_qrels("test")
    queries = scifact_queries()
    qids = sorted(qrels)
    encoder.encode(texts[:32], "document")  # warm
    start = time.perf_counter()
    X = np.concatenate([encoder.encode(texts[s : s + 1000], "document") for s in range(0, len(texts), 1000)])
    corpus_rate = len(texts) / (time.perf_counter() - start)
    claims = [queries[q] for q in qids]
    start = time.perf_counter()
    Q = np.concatenate([encoder.encode(claims[s : s + 32], "query") for s in range(0, len(claims), 32)])
    batched_rate = len(claims) / (time.perf_counter() - start)
    start = time.perf_counter()
    for claim in claims[:100]:
        encoder.encode([claim], "query")
    one_rate = 100 / (time.perf_counter() - start)
    top = np.argsort(-(Q @ X.T), axis=1)[:, :100]
    run = {q: [corpus[i]["_id"] for i in row] for q, row in zip(qids, top)}
    return {
        "model": model,
        "load_s": load_s,
        "ndcg@10": ndcg_at_k(run, qrels, 10),
        "recall@100": recall_at_k(run, qrels, 100),
        "one": one_rate,
        "batched": batched_rate,
        "corpus": corpus_rate,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    args = parser.parse_args()
    rows = [measure(args.model), measure(f"{args.model}@onnx-int8")]
    print(f"\nSciFact (exact search, {len(scifact_corpus())} abstracts, {len(scifact_qrels('test'))} claims)")
    print(f"| {'model':<28} | nDCG@10 | recall@100 | 1 query/call | 32/call | corpus | load s |")
    print(f"|{'-' * 30}|---------|------------|--------------|---------|--------|--------|")
    for r in rows:
        print(
            f"| {r['model']:<28} | {r['ndcg@10']:.4f} | {r['recall@100']:10.4f} | {r['one']:12.0f} | "
            f"{r['batched']:7.0f} | {r['corpus']:6.0f} | {r['load_s']:6.1f} |"
        )
    delta = rows[1]["ndcg@10"] - rows[0]["ndcg@10"]
    ok = abs(delta) <= TOLERANCE
    speed = rows[1]["corpus"] / rows[0]["corpus"]
    print(
        f"\nint8 nDCG@10 {delta:+.4f} against float ({'PASS' if ok else 'FAIL'}: within {TOLERANCE}); corpus {speed:.2f}x"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
