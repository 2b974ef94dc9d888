"""`make bench`: latency of a one-year daily report of a space with 1,000 meters, through the gateway.

Seeding (in bulk, straight into the tables; nothing goes through the bus): GRIDFLEET_BENCH_REPORT_METERS
(1,000) meters are written into the registry's tables and bound to one Europe/Brussels space; aggregation is
asked to copy the registry's model (its ``/internal/bindings/sync``) and to take in what that changes, then the
space's daily rollups for 2025 (365 local days, one energy category) are written into
``subject_energy_daily``, the table aggregation keeps them in. The report then does all its real work: the
registry's read model of the space (with its 1,000 meters), aggregation's subject route (rows and pending
changes of the 1,000 meters), the MyEMS sections, and for the full report the Excel workbook with its chart.

Figure: p50 and p95 of GRIDFLEET_BENCH_REPORT_RUNS (60) sequential `GET /api/v1/reports/spaceenergycategory`
(daily, 2025-01-01 to 2026-01-01 local), once with ``quickmode=true`` and once in full. Target: p95 under
300 ms. Ceiling: PostgreSQL alone answering the underlying aggregate query (the space's 365 daily rows) as
many times, its p95; printed as the ratio report / ceiling.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from datetime import date

import httpx
import pytest

from libs.service import INTERNAL_TOKEN_HEADER
from tests.support import Platform, eventually

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(1800)]

METERS = int(os.environ.get("GRIDFLEET_BENCH_REPORT_METERS", "1000"))
RUNS = int(os.environ.get("GRIDFLEET_BENCH_REPORT_RUNS", "60"))
TARGET_MS = 300.0
PARAMS = {
    "periodtype": "daily",
    "reportingperiodstartdatetime": "2025-01-01T00:00:00",
    "reportingperiodenddatetime": "2026-01-01T00:00:00",
}
_ROLLUP_QUERY = (
    "SELECT local_date, energy_category_id, energy_item_id, energy, cost, quality, quarters"
    " FROM subject_energy_daily WHERE kind = $1 AND subject_id = $2 AND local_date >= $3 AND local_date < $4"
    " ORDER BY 1, 2, 3"
)


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _seed(platform: Platform) -> int:
    registry, aggregation = platform.schema("registry"), platform.schema("aggregation")
    tag = uuid.uuid4().hex[:8]
    async with platform.db.acquire() as conn:
        category = await conn.fetchval(
            f"SELECT id FROM \"{registry}\".energy_categories WHERE name = 'Electricity'"
        )
        zone = await conn.fetchval(f"SELECT id FROM \"{registry}\".timezones WHERE name = 'Europe/Brussels'")
        space = await conn.fetchval(
            f'INSERT INTO "{registry}".spaces (uuid, name, timezone_id) VALUES (gen_random_uuid(), $1, $2)'
            " RETURNING id",
            f"bench space {tag}",
            zone,
        )
        await conn.execute(
            f'WITH m AS (INSERT INTO "{registry}".meters (uuid, name, energy_category_id)'
            " SELECT gen_random_uuid(), $1 || n, $2 FROM generate_series(1, $3) AS n RETURNING id)"
            f' INSERT INTO "{registry}".space_meters (space_id, meter_id) SELECT $4, id FROM m',
            f"bench meter {tag} ",
            category,
            METERS,
            space,
        )
    async with httpx.AsyncClient(base_url=platform.processes.url("aggregation"), timeout=300) as client:
        headers = {INTERNAL_TOKEN_HEADER: platform.settings.internal_token}
        assert (await client.post("/internal/bindings/sync", headers=headers)).status_code == 200
        assert (await client.post("/internal/rollups/run", headers=headers)).status_code == 200

    async def settled() -> bool:
        return not await platform.db.fetchval(
            f'SELECT 1 FROM "{aggregation}".subject_rebuild_pending WHERE kind = $1 AND subject_id = $2',
            "space",
            space,
        ) and bool(
            await platform.db.fetchval(
                f'SELECT 1 FROM "{aggregation}".subjects WHERE kind = $1 AND subject_id = $2', "space", space
            )
        )

    await eventually(settled, bool, within=300, every=1.0)
    async with platform.db.acquire() as conn:
        # One row per local day of 2025: 1,000 meters of 2.4 + (day mod 7) / 10 kWh a day each.
        await conn.execute(
            f'INSERT INTO "{aggregation}".subject_energy_daily (kind, subject_id, local_date,'
            " energy_category_id, energy_item_id, energy, cost, quality, quarters)"
            " SELECT 'space', $1, d::date, $2, 0, $3 * (2.4 + (extract(doy FROM d)::int % 7) / 10.0), NULL, 0,"
            " $3 * 96 FROM generate_series('2025-01-01'::date, '2025-12-31'::date, interval '1 day') AS d"
            " ON CONFLICT DO NOTHING",
            space,
            category,
            METERS,
        )
        await conn.execute(f'ANALYZE "{aggregation}".subject_energy_daily')
    return int(space)


async def _timed(platform: Platform, params: dict[str, str | int]) -> list[float]:
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        answer = await platform.api.get("/reports/spaceenergycategory", params=params)
        samples.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text
    return samples


async def test_one_year_daily_report_of_a_space_with_1000_meters(platform: Platform) -> None:
    space = await _seed(platform)
    quick: dict[str, str | int] = {**PARAMS, "spaceid": space, "quickmode": "true"}
    first = (await platform.api.get("/reports/spaceenergycategory", params=quick)).json()
    values = first["reporting_period"]["values"][0]
    assert len(values) == 365 and all(v > 0 for v in values), first["reporting_period"]["subtotals"]

    quick_ms = await _timed(platform, quick)
    full_ms = await _timed(platform, {**PARAMS, "spaceid": space})

    aggregation = platform.schema("aggregation")
    ceiling_ms = []
    async with platform.db.acquire() as conn:
        await conn.execute(f'SET search_path TO "{aggregation}"')
        for _ in range(RUNS):
            started = time.perf_counter()
            rows = await conn.fetch(_ROLLUP_QUERY, "space", space, date(2025, 1, 1), date(2026, 1, 1))
            ceiling_ms.append((time.perf_counter() - started) * 1000)
            assert len(rows) == 365
        await conn.execute("RESET search_path")

    ceiling = _percentile(ceiling_ms, 0.95)
    for label, samples in (("quickmode", quick_ms), ("full (with Excel)", full_ms)):
        p95 = _percentile(samples, 0.95)
        print(
            f"\nreport latency, {label}: one-year daily report of a space with {METERS} meters:"
            f" p50 {statistics.median(samples):.1f} ms, p95 {p95:.1f} ms (target < {TARGET_MS:.0f} ms);"
            f" ceiling (PostgreSQL alone, the space's daily rows) p95 {ceiling:.2f} ms;"
            f" ratio report/ceiling {p95 / ceiling:.1f}x"
        )
