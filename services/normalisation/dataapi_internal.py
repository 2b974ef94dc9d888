"""Five-minute values of a point from its stored readings, for the Data API's `day` resolution.

Aggregation keeps energy per quarter hour, the finest it stores; the Data API serves a day in five-minute
slots, so they are computed here from the readings (after ratio) this service keeps:

* an energy point (cumulative register): every pair of consecutive readings becomes an interval carrying
  the register difference, with resets and rollovers handled as for the stored energy
  (services/normalisation/energy.py); each interval is spread over the five-minute slots it overlaps in
  proportion to time, as aggregation spreads it over quarters. Slots therefore add up to the quarters.
* any other point (power, temperature...): the mean of the readings taken in each slot.

Slots are aligned on multiples of five minutes since the epoch (so on every local midnight); only slots with
data are returned. Intervals held back as spikes are not excluded here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query

from libs.service import ServiceContext, bad_request, get_context
from proto_schemas.quality import Quality
from services.normalisation.energy import interval_energy
from services.normalisation.values import point_register

router = APIRouter(prefix="/internal/dataapi", include_in_schema=False)

SLOT_MS = 300_000
MAX_SPAN = timedelta(days=3)
# How far before the range the previous reading (the baseline of the first interval) is looked for.
LOOKBEHIND = timedelta(days=2)


def _spread(
    intervals: list[tuple[int, int, float, int]], start_ms: int, end_ms: int
) -> dict[int, tuple[float, int]]:
    """Energy per slot (slot start ms -> energy, worst quality) from (start, end] intervals."""
    slots: dict[int, tuple[float, int]] = {}
    for begin, finish, energy, quality in intervals:
        first = (begin // SLOT_MS) * SLOT_MS
        for slot in range(first, finish, SLOT_MS):
            overlap = min(finish, slot + SLOT_MS) - max(begin, slot)
            if overlap <= 0 or not start_ms <= slot < end_ms:
                continue
            part = energy * overlap / (finish - begin)
            known = slots.get(slot)
            slots[slot] = (part, quality) if known is None else (known[0] + part, max(known[1], quality))
    return slots


@router.get("/points/{point_id}/fiveminutes")
async def five_minutes(
    point_id: int,
    start: datetime = Query(description="Inclusive, with offset, on a five-minute boundary"),
    end: datetime = Query(description="Exclusive, with offset"),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """A point's values per five-minute slot in [start, end): energy for energy points, else the mean."""
    if start.tzinfo is None or end.tzinfo is None:
        raise bad_request("start", "start and end need an offset")
    if not timedelta(0) < end - start <= MAX_SPAN:
        raise bad_request("end", "end must be after start, at most three days later")
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    info = ctx.state["normalisation"].points.points.get(point_id)
    if info is not None and info.is_energy:
        rows = await ctx.db.fetch(
            "(SELECT ts, value, quality FROM readings WHERE point_id = $1 AND ts <= $2 AND ts > $4"
            "  ORDER BY ts DESC LIMIT 1)"
            " UNION ALL (SELECT ts, value, quality FROM readings WHERE point_id = $1 AND ts > $2 AND ts <= $3)"
            " UNION ALL (SELECT ts, value, quality FROM readings WHERE point_id = $1 AND ts > $3"
            "  ORDER BY ts LIMIT 1)",
            point_id, start, end, start - LOOKBEHIND,
        )  # fmt: skip
        readings = sorted(
            (int(r["ts"].timestamp() * 1000), float(r["value"]), int(r["quality"])) for r in rows
        )
        worst = {ts: quality for ts, _, quality in readings}
        intervals = [
            (i.start_ms, i.end_ms, i.energy, max(int(i.quality), worst.get(i.end_ms, 0)))
            for i in interval_energy(
                None, [(ts, value) for ts, value, _ in readings], register=point_register(info)
            )
        ]
        slots = _spread(intervals, start_ms, end_ms)
        kind = "energy"
    else:
        rows = await ctx.db.fetch(
            "SELECT (floor(extract(epoch FROM ts) * 1000 / $4) * $4)::bigint AS slot, avg(value) AS value,"
            " max(quality) AS quality FROM readings WHERE point_id = $1 AND ts >= $2 AND ts < $3 GROUP BY 1",
            point_id, start, end, SLOT_MS,
        )  # fmt: skip
        slots = {int(r["slot"]): (float(r["value"]), int(r["quality"])) for r in rows}
        kind = "mean"
    return {
        "point_id": point_id,
        "kind": kind,
        "slots": [
            {
                "start": datetime.fromtimestamp(slot / 1000, UTC).isoformat(),
                "value": value,
                "quality": Quality(quality).label,
            }
            for slot, (value, quality) in sorted(slots.items())
        ],
    }
