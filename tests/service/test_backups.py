"""Backups over the API: snapshot → drop → restore in place, and download → upload to another
server, answer the same searches; a corrupt upload is a 422 that changes nothing, and so is one
whose encoder record is not the service's."""

import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError

import numpy as np

from service.settings import Settings
from tests.support.app import app_client
from tests.support.archives import manifest_with, repacked

ADMIN = {"Authorization": "Bearer backup-admin-key-0123456789"}
KEYS = [{"key": "backup-admin-key-0123456789", "role": "admin"}, {"key": "backup-reader-key-012345", "role": "read"}]


def searches(client, name: str, Q: np.ndarray) -> list:
    out = []
    for body in ({"k": 10}, {"k": 10, "dim": 64}, {"k": 10, "exact": True, "filter": {"part": 1}}):
        for q in Q:
            r = client.post(f"/v1/collections/{name}/search", json={"vector": q.tolist(), **body}, headers=ADMIN)
            assert r.status_code == 200, r.text
            out.append([(h["id"], round(h["score"], 5)) for h in r.json()["results"]])
    return out


def test_snapshot_drop_restore_and_upload_elsewhere(tmp_path, glosses):
    texts, X = glosses
    settings = Settings(data_dir=tmp_path / "a", snapshot_interval_s=3600, api_keys=KEYS)
    Q = X[2900:2930]
    with app_client(settings, fake=True) as a:
        # No background rotation fit (it would change the dim-64 answers between the two looks).
        create = {"name": "kb", "dim": 384, "dims": [64, 384], "elasticizer": {"kind": "none"}}
        assert a.post("/v1/collections", json=create, headers=ADMIN).status_code == 201
        for s in range(0, 2800, 700):
            docs = [
                {"id": f"g{i}", "vector": X[i].tolist(), "text": texts[i], "metadata": {"part": i % 3}}
                for i in range(s, s + 700)
            ]
            assert a.put("/v1/collections/kb/documents", json={"documents": docs}, headers=ADMIN).status_code == 200
        before = searches(a, "kb", Q)
        started = time.perf_counter()
        r = a.post("/v1/collections/kb/snapshots", headers=ADMIN)
        took_snapshot = time.perf_counter() - started
        assert r.status_code == 201, r.text
        snap = r.json()
        assert snap["documents"] == 2800 and snap["collection"] == "kb" and snap["seq"] >= 4
        assert a.post("/v1/collections/kb/snapshots", headers={"api-key": KEYS[1]["key"]}).status_code == 403
        listed = a.get("/v1/collections/kb/snapshots", headers=ADMIN).json()["snapshots"]
        assert [s["id"] for s in listed] == [snap["id"]]
        archive = a.get(f"/v1/collections/kb/snapshots/{snap['id']}", headers=ADMIN)
        assert archive.status_code == 200 and archive.headers["content-type"] == "application/x-tar"
        assert len(archive.content) == snap["bytes"] and hashlib.sha256(archive.content).hexdigest() == snap["sha256"]

        # later writes, then a drop: the restore brings back the state at the snapshot's seq
        a.put(
            "/v1/collections/kb/documents",
            json={"documents": [{"id": "late", "vector": X[2950].tolist()}]},
            headers=ADMIN,
        )
        assert a.delete("/v1/collections/kb", headers=ADMIN).status_code == 204
        started = time.perf_counter()
        r = a.post(f"/v1/collections/kb/snapshots/{snap['id']}/restore", headers=ADMIN)
        took_restore = time.perf_counter() - started
        assert r.status_code == 200 and r.json()["documents"] == 2800, r.text
        assert a.get("/v1/collections/kb/documents/late", headers=ADMIN).status_code == 404
        assert a.get("/v1/collections/kb/documents/g5", headers=ADMIN).json()["text"] == texts[5]
        assert searches(a, "kb", Q) == before
        unknown = a.post("/v1/collections/kb/snapshots/20260101T000000Z-00000000/restore", headers=ADMIN)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "snapshot_not_found"
    print(
        f"\nbackup figures: {snap['documents']} documents, archive {snap['bytes'] / 1e6:.1f} MB, "
        f"snapshot {took_snapshot:.2f} s, restore in place {took_restore:.2f} s"
    )

    other = Settings(data_dir=tmp_path / "b", snapshot_interval_s=3600, api_keys=KEYS)
    with app_client(other, fake=True) as b:
        upload = {**ADMIN, "Content-Type": "application/x-tar"}
        damaged = bytearray(archive.content)
        damaged[len(damaged) // 2] ^= 0x01
        for bad in (bytes(damaged), archive.content[: len(archive.content) // 2], b""):
            r = b.post("/v1/snapshots/restore?collection=kb2", content=bad, headers=upload)
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_archive", r.text
        assert b.get("/v1/collections", headers=ADMIN).json() == {"collections": [], "failed": []}
        r = b.post("/v1/snapshots/restore?collection=kb2", content=archive.content, headers={**ADMIN})
        assert r.status_code == 415  # an archive is not JSON, and not untyped either
        r = b.post("/v1/snapshots/restore?collection=kb2", content=archive.content, headers=upload)
        assert r.status_code == 201 and r.json()["name"] == "kb2" and r.json()["documents"] == 2800, r.text
        assert searches(b, "kb2", Q) == before
        r = b.post("/v1/snapshots/restore?collection=kb2", content=archive.content, headers=upload)
        assert r.status_code == 409  # the name is taken: replace=true swaps it
        r = b.post("/v1/snapshots/restore?collection=kb2&replace=true", content=archive.content, headers=upload)
        assert r.status_code == 201


def test_a_restore_in_place_waits_for_an_encoder_upgrade_to_end(tmp_path):
    settings = Settings(data_dir=tmp_path / "a", snapshot_interval_s=3600, models={"other": str(tmp_path)})
    with app_client(settings, fake=True) as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        docs = [{"id": f"d{i}", "text": f"document number {i} about topic {i % 7}"} for i in range(200)]
        assert c.put("/v1/collections/kb/documents", json={"documents": docs}).status_code == 200
        snap = c.post("/v1/collections/kb/snapshots").json()
        upgrade = c.post("/v1/collections/kb/upgrades", json={"model": "other", "sample": 100})
        assert upgrade.status_code == 202, upgrade.text
        r = c.post(f"/v1/collections/kb/snapshots/{snap['id']}/restore")
        assert r.status_code == 409 and r.json()["error"]["code"] == "upgrade_in_progress"
        assert c.post(f"/v1/collections/kb/upgrades/{upgrade.json()['id']}/abort").status_code == 200
        r = c.post(f"/v1/collections/kb/snapshots/{snap['id']}/restore")
        assert r.status_code == 200 and r.json()["documents"] == 200, r.text
        hit = c.post("/v1/collections/kb/search", json={"query": "document number 5 about topic 5", "k": 1})
        assert hit.json()["results"][0]["id"] == "d5"


def test_an_encoder_record_this_service_did_not_write_is_refused_at_upload_and_survived_at_start(tmp_path):
    """The manifest's encoder record is the service's ({model, dim, layers, ...}); an uploaded
    archive with another one was restored, then failed every text request and stopped the
    server from starting (KeyError: 'dim')."""
    settings = Settings(data_dir=tmp_path / "a", snapshot_interval_s=3600, api_keys=KEYS)
    upload = {**ADMIN, "Content-Type": "application/x-tar"}
    with app_client(settings, fake=True) as a:
        assert a.post("/v1/collections", json={"name": "t"}, headers=ADMIN).status_code == 201
        docs = [{"id": f"d{i}", "text": f"note number {i} about cats"} for i in range(20)]
        assert a.put("/v1/collections/t/documents", json={"documents": docs}, headers=ADMIN).status_code == 200
        snap = a.post("/v1/collections/t/snapshots", headers=ADMIN).json()
        archive = a.get(f"/v1/collections/t/snapshots/{snap['id']}", headers=ADMIN).content
        dim = a.get("/v1/collections/t", headers=ADMIN).json()["dim"]
        for encoder in ({"model": "x"}, "x", {"model": "x", "dim": str(dim)}, {"model": "x", "dim": dim + 1}):
            r = a.post(
                "/v1/snapshots/restore?collection=t2",
                content=repacked(archive, manifest_with(encoder=encoder)),
                headers=upload,
            )
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_archive", (encoder, r.text)
        assert [c["name"] for c in a.get("/v1/collections", headers=ADMIN).json()["collections"]] == ["t"]
        r = a.post("/v1/snapshots/restore?collection=t2", content=archive, headers=upload)
        assert r.status_code == 201, r.text
    # such a record already on disk (restored before the check): the server starts, its vectors serve
    (manifest,) = (tmp_path / "a" / "collections" / "t2").rglob("manifest.json")
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "encoder": {"model": "x"}}))
    with app_client(settings, fake=True) as a:
        r = a.post("/v1/collections/t2/search", json={"query": "cats"}, headers=ADMIN)
        assert r.status_code == 503 and r.json()["error"]["code"] == "encoder_unavailable", r.text
        hit = a.post("/v1/collections/t2/search", json={"vector": [1.0] * dim, "k": 3}, headers=ADMIN)
        assert hit.status_code == 200 and len(hit.json()["results"]) == 3
        assert a.post("/v1/collections/t/search", json={"query": "cats"}, headers=ADMIN).status_code == 200


def test_an_upgrade_started_while_a_restore_swaps_the_collection_begins_on_the_restored_one(tmp_path):
    """A restore in place and an upgrade of the same collection, started while the restore has
    swapped the homes but not yet forgotten the old collection's upgrades. Before, the upgrade
    began in between: its record landed in the restored home, the restore then forgot the live
    upgrade, and the record stayed "fitting" with nothing running it and no way to abort it (409);
    a restart would have resumed an upgrade the caller could no longer see end. Now the upgrade
    waits for the restore and begins on the restored collection."""
    settings = Settings(data_dir=tmp_path / "a", snapshot_interval_s=3600, models={"other": str(tmp_path)})
    with app_client(settings, fake=True) as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        docs = [{"id": f"d{i}", "text": f"document number {i} about topic {i % 7}"} for i in range(200)]
        assert c.put("/v1/collections/kb/documents", json={"documents": docs}).status_code == 200
        snap = c.post("/v1/collections/kb/snapshots").json()
        catalog = c.app.state.engine.catalog
        restore, swapped, release = catalog.restore, threading.Event(), threading.Event()

        def held_restore(*args):
            out = restore(*args)  # the restored collection serves from here on
            swapped.set()
            release.wait(60)
            return out

        catalog.restore = held_restore
        with ThreadPoolExecutor(2) as pool:
            restored = pool.submit(c.post, f"/v1/collections/kb/snapshots/{snap['id']}/restore")
            assert swapped.wait(60)
            started = pool.submit(c.post, "/v1/collections/kb/upgrades", json={"model": "other", "sample": 100})
            try:
                started.result(timeout=3)  # before, the upgrade began inside the restore
            except TimeoutError:
                pass  # it waits for the restore
            release.set()
            assert restored.result().status_code == 200, restored.result().text
            upgrade = started.result()
        assert upgrade.status_code == 202, upgrade.text
        upgrade_id = upgrade.json()["id"]
        info = c.get(f"/v1/collections/kb/upgrades/{upgrade_id}").json()
        assert info["progress"] is not None and info["progress"]["total"] == 200  # running
        r = c.post(f"/v1/collections/kb/upgrades/{upgrade_id}/abort")
        assert r.status_code == 200 and r.json()["state"] == "aborted", r.text
        assert c.post(f"/v1/collections/kb/snapshots/{snap['id']}/restore").status_code == 200


def test_an_upgrade_started_while_a_drop_runs_never_outlives_the_collection(tmp_path):
    """An upgrade started between a drop's forgetting the collection's upgrades and its deleting
    the collection: before, it began on the collection being deleted and stayed live in memory,
    so the next collection of that name could not be upgraded (409 upgrade_in_progress). Now it
    waits for the drop and finds no collection (404)."""
    settings = Settings(data_dir=tmp_path / "a", snapshot_interval_s=3600, models={"other": str(tmp_path)})
    docs = [{"id": f"d{i}", "text": f"document number {i} about topic {i % 7}"} for i in range(50)]
    with app_client(settings, fake=True) as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        assert c.put("/v1/collections/kb/documents", json={"documents": docs}).status_code == 200
        catalog = c.app.state.engine.catalog
        drop, entered, release = catalog.drop, threading.Event(), threading.Event()

        def held_drop(name):
            entered.set()
            release.wait(60)
            return drop(name)

        catalog.drop = held_drop
        with ThreadPoolExecutor(2) as pool:
            dropped = pool.submit(c.delete, "/v1/collections/kb")
            assert entered.wait(60)
            started = pool.submit(c.post, "/v1/collections/kb/upgrades", json={"model": "other", "sample": 20})
            try:
                started.result(timeout=3)  # before, the upgrade began on the collection being dropped
            except TimeoutError:
                pass  # it waits for the drop
            release.set()
            assert dropped.result().status_code == 204
            assert started.result().status_code == 404, started.result().text
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        assert c.put("/v1/collections/kb/documents", json={"documents": docs}).status_code == 200
        r = c.post("/v1/collections/kb/upgrades", json={"model": "other", "sample": 20})
        assert r.status_code == 202, r.text


def test_a_snapshot_deleted_while_it_is_downloaded_or_restored_is_read_whole(tmp_path, monkeypatch):
    """A download and a restore open the archive before anything else, and read the open file:
    a delete meanwhile cannot cut them short. Before, each checked the path, then opened it
    later; in a race run a download sent its 200 headers and dropped the connection (the file
    was gone: 2 of 932), and a restore answered 422 invalid_archive for an archive that was fine."""
    from index import remove_archive
    from service.ops import backups

    settings = Settings(data_dir=tmp_path / "a", snapshot_interval_s=3600)
    with app_client(settings, fake=True) as c:
        assert c.post("/v1/collections", json={"name": "kb", "dim": 4}).status_code == 201
        docs = [{"id": f"d{i}", "vector": [i, 1, 0, 0]} for i in range(300)]
        assert c.put("/v1/collections/kb/documents", json={"documents": docs}).status_code == 200
        folder = c.app.state.engine.catalog.backup_dir("kb")

        snap = c.post("/v1/collections/kb/snapshots").json()
        read_through = backups.read_through

        def deleted_first(archive, *args):
            assert remove_archive(folder, snap["id"])  # after the headers, before the body
            yield from read_through(archive, *args)

        monkeypatch.setattr(backups, "read_through", deleted_first)
        r = c.get(f"/v1/collections/kb/snapshots/{snap['id']}")
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == snap["sha256"]
        monkeypatch.undo()
        assert c.get(f"/v1/collections/kb/snapshots/{snap['id']}").status_code == 404

        snap = c.post("/v1/collections/kb/snapshots").json()
        assert c.post("/v1/collections/kb/documents/delete", json={"ids": ["d1", "d2"]}).json()["deleted"] == 2
        engine = c.app.state.engine
        restore = engine.restore_collection

        async def deleted_meanwhile(*args, **kwargs):
            assert remove_archive(folder, snap["id"])
            return await restore(*args, **kwargs)

        monkeypatch.setattr(engine, "restore_collection", deleted_meanwhile)
        r = c.post(f"/v1/collections/kb/snapshots/{snap['id']}/restore")
        assert r.status_code == 200 and r.json()["documents"] == 300, r.text
        monkeypatch.undo()
        r = c.post(f"/v1/collections/kb/snapshots/{snap['id']}/restore")
        assert r.status_code == 404 and r.json()["error"]["code"] == "snapshot_not_found"
        assert c.delete(f"/v1/collections/kb/snapshots/{snap['id']}").status_code == 404
