"""Ingestion: device telemetry in, validated and deduplicated raw readings stored and passed on.

A telemetry message is accepted whole or not at all: every reading must name a point that belongs to a data
source of the publishing gateway. Accepted readings are stored once per (point, time); only readings not seen
before are passed to normalisation. The downstream publish happens inside the storing transaction, so a crash
between the two either rolls both back (the redelivered message is processed again) or leaves both done.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from libs.bus import Delivery
from libs.logs import correlation_id, new_correlation_id
from libs.service import ServiceContext
from proto_schemas import topics
from proto_schemas.health import Health
from proto_schemas.pipeline import RawReadingBatch
from proto_schemas.registry import GatewaySeen
from proto_schemas.telemetry import GatewayStatus, Telemetry, TelemetryColumns, telemetry_columns
from services.registry.client import PointDirectory

log = logging.getLogger(__name__)

# Readings go in with one binary COPY (the cheapest way into PostgreSQL) in a savepoint. If any of them is
# already stored (a redelivered or resent message), the COPY fails on the primary key, is rolled back to the
# savepoint, and the batch goes in again with _INSERT, which skips the stored ones and returns the new rows
# as three arrays in one row: far cheaper to decode than a record per reading.
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
PG_EPOCH_MS = 946_684_800_000  # PostgreSQL's binary timestamptz counts microseconds from 2000-01-01 UTC
FUTURE_TOLERANCE_MS = 24 * 3_600_000

# Tell the registry a gateway was seen at most this often.
SEEN_EVERY_S = 5.0

# Telemetry messages stored per transaction at most (everything already waiting, up to this): under load one
# COPY of ~20,000 readings; when quiet, each message on its own. Memory stays bounded whatever the database's
# speed: the broker sends at most the bus's receive maximum of unacknowledged messages.
BATCH_MAX = 200

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_COPY_ROW = struct.Struct("!hiiiqid")  # 3 fields: int4 point_id, timestamptz ts, float8 value


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def copy_binary(point_ids: list[int], ts_ms: list[int], values: list[float]) -> bytes:
    """The rows in PostgreSQL's binary COPY format (point_id, ts, value)."""
    pack = _COPY_ROW.pack
    rows = [
        pack(3, 4, p, 8, (t - PG_EPOCH_MS) * 1000, 8, v)
        for p, t, v in zip(point_ids, ts_ms, values, strict=True)
    ]
    return b"".join((_COPY_HEADER, *rows, _COPY_TRAILER))


class Ingestion:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.points = PointDirectory(ctx)
        self._seen_sent: dict[str, float] = {}

    def register(self) -> None:
        self.points.watch()
        # Decoded straight into columns (no Python object per reading), accepted and refused exactly as the
        # Telemetry model does.
        self.ctx.mqtt.subscribe_decoded(
            topics.TELEMETRY_ALL,
            Telemetry,
            telemetry_columns,
            self.on_telemetry,
            batch_max=BATCH_MAX,
            prefetch=True,
        )
        self.ctx.mqtt.subscribe(topics.STATUS_ALL, GatewayStatus, self.on_status, batch_max=100)
        self.ctx.mqtt.subscribe(topics.HEALTH_ALL, Health, self.on_health, batch_max=200)

    async def on_telemetry(self, deliveries: list[Delivery[TelemetryColumns]]) -> None:
        needed: set[int] = set()
        for delivery in deliveries:
            needed.update(delivery.model.point_ids)
        await self.points.refresh_if_missing(needed)

        point_ids: list[int] = []
        ts_ms: list[int] = []
        values: list[float] = []
        accepted_keys: list[str] = []
        seen_at: dict[str, int] = {}
        latest_ms = int(time.time() * 1000) + FUTURE_TOLERANCE_MS
        for delivery in deliveries:
            gateway_uuid = topics.gateway_of(delivery.topic)
            columns = delivery.model
            if not self._all_good(gateway_uuid, columns, latest_ms):
                errors = self._check(gateway_uuid, columns, latest_ms)
                if errors:
                    delivery.reject(
                        f"{len(errors)} reading(s) refused; the message was not stored", errors[:50]
                    )
                    continue
            point_ids.extend(columns.point_ids)
            ts_ms.extend(columns.ts_ms)
            values.extend(columns.values)
            key = columns.msg_id or hashlib.sha256(delivery.payload).hexdigest()
            accepted_keys.append(f"{gateway_uuid}:{key}")
            seen_at[gateway_uuid] = int(delivery.received_at * 1000)
        if not point_ids:
            return

        batch_id = hashlib.sha256("|".join(accepted_keys).encode()).hexdigest()[:32]
        cid = new_correlation_id()
        correlation_id.set(cid)
        async with self.ctx.db.acquire() as conn, conn.transaction():
            new_points, new_ts, new_values = await self._store(conn, point_ids, ts_ms, values)
            if new_points:
                batch = RawReadingBatch(
                    batch_id=batch_id,
                    correlation_id=cid,
                    point_ids=new_points,
                    ts_ms=new_ts,
                    values=new_values,
                )
                await self.ctx.mqtt.publish(topics.READINGS_RAW, batch)
        await self._record_seen(seen_at)
        await self._announce_seen(seen_at)

    @staticmethod
    async def _store(
        conn: PoolConnectionProxy[Any], point_ids: list[int], ts_ms: list[int], values: list[float]
    ) -> tuple[list[int], list[int], list[float]]:
        """Store the readings not stored yet (once per point and time); returns those, as columns."""
        try:
            async with conn.transaction():  # a savepoint: a failed COPY leaves the outer transaction usable
                await conn.copy_to_table(
                    "raw_readings",
                    source=_once(copy_binary(point_ids, ts_ms, values)),
                    columns=("point_id", "ts", "value"),
                    format="binary",
                )
            return point_ids, ts_ms, values
        except asyncpg.UniqueViolationError:
            pass  # some are stored already (or repeated within the batch): keep the first of each
        fresh = await conn.fetchrow(_INSERT, point_ids, ts_ms, values)
        assert fresh is not None  # an aggregate always returns one row
        new_points, new_ts, new_values = fresh
        return new_points or [], new_ts or [], new_values or []

    async def _record_seen(self, seen_at: dict[str, int]) -> None:
        """Last-seen per gateway for the fleet view: one statement per batch, whatever its gateways."""
        if seen_at:
            await self.ctx.db.execute(
                "INSERT INTO gateway_state (gateway_uuid, last_seen_at)"
                " SELECT g, to_timestamp(ms / 1000.0) FROM unnest($1::text[], $2::bigint[]) AS s(g, ms)"
                " ON CONFLICT (gateway_uuid)"
                " DO UPDATE SET last_seen_at = GREATEST(gateway_state.last_seen_at, EXCLUDED.last_seen_at)",
                *zip(*sorted(seen_at.items()), strict=True),  # one lock order across replicas
            )

    def _all_good(self, gateway_uuid: str, columns: TelemetryColumns, latest_ms: int) -> bool:
        """The usual case, checked per distinct point instead of per reading."""
        if not (min(columns.ts_ms) >= EARLIEST_MS and max(columns.ts_ms) <= latest_ms):
            return False
        known = self.points.points
        for point_id in set(columns.point_ids):
            info = known.get(point_id)
            if info is None or info.gateway_uuid != gateway_uuid or info.is_virtual:
                return False
        return True

    def _check(self, gateway_uuid: str, columns: TelemetryColumns, latest_ms: int) -> list[dict[str, str]]:
        """Every reason, reading by reading, for a message that is refused."""
        errors: list[dict[str, str]] = []
        known = self.points.points
        for index, (point_id, stamp) in enumerate(zip(columns.point_ids, columns.ts_ms, strict=True)):
            if not EARLIEST_MS <= stamp <= latest_ms:
                errors.append(
                    {
                        "field": f"readings.{index}.ts",
                        "message": "time before 2000 or more than a day ahead (epoch seconds sent as milliseconds?)",
                    }
                )
            info = known.get(point_id)
            if info is None:
                errors.append({"field": f"readings.{index}.point_id", "message": f"unknown point {point_id}"})
            elif info.gateway_uuid != gateway_uuid:
                errors.append(
                    {
                        "field": f"readings.{index}.point_id",
                        "message": f"point {point_id} does not belong to gateway {gateway_uuid}",
                    }
                )
            elif info.is_virtual:
                errors.append(
                    {"field": f"readings.{index}.point_id", "message": f"point {point_id} is virtual"}
                )
        return errors

    async def _announce_seen(self, seen_at: dict[str, int], status: str | None = None) -> None:
        """Tell the registry which gateways were heard from (each at most every SEEN_EVERY_S), all at once:
        with a thousand gateways in one batch, waiting for each acknowledgement in turn would stall ingestion."""
        now = time.monotonic()
        notices = []
        for gateway_uuid, last_ms in seen_at.items():
            if status is None and now - self._seen_sent.get(gateway_uuid, 0.0) < SEEN_EVERY_S:
                continue
            self._seen_sent[gateway_uuid] = now
            notices.append(GatewaySeen(gateway_uuid=gateway_uuid, last_seen_ms=last_ms, status=status))
        await asyncio.gather(*(self.ctx.mqtt.publish(topics.GATEWAYS_SEEN, notice) for notice in notices))

    async def on_status(self, deliveries: list[Delivery[GatewayStatus]]) -> None:
        """Online/offline from the retained status topic (the controller's last will says offline)."""
        await self.points.refresh_if_missing(set(), {topics.gateway_of(d.topic) for d in deliveries})
        for delivery in deliveries:
            gateway_uuid = topics.gateway_of(delivery.topic)
            if gateway_uuid not in self.points.gateways:
                delivery.reject(f"unknown gateway {gateway_uuid}")
                continue
            at = datetime.fromtimestamp(delivery.received_at, UTC)
            async with self.ctx.db.acquire() as conn, conn.transaction():
                previous = await conn.fetchval(
                    "SELECT status FROM gateway_state WHERE gateway_uuid = $1 FOR UPDATE", gateway_uuid
                )
                changed = previous != delivery.model.status
                await conn.execute(
                    "INSERT INTO gateway_state (gateway_uuid, status, status_changed_at, last_seen_at)"
                    " VALUES ($1, $2, $3, $3) ON CONFLICT (gateway_uuid) DO UPDATE SET status = EXCLUDED.status,"
                    " status_changed_at = CASE WHEN $4 THEN EXCLUDED.status_changed_at"
                    " ELSE gateway_state.status_changed_at END,"
                    " last_seen_at = CASE WHEN EXCLUDED.status = 'online' THEN EXCLUDED.last_seen_at"
                    " ELSE gateway_state.last_seen_at END",
                    gateway_uuid, delivery.model.status, at, changed,
                )  # fmt: skip
                if changed:
                    await conn.execute(
                        "INSERT INTO gateway_status_history (gateway_uuid, at, status) VALUES ($1, $2, $3)"
                        " ON CONFLICT DO NOTHING",
                        gateway_uuid, at, delivery.model.status,
                    )  # fmt: skip
            await self._announce_seen({gateway_uuid: int(delivery.received_at * 1000)}, delivery.model.status)

    async def on_health(self, deliveries: list[Delivery[Health]]) -> None:
        """The controller's health report: kept as the latest, and in the history."""
        await self.points.refresh_if_missing(set(), {topics.gateway_of(d.topic) for d in deliveries})
        rows = []
        for delivery in deliveries:
            gateway_uuid = topics.gateway_of(delivery.topic)
            if gateway_uuid not in self.points.gateways:
                delivery.reject(f"unknown gateway {gateway_uuid}")
                continue
            report = delivery.model.model_dump(mode="json", exclude_none=True)
            rows.append((gateway_uuid, datetime.fromtimestamp(delivery.received_at, UTC), report))
        if not rows:
            return
        async with self.ctx.db.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO gateway_health_history (gateway_uuid, received_at, report) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                rows,
            )
            await conn.executemany(
                "INSERT INTO gateway_state (gateway_uuid, last_seen_at, health, health_at) VALUES ($1, $2, $3, $2)"
                " ON CONFLICT (gateway_uuid) DO UPDATE SET"
                " last_seen_at = GREATEST(gateway_state.last_seen_at, EXCLUDED.last_seen_at),"
                " health = CASE WHEN gateway_state.health_at IS NULL OR EXCLUDED.health_at >= gateway_state.health_at"
                " THEN EXCLUDED.health ELSE gateway_state.health END,"
                " health_at = GREATEST(gateway_state.health_at, EXCLUDED.health_at)",
                rows,
            )
        await self._announce_seen({uuid: int(at.timestamp() * 1000) for uuid, at, _ in rows})
