"""`make bench`: aggregation's recomputation over a year of data, beside PostgreSQL alone doing the same sums.

Seeding: the bench writes GRIDFLEET_BENCH_AGG_METERS (1,000) meters x GRIDFLEET_BENCH_AGG_DAYS (365) days of
hourly energy straight into aggregation's tables (one INSERT ... SELECT from generate_series into
`meter_energy_quarter`, the form aggregation stores: each hour as its four quarters), every meter in
Europe/Brussels, so the year has a 23- and a 25-hour day. Nothing goes through the bus for the seed: the
figures are aggregation's own work, run in this process against the real database with the service's code.

1. **Rollup build**: every meter marked for a rebuild, then rollup rounds until none is left: daily, monthly
   and yearly rows for the whole year (target: under 60 s). Ceiling: one INSERT ... SELECT computing the same
   local daily sums straight from the quarters (PostgreSQL alone), then its months and years.
2. **Late-data replay**: GRIDFLEET_BENCH_AGG_LATE (24) hours of every meter, scattered over the year, arrive
   late as interval batches (through the consumer's batch handler: ledger, quality ledger, quarters) and the
   rollup rounds take them in (their days, months, years). Figure: late hours recomputed per second, from the
   first batch to the last rollup. Ceiling: PostgreSQL alone upserting the same quarter contributions into the
   same (year-long) quarter table and re-summing the same days, in one statement each, with no ledger.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import cast

import pytest
from asyncpg.pool import PoolConnectionProxy

from deploy.local.infra import Infra
from libs.bus import Delivery
from libs.db import create_pool, migrate
from libs.service import ServiceContext
from libs.settings import Settings
from proto_schemas.pipeline import EnergyIntervalBatch
from proto_schemas.quality import Quality
from services.aggregation.app import MIGRATIONS
from services.aggregation.consumer import REBUILD_METER, Aggregation
from services.aggregation.localtime import day_bounds, zone
from services.aggregation.rollups import Rollups

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(3600)]

METERS = int(os.environ.get("GRIDFLEET_BENCH_AGG_METERS", "1000"))
DAYS = int(os.environ.get("GRIDFLEET_BENCH_AGG_DAYS", "365"))
LATE = int(os.environ.get("GRIDFLEET_BENCH_AGG_LATE", "24"))
ZONE = "Europe/Brussels"
FIRST = datetime(2025, 1, 1, tzinfo=zone(ZONE)).astimezone(UTC)
HOUR_MS = 3_600_000
PER_BATCH = 50  # intervals per batch, batches per handler call as the consumer takes them (batch_max=50)


@dataclass
class _Delivery:
    model: EnergyIntervalBatch


async def _rounds(rollups: Rollups) -> int:
    rounds = 1
    while await rollups.run_once():
        rounds += 1
    return rounds


async def _ceiling_build(conn: PoolConnectionProxy) -> float:
    started = time.perf_counter()
    await conn.execute(
        "CREATE TEMP TABLE ceiling_daily AS"
        " SELECT meter_id, (quarter AT TIME ZONE $1)::date AS local_date, sum(energy) AS energy,"
        " max(quality) AS quality, count(*) AS quarters FROM meter_energy_quarter GROUP BY 1, 2",
        ZONE,
    )
    await conn.execute(
        "CREATE TEMP TABLE ceiling_monthly AS SELECT meter_id, date_trunc('month', local_date) AS m,"
        " sum(energy) AS energy, max(quality) AS quality, sum(quarters) AS quarters FROM ceiling_daily GROUP BY 1, 2"
    )
    await conn.execute(
        "CREATE TEMP TABLE ceiling_yearly AS SELECT meter_id, date_trunc('year', m) AS y, sum(energy)"
        " FROM ceiling_monthly GROUP BY 1, 2"
    )
    return time.perf_counter() - started


async def test_aggregation_recompute(infra: Infra) -> None:
    infra_database_url = infra.database_url
    schema = f"gf_bench_agg_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(infra_database_url, schema, max_size=4)
    try:
        await migrate(pool, schema, MIGRATIONS)
        ctx = ServiceContext("aggregation", Settings(), pool=pool)
        quarters = METERS * DAYS * 96
        async with pool.acquire() as conn:
            seed_started = time.perf_counter()
            await conn.execute(
                "INSERT INTO meter_points SELECT m, m FROM generate_series(1, $1) AS m", METERS
            )
            await conn.execute(
                "INSERT INTO meter_zones SELECT m, $2 FROM generate_series(1, $1) AS m", METERS, ZONE
            )
            # Written unlogged and without its key (then logged and keyed again before anything is measured):
            # the seed alone would otherwise take minutes of WAL and index maintenance on this machine.
            await conn.execute(
                "ALTER TABLE meter_energy_quarter DROP CONSTRAINT meter_energy_quarter_pkey;"
                " ALTER TABLE meter_energy_quarter SET UNLOGGED"
            )
            await conn.execute(
                "INSERT INTO meter_energy_quarter (meter_id, quarter, energy, quality)"
                " SELECT m, q, 0.25 + (m % 7) * 0.01, 0"
                " FROM generate_series(1, $1) AS m,"
                " generate_series($2::timestamptz, $3::timestamptz - interval '15 minutes', interval '15 minutes') AS q",
                METERS,
                FIRST,
                day_bounds(date(2025, 1, 1) + timedelta(days=DAYS - 1), zone(ZONE))[1],
            )
            await conn.execute(
                "ALTER TABLE meter_energy_quarter SET LOGGED;"
                " ALTER TABLE meter_energy_quarter ADD PRIMARY KEY (meter_id, quarter)"
            )
            await conn.execute("ANALYZE")
            seeded = time.perf_counter() - seed_started
            stored = await conn.fetchval("SELECT count(*) FROM meter_energy_quarter")

        # 1. Rollup build from scratch.
        rollups = Rollups(ctx)
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO rebuild_pending (kind, source_id) SELECT $2, m FROM generate_series(1, $1) AS m",
                METERS,
                REBUILD_METER,
            )
        started = time.perf_counter()
        build_rounds = await _rounds(rollups)
        build = time.perf_counter() - started
        async with pool.acquire() as conn:
            days = await conn.fetchval("SELECT count(*) FROM meter_energy_daily")
            total = await conn.fetchval("SELECT sum(energy) FROM meter_energy_yearly")
            expected = await conn.fetchval("SELECT sum(energy) FROM meter_energy_quarter")
            assert days == METERS * DAYS and abs(total - expected) < 1e-6 * expected
            ceiling_build = await _ceiling_build(conn)

        # 2. Late-data replay: LATE hours of every meter, each hour's energy corrected by +1 kWh.
        rng = random.Random(7)
        hours = {(m, rng.randrange(DAYS * 24 - 1)) for m in range(1, METERS + 1) for _ in range(LATE)}
        late = sorted(hours)
        first_ms = int(FIRST.timestamp() * 1000)
        batches = [
            EnergyIntervalBatch(
                batch_id=f"late-{i}",
                correlation_id="bench",
                point_ids=[m for m, _ in late[i : i + PER_BATCH]],
                start_ms=[first_ms + h * HOUR_MS for _, h in late[i : i + PER_BATCH]],
                end_ms=[first_ms + (h + 1) * HOUR_MS for _, h in late[i : i + PER_BATCH]],
                energy=[1.0] * len(late[i : i + PER_BATCH]),
                quality=[int(Quality.GOOD)] * len(late[i : i + PER_BATCH]),
            )
            for i in range(0, len(late), PER_BATCH)
        ]
        aggregation = Aggregation(ctx)
        started = time.perf_counter()
        for i in range(0, len(batches), PER_BATCH):
            deliveries = [_Delivery(b) for b in batches[i : i + PER_BATCH]]
            await aggregation.on_intervals(cast(list[Delivery[EnergyIntervalBatch]], deliveries))
        applied = time.perf_counter() - started
        replay_rounds = await _rounds(rollups)
        replay = time.perf_counter() - started
        async with pool.acquire() as conn:
            after = await conn.fetchval("SELECT sum(energy) FROM meter_energy_yearly")
            assert abs(after - (expected + len(late))) < 1e-6 * after

            # Ceiling: the same contributions upserted and the same days re-summed, PostgreSQL alone.
            tz = zone(ZONE)
            touched_days = sorted({(m, (FIRST + timedelta(hours=h)).astimezone(tz).date()) for m, h in late})
            bounds = [day_bounds(d, tz) for _, d in touched_days]
            await conn.execute(
                "CREATE TEMP TABLE ceiling_days (meter_id int, local_date date, energy float8,"
                " PRIMARY KEY (meter_id, local_date))"
            )
            started = time.perf_counter()
            await conn.execute(
                "INSERT INTO meter_energy_quarter AS t (meter_id, quarter, energy, quality)"
                " SELECT m, to_timestamp(q / 1000.0), 0.25, 0"
                " FROM unnest($1::int[], $2::bigint[]) AS r(m, h), LATERAL"
                " (SELECT h + k * 900000 AS q FROM generate_series(0, 3) AS k) s"
                " ON CONFLICT (meter_id, quarter) DO UPDATE SET energy = t.energy + 0.25",
                [m for m, _ in late],
                [first_ms + h * HOUR_MS for _, h in late],
            )
            await conn.execute(
                "INSERT INTO ceiling_days SELECT d.m, d.day, sum(q.energy)"
                " FROM unnest($1::int[], $2::date[], $3::timestamptz[], $4::timestamptz[]) AS d(m, day, s, e)"
                " JOIN meter_energy_quarter q ON q.meter_id = d.m AND q.quarter >= d.s AND q.quarter < d.e"
                " GROUP BY 1, 2 ON CONFLICT (meter_id, local_date) DO UPDATE SET energy = EXCLUDED.energy",
                [m for m, _ in touched_days],
                [d for _, d in touched_days],
                [s for s, _ in bounds],
                [e for _, e in bounds],
            )
            ceiling_replay = time.perf_counter() - started
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await pool.close()

    rate, ceiling_rate = len(late) / replay, len(late) / ceiling_replay
    print(
        "\n"
        f"gridfleet aggregation recompute benchmark ({METERS:,} meters x {DAYS} days, {stored:,} quarters,"
        f" seeded by INSERT ... SELECT into meter_energy_quarter (then logged, keyed) in {seeded:.1f} s; {os.cpu_count()} cores)\n"
        f"  rollup build   daily+monthly+yearly, {build_rounds} rounds     {build:>10.1f} s"
        f"  ({days:,} days; target < 60 s)\n"
        f"  ceiling        PostgreSQL alone, INSERT ... SELECT           {ceiling_build:>10.1f} s\n"
        f"  ratio          ceiling time / build time                    {ceiling_build / build:>10.2f}\n"
        f"  late replay    {len(late):,} hours in {len(batches):,} batches, {replay_rounds} rounds"
        f"  {rate:>10,.0f} hours/s  (batches applied in {applied:.1f} s, rollups after {replay:.1f} s)\n"
        f"  ceiling        PostgreSQL alone, upsert + re-sum days        {ceiling_rate:>10,.0f} hours/s\n"
        f"  ratio          replay / ceiling                             {rate / ceiling_rate:>10.2f}\n"
    )
    assert quarters == stored
