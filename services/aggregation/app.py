"""Aggregation service: energy per meter per quarter, local-time rollups, and the read API reporting uses."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query
from pydantic import BaseModel, Field

from libs.service import ServiceContext, bad_request, create_service_app, get_context
from services.aggregation import subject_api
from services.aggregation.consumer import REBUILD_METER, Aggregation
from services.aggregation.localtime import local_date, local_midnight, month_start, year_start, zone
from services.aggregation.model import Model
from services.aggregation.rollups import Rollups

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
router = APIRouter(prefix="/internal", include_in_schema=False)

_HOUR = timedelta(hours=1)
MAX_RANGES = 50_000


def _aware(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise bad_request("start", "start and end need an offset")


def _ceil_hour(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    floor = moment.replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + _HOUR


@router.get("/meters/{meter_id}/hourly")
async def meter_hourly(
    meter_id: int,
    start: datetime = Query(description="Inclusive, with offset"),
    end: datetime = Query(description="Exclusive, with offset"),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Hourly energy of a meter between two instants (UTC hours that start in [start, end))."""
    _aware(start, end)
    rows = await ctx.db.fetch(
        "SELECT date_trunc('hour', quarter, 'UTC') AS hour, sum(energy) AS energy, max(quality) AS quality"
        " FROM meter_energy_quarter WHERE meter_id = $1 AND quarter >= $2 AND quarter < $3"
        " GROUP BY 1 ORDER BY 1",
        meter_id,
        _ceil_hour(start),
        _ceil_hour(end),
    )
    return [
        {"hour": row["hour"].isoformat(), "energy": row["energy"], "quality": row["quality"]} for row in rows
    ]


async def _quarters(
    ctx: ServiceContext, table: str, column: str, ident: int, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    _aware(start, end)
    rows = await ctx.db.fetch(
        f"SELECT quarter, energy, quality FROM {table} WHERE {column} = $1 AND quarter >= $2 AND quarter < $3"
        " ORDER BY quarter",
        ident,
        start,
        end,
    )
    return [
        {"quarter": row["quarter"].isoformat(), "energy": row["energy"], "quality": row["quality"]}
        for row in rows
    ]


@router.get("/meters/{meter_id}/quarters")
async def meter_quarters(
    meter_id: int,
    start: datetime = Query(description="Inclusive, with offset"),
    end: datetime = Query(description="Exclusive, with offset"),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """A meter's energy per 15-minute UTC bucket starting in [start, end)."""
    return await _quarters(ctx, "meter_energy_quarter", "meter_id", meter_id, start, end)


@router.get("/virtualmeters/{virtual_meter_id}/quarters")
async def virtual_meter_quarters(
    virtual_meter_id: int,
    start: datetime = Query(description="Inclusive, with offset"),
    end: datetime = Query(description="Exclusive, with offset"),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """A virtual meter's energy per quarter (quarters where all its inputs have energy)."""
    return await _quarters(
        ctx, "virtual_meter_energy_quarter", "virtual_meter_id", virtual_meter_id, start, end
    )


@router.get("/offlinemeters/{offline_meter_id}/quarters")
async def offline_meter_quarters(
    offline_meter_id: int,
    start: datetime = Query(description="Inclusive, with offset"),
    end: datetime = Query(description="Exclusive, with offset"),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """An offline meter's period totals spread over quarters (quality manual)."""
    return await _quarters(
        ctx, "offline_meter_energy_quarter", "offline_meter_id", offline_meter_id, start, end
    )


class Ranges(BaseModel):
    ranges: list[tuple[datetime, datetime]] = Field(
        max_length=MAX_RANGES, description="[start, end) instants with offsets"
    )


@router.post("/meters/{meter_id}/sums")
async def meter_sums(
    meter_id: int, body: Ranges, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    """Energy, worst quality and number of quarters of a meter in each [start, end) (quarters starting in it).

    Exact for any local bucket whose bounds fall on quarters, which every local midnight and hour does.
    """
    for index, (start, end) in enumerate(body.ranges):
        if start.tzinfo is None or end.tzinfo is None:
            raise bad_request(f"ranges.{index}", "instants need an offset")
        if end < start:
            raise bad_request(f"ranges.{index}", "a range must not end before it starts")
    rows = await ctx.db.fetch(
        "SELECT b.i, coalesce(sum(q.energy), 0) AS energy, max(q.quality) AS quality,"
        " count(q.quarter)::int AS quarters"
        " FROM unnest($2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY AS b(s, e, i)"
        " LEFT JOIN meter_energy_quarter q ON q.meter_id = $1 AND q.quarter >= b.s AND q.quarter < b.e"
        " GROUP BY b.i ORDER BY b.i",
        meter_id,
        [start for start, _ in body.ranges],
        [end for _, end in body.ranges],
    )
    return [{"energy": r["energy"], "quality": r["quality"], "quarters": r["quarters"]} for r in rows]


Rollup = Literal["daily", "monthly", "yearly"]
_ROLLUP_SQL = {
    "daily": "SELECT local_date AS d, energy, quality, quarters FROM meter_energy_daily"
    " WHERE meter_id = $1 AND local_date >= $2 AND local_date < $3 ORDER BY local_date",
    "monthly": "SELECT local_month AS d, energy, quality, quarters FROM meter_energy_monthly"
    " WHERE meter_id = $1 AND local_month >= $2 AND local_month < $3 ORDER BY local_month",
    "yearly": "SELECT make_date(local_year, 1, 1) AS d, energy, quality, quarters FROM meter_energy_yearly"
    " WHERE meter_id = $1 AND make_date(local_year, 1, 1) >= $2 AND make_date(local_year, 1, 1) < $3"
    " ORDER BY local_year",
}
_PERIOD_KEY = {"daily": lambda d: d, "monthly": month_start, "yearly": year_start}


async def _rollup(
    ctx: ServiceContext, meter_id: int, period: Rollup, start: date, end: date
) -> dict[str, Any]:
    """Stored rollups of a meter whose period starts in [start, end), in the zone they were computed in.

    `stale` lists the periods (by first day) in range with changes the rollup task has not taken in yet, and
    `rebuilding` says the meter's rollups are being rebuilt: a reader computes those from quarters instead.
    All from one snapshot.
    """
    if end < start:
        raise bad_request("end", "end must not be before start")
    async with ctx.db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        timezone = await conn.fetchval("SELECT timezone FROM meter_zones WHERE meter_id = $1", meter_id)
        rebuilding = bool(
            await conn.fetchval(
                "SELECT 1 FROM rebuild_pending WHERE kind = $1 AND source_id = $2", REBUILD_METER, meter_id
            )
        )
        rows = await conn.fetch(_ROLLUP_SQL[period], meter_id, start, end)
        stale: set[date] = set()
        if timezone is not None:
            tz = zone(timezone)
            pending = await conn.fetch(
                "SELECT DISTINCT (extract(epoch FROM quarter) * 1000)::bigint AS q FROM rollup_pending"
                " WHERE meter_id = $1 AND quarter >= $2 AND quarter < $3",
                meter_id,
                local_midnight(start, tz),
                local_midnight(end, tz),
            )
            key = _PERIOD_KEY[period]
            stale = {key(local_date(row["q"], tz)) for row in pending}
    return {
        "meter_id": meter_id,
        "timezone": timezone,
        "rebuilding": rebuilding,
        "stale": [day.isoformat() for day in sorted(stale)],
        "rows": [
            {
                "date": r["d"].isoformat(),
                "energy": r["energy"],
                "quality": r["quality"],
                "quarters": r["quarters"],
            }
            for r in rows
        ],
    }


@router.get("/meters/{meter_id}/daily")
async def meter_daily(
    meter_id: int,
    start: date = Query(description="First local date, inclusive"),
    end: date = Query(description="Last local date, exclusive"),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Stored daily energy in the meter's local time."""
    return await _rollup(ctx, meter_id, "daily", start, end)


@router.get("/meters/{meter_id}/monthly")
async def meter_monthly(
    meter_id: int,
    start: date = Query(description="Local months starting on or after this date"),
    end: date = Query(description="Local months starting before this date"),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Stored monthly energy in the meter's local time (rows dated on the 1st)."""
    return await _rollup(ctx, meter_id, "monthly", start, end)


@router.get("/meters/{meter_id}/yearly")
async def meter_yearly(
    meter_id: int,
    start: date = Query(description="Local years starting on or after this date"),
    end: date = Query(description="Local years starting before this date"),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Stored yearly energy in the meter's local time (rows dated on 1 January)."""
    return await _rollup(ctx, meter_id, "yearly", start, end)


@router.post("/bindings/sync")
async def sync_bindings(ctx: ServiceContext = Depends(get_context)) -> dict[str, str]:
    """Copy the registry's meter bindings and zones now (they also follow change events and a timer)."""
    aggregation: Aggregation = ctx.state["aggregation"]
    await aggregation.sync_bindings()
    await aggregation.sync_zones()
    model: Model = ctx.state["model"]
    await model.sync()
    return {"status": "synced"}


@router.post("/rollups/run")
async def run_rollups(ctx: ServiceContext = Depends(get_context)) -> dict[str, int]:
    """Take in every pending change now (the rollup task does so about once a second anyway)."""
    rollups: Rollups = ctx.state["rollups"]
    rounds = 1
    while await rollups.run_once():
        rounds += 1
    return {"rounds": rounds}


async def setup(ctx: ServiceContext) -> None:
    aggregation = Aggregation(ctx)
    await aggregation.sync_when_ready()
    model = Model(ctx)
    try:
        await model.sync()
    except Exception:
        log.warning("aggregation model not copied yet; retrying soon", exc_info=True)
        model.stale.set()
    aggregation.also_stale.append(model.stale)
    aggregation.register()
    ctx.background(model.refresher, "aggregation-model")
    ctx.state["aggregation"] = aggregation
    ctx.state["model"] = model
    rollups = Rollups(ctx)
    rollups.register()
    ctx.state["rollups"] = rollups


def create_app() -> FastAPI:
    return create_service_app(
        "aggregation", routers=[router, subject_api.router], migrations=MIGRATIONS, setup=setup
    )
