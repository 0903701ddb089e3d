"""The fault harness: clients that write, delete and search a real vecnest server over HTTP while
it is killed, a ledger of what the server acknowledged, and the checks run after each restart.
`tests/e2e/test_faults.py` and `tests/e2e/test_concurrency.py` run short versions; `bench/faults.py` the
long one.

What is promised, and checked after every restart:
- every acknowledged upsert and delete is reflected (GET of every id ever written);
- a batch the server rejected (4xx) changed nothing, and a batch whose answer was lost in the
  kill is applied entirely or not at all, never half;
- exact searches equal an oracle computed here over the acknowledged state (same scores, the
  ids the oracle ranks there), graph searches find ≥ 90% of it;
- start-up always succeeds and no collection comes back failed.

Each worker owns its ids, so the ledger never has to order two clients' writes to one id: a
worker's op whose answer was lost is its last (the server is gone), and is resolved from the
server's state afterwards.
"""

import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

# Small, fast collections that still exercise every path: a funnel with a PCA rotation fitted
# (and refitted) under load, an l2 graph, and MUVERA multi-vector documents.
COLLECTIONS: dict[str, dict[str, Any]] = {
    "dense": {
        "dim": 16,
        "metric": "cosine",
        "dims": [8, 16],
        "hnsw": {"m": 8, "ef_construction": 64},
        "elasticizer": {"kind": "pca", "fit_at": 150, "sample": 2000},
    },
    "flat": {"dim": 8, "metric": "l2", "hnsw": {"m": 8, "ef_construction": 64}},
    "mv": {
        "multivector": {"token_dim": 16, "repetitions": 4, "simhash_bits": 3, "projection_dim": 8, "max_tokens": 64},
        "hnsw": {"m": 8, "ef_construction": 64},
    },
}
TOKEN_DIM = 16


def create_collections(client: httpx.Client, names=tuple(COLLECTIONS)) -> None:
    for name in names:
        r = client.post("/v1/collections", json={"name": name, **COLLECTIONS[name]})
        assert r.status_code in (201, 409), r.text


@dataclass
class Op:
    worker: int
    kind: str  # "upsert" | "delete"
    collection: str
    ids: list[str]
    values: list[Any] = field(default_factory=list)  # vectors (dim,) or token matrices (t, TOKEN_DIM)
    bad: bool = False  # its last document is invalid: the whole batch must be rejected, nothing applied


class Ledger:
    """The acknowledged state: collection → id → the value last acknowledged (absent: never
    written, or deleted). Plus the ops whose answer the kill swallowed."""

    def __init__(self):
        self.state: dict[str, dict[str, np.ndarray]] = {name: {} for name in COLLECTIONS}
        self.unknown: list[Op] = []
        self.acked = {"upsert": 0, "delete": 0}
        self.rejected = 0
        self.server_errors: list[str] = []
        self.searches = 0
        self._lock = threading.Lock()

    def ack(self, op: Op) -> None:
        with self._lock:
            docs = self.state[op.collection]
            for i, doc_id in enumerate(op.ids):
                if op.kind == "upsert":
                    docs[doc_id] = op.values[i]
                else:
                    docs.pop(doc_id, None)
            self.acked[op.kind] += 1

    def live(self, collection: str, worker: int) -> list[str]:
        with self._lock:
            return [i for i in self.state[collection] if i.startswith(f"w{worker}-")]


class Worker(threading.Thread):
    """Random upserts, deletes and searches over its own ids until stopped or the server dies."""

    def __init__(
        self,
        n: int,
        url: str,
        ledger: Ledger,
        stop: threading.Event,
        seed: int,
        collections: tuple[str, ...] = tuple(COLLECTIONS),
        pool: int = 80,
        refits: bool = False,
    ):
        super().__init__(name=f"chaos-worker-{n}", daemon=True)
        self.n, self.url, self.ledger, self.stop_event = n, url, ledger, stop
        self.rng = np.random.default_rng(seed)
        self.pick = random.Random(seed)
        self.collections, self.pool, self.refits = collections, pool, refits
        self.died = False

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop_event.is_set():
                name = self.pick.choice(self.collections)
                roll = self.pick.random()
                op = None
                if roll < 0.45:
                    op = self._make_upsert(name)
                elif roll < 0.6:
                    op = self._make_delete(name)
                try:
                    if op is None:
                        self._read(client, name, roll)
                        continue
                    r = self._send(client, op)
                except httpx.TransportError:  # the server is gone: this op's fate is unknown
                    if op is not None:
                        with self.ledger._lock:
                            self.ledger.unknown.append(op)
                    self.died = True
                    return
                if op.bad and r.status_code != 422:
                    self.ledger.server_errors.append(f"a batch with an invalid document got {r.status_code}")
                elif r.status_code == 200:
                    self.ledger.ack(op)
                elif r.status_code >= 500:
                    self.ledger.server_errors.append(f"{op.kind} {name}: {r.status_code} {r.text[:200]}")
                else:
                    self.ledger.rejected += 1

    # -- ops ------------------------------------------------------------------------------------
    def _make_upsert(self, name: str) -> Op:
        ids = [f"w{self.n}-{i}" for i in self.pick.sample(range(self.pool), self.pick.randint(1, 12))]
        if name == "mv":
            values = [
                self.rng.standard_normal((self.pick.randint(1, 10), TOKEN_DIM)).astype(np.float32).round(4) for _ in ids
            ]
        else:
            dim = COLLECTIONS[name]["dim"]
            values = [self.rng.standard_normal(dim).astype(np.float32).round(4) for _ in ids]
        if self.pick.random() < 0.05:  # one wrong-dimension document spoils the batch: rejected whole
            values[-1] = values[-1][:, :-1] if name == "mv" else values[-1][:-1]
            return Op(self.n, "upsert", name, ids, values, bad=True)
        return Op(self.n, "upsert", name, ids, values)

    def _make_delete(self, name: str) -> Op | None:
        live = self.ledger.live(name, self.n)
        if not live:
            return None
        return Op(self.n, "delete", name, self.pick.sample(live, min(len(live), self.pick.randint(1, 5))))

    def _send(self, client: httpx.Client, op: Op) -> httpx.Response:
        url = f"/v1/collections/{op.collection}/documents"
        if op.kind == "delete":
            return client.post(url + "/delete", json={"ids": op.ids})
        field_name = "vectors" if op.collection == "mv" else "vector"
        docs = [{"id": i, field_name: v.tolist(), "metadata": {"w": self.n}} for i, v in zip(op.ids, op.values)]
        return client.put(url, json={"documents": docs})

    def _read(self, client: httpx.Client, name: str, roll: float) -> None:
        if self.refits and name == "dense" and roll > 0.97:
            r = client.post("/v1/collections/dense/elasticizer/refit", json={"seed": self.pick.randint(0, 3)})
        elif name == "mv":
            q = self.rng.standard_normal((3, TOKEN_DIM)).round(4).tolist()
            r = client.post("/v1/collections/mv/search", json={"vectors": q, "k": 5, "include": []})
        else:
            body = {
                "vector": self.rng.standard_normal(COLLECTIONS[name]["dim"]).round(4).tolist(),
                "k": 5,
                "include": [],
            }
            if name == "dense" and roll > 0.8:
                body["dim"] = 8
            r = client.post(f"/v1/collections/{name}/search", json=body)
        with self.ledger._lock:
            self.ledger.searches += 1
        if r.status_code >= 500:
            self.ledger.server_errors.append(f"read {name}: {r.status_code} {r.text[:200]}")


# -- after a restart ------------------------------------------------------------------------------
def stored_form(collection: str, value: np.ndarray) -> np.ndarray:
    """What the server keeps for a value sent: unit rows for cosine and tokens (tokens as float16)."""
    x = np.asarray(value, np.float64)
    if collection == "mv":
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    if COLLECTIONS[collection]["metric"] == "cosine":
        return (x / np.linalg.norm(x)).astype(np.float32)
    return x.astype(np.float32)


def _fetch(client: httpx.Client, collection: str, doc_id: str) -> np.ndarray | None:
    r = client.get(f"/v1/collections/{collection}/documents/{doc_id}", params={"include_vector": "true"})
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    body = r.json()
    return np.asarray(body["vectors"] if collection == "mv" else body["vector"], np.float32)


def _same(collection: str, got: np.ndarray | None, want: np.ndarray | None) -> bool:
    if got is None or want is None:
        return got is None and want is None
    want = stored_form(collection, want)
    return got.shape == want.shape and np.allclose(got, want, atol=2e-3 if collection == "mv" else 1e-5)


def resolve_unknown(client: httpx.Client, ledger: Ledger) -> dict[str, int]:
    """Decide each op whose answer was lost: all of it applied, or none; anything else fails."""
    outcome = {"applied": 0, "not_applied": 0}
    for op in ledger.unknown:
        before = ledger.state[op.collection]
        seen = []
        for i, doc_id in enumerate(op.ids):
            got = _fetch(client, op.collection, doc_id)
            new = op.values[i] if op.kind == "upsert" else None
            if _same(op.collection, got, new):
                seen.append("new")
            elif _same(op.collection, got, before.get(doc_id)):
                seen.append("old")
            else:
                raise AssertionError(f"{op.kind} of {doc_id} in {op.collection}: neither the old nor the new value")
        if op.bad and "new" in seen:
            raise AssertionError(f"an invalid batch was applied in {op.collection}: {list(zip(op.ids, seen))}")
        if set(seen) == {"new"}:
            ledger.ack(op)
            outcome["applied"] += 1
        elif set(seen) == {"old"}:
            outcome["not_applied"] += 1
        else:
            raise AssertionError(f"half-applied {op.kind} batch in {op.collection}: {list(zip(op.ids, seen))}")
    ledger.unknown.clear()
    return outcome


def verify(
    client: httpx.Client, ledger: Ledger, universe: dict[str, set[str]], queries: int = 12, seed: int = 0
) -> dict[str, Any]:
    """Check the server against the ledger: every id ever written, then exact and graph searches."""
    resolved = resolve_unknown(client, ledger)
    ready = client.get("/readyz").json()
    assert ready["failed"] == {}, ready
    checked = 0
    for collection, ids in universe.items():
        want = ledger.state[collection]
        for doc_id in sorted(ids):
            got = _fetch(client, collection, doc_id)
            assert _same(collection, got, want.get(doc_id)), (
                f"{collection}/{doc_id}: server has {got}, the ledger {want.get(doc_id)}"
            )
            checked += 1
        count = client.get(f"/v1/collections/{collection}").json()["documents"]
        assert count == len(want), f"{collection}: {count} documents, the ledger says {len(want)}"
    # Not `default_rng(seed)`: a worker seeded with the same integer draws the same stream, so a
    # query could be a stored vector to the last rounding, where an l2 scan's float32 expansion
    # (|q|² + |x|² - 2q·x) cannot tell 1e-4 from 0.
    rng = np.random.default_rng([seed, 0xC4EC])
    recalls = []
    for collection in universe:
        want = ledger.state[collection]
        if not want:
            continue
        ids = sorted(want)
        for _ in range(queries):
            if collection == "mv":
                q = rng.standard_normal((3, TOKEN_DIM)).astype(np.float32)
                truth = _chamfer(q, [stored_form("mv", want[i]) for i in ids])
                body = {"vectors": q.tolist(), "k": 10, "include": [], "exact": True}
            else:
                q = rng.standard_normal(COLLECTIONS[collection]["dim"]).astype(np.float32)
                truth = _scores(collection, q, np.stack([stored_form(collection, want[i]) for i in ids]))
                body = {"vector": q.tolist(), "k": 10, "include": []}
            exact = client.post(f"/v1/collections/{collection}/search", json={**body, "exact": True}).json()["results"]
            top = np.sort(truth)[::-1][: min(10, len(ids))]
            got = np.array([h["score"] for h in exact])
            tol = 2e-3 if collection == "mv" else 1e-4
            assert len(got) == len(top) and np.allclose(got, top, atol=tol), (collection, got, top)
            for h in exact:
                assert abs(truth[ids.index(h["id"])] - h["score"]) <= tol, (collection, h)
            if collection != "mv":
                graph = client.post(f"/v1/collections/{collection}/search", json={**body, "ef": 64}).json()["results"]
                recalls.append(np.mean([truth[ids.index(h["id"])] >= top[-1] - tol for h in graph]) if graph else 0.0)
    assert not recalls or np.mean(recalls) >= 0.9, f"graph recall {np.mean(recalls):.3f}"
    return {
        "resolved": resolved,
        "documents_checked": checked,
        "graph_recall": float(np.mean(recalls)) if recalls else None,
    }


def _scores(collection: str, q: np.ndarray, X: np.ndarray) -> np.ndarray:
    metric = COLLECTIONS[collection]["metric"]
    q64, X64 = q.astype(np.float64), X.astype(np.float64)
    if metric == "cosine":
        return X64 @ (q64 / np.linalg.norm(q64))
    if metric == "ip":
        return X64 @ q64
    return -np.linalg.norm(X64 - q64, axis=1)


def _chamfer(Q: np.ndarray, sets: list[np.ndarray]) -> np.ndarray:
    Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    return np.array([(Q @ P.T).max(axis=1).sum() for P in sets])


def universe_of(ledger: Ledger, ops_ids: dict[str, set[str]]) -> dict[str, set[str]]:
    return {c: ops_ids.get(c, set()) | set(ledger.state[c]) for c in COLLECTIONS}


def run_until(
    server,
    ledger: Ledger,
    workers: int,
    seconds: float,
    seed: int,
    refits: bool = True,
    kill_after: float | None = None,
) -> tuple[dict[str, set[str]], bool]:
    """Run `workers` until `seconds` pass, the server dies (a crash point), or `kill_after`
    seconds pass and the harness kills it (SIGKILL). Returns the ids touched and whether the
    server died."""
    stop = threading.Event()
    pool = [Worker(i, server.url, ledger, stop, seed * 1000 + i, refits=refits and i == 0) for i in range(workers)]
    for w in pool:
        w.start()
    deadline = time.monotonic() + seconds
    died = False
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            died = True
            break
        if kill_after is not None and time.monotonic() >= deadline - seconds + kill_after:
            server.kill()
            died = True
            break
        time.sleep(0.05)
    stop.set()
    for w in pool:
        w.join(120)
    touched: dict[str, set[str]] = {c: set() for c in COLLECTIONS}
    for c in COLLECTIONS:
        for w in pool:
            touched[c] |= {f"w{w.n}-{i}" for i in range(w.pool)}
    return touched, died


# -- a collection dropped and re-created while others use it ----------------------------------------
def churn_a_collection(url: str, stop: threading.Event, counts: dict, errors: list) -> None:
    """Create, fill, search and drop one collection over and over while others use it too."""
    rng = np.random.default_rng(5)
    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            calls = [
                ("post", "/v1/collections", {"name": "eph", "dim": 8, "dims": [4, 8]}),
                (
                    "put",
                    "/v1/collections/eph/documents",
                    {"documents": [{"id": str(i), "vector": rng.standard_normal(8).tolist()} for i in range(300)]},
                ),
                ("post", "/v1/collections/eph/elasticizer/refit", {}),
                ("post", "/v1/collections/eph/search", {"vector": rng.standard_normal(8).tolist(), "dim": 4}),
                ("delete", "/v1/collections/eph", None),
            ]
            for method, path, body in calls:
                r = c.request(method, path, json=body)
                counts[r.status_code] = counts.get(r.status_code, 0) + 1
                if r.status_code >= 500:
                    errors.append(f"{method} {path}: {r.status_code} {r.text[:200]}")


def use_the_churned_collection(url: str, stop: threading.Event, counts: dict, errors: list) -> None:
    rng = np.random.default_rng(6)
    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            for method, path, body in [
                ("post", "/v1/collections/eph/search", {"vector": rng.standard_normal(8).tolist(), "k": 5}),
                ("put", "/v1/collections/eph/documents", {"documents": [{"id": "x", "vector": [1.0] * 8}]}),
                ("get", "/v1/collections/eph", None),
                ("get", "/healthz", None),
            ]:
                r = c.request(method, path, json=body)
                counts[r.status_code] = counts.get(r.status_code, 0) + 1
                if r.status_code >= 500:
                    errors.append(f"{method} {path}: {r.status_code} {r.text[:200]}")


# -- snapshots, restores and archive round trips while the server is killed -------------------------
ARCHIVED = {"name": "vault", "dim": 8, "metric": "l2", "hnsw": {"m": 8, "ef_construction": 64}}
ARCHIVE_COPY = "vault-copy"  # where uploaded archives of `vault` are also restored


class Archivist:
    """Snapshots `vault`, restores it in place from one of them, and round-trips archives
    (download, then upload over `vault` or under `vault-copy`, replacing it) while it also
    writes to and deletes from `vault` and the server is killed. It keeps its own ledger:

    - `state`: each collection's acknowledged documents, id → tag (the tag is `metadata.t`, and
      names the vector `vectors[tag]`, shape (8,)); None for a collection that does not exist;
    - `snapshots`: each acknowledged snapshot's id → the documents it holds;
    - `pending`: the op whose answer the kill swallowed: its collection and the states it may
      have left, ("snapshot", [state]) for a snapshot that may or may not have been finished,
      or ("unsnapshot", [id]) for one that may or may not have been deleted.

    One client thread at a time (`drive`): its ops never race each other, so each acknowledged
    snapshot holds exactly the state acknowledged before it. `check` runs after each restart."""

    IDS = 40

    def __init__(self, seed: int):
        self.pick = random.Random(seed)
        self.rng = np.random.default_rng(seed)
        self.state: dict[str, dict[str, int] | None] = {ARCHIVED["name"]: {}, ARCHIVE_COPY: None}
        self.snapshots: dict[str, dict[str, int]] = {}
        self.vectors: dict[int, np.ndarray] = {}
        self.pending: tuple[str, list] | None = None
        self.counts = dict.fromkeys(
            ("upsert", "delete", "snapshot", "unsnapshot", "download", "restore", "upload", "drop"), 0
        )
        self.errors: list[str] = []

    def drive(self, url: str, stop: threading.Event) -> threading.Thread:
        """Start a client thread against the server at `url`; it ends at `stop` or when the server dies."""
        thread = threading.Thread(target=self._run, args=(url, stop), name="chaos-archivist", daemon=True)
        thread.start()
        return thread

    def _run(self, url: str, stop: threading.Event) -> None:
        vault = ARCHIVED["name"]
        with httpx.Client(base_url=url, timeout=60) as c:
            try:
                r = c.post("/v1/collections", json=ARCHIVED)
                if r.status_code not in (201, 409):
                    self.errors.append(f"create {vault}: {r.status_code} {r.text[:200]}")
                while not stop.is_set():
                    self._step(c, vault, self.pick.random())
                    time.sleep(0.02)
            except httpx.TransportError:  # the server is gone; `pending` says what may have happened
                return
            except Exception as exc:  # a broken promise in an answer: `check` reports it
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _step(self, c: httpx.Client, vault: str, roll: float) -> None:
        docs = self.state[vault]
        assert docs is not None
        if roll < 0.4:
            ids = self.pick.sample(range(self.IDS), self.pick.randint(1, 6))
            new = dict(docs)
            body = []
            for i in ids:
                tag = len(self.vectors)
                self.vectors[tag] = self.rng.standard_normal(ARCHIVED["dim"]).astype(np.float32).round(4)
                new[f"a{i}"] = tag
                body.append({"id": f"a{i}", "vector": self.vectors[tag].tolist(), "metadata": {"t": tag}})
            self._apply(c, "upsert", vault, new, "put", f"/v1/collections/{vault}/documents", json={"documents": body})
        elif roll < 0.5 and docs:
            gone = self.pick.sample(sorted(docs), min(len(docs), self.pick.randint(1, 3)))
            new = {k: v for k, v in docs.items() if k not in gone}
            self._apply(
                c, "delete", vault, new, "post", f"/v1/collections/{vault}/documents/delete", json={"ids": gone}
            )
        elif roll < 0.65:
            self.pending = ("snapshot", [dict(docs)])
            r = c.post(f"/v1/collections/{vault}/snapshots")
            self.pending = None
            if self._expect(r, 201, "snapshot"):
                self.snapshots[r.json()["id"]] = dict(docs)
                if len(self.snapshots) > 4:  # keep the disk bounded: delete the oldest
                    oldest = min(self.snapshots)
                    self.pending = ("unsnapshot", [oldest])
                    r = c.delete(f"/v1/collections/{vault}/snapshots/{oldest}")
                    self.pending = None
                    if self._expect(r, 204, "unsnapshot"):
                        del self.snapshots[oldest]
        elif roll < 0.8 and self.snapshots:
            sid = self.pick.choice(sorted(self.snapshots))
            self._apply(
                c, "restore", vault, self.snapshots[sid], "post", f"/v1/collections/{vault}/snapshots/{sid}/restore"
            )
        elif roll < 0.95 and self.snapshots:
            sid = self.pick.choice(sorted(self.snapshots))
            archive = c.get(f"/v1/collections/{vault}/snapshots/{sid}")
            if not self._expect(archive, 200, "download"):
                return
            target = self.pick.choice([vault, ARCHIVE_COPY])
            self._apply(
                c,
                "upload",
                target,
                self.snapshots[sid],
                "post",
                "/v1/snapshots/restore",
                status=201,
                params={"collection": target, "replace": "true"},
                content=archive.content,
                headers={"content-type": "application/x-tar"},
            )
        elif self.state[ARCHIVE_COPY] is not None:
            self._apply(c, "drop", ARCHIVE_COPY, None, "delete", f"/v1/collections/{ARCHIVE_COPY}", status=204)

    def _apply(
        self, c: httpx.Client, kind: str, name: str, outcome: dict | None, method: str, path: str, status=200, **kw
    ):
        """Send one op that moves `name` to `outcome` (None: dropped); until its answer comes,
        either state may be the server's."""
        self.pending = (name, [self.state[name], outcome])
        r = c.request(method, path, **kw)
        self.pending = None
        if self._expect(r, status, kind):
            self.state[name] = None if outcome is None else dict(outcome)

    def _expect(self, r: httpx.Response, status: int, kind: str) -> bool:
        if r.status_code == status:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            return True
        self.errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
        return False

    # -- after a restart ------------------------------------------------------------------------
    def check(self, client: httpx.Client, data_dir) -> dict[str, int]:
        """The server against this ledger: each collection holds one state it may hold (the
        acknowledged one, or the swallowed op's), with exact searches to match; every
        acknowledged snapshot is listed; nothing a crash left lies on disk. Returns counts."""
        assert not self.errors, self.errors[:3]
        pending, self.pending = self.pending, None
        for name in (ARCHIVED["name"], ARCHIVE_COPY):
            candidates = [self.state[name]]
            if pending and pending[0] == name:
                candidates = pending[1]
            got = self._read_state(client, name)
            assert got in candidates, f"{name}: the server holds {got}, the ledger allows {candidates}"
            self.state[name] = got
            if got:
                self._check_search(client, name, got)
        listed = {s["id"] for s in client.get(f"/v1/collections/{ARCHIVED['name']}/snapshots").json()["snapshots"]}
        known = set(self.snapshots)
        if pending and pending[0] == "unsnapshot" and pending[1][0] not in listed:
            known.discard(pending[1][0])
            del self.snapshots[pending[1][0]]
        new = listed - known
        assert known <= listed, f"acknowledged snapshots missing: {sorted(known - listed)}"
        assert len(new) <= (1 if pending and pending[0] == "snapshot" else 0), f"unknown snapshots listed: {new}"
        for sid in new:  # a snapshot finished before the kill swallowed its answer
            self.snapshots[sid] = pending[1][0]
        collections = sorted(os.listdir(os.path.join(data_dir, "collections")))
        assert all(not n.startswith((".restore-", ".trash-", ".replaced-", ".new-")) for n in collections), collections
        backups = os.path.join(data_dir, "backups")
        left = os.listdir(os.path.join(backups, ".uploads")) if os.path.isdir(os.path.join(backups, ".uploads")) else []
        assert not left, f"uploads left: {left}"
        folder = os.path.join(backups, ARCHIVED["name"])
        files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        assert files == sorted(f"{s}.{ext}" for s in listed for ext in ("json", "tar")), files
        return {"snapshots": len(listed)}

    def _read_state(self, client: httpx.Client, name: str) -> dict[str, int] | None:
        if client.get(f"/v1/collections/{name}").status_code == 404:
            return None
        got = {}
        for i in range(self.IDS):
            r = client.get(f"/v1/collections/{name}/documents/a{i}")
            if r.status_code == 200:
                got[f"a{i}"] = r.json()["metadata"]["t"]
            else:
                assert r.status_code == 404, r.text
        count = client.get(f"/v1/collections/{name}").json()["documents"]
        assert count == len(got), f"{name}: {count} documents, {len(got)} found by id"
        return got

    def _check_search(self, client: httpx.Client, name: str, docs: dict[str, int]) -> None:
        ids = sorted(docs)
        X = np.stack([self.vectors[docs[i]] for i in ids])
        q = self.rng.standard_normal(ARCHIVED["dim"]).astype(np.float32)
        best = ids[int(np.argmin(((X - q) ** 2).sum(axis=1)))]
        for exact in (True, False):
            body = {"vector": q.tolist(), "k": 1, "include": [], "exact": exact}
            hits = client.post(f"/v1/collections/{name}/search", json=body).json()["results"]
            assert hits and hits[0]["id"] == best, (name, exact, hits, best)
