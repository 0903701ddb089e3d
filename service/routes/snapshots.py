"""Backups ("snapshots" in the API, as in Qdrant): create, list, download, delete, restore in
place; and restore an uploaded archive, here or on another server."""

import os

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service import schemas
from service.auth import require_collection
from service.engine import Engine
from service.ops import backups as ops
from service.routes import ERRORS, JsonRoute, embedded_only, get_engine

RESTORE_UPLOAD_PATH = "/v1/snapshots/restore"  # the one route whose body is not JSON (an archive)

router = APIRouter(
    tags=["snapshots"],
    responses=ERRORS,
    route_class=JsonRoute,
    dependencies=[Depends(embedded_only("backup archives (use the backend's own snapshots)"))],
)


@router.post("/v1/collections/{name}/snapshots", status_code=201, response_model=schemas.SnapshotInfo)
async def create_snapshot(name: str, engine: Engine = Depends(get_engine)):
    """A consistent archive of the collection as of one write (`seq`), taken while writes go on:
    the store through SQLite's online backup, with the graph snapshot and rotation it names.
    Kept under the data directory, outside the collection's folder (it survives a drop)."""
    return await ops.create(engine, name)


@router.get("/v1/collections/{name}/snapshots", response_model=schemas.SnapshotList)
async def list_snapshots(name: str, engine: Engine = Depends(get_engine)):
    return ops.list_all(engine, name)


@router.get(
    "/v1/collections/{name}/snapshots/{snapshot_id}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": {}}, "description": "the archive"}},
)
async def download_snapshot(name: str, snapshot_id: str, engine: Engine = Depends(get_engine)):
    """The archive, read from a file opened before the headers go out: a delete meanwhile
    cannot cut the body short (the name and id are checked: plain characters only)."""
    archive = await run_in_threadpool(ops.open_snapshot, engine, name, snapshot_id)
    headers = {
        "content-length": str(os.fstat(archive.fileno()).st_size),
        "content-disposition": f'attachment; filename="{name}-{snapshot_id}.tar"',
    }
    return StreamingResponse(ops.read_through(archive), media_type="application/x-tar", headers=headers)


@router.delete("/v1/collections/{name}/snapshots/{snapshot_id}", status_code=204)
async def delete_snapshot(name: str, snapshot_id: str, engine: Engine = Depends(get_engine)):
    ops.delete(engine, name, snapshot_id)
    return Response(status_code=204)


@router.post("/v1/collections/{name}/snapshots/{snapshot_id}/restore", response_model=schemas.CollectionInfo)
async def restore_snapshot(name: str, snapshot_id: str, engine: Engine = Depends(get_engine)):
    """Put the collection back exactly as it was at the snapshot's seq (it replaces the current
    one, or recreates a dropped one). Refused (409) during an encoder upgrade."""
    return await ops.restore(engine, name, snapshot_id)


@router.post(
    RESTORE_UPLOAD_PATH,
    status_code=201,
    response_model=schemas.CollectionInfo,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "the archive; sent as application/x-tar or application/octet-stream",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def restore_upload(
    request: Request,
    collection: str | None = Query(
        None, pattern=schemas.NAME_PATTERN, description="restore under this name (default: the archive's)"
    ),
    replace: bool = Query(False, description="replace an existing collection of that name"),
    engine: Engine = Depends(get_engine),
):
    """Recreate a collection from an archive downloaded from any vecnest server (the request
    body, `application/x-tar`, streamed to disk). The archive is verified (every file's
    checksum, the manifest, SQLite's integrity check) before anything changes: a corrupt or
    truncated one is a 422 that changes nothing. A key limited to collections names one of
    them as `collection` (it may otherwise replace, or create, any other)."""
    require_collection(request, collection)
    return await ops.restore_upload(engine, collection, request.stream(), replace)
