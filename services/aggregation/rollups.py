"""The rollup task: daily, monthly and yearly energy per meter in local time, and virtual meter quarters.

Every batch marks the (meter, quarter) pairs it changed in `rollup_pending`; registry changes mark whole
sources in `rebuild_pending` (services/aggregation/consumer.py). About once a second this task takes the marks
and, in the same transaction:

1. recomputes exactly the local days those quarters fall in (in the meter's zone, services/aggregation/
   localtime.py) as sums of the quarters in each day's UTC range, then the months of those days as sums of
   their days, then the years of those months as sums of their months. A late reading thus touches only its
   own days, months and years; a meter marked for a rebuild gets every day between its first and last quarter;
2. recomputes the virtual meters that use a changed source, in dependency order: only the changed quarters,
   or everything for a virtual meter that was redefined or uses a rebuilt source (services/aggregation/
   virtual.py).

Taking the marks (DELETE ... RETURNING) and recomputing happen in one transaction: a crash recomputes again,
and a batch committed after the marks were taken leaves marks of its own for the next round. Only one task
(across replicas) runs a round at a time, so an older snapshot never overwrites a newer result.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Any

from asyncpg.pool import PoolConnectionProxy

from libs.service import ServiceContext
from services.aggregation.consumer import REBUILD_METER, REBUILD_OFFLINE, REBUILD_VIRTUAL
from services.aggregation.localtime import (
    day_bounds,
    days,
    local_date,
    month_start,
    next_month,
    zone,
)
from services.aggregation.virtual import (
    METER,
    OFFLINE,
    VIRTUAL,
    Source,
    VirtualMeter,
    evaluate,
    evaluation_order,
    parse_definition,
    plan,
)

log = logging.getLogger(__name__)

_ROLLUP_LOCK = 0x67660A9A
CLAIM_LIMIT = 50_000  # marks per round: bounded work, the rest in the next round straight away
REBUILD_LIMIT = 100  # whole sources per round (a rebuilt meter is every day of its history)

_CLAIM_REBUILDS = """
DELETE FROM rebuild_pending WHERE (kind, source_id) IN (
    SELECT kind, source_id FROM rebuild_pending ORDER BY kind, source_id LIMIT $1
)
RETURNING kind, source_id
"""

_CLAIM = """
DELETE FROM rollup_pending WHERE ctid = ANY(ARRAY(SELECT ctid FROM rollup_pending LIMIT $1))
RETURNING meter_id, (extract(epoch FROM quarter) * 1000)::bigint AS quarter_ms
"""

_DAYS = """
WITH d AS (
    SELECT * FROM unnest($1::int[], $2::date[], $3::timestamptz[], $4::timestamptz[]) AS d(meter_id, day, s, e)
), sums AS (
    SELECT d.meter_id, d.day, sum(q.energy) AS energy, max(q.quality) AS quality, count(q.quarter)::int AS n
    FROM d LEFT JOIN meter_energy_quarter q ON q.meter_id = d.meter_id AND q.quarter >= d.s AND q.quarter < d.e
    GROUP BY d.meter_id, d.day
), gone AS (
    DELETE FROM meter_energy_daily t USING sums
    WHERE t.meter_id = sums.meter_id AND t.local_date = sums.day AND sums.n = 0
)
INSERT INTO meter_energy_daily AS t (meter_id, local_date, energy, quality, quarters)
SELECT meter_id, day, energy, quality, n FROM sums WHERE n > 0
ON CONFLICT (meter_id, local_date) DO UPDATE
SET energy = EXCLUDED.energy, quality = EXCLUDED.quality, quarters = EXCLUDED.quarters, updated_at = now()
WHERE (t.energy, t.quality, t.quarters) IS DISTINCT FROM (EXCLUDED.energy, EXCLUDED.quality, EXCLUDED.quarters)
"""

_MONTHS = """
WITH d AS (
    SELECT * FROM unnest($1::int[], $2::date[], $3::date[]) AS d(meter_id, month, next)
), sums AS (
    SELECT d.meter_id, d.month, sum(t.energy) AS energy, max(t.quality) AS quality,
           coalesce(sum(t.quarters), 0)::int AS n, count(t.local_date) AS found
    FROM d LEFT JOIN meter_energy_daily t
      ON t.meter_id = d.meter_id AND t.local_date >= d.month AND t.local_date < d.next
    GROUP BY d.meter_id, d.month
), gone AS (
    DELETE FROM meter_energy_monthly t USING sums
    WHERE t.meter_id = sums.meter_id AND t.local_month = sums.month AND sums.found = 0
)
INSERT INTO meter_energy_monthly AS t (meter_id, local_month, energy, quality, quarters)
SELECT meter_id, month, energy, quality, n FROM sums WHERE found > 0
ON CONFLICT (meter_id, local_month) DO UPDATE
SET energy = EXCLUDED.energy, quality = EXCLUDED.quality, quarters = EXCLUDED.quarters, updated_at = now()
WHERE (t.energy, t.quality, t.quarters) IS DISTINCT FROM (EXCLUDED.energy, EXCLUDED.quality, EXCLUDED.quarters)
"""

_YEARS = """
WITH d AS (
    SELECT * FROM unnest($1::int[], $2::int[]) AS d(meter_id, year)
), sums AS (
    SELECT d.meter_id, d.year, sum(t.energy) AS energy, max(t.quality) AS quality,
           coalesce(sum(t.quarters), 0)::int AS n, count(t.local_month) AS found
    FROM d LEFT JOIN meter_energy_monthly t
      ON t.meter_id = d.meter_id AND t.local_month >= make_date(d.year, 1, 1)
     AND t.local_month < make_date(d.year + 1, 1, 1)
    GROUP BY d.meter_id, d.year
), gone AS (
    DELETE FROM meter_energy_yearly t USING sums
    WHERE t.meter_id = sums.meter_id AND t.local_year = sums.year AND sums.found = 0
)
INSERT INTO meter_energy_yearly AS t (meter_id, local_year, energy, quality, quarters)
SELECT meter_id, year, energy, quality, n FROM sums WHERE found > 0
ON CONFLICT (meter_id, local_year) DO UPDATE
SET energy = EXCLUDED.energy, quality = EXCLUDED.quality, quarters = EXCLUDED.quarters, updated_at = now()
WHERE (t.energy, t.quality, t.quarters) IS DISTINCT FROM (EXCLUDED.energy, EXCLUDED.quality, EXCLUDED.quarters)
"""

# Where each kind of source keeps its quarters.
_SOURCE_TABLES = {
    METER: ("meter_energy_quarter", "meter_id"),
    OFFLINE: ("offline_meter_energy_quarter", "offline_meter_id"),
    VIRTUAL: ("virtual_meter_energy_quarter", "virtual_meter_id"),
}
_REBUILD_KINDS = {REBUILD_METER: METER, REBUILD_OFFLINE: OFFLINE, REBUILD_VIRTUAL: VIRTUAL}

_UPSERT_VIRTUAL = """
INSERT INTO virtual_meter_energy_quarter AS t (virtual_meter_id, quarter, energy, quality)
SELECT $1, to_timestamp(q / 1000.0), e, c FROM unnest($2::bigint[], $3::float8[], $4::smallint[]) AS r(q, e, c)
ON CONFLICT (virtual_meter_id, quarter) DO UPDATE
SET energy = EXCLUDED.energy, quality = EXCLUDED.quality, updated_at = now()
WHERE (t.energy, t.quality) IS DISTINCT FROM (EXCLUDED.energy, EXCLUDED.quality)
"""


def _instant(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class Rollups:
    def __init__(self, ctx: ServiceContext, interval_s: float = 1.0) -> None:
        self.ctx = ctx
        self.interval_s = interval_s
        self._lock = asyncio.Lock()

    def register(self) -> None:
        self.ctx.background(self.run_forever, "rollups")

    async def run_forever(self) -> None:
        while True:
            more = False
            try:
                more = await self.run_once()
            except Exception:
                log.warning("rollup round failed; retrying", exc_info=True)
            if not more:
                await asyncio.sleep(self.interval_s)

    async def run_once(self) -> bool:
        """One round; True when marks were left over (the next round should follow at once)."""
        async with self._lock, self.ctx.db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ROLLUP_LOCK)
            rebuilds = await conn.fetch(_CLAIM_REBUILDS, REBUILD_LIMIT)
            claimed = await conn.fetch(_CLAIM, CLAIM_LIMIT)
            if not rebuilds and not claimed:
                return False
            rebuilt: set[Source] = {(_REBUILD_KINDS[r["kind"]], r["source_id"]) for r in rebuilds}
            touched: dict[int, set[int]] = defaultdict(set)
            for row in claimed:
                touched[row["meter_id"]].add(row["quarter_ms"])
            full = {ident for kind, ident in rebuilt if kind == METER}
            await self._meter_rollups(conn, full, touched)
            await self._virtual_meters(conn, rebuilt, {(METER, m): q for m, q in touched.items()})
        return len(claimed) >= CLAIM_LIMIT or len(rebuilds) >= REBUILD_LIMIT

    # --- meters ---------------------------------------------------------------------------------------------

    async def _meter_rollups(
        self, conn: PoolConnectionProxy, full: set[int], touched: dict[int, set[int]]
    ) -> None:
        meters = sorted(full | touched.keys())
        rows = await conn.fetch(
            "SELECT meter_id, timezone FROM meter_zones WHERE meter_id = ANY($1::int[])", meters
        )
        zones = {row["meter_id"]: zone(row["timezone"]) for row in rows}
        day_set: set[tuple[int, date]] = set()
        if full:
            rebuild = sorted(full)
            for table in ("meter_energy_daily", "meter_energy_monthly", "meter_energy_yearly"):
                await conn.execute(f"DELETE FROM {table} WHERE meter_id = ANY($1::int[])", rebuild)
            spans = await conn.fetch(
                "SELECT meter_id, (extract(epoch FROM min(quarter)) * 1000)::bigint AS first,"
                " (extract(epoch FROM max(quarter)) * 1000)::bigint AS last"
                " FROM meter_energy_quarter WHERE meter_id = ANY($1::int[]) GROUP BY meter_id",
                rebuild,
            )
            for span in spans:
                tz = zones.get(span["meter_id"], zone(None))
                first, last = local_date(span["first"], tz), local_date(span["last"], tz)
                day_set.update((span["meter_id"], day) for day in days(first, last))
        for meter, quarters in touched.items():
            if meter in full:
                continue
            tz = zones.get(meter, zone(None))
            day_set.update((meter, local_date(quarter, tz)) for quarter in quarters)
        if not day_set:
            return
        ordered = sorted(day_set)
        bounds = [day_bounds(day, zones.get(meter, zone(None))) for meter, day in ordered]
        await conn.execute(
            _DAYS,
            [meter for meter, _ in ordered],
            [day for _, day in ordered],
            [start for start, _ in bounds],
            [end for _, end in bounds],
        )
        months = sorted({(meter, month_start(day)) for meter, day in ordered})
        await conn.execute(
            _MONTHS,
            [meter for meter, _ in months],
            [month for _, month in months],
            [next_month(month) for _, month in months],
        )
        years = sorted({(meter, month.year) for meter, month in months})
        await conn.execute(_YEARS, [meter for meter, _ in years], [year for _, year in years])

    # --- virtual meters -------------------------------------------------------------------------------------

    async def _virtual_meters(
        self, conn: PoolConnectionProxy, rebuilt: set[Source], touched: dict[Source, set[int]]
    ) -> None:
        rows = await conn.fetch("SELECT virtual_meter_id, expression FROM virtual_meter_definitions")
        meters: dict[int, VirtualMeter] = {}
        for row in rows:
            try:
                meters[row["virtual_meter_id"]] = parse_definition(row["virtual_meter_id"], row["expression"])
            except ValueError as exc:  # ExpressionError is a ValueError
                log.warning(
                    "virtual meter cannot be evaluated",
                    extra={"fields": {"virtual_meter_id": row["virtual_meter_id"], "error": str(exc)}},
                )
        order, cyclic = evaluation_order(meters)
        if cyclic:
            log.warning(
                "virtual meters in a cycle are not evaluated", extra={"fields": {"ids": sorted(cyclic)}}
            )
        # Redefined into something that cannot be evaluated, deleted, or cyclic: no values at all.
        evaluable = set(order)
        dropped = sorted({ident for kind, ident in rebuilt if kind == VIRTUAL and ident not in evaluable})
        if dropped:
            await conn.execute(
                "DELETE FROM virtual_meter_energy_quarter WHERE virtual_meter_id = ANY($1::int[])", dropped
            )
        for ident, quarters in plan(meters, order, rebuilt, touched):
            meter = meters[ident]
            wanted = None if quarters is None else sorted(quarters)
            inputs = {source: await self._series(conn, source, wanted) for source in meter.inputs}
            results, errors = evaluate(meter, inputs, wanted)
            if errors:
                first = min(errors)
                log.warning(
                    "virtual meter not evaluated in some quarters",
                    extra={
                        "fields": {
                            "virtual_meter_id": ident,
                            "quarters": len(errors),
                            "first": _instant(first).isoformat(),
                            "error": errors[first],
                        }
                    },
                )
            if wanted is None:
                await conn.execute(
                    "DELETE FROM virtual_meter_energy_quarter WHERE virtual_meter_id = $1", ident
                )
            else:
                gone = [_instant(q) for q in wanted if q not in results]
                await conn.execute(
                    "DELETE FROM virtual_meter_energy_quarter"
                    " WHERE virtual_meter_id = $1 AND quarter = ANY($2::timestamptz[])",
                    ident,
                    gone,
                )
            ordered = sorted(results)
            await conn.execute(
                _UPSERT_VIRTUAL,
                ident,
                ordered,
                [results[q][0] for q in ordered],
                [results[q][1] for q in ordered],
            )

    async def _series(
        self, conn: PoolConnectionProxy, source: Source, quarters: list[int] | None
    ) -> dict[int, tuple[float, int]]:
        table, column = _SOURCE_TABLES[source[0]]
        query = (
            f"SELECT (extract(epoch FROM quarter) * 1000)::bigint AS q, energy, quality FROM {table}"
            f" WHERE {column} = $1"
        )
        args: list[Any] = [source[1]]
        if quarters is not None:
            query += " AND quarter = ANY($2::timestamptz[])"
            args.append([_instant(q) for q in quarters])
        return {row["q"]: (row["energy"], row["quality"]) for row in await conn.fetch(query, *args)}
