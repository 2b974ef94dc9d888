"""Aggregation: interval energy becomes hourly energy per meter.

Each batch of intervals is split into UTC hours per point (services/aggregation/hourly.py) and written to a
ledger keyed by (batch, point, hour). Only ledger rows that are new add to `meter_energy_hourly`, in the same
statement, so a redelivered batch changes nothing and a late correction simply adds its (possibly negative)
contribution to the hours it touches.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from libs.bus import Delivery
from libs.logs import correlation_id
from libs.service import ServiceContext
from proto_schemas import topics
from proto_schemas.pipeline import EnergyIntervalBatch
from proto_schemas.registry import RegistryChange
from services.aggregation.hourly import hourly_contributions

log = logging.getLogger(__name__)

_APPLY = """
WITH fresh AS (
    INSERT INTO energy_ledger (batch_key, point_id, hour, energy, quality)
    SELECT b, p, to_timestamp(h / 1000.0), e, q
    FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::float8[], $5::smallint[]) AS r(b, p, h, e, q)
    ON CONFLICT DO NOTHING
    RETURNING point_id, hour, energy, quality
)
INSERT INTO meter_energy_hourly AS m (meter_id, hour, energy, quality)
SELECT mp.meter_id, f.hour, sum(f.energy), max(f.quality)
FROM fresh f JOIN meter_points mp ON mp.point_id = f.point_id
GROUP BY mp.meter_id, f.hour
ON CONFLICT (meter_id, hour) DO UPDATE
SET energy = m.energy + EXCLUDED.energy, quality = GREATEST(m.quality, EXCLUDED.quality), updated_at = now()
"""

_REBUILD_METER = """
WITH gone AS (DELETE FROM meter_energy_hourly WHERE meter_id = $1)
INSERT INTO meter_energy_hourly (meter_id, hour, energy, quality)
SELECT $1, l.hour, sum(l.energy), max(l.quality)
FROM energy_ledger l JOIN meter_points mp ON mp.point_id = l.point_id AND mp.meter_id = $1
GROUP BY l.hour
"""

# Writers take this lock shared; a rebuild of a meter takes it exclusively, so none interleave.
_LOCK_KEY = 0x67660A99


def batch_key(batch_id: str) -> int:
    return int.from_bytes(hashlib.sha256(batch_id.encode()).digest()[:8], "big", signed=True)


class Aggregation:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._bindings_stale = asyncio.Event()

    def register(self) -> None:
        self.ctx.mqtt.subscribe(topics.ENERGY_INTERVALS, EnergyIntervalBatch, self.on_intervals, batch_max=50)
        self.ctx.mqtt.subscribe(
            topics.CONFIG_CHANGED,
            RegistryChange,
            self.on_registry_change,
            shared=False,
            name="registry-bindings",
        )
        self.ctx.background(self._binding_refresher, "meter-bindings")

    async def on_intervals(self, deliveries: list[Delivery[EnergyIntervalBatch]]) -> None:
        keys: list[int] = []
        point_ids: list[int] = []
        hours: list[int] = []
        energy: list[float] = []
        quality: list[int] = []
        for delivery in deliveries:
            batch = delivery.model
            key = batch_key(batch.batch_id)
            totals = hourly_contributions(
                batch.point_ids, batch.start_ms, batch.end_ms, batch.energy, batch.quality
            )
            for (point_id, hour), (value, code) in totals.items():
                keys.append(key)
                point_ids.append(point_id)
                hours.append(hour)
                energy.append(value)
                quality.append(code)
        if not keys:
            return
        correlation_id.set(deliveries[0].model.correlation_id)
        async with self.ctx.db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", _LOCK_KEY)
            await conn.execute(_APPLY, keys, point_ids, hours, energy, quality)

    async def on_registry_change(self, deliveries: list[Delivery[RegistryChange]]) -> None:
        if any(d.model.entity in ("meter_point", "meter", "point") for d in deliveries):
            self._bindings_stale.set()

    async def sync_bindings(self) -> None:
        """Copy the registry's meter-point bindings; rebuild the hourly energy of every meter that changed."""
        response = await self.ctx.call("registry", "GET", "/internal/meterpoints")
        response.raise_for_status()
        wanted = {(row["meter_id"], row["point_id"]) for row in response.json()}
        async with self.ctx.db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            current = {(r["meter_id"], r["point_id"]) for r in await conn.fetch("SELECT * FROM meter_points")}
            if current == wanted:
                return
            added, removed = wanted - current, current - wanted
            if removed:
                await conn.executemany(
                    "DELETE FROM meter_points WHERE meter_id = $1 AND point_id = $2", list(removed)
                )
            if added:
                await conn.executemany("INSERT INTO meter_points VALUES ($1, $2)", list(added))
            for meter_id in sorted({meter for meter, _ in added | removed}):
                await conn.execute(_REBUILD_METER, meter_id)
            log.info(
                "meter bindings synced", extra={"fields": {"added": len(added), "removed": len(removed)}}
            )

    async def sync_when_ready(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.sync_bindings()
                return
            except Exception as exc:
                log.warning("registry not reachable yet", extra={"fields": {"error": repr(exc)}})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _binding_refresher(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._bindings_stale.wait(), 60.0)
            except TimeoutError:
                pass
            self._bindings_stale.clear()
            try:
                await self.sync_bindings()
            except Exception:
                log.warning("binding sync failed", exc_info=True)
