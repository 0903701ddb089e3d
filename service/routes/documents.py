"""Documents: upsert in batches, get, delete one or many."""

from fastapi import APIRouter, Depends, Query, Response
from fastapi.routing import APIRoute

from index import NotFound
from service import schemas
from service.engine import Engine
from service.ops import documents as ops
from service.routes import ERRORS, JsonRoute, get_engine

router = APIRouter(
    prefix="/v1/collections/{name}/documents", tags=["documents"], responses=ERRORS, route_class=JsonRoute
)


@router.put("", response_model=schemas.UpsertResponse, response_model_exclude_none=True)
async def upsert_documents(name: str, body: schemas.UpsertRequest, engine: Engine = Depends(get_engine)):
    """Insert or replace documents by id, all or nothing. Text is embedded by the collection's
    model unless a vector is given. Acknowledged only after the write is committed."""
    return await ops.upsert(engine, name, body.documents)


def upsert_route() -> APIRoute:
    """The upsert route, which the hot path serves (service/hot_path.py)."""
    (route,) = [r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is upsert_documents]
    return route


@router.post("/delete", response_model=schemas.DeleteResponse)
async def delete_documents(name: str, body: schemas.DeleteRequest, engine: Engine = Depends(get_engine)):
    """Delete many documents by id; ids that do not exist are listed in `not_found`."""
    return await ops.delete(engine, name, body.ids)


@router.get("", response_model=schemas.DocumentPage, response_model_exclude_none=True)
async def list_documents(
    name: str,
    after: str | None = Query(None, description="the cursor of the previous page (its `next`)"),
    limit: int = Query(100, ge=1, le=1000),
    include_vector: bool = Query(False),
    engine: Engine = Depends(get_engine),
):
    """Every live document, a page at a time in id order: export and migration read a
    collection through this."""
    return await ops.page(engine, name, after, limit, include_vector)


@router.get("/{doc_id}", response_model=schemas.DocumentOut, response_model_exclude_none=True)
async def get_document(
    name: str, doc_id: str, include_vector: bool = Query(False), engine: Engine = Depends(get_engine)
):
    return await ops.get(engine, name, doc_id, include_vector)


@router.delete("/{doc_id}", status_code=204)
async def delete_document(name: str, doc_id: str, engine: Engine = Depends(get_engine)):
    result = await ops.delete(engine, name, [doc_id])
    if not result.deleted:
        raise NotFound(f"document {doc_id!r} not found in collection {name!r}", code="document_not_found")
    return Response(status_code=204)
