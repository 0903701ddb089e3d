"""Backups of collections: create (while writes go on), list, download, delete, restore in
place, and restore an uploaded archive under any name.

Archives live in `<data_dir>/backups/<collection>/` (`Catalog.backup_dir`), outside the
collection's own folder, so a dropped collection can be restored. The archive format, its
checks and its files are `index.backup`'s.
"""

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import BinaryIO

from starlette.concurrency import run_in_threadpool

from index import (
    Invalid,
    NotFound,
    TooLarge,
    check_name,
    create_archive,
    list_archives,
    new_backup_id,
    open_archive,
    remove_archive,
)
from service import schemas
from service.engine import Engine
from service.ops.collections import info as collection_info


def _folder(engine: Engine, name: str) -> str:
    """Where the backups of `name` live; a name no collection could have has none (404)."""
    catalog = engine.require_ready()
    try:
        return catalog.backup_dir(name)
    except Invalid:
        raise NotFound(f"collection {name!r} has no snapshots", code="snapshot_not_found") from None


async def create(engine: Engine, name: str) -> schemas.SnapshotInfo:
    collection = await engine.current(name)
    folder = _folder(engine, name)
    now = datetime.now(UTC)
    made = await run_in_threadpool(create_archive, collection.backend, folder, new_backup_id(now), now.isoformat())
    return schemas.SnapshotInfo(**made.to_json())


def list_all(engine: Engine, name: str) -> schemas.SnapshotList:
    found = list_archives(_folder(engine, name))
    return schemas.SnapshotList(snapshots=[schemas.SnapshotInfo(**b.to_json()) for b in found])


def open_snapshot(engine: Engine, name: str, snapshot_id: str) -> BinaryIO:
    """The archive file of a backup, open for reading (a delete meanwhile leaves it readable to
    the end); NotFound for an unknown (or malformed) id, or one deleted before it was opened."""
    archive = open_archive(_folder(engine, name), snapshot_id)
    if archive is None:
        raise NotFound(f"collection {name!r} has no snapshot {snapshot_id!r}", code="snapshot_not_found")
    return archive


def read_through(archive: BinaryIO, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of an open archive, `chunk` at a time; closes it at the end."""
    with archive:
        while data := archive.read(chunk):
            yield data


def delete(engine: Engine, name: str, snapshot_id: str) -> None:
    if not remove_archive(_folder(engine, name), snapshot_id):
        raise NotFound(f"collection {name!r} has no snapshot {snapshot_id!r}", code="snapshot_not_found")


async def restore(engine: Engine, name: str, snapshot_id: str) -> schemas.CollectionInfo:
    """Put collection `name` back exactly as it was at the snapshot's seq (replacing it, or
    recreating it after a drop)."""
    with await run_in_threadpool(open_snapshot, engine, name, snapshot_id) as archive:
        collection = await engine.restore_collection(archive, name, replace=True)
    return collection_info(collection, engine)


async def restore_upload(
    engine: Engine, name: str | None, body: AsyncIterator[bytes], replace: bool
) -> schemas.CollectionInfo:
    """Restore an uploaded archive (streamed to disk, at most `max_archive_bytes`) as `name`
    (default: the name inside the archive)."""
    if name is not None:
        check_name(name)
    elif replace:
        raise Invalid("replace needs the collection to replace: give ?collection=NAME", code="invalid_request")
    catalog = engine.require_ready()
    uploads = catalog.uploads_dir()
    os.makedirs(uploads, exist_ok=True)
    path = os.path.join(uploads, f"{uuid.uuid4().hex}.tar")
    limit = engine.settings.max_archive_bytes
    try:
        size = 0
        with open(path, "wb") as out:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(
                        f"the archive exceeds {limit} bytes (VECNEST_MAX_ARCHIVE_BYTES)", code="body_too_large"
                    )
                await run_in_threadpool(out.write, chunk)
        if size == 0:
            raise Invalid("send the archive as the request body", code="invalid_archive")
        collection = await engine.restore_collection(path, name, replace=replace)
    finally:
        if os.path.exists(path):
            os.remove(path)
    return collection_info(collection, engine)
