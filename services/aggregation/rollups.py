"""The rollup task: daily, monthly and yearly energy and cost per meter in local time, virtual meter quarters,
cost per quarter, and subject rollups.

Every batch marks the (meter, quarter) pairs it changed in `rollup_pending`; registry changes mark whole
sources in `rebuild_pending` (services/aggregation/consumer.py), sources to price again in `cost_pending` and
subjects to rebuild in `subject_rebuild_pending` (services/aggregation/model.py). About once a second this
task takes the marks and, in the same transaction:

1. recomputes the virtual meters that use a changed source, in dependency order: only the changed quarters,
   or everything for a virtual meter that was redefined or uses a rebuilt source (services/aggregation/
   virtual.py);
2. prices the changed quarters again, a whole local billing month at a time (services/aggregation/
   subject_rollups.py, cost.py); quarters whose cost changed count as changed below;
3. recomputes exactly the local days the changed meter quarters fall in (in the meter's zone, services/
   aggregation/localtime.py) as sums of the quarters in each day's UTC range, then the months of those days
   as sums of their days, then the years of those months as sums of their months. A late reading thus
   touches only its own days, months and years; a meter marked for a rebuild is summed again wholly in one
   pass over its quarters;
4. recomputes the subjects (spaces, equipment, tenants, ...) whose members changed, in their own zones.

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
    local_date,
    month_start,
    next_month,
    zone,
)
from services.aggregation.subject_rollups import Changes, compute_costs, merge, subject_rollups
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

# One zone at a time (a constant zone is much cheaper per row than one looked up per row), and the cost
# join only for meters that have a cost at all.
_DAYS_FULL = """
INSERT INTO meter_energy_daily (meter_id, local_date, energy, quality, quarters, cost)
SELECT q.meter_id, (q.quarter AT TIME ZONE $2)::date, sum(q.energy), max(q.quality), count(*)::int, NULL
FROM meter_energy_quarter q WHERE q.meter_id = ANY($1::int[])
GROUP BY 1, 2
"""
_DAYS_FULL_COSTED = """
INSERT INTO meter_energy_daily (meter_id, local_date, energy, quality, quarters, cost)
SELECT q.meter_id, (q.quarter AT TIME ZONE $2)::date, sum(q.energy), max(q.quality), count(*)::int, sum(c.cost)
FROM meter_energy_quarter q
LEFT JOIN source_cost_quarter c ON c.kind = 'meter' AND c.source_id = q.meter_id AND c.quarter = q.quarter
WHERE q.meter_id = ANY($1::int[])
GROUP BY 1, 2
"""

_MONTHS_FULL = """
INSERT INTO meter_energy_monthly (meter_id, local_month, energy, quality, quarters, cost)
SELECT meter_id, date_trunc('month', local_date)::date, sum(energy), max(quality), sum(quarters)::int, sum(cost)
FROM meter_energy_daily WHERE meter_id = ANY($1::int[]) GROUP BY 1, 2
"""

_YEARS_FULL = """
INSERT INTO meter_energy_yearly (meter_id, local_year, energy, quality, quarters, cost)
SELECT meter_id, extract(year FROM local_month)::int, sum(energy), max(quality), sum(quarters)::int, sum(cost)
FROM meter_energy_monthly WHERE meter_id = ANY($1::int[]) GROUP BY 1, 2
"""

_CLAIM_COSTS = """
DELETE FROM cost_pending WHERE (kind, source_id) IN (
    SELECT kind, source_id FROM cost_pending ORDER BY kind, source_id LIMIT $1
)
RETURNING kind, source_id
"""

_CLAIM_SUBJECTS = """
DELETE FROM subject_rebuild_pending WHERE (kind, subject_id) IN (
    SELECT kind, subject_id FROM subject_rebuild_pending ORDER BY kind, subject_id LIMIT $1
)
RETURNING kind, subject_id
"""

_DAYS = """
WITH d AS (
    SELECT * FROM unnest($1::int[], $2::date[], $3::timestamptz[], $4::timestamptz[]) AS d(meter_id, day, s, e)
), sums AS (
    SELECT d.meter_id, d.day, sum(q.energy) AS energy, max(q.quality) AS quality, count(q.quarter)::int AS n,
           sum(c.cost) AS cost
    FROM d LEFT JOIN meter_energy_quarter q ON q.meter_id = d.meter_id AND q.quarter >= d.s AND q.quarter < d.e
    LEFT JOIN source_cost_quarter c ON c.kind = 'meter' AND c.source_id = q.meter_id AND c.quarter = q.quarter
     AND $5  -- false when none of these meters has a cost: the planner then skips the join
    GROUP BY d.meter_id, d.day
), gone AS (
    DELETE FROM meter_energy_daily t USING sums
    WHERE t.meter_id = sums.meter_id AND t.local_date = sums.day AND sums.n = 0
)
INSERT INTO meter_energy_daily AS t (meter_id, local_date, energy, quality, quarters, cost)
SELECT meter_id, day, energy, quality, n, cost FROM sums WHERE n > 0
ON CONFLICT (meter_id, local_date) DO UPDATE
SET energy = EXCLUDED.energy, quality = EXCLUDED.quality, quarters = EXCLUDED.quarters, cost = EXCLUDED.cost,
    updated_at = now()
WHERE (t.energy, t.quality, t.quarters, t.cost)
      IS DISTINCT FROM (EXCLUDED.energy, EXCLUDED.quality, EXCLUDED.quarters, EXCLUDED.cost)
"""

_MONTHS = """
WITH d AS (
    SELECT * FROM unnest($1::int[], $2::date[], $3::date[]) AS d(meter_id, month, next)
), sums AS (
    SELECT d.meter_id, d.month, sum(t.energy) AS energy, max(t.quality) AS quality, sum(t.cost) AS cost,
           coalesce(sum(t.quarters), 0)::int AS n, count(t.local_date) AS found
    FROM d LEFT JOIN meter_energy_daily t
      ON t.meter_id = d.meter_id AND t.local_date >= d.month AND t.local_date < d.next
    GROUP BY d.meter_id, d.month
), gone AS (
    DELETE FROM meter_energy_monthly t USING sums
    WHERE t.meter_id = sums.meter_id AND t.local_month = sums.month AND sums.found = 0
)
INSERT INTO meter_energy_monthly AS t (meter_id, local_month, energy, quality, quarters, cost)
SELECT meter_id, month, energy, quality, n, cost FROM sums WHERE found > 0
ON CONFLICT (meter_id, local_month) DO UPDATE
SET energy = EXCLUDED.energy, quality = EXCLUDED.quality, quarters = EXCLUDED.quarters, cost = EXCLUDED.cost,
    updated_at = now()
WHERE (t.energy, t.quality, t.quarters, t.cost)
      IS DISTINCT FROM (EXCLUDED.energy, EXCLUDED.quality, EXCLUDED.quarters, EXCLUDED.cost)
"""

_YEARS = """
WITH d AS (
    SELECT * FROM unnest($1::int[], $2::int[]) AS d(meter_id, year)
), sums AS (
    SELECT d.meter_id, d.year, sum(t.energy) AS energy, max(t.quality) AS quality, sum(t.cost) AS cost,
           coalesce(sum(t.quarters), 0)::int AS n, count(t.local_month) AS found
    FROM d LEFT JOIN meter_energy_monthly t
      ON t.meter_id = d.meter_id AND t.local_month >= make_date(d.year, 1, 1)
     AND t.local_month < make_date(d.year + 1, 1, 1)
    GROUP BY d.meter_id, d.year
), gone AS (
    DELETE FROM meter_energy_yearly t USING sums
    WHERE t.meter_id = sums.meter_id AND t.local_year = sums.year AND sums.found = 0
)
INSERT INTO meter_energy_yearly AS t (meter_id, local_year, energy, quality, quarters, cost)
SELECT meter_id, year, energy, quality, n, cost FROM sums WHERE found > 0
ON CONFLICT (meter_id, local_year) DO UPDATE
SET energy = EXCLUDED.energy, quality = EXCLUDED.quality, quarters = EXCLUDED.quarters, cost = EXCLUDED.cost,
    updated_at = now()
WHERE (t.energy, t.quality, t.quarters, t.cost)
      IS DISTINCT FROM (EXCLUDED.energy, EXCLUDED.quality, EXCLUDED.quarters, EXCLUDED.cost)
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
            costs = await conn.fetch(_CLAIM_COSTS, REBUILD_LIMIT)
            subjects = await conn.fetch(_CLAIM_SUBJECTS, REBUILD_LIMIT)
            if not rebuilds and not claimed and not costs and not subjects:
                return False
            rebuilt: set[Source] = {(_REBUILD_KINDS[r["kind"]], r["source_id"]) for r in rebuilds}
            touched: dict[int, set[int]] = defaultdict(set)
            for row in claimed:
                touched[row["meter_id"]].add(row["quarter_ms"])
            full = {ident for kind, ident in rebuilt if kind == METER}
            changed: Changes = {(METER, m): set(q) for m, q in touched.items()}
            merge(changed, {source: None for source in rebuilt})
            merge(
                changed,
                await self._virtual_meters(conn, rebuilt, {(METER, m): q for m, q in touched.items()}),
            )
            priced = await compute_costs(conn, changed, {(r["kind"], r["source_id"]) for r in costs})
            merge(changed, priced)
            for (kind, ident), quarters in priced.items():
                if kind != METER or ident in full:
                    continue
                if quarters is None:
                    full.add(ident)
                else:
                    touched[ident] |= quarters
            await self._meter_rollups(conn, full, touched)
            await subject_rollups(conn, changed, {(r["kind"], r["subject_id"]) for r in subjects})
        return (
            len(claimed) >= CLAIM_LIMIT
            or len(rebuilds) >= REBUILD_LIMIT
            or len(costs) >= REBUILD_LIMIT
            or len(subjects) >= REBUILD_LIMIT
        )

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
            # A whole history: one pass over the meters' quarters, grouped by local date (a quarter belongs
            # to the day it starts on), then months from days and years from months.
            rebuild = sorted(full)
            for table in ("meter_energy_daily", "meter_energy_monthly", "meter_energy_yearly"):
                await conn.execute(f"DELETE FROM {table} WHERE meter_id = ANY($1::int[])", rebuild)
            costed = {
                row["source_id"]
                for row in await conn.fetch(
                    "SELECT DISTINCT source_id FROM source_cost_quarter"
                    " WHERE kind = 'meter' AND source_id = ANY($1::int[])",
                    rebuild,
                )
            }
            by_zone: dict[tuple[str, bool], list[int]] = defaultdict(list)
            for meter in rebuild:
                by_zone[(zones.get(meter, zone(None)).key, meter in costed)].append(meter)
            for (key, with_cost), group in sorted(by_zone.items()):
                await conn.execute(_DAYS_FULL_COSTED if with_cost else _DAYS_FULL, group, key)
            await conn.execute(_MONTHS_FULL, rebuild)
            await conn.execute(_YEARS_FULL, rebuild)
        for meter, quarters in touched.items():
            if meter in full:
                continue
            tz = zones.get(meter, zone(None))
            day_set.update((meter, local_date(quarter, tz)) for quarter in quarters)
        if not day_set:
            return
        ordered = sorted(day_set)
        bounds = [day_bounds(day, zones.get(meter, zone(None))) for meter, day in ordered]
        priced = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM source_cost_quarter WHERE kind = 'meter' AND source_id = ANY($1::int[]))",
            sorted({meter for meter, _ in ordered}),
        )
        await conn.execute(
            _DAYS,
            [meter for meter, _ in ordered],
            [day for _, day in ordered],
            [start for start, _ in bounds],
            [end for _, end in bounds],
            bool(priced),
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
    ) -> Changes:
        """Recompute the virtual meters that need it; the quarters that may have changed (None: all)."""
        out: Changes = {}
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
            out.update({(VIRTUAL, ident): None for ident in dropped})
        for ident, quarters in plan(meters, order, rebuilt, touched):
            out[(VIRTUAL, ident)] = None if quarters is None else set(quarters)
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
        return out

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
