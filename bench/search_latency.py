"""Vector search under load with wrk: req/s, p50 and p99 at several concurrencies, on a real
server over loopback (GloVe 50-d, 20,000 documents by default). Prints a table.

    python bench/search_latency.py [--docs 20000] [--seconds 15] [--concurrency 1 8 32]

Needs Debian's `wrk` (apt-get install wrk). The query rotates over 200 held-out vectors.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.datasets import read_vecs, shared_path
from tests.support.server import Server

LUA = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/v1/collections/glove/search", {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%.1f %%.1f %%.1f\\n", summary.requests,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("wrk is needed: apt-get install wrk")
    X = read_vecs(shared_path("glove-6B-50d-100k", "glove-6B-50d-100k_base.fvecs.gz"), "float32")
    root = Path(tempfile.mkdtemp(prefix="vecnest-latency-"))
    bodies = root / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"vector": q.tolist(), "k": 10}) + "\n" for q in X[-200:]))
    script = root / "search.lua"
    script.write_text(LUA % bodies)
    rows = []
    with Server(root / "data") as server:
        c = server.client
        c.post("/v1/collections", json={"name": "glove", "dim": 50}).raise_for_status()
        for s in range(0, args.docs, 1000):
            docs = [{"id": f"g{i}", "vector": X[i].tolist()} for i in range(s, min(s + 1000, args.docs))]
            c.put("/v1/collections/glove/documents", json={"documents": docs}).raise_for_status()
        for conc in args.concurrency:
            threads = min(conc, 2)
            cmd = [wrk, f"-t{threads}", f"-c{conc}", f"-d{args.seconds}s", "-s", str(script), server.url]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 60).stdout
            found = re.search(r"RESULT (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", out)
            if found is None:
                sys.exit(f"wrk printed no result:\n{out}")
            n, p50, p99, worst = int(found[1]), float(found[2]), float(found[3]), float(found[4])
            rows.append((conc, n / args.seconds, p50, p99, worst))
    print(f"\nvector search k=10, {args.docs} GloVe 50-d documents, {args.seconds} s per row")
    print(f"{'c':>3}  {'req/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'max ms':>7}")
    for conc, rate, p50, p99, worst in rows:
        print(f"{conc:>3}  {rate:>8.0f}  {p50:>7.1f}  {p99:>7.1f}  {worst:>7.1f}")


if __name__ == "__main__":
    main()
