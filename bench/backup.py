"""Backups at scale, over HTTP with an API key: GloVe vectors (100k × 50-d by default) in a
collection with a Matryoshka dim, a snapshot taken while a client keeps writing, then drop →
restore in place and upload → restore on a second server, each compared with the answers the
collection gave at the snapshot's seq. Prints a table.

    python bench/backup.py [--docs 100000] [--queries 200]
"""

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.datasets import read_vecs, shared_path
from tests.support.server import Server

KEY = "bench-admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENV = {"VECNEST_API_KEYS": json.dumps([{"key": KEY, "role": "admin", "name": "bench"}])}


def answers(client, name: str, Q: np.ndarray, exact: bool = False) -> list:
    out = []
    for start in range(0, len(Q), 100):
        searches = [{"vector": q.tolist(), "k": 10, "exact": exact} for q in Q[start : start + 100]]
        r = client.post(f"/v1/collections/{name}/search/batch", json={"searches": searches}, headers=AUTH)
        r.raise_for_status()
        out += [[(h["id"], round(h["score"], 4)) for h in res["results"]] for res in r.json()["results"]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    X = read_vecs(shared_path("glove-6B-50d-100k", "glove-6B-50d-100k_base.fvecs.gz"), "float32")
    base, Q = X[: args.docs], X[-args.queries :]
    root = Path(tempfile.mkdtemp(prefix="vecnest-backup-"))
    rows = []
    with Server(root / "a", env=ENV) as a:
        c = a.client
        c.post("/v1/collections", json={"name": "glove", "dim": 50, "dims": [16, 50]}, headers=AUTH).raise_for_status()
        t0 = time.perf_counter()
        for s in range(0, len(base), 1000):
            docs = [{"id": f"g{i}", "vector": base[i].tolist(), "metadata": {"i": i}} for i in range(s, s + 1000)]
            docs = docs[: len(base) - s]
            c.put("/v1/collections/glove/documents", json={"documents": docs}, headers=AUTH).raise_for_status()
        rows.append(("ingest", f"{len(base)} docs", f"{time.perf_counter() - t0:.1f} s"))
        stop, writes = threading.Event(), [0]

        def writer():  # keeps writing (new ids) while the snapshot is taken
            i = 0
            while not stop.is_set():
                doc = {"id": f"w{i}", "vector": Q[i % len(Q)].tolist()}
                c.put("/v1/collections/glove/documents", json={"documents": [doc]}, headers=AUTH).raise_for_status()
                i += 1
                writes[0] = i

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.5)
        t0 = time.perf_counter()
        snap = c.post("/v1/collections/glove/snapshots", headers=AUTH).json()
        took = time.perf_counter() - t0
        stop.set()
        thread.join()
        rows.append(("snapshot (writes going on)", f"{snap['documents']} docs at seq {snap['seq']}", f"{took:.2f} s"))
        rows.append(("archive", f"{snap['bytes'] / 1e6:.1f} MB", f"{writes[0]} writes during the run"))
        archive = c.get(f"/v1/collections/glove/snapshots/{snap['id']}", headers=AUTH).content
        c.delete("/v1/collections/glove", headers=AUTH).raise_for_status()
        t0 = time.perf_counter()
        r = c.post(f"/v1/collections/glove/snapshots/{snap['id']}/restore", headers=AUTH)
        r.raise_for_status()
        rows.append(
            ("restore in place (after a drop)", f"{r.json()['documents']} docs", f"{time.perf_counter() - t0:.2f} s")
        )
        restored, exact = answers(c, "glove", Q), answers(c, "glove", Q, exact=True)
    with Server(root / "b", env=ENV) as b:
        t0 = time.perf_counter()
        r = b.client.post(
            "/v1/snapshots/restore?collection=glove",
            content=archive,
            headers={**AUTH, "Content-Type": "application/x-tar"},
        )
        r.raise_for_status()
        rows.append(
            ("upload + restore on a 2nd server", f"{r.json()['documents']} docs", f"{time.perf_counter() - t0:.2f} s")
        )
        elsewhere = answers(b.client, "glove", Q)
    same = sum(x == y for x, y in zip(restored, elsewhere))
    rows.append(("same top-10 (ids, scores), in place vs elsewhere", f"{same}/{len(Q)} queries", ""))
    recall = np.mean([len({i for i, _ in x} & {i for i, _ in y}) / 10 for x, y in zip(restored, exact)])
    rows.append(("recall@10 of the restored graphs vs exact", f"{recall:.3f}", ""))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'step':<{width}}  {'what':<28}  figure")
    for step, what, figure in rows:
        print(f"{step:<{width}}  {what:<28}  {figure}")


if __name__ == "__main__":
    main()
