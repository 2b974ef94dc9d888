"""Normalisation: raw readings become values in the point's unit, with a quality, and energy intervals.

For each new raw reading: apply the point's ratio (DIGITAL_VALUE points: 0 or 1), flag it SUSPECT outside the
point's limits (services/normalisation/values.py), store it once per (point, time). For ENERGY_VALUE points,
consecutive cumulative readings become interval energy (services/normalisation/energy.py: rollover across
the point's register, reset, replaced meter, gaps); a late reading that lands between two known ones splits
their interval, which is withdrawn (sent negated) while the two new ones are added. An interval implying more
than the point's `higher_limit` per hour is a spike: it goes downstream with energy 0 and quality SUSPECT,
and its energy waits in `held_intervals` until someone confirms it (services/normalisation/held.py) or later
readings replace the interval (its SUSPECT interval is then withdrawn too, so the quality downstream
follows). Intervals go to aggregation inside the storing transaction, so a crash loses nothing and a
redelivery (all rows known already) emits nothing new.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter as Tally
from collections import defaultdict

from prometheus_client import Counter

from libs.bus import Delivery
from libs.db import Queryable
from libs.logs import correlation_id
from libs.service import ServiceContext
from proto_schemas import topics
from proto_schemas.pipeline import EnergyIntervalBatch, RawReadingBatch
from proto_schemas.quality import Quality
from services.normalisation.energy import (
    Changes,
    EnergyInterval,
    Reading,
    Register,
    late_bounds,
    point_changes,
    settle,
)
from services.normalisation.values import max_energy_per_hour, normalise_value, point_register
from services.registry.client import PointDirectory, PointInfo

log = logging.getLogger(__name__)

# Readings further apart than this are a gap: their energy is spread over it and marked ESTIMATED.
# An hour keeps meters read hourly (common for utility meters) GOOD.
MAX_GOOD_GAP_MS = 3_600_000

HELD = Counter(
    "gridfleet_normalisation_held_intervals_total",
    "Energy intervals held back as spikes (event=held), and confirmed, rejected or superseded later",
    ["event"],
)

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

# The readings late ones can change intervals of: energy.select_window in SQL.
_WINDOW = """
SELECT (extract(epoch FROM ts) * 1000)::bigint AS ts_ms, value, quality FROM readings
WHERE point_id = $1
  AND ts >= coalesce((SELECT max(ts) FROM readings WHERE point_id = $1 AND ts < to_timestamp($2 / 1000.0)),
                     to_timestamp($2 / 1000.0))
  AND ts <= coalesce((SELECT min(ts) FROM readings WHERE point_id = $1 AND ts > to_timestamp($3 / 1000.0)),
                     to_timestamp($3 / 1000.0))
ORDER BY ts
"""

_HOLD = """
INSERT INTO held_intervals (point_id, start_ms, end_ms, energy, quality, reason)
SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::float8[], $5::smallint[], $6::text[])
ON CONFLICT (point_id, start_ms, end_ms) DO NOTHING
"""

# Withdrawn intervals that were held: they are superseded; what was sent for them is returned.
_SUPERSEDE = """
WITH hit AS (
    SELECT h.id, h.point_id, h.start_ms, h.end_ms, h.energy, h.status
    FROM held_intervals h
    JOIN unnest($1::int[], $2::bigint[], $3::bigint[]) AS w(p, s, e)
      ON h.point_id = w.p AND h.start_ms = w.s AND h.end_ms = w.e
    WHERE h.status IN ('held', 'confirmed', 'rejected')
    FOR UPDATE OF h
), done AS (
    UPDATE held_intervals h SET status = 'superseded', superseded_at = now() FROM hit WHERE h.id = hit.id
)
SELECT point_id, start_ms, end_ms, energy, status FROM hit
"""


def withdraw_suspect(held: dict[tuple[int, int], tuple[float, str]] | None) -> list[EnergyInterval]:
    """Withdraw the 0-energy SUSPECT intervals sent for superseded held intervals still held or rejected.

    ``energy.settle`` cancels the energy sent for them (none); this cancels their quality, so aggregation's
    quality ledger no longer counts them and the quarter takes the quality of the intervals replacing them.
    A confirmed one had its SUSPECT interval withdrawn when it was confirmed (services/normalisation/held.py).
    """
    return [
        EnergyInterval(start, end, -0.0, Quality.SUSPECT)
        for (start, end), (_energy, status) in sorted((held or {}).items())
        if status in ("held", "rejected")
    ]


# (point_id, raw interval, reason) of an interval to hold
Hold = tuple[int, EnergyInterval, str]


class Normalisation:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.points = PointDirectory(ctx)
        # Latest stored reading of each energy point; only updated after a commit.
        self._latest: dict[int, Reading] = {}
        # Register of each energy point, for the PointInfo it was derived from.
        self._registers: dict[int, tuple[PointInfo, Register | None]] = {}

    def register(self) -> None:
        self.points.watch()
        self.ctx.mqtt.subscribe(topics.READINGS_RAW, RawReadingBatch, self.on_raw, batch_max=50)

    def _normalise(self, batch: RawReadingBatch) -> tuple[list[float], list[int]]:
        """Values in the point's unit (raw x ratio; 0/1 for digital points) and their quality."""
        known = self.points.points
        values: list[float] = []
        qualities: list[int] = []
        for point_id, raw in zip(batch.point_ids, batch.values, strict=True):
            value, quality = normalise_value(known.get(point_id), raw)
            values.append(value)
            qualities.append(quality)
        return values, qualities

    def _register_of(self, info: PointInfo) -> Register | None:
        cached = self._registers.get(info.id)
        if cached is not None and cached[0] is info:
            return cached[1]
        register = point_register(info)
        self._registers[info.id] = (info, register)
        return register

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
        events: Tally[str] = Tally()
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
                new_rows: dict[int, list[Reading]] = defaultdict(list)
                if row is not None and row[0]:
                    for point_id, ts, value, quality in zip(row[0], row[1], row[2], row[3], strict=True):
                        new_rows[point_id].append((ts, value, quality))
                changes: list[tuple[PointInfo, Changes]] = []
                for point_id, fresh in new_rows.items():
                    fresh.sort()
                    info = known[point_id]
                    changes.append((info, await self._changes_for(conn, info, fresh, latest)))
                removed = [(info.id, iv) for info, change in changes for iv in change.removed]
                held = await self._supersede(conn, removed, events) if removed else {}
                intervals: list[tuple[int, EnergyInterval]] = []
                holds: list[Hold] = []
                for info, change in changes:
                    outcome = settle(change, held.get(info.id), max_energy_per_hour(info))
                    intervals.extend((info.id, iv) for iv in withdraw_suspect(held.get(info.id)))
                    intervals.extend((info.id, iv) for iv in outcome.send)
                    holds.extend((info.id, iv, reason) for iv, reason in outcome.hold)
                if holds:
                    await conn.execute(
                        _HOLD,
                        [p for p, _, _ in holds],
                        [iv.start_ms for _, iv, _ in holds],
                        [iv.end_ms for _, iv, _ in holds],
                        [iv.energy for _, iv, _ in holds],
                        [int(iv.quality) for _, iv, _ in holds],
                        [reason for _, _, reason in holds],
                    )
                    events["held"] += len(holds)
                    log.warning(
                        "energy held back as a spike",
                        extra={"fields": {"count": len(holds), "points": sorted({p for p, _, _ in holds})}},
                    )
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
        for event, count in events.items():
            HELD.labels(event).inc(count)

    async def _load_latest(
        self, conn: Queryable, energy_points: set[int], latest: dict[int, Reading]
    ) -> None:
        """Fill in the latest stored reading of energy points not known yet (first batch after a start)."""
        missing = energy_points - latest.keys()
        if not missing:
            return
        for row in await conn.fetch(_LATEST, list(missing)):
            latest[row["point_id"]] = (row["ts_ms"], row["value"], row["quality"])

    async def _changes_for(
        self, conn: Queryable, info: PointInfo, fresh: list[Reading], latest: dict[int, Reading]
    ) -> Changes:
        """The intervals new readings of one energy point withdraw and add; advances `latest`."""
        previous = latest.get(info.id)
        window: list[Reading] = []
        if (bounds := late_bounds(previous, fresh)) is not None:
            # Some readings are older than the latest one known: fetch the stretch of history they fall in.
            window = [
                (r["ts_ms"], r["value"], r["quality"]) for r in await conn.fetch(_WINDOW, info.id, *bounds)
            ]
        if previous is None or fresh[-1][0] > previous[0]:
            latest[info.id] = fresh[-1]
        return point_changes(
            previous, fresh, window, max_gap_ms=MAX_GOOD_GAP_MS, register=self._register_of(info)
        )

    async def _supersede(
        self, conn: Queryable, removed: list[tuple[int, EnergyInterval]], events: Tally[str]
    ) -> dict[int, dict[tuple[int, int], tuple[float, str]]]:
        """Mark the held intervals among those late readings replaced as superseded (no longer confirmable).

        Returns, per point, what `energy.settle` needs to cancel them: (held energy, status before).
        """
        rows = await conn.fetch(
            _SUPERSEDE,
            [p for p, _ in removed],
            [iv.start_ms for _, iv in removed],
            [iv.end_ms for _, iv in removed],
        )
        held: dict[int, dict[tuple[int, int], tuple[float, str]]] = defaultdict(dict)
        for row in rows:
            held[row["point_id"]][(row["start_ms"], row["end_ms"])] = (row["energy"], row["status"])
        events["superseded"] += len(rows)
        return held
