"""Cost per source quarter and subject rollups: the second half of each rollup round (services/aggregation/rollups.py).

Each round knows which quarters of which sources changed (meters from their marks, virtual meters from their
evaluation, offline meters and rebuilt sources wholly). Then, in the round's transaction:

1. **cost**: for every changed source with a cost center, the local billing months (calendar months in the
   source's zone) holding a changed quarter are priced again (services/aggregation/cost.py); a source marked in
   ``cost_pending`` (tariff, cost center, category or zone changed) is priced again wholly. Only quarters whose
   cost actually changed are written, and they count as changed for the rollups;
2. **subjects**: every subject with a changed member gets the local days (in the subject's zone) of the
   changed quarters recomputed per energy category and item as sums over its members' quarters, then their
   months and years; a subject marked in ``subject_rebuild_pending`` (members or zone changed) is rebuilt
   over every day its members have energy.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from asyncpg.pool import PoolConnectionProxy

from services.aggregation.cost import Tariff, price_quarters, tariff_from_model
from services.aggregation.localtime import (
    day_bounds,
    local_date,
    local_midnight,
    month_start,
    next_month,
    zone,
)

# (kind, id) -> quarters (epoch ms) that changed, or None for "possibly all of them"
Changes = dict[tuple[str, int], set[int] | None]


def _instant(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def merge(into: Changes, more: Changes) -> None:
    for ref, quarters in more.items():
        if ref in into:
            known = into[ref]
            into[ref] = None if known is None or quarters is None else known | quarters
        else:
            into[ref] = None if quarters is None else set(quarters)


# --- cost ------------------------------------------------------------------------------------------------


async def compute_costs(conn: PoolConnectionProxy, changed: Changes, full: set[tuple[str, int]]) -> Changes:
    """Price the changed sources again; the quarters whose cost changed (None: maybe all)."""
    refs = set(changed) | full
    if not refs:
        return {}
    rows = await conn.fetch(
        "SELECT s.kind, s.source_id, s.energy_category_id, s.cost_center_id,"
        " coalesce(z.timezone, s.timezone) AS timezone"
        " FROM source_info s LEFT JOIN meter_zones z ON s.kind = 'meter' AND z.meter_id = s.source_id"
        " WHERE (s.kind, s.source_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
        [k for k, _ in refs],
        [i for _, i in refs],
    )
    centers = {(r["kind"], r["source_id"]): r for r in rows}
    wanted = {(r["cost_center_id"], r["energy_category_id"]) for r in rows if r["cost_center_id"] is not None}
    tariffs: dict[tuple[int, int], list[Any]] = defaultdict(list)
    if wanted:
        for t in await conn.fetch(
            "SELECT b.cost_center_id, t.energy_category_id, t.definition FROM cost_center_tariff_copies b"
            " JOIN tariff_copies t ON t.tariff_id = b.tariff_id"
        ):
            key = (t["cost_center_id"], t["energy_category_id"])
            if key in wanted:
                tariffs[key].append(tariff_from_model(t["definition"]))
    out: Changes = {}
    for ref in sorted(refs):
        info = centers.get(ref)
        priced = (
            []
            if info is None or info["cost_center_id"] is None
            else tariffs[(info["cost_center_id"], info["energy_category_id"])]
        )
        whole = ref in full or changed.get(ref, set()) is None
        if not priced:
            if whole:
                gone = await conn.fetchval(
                    "WITH d AS (DELETE FROM source_cost_quarter WHERE kind = $1 AND source_id = $2 RETURNING 1)"
                    " SELECT count(*) FROM d",
                    *ref,
                )
                if gone:
                    out[ref] = None
            continue
        tz = zone(info["timezone"] if info is not None else None)
        if whole:
            span = await conn.fetchrow(
                "SELECT min(quarter) AS lo, max(quarter) AS hi FROM source_energy_quarter"
                " WHERE kind = $1 AND source_id = $2",
                *ref,
            )
            old_span = await conn.fetchrow(
                "SELECT min(quarter) AS lo, max(quarter) AS hi FROM source_cost_quarter"
                " WHERE kind = $1 AND source_id = $2",
                *ref,
            )
            assert span is not None and old_span is not None  # aggregates always answer one row
            ends = [v for v in (span["lo"], span["hi"], old_span["lo"], old_span["hi"]) if v is not None]
            if not ends:
                continue
            first = month_start(local_date(_ms(min(ends)), tz))
            last = month_start(local_date(_ms(max(ends)), tz))
            months: set[date] = set()
            month = first
            while month <= last:
                months.add(month)
                month = next_month(month)
        else:
            quarters = changed.get(ref) or set()
            months = {month_start(local_date(q, tz)) for q in quarters}
        moved: set[int] = set()
        blocks = [t for t in priced if t.is_block]
        for month in sorted(months):
            lo, hi = local_midnight(month, tz), local_midnight(next_month(month), tz)
            if whole:
                moved |= await _reprice(conn, ref, priced, tz, lo, hi)
                continue
            mine = sorted(q for q in changed.get(ref) or () if lo <= _instant(q) < hi)
            if not blocks:
                # Time of use: a quarter's cost depends on that quarter alone.
                moved |= await _reprice(conn, ref, priced, tz, lo, hi, only=mine)
                continue
            # Blocks: everything from the first changed quarter to the end of the billing month moves up or
            # down the ladder; what came before only counts as the energy already cumulated.
            first = _instant(mine[0])
            cumulated = {}
            for tariff in blocks:
                before = await conn.fetchval(
                    _CUMULATED, ref[0], ref[1], lo, first, tariff.valid_from_ms, tariff.valid_through_ms
                )
                cumulated[(tariff.id, (month.year, month.month))] = float(before)
            moved |= await _reprice(conn, ref, priced, tz, first, hi, cumulated=cumulated)
        if moved:
            out[ref] = moved
    return out


# Energy a block tariff already priced in [lo, first): the part of each quarter inside its validity.
_CUMULATED = """
SELECT coalesce(sum(energy * greatest(0, least(e + 900000, $6) - greatest(e, $5)) / 900000.0), 0)
FROM (
    SELECT energy, (extract(epoch FROM quarter) * 1000)::bigint AS e FROM source_energy_quarter
    WHERE kind = $1 AND source_id = $2 AND quarter >= $3 AND quarter < $4
) AS q
"""


async def _reprice(
    conn: PoolConnectionProxy,
    ref: tuple[str, int],
    priced: list[Tariff],
    tz: ZoneInfo,
    lo: datetime,
    hi: datetime,
    *,
    only: list[int] | None = None,
    cumulated: dict[tuple[int, tuple[int, int]], float] | None = None,
) -> set[int]:
    """Price the quarters in [lo, hi) (or only those listed) again; write and return those that changed."""
    where = "kind = $1 AND source_id = $2 AND quarter >= $3 AND quarter < $4"
    args: list[Any] = [ref[0], ref[1], lo, hi]
    if only is not None:
        where += " AND quarter = ANY($5::timestamptz[])"
        args.append([_instant(q) for q in only])
    energy = await conn.fetch(
        f"SELECT (extract(epoch FROM quarter) * 1000)::bigint AS q, energy FROM source_energy_quarter WHERE {where}",
        *args,
    )
    costs, _ = price_quarters(((r["q"], r["energy"]) for r in energy), priced, tz, cumulated)
    old = {
        r["q"]: r["cost"]
        for r in await conn.fetch(
            f"SELECT (extract(epoch FROM quarter) * 1000)::bigint AS q, cost FROM source_cost_quarter WHERE {where}",
            *args,
        )
    }
    diff = {q for q in costs.keys() | old.keys() if costs.get(q) != old.get(q)}
    if not diff:
        return diff
    await conn.execute(
        "DELETE FROM source_cost_quarter WHERE kind = $1 AND source_id = $2 AND quarter = ANY($3::timestamptz[])",
        ref[0],
        ref[1],
        [_instant(q) for q in diff],
    )
    keep = sorted(q for q in diff if q in costs)
    await conn.execute(
        "INSERT INTO source_cost_quarter (kind, source_id, quarter, cost)"
        " SELECT $1, $2, to_timestamp(q / 1000.0), c FROM unnest($3::bigint[], $4::float8[]) AS r(q, c)",
        ref[0],
        ref[1],
        keep,
        [costs[q] for q in keep],
    )
    return diff


# --- subjects --------------------------------------------------------------------------------------------

_SUBJECT_DAYS = """
WITH d AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::date[], $4::timestamptz[], $5::timestamptz[])
        AS d(kind, subject_id, day, s, e)
), sums AS (
    SELECT d.kind, d.subject_id, d.day, si.energy_category_id AS cat, coalesce(si.energy_item_id, 0) AS item,
           sum(x.energy) AS energy, sum(c.cost) AS cost, max(x.quality) AS quality,
           count(DISTINCT x.quarter)::int AS n
    FROM d
    JOIN subject_members m ON m.kind = d.kind AND m.subject_id = d.subject_id
    JOIN source_info si ON si.kind = m.source_kind AND si.source_id = m.source_id
    JOIN source_energy_quarter x ON x.kind = m.source_kind AND x.source_id = m.source_id
     AND x.quarter >= d.s AND x.quarter < d.e
    LEFT JOIN source_cost_quarter c ON c.kind = x.kind AND c.source_id = x.source_id AND c.quarter = x.quarter
    GROUP BY 1, 2, 3, 4, 5
), gone AS (
    DELETE FROM subject_energy_daily t USING d
    WHERE t.kind = d.kind AND t.subject_id = d.subject_id AND t.local_date = d.day
      AND NOT EXISTS (SELECT 1 FROM sums WHERE sums.kind = t.kind AND sums.subject_id = t.subject_id
                      AND sums.day = t.local_date AND sums.cat = t.energy_category_id AND sums.item = t.energy_item_id)
)
INSERT INTO subject_energy_daily AS t
    (kind, subject_id, local_date, energy_category_id, energy_item_id, energy, cost, quality, quarters)
SELECT kind, subject_id, day, cat, item, energy, cost, quality, n FROM sums
ON CONFLICT (kind, subject_id, local_date, energy_category_id, energy_item_id) DO UPDATE
SET energy = EXCLUDED.energy, cost = EXCLUDED.cost, quality = EXCLUDED.quality, quarters = EXCLUDED.quarters
"""

_SUBJECT_PERIODS = """
WITH d AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::date[], $4::date[]) AS d(kind, subject_id, p, next)
), sums AS (
    SELECT d.kind, d.subject_id, d.p, t.energy_category_id AS cat, t.energy_item_id AS item,
           sum(t.energy) AS energy, sum(t.cost) AS cost, max(t.quality) AS quality, sum(t.quarters)::int AS n
    FROM d JOIN {source} t ON t.kind = d.kind AND t.subject_id = d.subject_id
     AND t.{source_col} >= d.p AND t.{source_col} < d.next
    GROUP BY 1, 2, 3, 4, 5
), gone AS (
    DELETE FROM {target} t USING d
    WHERE t.kind = d.kind AND t.subject_id = d.subject_id AND t.{target_col} = {target_key}
      AND NOT EXISTS (SELECT 1 FROM sums WHERE sums.kind = t.kind AND sums.subject_id = t.subject_id
                      AND sums.p = d.p AND sums.cat = t.energy_category_id AND sums.item = t.energy_item_id)
)
INSERT INTO {target} AS t
    (kind, subject_id, {target_col}, energy_category_id, energy_item_id, energy, cost, quality, quarters)
SELECT kind, subject_id, {insert_key}, cat, item, energy, cost, quality, n FROM sums
ON CONFLICT (kind, subject_id, {target_col}, energy_category_id, energy_item_id) DO UPDATE
SET energy = EXCLUDED.energy, cost = EXCLUDED.cost, quality = EXCLUDED.quality, quarters = EXCLUDED.quarters
"""

_SUBJECT_MONTHS = _SUBJECT_PERIODS.format(
    source="subject_energy_daily",
    source_col="local_date",
    target="subject_energy_monthly",
    target_col="local_month",
    target_key="d.p",
    insert_key="p",
)
_SUBJECT_YEARS = _SUBJECT_PERIODS.format(
    source="subject_energy_monthly",
    source_col="local_month",
    target="subject_energy_yearly",
    target_col="local_year",
    target_key="extract(year FROM d.p)::int",
    insert_key="extract(year FROM p)::int",
)


_SUBJECT_DAYS_FULL = """
INSERT INTO subject_energy_daily
    (kind, subject_id, local_date, energy_category_id, energy_item_id, energy, cost, quality, quarters)
SELECT d.kind, d.subject_id, (x.quarter AT TIME ZONE d.tz)::date, si.energy_category_id,
       coalesce(si.energy_item_id, 0), sum(x.energy), sum(c.cost), max(x.quality), count(DISTINCT x.quarter)::int
FROM unnest($1::text[], $2::int[], $3::text[]) AS d(kind, subject_id, tz)
JOIN subject_members m ON m.kind = d.kind AND m.subject_id = d.subject_id
JOIN source_info si ON si.kind = m.source_kind AND si.source_id = m.source_id
JOIN source_energy_quarter x ON x.kind = m.source_kind AND x.source_id = m.source_id
LEFT JOIN source_cost_quarter c ON c.kind = x.kind AND c.source_id = x.source_id AND c.quarter = x.quarter
GROUP BY 1, 2, 3, 4, 5
"""

_SUBJECT_MONTHS_FULL = """
INSERT INTO subject_energy_monthly
    (kind, subject_id, local_month, energy_category_id, energy_item_id, energy, cost, quality, quarters)
SELECT kind, subject_id, date_trunc('month', local_date)::date, energy_category_id, energy_item_id, sum(energy),
       sum(cost), max(quality), sum(quarters)::int
FROM subject_energy_daily
WHERE (kind, subject_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))
GROUP BY 1, 2, 3, 4, 5
"""

_SUBJECT_YEARS_FULL = """
INSERT INTO subject_energy_yearly
    (kind, subject_id, local_year, energy_category_id, energy_item_id, energy, cost, quality, quarters)
SELECT kind, subject_id, extract(year FROM local_month)::int, energy_category_id, energy_item_id, sum(energy),
       sum(cost), max(quality), sum(quarters)::int
FROM subject_energy_monthly
WHERE (kind, subject_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))
GROUP BY 1, 2, 3, 4, 5
"""


async def subject_rollups(conn: PoolConnectionProxy, changed: Changes, rebuild: set[tuple[str, int]]) -> None:
    """Recompute the subject days, months and years the changed source quarters fall in."""
    touched: dict[tuple[str, int], set[int] | None] = {ref: None for ref in rebuild}
    if changed:
        refs = sorted(changed)
        rows = await conn.fetch(
            "SELECT kind, subject_id, source_kind, source_id FROM subject_members"
            " WHERE (source_kind, source_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
            [k for k, _ in refs],
            [i for _, i in refs],
        )
        for row in rows:
            merge(
                touched, {(row["kind"], row["subject_id"]): changed[(row["source_kind"], row["source_id"])]}
            )
    if not touched:
        return
    subjects = sorted(touched)
    zones = {
        (r["kind"], r["subject_id"]): zone(r["timezone"])
        for r in await conn.fetch(
            "SELECT * FROM subjects WHERE (kind, subject_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
            [k for k, _ in subjects],
            [i for _, i in subjects],
        )
    }
    full = [ref for ref in subjects if ref in zones and touched[ref] is None]
    if full:
        # Whole histories: one pass over the members' quarters grouped by local date, then months, years.
        args = ([k for k, _ in full], [i for _, i in full])
        for table in ("subject_energy_daily", "subject_energy_monthly", "subject_energy_yearly"):
            await conn.execute(
                f"DELETE FROM {table} WHERE (kind, subject_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
                *args,
            )
        await conn.execute(_SUBJECT_DAYS_FULL, *args, [zones[ref].key for ref in full])
        await conn.execute(_SUBJECT_MONTHS_FULL, *args)
        await conn.execute(_SUBJECT_YEARS_FULL, *args)
    day_set: set[tuple[str, int, date]] = set()
    for ref in subjects:
        tz = zones.get(ref)
        quarters = touched[ref]
        if tz is None or quarters is None:
            continue  # gone since (its rollups went with it), or rebuilt above
        day_set.update((ref[0], ref[1], local_date(q, tz)) for q in quarters)
    if not day_set:
        return
    ordered = sorted(day_set)
    bounds = [day_bounds(day, zones[(kind, ident)]) for kind, ident, day in ordered]
    await conn.execute(
        _SUBJECT_DAYS,
        [k for k, _, _ in ordered],
        [i for _, i, _ in ordered],
        [d for _, _, d in ordered],
        [s for s, _ in bounds],
        [e for _, e in bounds],
    )
    months = sorted({(k, i, month_start(d)) for k, i, d in ordered})
    await conn.execute(
        _SUBJECT_MONTHS,
        [k for k, _, _ in months],
        [i for _, i, _ in months],
        [m for _, _, m in months],
        [next_month(m) for _, _, m in months],
    )
    years = sorted({(k, i, date(m.year, 1, 1)) for k, i, m in months})
    await conn.execute(
        _SUBJECT_YEARS,
        [k for k, _, _ in years],
        [i for _, i, _ in years],
        [y for _, _, y in years],
        [date(y.year + 1, 1, 1) for _, _, y in years],
    )
