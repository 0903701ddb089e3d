"""How long a graph snapshot stops the rest of the process: hnswlib's `save_index` against
vecnest's writer (`index/hnsw.py` `write_hnswlib_file`: the same bytes, written from a copy).

    python bench/snapshot_stall.py [--sizes 20000 100000] [--dim 384]

A thread that sleeps 1 ms and notes how late it wakes stands in for the server's event loop
and search threads. For each size, one graph (random unit vectors, M=16, ef_construction=100)
is saved both ways, side by side; the table prints the save's wall time and the longest the
ticking thread waited during it (the GIL: save_index holds it from start to end).
"""

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.hnsw import HnswIndex, HnswParams


class Ticker:
    """A thread waking every millisecond; `longest()` is its largest gap since `reset()`."""

    def __init__(self):
        self._gaps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            self._gaps.append(now - last)
            last = now

    def reset(self) -> None:
        self._gaps = []

    def longest(self) -> float:
        return max(self._gaps, default=0.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    rows = []
    ticker = Ticker()
    folder = Path(tempfile.mkdtemp(prefix="vecnest-snapshot-"))
    try:
        for n in args.sizes:
            X = np.random.default_rng(n).standard_normal((n, args.dim)).astype(np.float32)
            X /= np.linalg.norm(X, axis=1, keepdims=True)
            index = HnswIndex(args.dim, "ip", HnswParams(m=16, ef_construction=100), capacity=n)
            index.add(np.arange(n), X)
            timings = {}
            for way, save in (
                ("hnswlib save_index", lambda p, index=index: index._index.save_index(p)),
                ("HnswIndex.save", index.save),
            ):
                path = str(folder / f"{n}-{way.split()[0]}.bin")
                time.sleep(0.05)
                ticker.reset()
                start = time.perf_counter()
                save(path)
                timings[way] = (time.perf_counter() - start, ticker.longest())
            same = (folder / f"{n}-hnswlib.bin").read_bytes() == (folder / f"{n}-HnswIndex.save.bin").read_bytes()
            rows.append((n, timings, same))
            print(f"  {n} done", flush=True)
    finally:
        ticker.stop()
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    print(f"\nOne graph snapshot, {args.dim}-d, M=16 (ms; the ticking thread's longest wait during it)\n")
    print("| vectors | save_index wall | save_index stall | HnswIndex.save wall | HnswIndex.save stall | same bytes |")
    print("|---|---|---|---|---|---|")
    for n, t, same in rows:
        (w0, s0), (w1, s1) = t["hnswlib save_index"], t["HnswIndex.save"]
        print(
            f"| {n:,} | {w0 * 1e3:.0f} | {s0 * 1e3:.0f} | {w1 * 1e3:.0f} | {s1 * 1e3:.0f} | {'yes' if same else 'no'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
