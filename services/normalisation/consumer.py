"""Normalisation: raw readings become values in the point's unit, with a quality, and energy intervals.

For each new raw reading: apply the point's ratio, flag it SUSPECT outside the point's limits, store it once
per (point, time). For ENERGY_VALUE points, consecutive cumulative readings become interval energy
(services/normalisation/energy.py); a late reading that lands between two known ones splits their interval,
which is sent as the old interval negated plus the two new ones. Intervals go to aggregation inside the
storing transaction, so a crash loses nothing and a redelivery (all rows known already) emits nothing new.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict

from libs.bus import Delivery
from libs.db import Queryable
from libs.logs import correlation_id
from libs.service import ServiceContext
from proto_schemas import topics
from proto_schemas.pipeline import EnergyIntervalBatch, RawReadingBatch
from proto_schemas.quality import Quality
from services.normalisation.energy import EnergyInterval, interval_energy
from services.registry.client import PointDirectory, PointInfo

log = logging.getLogger(__name__)

# Readings further apart than this are a gap: their energy is spread over it and marked ESTIMATED.
# An hour keeps meters read hourly (common for utility meters) GOOD.
MAX_GOOD_GAP_MS = 3_600_000

# New rows come back as arrays in one row (cheap to decode), only for the energy points that need them.
_INSERT = """
WITH fresh AS (
    INSERT INTO readings (point_id, ts, value, quality)
    SELECT p, to_timestamp(t / 1000.0), v, q
    FROM unnest($1::int[], $2::bigint[], $3::float8[], $4::smallint[]) AS r(p, t, v, q)
    ON CONFLICT (point_id, ts) DO NOTHING
    RETURNING point_id, ts, value, quality
)
SELECT array_agg(point_id), array_agg((extract(epoch FROM ts) * 1000)::bigint), array_agg(value),
       array_agg(quality)
FROM fresh WHERE point_id = ANY($5::int[])
"""

_LATEST = """
SELECT p AS point_id, (extract(epoch FROM r.ts) * 1000)::bigint AS ts_ms, r.value, r.quality
FROM unnest($1::int[]) AS q(p)
CROSS JOIN LATERAL (
    SELECT ts, value, quality FROM readings WHERE point_id = q.p ORDER BY ts DESC LIMIT 1
) r
"""

_WINDOW = """
SELECT (extract(epoch FROM ts) * 1000)::bigint AS ts_ms, value, quality FROM readings
WHERE point_id = $1
  AND ts >= coalesce((SELECT max(ts) FROM readings WHERE point_id = $1 AND ts < to_timestamp($2 / 1000.0)),
                     to_timestamp($2 / 1000.0))
  AND ts <= to_timestamp($3 / 1000.0)
ORDER BY ts
"""


def classify(info: PointInfo, value: float) -> Quality:
    """SUSPECT outside the point's [low_limit, high_limit]; GOOD otherwise."""
    if info.low_limit is not None and value < info.low_limit:
        return Quality.SUSPECT
    if info.high_limit is not None and value > info.high_limit:
        return Quality.SUSPECT
    return Quality.GOOD


# (ts_ms, value, quality) of a stored reading
Stored = tuple[int, float, int]


def _intervals(previous: Stored | None, series: list[Stored]) -> list[EnergyInterval]:
    """Interval energy for a series, each interval as bad as the worse of its two readings."""
    prev = (previous[0], previous[1]) if previous else None
    intervals = interval_energy(prev, [(ts, value) for ts, value, _ in series], max_gap_ms=MAX_GOOD_GAP_MS)
    chain = ([previous] if previous else []) + series
    qualities = [quality for _, _, quality in chain]
    return [
        EnergyInterval(
            iv.start_ms, iv.end_ms, iv.energy, Quality.worst(iv.quality, qualities[i], qualities[i + 1])
        )
        for i, iv in enumerate(intervals)
    ]


class Normalisation:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.points = PointDirectory(ctx)
        # Latest stored reading of each energy point; only updated after a commit.
        self._latest: dict[int, Stored] = {}

    def register(self) -> None:
        self.points.watch()
        self.ctx.mqtt.subscribe(topics.READINGS_RAW, RawReadingBatch, self.on_raw, batch_max=50)

    def _normalise(self, batch: RawReadingBatch) -> tuple[list[float], list[int]]:
        """Values in the point's unit (raw x ratio) and their quality."""
        known = self.points.points
        values: list[float] = []
        qualities: list[int] = []
        for point_id, raw in zip(batch.point_ids, batch.values, strict=True):
            info = known.get(point_id)
            if info is None:
                # Deleted between ingestion and here: keep the reading, flagged, rather than lose it.
                values.append(raw)
                qualities.append(Quality.SUSPECT)
                continue
            value = raw * info.ratio
            values.append(value)
            qualities.append(classify(info, value))
        return values, qualities

    async def on_raw(self, deliveries: list[Delivery[RawReadingBatch]]) -> None:
        """Store and turn into intervals each raw batch in turn, in one transaction.

        Each input batch gives its own output batch, with an id derived from the input's: after a crash the
        broker may redeliver the inputs grouped differently, and aggregation must still recognise every
        output it already applied. So each input is inserted and computed on its own, in arrival order.
        """
        await self.points.refresh_if_missing({p for d in deliveries for p in d.model.point_ids})
        known = self.points.points
        correlation_id.set(deliveries[0].model.correlation_id)
        outputs: list[EnergyIntervalBatch] = []
        async with self.ctx.db.acquire() as conn, conn.transaction():
            latest = dict(self._latest)  # becomes the cache only once the transaction commits
            for delivery in deliveries:
                batch = delivery.model
                if not batch.point_ids:
                    continue
                values, qualities = self._normalise(batch)
                energy_points = {
                    p for p in set(batch.point_ids) if (i := known.get(p)) is not None and i.is_energy
                }
                if energy_points:
                    await self._load_latest(conn, energy_points, latest)
                row = await conn.fetchrow(
                    _INSERT, batch.point_ids, batch.ts_ms, values, qualities, list(energy_points)
                )
                new_rows: dict[int, list[Stored]] = defaultdict(list)
                if row is not None and row[0]:
                    for point_id, ts, value, quality in zip(row[0], row[1], row[2], row[3], strict=True):
                        new_rows[point_id].append((ts, value, quality))
                intervals: list[tuple[int, EnergyInterval]] = []
                for point_id, fresh in new_rows.items():
                    fresh.sort()
                    intervals.extend(await self._energy_for(conn, point_id, fresh, latest))
                if intervals:
                    outputs.append(
                        EnergyIntervalBatch(
                            batch_id=hashlib.sha256(f"intervals:{batch.batch_id}".encode()).hexdigest()[:32],
                            correlation_id=batch.correlation_id,
                            point_ids=[p for p, _ in intervals],
                            start_ms=[iv.start_ms for _, iv in intervals],
                            end_ms=[iv.end_ms for _, iv in intervals],
                            energy=[iv.energy for _, iv in intervals],
                            quality=[int(iv.quality) for _, iv in intervals],
                        )
                    )
            # Published inside the transaction: a crash before the commit replays everything, after it nothing.
            await asyncio.gather(*(self.ctx.mqtt.publish(topics.ENERGY_INTERVALS, out) for out in outputs))
        self._latest = latest

    async def _load_latest(self, conn: Queryable, energy_points: set[int], latest: dict[int, Stored]) -> None:
        """Fill in the latest stored reading of energy points not known yet (first batch after a start)."""
        missing = energy_points - latest.keys()
        if not missing:
            return
        for row in await conn.fetch(_LATEST, list(missing)):
            latest[row["point_id"]] = (row["ts_ms"], row["value"], row["quality"])

    async def _energy_for(
        self, conn: Queryable, point_id: int, fresh: list[Stored], latest: dict[int, Stored]
    ) -> list[tuple[int, EnergyInterval]]:
        previous = latest.get(point_id)
        if previous is None or fresh[0][0] > previous[0]:
            intervals = _intervals(previous, fresh)
            latest[point_id] = fresh[-1]
            return [(point_id, iv) for iv in intervals]
        # Some readings are older than the latest one known: recompute the window they fall in.
        late = [row for row in fresh if row[0] < previous[0]]
        in_order = [row for row in fresh if row[0] > previous[0]]
        window = [(r["ts_ms"], r["value"], r["quality"]) for r in await conn.fetch(
            _WINDOW, point_id, late[0][0], previous[0]
        )]  # fmt: skip
        late_ts = {row[0] for row in late}
        before = [row for row in window if row[0] not in late_ts]
        out = [
            (point_id, EnergyInterval(iv.start_ms, iv.end_ms, -iv.energy, iv.quality))
            for iv in _intervals(None, before)
        ]
        out += [(point_id, iv) for iv in _intervals(None, window)]
        if in_order:
            out += [(point_id, iv) for iv in _intervals(previous, in_order)]
            latest[point_id] = in_order[-1]
        return out
