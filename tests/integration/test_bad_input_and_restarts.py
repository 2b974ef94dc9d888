"""Bad telemetry is parked with a reason, and readings survive a service killed while they flow."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from proto_schemas import topics
from tests.support import Platform, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_bad_messages_go_to_the_dead_letter_topic_and_the_next_good_one_is_stored(
    platform: Platform,
) -> None:
    site = await build_site(platform.api, f"dl-{uuid.uuid4().hex[:6]}", timezone="UTC")
    other = await build_site(platform.api, f"dl-other-{uuid.uuid4().hex[:6]}", timezone="UTC")
    point = site.points["main"]
    telemetry = platform.topic(topics.gateway_topic(site.gateway_uuid, "telemetry"))
    ts = "2026-08-01T10:00:00Z"
    bad = {
        "malformed": b'{"readings": [{"point_id": 1, "ts": ',
        "unknown point": orjson.dumps({"readings": [{"point_id": 2_000_000_000, "ts": ts, "value": 1.0}]}),
        "wrong type": orjson.dumps({"readings": [{"point_id": point, "ts": ts, "value": "lots"}]}),
        "naive time": orjson.dumps(
            {"readings": [{"point_id": point, "ts": "2026-08-01T10:00:00", "value": 1.0}]}
        ),
        "foreign point": orjson.dumps(
            {"readings": [{"point_id": other.points["main"], "ts": ts, "value": 1.0}]}
        ),
        "half good": orjson.dumps(
            {
                "readings": [
                    {"point_id": point, "ts": ts, "value": 1.0},
                    {"point_id": 2_000_000_001, "ts": ts, "value": 2.0},
                ]
            }
        ),
    }
    letters: list[dict[str, object]] = []
    async with platform.mqtt() as client:
        await client.subscribe(platform.topic(topics.dead_letter("ingestion")), qos=1)

        async def collect() -> None:
            async for message in client.messages:
                letters.append(orjson.loads(message.payload))

        collector = asyncio.create_task(collect())
        for payload in bad.values():
            await client.publish(telemetry, payload, qos=1)
        good = {"readings": [{"point_id": point, "ts": "2026-08-01T11:00:00+00:00", "value": 5.0}]}
        await client.publish(telemetry, orjson.dumps(good), qos=1)
        await eventually(lambda: asyncio.sleep(0, len(letters)), lambda n: n >= len(bad), within=20)
        collector.cancel()

    reasons = {str(letter["reason"]) for letter in letters}
    fields = [error["field"] for letter in letters for error in letter["errors"]]  # type: ignore[attr-defined]
    assert all(letter["topic"] == topics.gateway_topic(site.gateway_uuid, "telemetry") for letter in letters)
    assert "invalid Telemetry" in reasons
    assert any("refused" in reason for reason in reasons)
    assert "readings.0.value" in fields  # the wrong type names the field
    assert "readings.0.ts" in fields  # the naive time too
    messages = " ".join(error["message"] for letter in letters for error in letter["errors"])  # type: ignore[attr-defined]
    assert "unknown point 2000000000" in messages
    assert f"does not belong to gateway {site.gateway_uuid}" in messages
    # The good message is stored; nothing of the half-good one is.
    await eventually(lambda: platform.count_raw([point]), lambda n: n == 1)
    stored = await platform.db.fetchval(
        f'SELECT value FROM "{platform.schema("ingestion")}".raw_readings WHERE point_id = $1', point
    )
    assert stored == 5.0
    assert not platform.processes.crashed()


@pytest.mark.parametrize("victim", ["ingestion", "normalisation", "aggregation"])
async def test_killing_a_service_while_telemetry_flows_loses_no_reading(
    platform: Platform, victim: str
) -> None:
    site = await build_site(platform.api, f"kill-{victim}-{uuid.uuid4().hex[:6]}", timezone="UTC")
    point = site.points["main"]
    start = datetime(2026, 9, 1, tzinfo=UTC)
    messages, per_message = 240, 25
    sent = 0

    async def publish_all() -> None:
        nonlocal sent
        async with platform.mqtt(identifier=f"gf-test-pub-{uuid.uuid4().hex[:8]}") as client:
            for m in range(messages):
                readings = [
                    {"point_id": point, "ts": int((start + timedelta(seconds=60 * (m * per_message + i))).timestamp() * 1000),
                     "value": float(m * per_message + i)}
                    for i in range(per_message)
                ]  # fmt: skip
                await platform.publish_telemetry(client, site.gateway_uuid, readings)
                sent += 1
                await asyncio.sleep(0.01)

    publisher = asyncio.create_task(publish_all())
    await eventually(lambda: asyncio.sleep(0, sent), lambda n: n >= messages // 3, within=30, every=0.02)
    await asyncio.to_thread(platform.processes.kill, victim)  # SIGKILL: nothing flushed or acknowledged
    await asyncio.sleep(1.0)
    await asyncio.to_thread(platform.processes.restart, victim)
    await publisher

    total = messages * per_message
    await eventually(lambda: platform.count_raw([point]), lambda n: n == total, within=60)
    # One reading a minute, each 1 unit more: every full hour holds 60 units, the last hour what is left.
    expected_energy = float(total - 1)
    hourly = await eventually(
        lambda: platform.meter_hourly(site.meters["main"]),
        lambda h: round(sum(h.values()), 6) == expected_energy,
        within=60,
    )
    assert all(round(value, 6) == 60.0 for value in list(dict(sorted(hourly.items())).values())[:-1])
