"""End to end over MQTT: named normalisation scenarios, from telemetry to `meter_energy_hourly`.

Each test builds its own site through the API, publishes readings as a gateway would, and reads the hourly
energy aggregation stores. The numbers are worked out by hand next to each test (the pure-level twins with
more detail are in tests/unit/test_normalisation_scenarios.py).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from proto_schemas.quality import Quality
from tests.support import Platform, Site, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

G, E, RS, RO, S = (
    int(q) for q in (Quality.GOOD, Quality.ESTIMATED, Quality.RESET, Quality.ROLLOVER, Quality.SUSPECT)
)
M = int(Quality.MANUAL)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def iso(moment: datetime) -> str:
    return moment.isoformat()


async def hourly(platform: Platform, meter_id: int) -> dict[str, tuple[float, int]]:
    """{hour (ISO, UTC): (energy rounded to 9 places, quality code)} of a meter."""
    rows = await platform.db.fetch(
        f'SELECT hour, energy, quality FROM "{platform.schema("aggregation")}".meter_energy_hourly'
        " WHERE meter_id = $1 ORDER BY hour",
        meter_id,
    )
    return {
        row["hour"].astimezone(UTC).isoformat(): (round(row["energy"], 9), row["quality"]) for row in rows
    }


def internal(platform: Platform) -> httpx.AsyncClient:
    """A client for the normalisation service's internal routes, as the gateway or a sibling calls them."""
    return httpx.AsyncClient(
        base_url=platform.processes.url("normalisation"),
        headers={"X-Gridfleet-Internal": platform.settings.internal_token},
        timeout=30,
    )


async def known_to_ingestion() -> None:
    """Give ingestion's point cache time to learn a brand-new point.

    Ingestion reloads its points on a registry change event, and on an unknown point when its last load is
    over a second old; a message naming a point it has not learnt yet is refused. Past that second, the
    first message reloads if need be.
    """
    await asyncio.sleep(1.5)


async def energy_site(platform: Platform, name: str, **point_fields: Any) -> Site:
    """A site (UTC) with one ENERGY_VALUE point `main` carrying `point_fields`, metered by one meter."""
    site = await build_site(platform.api, f"{name}-{uuid.uuid4().hex[:6]}", timezone="UTC", energy_points=())

    async def post(path: str, data: dict[str, Any]) -> dict[str, Any]:
        answer = await platform.api.post(path, json={"data": data})
        assert answer.status_code == 201, f"POST {path}: {answer.status_code} {answer.text}"
        return dict(answer.json())

    point = await post(
        "/points",
        {
            "name": "main",
            "data_source_id": site.datasource_id,
            "object_type": "ENERGY_VALUE",
            "units": "kWh",
            **point_fields,
        },
    )
    categories = (await platform.api.get("/energycategories")).json()
    category_id = next(c["id"] for c in categories if c["name"] == "Electricity")
    meter = await post(
        "/meters", {"name": f"{name} meter {uuid.uuid4().hex[:6]}", "energy_category_id": category_id}
    )
    await post(f"/meters/{meter['id']}/points", {"point_id": point["id"]})
    await post(f"/spaces/{site.space_id}/meters", {"meter_id": meter["id"]})
    site.points["main"], site.meters["main"] = point["id"], meter["id"]
    await known_to_ingestion()
    return site


async def publish(platform: Platform, site: Site, batches: list[list[tuple[datetime, float]]]) -> None:
    async with platform.mqtt() as client:
        for batch in batches:
            readings = [{"point_id": site.points["main"], "ts": ms(t), "value": v} for t, v in batch]
            await platform.publish_telemetry(client, site.gateway_uuid, readings)


def quarter_hour_series(start: datetime) -> list[tuple[datetime, float]]:
    """Readings every 15 minutes for 3 days; hour h consumes (h mod 5) + 1 kWh, a quarter in each quarter."""
    readings, value = [], 500.0
    for k in range(3 * 24 * 4 + 1):
        readings.append((start + timedelta(minutes=15 * k), value))
        value += ((k // 4) % 5 + 1) / 4
    return readings


async def test_readings_two_days_late_and_out_of_order_give_the_in_order_hours(platform: Platform) -> None:
    start = datetime(2026, 4, 6, tzinfo=UTC)
    readings = quarter_hour_series(start)
    expected = {iso(start + timedelta(hours=h)): float(h % 5 + 1) for h in range(72)}

    in_order = await energy_site(platform, "late-ref")
    await publish(platform, in_order, [readings[i : i + 50] for i in range(0, len(readings), 50)])

    late = await energy_site(platform, "late")
    old = readings[:192]  # days 1 and 2
    random.Random(11).shuffle(old)
    batches = [readings[192:]] + [old[i : i + 20] for i in range(0, len(old), 20)]  # day 3 first
    await publish(platform, late, batches)

    def energies(hours: dict[str, tuple[float, int]]) -> dict[str, float]:
        return {hour: energy for hour, (energy, _) in hours.items()}

    reference = await eventually(
        lambda: hourly(platform, in_order.meters["main"]), lambda h: energies(h) == expected, within=60
    )
    assert set(q for _, q in reference.values()) == {G}
    got = await eventually(
        lambda: hourly(platform, late.meters["main"]), lambda h: energies(h) == expected, within=60
    )
    assert energies(got) == energies(reference)

    # Replaying every batch changes nothing: a marker reading after them shows they have been through.
    marker_time, marker_value = readings[-1][0] + timedelta(minutes=15), readings[-1][1] + 1.0
    await publish(platform, late, [*batches, [(marker_time, marker_value)]])
    marker_hour = iso(marker_time - timedelta(minutes=15))  # (23:59.., 00:15]: the 00:00 hour of day 4
    replayed = await eventually(
        lambda: hourly(platform, late.meters["main"]), lambda h: marker_hour in h, within=60
    )
    assert replayed.pop(marker_hour)[0] == 1.0
    assert energies(replayed) == expected
    assert await platform.count_raw([late.points["main"]]) == len(readings) + 1


async def test_rollover_at_2_16(platform: Platform) -> None:
    site = await energy_site(platform, "rollover")
    t = datetime(2026, 4, 1, 10, tzinfo=UTC)
    values = [65_500.0, 65_530.0, 10.0, 40.0]
    await publish(platform, site, [[(t + timedelta(minutes=15 * i), v) for i, v in enumerate(values)]])
    # 30 + ((65 536 - 65 530) + 10) + 30 = 76, across the wrap of a 16-bit register.
    result = await eventually(lambda: hourly(platform, site.meters["main"]), lambda h: len(h) == 1)
    assert result == {iso(t): (76.0, RO)}


async def test_reset_to_zero_and_meter_replaced(platform: Platform) -> None:
    site = await energy_site(platform, "reset")
    t = datetime(2026, 4, 1, 10, tzinfo=UTC)
    values = [
        12_000.0,  # 10:00
        12_010.0,  # 10:15  +10
        7_345.0,  # 10:30  replaced by a meter starting at 7 345: counts 0, RESET
        7_350.0,  # 10:45  +5
        7_355.0,  # 11:00  +5
        1.5,  # 11:15  reset to zero: the 1.5 since counts, RESET
        4.0,  # 11:30  +2.5
        6.5,  # 11:45  +2.5
        9.0,  # 12:00  +2.5
    ]
    await publish(platform, site, [[(t + timedelta(minutes=15 * i), v) for i, v in enumerate(values)]])
    result = await eventually(
        lambda: hourly(platform, site.meters["main"]), lambda h: sum(e for e, _ in h.values()) == 29.0
    )
    assert result == {iso(t): (20.0, RS), iso(t + timedelta(hours=1)): (9.0, RS)}


async def test_3_hour_gap_is_spread_over_its_hours(platform: Platform) -> None:
    site = await energy_site(platform, "gap")
    t = datetime(2026, 4, 1, 10, tzinfo=UTC)
    readings = [
        (t - timedelta(minutes=15), 97.5),
        (t, 100.0),
        (t + timedelta(hours=3), 130.0),  # 30 over 3 hours: 10 in each, estimated
        (t + timedelta(hours=3, minutes=15), 132.5),
    ]
    await publish(platform, site, [readings])
    result = await eventually(lambda: hourly(platform, site.meters["main"]), lambda h: len(h) == 5)
    assert result == {
        iso(t - timedelta(hours=1)): (2.5, G),
        iso(t): (10.0, E),
        iso(t + timedelta(hours=1)): (10.0, E),
        iso(t + timedelta(hours=2)): (10.0, E),
        iso(t + timedelta(hours=3)): (2.5, G),
    }


async def test_spike_is_held_until_confirmed(platform: Platform) -> None:
    site = await energy_site(platform, "spike", higher_limit=50.0)
    point = site.points["main"]
    t = datetime(2026, 4, 2, tzinfo=UTC)
    values = [1_000.0, 1_040.0, 2_040.0, 2_080.0]  # 1 000 kWh in the second hour, at most 50 an hour
    await publish(platform, site, [[(t + timedelta(hours=i), v) for i, v in enumerate(values)]])
    hours = [iso(t + timedelta(hours=i)) for i in range(3)]
    result = await eventually(lambda: hourly(platform, site.meters["main"]), lambda h: len(h) == 3)
    assert result == {hours[0]: (40.0, G), hours[1]: (0.0, S), hours[2]: (40.0, G)}

    async with internal(platform) as client:
        listed = (await client.get("/internal/held", params={"point_id": point})).json()
        assert len(listed) == 1
        held = listed[0]
        assert held["status"] == "held"
        assert (held["start"], held["end"]) == (hours[1], hours[2])
        assert held["energy"] == 1_000.0
        assert "at most 50 per hour" in held["reason"]
        metrics = (await client.get("/metrics")).text
        assert 'gridfleet_normalisation_held_intervals_total{event="held"}' in metrics

        answer = await client.post(f"/internal/held/{held['id']}/confirm")
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "confirmed"
        result = await eventually(
            lambda: hourly(platform, site.meters["main"]), lambda h: h[hours[1]][0] == 1_000.0
        )
        # Its energy is now counted, MANUAL: the confirmation withdrew the SUSPECT interval.
        assert result == {hours[0]: (40.0, G), hours[1]: (1_000.0, M), hours[2]: (40.0, G)}

        again = await client.post(f"/internal/held/{held['id']}/confirm")
        assert again.status_code == 200 and again.json()["status"] == "confirmed"
        assert (await client.post(f"/internal/held/{held['id']}/reject")).status_code == 409
        assert (await client.post("/internal/held/999999999/confirm")).status_code == 404
        assert (await client.post("/internal/held/0/confirm")).status_code == 400
        async with httpx.AsyncClient(base_url=platform.processes.url("normalisation")) as outsider:
            anonymous = await outsider.post(f"/internal/held/{held['id']}/confirm")
        assert anonymous.status_code == 401

    # A marker in a later hour: once it is in, a second confirmation would have arrived too.
    await publish(platform, site, [[(t + timedelta(hours=4), 2_120.0)]])
    result = await eventually(lambda: hourly(platform, site.meters["main"]), lambda h: len(h) == 4)
    assert result[hours[1]] == (1_000.0, M)


async def test_a_late_reading_supersedes_a_held_spike(platform: Platform) -> None:
    site = await energy_site(platform, "supersede", higher_limit=100.0)
    t = datetime(2026, 4, 2, tzinfo=UTC)
    # 150 kWh in half an hour: more than the 100 an interval may carry (one hour's worth): held.
    await publish(platform, site, [[(t, 1_000.0), (t + timedelta(minutes=30), 1_150.0)]])
    await eventually(lambda: hourly(platform, site.meters["main"]), lambda h: h == {iso(t): (0.0, S)})
    async with internal(platform) as client:
        (held,) = (await client.get("/internal/held", params={"point_id": site.points["main"]})).json()
        assert (held["status"], held["energy"]) == ("held", 150.0)
        # The reading at 00:15 arrives late: 75 + 75, each plausible. The held interval no longer exists.
        await publish(platform, site, [[(t + timedelta(minutes=15), 1_075.0)]])
        result = await eventually(
            lambda: hourly(platform, site.meters["main"]), lambda h: h[iso(t)][0] == 150.0
        )
        assert result == {iso(t): (150.0, G)}  # the held SUSPECT interval is withdrawn with it
        (after,) = (await client.get("/internal/held", params={"point_id": site.points["main"]})).json()
        assert after["status"] == "superseded" and after["superseded_at"] is not None
        assert (await client.post(f"/internal/held/{held['id']}/confirm")).status_code == 409


async def test_digital_value_is_stored_as_0_or_1(platform: Platform) -> None:
    site = await build_site(platform.api, f"digital-{uuid.uuid4().hex[:6]}", timezone="UTC", energy_points=())
    answer = await platform.api.post(
        "/points",
        json={"data": {"name": "door", "data_source_id": site.datasource_id, "object_type": "DIGITAL_VALUE"}},
    )
    assert answer.status_code == 201, answer.text
    point = answer.json()["id"]
    t = datetime(2026, 4, 3, tzinfo=UTC)
    readings = [
        {"point_id": point, "ts": ms(t + timedelta(minutes=i)), "value": v}
        for i, v in enumerate([0.0, 1.0, 5.0, -1.0])
    ]

    async def stored() -> list[tuple[float, int]]:
        rows = await platform.db.fetch(
            f'SELECT value, quality FROM "{platform.schema("normalisation")}".readings'
            " WHERE point_id = $1 ORDER BY ts",
            point,
        )
        return [(row["value"], row["quality"]) for row in rows]

    await known_to_ingestion()
    async with platform.mqtt() as client:
        await platform.publish_telemetry(client, site.gateway_uuid, readings)
    result = await eventually(stored, lambda rows: len(rows) == 4)
    assert result == [(0.0, G), (1.0, G), (1.0, S), (1.0, S)]
