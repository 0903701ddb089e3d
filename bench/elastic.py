"""Elastic dimensions on BEIR SciFact, through the HTTP API.

    python bench/elastic.py [--finetuned /path/to/model]

For each dim in {32, 64, 96, 128, 192, 256, 384}, nDCG@10 of
  (a) plain prefix (exact search over truncated, re-normalised vectors),
  (b) PCA prefix (exact search after the collection's fitted rotation),
  (c) funnel (the PCA dim's HNSW index shortlists k·rerank_factor, re-scored at full dim),
plus the funnel's search latency (vector queries: no model time). With --finetuned, the same
for a Matryoshka fine-tune served natively (no rotation). Embeddings come from the server's
/v1/embeddings and are cached in bench/out/cache. Targets: funnel at 96 dims within 0.005 of
full dim; the fine-tune at 64 dims ≥ 0.60 with full dim ≥ 0.64.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.embed import cached, embed_http
from tests.support.datasets import scifact_corpus, scifact_qrels, scifact_queries, scifact_text
from tests.support.evaluate import ndcg_at_k
from tests.support.server import Server

DIMS = [32, 64, 96, 128, 192, 256, 384]


def load(client, name: str, ids: list[str], X: np.ndarray) -> None:
    for start in range(0, len(ids), 500):
        docs = [{"id": i, "vector": x.tolist()} for i, x in zip(ids[start : start + 500], X[start : start + 500])]
        client.put(f"/v1/collections/{name}/documents", json={"documents": docs}).raise_for_status()


def run(client, name: str, qids: list[str], Q: np.ndarray, **options) -> tuple[dict, np.ndarray]:
    """Rankings for every query, in batches of 100 (one request each); latency per single query
    is measured separately by `latency`."""
    ranked = {}
    for start in range(0, len(qids), 100):
        searches = [{"vector": q.tolist(), "k": 10, "include": [], **options} for q in Q[start : start + 100]]
        r = client.post(f"/v1/collections/{name}/search/batch", json={"searches": searches})
        r.raise_for_status()
        for qid, res in zip(qids[start : start + 100], r.json()["results"]):
            ranked[qid] = [h["id"] for h in res["results"]]
    return ranked


def latency(client, name: str, Q: np.ndarray, **options) -> tuple[float, float]:
    ms = []
    for q in Q:
        t = time.perf_counter()
        client.post(
            f"/v1/collections/{name}/search", json={"vector": q.tolist(), "k": 10, "include": [], **options}
        ).raise_for_status()
        ms.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def evaluate_model(client, label: str, model: str | None, elasticizer: str, ids, texts, qids, queries, qrels):
    key = f"{model or 'default'}"
    X = cached("scifact-corpus", key, texts, lambda t: embed_http(client, t, model=model))
    Q = cached("scifact-test-queries", key, queries, lambda t: embed_http(client, t, model=model))
    rows = {}
    names = {}
    for kind in ["none", "pca"] if elasticizer == "both" else [elasticizer]:
        name = f"{label}-{kind}-{int(time.time())}"
        body = {"name": name, "dims": DIMS, "elasticizer": {"kind": kind}}
        if model:
            body["model"] = model
        client.post("/v1/collections", json=body).raise_for_status()
        load(client, name, ids, X)
        if kind == "pca":
            client.post(f"/v1/collections/{name}/elasticizer/refit", json={"sample": len(ids)}).raise_for_status()
        names[kind] = name
    for d in DIMS:
        row = {}
        for kind, name in names.items():
            row[f"{kind}_prefix"] = ndcg_at_k(run(client, name, qids, Q, dim=d, exact=True, rerank=False), qrels)
        funnel_on = names.get("pca", names.get("none"))
        row["funnel"] = ndcg_at_k(run(client, funnel_on, qids, Q, dim=d), qrels)
        row["p50_ms"], row["p99_ms"] = latency(client, funnel_on, Q, dim=d)
        rows[d] = row
        print(f"  {label} dim {d}: {row}", flush=True)
    for name in names.values():
        client.delete(f"/v1/collections/{name}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetuned", help="a Matryoshka model directory from `vecnest finetune`")
    parser.add_argument("--out", default="bench/out/elastic.json")
    args = parser.parse_args()
    corpus = scifact_corpus()
    ids, texts = [d["_id"] for d in corpus], [scifact_text(d) for d in corpus]
    qrels = scifact_qrels("test")
    qids = list(qrels)
    queries = [scifact_queries()[q] for q in qids]
    env = {"VECNEST_ALLOW_MODEL_PATHS": "true"}  # the fine-tuned model is named by its path
    with Server(Path(tempfile.mkdtemp(prefix="vecnest-elastic-")) / "data", env=env) as server:
        results = {"minilm": evaluate_model(server.client, "minilm", None, "both", ids, texts, qids, queries, qrels)}
        if args.finetuned:
            model = str(Path(args.finetuned).resolve())
            results["finetuned"] = evaluate_model(
                server.client, "finetuned", model, "none", ids, texts, qids, queries, qrels
            )

    full = results["minilm"][384]["funnel"]
    print(
        "\nSciFact (5,183 docs, 300 test queries) through HTTP; nDCG@10; funnel latency per query (vector in, k=10)\n"
    )
    print("| dim | plain prefix | PCA prefix | funnel (PCA + full rerank) | funnel p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for d, r in results["minilm"].items():
        print(
            f"| {d} | {r['none_prefix']:.4f} | {r['pca_prefix']:.4f} | {r['funnel']:.4f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    checks = [("funnel at 96 dims within 0.005 of full dim", full - results["minilm"][96]["funnel"] <= 0.005)]
    if "finetuned" in results:
        ft = results["finetuned"]
        print("\nMatryoshka fine-tune (native truncation, no rotation):\n")
        print("| dim | prefix (exact) | funnel | vs plain MiniLM prefix | vs PCA prefix |")
        print("|---|---|---|---|---|")
        for d, r in ft.items():
            base = results["minilm"][d]
            print(
                f"| {d} | {r['none_prefix']:.4f} | {r['funnel']:.4f} | {base['none_prefix']:.4f} | {base['pca_prefix']:.4f} |"
            )
        checks += [
            ("fine-tune nDCG@10 at 64 dims >= 0.60", ft[64]["none_prefix"] >= 0.60),
            ("fine-tune full-dim nDCG@10 >= 0.64", ft[384]["none_prefix"] >= 0.64),
        ]
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({k: {str(d): r for d, r in v.items()} for k, v in results.items()}, indent=2))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
