"""Backups: snapshot → drop → restore answers the same searches; a backup taken under
concurrent writes restores to exactly the acknowledged writes up to one seq; a corrupt or
truncated archive is refused and changes nothing, and so is one crafted with matching checksums
(its index, manifest, store or graph not what vecnest writes)."""

import json
import os
import sqlite3
import struct
import tempfile
import threading
import time
import zlib
from datetime import UTC, datetime

import numpy as np
import pytest

from index import Catalog, Elasticizer, HnswParams, Manifest, NewDocument, Query
from index.backup import create_archive, list_archives, new_backup_id
from index.errors import Conflict, Invalid, NotFound, NotReady
from tests.support.archives import RAW_INDEX, manifest_with, repacked


def manifest(name: str, dim: int) -> Manifest:
    return Manifest(
        name=name,
        dim=dim,
        metric="cosine",
        hnsw=HnswParams(),
        created_at="t",
        dims=[64, dim],
        elasticizer=Elasticizer(kind="pca", fit_at=10**9),  # fitted by hand below, not by upkeep
    )


def docs(X, start: int, texts=None) -> list[NewDocument]:
    return [
        NewDocument(id=f"d{start + i}", vector=x, text=texts[i] if texts else None, metadata={"part": (start + i) % 3})
        for i, x in enumerate(X)
    ]


def answers(collection, Q) -> list:
    out = []
    for dim in (64, 384):
        for exact in (False, True):
            result = collection.search(Query(Q, 10, dim=dim, exact=exact, filter={"part": 1} if exact else None))
            out.append([[(m.id, round(m.score, 5)) for m in row] for row in result.matches])
    return out


def test_backup_drop_restore_answers_the_same(tmp_path, glosses):
    texts, X = glosses
    catalog = Catalog(str(tmp_path / "data"))
    c = catalog.create(manifest("kb", X.shape[1]))
    for s in range(0, 2000, 500):
        c.upsert(docs(X[s : s + 500], s, texts[s : s + 500]))
    c.fit_rotation(sample=1000)
    c.snapshot(force=True)
    c.delete([f"d{i}" for i in range(0, 2000, 7)])
    c.upsert(docs(X[2000:2200], 2000))  # after the graph snapshot: replayed from the store at restore
    Q = X[2500:2600]
    before = answers(c, Q)
    info = create_archive(c, str(tmp_path), "b1", "now")
    archive = str(tmp_path / "b1.tar")
    assert info.documents == len(c) == 2200 - len(range(0, 2000, 7)) and info.seq == c.last_seq()
    assert info.bytes == os.path.getsize(archive) and len(info.sha256) == 64

    catalog.drop("kb")
    restored, read = catalog.restore(archive)
    assert read.seq == info.seq and restored.name == "kb"
    assert answers(restored, Q) == before
    assert restored.get("d5").text == texts[5] and restored.manifest.rotation is not None
    with pytest.raises(Conflict):
        catalog.restore(archive)  # the name is taken: only an explicit replace swaps it
    copy, _ = catalog.restore(archive, name="kb-copy")
    assert answers(copy, Q) == before
    catalog.close()

    elsewhere = Catalog(str(tmp_path / "other"))  # another server's data directory
    moved, _ = elsewhere.restore(archive)
    assert answers(moved, Q) == before
    elsewhere.close()


def test_a_backup_under_concurrent_writes_is_the_acknowledged_writes_up_to_its_seq(tmp_path, glosses):
    _, X = glosses
    catalog = Catalog(str(tmp_path / "data"))
    c = catalog.create(manifest("live", X.shape[1]))
    c.upsert(docs(X[:500], 0))
    acknowledged: list[tuple[int, str, list[str]]] = []  # (seq, "put" | "delete", ids)
    stop = threading.Event()

    def writer():
        i = 500
        while not stop.is_set() and i < 2900:
            result = c.upsert(docs(X[i : i + 20], i))
            acknowledged.append((result.seq, "put", result.ids))
            gone = c.delete([f"d{i - 400}", f"d{i - 399}"])
            acknowledged.append((gone.seq, "delete", gone.ids))
            i += 20

    thread = threading.Thread(target=writer)
    thread.start()
    while len(acknowledged) < 12 and thread.is_alive():  # writes are under way (on a busy machine too)
        time.sleep(0.01)
    archives = []
    for n in range(3):
        archives.append(create_archive(c, str(tmp_path), f"b{n}", "now"))
    stop.set()
    thread.join()
    assert len(acknowledged) > 10
    for info in archives:
        expected = {f"d{i}" for i in range(500)}
        for seq, op, ids in acknowledged:
            if seq <= info.seq:
                expected = expected | set(ids) if op == "put" else expected - set(ids)
        restored, _ = catalog.restore(str(tmp_path / f"{info.id}.tar"), name=f"r-{info.id}")
        found = {d.id for page in _pages(restored) for d in page}
        assert found == expected and len(restored) == len(expected) == info.documents
        # the graphs hold exactly those documents too: every one finds itself
        probe = sorted(expected)[:: max(1, len(expected) // 50)]
        Q = np.stack([X[int(i[1:])] for i in probe])
        assert [row[0].id for row in restored.search(Query(Q, 1)).matches] == probe
    catalog.close()


def _pages(collection):
    after = None
    while True:
        page, after = collection.scroll(after, 500)
        yield page
        if after is None:
            return


@pytest.mark.parametrize("damage", ["flip", "truncate", "not_a_tar", "wrong_member"])
def test_a_damaged_archive_is_refused_and_changes_nothing(tmp_path, glosses, damage):
    _, X = glosses
    catalog = Catalog(str(tmp_path / "data"))
    c = catalog.create(manifest("kb", X.shape[1]))
    c.upsert(docs(X[:600], 0))
    create_archive(c, str(tmp_path), "b1", "now")
    archive = tmp_path / "b1.tar"
    c.upsert(docs(X[600:700], 600))  # the live collection moves on past the backup
    before = answers(c, X[2500:2520])
    data = bytearray(archive.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) * 2 // 3]
    elif damage == "not_a_tar":
        data = bytearray(b"hello" * 1000)
    else:
        data[data.index(b"store.sqlite")] = ord("S")  # a member the index does not name
    archive.write_bytes(bytes(data))
    with pytest.raises(Invalid) as refused:
        catalog.restore(str(archive), replace=True)
    assert refused.value.code == "invalid_archive"
    assert catalog.get("kb") is c and len(c) == 700 and answers(c, X[2500:2520]) == before
    assert sorted(os.listdir(tmp_path / "data" / "collections")) == ["kb"]  # no staging left behind
    catalog.close()


def test_a_start_sweeps_what_interrupted_backups_and_uploads_left(tmp_path):
    catalog = Catalog(str(tmp_path / "data"))
    c = catalog.create(manifest("kb", 128))
    c.upsert([NewDocument("a", np.ones(128, np.float32))])
    folder = catalog.backup_dir("kb")
    create_archive(c, folder, "done", "now")
    catalog.close()
    unsigned = new_backup_id(datetime.now(UTC))
    left = {
        "cut.tar.staging/store.sqlite": b"x" * 100,  # the export of a backup killed mid-way
        "cut.tar.tmp": b"x",  # its archive, half written
        f"{unsigned}.tar": b"x",  # written, killed before its sidecar
        "done2.json.tmp": b"{",  # a sidecar, half written
    }
    for rel, data in left.items():
        os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
        with open(os.path.join(folder, rel), "wb") as f:
            f.write(data)
    uploads = os.path.join(tmp_path, "data", "backups", ".uploads")
    os.makedirs(uploads)
    with open(os.path.join(uploads, "0123.tar"), "wb") as f:  # an upload the crash cut off
        f.write(b"x" * 100)
    with open(os.path.join(folder, "mine.tar"), "wb") as f:  # not a name the server makes: not its to delete
        f.write(b"x")
    again = Catalog(str(tmp_path / "data"))
    again.open_all()
    assert sorted(os.listdir(folder)) == ["done.json", "done.tar", "mine.tar"]
    assert [b.id for b in list_archives(folder)] == ["done"]
    assert not os.path.exists(uploads)
    again.close()


def test_a_restore_that_fails_midway_puts_the_previous_collection_back(tmp_path, glosses, monkeypatch):
    _, X = glosses
    catalog = Catalog(str(tmp_path / "data"))
    c = catalog.create(manifest("kb", X.shape[1]))
    c.upsert(docs(X[:300], 0))
    create_archive(c, str(tmp_path), "b1", "now")
    c.upsert(docs(X[300:400], 300))
    real_rename = os.rename

    def failing_rename(src, dst):  # the archive's folder cannot take the collection's place
        if ".restore-" in str(src):
            raise OSError(5, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError):
        catalog.restore(str(tmp_path / "b1.tar"), replace=True)
    monkeypatch.setattr(os, "rename", real_rename)
    back = catalog.get("kb")
    assert len(back) == 400 and back.get("d350").id == "d350"  # the previous state, serving
    assert "kb" not in catalog.failed()
    assert sorted(os.listdir(tmp_path / "data" / "collections")) == ["kb"]
    catalog.close()


def test_a_collection_being_restored_is_busy_not_missing(tmp_path, glosses, monkeypatch):
    """Between the previous collection leaving and the archive's taking its place, requests for
    it are told to retry (503 collection_restoring, which clients retry), not that it does not
    exist (404): a client could otherwise drop its own state, or create the collection afresh."""
    _, X = glosses
    catalog = Catalog(str(tmp_path / "data"))
    c = catalog.create(manifest("kb", X.shape[1]))
    c.upsert(docs(X[:50], 0))
    create_archive(c, str(tmp_path), "b1", "now")
    real_rename = os.rename
    seen = []

    def looking_rename(src, dst):  # the archive's folder is about to take the collection's place
        if ".restore-" in str(src):
            with pytest.raises(NotReady) as busy:
                catalog.get("kb")
            seen.append(busy.value)
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", looking_rename)
    catalog.restore(str(tmp_path / "b1.tar"), replace=True)
    monkeypatch.setattr(os, "rename", real_rename)
    assert [e.code for e in seen] == ["collection_restoring"] and seen[0].retry_after_s == 1.0
    assert len(catalog.get("kb")) == 50
    with pytest.raises(NotFound):
        catalog.get("other")
    catalog.close()


def _store_with(sql: str):
    def change(members):
        path = tempfile.mktemp(suffix=".sqlite")
        with open(path, "wb") as f:
            f.write(members["store.sqlite"])
        conn = sqlite3.connect(path)
        conn.executescript(sql)
        conn.close()
        with open(path, "rb") as f:
            members["store.sqlite"] = f.read()

    return change


def _graph_with_a_link_past_its_end(members):
    name = next(n for n in members if n.startswith("snapshots/") and n.endswith(".bin"))
    data = bytearray(members[name])
    struct.pack_into("<I", data, 96 + 4, 0x7FFFFFFF)  # the first element's first link (after the header)
    members[name] = bytes(data)
    sidecar = json.loads(members[name + ".json"])
    members[name + ".json"] = json.dumps({**sidecar, "crc32": zlib.crc32(data)}).encode()


CRAFTED = {
    "an index that is not an object": lambda members: members.update({RAW_INDEX: b"[1, 2]"}),
    "a manifest that is a list": lambda members: members.update({"manifest.json": b"[]"}),
    "a snapshot file outside the folder": manifest_with(
        snapshot={"files": {"384": "../../../kb/snapshots/x.bin"}, "applied_seq": 1}
    ),
    "a rotation file outside the folder": manifest_with(
        rotation={"file": "/etc/passwd", "sha256": "0", "seed": 0, "n_fit": 1, "fitted_seq": 1, "energy": {}}
    ),
    "a dim that is a string": manifest_with(dim="384"),
    "an hnsw M out of range": manifest_with(hnsw={"m": 10**9, "ef_construction": 200, "ef_search": 100, "seed": 1}),
    "metadata that is not JSON": _store_with("UPDATE documents SET metadata = '{' WHERE rowid = 3"),
    "a vector of another dim": _store_with("UPDATE documents SET vector = x'00000000' WHERE rowid = 3"),
    "fewer documents than the index says": _store_with("DELETE FROM documents WHERE rowid = 3"),
    "no documents table": _store_with("DROP TABLE documents"),
    # the vector file is sized by the label sequence: 10^6 rows of 384 floats (1.5 GB), allocated for real
    "a label sequence far past its rows": _store_with("UPDATE sqlite_sequence SET seq = 1000000"),
    "a label far past its rows": _store_with("UPDATE documents SET label = 1000000 WHERE rowid = 3"),
}


def _archived(tmp_path, X):
    """A catalog holding "kb" (300 documents, its graphs saved) and the path of an archive of it."""
    catalog = Catalog(str(tmp_path / "data"))
    c = catalog.create(manifest("kb", X.shape[1]))
    c.upsert(docs(X[:300], 0))
    c.snapshot(force=True)
    create_archive(c, str(tmp_path), "b1", "now")
    return catalog, c, tmp_path / "b1.tar"


@pytest.mark.parametrize("craft", CRAFTED)
def test_a_crafted_archive_with_matching_checksums_is_refused_and_changes_nothing(tmp_path, glosses, craft):
    _, X = glosses
    catalog, c, archive = _archived(tmp_path, X)
    before = answers(c, X[2500:2510])
    archive.write_bytes(repacked(archive.read_bytes(), CRAFTED[craft]))
    with pytest.raises(Invalid) as refused:
        catalog.restore(str(archive), replace=True)
    assert refused.value.code == "invalid_archive"
    assert catalog.get("kb") is c and len(c) == 300 and answers(c, X[2500:2510]) == before
    assert sorted(os.listdir(tmp_path / "data" / "collections")) == ["kb"]
    catalog.close()


def test_a_crafted_graph_in_an_archive_is_rebuilt_from_its_store(tmp_path, glosses):
    """A link out of range (its sidecar's CRC recomputed) crashed the process at the first search."""
    _, X = glosses
    catalog, c, archive = _archived(tmp_path, X)
    archive.write_bytes(repacked(archive.read_bytes(), _graph_with_a_link_past_its_end))
    restored, _ = catalog.restore(str(archive), name="copy")
    Q = X[:40]
    assert [row[0].id for row in restored.search(Query(Q, 1)).matches] == [f"d{i}" for i in range(40)]
    # the rebuilt graphs were saved while staged: the restored collection names them, not the bad one
    assert restored.manifest.snapshot.files != c.manifest.snapshot.files and not restored.needs_snapshot
    catalog.close()


def test_a_backup_of_a_collection_dropped_meanwhile_is_not_found(tmp_path, glosses):
    """A drop closes the store while the backup copies it (it waits for writes, not backups):
    that was "the store is closed", a 500."""
    _, X = glosses
    catalog = Catalog(str(tmp_path / "data"))
    c = catalog.create(manifest("kb", X.shape[1]))
    c.upsert(docs(X[:50], 0))
    store = c._state.store
    copy = store.backup_to

    def dropped_first(path):
        drop = threading.Thread(target=catalog.drop, args=("kb",))  # another request's, as in a server
        drop.start()
        drop.join()
        return copy(path)

    store.backup_to = dropped_first
    with pytest.raises(NotFound) as missing:
        create_archive(c, str(tmp_path / "backups"), "b1", "now")
    assert missing.value.code == "collection_not_found"
    assert os.listdir(tmp_path / "backups") == []  # no archive, no staging left
    catalog.close()
