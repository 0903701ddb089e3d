"""Whether a niced recall re-run stalls searches through a graph's read lock.

In-process, on one hnswlib graph (random 384-d vectors): `--hogs` threads keep the cores busy
(numpy matrix products, as model calls would), a writer adds a vector every 20 ms, a reader
runs single searches (k=10, ef 50) every 2 ms and times them, and a "re-run" thread searches 4
queries at a time at ef 300 without pause, as the recall estimator's units do. Three conditions
of the re-run thread, one after another: at normal priority; at nice 19 with plain reads (a
waiting writer blocks new searches while the niced thread holds the lock); at nice 19 inside
paced work (`index.pacing`), whose reads let searches pass a waiting writer (`index/rwlock.py`).

    python bench/lock_stall.py [--seconds 25] [--hogs 2] [--vectors 60000]
"""

import argparse
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.hnsw import HnswIndex, HnswParams
from index.pacing import paced
from service.cpu import lower_this_threads_priority

DIM = 384


def run(graph: HnswIndex, seconds: float, hogs: int, niced: bool, background: bool) -> np.ndarray:
    """Search latencies in ms over `seconds` with the re-run thread as given."""
    stop, latencies = threading.Event(), []
    rng = np.random.default_rng(1)
    next_label = [graph.slot_count]

    def rerun() -> None:
        if niced:
            lower_this_threads_priority()
        Q = rng.standard_normal((4, DIM)).astype(np.float32)
        with paced(lambda: None) if background else nullcontext():
            while not stop.is_set():
                graph.search(Q, 40, ef=300, threads=1)

    def hog() -> None:
        A = np.random.default_rng(2).standard_normal((400, 400)).astype(np.float32)
        while not stop.is_set():
            A @ A

    def writer() -> None:
        while not stop.is_set():
            x = np.random.default_rng(next_label[0]).standard_normal((1, DIM)).astype(np.float32)
            graph.add(np.array([next_label[0]]), x, num_threads=1)
            next_label[0] += 1
            time.sleep(0.02)

    def reader() -> None:
        q = np.random.default_rng(3).standard_normal((1, DIM)).astype(np.float32)
        while not stop.is_set():
            t0 = time.perf_counter()
            graph.search(q, 10, ef=50, threads=1)
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.002)

    threads = [threading.Thread(target=f) for f in [rerun, writer, reader] + [hog] * hogs]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return np.asarray(latencies) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--hogs", type=int, default=2)
    ap.add_argument("--vectors", type=int, default=60000)
    args = ap.parse_args()
    X = np.random.default_rng(0).standard_normal((args.vectors, DIM)).astype(np.float32)
    graph = HnswIndex(DIM, "cosine", HnswParams(m=16, ef_construction=64, ef_search=50), capacity=2 * args.vectors)
    graph.add(np.arange(args.vectors), X)
    print("| re-run thread | searches | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|")
    for name, niced, background in [
        ("normal priority, plain reads", False, False),
        ("nice 19, plain reads", True, False),
        ("nice 19, background reads", True, True),
    ]:
        a = run(graph, args.seconds, args.hogs, niced, background)
        p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
        print(f"| {name} | {len(a)} | {p50:.2f} | {p99:.2f} | {p999:.2f} | {a.max():.1f} |", flush=True)


if __name__ == "__main__":
    main()
