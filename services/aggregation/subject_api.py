"""The read route reports use: energy, cost, kgce and kgco2e of any subject per hour, day, month or year.

``GET /internal/subjects/{kind}/{id}/{rollup}`` with kind one of meter, virtualmeter, offlinemeter, space,
equipment, combinedequipment, tenant, store, shopfloor and rollup one of hourly, daily, monthly, yearly.

* daily, monthly, yearly: ``start`` and ``end`` are local dates (start inclusive, end exclusive); a row is a
  period whose first day lies in [start, end), in the subject's zone. Meters read their stored rollups
  (services/aggregation/rollups.py); other subjects read theirs (services/aggregation/subject_rollups.py).
* hourly: ``start`` and ``end`` are instants with an offset; a row is a local clock hour (so a +05:30 zone's
  hours start at :30 UTC) starting in [start, end), summed from the stored quarters.

``direction=output`` (space, equipment and combined equipment only; default ``input``) reads the output energy
rollups instead (services/aggregation/subjects.py): what an equipment delivers, so that an efficiency is
output over input of the same periods.

kgce and kgco2e are the energy times the energy category's factors (a change of factor applies at once).
``cost`` is null where no tariff applies. ``stale`` lists the local dates in range with changes the rollup
task has not taken in yet (the rows there will still change); ``rebuilding`` says the subject is being rebuilt.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from asyncpg.pool import PoolConnectionProxy
from fastapi import APIRouter, Depends, Query

from libs.service import ServiceContext, bad_request, get_context, not_found
from services.aggregation.consumer import REBUILD_METER
from services.aggregation.localtime import local_date, local_midnight, zone
from services.aggregation.subjects import OUTPUT_KINDS, output_kind

router = APIRouter(prefix="/internal", include_in_schema=False)

Kind = Literal[
    "meter",
    "virtualmeter",
    "offlinemeter",
    "space",
    "equipment",
    "combinedequipment",
    "tenant",
    "store",
    "shopfloor",
]
Rollup = Literal["hourly", "daily", "monthly", "yearly"]
Direction = Literal["input", "output"]

#: route kind -> the kind stored in source_info / subjects
KINDS: dict[str, str] = {
    "meter": "meter",
    "virtualmeter": "virtual_meter",
    "offlinemeter": "offline_meter",
    "space": "space",
    "equipment": "equipment",
    "combinedequipment": "combined_equipment",
    "tenant": "tenant",
    "store": "store",
    "shopfloor": "shopfloor",
}

OUTPUT_ROUTE_KINDS = tuple(route for route, kind in KINDS.items() if kind in OUTPUT_KINDS)

_METER_ROLLUP = {
    "daily": (
        "SELECT r.local_date AS d, r.energy, r.cost, r.quality, r.quarters FROM meter_energy_daily r"
        " WHERE r.meter_id = $1 AND r.local_date >= $2 AND r.local_date < $3 ORDER BY 1"
    ),
    "monthly": (
        "SELECT r.local_month AS d, r.energy, r.cost, r.quality, r.quarters FROM meter_energy_monthly r"
        " WHERE r.meter_id = $1 AND r.local_month >= $2 AND r.local_month < $3 ORDER BY 1"
    ),
    "yearly": (
        "SELECT make_date(r.local_year, 1, 1) AS d, r.energy, r.cost, r.quality, r.quarters"
        " FROM meter_energy_yearly r WHERE r.meter_id = $1 AND make_date(r.local_year, 1, 1) >= $2"
        " AND make_date(r.local_year, 1, 1) < $3 ORDER BY 1"
    ),
}

_SUBJECT_ROLLUP = {
    "daily": (
        "SELECT local_date AS d, energy_category_id, energy_item_id, energy, cost, quality, quarters"
        " FROM subject_energy_daily WHERE kind = $1 AND subject_id = $2 AND local_date >= $3 AND local_date < $4"
        " ORDER BY 1, 2, 3"
    ),
    "monthly": (
        "SELECT local_month AS d, energy_category_id, energy_item_id, energy, cost, quality, quarters"
        " FROM subject_energy_monthly WHERE kind = $1 AND subject_id = $2 AND local_month >= $3"
        " AND local_month < $4 ORDER BY 1, 2, 3"
    ),
    "yearly": (
        "SELECT make_date(local_year, 1, 1) AS d, energy_category_id, energy_item_id, energy, cost, quality,"
        " quarters FROM subject_energy_yearly WHERE kind = $1 AND subject_id = $2"
        " AND make_date(local_year, 1, 1) >= $3 AND make_date(local_year, 1, 1) < $4 ORDER BY 1, 2, 3"
    ),
}

# Hourly rows of any subject from its members' quarters (a meter is its own only member).
_HOURLY = """
WITH m AS (
    SELECT * FROM unnest($1::text[], $2::int[]) AS m(kind, source_id)
), q AS (
    SELECT x.quarter - make_interval(mins => extract(minute FROM x.quarter AT TIME ZONE $5)::int) AS h, si.energy_category_id,
           coalesce(si.energy_item_id, 0) AS energy_item_id, x.quarter, x.energy, x.quality, c.cost
    FROM m
    JOIN source_info si ON si.kind = m.kind AND si.source_id = m.source_id
    JOIN source_energy_quarter x ON x.kind = m.kind AND x.source_id = m.source_id
     AND x.quarter >= $3 AND x.quarter < $4
    LEFT JOIN source_cost_quarter c ON c.kind = m.kind AND c.source_id = m.source_id AND c.quarter = x.quarter
)
SELECT h, energy_category_id, energy_item_id, sum(energy) AS energy, sum(cost) AS cost, max(quality) AS quality,
       count(DISTINCT quarter)::int AS quarters
FROM q GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""

_HOUR = timedelta(hours=1)


def _hour_ceil(moment: datetime, tz: Any) -> datetime:
    """The first start of a local clock hour at or after ``moment`` (a UTC instant)."""
    local = moment.astimezone(tz)
    floor = moment.astimezone(UTC) - timedelta(
        minutes=local.minute, seconds=local.second, microseconds=local.microsecond
    )
    return floor if floor == moment.astimezone(UTC) else floor + _HOUR


_FIRST_YEAR, _LAST_YEAR = 1900, 2200  # beyond these, period arithmetic would leave the calendar


def _local_day(value: str, field: str) -> date:
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise bad_request(field, f"{value!r} is not a local date (YYYY-MM-DD)") from exc
    if not _FIRST_YEAR <= day.year <= _LAST_YEAR:
        raise bad_request(field, f"dates run from {_FIRST_YEAR} to {_LAST_YEAR}")
    return day


def _instant(value: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise bad_request(field, f"{value!r} is not an ISO 8601 date and time") from exc
    if moment.tzinfo is None:
        raise bad_request(field, "the date and time needs an offset, e.g. 2026-01-01T00:00:00+01:00")
    if not _FIRST_YEAR <= moment.year <= _LAST_YEAR:
        raise bad_request(field, f"dates run from {_FIRST_YEAR} to {_LAST_YEAR}")
    return moment


async def _describe(
    conn: PoolConnectionProxy, kind: str, ident: int
) -> tuple[str, list[tuple[str, int]]] | None:
    """(zone, member sources) of a subject, or None when aggregation does not know it.

    A meter's zone is the one its stored rollups were computed in (``meter_zones``; UTC until known).
    """
    if kind == "meter":
        row = await conn.fetchrow(
            "SELECT coalesce(z.timezone, 'UTC') AS timezone FROM source_info s"
            " LEFT JOIN meter_zones z ON z.meter_id = s.source_id WHERE s.kind = 'meter' AND s.source_id = $1",
            ident,
        )
        return None if row is None else (row["timezone"], [("meter", ident)])
    timezone = await conn.fetchval(
        "SELECT timezone FROM subjects WHERE kind = $1 AND subject_id = $2", kind, ident
    )
    if timezone is None:
        return None
    members = await conn.fetch(
        "SELECT source_kind, source_id FROM subject_members WHERE kind = $1 AND subject_id = $2", kind, ident
    )
    return timezone, [(m["source_kind"], m["source_id"]) for m in members]


async def _stale(
    conn: PoolConnectionProxy, members: list[tuple[str, int]], start: datetime, end: datetime, tz: Any
) -> list[str]:
    meters = [ident for kind, ident in members if kind == "meter"]
    if not meters:
        return []
    rows = await conn.fetch(
        "SELECT DISTINCT (extract(epoch FROM quarter) * 1000)::bigint AS q FROM rollup_pending"
        " WHERE meter_id = ANY($1::int[]) AND quarter >= $2 AND quarter < $3",
        meters,
        start,
        end,
    )
    return [day.isoformat() for day in sorted({local_date(row["q"], tz) for row in rows})]


def _row(
    start: str, category: int, item: int, r: Any, factors: dict[int, tuple[float, float]]
) -> dict[str, Any]:
    kgce, kgco2e = factors.get(category, (0.0, 0.0))
    energy = float(r["energy"])
    return {
        "start": start,
        "energy_category_id": category,
        "energy_item_id": item or None,
        "energy": energy,
        "cost": None if r["cost"] is None else float(r["cost"]),
        "kgce": energy * kgce,
        "kgco2e": energy * kgco2e,
        "quality": int(r["quality"]),
        "hours": (int(r["quarters"]) + 3) // 4,
    }


async def subject_rollup(
    ctx: ServiceContext,
    route_kind: str,
    ident: int,
    rollup: str,
    start: str,
    end: str,
    direction: str = "input",
) -> dict[str, Any] | None:
    """The answer of the route, or None for a subject aggregation does not know."""
    kind = KINDS[route_kind]
    if direction == "output":
        if kind not in OUTPUT_KINDS:
            raise bad_request("direction", f"only {', '.join(OUTPUT_ROUTE_KINDS)} have output energy")
        kind = output_kind(kind)
    async with ctx.db.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        described = await _describe(conn, kind, ident)
        if described is None:
            return None
        timezone, members = described
        tz = zone(timezone)
        factors = {
            r["energy_category_id"]: (r["kgce"], r["kgco2e"])
            for r in await conn.fetch("SELECT * FROM energy_category_factors")
        }
        if rollup == "hourly":
            first, last = _instant(start, "start"), _instant(end, "end")
            if last < first:
                raise bad_request("end", "end must not be before start")
            lo, hi = _hour_ceil(first, tz), _hour_ceil(last, tz)
            records = await conn.fetch(
                _HOURLY, [k for k, _ in members], [i for _, i in members], lo, hi, tz.key
            )
            rows = [
                _row(
                    r["h"].astimezone(tz).isoformat(),
                    r["energy_category_id"],
                    r["energy_item_id"],
                    r,
                    factors,
                )
                for r in records
            ]
            for row in rows:
                row["hours"] = 1
        else:
            first_day, last_day = _local_day(start, "start"), _local_day(end, "end")
            if last_day < first_day:
                raise bad_request("end", "end must not be before start")
            lo, hi = local_midnight(first_day, tz), local_midnight(last_day, tz)
            if kind == "meter":
                info = await conn.fetchrow(
                    "SELECT energy_category_id, coalesce(energy_item_id, 0) AS item FROM source_info"
                    " WHERE kind = 'meter' AND source_id = $1",
                    ident,
                )
                assert info is not None  # _describe found it in this snapshot
                records = await conn.fetch(_METER_ROLLUP[rollup], ident, first_day, last_day)
                rows = [
                    _row(r["d"].isoformat(), info["energy_category_id"], info["item"], r, factors)
                    for r in records
                ]
            else:
                records = await conn.fetch(_SUBJECT_ROLLUP[rollup], kind, ident, first_day, last_day)
                rows = [
                    _row(r["d"].isoformat(), r["energy_category_id"], r["energy_item_id"], r, factors)
                    for r in records
                ]
        stale = await _stale(conn, members, lo, hi, tz)
        if kind == "meter":
            rebuilding = bool(
                await conn.fetchval(
                    "SELECT 1 FROM rebuild_pending WHERE kind = $1 AND source_id = $2", REBUILD_METER, ident
                )
            )
        else:
            rebuilding = bool(
                await conn.fetchval(
                    "SELECT 1 FROM subject_rebuild_pending WHERE kind = $1 AND subject_id = $2", kind, ident
                )
            )
    return {
        "kind": route_kind,
        "id": ident,
        "direction": direction,
        "timezone": timezone,
        "stale": stale,
        "rebuilding": rebuilding,
        "rows": rows,
    }


@router.get("/subjects/{kind}/{ident}/{rollup}")
async def subject_energy(
    kind: Kind,
    ident: int,
    rollup: Rollup,
    start: str = Query(
        description="Local date (daily, monthly, yearly) or instant with offset (hourly), inclusive"
    ),
    end: str = Query(description="Local date or instant with offset, exclusive"),
    direction: Direction = Query(
        "input", description="input (default) or output energy (space, equipment, combined equipment)"
    ),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Energy, cost, kgce and kgco2e of a subject per period, energy category and energy item."""
    answer = await subject_rollup(ctx, kind, ident, rollup, start, end, direction)
    if answer is None:
        # Perhaps created a moment ago: copy the registry's model once, then ask again.
        model = ctx.state.get("model")
        if model is not None:
            await model.sync_if_quiet()
            answer = await subject_rollup(ctx, kind, ident, rollup, start, end, direction)
    if answer is None:
        raise not_found(kind, ident)
    return answer
