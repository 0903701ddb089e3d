"""The fault harness, long version: kill -9 a real server over and over while clients write,
delete and search (tests/support/chaos.py), at named crash points and at random moments, during
snapshots, graph rebuilds, PCA refits, multi-vector ingest, an encoder upgrade's backfill, and
backups: archives made, deleted, restored in place and uploaded over a collection or under a new
name (`Archivist`); then a bounded run of parallel writes, searches, refits, backups and
collection drops.

    python bench/faults.py --kills 24 --concurrency-s 120

After every restart it checks (tests/support/chaos.py `verify`): every acknowledged upsert and delete
is reflected, no batch is half-applied, exact searches equal the oracle over the acknowledged
state, graph searches find ≥ 90% of it, start-up succeeds with no failed collection. The text
collection under upgrade is checked too: every acknowledged text is there, and the upgrade
resumes, catches up and cuts over at the end. The backed-up collections each hold one state they
may hold (the acknowledged one, or that of the op the kill cut short: never none, never a mix),
every acknowledged archive is listed, and nothing a crash left (staging folders, a displaced
collection, half-written archives, partial uploads) is on disk. Prints a table; exits 1 on any failure.
"""

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.chaos import (
    Archivist,
    Ledger,
    churn_a_collection,
    create_collections,
    run_until,
    use_the_churned_collection,
    verify,
)
from tests.support.datasets import wordnet_glosses
from tests.support.server import Server

ENV = {
    "VECNEST_SNAPSHOT_INTERVAL_S": "0.3",
    "VECNEST_RECALL_SAMPLE_RATE": "0.1",
    "VECNEST_REBUILD_DELETED_FRACTION": "0.1",
    "VECNEST_UPGRADE_MAX_BUSY": "1.0",
    "VECNEST_UPGRADE_BATCH_SIZE": "16",
    "VECNEST_UPGRADE_POLL_S": "0.2",
}
POINTS = [
    "write.after_commit@mv:4",
    "snapshot.after_graphs@dense:2",
    "rebuild.before_swap",
    "rotation.after_save@dense",
    "snapshot.after_manifest@flat:2",
    "upgrade.after_backfill_batch@text:3",
    "write.after_commit@flat:7",
    "write.after_commit@text",
    "restore.after_displace@vault",
    "backup.before_sidecar@vault",
]


class TextWriter(threading.Thread):
    """Upserts WordNet glosses into the text collection (under upgrade); records what was acknowledged."""

    def __init__(self, url: str, acked: dict[str, str], stop: threading.Event, start_at: int):
        super().__init__(daemon=True)
        self.url, self.acked, self.stop_event, self.next = url, acked, stop, start_at
        self.unknown: list[dict] | None = None

    def run(self) -> None:
        rows = wordnet_glosses()
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self.stop_event.is_set():
                batch = [{"id": f"t{self.next + i}", "text": rows[(self.next + i) % len(rows)][3]} for i in range(8)]
                try:
                    r = c.put("/v1/collections/text/documents", json={"documents": batch})
                except httpx.TransportError:
                    self.unknown = batch
                    return
                if r.status_code == 200:
                    self.acked.update({d["id"]: d["text"] for d in batch})
                self.next += 8
                time.sleep(0.2)


def check_texts(client: httpx.Client, acked: dict[str, str], unknown: list[dict] | None) -> None:
    if unknown:  # the batch in flight at the kill: all of it or none
        present = [client.get(f"/v1/collections/text/documents/{d['id']}").status_code == 200 for d in unknown]
        assert all(present) or not any(present), f"half-applied text batch: {present}"
        if all(present):
            acked.update({d["id"]: d["text"] for d in unknown})
    for doc_id, text in acked.items():
        r = client.get(f"/v1/collections/text/documents/{doc_id}")
        assert r.status_code == 200 and r.json()["text"] == text, (doc_id, r.text[:200])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kills", type=int, default=24)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--concurrency-s", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    pick = random.Random(args.seed)
    from tests.support.models import rotated_minilm

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = rotated_minilm(str(tmp / "minilm-rotated"), seed=1, noise=0.3)
        env = {**ENV, "VECNEST_MODELS": json.dumps({"minilm-rotated": model})}
        data = tmp / "data"
        server = Server(data, env=env).start()
        create_collections(server.client)
        rows = wordnet_glosses()
        acked_texts: dict[str, str] = {}
        assert server.client.post("/v1/collections", json={"name": "text"}).status_code == 201
        for start in range(0, 1500, 250):
            batch = [{"id": f"g{i}", "text": rows[i][3]} for i in range(start, start + 250)]
            assert server.client.put("/v1/collections/text/documents", json={"documents": batch}).status_code == 200
            acked_texts.update({d["id"]: d["text"] for d in batch})
        upgrade = server.client.post("/v1/collections/text/upgrades", json={"model": "minilm-rotated", "sample": 100})
        assert upgrade.status_code == 202, upgrade.text
        upgrade_id = upgrade.json()["id"]
        ledger = Ledger()
        archivist = Archivist(seed=args.seed)
        touched: dict[str, set[str]] = {}
        rows_out, failures, named, randoms, not_reached = [], [], 0, 0, 0
        text_next = 100_000
        for kill in range(args.kills):
            point = POINTS[(kill // 2) % len(POINTS)] if kill % 2 == 0 else None
            if kill:
                server = Server(data, env={**env, **({"VECNEST_CRASH_AT": point} if point else {})}).start()
            elif point:  # the first server was started before the first point was chosen
                server.stop()
                server = Server(data, env={**env, "VECNEST_CRASH_AT": point}).start()
            stop = threading.Event()
            writer = TextWriter(server.url, acked_texts, stop, text_next)
            writer.start()
            archiving = archivist.drive(server.url, stop)
            after = None if point else pick.uniform(1.0, 8.0)
            more, died = run_until(
                server, ledger, args.workers, seconds=60 if point else 30, seed=args.seed * 100 + kill, kill_after=after
            )
            stop.set()
            writer.join(60)
            archiving.join(60)
            text_next = writer.next + 8
            if not died:  # the point was not reached in time: kill at random instead
                server.kill()
                not_reached += 1
            named += bool(point) and died
            randoms += not (bool(point) and died)
            touched = {c: touched.get(c, set()) | ids for c, ids in more.items()}
            t0 = time.perf_counter()
            try:
                server = Server(data, env=env).start()
            except Exception as exc:
                failures.append(f"kill {kill}: start-up failed: {exc}")
                break
            start_s = time.perf_counter() - t0
            try:
                report = verify(server.client, ledger, touched, seed=kill)
                check_texts(server.client, acked_texts, writer.unknown)
                archivist.check(server.client, data)
                state = server.client.get(f"/v1/collections/text/upgrades/{upgrade_id}").json()
                assert state["state"] in ("fitting", "backfilling"), state
                log = server.log.read_text()
                assert "Traceback" not in log, log[-2000:]
                assert not ledger.server_errors, ledger.server_errors[:3]
            except AssertionError as exc:
                failures.append(f"kill {kill} ({point or 'random'}): {exc}")
                server.stop()
                break
            progress = state.get("progress") or {}
            rows_out.append(
                (
                    kill,
                    point or f"random {after:.1f} s",
                    start_s,
                    report["documents_checked"],
                    report["resolved"],
                    f"{progress.get('done')}/{progress.get('total')}",
                )
            )
            print(
                f"kill {kill:2d} {point or 'random':34s} restart {start_s:5.1f} s  checked {report['documents_checked']}"
                f"  unknown {report['resolved']}  upgrade {state['state']} {progress.get('done')}/{progress.get('total')}",
                flush=True,
            )
            server.stop()
        # the upgrade survived every kill: let it finish, cut over, find documents by their text
        if not failures:
            server = Server(data, env=env).start()
            c = server.client
            deadline = time.time() + 900
            while time.time() < deadline:
                info = c.get(f"/v1/collections/text/upgrades/{upgrade_id}").json()
                if info["state"] == "backfilling" and info["progress"]["caught_up"]:
                    break
                time.sleep(1)
            cut = c.post(f"/v1/collections/text/upgrades/{upgrade_id}/cutover").json()
            found = sum(
                c.post("/v1/collections/text/search", json={"query": t, "k": 1}).json()["results"][0]["id"] == i
                for i, t in list(acked_texts.items())[::50]
            )
            sampled = len(list(acked_texts.items())[::50])
            check_texts(c, acked_texts, None)
            print(
                f"upgrade after {args.kills} kills: {cut['state']}, {found}/{sampled} documents found by their own text"
            )
            if cut["state"] != "cut_over" or found < 0.9 * sampled:
                failures.append(f"upgrade did not finish cleanly: {cut['state']}, {found}/{sampled}")
            # concurrency: writers, searchers, refits and a collection dropped and re-created over and over
            stop, counts, errors = threading.Event(), {}, []
            side = [
                threading.Thread(target=churn_a_collection, args=(server.url, stop, counts, errors)),
                threading.Thread(target=use_the_churned_collection, args=(server.url, stop, counts, errors)),
            ]
            for t in side:
                t.start()
            archived_before = sum(archivist.counts.values())
            side.append(archivist.drive(server.url, stop))
            searches_before = ledger.searches
            acked_before = dict(ledger.acked)
            _, died = run_until(server, ledger, args.workers, seconds=args.concurrency_s, seed=999, refits=True)
            stop.set()
            for t in side:
                t.join(60)
            try:
                report = verify(server.client, ledger, touched)
                archivist.check(server.client, data)
                assert not died and not errors and not ledger.server_errors, (errors + ledger.server_errors)[:3]
                assert "Traceback" not in server.log.read_text()
            except AssertionError as exc:
                failures.append(f"concurrency: {exc}")
            concurrency_ops = (
                sum(counts.values())
                + sum(archivist.counts.values())
                - archived_before
                + ledger.searches
                - searches_before
                + sum(ledger.acked.values())
                - sum(acked_before.values())
            )
            print(
                f"concurrency {args.concurrency_s:.0f} s: {concurrency_ops} operations, statuses {dict(sorted(counts.items()))}, "
                f"5xx {len(errors) + len(ledger.server_errors)}"
            )
            server.stop()
    print()
    print(
        "| kills | at named points | random | points not reached | acknowledged upserts / deletes | "
        "searches | snapshots / restores / uploads acknowledged | lost or half-applied | start-up failures |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    lost = sum(any(w in f for w in ("half-applied", "ledger", "documents", "snapshots missing")) for f in failures)
    print(
        f"| {len(rows_out)} | {named} | {randoms} | {not_reached} | {ledger.acked['upsert']} / {ledger.acked['delete']} "
        f"| {ledger.searches} | {archivist.counts['snapshot']} / {archivist.counts['restore']} / "
        f"{archivist.counts['upload']} | {lost} | {sum('start-up' in f for f in failures)} |"
    )
    for f in failures:
        print("FAILED:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
