"""Soak: a bounded mixed load on a real server for `--minutes`, sampling its resident memory.

    python bench/soak.py --minutes 10 --warmup 2

The load keeps the data's size steady (every writer cycles through a fixed pool of ids), so
memory should level off: vector upserts, deletes and searches on dense, l2 and multi-vector
collections (tests/support/chaos.py workers), text upserts and text searches with the model, snapshots
every second, rebuilds and PCA refits. Prints RSS every `--every` seconds and the growth after
the warm-up: the median of the last `--window` minutes against the median of the first
`--window` minutes after the warm-up (a single sample may catch a batch's transient tensors).
Exits 1 when the growth is 5% or more, or on any 5xx or traceback.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.chaos import Ledger, Worker, create_collections
from tests.support.datasets import wordnet_glosses
from tests.support.server import Server


def rss_mb(pid: int) -> tuple[float, float, float]:
    """(resident, of which anonymous, of which file-backed: pages of the memory-mapped vector
    files and SQLite databases, which the kernel reclaims under pressure) in MB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) / 1024
    return (
        fields.get("VmRSS", 0.0),
        fields.get("RssAnon", 0.0),
        fields.get("RssFile", 0.0) + fields.get("RssShmem", 0.0),
    )


def text_load(url: str, stop: threading.Event, errors: list[str], counts: dict[str, int]) -> None:
    """Text upserts over 1,000 fixed ids, and text searches, with the model."""
    rows = wordnet_glosses()
    i = 0
    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            batch = [{"id": f"t{(i + j) % 1000}", "text": rows[(i * 7 + j) % len(rows)][3]} for j in range(16)]
            r = c.put("/v1/collections/text/documents", json={"documents": batch})
            for q in range(4):
                s = c.post("/v1/collections/text/search", json={"query": rows[(i + q * 13) % len(rows)][3], "k": 5})
                if s.status_code >= 500:
                    errors.append(f"text search {s.status_code}")
            if r.status_code >= 500:
                errors.append(f"text upsert {r.status_code}")
            counts["text"] = counts.get("text", 0) + 5
            i += 16


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0, help="minutes before the baseline sample")
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--window", type=float, default=2.0, help="minutes a median is taken over")
    p.add_argument("--workers", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(
            Path(tmp) / "data",
            env={
                "VECNEST_SNAPSHOT_INTERVAL_S": "1",
                "VECNEST_RECALL_SAMPLE_RATE": "0.05",
                "VECNEST_REBUILD_DELETED_FRACTION": "0.1",
            },
        ).start()
        try:
            create_collections(server.client)
            server.client.post("/v1/collections", json={"name": "text", "dims": [96, 384]})
            ledger, stop, errors, counts = Ledger(), threading.Event(), [], {}
            workers = [Worker(i, server.url, ledger, stop, seed=i, refits=i == 0) for i in range(args.workers)]
            loads = [*workers, threading.Thread(target=text_load, args=(server.url, stop, errors, counts), daemon=True)]
            for t in loads:
                t.start()
            start, samples = time.monotonic(), []
            while time.monotonic() - start < args.minutes * 60:
                time.sleep(args.every)
                minute = (time.monotonic() - start) / 60
                rss, anon, files = rss_mb(server.proc.pid)
                samples.append((minute, rss))
                print(
                    f"{minute:5.1f} min  RSS {rss:7.1f} MB (anonymous {anon:7.1f}, file-backed {files:6.1f})",
                    flush=True,
                )
                if server.proc.poll() is not None:
                    errors.append("the server died")
                    break
            stop.set()
            for t in loads:
                t.join(120)
            log = server.log.read_text()
        finally:
            server.stop()
    after_warmup = [(minute, mb) for minute, mb in samples if minute >= args.warmup]
    first = [mb for minute, mb in after_warmup if minute < args.warmup + args.window]
    last = [mb for minute, mb in after_warmup if minute >= samples[-1][0] - args.window]
    base, end, peak = statistics.median(first), statistics.median(last), max(mb for _, mb in after_warmup)
    growth = (end - base) / base
    ops = sum(ledger.acked.values()) + ledger.searches + counts.get("text", 0)
    print(
        f"\n| minutes | operations | RSS median, {args.warmup:g}-{args.warmup + args.window:g} min | RSS median, last "
        f"{args.window:g} min | peak | growth | 5xx | tracebacks |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.minutes:g} | {ops} | {base:.0f} MB | {end:.0f} MB | {peak:.0f} MB | {growth * 100:+.1f}% | "
        f"{len(errors) + len(ledger.server_errors)} | {log.count('Traceback')} |"
    )
    ok = growth < 0.05 and not errors and not ledger.server_errors and "Traceback" not in log
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
