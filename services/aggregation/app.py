"""Aggregation service: hourly energy per meter, and the read API reporting uses."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query

from libs.service import ServiceContext, bad_request, create_service_app, get_context
from services.aggregation.consumer import Aggregation

MIGRATIONS = Path(__file__).parent / "migrations"
router = APIRouter(prefix="/internal", include_in_schema=False)


@router.get("/meters/{meter_id}/hourly")
async def meter_hourly(
    meter_id: int,
    start: datetime = Query(description="Inclusive, with offset"),
    end: datetime = Query(description="Exclusive, with offset"),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Hourly energy of a meter between two instants (UTC hours that start in [start, end))."""
    if start.tzinfo is None or end.tzinfo is None:
        raise bad_request("start", "start and end need an offset")
    rows = await ctx.db.fetch(
        "SELECT hour, energy, quality FROM meter_energy_hourly WHERE meter_id = $1 AND hour >= $2 AND hour < $3"
        " ORDER BY hour",
        meter_id,
        start,
        end,
    )
    return [
        {"hour": row["hour"].isoformat(), "energy": row["energy"], "quality": row["quality"]} for row in rows
    ]


@router.post("/bindings/sync")
async def sync_bindings(ctx: ServiceContext = Depends(get_context)) -> dict[str, str]:
    """Copy the registry's meter bindings now (they also follow change events and a one-minute timer)."""
    aggregation: Aggregation = ctx.state["aggregation"]
    await aggregation.sync_bindings()
    return {"status": "synced"}


async def setup(ctx: ServiceContext) -> None:
    aggregation = Aggregation(ctx)
    await aggregation.sync_when_ready()
    aggregation.register()
    ctx.state["aggregation"] = aggregation


def create_app() -> FastAPI:
    return create_service_app("aggregation", routers=[router], migrations=MIGRATIONS, setup=setup)
