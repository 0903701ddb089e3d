"""Races: every operation on one collection at once, beside restores, uploads, drops and
encoder upgrades of that same collection, on a real server over loopback.

Each scenario runs actor threads for `--seconds`, each picking operations at random, then
checks what is left. An answer is "bad" when it is a 5xx other than the two a client retries
(`503 collection_restoring` during a restore's swap, `503 collection_changing` when a
request's collection changed generation three times while it ran), when the connection drops,
or when a download's body is shorter than its length. Every scenario also fails on a
traceback or an ERROR line in the server's log.

- `restores`: a vector collection with a PCA funnel: writes, deletes, searches (filtered,
  batched), PATCH, refits, recall measurements, snapshots and restores in place.
- `upgrades`: a text collection: upgrades started, cut over, rolled back, finalized and
  aborted, beside text writes, searches, snapshots, restores, uploads, drops and re-creates.
  After the run no upgrade may be left "fitting" or "backfilling" without running, and each
  live one must abort; the server then restarts and must come up with no failed collection.
- `served-upgrades`: upgrades one at a time that pass their gate (half of them blends on
  labelled queries) and serve for a few seconds before a forced cut-over (then rollback or
  finalize) or an abort, beside single and batched text searches and writes: some searches
  must have been served through a map and some through a blend.
- `multivector`: a multi-vector collection (token matrices) and a text collection: every
  search mode (dense, keyword, hybrid, exact, batch), scrolls, writes and deletes beside
  snapshots, restores, uploads, drops and re-creates.
- `archives`: snapshots taken, downloaded, restored and deleted, the same ones at once.
- `replicas`: two serving replicas and the maintenance process over one milvus-lite server:
  writes, deletes, searches, scrolls, PATCHes and recall measurements through both replicas
  beside drops and re-creates of the same names with another dim from either. After the run a
  replica started on an empty data directory must list what the others list, with the same
  document counts and settings.
- `shared-upgrades`: the same processes with a text collection: the maintenance process
  starts, cuts over, rolls back, finalizes and aborts encoder upgrades while both replicas
  write (each write lands in both generations), search, drop and re-create it. After the run
  no upgrade may be left live without running, and the fresh replica must list the same.
- `upkeep`: the background work at full tilt (index snapshots every 0.3 s, graph rebuilds
  after 5% deletes, every search sampled for the recall controllers) on a vector collection
  with a PCA funnel and a multi-vector one, both with recall targets, beside writes, deletes, searches, PATCHes, refits, restores, drops and
  re-creates. After the run each collection's graphs must hold what its store holds: the
  count agrees with a scroll, and a wide graph search for a stored document's own vector(s)
  finds its exact nearest.

    python bench/races.py [--seconds 90] [--only upgrades archives]

Prints a table; exits 1 when any scenario saw a bad answer, logged an error or failed a check.
"""

import argparse
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.datasets import wordnet_glosses
from tests.support.server import Server

RETRYABLE = {"collection_restoring", "collection_changing"}  # 503s a client retries
LIVE_STATES = ("fitting", "backfilling", "cut_over")
GLOSSES = wordnet_glosses()[:1500]


class Tally:
    """Answers by (operation, status, error code), and the bad ones in full."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.bad: list[str] = []
        self.lock = threading.Lock()

    def add(self, kind: str, r: httpx.Response) -> None:
        code = ""
        if r.status_code >= 400:
            try:
                code = r.json()["error"]["code"]
            except Exception:
                code = "?"
        short = (
            r.request.method == "GET"
            and "/snapshots/" in r.request.url.path
            and r.status_code == 200
            and len(r.content) != int(r.headers.get("content-length", len(r.content)))
        )
        with self.lock:
            self.counts[(kind, r.status_code, code)] += 1
            if (r.status_code >= 500 and code not in RETRYABLE) or short:
                self.bad.append(f"{kind}: {r.status_code} {r.text[:200]}")

    def failed(self, kind: str, exc: Exception) -> None:
        with self.lock:
            self.counts[(kind, 0, type(exc).__name__)] += 1
            self.bad.append(f"{kind}: {exc!r}")

    def summary(self) -> dict[str, int]:
        ok = sum(n for (_, status, _), n in self.counts.items() if 0 < status < 400)
        rejected = sum(n for (_, status, _), n in self.counts.items() if 400 <= status < 500)
        retry = sum(n for (_, status, code), n in self.counts.items() if status == 503 and code in RETRYABLE)
        return {"ok": ok, "4xx": rejected, "503 to retry": retry, "bad": len(self.bad)}

    def refusals(self, top: int = 8) -> str:
        """The most frequent error answers, as `operation status code ×n`."""
        by = Counter({key: n for key, n in self.counts.items() if key[1] >= 400})
        return ", ".join(f"{kind} {status} {code} ×{n}" for (kind, status, code), n in by.most_common(top))


def run_actors(url: str | list[str], seconds: float, actors: list[list[str]], op: Callable, tally: Tally) -> None:
    """One thread per list of operation kinds, each picking one at random until time is up
    (with several urls, actor i talks to urls[i % len(urls)])."""
    stop = threading.Event()
    urls = [url] if isinstance(url, str) else url

    def actor(kinds: list[str], seed: int) -> None:
        r = random.Random(seed)
        with httpx.Client(base_url=urls[seed % len(urls)], timeout=300) as c:
            while not stop.is_set():
                kind = r.choice(kinds)
                try:
                    resp = op(kind, c, r)
                except Exception as exc:  # a dropped connection, a timeout
                    tally.failed(kind, exc)
                    continue
                tally.add(kind, resp)

    threads = [threading.Thread(target=actor, args=(kinds, i)) for i, kinds in enumerate(actors)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()


class Archives:
    """The newest few snapshot ids of each collection (shared by the actors)."""

    def __init__(self) -> None:
        self.ids: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def add(self, c: httpx.Client, name: str, r: httpx.Response, keep: int = 4) -> httpx.Response:
        if r.status_code == 201:
            with self.lock:
                ids = self.ids.setdefault(name, [])
                ids.append(r.json()["id"])
                old = ids.pop(0) if len(ids) > keep else None
            if old is not None:
                c.delete(f"/v1/collections/{name}/snapshots/{old}")
        return r

    def pick(self, name: str, r: random.Random) -> str:
        with self.lock:
            ids = self.ids.get(name) or ["20260101T000000Z-00000000"]
            return r.choice(ids)


def snapshot_ops(kind: str, c: httpx.Client, r: random.Random, name: str, archives: Archives):
    """Snapshot, restore in place, upload with replace, download, delete: None for other kinds."""
    if kind == "snap":
        return archives.add(c, name, c.post(f"/v1/collections/{name}/snapshots"))
    if kind == "restore":
        return c.post(f"/v1/collections/{name}/snapshots/{archives.pick(name, r)}/restore")
    if kind == "download":
        return c.get(f"/v1/collections/{name}/snapshots/{archives.pick(name, r)}")
    if kind == "unsnap":
        return c.delete(f"/v1/collections/{name}/snapshots/{archives.pick(name, r)}")
    if kind == "upload":
        archive = c.get(f"/v1/collections/{name}/snapshots/{archives.pick(name, r)}")
        if archive.status_code != 200:
            return archive
        return c.post(
            f"/v1/snapshots/restore?collection={name}&replace=true",
            content=archive.content,
            headers={"content-type": "application/x-tar"},
        )
    return None


def churn(kind: str, c: httpx.Client, r: random.Random, path: str, share: float, create: Callable):
    """`drop`: the collection at `path` is dropped with probability `share` (else read);
    `create`: `create()` makes it again. None for other kinds."""
    if kind == "drop":
        return c.delete(path) if r.random() < share else c.get(path)
    if kind == "create":
        return create()
    return None


def gloss_doc(i: int, tag: str = "") -> dict:
    _, pos, lemmas, gloss = GLOSSES[i]
    return {"id": str(i), "text": f"{lemmas}: {gloss}{tag}", "metadata": {"pos": pos, "g": i % 4}}


def put_ok(c: httpx.Client, path: str, body: dict) -> None:
    c.put(path, json=body).raise_for_status()


# -- scenarios ---------------------------------------------------------------------------------
def restores(url: str, seconds: float, tally: Tally) -> list[str]:
    name, archives = "mix", Archives()
    with httpx.Client(base_url=url, timeout=300) as c:
        create = {"name": name, "dim": 16, "dims": [8, 16], "elasticizer": {"kind": "pca", "fit_at": 100}}
        c.post("/v1/collections", json=create).raise_for_status()
        rng = np.random.default_rng(0)
        docs = [
            {"id": str(i), "vector": rng.standard_normal(16).tolist(), "metadata": {"g": i % 5}} for i in range(400)
        ]
        put_ok(c, f"/v1/collections/{name}/documents", {"documents": docs})
        archives.add(c, name, c.post(f"/v1/collections/{name}/snapshots"))

    def op(kind, c, r):
        def v():
            return np.random.default_rng(r.randrange(1 << 30)).standard_normal(16).tolist()

        path = f"/v1/collections/{name}"
        if kind == "put":
            docs = [{"id": str(r.randrange(600)), "vector": v(), "metadata": {"g": r.randrange(5)}} for _ in range(5)]
            return c.put(f"{path}/documents", json={"documents": docs})
        if kind == "delete":
            return c.post(f"{path}/documents/delete", json={"ids": [str(r.randrange(600)) for _ in range(3)]})
        if kind == "search":
            body = {"vector": v(), "k": 5, "dim": r.choice([8, 16]), "include": ["metadata"]}
            if r.random() < 0.3:
                body["filter"] = {"g": r.randrange(5)}
            return c.post(f"{path}/search", json=body)
        if kind == "batch":
            return c.post(f"{path}/search/batch", json={"searches": [{"vector": v(), "k": 3} for _ in range(10)]})
        if kind == "patch":
            body = r.choice([{"target_recall": 0.9}, {"target_recall": None}, {"limits": {"max_k": r.randint(5, 100)}}])
            return c.patch(path, json=body)
        if kind == "refit":
            return c.post(f"{path}/elasticizer/refit", json={})
        if kind == "recall":
            return c.post(f"{path}/recall", json={"queries": 10})
        if kind == "get":
            return c.get(f"{path}/documents/{r.randrange(600)}")
        return snapshot_ops(kind, c, r, name, archives)

    every = ["put", "delete", "search", "batch", "patch", "refit", "recall", "snap", "restore", "get"]
    run_actors(url, seconds, [every] * 4 + [["put", "search", "delete", "get"]] * 4, op, tally)
    return []


def upgrades(url: str, seconds: float, tally: Tally, models: list[str]) -> list[str]:
    name, archives = "up", Archives()

    def create(c: httpx.Client) -> httpx.Response:
        """The collection and its documents (the answer to the writes: a restore may be swapping it)."""
        r = c.post("/v1/collections", json={"name": name})
        if r.status_code != 201:
            return r
        return c.put(f"/v1/collections/{name}/documents", json={"documents": [gloss_doc(i) for i in range(400)]})

    with httpx.Client(base_url=url, timeout=300) as c:
        create(c).raise_for_status()
        archives.add(c, name, c.post(f"/v1/collections/{name}/snapshots"))

    def some_upgrade(c, r) -> str | None:
        listed = c.get(f"/v1/collections/{name}/upgrades")
        if listed.status_code != 200 or not listed.json()["upgrades"]:
            return None
        ups = listed.json()["upgrades"]
        live = [u for u in ups if u["state"] in LIVE_STATES]
        return (live or ups)[-1]["id"] if r.random() < 0.9 else r.choice(ups)["id"]

    def op(kind, c, r):
        path = f"/v1/collections/{name}"
        if kind == "put":
            docs = [gloss_doc(r.randrange(600), f" v{r.randrange(3)}") for _ in range(4)]
            return c.put(f"{path}/documents", json={"documents": docs})
        if kind == "delete":
            return c.post(f"{path}/documents/delete", json={"ids": [str(r.randrange(600)) for _ in range(2)]})
        if kind == "search":
            body = {"query": GLOSSES[r.randrange(600)][3], "k": 5, "include": ["metadata", "text"]}
            answer = c.post(f"{path}/search", json=body)
            if answer.status_code == 200:
                served[(answer.json().get("upgrade") or {}).get("queries", "no upgrade")] += 1
            return answer
        if kind == "start":
            body = {"model": r.choice(models), "sample": r.choice([50, 200])}
            if r.random() < 0.5:  # a blend, on labelled queries it passes (each text finds its own document)
                labelled = [{"query": gloss_doc(i)["text"], "relevant": [str(i)]} for i in range(0, 400, 20)]
                body |= {"maps": ["ridge", "blend"], "labelled_queries": labelled}
            return c.post(f"{path}/upgrades", json=body)
        if kind in ("cutover", "rollback", "finalize", "abort", "status"):
            upgrade = some_upgrade(c, r)
            if upgrade is None:
                return c.get(path)
            if kind == "status":
                return c.get(f"{path}/upgrades/{upgrade}")
            return c.post(f"{path}/upgrades/{upgrade}/{kind}", json={"force": True} if kind == "cutover" else None)
        if kind in ("drop", "create"):
            return churn(kind, c, r, path, 0.1, lambda: create(c))
        return snapshot_ops(kind, c, r, name, archives)

    lifecycle = ["start", "start", "cutover", "rollback", "finalize", "abort", "status"]
    actors = [
        ["put", "delete", "put"],
        ["put", "search"],
        ["search", "status"],
        lifecycle,
        [*lifecycle, "snap", "restore"],
        ["snap", "restore", "upload", "download"],
        ["drop", "create"],
    ]
    served: Counter[str] = Counter()  # how the searches were served
    run_actors(url, seconds, actors, op, tally)
    print(f"  upgrades: searches answered, by how the upgrade served them: {dict(served)}")
    return check_upgrades(url, name)


def served_upgrades(url: str, seconds: float, tally: Tally, models: list[str]) -> list[str]:
    """Upgrades that live long enough to serve: one at a time, each fitted on 600 of the 1,000
    documents (so its gate passes), half of them blends on labelled queries, each ended after a
    few seconds of backfill by a forced cut-over (then a rollback or a finalize) or an abort,
    while searches (single, and batches of a hybrid and a dense one) and writes go on. Every
    search is a 200, and some must have been served through a map and some through a blend."""
    name, served = "sv", Counter()
    docs = [gloss_doc(i) for i in range(1000)]
    with httpx.Client(base_url=url, timeout=300) as c:
        c.post("/v1/collections", json={"name": name}).raise_for_status()
        for start in range(0, len(docs), 250):
            put_ok(c, f"/v1/collections/{name}/documents", {"documents": docs[start : start + 250]})
    labelled = [{"query": docs[i]["text"], "relevant": [docs[i]["id"]]} for i in range(0, 1000, 25)]

    def op(kind, c, r):
        path = f"/v1/collections/{name}"
        if kind == "put":
            return c.put(f"{path}/documents", json={"documents": [gloss_doc(r.randrange(1000), " v2")]})
        if kind in ("search", "batch"):
            time.sleep(0.05)  # users pause: the upgrade's embedding waits behind every user encode
            text = GLOSSES[r.randrange(1200)][3]
            if kind == "search":
                answer = c.post(f"{path}/search", json={"query": text, "k": 5})
                searches = [answer.json()] if answer.status_code == 200 else []
            else:
                body = {"searches": [{"query": text, "mode": "hybrid", "k": 3}, {"query": text, "k": 3}]}
                answer = c.post(f"{path}/search/batch", json=body)
                searches = answer.json()["results"] if answer.status_code == 200 else []
            for one in searches:
                served[(one.get("upgrade") or {}).get("queries", "no upgrade")] += 1
            return answer
        # kind == "cycle": one upgrade, start to end
        current = c.get(path).json().get("model")  # after a finalize, the rotated model serves
        body = {"model": models[0] if current != models[0] else "all-MiniLM-L6-v2", "sample": 600}
        if r.random() < 0.5:
            body |= {"maps": ["orthogonal", "blend"], "labelled_queries": labelled}
        started = c.post(f"{path}/upgrades", json=body)
        if started.status_code != 202:
            return started
        upgrade = f"{path}/upgrades/{started.json()['id']}"
        deadline = time.monotonic() + 120
        while c.get(upgrade).json()["state"] == "fitting" and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(r.uniform(0.5, 4.0))
        if r.random() < 0.3:
            return c.post(f"{upgrade}/abort")
        cut = c.post(f"{upgrade}/cutover", json={"force": True})
        if cut.status_code != 200:
            return cut
        return c.post(f"{upgrade}/{r.choice(['rollback', 'finalize'])}")

    run_actors(url, seconds, [["cycle"], ["search"], ["search"], ["batch"], ["put", "search"]], op, tally)
    print(f"  served-upgrades: searches answered, by how the upgrade served them: {dict(served)}")
    unserved = [f"no search was served {mode!r}" for mode in ("mapped", "blended") if not served[mode]]
    return unserved + check_upgrades(url, name)


def check_upgrades(url: str, name: str) -> list[str]:
    """Every upgrade the records call live is running (it reports progress) and aborts."""
    problems = []
    with httpx.Client(base_url=url, timeout=300) as c:
        if c.get(f"/v1/collections/{name}").status_code == 404:
            c.post("/v1/collections", json={"name": name}).raise_for_status()
        for u in c.get(f"/v1/collections/{name}/upgrades").json()["upgrades"]:
            if u["state"] not in LIVE_STATES:
                continue
            if u["progress"] is None:
                problems.append(f"upgrade {u['id']} is {u['state']} but nothing runs it")
            if u["state"] == "cut_over":
                r = c.post(f"/v1/collections/{name}/upgrades/{u['id']}/finalize")
            else:
                r = c.post(f"/v1/collections/{name}/upgrades/{u['id']}/abort")
            if r.status_code != 200:
                problems.append(f"upgrade {u['id']} ({u['state']}) cannot end: {r.status_code} {r.text[:200]}")
    return problems


def multivector(url: str, seconds: float, tally: Tally) -> list[str]:
    archives = Archives()

    def tokens(r: random.Random, n: int | None = None) -> list:
        rows = n or r.randint(1, 12)
        return np.random.default_rng(r.randrange(1 << 30)).standard_normal((rows, 16)).round(4).tolist()

    def create(c: httpx.Client, name: str) -> httpx.Response:
        if name == "mv":
            resp = c.post("/v1/collections", json={"name": "mv", "multivector": {"token_dim": 16}})
            r = random.Random(0)
            docs = [
                {"id": str(i), "vectors": tokens(r), "text": GLOSSES[i][3], "metadata": {"g": i % 4}}
                for i in range(300)
            ]
        else:
            resp = c.post("/v1/collections", json={"name": "hy", "dims": [96, 384]})
            docs = [gloss_doc(i) for i in range(300)]
        if resp.status_code != 201:
            return resp
        return c.put(f"/v1/collections/{name}/documents", json={"documents": docs})  # a restore may be swapping it

    with httpx.Client(base_url=url, timeout=300) as c:
        for name in ("mv", "hy"):
            create(c, name).raise_for_status()
            archives.add(c, name, c.post(f"/v1/collections/{name}/snapshots"))

    def op(kind, c, r):
        name = r.choice(["mv", "hy"])
        path = f"/v1/collections/{name}"
        if kind == "put":
            docs = [gloss_doc(r.randrange(500)) for _ in range(3)]
            if name == "mv":
                docs = [{**d, "vectors": tokens(r)} for d in docs]
            return c.put(f"{path}/documents", json={"documents": docs})
        if kind == "delete":
            return c.post(f"{path}/documents/delete", json={"ids": [str(r.randrange(500)) for _ in range(2)]})
        if kind == "search":
            mode = r.choice(["dense", "keyword", "hybrid"])
            text = GLOSSES[r.randrange(1500)][3]
            body: dict = {"k": 5, "mode": mode, "include": ["metadata", "text"]}
            if r.random() < 0.3:
                body["filter"] = {"g": r.randrange(4)}
            if mode == "keyword":
                body["query"] = text
            elif name == "mv":
                body.update(vectors=tokens(r, 4), candidates=r.choice([20, 50]))
                if mode == "hybrid":
                    body["keyword_query"] = text
            else:
                body.update(query=text, dim=r.choice([96, 384]))
            return c.post(f"{path}/search", json=body)
        if kind == "exact":
            query = {"vectors": tokens(r, 3)} if name == "mv" else {"query": GLOSSES[r.randrange(1500)][3]}
            return c.post(f"{path}/search", json={"k": 3, "exact": True, **query})
        if kind == "batch":
            one = (
                (lambda: {"vectors": tokens(r, 2)})
                if name == "mv"
                else (lambda: {"query": GLOSSES[r.randrange(1500)][3]})
            )
            return c.post(f"{path}/search/batch", json={"searches": [{"k": 3, **one()} for _ in range(4)]})
        if kind == "scroll":
            return c.get(f"{path}/documents", params={"limit": 40})
        if kind == "get":
            return c.get(f"{path}/documents/{r.randrange(500)}")
        if kind == "recall":
            return c.post(f"{path}/recall", json={"queries": 5})
        if kind in ("drop", "create"):
            return churn(kind, c, r, path, 0.15, lambda: create(c, name))
        return snapshot_ops(kind, c, r, name, archives)

    actors = [
        ["put", "delete", "search"],
        ["search", "exact", "batch", "scroll", "get"],
        ["put", "search", "recall", "scroll"],
        ["snap", "restore", "upload", "search"],
        ["drop", "create", "snap", "search"],
        ["put", "batch", "delete", "get"],
    ]
    run_actors(url, seconds, actors, op, tally)
    return []


def archives_race(url: str, seconds: float, tally: Tally) -> list[str]:
    name, archives = "sr", Archives()
    with httpx.Client(base_url=url, timeout=300) as c:
        c.post("/v1/collections", json={"name": name, "dim": 8}).raise_for_status()
        rng = np.random.default_rng(1)
        docs = [{"id": str(i), "vector": rng.standard_normal(8).tolist()} for i in range(1000)]
        put_ok(c, f"/v1/collections/{name}/documents", {"documents": docs})

    def op(kind, c, r):
        return snapshot_ops(kind, c, r, name, archives)

    actors = [["snap"], ["unsnap", "download"], ["download", "restore"], ["unsnap", "restore", "download"]]
    run_actors(url, seconds, actors, lambda kind, c, r: op(kind, c, r), tally)
    return []


def upkeep(url: str, seconds: float, tally: Tally, log: Path) -> list[str]:
    archives = Archives()
    dense = {"name": "ft", "dim": 16, "dims": [8, 16], "elasticizer": {"kind": "pca", "fit_at": 200}}
    multi = {"name": "mt", "multivector": {"token_dim": 16}}

    def vector(r: random.Random, shape) -> list:
        return np.random.default_rng(r.randrange(1 << 30)).standard_normal(shape).round(4).tolist()

    def doc(name: str, i: int, r: random.Random) -> dict:
        body = {"vector": vector(r, 16)} if name == "ft" else {"vectors": vector(r, (r.randint(1, 6), 16))}
        return {"id": str(i), "metadata": {"g": i % 3}, **body}

    def create(c: httpx.Client, name: str) -> httpx.Response:
        resp = c.post("/v1/collections", json={**(dense if name == "ft" else multi), "target_recall": 0.95})
        if resp.status_code != 201:
            return resp
        r = random.Random(name)
        return c.put(f"/v1/collections/{name}/documents", json={"documents": [doc(name, i, r) for i in range(600)]})

    with httpx.Client(base_url=url, timeout=300) as c:
        for name in ("ft", "mt"):
            create(c, name).raise_for_status()
            archives.add(c, name, c.post(f"/v1/collections/{name}/snapshots"))

    def op(kind, c, r):
        name = r.choice(["ft", "mt"])
        path = f"/v1/collections/{name}"
        if kind == "put":
            return c.put(f"{path}/documents", json={"documents": [doc(name, r.randrange(900), r) for _ in range(8)]})
        if kind == "delete":
            # wide deletes: the graphs must pass rebuild_min_deleted (64) between upserts reusing the slots
            return c.post(f"{path}/documents/delete", json={"ids": [str(r.randrange(900)) for _ in range(40)]})
        if kind == "search":
            body: dict = {"k": 10}
            if name == "ft":
                body.update(vector=vector(r, 16), dim=r.choice([8, 16]))
            else:
                body.update(vectors=vector(r, (3, 16)))
            if r.random() < 0.2:
                body["filter"] = {"g": r.randrange(3)}
            return c.post(f"{path}/search", json=body)
        if kind == "patch":
            body = r.choice([{"target_recall": r.choice([0.9, 0.95, 0.99])}, {"target_recall": None}])
            return c.patch(path, json=body)
        if kind == "refit":
            return c.post(f"{path}/elasticizer/refit", json={}) if name == "ft" else c.get(path)
        if kind == "recall":
            return c.post(f"{path}/recall", json={"queries": 10})
        if kind in ("drop", "create"):
            return churn(kind, c, r, path, 0.1, lambda: create(c, name))
        return snapshot_ops(kind, c, r, name, archives)

    actors = [
        ["put", "delete", "put"],
        ["delete", "put", "search"],
        ["search", "search", "recall"],
        ["search", "patch", "refit"],
        ["snap", "restore", "upload", "search"],
        ["drop", "create", "search"],
    ]
    run_actors(url, seconds, actors, op, tally)
    return check_graphs(url, ["ft", "mt"]) + background_ran(url, log)


def background_ran(url: str, log: Path) -> list[str]:
    """The scenario proves nothing unless its background work ran: rebuilds, rotation fits, recall re-runs."""
    text = log.read_text(errors="replace")
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    evaluated = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("vecnest_recall_samples_total") and 'outcome="evaluated"' in line
    )
    ran = {
        "rebuilds": text.count("rebuilding the index of"),
        "rotation fits": text.count("fitting the PCA rotation of"),
        "recall re-runs (since the last restart)": evaluated,
    }
    print(f"  upkeep: background work: {ran}", flush=True)
    return [f"upkeep: no {what} ran" for what, n in ran.items() if not n]


def replicas(urls: list[str], seconds: float, tally: Tally) -> list[str]:
    names = ["ra", "rb"]

    def create(c: httpx.Client, name: str, r: random.Random) -> httpx.Response:
        dim = r.choice([8, 16])
        resp = c.post("/v1/collections", json={"name": name, "dim": dim, "dims": [4, dim]})
        if resp.status_code != 201:
            return resp
        rng = np.random.default_rng(r.randrange(1 << 30))
        docs = [
            {"id": str(i), "vector": rng.standard_normal(dim).tolist(), "metadata": {"g": i % 3}} for i in range(200)
        ]
        return c.put(f"/v1/collections/{name}/documents", json={"documents": docs})

    with httpx.Client(base_url=urls[0], timeout=300) as c:
        for name in names:
            create(c, name, random.Random(name)).raise_for_status()

    def op(kind, c, r):
        name = r.choice(names)
        path = f"/v1/collections/{name}"
        dim = r.choice([8, 16])  # the collection's dim, or not: a re-create may have changed it
        v = lambda: np.random.default_rng(r.randrange(1 << 30)).standard_normal(dim).tolist()  # noqa: E731
        if kind == "put":
            docs = [{"id": str(r.randrange(300)), "vector": v(), "metadata": {"g": r.randrange(3)}} for _ in range(5)]
            return c.put(f"{path}/documents", json={"documents": docs})
        if kind == "delete":
            return c.post(f"{path}/documents/delete", json={"ids": [str(r.randrange(300)) for _ in range(3)]})
        if kind == "search":
            body = {"vector": v(), "k": 5, "dim": r.choice([4, dim]), "include": ["metadata"]}
            if r.random() < 0.3:
                body["filter"] = {"g": r.randrange(3)}
            return c.post(f"{path}/search", json=body)
        if kind == "scroll":
            return c.get(f"{path}/documents", params={"limit": 50})
        if kind == "get":
            return c.get(f"{path}/documents/{r.randrange(300)}")
        if kind == "patch":
            body = r.choice([{"target_recall": 0.9}, {"target_recall": None}, {"limits": {"max_k": r.randint(5, 100)}}])
            return c.patch(path, json=body)
        if kind == "recall":
            return c.post(f"{path}/recall", json={"queries": 5})
        if kind in ("drop", "create"):
            return churn(kind, c, r, path, 0.2, lambda: create(c, name, r))
        raise ValueError(kind)

    every = ["put", "delete", "search", "scroll", "get", "patch", "recall"]
    actors = [every, every, ["put", "search", "get"], ["put", "search", "get"], ["drop", "create", "patch"]] * 2
    run_actors(urls, seconds, actors, op, tally)
    return []


def run_replicas(
    root: Path, seconds: float, tally: Tally, models: list[str] | None = None
) -> tuple[float, list[str], list[Path], list[Path]]:
    """The `replicas` scenario's processes (or, given `models`, the `shared-upgrades` one's):
    milvus-lite, two serving replicas, the maintenance process, and after the run a fourth
    replica on an empty data directory."""
    from tests.support.milvus import MilvusServer

    milvus = MilvusServer(root / "milvus")
    milvus.data_dir.mkdir(parents=True)
    milvus.start()
    env = {"VECNEST_BACKEND": "milvus", "VECNEST_MILVUS_URI": milvus.uri, "VECNEST_PRELOAD_DEFAULT_MODEL": "false"}
    if models:  # replicas notice changes within a second here (seconds in production)
        env = {
            **env,
            "VECNEST_ALLOW_MODEL_PATHS": "true",
            "VECNEST_MANIFEST_REFRESH_S": "0.5",
            "VECNEST_UPGRADE_FOLLOW_S": "0.5",
            "VECNEST_UPGRADE_SETTLE_S": "1.5",
            "VECNEST_UPGRADE_POLL_S": "0.1",
            "VECNEST_UPGRADE_SHARED_POLL_S": "1",
            "VECNEST_UPGRADE_BATCH_SIZE": "32",
        }
    roles = {"serve-a": "serve", "serve-b": "serve", "maintenance": "maintenance", "late": "serve"}
    servers = {
        name: Server(
            root / name,
            env={**env, "VECNEST_ROLE": role, "VECNEST_RECALL_PROBE_INTERVAL_S": "1"},
            log=root / f"{root.name}-{name}.log",
        )
        for name, role in roles.items()
    }
    try:
        for name in ("serve-a", "serve-b", "maintenance"):
            servers[name].start()
        t0 = time.perf_counter()
        urls = [servers[name].url for name in ("serve-a", "serve-b", "maintenance")]
        if models:
            problems = shared_upgrades(urls, seconds, tally, models)
        else:
            problems = replicas(urls[:2], seconds, tally)
        took = time.perf_counter() - t0
        servers["late"].start()
        problems += same_everywhere([s.url for s in servers.values()])
    finally:
        for server in servers.values():
            server.stop()
        milvus.stop()
    return took, problems, [s.log for s in servers.values() if s.log.exists()], [milvus.log]


def shared_upgrades(urls: list[str], seconds: float, tally: Tally, models: list[str]) -> list[str]:
    """`urls`: two serving replicas, then the maintenance process (which runs the upgrades)."""
    name = "up"

    def create(c: httpx.Client) -> httpx.Response:
        r = c.post("/v1/collections", json={"name": name})
        if r.status_code != 201:
            return r
        return c.put(f"/v1/collections/{name}/documents", json={"documents": [gloss_doc(i) for i in range(300)]})

    with httpx.Client(base_url=urls[0], timeout=300) as c:
        create(c).raise_for_status()

    def op(kind, c, r):
        path = f"/v1/collections/{name}"
        if kind == "put":
            docs = [gloss_doc(r.randrange(500), f" v{r.randrange(3)}") for _ in range(4)]
            return c.put(f"{path}/documents", json={"documents": docs})
        if kind == "delete":
            return c.post(f"{path}/documents/delete", json={"ids": [str(r.randrange(500)) for _ in range(2)]})
        if kind == "search":
            return c.post(f"{path}/search", json={"query": GLOSSES[r.randrange(500)][3], "k": 5})
        if kind == "start":
            return c.post(f"{path}/upgrades", json={"model": r.choice(models), "sample": 100})
        if kind in ("cutover", "rollback", "finalize", "abort", "status"):
            listed = c.get(f"{path}/upgrades")
            ups = listed.json().get("upgrades") if listed.status_code == 200 else None
            if not ups:
                return listed
            live = [u for u in ups if u["state"] in LIVE_STATES]
            upgrade = (live or ups)[-1]["id"]
            if kind == "status":
                return c.get(f"{path}/upgrades/{upgrade}")
            return c.post(f"{path}/upgrades/{upgrade}/{kind}", json={"force": True} if kind == "cutover" else None)
        if kind in ("drop", "create"):
            return churn(kind, c, r, path, 0.05, lambda: create(c))
        raise ValueError(kind)

    lifecycle = ["start", "cutover", "rollback", "finalize", "abort", "status", "status"]
    # actor i talks to urls[i % 3]: serving a, serving b, maintenance
    actors = [
        ["put", "delete", "put"],
        ["put", "search"],
        lifecycle,
        ["search", "status"],
        ["drop", "create"],
        lifecycle,
    ]
    run_actors(urls, seconds, actors, op, tally)
    return check_upgrades(urls[2], name)


def same_everywhere(urls: list[str]) -> list[str]:
    """Every replica (the last one just started) lists the same collections, documents and
    settings, once each has read the catalog again (VECNEST_MANIFEST_REFRESH_S, 5 s)."""
    time.sleep(6)
    seen = [kept_state(url) for url in urls]
    return [f"{url} sees {s}, {urls[0]} sees {seen[0]}" for url, s in zip(urls[1:], seen[1:]) if s != seen[0]]


def check_graphs(url: str, names: list[str], sample: int = 300) -> list[str]:
    """The graphs hold what the store holds: the count agrees with a scroll, and for sampled
    stored documents the exact nearest of their own vector(s) is in a wide graph search's top 10."""
    problems = []
    with httpx.Client(base_url=url, timeout=300) as c:
        for name in names:
            path = f"/v1/collections/{name}"
            if c.get(path).status_code == 404:
                continue
            stored, after = [], None
            while True:
                params = {"limit": 200, "include_vector": "true", **({"after": after} if after else {})}
                page = c.get(f"{path}/documents", params=params)
                page.raise_for_status()
                stored += page.json()["documents"]
                after = page.json().get("next")
                if not after:
                    break
            info = c.get(path).json()
            if info["documents"] != len(stored):
                problems.append(f"{name}: info says {info['documents']} documents, a scroll finds {len(stored)}")
            missed, tried = [], 0
            for d in random.Random(0).sample(stored, min(sample, len(stored))):
                if d.get("vector") is not None:
                    queries = [{"vector": d["vector"], "dim": dim, "ef": 500} for dim in info["dims"]]
                else:
                    queries = [{"vectors": d["vectors"], "candidates": 500}]
                for q in queries:
                    exact = c.post(f"{path}/search", json={"k": 1, "exact": True, **q})
                    graph = c.post(f"{path}/search", json={"k": 10, **q})
                    exact.raise_for_status(), graph.raise_for_status()
                    tried += 1
                    if exact.json()["results"][0]["id"] not in [h["id"] for h in graph.json()["results"]]:
                        missed.append((d["id"], q.get("dim")))
            if len(missed) > 0.01 * tried:
                problems.append(
                    f"{name}: {len(missed)} of {tried} exact nearest not in the graph's top 10: {missed[:5]}"
                )
    return problems


# -- the run -----------------------------------------------------------------------------------
def test_models(root: Path) -> list[str]:
    """Two local models an upgrade from MiniLM can go to (built from the bundled one)."""
    from tests.support.models import rotated_minilm, shallow_minilm

    return [rotated_minilm(str(root / "rotated"), seed=2, noise=0.5), shallow_minilm(str(root / "shallow"), layers=3)]


def kept_state(url: str) -> dict[str, dict]:
    """What a restart must keep of each collection: its documents, dims, limits and the recall
    settings its controllers chose and persisted (read once two reads a second apart agree: a
    controller may still be deciding on the last sampled searches)."""

    def read() -> dict[str, dict]:
        answer = httpx.get(f"{url}/v1/collections", timeout=60)
        if answer.status_code != 200:
            return {"GET /v1/collections": {"status": answer.status_code, "body": answer.text[:300]}}
        listed = answer.json()["collections"]
        return {
            info["name"]: {
                "documents": info["documents"],
                "dims": info["dims"],
                "limits": info["limits"],
                "rerank_factors": info["rerank_factors"],
                "target_recall": info["recall"].get("target_recall"),
                "ef_search": info["recall"].get("ef_search"),
            }
            for info in listed
        }

    before = read()
    for _ in range(30):
        time.sleep(1)
        now = read()
        if now == before:
            break
        before = now
    return before


def restart_check(server: Server) -> list[str]:
    """Stop the server, start it on the same data directory: it must come up with nothing
    failed and every collection as it was."""
    before = kept_state(server.url)
    server.stop()
    server.start()
    ready = httpx.get(f"{server.url}/readyz", timeout=30).json()
    problems = [f"after a restart: {ready}"] if ready.get("failed_count") else []
    after = kept_state(server.url)
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name):
            problems.append(f"after a restart {name} is {after.get(name)}, was {before.get(name)}")
    return problems


def logged_errors(log: Path) -> int:
    """Tracebacks, and ERROR lines (a background job that failed with a coded error logs no
    traceback). pymilvus logs every failed call with its traceback itself (`_log_rpc_error`):
    not counted, vecnest answers those calls' requests, and a bad answer counts there."""
    text = re.sub(
        r"\[ERROR\]\[_log_rpc_error\].*?\(decorators\.py:\d+\)", "", log.read_text(errors="replace"), flags=re.S
    )
    return max(text.count("Traceback (most recent call last)"), text.count(" ERROR "))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=90.0, help="how long each scenario's actors run")
    names = [
        "restores",
        "upgrades",
        "served-upgrades",
        "multivector",
        "archives",
        "upkeep",
        "replicas",
        "shared-upgrades",
    ]
    p.add_argument("--only", nargs="+", choices=names, default=names)
    p.add_argument("--logs", type=Path, help="copy each scenario's server log into this folder")
    args = p.parse_args()

    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="vecnest-races-") as tmp:
        root = Path(tmp)
        upgrading = {"upgrades", "served-upgrades", "shared-upgrades"}
        models = test_models(root / "models") if upgrading & set(args.only) else []
        env = {
            "VECNEST_ALLOW_MODEL_PATHS": "true",  # the upgrade scenario's models are folders
            "VECNEST_UPGRADE_BATCH_SIZE": "32",
            "VECNEST_UPGRADE_POLL_S": "0.1",
        }
        upkeep_env = {
            "VECNEST_SNAPSHOT_INTERVAL_S": "0.3",
            "VECNEST_REBUILD_DELETED_FRACTION": "0.05",
            "VECNEST_RECALL_SAMPLE_RATE": "1.0",
            "VECNEST_RECALL_MAX_BUSY": "1.0",
            "VECNEST_RECALL_CONTROLLER_WINDOW": "5",
            "VECNEST_RECALL_GATHER_MS": "50",
        }
        for scenario in args.only:
            scenario_env = {**env, **(upkeep_env if scenario == "upkeep" else {})}
            tally = Tally()
            engine_logs: list[Path] = []  # copied, not counted: the engine's own errors are answered in requests
            if scenario in ("replicas", "shared-upgrades"):
                on_models = models if scenario == "shared-upgrades" else None
                took, problems, logs, engine_logs = run_replicas(root / scenario, args.seconds, tally, on_models)
            else:
                server = Server(
                    root / scenario / "data",
                    env=scenario_env,
                    log=root / f"{scenario}.log",
                    log_level="info" if scenario == "upkeep" else "warning",  # upkeep counts its background jobs
                ).start()
                try:
                    t0 = time.perf_counter()
                    if scenario == "restores":
                        problems = restores(server.url, args.seconds, tally)
                    elif scenario == "upgrades":
                        problems = upgrades(server.url, args.seconds, tally, models)
                    elif scenario == "served-upgrades":
                        problems = served_upgrades(server.url, args.seconds, tally, models)
                    elif scenario == "multivector":
                        problems = multivector(server.url, args.seconds, tally)
                    elif scenario == "upkeep":
                        problems = upkeep(server.url, args.seconds, tally, server.log)
                    else:
                        problems = archives_race(server.url, args.seconds, tally)
                    took = time.perf_counter() - t0
                    problems += restart_check(server)
                finally:
                    server.stop()
                logs = [server.log]
            traced = sum(logged_errors(log) for log in logs)
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in logs + engine_logs:
                    shutil.copy(log, args.logs / log.name)
            s = tally.summary()
            rows.append((scenario, took, s, traced, problems))
            failed |= bool(s["bad"] or traced or problems)
            print(f"  {scenario}: refusals: {tally.refusals()}", flush=True)
            for line in tally.bad[:40] + problems:
                print(f"  {scenario}: {line}", flush=True)
            if traced:
                print(f"  {scenario}: {traced} errors logged in {[str(log) for log in logs]}", flush=True)
                for log in logs:
                    print(log.read_text()[-3000:])

    print("\n| scenario | seconds | answered 2xx | 4xx | 503 to retry | bad | errors logged | checks after |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario, took, s, traced, problems in rows:
        checks = "ok" if not problems else f"{len(problems)} failed"
        print(
            f"| {scenario} | {took:.0f} | {s['ok']:,} | {s['4xx']:,} | {s['503 to retry']:,} | {s['bad']} | "
            f"{traced} | {checks} |"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
