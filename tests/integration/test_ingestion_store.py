"""Ingestion stores each (point, time) once, keeps the first value it stored, and passes on only what is new,
also when a message mixes stored and new readings or repeats a reading within itself."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from proto_schemas import topics
from tests.support import Platform, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

START_MS = 1_780_000_000_000  # 2026-05-28
MINUTE_MS = 60_000


async def test_a_message_of_stored_new_and_repeated_readings_stores_and_passes_on_only_the_new(
    platform: Platform,
) -> None:
    site = await build_site(platform.api, f"store-{uuid.uuid4().hex[:6]}", timezone="UTC")
    point = site.points["main"]
    table = f'"{platform.schema("ingestion")}".raw_readings'

    def reading(minute: int, value: float) -> dict[str, object]:
        return {"point_id": point, "ts": START_MS + minute * MINUTE_MS, "value": value}

    async with platform.mqtt() as client:
        await platform.publish_telemetry(client, site.gateway_uuid, [reading(m, 10.0 + m) for m in range(5)])
        await eventually(lambda: platform.count_raw([point]), lambda n: n == 5)

        passed_on: list[tuple[int, float]] = []
        await client.subscribe(platform.topic(topics.READINGS_RAW), qos=1)

        async def collect() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                batch = orjson.loads(message.payload)
                passed_on.extend(
                    (ts, value)
                    for pid, ts, value in zip(
                        batch["point_ids"], batch["ts_ms"], batch["values"], strict=True
                    )
                    if pid == point
                )

        collector = asyncio.create_task(collect())
        try:
            mixed = [
                reading(3, 999.0),
                reading(4, 999.0),
                reading(5, 15.0),
                reading(5, 555.0),
                reading(6, 16.0),
            ]
            await platform.publish_telemetry(client, site.gateway_uuid, mixed)
            await eventually(lambda: platform.count_raw([point]), lambda n: n == 7)
            await eventually(lambda: asyncio.sleep(0, len(passed_on)), lambda n: n >= 2)
            await asyncio.sleep(1.0)  # anything passed on twice would arrive by now
        finally:
            collector.cancel()

    rows = await platform.db.fetch(
        f"SELECT (extract(epoch FROM ts) * 1000)::bigint AS ts, value FROM {table} WHERE point_id = $1 ORDER BY ts",
        point,
    )
    stored = {(row["ts"] - START_MS) // MINUTE_MS: row["value"] for row in rows}
    # The first value stored for a time stays; within one message the first of a repeated reading wins.
    assert stored == {0: 10.0, 1: 11.0, 2: 12.0, 3: 13.0, 4: 14.0, 5: 15.0, 6: 16.0}
    assert sorted(passed_on) == [(START_MS + 5 * MINUTE_MS, 15.0), (START_MS + 6 * MINUTE_MS, 16.0)]
