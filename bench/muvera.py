"""Multi-vector retrieval: MUVERA FDE candidates + exact MaxSim against brute-force MaxSim.

    python bench/muvera.py [--wordnet-docs 50000] [--queries 200]

SciFact (5,183 abstracts, 300 test claims), all-MiniLM-L6-v2 token embeddings (unit length,
special tokens dropped, as vecnest embeds text for a multi-vector collection):
  * recall@1 / recall@10 of FDE top-N + exact MaxSim against brute-force MaxSim, N ∈ {50, 100,
    200, 300}, for exact FDE search and for the HNSW FDE index, per FDE configuration;
  * nDCG@10 against the qrels: brute-force MaxSim, FDE(HNSW, N=100) + MaxSim, and the dense
    single-vector model;
  * memory per document.
WordNet glosses (≥ 50k documents, held-out glosses as queries), through `MultiVectorCollection`
(SQLite tokens, HNSW over FDEs): per-query latency of FDE + re-rank against brute-force MaxSim
over all token matrices in RAM, at the smallest N whose recall@10 ≥ 0.9.
"""

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.embed import CACHE, cached
from index import Catalog, HnswParams, Manifest, NewDocument, Query
from index.fde import FdeEncoder, MultiVectorConfig
from index.hnsw import HnswIndex
from index.maxsim import TokenBatch
from tests.support.datasets import scifact_corpus, scifact_qrels, scifact_queries, scifact_text, wordnet_glosses
from tests.support.evaluate import ndcg_at_k

NS = [50, 100, 200, 300]


def token_sets(name: str, texts: list[str], kind: str, encoder) -> list[np.ndarray]:
    """MiniLM token matrices (float16), cached under bench/out/cache as one array + offsets."""
    import hashlib

    digest = hashlib.sha256((f"{encoder.path}|{kind}\x00" + "\x00".join(texts)).encode()).hexdigest()[:16]
    path = CACHE / f"tokens-{name}-{digest}.npz"
    if path.exists():
        data = np.load(path)
        tokens, offsets = data["tokens"], data["offsets"]
    else:
        print(f"  embedding the tokens of {len(texts)} {name} texts (cached afterwards)...", flush=True)
        start, sets = time.perf_counter(), []
        for s in range(0, len(texts), 512):
            sets += encoder.encode_tokens(texts[s : s + 512], kind)
            print(f"    {len(sets)}/{len(texts)} ({len(sets) / (time.perf_counter() - start):.0f} texts/s)", flush=True)
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in sets])])
        tokens = np.concatenate(sets).astype(np.float16)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(path, tokens=tokens, offsets=offsets)
    return [tokens[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def brute_force(queries: list[np.ndarray], docs: TokenBatch, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """`(top-k (nq, k), all scores (nq, n), seconds per query)` of exact MaxSim over every document."""
    start = time.perf_counter()
    S = np.stack([docs.chamfer(q.astype(np.float32)) for q in queries])
    per_query = (time.perf_counter() - start) / len(queries)
    return np.argsort(-S, axis=1, kind="stable")[:, :k], S, per_query


def coverage(truth: np.ndarray, candidates: np.ndarray, k: int) -> float:
    """Mean share of the true top-k inside each candidate list: after an exact re-rank this IS
    recall@k against brute force (algorithms.md §1.6)."""
    return float(np.mean([len(set(t[:k]) & set(c)) / k for t, c in zip(truth, candidates)]))


def scifact(args, encoder) -> dict:
    corpus = scifact_corpus()
    ids = [d["_id"] for d in corpus]
    doc_sets = token_sets("scifact-corpus", [scifact_text(d) for d in corpus], "document", encoder)
    qrels = scifact_qrels("test")
    qids = list(qrels)
    q_sets = token_sets("scifact-test-queries", [scifact_queries()[q] for q in qids], "query", encoder)
    docs32 = [s.astype(np.float32) for s in doc_sets]
    batch = TokenBatch(docs32)
    truth, S, bf_s = brute_force(q_sets, batch, 10)
    print(f"  brute-force MaxSim: {bf_s * 1e3:.0f} ms/query over {len(batch.tokens)} tokens", flush=True)
    run = {q: [ids[j] for j in truth[i]] for i, q in enumerate(qids)}
    result = {"ndcg": {"maxsim_brute_force": ndcg_at_k(run, qrels)}, "configs": {}}
    sizes = np.array([len(s) for s in doc_sets])
    result["tokens_per_doc"] = float(sizes.mean())
    configs = {
        "(20,5,16) 10240-d": MultiVectorConfig(token_dim=encoder.dim),
        "(20,5,16)+sketch 2048-d": MultiVectorConfig(token_dim=encoder.dim, final_dim=2048),
        "(20,4,8) 2560-d": MultiVectorConfig(token_dim=encoder.dim, simhash_bits=4, projection_dim=8),
    }
    for name, config in configs.items():
        fde = FdeEncoder(config)
        t0 = time.perf_counter()
        F = fde.documents(docs32)
        fde_s = time.perf_counter() - t0
        Fq = fde.queries([q.astype(np.float32) for q in q_sets])
        exact_top = np.argsort(-(Fq @ F.T), axis=1, kind="stable")[:, : max(NS)]
        t0 = time.perf_counter()
        index = HnswIndex(config.dim, "ip", HnswParams())
        index.add(np.arange(len(F), dtype=np.int64), F)
        build_s = time.perf_counter() - t0
        row = {"dim": config.dim, "fde_docs_per_s": len(F) / fde_s, "build_s": build_s, "exact": {}, "hnsw": {}}
        for n in NS:
            row["exact"][n] = (coverage(truth[:, :1], exact_top[:, :n], 1), coverage(truth, exact_top[:, :n], 10))
            hits = index.search(Fq, n)
            row["hnsw"][n] = (
                coverage(truth[:, :1], hits.labels, 1),
                coverage(truth, hits.labels, 10),
                coverage(exact_top[:, :n], hits.labels, n),
            )
        hits = index.search(Fq, 100)
        reranked = [[ids[j] for j in sorted(c[c >= 0], key=lambda j: -S[i, j])[:10]] for i, c in enumerate(hits.labels)]
        row["ndcg_n100"] = ndcg_at_k(dict(zip(qids, reranked)), qrels)
        result["configs"][name] = row
        print(f"  {name}: {json.dumps(row)}", flush=True)
    dense = cached(
        "scifact-corpus", encoder.path, [scifact_text(d) for d in corpus], lambda t: encoder.encode(t, "document")
    )
    Qd = encoder.encode([scifact_queries()[q] for q in qids], "query")
    top = np.argsort(-(Qd @ dense.T), axis=1)[:, :10]
    result["ndcg"]["dense_single_vector"] = ndcg_at_k({q: [ids[j] for j in top[i]] for i, q in enumerate(qids)}, qrels)
    return result


def wordnet(args, encoder) -> dict:
    rows = wordnet_glosses()
    texts = [f"{lemmas}: {gloss}" for _, _, lemmas, gloss in rows]
    rng = random.Random(0)
    picked = rng.sample(range(len(rows)), args.wordnet_docs + args.queries)
    corpus, queries = picked[: args.wordnet_docs], picked[args.wordnet_docs :]
    doc_sets = token_sets("wordnet-corpus", [texts[i] for i in corpus], "document", encoder)
    q_sets = [
        q.astype(np.float32) for q in token_sets("wordnet-queries", [texts[i] for i in queries], "query", encoder)
    ]
    batch = TokenBatch([s.astype(np.float32) for s in doc_sets])
    for q in q_sets[:5]:  # warm-up
        batch.chamfer(q)
    truth, _, bf_s = brute_force(q_sets, batch, 10)
    R, k, P, *final = [int(x) for x in args.wordnet_fde.split(",")]
    config = MultiVectorConfig(
        token_dim=encoder.dim, repetitions=R, simhash_bits=k, projection_dim=P, final_dim=final[0] if final else None
    )
    folder = tempfile.mkdtemp(prefix="vecnest-muvera-")
    try:
        catalog = Catalog(folder)
        collection = catalog.create(
            Manifest(
                name="glosses", dim=config.dim, metric="ip", hnsw=HnswParams(), created_at="bench", multivector=config
            )
        )
        t0 = time.perf_counter()
        for s in range(0, len(doc_sets), 1000):
            collection.upsert(
                [
                    NewDocument(id=str(i), vector=None, tokens=t)
                    for i, t in zip(range(s, s + 1000), doc_sets[s : s + 1000])
                ]
            )
        ingest_s = time.perf_counter() - t0
        print(f"  ingested {len(doc_sets)} multi-vector documents in {ingest_s:.0f} s", flush=True)
        out = {
            "docs": len(doc_sets),
            "tokens_per_doc": float(np.mean([len(s) for s in doc_sets])),
            "fde_dim": config.dim,
            "fde": args.wordnet_fde,
            "ingest_docs_per_s": len(doc_sets) / ingest_s,
            "brute_force_ms": bf_s * 1e3,
            "rows": [],
        }
        for n in (50, 100, 200, 300, 500, 1000):
            lat, found = [], []
            for q in q_sets:
                t0 = time.perf_counter()
                result = collection.search(Query([q], 10, candidates=n))
                lat.append(time.perf_counter() - t0)
                found.append([int(m.id) for m in result.matches[0]])
            recall = coverage(truth, np.array([f + [-1] * (10 - len(f)) for f in found]), 10)
            out["rows"].append(
                {
                    "candidates": n,
                    "recall10": recall,
                    "p50_ms": float(np.percentile(lat, 50) * 1e3),
                    "mean_ms": float(np.mean(lat) * 1e3),
                }
            )
            print(f"  N={n}: {out['rows'][-1]}", flush=True)
        store_mb = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20
        out["disk_mb"] = store_mb
        catalog.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet-docs", type=int, default=50000)
    parser.add_argument(
        "--wordnet-fde",
        default="20,4,8",
        help="R,simhash_bits,projection_dim[,final_dim] for the "
        "WordNet collection (2560-d by default: 10240-d FDEs make a 50k-document graph slow to build "
        "on 2 cores, and a Count-Sketch to 2048 lost recall on SciFact)",
    )
    parser.add_argument("--skip-scifact", action="store_true", help="reuse the SciFact results of the last --out")
    parser.add_argument("--queries", type=int, default=200, help="held-out WordNet glosses used as queries")
    parser.add_argument("--skip-wordnet", action="store_true")
    parser.add_argument("--out", default="bench/out/muvera.json")
    args = parser.parse_args()
    from service.encoders import EncoderRegistry
    from service.settings import Settings

    registry = EncoderRegistry(Settings())
    encoder = registry.load(registry.resolve(None))
    if args.skip_scifact:
        sf = json.loads(Path(args.out).read_text())["scifact"]
    else:
        print("SciFact", flush=True)
        sf = scifact(args, encoder)
    wn = None if args.skip_wordnet else (print("WordNet", flush=True), wordnet(args, encoder))[1]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"scifact": sf, "wordnet": wn}, indent=2))
    report(sf, wn, encoder.dim)
    return 0


def report(sf: dict, wn: dict | None, token_dim: int) -> None:
    print(
        "\nSciFact, all-MiniLM-L6-v2 token embeddings: recall of FDE top-N + exact MaxSim against brute-force "
        "MaxSim (300 test queries)\n"
    )
    print("| FDE | search | " + " | ".join(f"N={n} R@1 / R@10" for n in NS) + " |")
    print("|---|---|" + "---|" * len(NS))
    for name, row in sf["configs"].items():
        for kind in ("exact", "hnsw"):
            cells = [
                f"{row[kind][str(n)][0]:.3f} / {row[kind][str(n)][1]:.3f}"
                if str(n) in row[kind]
                else f"{row[kind][n][0]:.3f} / {row[kind][n][1]:.3f}"
                for n in NS
            ]
            print(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    print("\n| SciFact nDCG@10 | value |\n|---|---|")
    for name, v in sf["ndcg"].items():
        print(f"| {name} | {v:.4f} |")
    for name, row in sf["configs"].items():
        print(f"| FDE {name} HNSW N=100 + MaxSim | {row['ndcg_n100']:.4f} |")
    tokens_b = sf["tokens_per_doc"] * token_dim * 2
    print(
        f"\nMemory per SciFact document: tokens {sf['tokens_per_doc']:.0f} × {token_dim} × float16 = "
        f"{tokens_b / 1024:.0f} KiB; FDE "
        + ", ".join(f"{n}: {r['dim'] * 4 / 1024:.0f} KiB" for n, r in sf["configs"].items())
    )
    if wn:
        print(
            f"\nWordNet: {wn['docs']} glosses ({wn['tokens_per_doc']:.1f} tokens each), FDE ({wn['fde']}) "
            f"{wn['fde_dim']}-d in "
            f"HNSW, via MultiVectorCollection; brute-force MaxSim in RAM: {wn['brute_force_ms']:.1f} ms/query\n"
        )
        print("| candidates N | recall@10 vs brute force | p50 ms | mean ms | speed-up (mean) |\n|---|---|---|---|---|")
        for r in wn["rows"]:
            print(
                f"| {r['candidates']} | {r['recall10']:.3f} | {r['p50_ms']:.2f} | {r['mean_ms']:.2f} | "
                f"{wn['brute_force_ms'] / r['mean_ms']:.1f}x |"
            )
        print(
            f"\nIngest {wn['ingest_docs_per_s']:.0f} docs/s (tokens given); on disk {wn['disk_mb']:.0f} MB "
            f"({wn['disk_mb'] * 2**20 / wn['docs'] / 1024:.1f} KiB/doc: SQLite tokens + FDE, vector file, graph)"
        )


if __name__ == "__main__":
    sys.exit(main())
