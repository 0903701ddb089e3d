"""Storage faults on real filesystems: a full disk (a small tmpfs this test mounts), a read-only
data directory, and too few file descriptors. A full disk is a clean 507 with nothing half
applied, reads go on, writes resume by themselves once space is freed, and a restart on a full
disk still comes upgrades. A read-only or descriptor-starved start-up is ready for every collection it
can open and names the others with their reason."""

import os
import resource
import subprocess

import numpy as np
import pytest

from index import Collection, HnswParams, Manifest, NewDocument, Query
from index.errors import InsufficientStorage
from tests.support.server import Server

ENV = {"VECNEST_SNAPSHOT_INTERVAL_S": "0.5", "VECNEST_RECALL_SAMPLE_RATE": "0"}


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MB tmpfs mounted for this test (and unmounted after)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True
        )
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs for storage-fault tests: {exc}")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for storage-fault tests (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt, leave: int) -> str:
    """Take all but `leave` bytes of the filesystem with a file; returns its path."""
    path = os.path.join(mnt, "filler")
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, max(free - leave, 1))
    finally:
        os.close(fd)
    return path


def docs(prefix: str, n: int, dim: int, seed: int) -> list[NewDocument]:
    X = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return [NewDocument(id=f"{prefix}{i}", vector=x) for i, x in enumerate(X)]


def test_a_full_disk_refuses_writes_cleanly_in_the_vector_file_and_in_sqlite(small_disk):
    m = Manifest(
        name="c", dim=1024, metric="cosine", hnsw=HnswParams(m=8, ef_construction=32), created_at="2026-01-01T00:00:00"
    )
    os.makedirs(small_disk / "c")
    c = Collection.create(str(small_disk / "c"), m)  # a 1024-row vector file: 4 MiB
    c.upsert(docs("a", 1000, 1024, 0))
    seq, n = c.last_seq(), len(c)
    filler = fill(small_disk, leave=2 << 20)
    # 1,100 labels need a larger vector file (another 4 MiB): refused before the commit
    with pytest.raises(InsufficientStorage):
        c.upsert(docs("b", 100, 1024, 1))
    assert (c.last_seq(), len(c)) == (seq, n) and not c.needs_rebuild
    os.remove(filler)
    filler = fill(small_disk, leave=64 << 10)
    # updates need no new labels, but 14 MB more than SQLite's WAL holds: SQLITE_FULL, rolled back
    updates = [NewDocument(id=f"a{i}", vector=np.ones(1024, np.float32), text="x" * 10_000) for i in range(1000)]
    with pytest.raises(InsufficientStorage):
        c.upsert(updates)
    assert (c.last_seq(), len(c)) == (seq, n)
    assert c.get("a1").text is None and c.get("a1").vector[0] != pytest.approx(1 / 32)  # the old a1, untouched
    assert c.search(Query(docs("a", 1, 1024, 0)[0].vector[None, :], 1)).matches[0][0].id == "a0"  # reads go on
    os.remove(filler)
    c.upsert(docs("b", 100, 1024, 1))  # space is back: the same write succeeds
    assert len(c) == 1100
    c.close()
    c = Collection.open(str(small_disk / "c"))
    assert len(c) == 1100
    c.close()


def test_the_server_answers_507_on_a_full_disk_serves_reads_recovers_and_restarts(small_disk):
    data = small_disk / "data"
    server = Server(data, env=ENV).start()
    rng = np.random.default_rng(0)
    acked: dict[str, list[float]] = {}

    def write(prefix: str, n: int = 200):
        batch = [{"id": f"{prefix}-{i}", "vector": rng.standard_normal(64).round(4).tolist()} for i in range(n)]
        r = server.client.put("/v1/collections/v/documents", json={"documents": batch})
        if r.status_code == 200:
            acked.update({d["id"]: d["vector"] for d in batch})
        return r, batch

    def check_reads(client):
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").json()["failed"] == {}
        assert client.get("/v1/collections/v").json()["documents"] == len(acked)
        doc_id = sorted(acked)[len(acked) // 2]
        hit = client.post("/v1/collections/v/search", json={"vector": acked[doc_id], "k": 1}).json()["results"][0]
        assert hit["id"] == doc_id

    def fill_until_507(tag: str):
        for i in range(500):
            r, batch = write(f"{tag}{i}")
            if r.status_code == 507:
                assert r.json()["error"]["code"] == "insufficient_storage"
                for d in batch[::50]:  # nothing of the refused batch was applied
                    assert server.client.get(f"/v1/collections/v/documents/{d['id']}").status_code == 404
                return
            assert r.status_code == 200, r.text
        pytest.fail("the disk never filled up")

    try:
        assert server.client.post("/v1/collections", json={"name": "v", "dim": 64}).status_code == 201
        for i in range(3):
            assert write(f"base{i}")[0].status_code == 200
        filler = fill(small_disk, leave=3 << 20)
        fill_until_507("x")
        check_reads(server.client)
        os.remove(filler)  # freed: writes resume without a restart
        assert write("after-free")[0].status_code == 200
        filler = fill(small_disk, leave=2 << 20)
        fill_until_507("y")
        server.kill()  # kill -9 on a full disk, and restart while it is still full
        server = Server(data, env=ENV).start()
        check_reads(server.client)
        os.remove(filler)
        assert write("after-restart")[0].status_code == 200
        check_reads(server.client)
        log = server.log.read_text()
    finally:
        server.stop()
    assert "Traceback" not in log, log[-3000:]


def test_a_read_only_data_directory_starts_ready_and_names_its_collections(small_disk):
    data = small_disk / "data"
    server = Server(data, env=ENV).start()
    try:
        server.client.post("/v1/collections", json={"name": "v", "dim": 4})
        server.client.put("/v1/collections/v/documents", json={"documents": [{"id": "a", "vector": [1, 0, 0, 0]}]})
    finally:
        server.stop()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        server = Server(data, env=ENV, log=small_disk.parent / "read-only.log").start()  # ready, not stuck
        try:
            listed = server.client.get("/v1/collections").json()
            assert listed["collections"] == [] and [f["name"] for f in listed["failed"]] == ["v"]
            assert "read-only" in listed["failed"][0]["reason"]
            assert "read-only" in server.client.get("/readyz").json()["failed"]["v"]
            assert server.client.get("/v1/collections/v").status_code == 503
        finally:
            server.stop()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    server = Server(data, env=ENV).start()
    try:
        assert (
            server.client.post("/v1/collections/v/search", json={"vector": [1, 0, 0, 0]}).json()["results"][0]["id"]
            == "a"
        )
    finally:
        server.stop()


def test_too_few_file_descriptors_at_start_up_is_a_clear_reason(tmp_path):
    data = tmp_path / "data"
    server = Server(data, env=ENV).start()
    try:
        for i in range(12):
            server.client.post("/v1/collections", json={"name": f"c{i:02d}", "dim": 4})
            server.client.put(
                f"/v1/collections/c{i:02d}/documents", json={"documents": [{"id": "a", "vector": [1, 0, 0, 0]}]}
            )
    finally:
        server.stop()
    limit = 64

    def few_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    server = Server(data, env=ENV)
    server.preexec = few_files
    server.start()
    try:
        ready = server.client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["collections"] >= 1 and ready["failed"], ready
        assert all("too many open files" in reason for reason in ready["failed"].values()), ready
        assert ready["collections"] + len(ready["failed"]) == 12
    finally:
        server.stop()
    log = server.log.read_text()
    assert "too many open files" in log
