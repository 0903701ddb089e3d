"""Collections: create, list, describe, drop."""

from fastapi import APIRouter, Depends, Response

from service import schemas
from service.engine import Engine
from service.routes import get_engine

router = APIRouter(prefix="/v1/collections", tags=["collections"])


@router.post("", status_code=201, response_model=schemas.CollectionInfo,
             responses={409: {"model": schemas.ErrorResponse}, 422: {"model": schemas.ErrorResponse}})
async def create_collection(body: schemas.CollectionCreate, engine: Engine = Depends(get_engine)):
    """Create a collection. Give `model` (or nothing, for the default model) to embed text,
    or `dim` without `model` for a vector-only collection."""
    return await engine.create_collection(body)


@router.get("", response_model=schemas.CollectionList)
async def list_collections(engine: Engine = Depends(get_engine)):
    return engine.list_collections()


@router.get("/{name}", response_model=schemas.CollectionInfo, responses={404: {"model": schemas.ErrorResponse}})
async def describe_collection(name: str, engine: Engine = Depends(get_engine)):
    return engine.describe(name)


@router.delete("/{name}", status_code=204, responses={404: {"model": schemas.ErrorResponse}})
async def drop_collection(name: str, engine: Engine = Depends(get_engine)):
    await engine.drop_collection(name)
    return Response(status_code=204)
