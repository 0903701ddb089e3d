"""Online recall estimation and the recall-target ef controller on WordNet, read back through a
real Prometheus, as the Grafana dashboard would show it.

    python bench/observability.py [--seconds 120] [--sample-rate 0.2]

A vecnest server (child process) holds the 117k WordNet glosses (all-MiniLM-L6-v2 vectors,
cached; 2,000 glosses held out as queries) in one collection with graphs at dims 96 and 384,
HNSW M=16, ef_construction=100. Debian's Prometheus scrapes it every second with the repo's
scrape config.

1. Controller: for each target (0.90, 0.95, 0.99), PATCH `target_recall`, then send single
   searches at dim 384 for `--seconds`, sampling ef and the rolling recall estimate every
   second. Then check offline: exact recall@10 (numpy brute force) of 500 other held-out
   queries at the ef the controller chose, and the smallest ef of a sweep that reaches the
   target on those queries (the oracle's answer).
2. Panels: mixed traffic (dim 384, the dim-96 funnel, text queries) and an on-demand probe,
   then the dashboard's key panels as tables from Prometheus queries.

Writes bench/out/observability.json.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.wordnet_dims import embeddings
from tests.support.datasets import wordnet_glosses
from tests.support.server import Prometheus, Server

TARGETS = (0.90, 0.95, 0.99)
SWEEP = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1000)
NAME = "wordnet"


def load(client, ids: list[str], X: np.ndarray) -> float:
    body = {
        "name": NAME,
        "dims": [96, 384],
        "hnsw": {"m": 16, "ef_construction": 100},
        "elasticizer": {"kind": "pca", "fit_at": 20000},
        "recall_sample_rate": 0.0,
    }
    client.post("/v1/collections", json=body).raise_for_status()
    start = time.perf_counter()
    for s in range(0, len(ids), 1000):
        docs = [{"id": i, "vector": x.tolist()} for i, x in zip(ids[s : s + 1000], X[s : s + 1000])]
        client.put(f"/v1/collections/{NAME}/documents", json={"documents": docs}).raise_for_status()
        if s % 20000 == 0:
            print(f"  loaded {s + len(docs)} documents", flush=True)
    return time.perf_counter() - start


def exact_top10(Xc: np.ndarray, Q: np.ndarray, ids: list[str]) -> list[set[str]]:
    pos = np.concatenate([np.argsort(-(Q[s : s + 100] @ Xc.T), axis=1)[:, :10] for s in range(0, len(Q), 100)])
    return [{ids[j] for j in row} for row in pos]


def offline_recall(client, Q: np.ndarray, truth: list[set[str]], ef: int, dim: int = 384) -> float:
    hits = 0
    for s in range(0, len(Q), 100):
        searches = [{"vector": q.tolist(), "k": 10, "ef": ef, "dim": dim} for q in Q[s : s + 100]]
        r = client.post(f"/v1/collections/{NAME}/search/batch", json={"searches": searches})
        r.raise_for_status()
        hits += sum(
            len({h["id"] for h in res["results"]} & t) for res, t in zip(r.json()["results"], truth[s : s + 100])
        )
    return hits / (10 * len(Q))


def controller_phase(client, target: float, Q: np.ndarray, seconds: float, sample_rate: float) -> list[dict]:
    client.patch(
        f"/v1/collections/{NAME}",
        json={"target_recall": target, "recall_sample_rate": sample_rate, "ef_min": 10, "ef_max": 1000},
    ).raise_for_status()
    trace, start, next_tick, i = [], time.perf_counter(), 0.0, 0
    while (now := time.perf_counter() - start) < seconds:
        q = Q[i % len(Q)]
        client.post(f"/v1/collections/{NAME}/search", json={"vector": q.tolist(), "k": 10}).raise_for_status()
        i += 1
        if now >= next_tick:
            recall = client.get(f"/v1/collections/{NAME}").json()["recall"]
            estimate = recall["estimates"].get("384", {}).get("live", {}).get("index", {})
            controller = recall["controllers"].get("384", {})
            trace.append(
                {
                    "t": round(now, 1),
                    "searches": i,
                    "ef": recall["ef_search"]["384"],
                    "estimate": estimate.get("recall"),
                    "window": controller.get("last_window_recall"),
                    "converged": controller.get("converged"),
                }
            )
            next_tick += 1.0
    return trace


def overhead_phase(client, Q: np.ndarray, texts: list[str], seconds: float) -> dict:
    """Client-side latency of text and vector searches with the estimator off and on, one run."""
    out = {}
    for rate in (0.0, 0.03, 0.2, 1.0):
        client.patch(f"/v1/collections/{NAME}", json={"recall_sample_rate": rate}).raise_for_status()
        lat: dict[str, list[float]] = {"text": [], "vector": []}
        start, i = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            kind = "text" if i % 3 == 0 else "vector"
            body = (
                {"query": texts[i % len(texts)], "k": 10}
                if kind == "text"
                else {"vector": Q[i % len(Q)].tolist(), "k": 10}
            )
            t0 = time.perf_counter()
            client.post(f"/v1/collections/{NAME}/search", json=body).raise_for_status()
            lat[kind].append((time.perf_counter() - t0) * 1e3)
            i += 1
        out[rate] = {
            k: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "n": len(v)}
            for k, v in lat.items()
        }
        print(f"  sample rate {rate}: {out[rate]}", flush=True)
    return out


def mixed_traffic(client, Q: np.ndarray, texts: list[str], seconds: float) -> int:
    start, i = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        q = Q[i % len(Q)]
        if i % 10 == 9:
            body = {"query": texts[i % len(texts)], "k": 10}
        else:
            body = {"vector": q.tolist(), "k": 10, **({"dim": 96} if i % 3 == 0 else {})}
        client.post(f"/v1/collections/{NAME}/search", json=body).raise_for_status()
        i += 1
    client.post(f"/v1/collections/{NAME}/recall", json={"queries": 200, "k": 10}).raise_for_status()
    return i


def panels(prometheus: Prometheus, window: str) -> dict:
    """The dashboard's key panels, as instant queries over the last `window`."""

    def by(expr: str, *labels: str) -> dict:
        return {tuple(s["metric"].get(k, "") for k in labels): float(s["value"][1]) for s in prometheus.series(expr)}

    c = f'collection="{NAME}"'

    def q(p, m, by_, where):
        return f"histogram_quantile({p}, sum by (le, {by_}) (rate({m}_bucket{{{where}}}[{window}])))"

    return {
        "recall": by(f"vecnest_recall_estimate{{{c}}}", "index", "stage", "source"),
        "ef_search": by(f"vecnest_ef_search{{{c}}}", "index"),
        "ef_used": by(f'vecnest_recall_ef{{{c},source="live"}}', "index"),
        "candidates": by(f'vecnest_recall_candidates{{{c},source="live"}}', "index"),
        "qps": by(f"sum by (index) (rate(vecnest_searches_total{{{c}}}[{window}]))", "index"),
        "p50": by(q(0.5, "vecnest_stage_duration_seconds", "index, stage", c), "index", "stage"),
        "p99": by(q(0.99, "vecnest_stage_duration_seconds", "index, stage", c), "index", "stage"),
        "queue_wait_p99": by(q(0.99, "vecnest_stage_duration_seconds", "stage", 'stage="queue_wait"'), "stage"),
        "samples": by(f"sum by (outcome) (increase(vecnest_recall_samples_total{{{c}}}[{window}]))", "outcome"),
        "http_p99": by(q(0.99, "vecnest_http_request_duration_seconds", "route", 'route=~".*search"'), "route"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="traffic per controller target")
    parser.add_argument("--sample-rate", type=float, default=0.2, help="share of searches re-run exactly")
    parser.add_argument("--out", default="bench/out/observability.json")
    args = parser.parse_args()
    if Prometheus.binary() is None:
        print("needs Debian's prometheus binary: apt-get install prometheus")
        return 2
    rows = wordnet_glosses()
    texts = [f"{lemmas}: {gloss}" for _, _, lemmas, gloss in rows]
    X = embeddings(texts)
    held_out = random.Random(1).sample(range(len(rows)), 2000)
    held = set(held_out)
    corpus = [i for i in range(len(rows)) if i not in held]
    ids = [f"{rows[i][0]}-{i}" for i in corpus]
    traffic_q, check_q = X[held_out[:1500]], X[held_out[1500:]]
    truth = exact_top10(X[corpus], check_q, ids)

    tmp = Path(tempfile.mkdtemp(prefix="vecnest-observability-"))
    results: dict = {"documents": len(ids), "targets": {}}
    with Server(tmp / "data") as server, Prometheus(tmp / "prometheus", [f"127.0.0.1:{server.port}"]) as prom:
        client = server.client
        print(f"loading {len(ids)} glosses ...", flush=True)
        results["load_s"] = load(client, ids, X[corpus])
        print(f"loaded in {results['load_s']:.0f} s", flush=True)
        sweep = {ef: offline_recall(client, check_q, truth, ef) for ef in SWEEP}
        results["sweep"] = sweep
        for target in TARGETS:
            trace = controller_phase(client, target, traffic_q, args.seconds, args.sample_rate)
            ef = trace[-1]["ef"]
            oracle = next((e for e in SWEEP if sweep[e] >= target), None)
            results["targets"][target] = {
                "trace": trace,
                "ef": ef,
                "offline_recall": offline_recall(client, check_q, truth, ef),
                "oracle_ef": oracle,
                "oracle_recall": sweep.get(oracle),
            }
            r = results["targets"][target]
            print(f"target {target}: ef {ef}, offline recall {r['offline_recall']:.4f}, oracle ef {oracle}", flush=True)
        results["overhead"] = overhead_phase(client, traffic_q, texts[:500], 20.0)
        client.patch(f"/v1/collections/{NAME}", json={"recall_sample_rate": args.sample_rate}).raise_for_status()
        searches = mixed_traffic(client, traffic_q, texts[:200], 30.0)
        time.sleep(3)
        results["panel_searches"] = searches
        results["panels"] = panels(prom, "40s")
        results["panels_whole_run"] = panels(prom, "30m")
    report(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(_jsonable(results), indent=2))
    return 0


def report(results: dict) -> None:
    print(
        f"\nWordNet: {results['documents']} glosses (MiniLM, 384-d; graphs 96 and 384, M=16, ef_construction=100), "
        f"loaded over HTTP in {results['load_s']:.0f} s\n"
    )
    print(
        "## Recall-target controller (dim 384, single searches; offline = exact recall@10 of 500 other held-out queries)\n"
    )
    print(
        "| target | ef chosen | estimate at the end | offline recall at that ef | oracle: smallest swept ef reaching target | "
        "its recall | searches |"
    )
    print("|---|---|---|---|---|---|---|")
    for target, r in results["targets"].items():
        last = r["trace"][-1]
        print(
            f"| {target} | {r['ef']} | {last['estimate']} | {r['offline_recall']:.4f} | {r['oracle_ef']} | "
            f"{r['oracle_recall']:.4f} | {last['searches']} |"
        )
    for target, r in results["targets"].items():
        print(f"\nConvergence, target {target} (time s: ef / rolling estimate of the graph stage)")
        trace = r["trace"]
        step = max(1, len(trace) // 12)
        print("  " + ", ".join(f"{p['t']:.0f}: {p['ef']}/{p['estimate']}" for p in [*trace[::step], trace[-1]]))
    print("\n## Estimator overhead (client-side ms per search, same run; text = encode + search)\n")
    print("| sample rate | text p50 | text p99 | vector p50 | vector p99 |")
    print("|---|---|---|---|---|")
    for rate, o in results["overhead"].items():
        print(
            f"| {rate} | {o['text']['p50']:.1f} | {o['text']['p99']:.1f} | {o['vector']['p50']:.2f} | {o['vector']['p99']:.2f} |"
        )
    print("\n## Panels (from Prometheus, last 40 s: mixed traffic at dims 384 and 96 plus text queries)\n")
    p = results["panels"]
    print("| index | stage | recall live | recall probe | ef default | ef used | candidates | QPS |")
    print("|---|---|---|---|---|---|---|---|")
    for index in sorted({k[0] for k in p["recall"]}):
        for stage in ("index", "final"):
            print(
                f"| {index} | {stage} | {_f(p['recall'].get((index, stage, 'live')))} | "
                f"{_f(p['recall'].get((index, stage, 'probe')))} | {_f(p['ef_search'].get((index,)), 0)} | "
                f"{_f(p['ef_used'].get((index,)), 1)} | {_f(p['candidates'].get((index,)), 1)} | {_f(p['qps'].get((index,)), 1)} |"
            )
    print("\n| index | stage | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for (index, stage), v in sorted(p["p50"].items()):
        print(f"| {index or '-'} | {stage} | {_ms(v)} | {_ms(p['p99'].get((index, stage)))} |")
    print(
        f"\nrecall samples in the window: {p['samples']}; HTTP p99 by route: "
        f"{ {k[0]: _ms(v) for k, v in p['http_p99'].items()} } ms"
    )


def _jsonable(value):
    if isinstance(value, dict):
        return {"/".join(k) if isinstance(k, tuple) else str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _f(v, digits: int = 4) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def _ms(v) -> str:
    return "-" if v is None or v != v else f"{v * 1e3:.2f}"


if __name__ == "__main__":
    sys.exit(main())
