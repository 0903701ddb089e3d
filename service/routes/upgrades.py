"""Encoder upgrades: a resource of a collection (start, list, inspect, cut over, roll back,
finalize, abort)."""

from fastapi import APIRouter, Depends

from service import schemas
from service.engine import Engine
from service.ops import upgrades as ops
from service.routes import ERRORS, JsonRoute, get_engine

router = APIRouter(
    prefix="/v1/collections/{name}/upgrades",
    tags=["upgrades"],
    responses=ERRORS,
    route_class=JsonRoute,
)


@router.post("", status_code=202, response_model=schemas.UpgradeInfo)
async def start_upgrade(name: str, body: schemas.UpgradeCreate, engine: Engine = Depends(get_engine)):
    """Start re-embedding the collection with `model`. In the background vecnest embeds a sample
    with the new model, fits an orthogonal map from the new space into the old one and evaluates
    it on a held-out part (the gate); if it passes, new-model queries are served at once through
    the map. Then every document is re-embedded into new indexes; cut over when it caught up."""
    return await ops.start(engine, name, body)


@router.get("", response_model=schemas.UpgradeList)
async def list_upgrades(name: str, engine: Engine = Depends(get_engine)):
    return await ops.list_all(engine, name)


@router.get("/{upgrade_id}", response_model=schemas.UpgradeInfo)
async def get_upgrade(name: str, upgrade_id: str, engine: Engine = Depends(get_engine)):
    """State, fit figures, gate verdict and progress (done/total, rate, ETA)."""
    return await ops.get(engine, name, upgrade_id)


@router.post("/{upgrade_id}/cutover", response_model=schemas.UpgradeInfo)
async def cut_over(
    name: str, upgrade_id: str, body: schemas.CutOverRequest | None = None, engine: Engine = Depends(get_engine)
):
    """Serve the new generation (atomically). Searches already running finish on the old one."""
    return await ops.cut_over(engine, name, upgrade_id, force=(body or schemas.CutOverRequest()).force)


@router.post("/{upgrade_id}/rollback", response_model=schemas.UpgradeInfo)
async def roll_back(name: str, upgrade_id: str, engine: Engine = Depends(get_engine)):
    """Serve the previous generation again (it was kept in sync since the cut-over)."""
    return await ops.rollback(engine, name, upgrade_id)


@router.post("/{upgrade_id}/finalize", response_model=schemas.UpgradeInfo)
async def finalize(name: str, upgrade_id: str, engine: Engine = Depends(get_engine)):
    """Delete the previous generation; no rollback after this."""
    return await ops.finalize(engine, name, upgrade_id)


@router.post("/{upgrade_id}/abort", response_model=schemas.UpgradeInfo)
async def abort(name: str, upgrade_id: str, engine: Engine = Depends(get_engine)):
    """Stop an upgrade before its cut-over and delete what it built."""
    return await ops.abort(engine, name, upgrade_id)
