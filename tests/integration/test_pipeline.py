"""End to end: telemetry published over MQTT comes back as energy in the gateway's report."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support import Platform, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def report(
    platform: Platform, meter_id: int, period: str, start: str, end: str, **extra: str
) -> dict[str, Any]:
    answer = await platform.api.get(
        "/reports/meterenergy",
        params={
            "meterid": meter_id,
            "periodtype": period,
            "reportingperiodstartdatetime": start,
            "reportingperiodenddatetime": end,
            **extra,
        },
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def test_hourly_energy_from_cumulative_readings_reaches_the_report(platform: Platform) -> None:
    site = await build_site(platform.api, f"hourly-{uuid.uuid4().hex[:6]}", ratio=0.5)
    start = datetime(2026, 6, 1, 8, tzinfo=UTC)
    # A register read every 5 minutes, rising 2 raw units (1 kWh after the 0.5 ratio) each time.
    readings = [
        {
            "point_id": site.points["main"],
            "ts": (start + timedelta(minutes=5 * i)).isoformat(),
            "value": 1000 + 2 * i,
        }
        for i in range(37)
    ]
    async with platform.mqtt() as client:
        # The later half first: the earlier half then arrives late and must be folded in, not lost.
        await platform.publish_telemetry(client, site.gateway_uuid, readings[18:])
        await platform.publish_telemetry(client, site.gateway_uuid, readings[:19])

    result = await eventually(
        lambda: report(platform, site.meters["main"], "hourly", "2026-06-01T10:00:00", "2026-06-01T13:00:00"),
        lambda r: [round(v, 9) for v in r["reporting_period"]["values"]] == [12.0, 12.0, 12.0],
    )
    period = result["reporting_period"]
    assert period["timestamps"] == [
        "2026-06-01T10:00:00+02:00",
        "2026-06-01T11:00:00+02:00",
        "2026-06-01T12:00:00+02:00",
    ]
    assert period["qualities"] == ["good", "good", "good"]
    assert round(period["total_in_category"], 9) == 36.0
    assert result["meter"]["unit_of_measure"] == "kWh"


async def test_daily_report_counts_25_hours_on_the_autumn_change(platform: Platform) -> None:
    site = await build_site(platform.api, f"dst-{uuid.uuid4().hex[:6]}")
    local_midnight = datetime(2026, 10, 24, 22, tzinfo=UTC)  # 2026-10-25T00:00+02:00
    readings = [
        {"point_id": site.points["main"], "ts": ms(local_midnight + timedelta(hours=h)), "value": 500.0 + h}
        for h in range(26)  # until 2026-10-26T00:00+01:00: 25 hours later
    ]
    async with platform.mqtt() as client:
        await platform.publish_telemetry(client, site.gateway_uuid, readings)

    result = await eventually(
        lambda: report(platform, site.meters["main"], "daily", "2026-10-24T00:00:00", "2026-10-27T00:00:00"),
        lambda r: r["reporting_period"]["values"][1:2] == [25.0],
    )
    period = result["reporting_period"]
    assert period["values"] == [0.0, 25.0, 0.0]
    assert period["qualities"] == ["missing", "good", "missing"]
    assert period["timestamps"][1] == "2026-10-25T00:00:00+02:00"


async def test_base_period_is_compared_with_the_reporting_period(platform: Platform) -> None:
    site = await build_site(platform.api, f"base-{uuid.uuid4().hex[:6]}", timezone="UTC")
    day1, day2 = datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 5, 2, tzinfo=UTC)
    readings = [
        {"point_id": site.points["main"], "ts": ms(day1 + timedelta(hours=h)), "value": 10.0 * h}
        for h in range(25)
    ]
    readings += [
        {
            "point_id": site.points["main"],
            "ts": ms(day2 + timedelta(hours=h, minutes=30)),
            "value": 240.0 + 15.0 * (h + 1),
        }
        for h in range(23)
    ]
    async with platform.mqtt() as client:
        await platform.publish_telemetry(client, site.gateway_uuid, readings)
    params = {
        "baseperiodstartdatetime": "2026-05-01T00:00:00",
        "baseperiodenddatetime": "2026-05-02T00:00:00",
    }
    result = await eventually(
        lambda: report(
            platform, site.meters["main"], "daily", "2026-05-02T00:00:00", "2026-05-03T00:00:00", **params
        ),
        lambda r: round(r["reporting_period"]["total_in_category"], 6) == 345.0,
    )
    assert round(result["base_period"]["total_in_category"], 6) == 240.0
    assert round(result["reporting_period"]["increment_rate"], 6) == round((345.0 - 240.0) / 240.0, 6)


async def test_replaying_the_same_telemetry_changes_nothing(platform: Platform) -> None:
    site = await build_site(platform.api, f"replay-{uuid.uuid4().hex[:6]}", timezone="UTC")
    start = datetime(2026, 7, 1, tzinfo=UTC)
    readings = [
        {"point_id": site.points["main"], "ts": ms(start + timedelta(minutes=15 * i)), "value": 3.0 * i}
        for i in range(9)
    ]
    async with platform.mqtt() as client:
        await platform.publish_telemetry(client, site.gateway_uuid, readings, msg_id="replay-1")
    expected = {"2026-07-01T00:00:00+00:00": 12.0, "2026-07-01T01:00:00+00:00": 12.0}
    await eventually(lambda: platform.meter_hourly(site.meters["main"]), lambda h: h == expected)
    async with platform.mqtt() as client:
        for _ in range(3):
            await platform.publish_telemetry(client, site.gateway_uuid, readings, msg_id="replay-1")
        await platform.publish_telemetry(client, site.gateway_uuid, readings[3:6])
        # A marker reading after the replays: once it is in, the replays have been processed too.
        marker = {
            "point_id": site.points["main"],
            "ts": ms(start + timedelta(hours=2, minutes=15)),
            "value": 27.0,
        }
        await platform.publish_telemetry(client, site.gateway_uuid, [marker])
    expected["2026-07-01T02:00:00+00:00"] = 3.0
    hourly = await eventually(lambda: platform.meter_hourly(site.meters["main"]), lambda h: len(h) == 3)
    assert hourly == expected
    assert await platform.count_raw([site.points["main"]]) == 10
