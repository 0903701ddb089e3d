"""BEIR SciFact through the HTTP API: ingest the corpus, run the test queries, print a table.

    python bench/beir.py                 # starts its own server on a free port, temp data dir
    python bench/beir.py --url http://127.0.0.1:8000   # or measure a running server

Reports nDCG@10 and recall@100 for exact and HNSW search, ingest docs/s and search latency
p50/p99 (client side, one query per request, text embedded by the server). Targets: exact
nDCG@10 within 0.005 of the published 0.645 (MTEB), HNSW at the default ef within 0.005 of exact.
"""

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.datasets import scifact_corpus, scifact_qrels, scifact_queries, scifact_text
from tests.support.evaluate import ndcg_at_k, recall_at_k
from tests.support.server import Server

PUBLISHED_NDCG10 = 0.645  # all-MiniLM-L6-v2 on SciFact, MTEB


def ingest(client: httpx.Client, name: str, batch: int, workers: int) -> float:
    corpus = scifact_corpus()
    batches = [
        [{"id": d["_id"], "text": scifact_text(d)} for d in corpus[i : i + batch]] for i in range(0, len(corpus), batch)
    ]

    def put(docs):
        r = client.put(f"/v1/collections/{name}/documents", json={"documents": docs})
        r.raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, batches))
    return time.perf_counter() - start


def run_queries(client: httpx.Client, name: str, k: int, **options) -> tuple[dict[str, list[str]], np.ndarray]:
    queries = scifact_queries()
    run, latencies = {}, []
    for qid in scifact_qrels("test"):
        start = time.perf_counter()
        r = client.post(
            f"/v1/collections/{name}/search", json={"query": queries[qid], "k": k, "include": [], **options}
        )
        latencies.append(time.perf_counter() - start)
        r.raise_for_status()
        run[qid] = [hit["id"] for hit in r.json()["results"]]
    return run, np.array(latencies) * 1e3


def encoder_throughput(n: int) -> float | None:
    """The model's own speed on the first `n` corpus texts, measured after the server stopped."""
    if n <= 0:
        return None
    from service.encoders import EncoderRegistry
    from service.settings import Settings

    registry = EncoderRegistry(Settings())
    encoder = registry.load(registry.resolve(None))
    texts = [scifact_text(d) for d in scifact_corpus()[:n]]
    encoder.encode(texts[:16], "document")  # warm-up
    start = time.perf_counter()
    encoder.encode(texts, "document")
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running vecnest; default: start one")
    parser.add_argument("--batch", type=int, default=128, help="documents per upsert request")
    parser.add_argument("--workers", type=int, default=2, help="concurrent upsert requests")
    parser.add_argument(
        "--encoder-sample", type=int, default=512, help="documents for the in-process encoder baseline (0: skip)"
    )
    parser.add_argument("--out", default="bench/out/beir.json")
    args = parser.parse_args()

    server = None
    if args.url:
        client = httpx.Client(base_url=args.url, timeout=300)
    else:
        server = Server(Path(tempfile.mkdtemp(prefix="vecnest-beir-")) / "data").start()
        client = server.client
    try:
        name = f"scifact-{int(time.time())}"
        client.post("/v1/collections", json={"name": name}).raise_for_status()
        n_docs = len(scifact_corpus())
        ingest_s = ingest(client, name, args.batch, args.workers)
        info = client.get(f"/v1/collections/{name}").json()
        assert info["documents"] == n_docs, info

        qrels = scifact_qrels("test")
        rows = []
        for label, options in [("exact", {"exact": True}), (f"hnsw (default ef={info['hnsw']['ef_search']})", {})]:
            run, ms = run_queries(client, name, 100, **options)
            rows.append(
                {
                    "mode": label,
                    "ndcg@10": ndcg_at_k(run, qrels, 10),
                    "recall@100": recall_at_k(run, qrels, 100),
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p99_ms": float(np.percentile(ms, 99)),
                }
            )
        _, ms10 = run_queries(client, name, 10)
        rows.append(
            {
                "mode": "hnsw, k=10 (latency only)",
                "ndcg@10": None,
                "recall@100": None,
                "p50_ms": float(np.percentile(ms10, 50)),
                "p99_ms": float(np.percentile(ms10, 99)),
            }
        )
        client.delete(f"/v1/collections/{name}")
    finally:
        if server is not None:
            server.stop()

    encoder_docs_per_s = encoder_throughput(args.encoder_sample)
    exact, hnsw = rows[0]["ndcg@10"], rows[1]["ndcg@10"]
    print(f"\nBEIR SciFact through HTTP on 127.0.0.1: {n_docs} documents, {len(qrels)} test queries, all-MiniLM-L6-v2")
    print(
        f"ingest: {n_docs} docs in {ingest_s:.1f} s = {n_docs / ingest_s:.1f} docs/s "
        f"(batches of {args.batch}, {args.workers} concurrent requests)"
    )
    if encoder_docs_per_s:
        print(
            f"encoder alone, in-process, same texts ({args.encoder_sample} docs): {encoder_docs_per_s:.1f} docs/s; "
            f"HTTP ingest reaches {n_docs / ingest_s / encoder_docs_per_s:.0%} of it"
        )
    print()
    print(f"| {'search':<28} | nDCG@10 | recall@100 | p50 ms | p99 ms |")
    print(f"|{'-' * 30}|---------|------------|--------|--------|")
    for r in rows:
        nd = f"{r['ndcg@10']:.4f}" if r["ndcg@10"] is not None else "-"
        rc = f"{r['recall@100']:.4f}" if r["recall@100"] is not None else "-"
        print(f"| {r['mode']:<28} | {nd:>7} | {rc:>10} | {r['p50_ms']:6.1f} | {r['p99_ms']:6.1f} |")
    checks = [
        (f"exact nDCG@10 within 0.005 of published {PUBLISHED_NDCG10}", abs(exact - PUBLISHED_NDCG10) <= 0.005),
        ("hnsw nDCG@10 within 0.005 of exact", abs(hnsw - exact) <= 0.005),
    ]
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"ingest_docs_per_s": n_docs / ingest_s, "encoder_docs_per_s": encoder_docs_per_s, "rows": rows}, indent=2
        )
    )
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
