"""The shared backends beside the embedded one on the same vectors: the Qdrant backend
(qdrant-client's local mode, in process) and the Milvus backend (milvus-lite's gRPC server, a
child process): write rate, search latency and recall@10 against exact search.

    python bench/qdrant_backend.py [--docs 20000] [--queries 200]

The caveat that decides how to read it: local mode keeps points in Python and searches by brute
force (no HNSW, no payload indexes), so its latency grows with the collection and says nothing
about a Qdrant server's; it is the correctness reference of the backend, not its speed.
milvus-lite is a pure-Python Milvus with faiss HNSW per segment, over gRPC on loopback: its
figures include the network hop and the server's Python, not a Milvus cluster's. Vectors:
`--docs` WordNet glosses embedded by MiniLM (bench/peers.py's cache when it is there, else the
3,000 of tests/support/vectors.py), queries held out from the same set.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.peers import CACHE
from index import Catalog, HnswParams, Manifest, NewDocument, Query, open_milvus_catalog, open_qdrant_catalog
from index.manifest import Elasticizer
from tests.support.vectors import glosses


def vectors(n_docs: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    cached = sorted((CACHE / "embeddings").glob("glosses-*-all-MiniLM-L6-v2.npy"))
    X = np.load(cached[-1]) if cached else glosses()[1]
    n_docs = min(n_docs, len(X) - n_queries)
    return X[:n_docs], X[n_docs : n_docs + n_queries]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    X, Q = vectors(args.docs, args.queries)
    Xn, Qn = X / np.linalg.norm(X, axis=1, keepdims=True), Q / np.linalg.norm(Q, axis=1, keepdims=True)
    truth = np.argsort(-(Qn @ Xn.T), axis=1)[:, :10]
    print(f"{len(X)} documents, {len(Q)} queries", flush=True)
    manifest = Manifest(
        name="bench",
        dim=X.shape[1],
        metric="cosine",
        hnsw=HnswParams(),
        created_at="bench",
        dims=[64, X.shape[1]],
        elasticizer=Elasticizer(kind="none"),
    )
    work = Path(tempfile.mkdtemp(prefix="vecnest-qdrant-bench-"))
    from tests.support.milvus import MilvusServer

    milvus = MilvusServer(work / "milvus").start()
    backends = {
        "embedded": Catalog(str(work / "embedded")),
        "qdrant local": open_qdrant_catalog(path=str(work / "qdrant")),
        "milvus-lite": open_milvus_catalog(uri=milvus.uri),
    }
    rows = []
    for name, catalog in backends.items():
        c = catalog.create(manifest)
        start = time.perf_counter()
        for s in range(0, len(X), 100):
            c.upsert(
                [NewDocument(id=str(i), vector=X[i], metadata={"part": i % 10}) for i in range(s, min(s + 100, len(X)))]
            )
        rate = len(X) / (time.perf_counter() - start)
        for label, options in (
            ("full dim", {}),
            ("64-d funnel", {"dim": 64}),
            ("filter 1/10", {"filter": {"part": 3}}),
        ):
            latencies, found = [], []
            for q in Q:
                t0 = time.perf_counter()
                result = c.search(Query(q[None], 10, **options))
                latencies.append((time.perf_counter() - t0) * 1e3)
                found.append([int(m.id) for m in result.matches[0]])
            if "filter" in options:
                allowed = np.flatnonzero(np.arange(len(X)) % 10 == 3)
                exact = allowed[np.argsort(-(Qn @ Xn[allowed].T), axis=1)[:, :10]]
            else:
                exact = truth
            recall = np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, exact)])
            rows.append((name, label, rate, np.percentile(latencies, 50), np.percentile(latencies, 99), recall))
        catalog.close()
    milvus.stop()
    print(f"\n{'backend':<14} {'search':<13} {'writes/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>10}")
    for name, label, rate, p50, p99, recall in rows:
        print(f"{name:<14} {label:<13} {rate:>9.0f} {p50:>8.2f} {p99:>8.2f} {recall:>10.3f}")


if __name__ == "__main__":
    main()
