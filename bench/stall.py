"""How long `/healthz` waits while the server takes large request bodies.

A real server on 127.0.0.1; one thread sends upserts of `--mb` MB JSON bodies (vectors and
bulky metadata) into a vector collection while another polls `/healthz` every 10 ms. Prints
the health check's latency percentiles with and without the uploads.

    python bench/stall.py --mb 30 --uploads 5 [--dim 2800]
"""

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.server import Server


def body(mb: float, dim: int, seed: int) -> bytes:
    """1000 documents of `dim` floats each; bulky metadata strings make up the rest of `mb`."""
    rng = np.random.default_rng(seed)
    per_doc = int(mb * 1e6 / 1000)
    docs = [
        {
            "id": f"s{seed}-{i}",
            "vector": rng.standard_normal(dim).round(6).tolist(),
            "metadata": {"payload": "x" * max(0, per_doc - 11 * dim)},
        }
        for i in range(1000)
    ]
    return json.dumps({"documents": docs}).encode()


def poll(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            c.get("/healthz")
            out.append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.01)


def summary(ms: list[float]) -> str:
    q = np.percentile(ms, [50, 99, 100])
    return f"n={len(ms)} p50 {q[0]:.1f} ms  p99 {q[1]:.1f} ms  max {q[2]:.1f} ms"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=float, default=30.0)
    p.add_argument("--uploads", type=int, default=5)
    p.add_argument("--dim", type=int, default=384, help="vector dim: larger means more of the body is numbers")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(
            Path(tmp) / "data", env={"VECNEST_MAX_BODY_BYTES": str(64 << 20), "VECNEST_RECALL_SAMPLE_RATE": "0"}
        ).start()
        try:
            server.client.post("/v1/collections", json={"name": "big", "dim": args.dim})
            bodies = [body(args.mb, args.dim, i) for i in range(args.uploads)]
            quiet: list[float] = []
            stop = threading.Event()
            t = threading.Thread(target=poll, args=(server.url, stop, quiet))
            t.start()
            time.sleep(3)
            stop.set()
            t.join()
            busy: list[float] = []
            stop = threading.Event()
            t = threading.Thread(target=poll, args=(server.url, stop, busy))
            t.start()
            took = []
            for b in bodies:
                t0 = time.perf_counter()
                r = server.client.put(
                    "/v1/collections/big/documents", content=b, headers={"content-type": "application/json"}
                )
                took.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text[:200]
            stop.set()
            t.join()
            print(f"body {len(bodies[0]) / 1e6:.1f} MB, upsert {statistics.mean(took):.2f} s each")
            print(f"/healthz idle:            {summary(quiet)}")
            print(f"/healthz during uploads:  {summary(busy)}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
