"""Ingestion: device telemetry in, validated and deduplicated raw readings stored and passed on.

A telemetry message is accepted whole or not at all: every reading must name a point that belongs to a data
source of the publishing gateway. Accepted readings are stored once per (point, time); only readings not seen
before are passed to normalisation. The downstream publish happens inside the storing transaction, so a crash
between the two either rolls both back (the redelivered message is processed again) or leaves both done.
"""

from __future__ import annotations

import hashlib
import logging
import time

from libs.bus import Delivery
from libs.logs import correlation_id, new_correlation_id
from libs.service import ServiceContext
from proto_schemas import topics
from proto_schemas.pipeline import RawReadingBatch
from proto_schemas.registry import GatewaySeen
from proto_schemas.telemetry import GatewayStatus, Telemetry
from services.registry.client import PointDirectory

log = logging.getLogger(__name__)

# The new rows come back as three arrays in one row: far cheaper to decode than a record per reading.
_INSERT = """
WITH fresh AS (
    INSERT INTO raw_readings (point_id, ts, value)
    SELECT p, to_timestamp(t / 1000.0), v FROM unnest($1::int[], $2::bigint[], $3::float8[]) AS r(p, t, v)
    ON CONFLICT (point_id, ts) DO NOTHING
    RETURNING point_id, ts, value
)
SELECT array_agg(point_id), array_agg((extract(epoch FROM ts) * 1000)::bigint), array_agg(value) FROM fresh
"""

EARLIEST_MS = 946_684_800_000  # 2000-01-01: anything earlier is a clock fault or epoch seconds
FUTURE_TOLERANCE_MS = 24 * 3_600_000

# Tell the registry a gateway was seen at most this often.
SEEN_EVERY_S = 5.0


class Ingestion:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.points = PointDirectory(ctx)
        self._seen_sent: dict[str, float] = {}

    def register(self) -> None:
        self.points.watch()
        self.ctx.mqtt.subscribe(topics.TELEMETRY_ALL, Telemetry, self.on_telemetry, batch_max=200)
        self.ctx.mqtt.subscribe(topics.STATUS_ALL, GatewayStatus, self.on_status, batch_max=100)

    async def on_telemetry(self, deliveries: list[Delivery[Telemetry]]) -> None:
        needed = {reading.point_id for d in deliveries for reading in d.model.readings}
        await self.points.refresh_if_missing(needed)

        point_ids: list[int] = []
        ts_ms: list[int] = []
        values: list[float] = []
        accepted_keys: list[str] = []
        seen_at: dict[str, int] = {}
        latest_ms = int(time.time() * 1000) + FUTURE_TOLERANCE_MS
        for delivery in deliveries:
            gateway_uuid = topics.gateway_of(delivery.topic)
            stamps = [int(reading.ts.timestamp() * 1000) for reading in delivery.model.readings]
            errors = self._check(gateway_uuid, delivery.model, stamps, latest_ms)
            if errors:
                delivery.reject(f"{len(errors)} reading(s) refused; the message was not stored", errors[:50])
                continue
            for reading in delivery.model.readings:
                point_ids.append(reading.point_id)
                values.append(reading.value)
            ts_ms.extend(stamps)
            key = delivery.model.msg_id or hashlib.sha256(delivery.payload).hexdigest()
            accepted_keys.append(f"{gateway_uuid}:{key}")
            seen_at[gateway_uuid] = int(delivery.received_at * 1000)
        if not point_ids:
            return

        batch_id = hashlib.sha256("|".join(accepted_keys).encode()).hexdigest()[:32]
        cid = new_correlation_id()
        correlation_id.set(cid)
        async with self.ctx.db.acquire() as conn, conn.transaction():
            fresh = await conn.fetchrow(_INSERT, point_ids, ts_ms, values)
            assert fresh is not None  # an aggregate always returns one row
            new_points, new_ts, new_values = fresh
            if new_points:
                batch = RawReadingBatch(
                    batch_id=batch_id,
                    correlation_id=cid,
                    point_ids=new_points,
                    ts_ms=new_ts,
                    values=new_values,
                )
                await self.ctx.mqtt.publish(topics.READINGS_RAW, batch)
        await self._announce_seen(seen_at)

    def _check(
        self, gateway_uuid: str, telemetry: Telemetry, stamps: list[int], latest_ms: int
    ) -> list[dict[str, str]]:
        errors: list[dict[str, str]] = []
        known = self.points.points
        for index, reading in enumerate(telemetry.readings):
            stamp = stamps[index]
            if not EARLIEST_MS <= stamp <= latest_ms:
                errors.append(
                    {
                        "field": f"readings.{index}.ts",
                        "message": "time before 2000 or more than a day ahead (epoch seconds sent as milliseconds?)",
                    }
                )
            info = known.get(reading.point_id)
            if info is None:
                errors.append(
                    {"field": f"readings.{index}.point_id", "message": f"unknown point {reading.point_id}"}
                )
            elif info.gateway_uuid != gateway_uuid:
                errors.append(
                    {
                        "field": f"readings.{index}.point_id",
                        "message": f"point {reading.point_id} does not belong to gateway {gateway_uuid}",
                    }
                )
            elif info.is_virtual:
                errors.append(
                    {"field": f"readings.{index}.point_id", "message": f"point {reading.point_id} is virtual"}
                )
        return errors

    async def _announce_seen(self, seen_at: dict[str, int], status: str | None = None) -> None:
        now = time.monotonic()
        for gateway_uuid, last_ms in seen_at.items():
            if status is None and now - self._seen_sent.get(gateway_uuid, 0.0) < SEEN_EVERY_S:
                continue
            self._seen_sent[gateway_uuid] = now
            notice = GatewaySeen(gateway_uuid=gateway_uuid, last_seen_ms=last_ms, status=status)
            await self.ctx.mqtt.publish(topics.GATEWAYS_SEEN, notice)

    async def on_status(self, deliveries: list[Delivery[GatewayStatus]]) -> None:
        for delivery in deliveries:
            gateway_uuid = topics.gateway_of(delivery.topic)
            await self._announce_seen({gateway_uuid: int(delivery.received_at * 1000)}, delivery.model.status)
