"""Encoder upgrade benchmark on BEIR SciFact: is the new model, through the map, compatible?

Old model: the default MiniLM. New model: a genuinely different one on disk (default: the
Matryoshka fine-tune `vecnest finetune` wrote to bench/out/minilm-scifact-mrl, trained on
SciFact *train* pairs; the test queries below are disjoint from them).

Part 1 (the index library, in process): nDCG@10 and Recall@10 on the 300 test queries of
  old→old            old queries, old index
  new→old (map)      new queries mapped into the old space, old index, no backfill
  new→new            new queries, fully backfilled new index
  mixed 50%          new queries over the old index (mapped) + a half-backfilled new index,
                     scores calibrated onto one scale (and, to show the pitfall, uncalibrated)
plus the fit's time and figures and the map's query overhead.

Part 2 (the server, over HTTP): backfill throughput of a real upgrade against the encoder's
own batch throughput on the same texts, at the default duty cycle and at full speed.

    python bench/upgrade.py [--new PATH] [--docs 1000]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.embed import cached
from index import Collection, HnswParams, Manifest, NewDocument, Query, upgrades
from index.procrustes import ScoreCalibration, map_queries
from tests.support.datasets import scifact_corpus, scifact_qrels, scifact_queries, scifact_text
from tests.support.evaluate import ndcg_at_k, recall_at_k
from tests.support.server import Server

OUT = Path(__file__).resolve().parent / "out"
DEFAULT_NEW = OUT / "minilm-scifact-mrl"


def load_encoder(model: str | None):
    from service.encoders import EncoderRegistry
    from service.settings import Settings

    registry = EncoderRegistry(Settings())
    return registry.load(registry.resolve(model))


def make_collection(root: str, name: str, ids: list[str], X: np.ndarray) -> Collection:
    path = os.path.join(root, name)
    os.makedirs(path)
    manifest = Manifest(
        name=name,
        dim=X.shape[1],
        metric="cosine",
        hnsw=HnswParams(m=32, ef_construction=200, ef_search=100),
        created_at="bench",
    )
    c = Collection.create(path, manifest)
    for s in range(0, len(ids), 1000):
        c.upsert([NewDocument(id=i, vector=x, text=i) for i, x in zip(ids[s : s + 1000], X[s : s + 1000])])
    return c


def run_of(result, qids: list[str]) -> dict[str, list[str]]:
    return {q: [m.id for m in ms] for q, ms in zip(qids, result.matches)}


def quality(new_model: str) -> dict:
    corpus = scifact_corpus()
    ids = [d["_id"] for d in corpus]
    texts = [scifact_text(d) for d in corpus]
    qrels = scifact_qrels("test")
    queries = scifact_queries()
    qids = [q for q in qrels if q in queries]
    qtexts = [queries[q] for q in qids]
    old_enc, new_enc = load_encoder(None), load_encoder(new_model)
    X_old = cached("upgrade-corpus", "old:" + old_enc.path, texts, lambda t: old_enc.encode(t, "document"))
    X_new = cached("upgrade-corpus", "new:" + new_enc.path, texts, lambda t: new_enc.encode(t, "document"))
    Q_old = cached("upgrade-queries", "old:" + old_enc.path, qtexts, lambda t: old_enc.encode(t, "query"))
    Q_new = cached("upgrade-queries", "new:" + new_enc.path, qtexts, lambda t: new_enc.encode(t, "query"))
    with tempfile.TemporaryDirectory() as root:
        old = make_collection(root, "old", ids, X_old)
        full = make_collection(root, "new", ids, X_new)
        half_rows = np.sort(np.random.default_rng(0).permutation(len(ids))[: len(ids) // 2])
        half = make_collection(root, "half", [ids[i] for i in half_rows], X_new[half_rows])
        fit_rows, held_rows = upgrades.split_sample(len(ids), 0.2, 0)
        t0 = time.perf_counter()
        fitted = upgrades.fit_map(
            X_new, X_old, held_rows, fit_rows, old, [ids[i] for i in held_rows], kinds=("orthogonal",)
        )
        fit = fitted.maps["orthogonal"]
        fit_s = time.perf_counter() - t0
        runs = {
            "old→old": run_of(old.search(Query(Q_old, 10)), qids),
            "new→old (map, no backfill)": run_of(old.search(Query(map_queries(Q_new, fit.W), 10)), qids),
            "mixed 50% (calibrated)": run_of(
                upgrades.mixed_search(old, half, fit.W, fit.calibration, Query(Q_new, 10)), qids
            ),
            "mixed 50% (uncalibrated)": run_of(
                upgrades.mixed_search(old, half, fit.W, ScoreCalibration(), Query(Q_new, 10)), qids
            ),
            "new→new (full backfill)": run_of(full.search(Query(Q_new, 10)), qids),
        }
        overhead = map_overhead(old, half, fit, Q_new)
    table = {
        name: {"ndcg@10": ndcg_at_k(run, qrels, 10), "recall@10": recall_at_k(run, qrels, 10)}
        for name, run in runs.items()
    }
    return {
        "new_model": new_model,
        "docs": len(ids),
        "queries": len(qids),
        "fit": fit.figures,
        "fit_and_evaluate_s": fit_s,
        "calibration": vars(fit.calibration),
        "table": table,
        "overhead": overhead,
    }


def map_overhead(old: Collection, half: Collection, fit: upgrades.MapFit, Q_new: np.ndarray) -> dict:
    """Per single query, median over the test queries: the map alone (µs), and search latency
    plain (new→old through the map) vs mixed (both indexes, merged)."""

    def median_us(fn, reps=1):
        times = []
        for q in Q_new:
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(q[None, :])
            times.append((time.perf_counter() - t0) / reps)
        return float(np.median(times) * 1e6)

    return {
        "map_us": median_us(lambda q: map_queries(q, fit.W), reps=100),
        "old_search_us": median_us(lambda q: old.search(Query(q, 10))),  # the same index without the map
        "mapped_search_us": median_us(lambda q: old.search(Query(map_queries(q, fit.W), 10))),
        "mixed_search_us": median_us(lambda q: upgrades.mixed_search(old, half, fit.W, fit.calibration, Query(q, 10))),
    }


def throughput(new_model: str, n_docs: int, max_busy: float) -> dict:
    """A real upgrade over HTTP: docs/s of the backfill (after the fit's sample)."""
    corpus = scifact_corpus()[:n_docs]
    docs = [{"id": d["_id"], "text": scifact_text(d)} for d in corpus]
    with tempfile.TemporaryDirectory() as root:
        env = {
            "VECNEST_ALLOW_MODEL_PATHS": "true",
            "VECNEST_UPGRADE_MAX_BUSY": str(max_busy),
            "VECNEST_UPGRADE_POLL_S": "0.05",
        }
        with Server(Path(root) / "data", env=env) as server:
            c = server.client
            c.post("/v1/collections", json={"name": "sf"}).raise_for_status()
            for s in range(0, len(docs), 200):
                c.put("/v1/collections/sf/documents", json={"documents": docs[s : s + 200]}).raise_for_status()
            t_start = time.perf_counter()
            r = c.post("/v1/collections/sf/upgrades", json={"model": new_model, "sample": n_docs // 4})
            r.raise_for_status()
            uid = r.json()["id"]
            t_fit = None
            while True:
                info = c.get(f"/v1/collections/sf/upgrades/{uid}").json()
                if t_fit is None and info["state"] == "backfilling":
                    t_fit = time.perf_counter()
                    embedded_at_fit = info["progress"]["embedded"]
                if info["state"] == "backfilling" and info["progress"]["caught_up"]:
                    break
                if info["state"] == "failed":
                    raise RuntimeError(info)
                time.sleep(0.05)
            t_end = time.perf_counter()
            backfilled = info["progress"]["embedded"] - embedded_at_fit
    return {
        "max_busy": max_busy,
        "docs": n_docs,
        "sample": n_docs // 4,
        "fit_phase_s": t_fit - t_start,
        "backfill_docs": backfilled,
        "backfill_s": t_end - t_fit,
        "backfill_docs_per_s": backfilled / (t_end - t_fit),
        "gate": info["gate"],
        "mean_cosine": info["fit"].get("mean_cosine"),
    }


def encoder_throughput(model: str, n_docs: int) -> float:
    encoder = load_encoder(model)
    texts = [scifact_text(d) for d in scifact_corpus()[:n_docs]]
    encoder.encode(texts[:16], "document")
    t0 = time.perf_counter()
    for s in range(0, len(texts), 32):  # the backfill's batch size
        encoder.encode(texts[s : s + 32], "document")
    return len(texts) / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new", default=str(DEFAULT_NEW), help="the new model's directory")
    parser.add_argument("--docs", type=int, default=1000, help="documents in the throughput runs")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if not os.path.isdir(args.new):
        print(f"{args.new} is missing: run `vecnest finetune` first (see README), or pass --new", file=sys.stderr)
        return 2
    new_model = os.path.abspath(args.new)
    result = quality(new_model)
    print(f"SciFact test: {result['queries']} queries, {result['docs']} documents; new model {new_model}")
    f = result["fit"]
    print(
        f"fit: {f['n_fit']} pairs, held out {f['n_heldout']}: mean cosine {f['mean_cosine']:.4f} "
        f"(p10 {f['p10_cosine']:.4f}), recall@10 vs old queries {f['recall_at_10']:.4f}, "
        f"orthogonality error {f['orthogonality_error']:.1e}; SVD {f['fit_seconds'] * 1e3:.1f} ms, "
        f"fit + evaluation {result['fit_and_evaluate_s']:.2f} s; calibration {result['calibration']}"
    )
    print("\n| run | nDCG@10 | Recall@10 |\n|---|---|---|")
    for name, row in result["table"].items():
        print(f"| {name} | {row['ndcg@10']:.4f} | {row['recall@10']:.4f} |")
    t = result["table"]
    base, mapped, new = t["old→old"], t["new→old (map, no backfill)"], t["new→new (full backfill)"]
    print(
        f"\ncompatibility (new→old ≥ old→old, nDCG@10): {'holds' if mapped['ndcg@10'] >= base['ndcg@10'] else 'FAILS'}"
        f" ({mapped['ndcg@10']:.4f} vs {base['ndcg@10']:.4f})"
    )
    print(f"new→old Recall@10 relative to new→new: {mapped['recall@10'] / new['recall@10']:.3f}")
    o = result["overhead"]
    print(
        f"query overhead: map {o['map_us']:.1f} µs; search old {o['old_search_us']:.0f} µs, mapped "
        f"{o['mapped_search_us']:.0f} µs, mixed {o['mixed_search_us']:.0f} µs (medians, one query each)"
    )
    if not args.skip_throughput:
        runs = [throughput(new_model, args.docs, busy) for busy in (0.5, 1.0)]
        raw = encoder_throughput(new_model, args.docs)
        print(f"\n| backfill (HTTP server, {args.docs} SciFact docs) | docs/s | vs encoder alone |\n|---|---|---|")
        for r in runs:
            print(
                f"| upgrade_max_busy={r['max_busy']} | {r['backfill_docs_per_s']:.1f} | "
                f"{r['backfill_docs_per_s'] / raw:.2f}x |"
            )
        print(f"| encoder alone, batches of 32 | {raw:.1f} | 1.00x |")
        result["throughput"] = {"runs": runs, "encoder_docs_per_s": raw}
    OUT.mkdir(exist_ok=True)
    (OUT / "upgrade.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
