"""Encoder upgrades of a collection: start, list, inspect, cut over, roll back, finalize, abort.

The work is `UpgradeManager`'s (engine.upgrades); this turns its records into the typed
`UpgradeInfo` the API returns.
"""

from typing import Any

from index import upgrades
from service import schemas
from service.engine import Engine


async def start(engine: Engine, name: str, req: schemas.UpgradeCreate) -> schemas.UpgradeInfo:
    engine.require_ready()
    record = await engine.upgrades.start(
        name,
        req.model,
        sample=req.sample,
        holdout=req.holdout,
        seed=req.seed,
        min_cosine=req.min_cosine,
        min_recall=req.min_recall,
        maps=req.maps,
        labelled=[q.model_dump() for q in req.labelled_queries] if req.labelled_queries else None,
    )
    return info(record)


async def list_all(engine: Engine, name: str) -> schemas.UpgradeList:
    engine.require_ready()
    return schemas.UpgradeList(upgrades=[info(r, p) for r, p in await engine.upgrades.records(name)])


async def get(engine: Engine, name: str, upgrade_id: str) -> schemas.UpgradeInfo:
    engine.require_ready()
    return info(*await engine.upgrades.get(name, upgrade_id))


async def cut_over(engine: Engine, name: str, upgrade_id: str, force: bool) -> schemas.UpgradeInfo:
    engine.require_ready()
    return info(await engine.upgrades.cut_over(name, upgrade_id, force=force))


async def rollback(engine: Engine, name: str, upgrade_id: str) -> schemas.UpgradeInfo:
    engine.require_ready()
    return info(await engine.upgrades.rollback(name, upgrade_id))


async def finalize(engine: Engine, name: str, upgrade_id: str) -> schemas.UpgradeInfo:
    engine.require_ready()
    return info(await engine.upgrades.finalize(name, upgrade_id))


async def abort(engine: Engine, name: str, upgrade_id: str) -> schemas.UpgradeInfo:
    engine.require_ready()
    return info(await engine.upgrades.abort(name, upgrade_id))


def info(record: upgrades.UpgradeRecord, progress: dict[str, Any] | None = None) -> schemas.UpgradeInfo:
    fields = record.to_json()
    fields["labelled_queries"] = len(fields.pop("labelled") or [])
    return schemas.UpgradeInfo(**fields, progress=schemas.UpgradeProgress(**progress) if progress is not None else None)
