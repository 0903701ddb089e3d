"""Hybrid search on BEIR SciFact: BM25 alone, dense alone, and both fused, over HTTP.

    python bench/hybrid.py

A vecnest server (child process) holds the 5,183 SciFact abstracts (text, and all-MiniLM-L6-v2
vectors computed once through its /v1/embeddings and cached under bench/out/cache) in a
collection with graphs at dims 96 (a PCA-rotated funnel) and 384. The 300 test claims are sent
as text searches, one at a time, in each mode: nDCG@10 and Recall@10 against the qrels, and
the median latency. Published references: BM25 (Elasticsearch) 0.665, all-MiniLM-L6-v2 0.645;
hybrid above both is the published pattern on SciFact.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.embed import cached, embed_http
from tests.support.datasets import scifact_corpus, scifact_qrels, scifact_queries, scifact_text
from tests.support.evaluate import ndcg_at_k, recall_at_k
from tests.support.server import Server

NAME = "scifact"
RUNS = [  # label, request options
    ("keyword (BM25)", {"mode": "keyword"}),
    ("dense 384", {"mode": "dense"}),
    ("dense 96 (funnel)", {"mode": "dense", "dim": 96}),
    ("hybrid 384 (RRF, 1:1)", {"mode": "hybrid"}),
    ("hybrid 96 (RRF, 1:1)", {"mode": "hybrid", "dim": 96}),
    ("hybrid 384 (dense 1, keyword 0.5)", {"mode": "hybrid", "fusion": {"keyword_weight": 0.5}}),
    ("hybrid 384 (dense 0.5, keyword 1)", {"mode": "hybrid", "fusion": {"dense_weight": 0.5}}),
    ("hybrid 384 (depth 20)", {"mode": "hybrid", "fusion": {"candidates": 20}}),
]


def main() -> None:
    corpus = scifact_corpus()
    ids, texts = [d["_id"] for d in corpus], [scifact_text(d) for d in corpus]
    qrels, queries = scifact_qrels("test"), scifact_queries()
    qids = [q for q in qrels if q in queries]
    rows = []
    with tempfile.TemporaryDirectory() as root, Server(Path(root) / "data") as server:
        c = server.client
        X = cached("hybrid-corpus", "all-MiniLM-L6-v2 document", texts, lambda t: embed_http(c, t))
        body = {"name": NAME, "dims": [96, 384], "elasticizer": {"kind": "pca", "fit_at": 5000}}
        c.post("/v1/collections", json=body).raise_for_status()
        t0 = time.perf_counter()
        for s in range(0, len(ids), 200):
            docs = [
                {"id": i, "text": t, "vector": x.tolist()}
                for i, t, x in zip(ids[s : s + 200], texts[s : s + 200], X[s : s + 200])
            ]
            c.put(f"/v1/collections/{NAME}/documents", json={"documents": docs}).raise_for_status()
        while c.get(f"/v1/collections/{NAME}").json()["rotation"] is None:
            time.sleep(0.5)
        print(f"{len(ids)} documents loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        for label, options in RUNS:
            for q in qids[:10]:  # warm-up
                c.post(f"/v1/collections/{NAME}/search", json={"query": queries[q], "k": 10, **options})
            run, took = {}, []
            for q in qids:
                t1 = time.perf_counter()
                r = c.post(
                    f"/v1/collections/{NAME}/search",
                    json={"query": queries[q], "k": 10, "include": [], **options},
                )
                took.append(time.perf_counter() - t1)
                r.raise_for_status()
                run[q] = [h["id"] for h in r.json()["results"]]
            row = {
                "run": label,
                "options": options,
                "ndcg@10": ndcg_at_k(run, qrels, 10),
                "recall@10": recall_at_k(run, qrels, 10),
                "p50_ms": float(np.median(took) * 1e3),
            }
            rows.append(row)
            print(f"{label}: nDCG@10 {row['ndcg@10']:.4f}", flush=True)
    print(f"\nSciFact test ({len(qids)} claims, {len(ids)} abstracts), k=10 per search, one at a time, over HTTP")
    print("| run | nDCG@10 | Recall@10 | p50 ms |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | {r['p50_ms']:.1f} |")
    print("| published: BM25 (BEIR, Elasticsearch) | 0.665 | | |\n| published: all-MiniLM-L6-v2 (MTEB) | 0.645 | | |")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "hybrid.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
