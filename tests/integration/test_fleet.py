"""Fleet health: controllers report health and status over MQTT; the fleet view shows seed 000's columns."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

import orjson
import pytest

from proto_schemas import topics
from tests.support import Platform, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

FLEET_COLUMNS = {
    "instance", "serial", "is_online", "online_status_changed", "seconds_online_last_day", "last_reboot",
    "sw_version", "types_version", "init_phase", "cpu_temp_c", "mem_available_mb", "unpublished_messages",
    "last_message_at", "db_status", "ping_ms",
}  # fmt: skip


async def test_health_and_status_reach_the_fleet_view(platform: Platform) -> None:
    site = await build_site(platform.api, f"fleet-{uuid.uuid4().hex[:6]}")
    health: dict[str, Any] = {
        "ts": "2026-11-22T10:00:00Z", "serial": f"SN-{uuid.uuid4().hex[:8]}", "sw_version": "10.41",
        "types_version": "1.5", "init_phase": "4", "last_reboot": "2026-11-21T06:41:28Z", "cpu_temp_c": 58.5,
        "mem_available_mb": 383, "unpublished_messages": 0, "db_status": "0", "ping_ms": 42.0,
        "last_message_at": "2026-11-22T09:59:59Z",
    }  # fmt: skip
    async with platform.mqtt() as client:
        await client.publish(
            platform.topic(topics.gateway_topic(site.gateway_uuid, "status")), b"online", qos=1, retain=True
        )
        await client.publish(
            platform.topic(topics.gateway_topic(site.gateway_uuid, "health")), orjson.dumps(health), qos=1
        )

    async def row() -> dict[str, Any] | None:
        rows = (
            await platform.api.get("/fleet", params={"q": site.gateway_uuid[:0] or health["serial"]})
        ).json()
        return rows[0] if rows else None

    found = await eventually(
        row, lambda r: r is not None and r["is_online"] and r["serial"] == health["serial"]
    )
    assert found is not None
    assert set(found) >= FLEET_COLUMNS
    assert (found["sw_version"], found["cpu_temp_c"], found["mem_available_mb"]) == ("10.41", 58.5, 383)
    assert found["gateway_id"] == site.gateway_id and found["online_status_changed"] is not None
    assert 0 <= found["seconds_online_last_day"] <= 5

    # The last will: offline.
    async with platform.mqtt() as client:
        await client.publish(
            platform.topic(topics.gateway_topic(site.gateway_uuid, "status")), b"offline", qos=1, retain=True
        )
        await client.publish(
            platform.topic(topics.gateway_topic(site.gateway_uuid, "status")), b"", qos=1, retain=True
        )
    await eventually(row, lambda r: r is not None and not r["is_online"])

    history = (await platform.api.get(f"/fleet/{site.gateway_id}/history")).json()
    assert [s["status"] for s in history["status"]] == ["online", "offline"]
    assert history["health"][0]["sw_version"] == "10.41"

    exported = await platform.api.get("/fleet", params={"format": "csv", "q": health["serial"]})
    assert exported.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(lines) == 1 and lines[0]["serial"] == health["serial"]


async def test_fleet_lists_are_sorted_filtered_and_validated(platform: Platform) -> None:
    await build_site(platform.api, f"fleet-sort-{uuid.uuid4().hex[:6]}")
    answer = await platform.api.get("/fleet", params={"sort": "gateway_id", "order": "desc", "limit": 5})
    assert answer.status_code == 200
    ids = [r["gateway_id"] for r in answer.json()]
    assert ids == sorted(ids, reverse=True)
    assert int(answer.headers["x-total-count"]) >= len(ids)
    bad = await platform.api.get("/fleet", params={"sort": "password"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "sort"
    assert (await platform.api.get("/fleet/987654321/history")).status_code == 404


async def test_health_from_an_unknown_gateway_is_dead_lettered(platform: Platform) -> None:
    stranger = str(uuid.uuid4())
    async with platform.mqtt() as client:
        await client.subscribe(platform.topic(topics.dead_letter("ingestion")), qos=1)
        await client.publish(
            platform.topic(topics.gateway_topic(stranger, "health")), b'{"sw_version": "1"}', qos=1
        )
        await client.publish(
            platform.topic(topics.gateway_topic(stranger, "health")), b'{"cpu_temp_c": "hot"}', qos=1
        )
        reasons = []
        async for message in client.messages:
            letter = orjson.loads(message.payload)
            if stranger in letter["topic"]:
                reasons.append(letter["reason"])
            if len(reasons) == 2:
                break
    assert sorted(reasons) == sorted([f"unknown gateway {stranger}", "invalid Health"])
