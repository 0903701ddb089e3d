"""Encoder upgrades: a resource of a collection (start, list, inspect, cut over, roll back,
finalize, abort)."""

from fastapi import APIRouter, Depends

from service import schemas
from service.engine import Engine
from service.routes import ERRORS, JsonRoute, get_engine

router = APIRouter(prefix="/v1/collections/{name}/upgrades", tags=["upgrades"], responses=ERRORS, route_class=JsonRoute)


@router.post("", status_code=202, response_model=schemas.UpgradeInfo)
async def start_upgrade(name: str, body: schemas.UpgradeCreate, engine: Engine = Depends(get_engine)):
    """Start re-embedding the collection with `model`. In the background vecnest embeds a sample
    with the new model, fits an orthogonal map from the new space into the old one and evaluates
    it on a held-out part (the gate); if it passes, new-model queries are served at once through
    the map. Then every document is re-embedded into new indexes; cut over when it caught up."""
    engine.require_ready()
    return await engine.upgrades.start(
        name,
        body.model,
        sample=body.sample,
        holdout=body.holdout,
        seed=body.seed,
        min_cosine=body.min_cosine,
        min_recall=body.min_recall,
    )


@router.get("", response_model=schemas.UpgradeList)
async def list_upgrades(name: str, engine: Engine = Depends(get_engine)):
    return schemas.UpgradeList(upgrades=engine.upgrades.records(name))


@router.get("/{upgrade_id}", response_model=schemas.UpgradeInfo)
async def get_upgrade(name: str, upgrade_id: str, engine: Engine = Depends(get_engine)):
    """State, fit figures, gate verdict and progress (done/total, rate, ETA)."""
    return engine.upgrades.get(name, upgrade_id)


@router.post("/{upgrade_id}/cutover", response_model=schemas.UpgradeInfo)
async def cut_over(
    name: str, upgrade_id: str, body: schemas.CutOverRequest | None = None, engine: Engine = Depends(get_engine)
):
    """Serve the new generation (atomically). Searches already running finish on the old one."""
    return await engine.upgrades.cut_over(name, upgrade_id, force=(body or schemas.CutOverRequest()).force)


@router.post("/{upgrade_id}/rollback", response_model=schemas.UpgradeInfo)
async def roll_back(name: str, upgrade_id: str, engine: Engine = Depends(get_engine)):
    """Serve the previous generation again (it was kept in sync since the cut-over)."""
    return await engine.upgrades.rollback(name, upgrade_id)


@router.post("/{upgrade_id}/finalize", response_model=schemas.UpgradeInfo)
async def finalize(name: str, upgrade_id: str, engine: Engine = Depends(get_engine)):
    """Delete the previous generation; no rollback after this."""
    return await engine.upgrades.finalize(name, upgrade_id)


@router.post("/{upgrade_id}/abort", response_model=schemas.UpgradeInfo)
async def abort(name: str, upgrade_id: str, engine: Engine = Depends(get_engine)):
    """Stop an upgrade before its cut-over and delete what it built."""
    return await engine.upgrades.abort(name, upgrade_id)
