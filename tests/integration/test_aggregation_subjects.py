"""End to end over MQTT: the subject read route (energy, cost, kgce, kgco2e per period, category and item),
subjects rolled up from their counted meters, and a bucket's quality improving after a late correction.

Every expected figure is worked out by hand from the readings published.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from proto_schemas.quality import Quality
from tests.support import Platform, Site, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUARTER = timedelta(minutes=15)
KGCE, KGCO2E = 0.1229, 0.8825  # the seeded Electricity factors


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def internal(platform: Platform) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=platform.processes.url("aggregation"),
        headers={"X-Gridfleet-Internal": platform.settings.internal_token},
        timeout=30,
    )


async def subject(
    platform: Platform, kind: str, ident: int, rollup: str, start: str, end: str
) -> dict[str, Any]:
    async with internal(platform) as client:
        answer = await client.get(
            f"/internal/subjects/{kind}/{ident}/{rollup}", params={"start": start, "end": end}
        )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def settled(body: dict[str, Any]) -> bool:
    return not body["stale"] and not body["rebuilding"]


async def until(
    platform: Platform,
    kind: str,
    ident: int,
    rollup: str,
    start: str,
    end: str,
    accept: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """The subject's rows once settled and accepted."""

    async def probe() -> dict[str, Any]:
        return await subject(platform, kind, ident, rollup, start, end)

    return await eventually(probe, lambda b: settled(b) and accept(b))


async def post(platform: Platform, path: str, data: dict[str, Any]) -> dict[str, Any]:
    answer = await platform.api.post(path, json={"data": data})
    assert answer.status_code == 201, f"POST {path}: {answer.status_code} {answer.text}"
    return dict(answer.json())


async def publish(platform: Platform, site: Site, point: str, readings: list[tuple[datetime, float]]) -> None:
    async with platform.mqtt() as client:
        await platform.publish_telemetry(
            client,
            site.gateway_uuid,
            [{"point_id": site.points[point], "ts": ms(t), "value": v} for t, v in readings],
        )


def steady(
    start: datetime, quarters: int, per_quarter: float, first: float = 1000.0
) -> list[tuple[datetime, float]]:
    """A reading every 15 minutes from ``start``: ``per_quarter`` kWh in each of ``quarters`` quarters."""
    return [(start + k * QUARTER, first + k * per_quarter) for k in range(quarters + 1)]


async def test_meter_rows_carry_energy_carbon_and_coal_equivalent_in_local_time(platform: Platform) -> None:
    site = await build_site(platform.api, unique("subject-meter"), timezone="Europe/Brussels")
    meter = site.meters["main"]
    await asyncio.sleep(1.5)  # ingestion learns the new point
    # 1 kWh per quarter from 10:00Z to 12:00Z on 1 June (12:00-14:00 in Brussels, +02:00): 8 kWh.
    await publish(platform, site, "main", steady(datetime(2026, 6, 1, 10, tzinfo=UTC), 8, 1.0))

    daily = await eventually(
        lambda: subject(platform, "meter", meter, "daily", "2026-06-01", "2026-06-02"),
        lambda b: settled(b) and len(b["rows"]) == 1 and round(b["rows"][0]["energy"], 9) == 8.0,
    )
    assert daily["kind"] == "meter" and daily["id"] == meter and daily["timezone"] == "Europe/Brussels"
    [row] = daily["rows"]
    assert row["start"] == "2026-06-01" and row["cost"] is None and row["hours"] == 2
    assert row["quality"] == Quality.GOOD and row["energy_item_id"] is None
    assert row["kgce"] == pytest.approx(8 * KGCE) and row["kgco2e"] == pytest.approx(8 * KGCO2E)

    hourly = await subject(
        platform, "meter", meter, "hourly", "2026-06-01T12:00:00+02:00", "2026-06-01T14:00:00+02:00"
    )
    assert [(r["start"], round(r["energy"], 9), r["hours"]) for r in hourly["rows"]] == [
        ("2026-06-01T12:00:00+02:00", 4.0, 1),
        ("2026-06-01T13:00:00+02:00", 4.0, 1),
    ]
    monthly = await subject(platform, "meter", meter, "monthly", "2026-06-01", "2026-07-01")
    assert [(r["start"], round(r["energy"], 9)) for r in monthly["rows"]] == [("2026-06-01", 8.0)]
    yearly = await subject(platform, "meter", meter, "yearly", "2026-01-01", "2027-01-01")
    assert [(r["start"], round(r["energy"], 9)) for r in yearly["rows"]] == [("2026-01-01", 8.0)]

    async with internal(platform) as client:
        missing = await client.get(
            "/internal/subjects/meter/987654/daily", params={"start": "2026-06-01", "end": "2026-06-02"}
        )
        assert missing.status_code == 404
        bad = await client.get(
            f"/internal/subjects/meter/{meter}/daily", params={"start": "June", "end": "2026-06-02"}
        )
        assert bad.status_code == 400 and "start" in bad.text
        naive = await client.get(
            f"/internal/subjects/meter/{meter}/hourly",
            params={"start": "2026-06-01T12:00:00", "end": "2026-06-01T14:00:00"},
        )
        assert naive.status_code == 400 and "start" in naive.text
        kind = await client.get(
            "/internal/subjects/planet/1/daily", params={"start": "2026-06-01", "end": "2026-06-02"}
        )
        assert kind.status_code in (400, 422)
        far = await client.get(
            f"/internal/subjects/meter/{meter}/hourly",
            params={"start": "9999-12-31T23:00:00+00:00", "end": "9999-12-31T23:30:00+00:00"},
        )
        assert far.status_code == 400 and "start" in far.text


async def test_an_estimated_gap_filled_later_by_real_readings_becomes_good(platform: Platform) -> None:
    site = await build_site(platform.api, unique("refill"), timezone="UTC")
    meter = site.meters["main"]
    await asyncio.sleep(1.5)
    t = datetime(2026, 5, 1, 10, tzinfo=UTC)
    # 2.5 kWh per quarter throughout; first only 10:00, 10:15 and 13:15 arrive: 10:15-13:15 is a 3-hour gap
    # whose 30 kWh are spread evenly (estimated).
    series = steady(t, 13, 2.5, first=100.0)
    await publish(platform, site, "main", [series[0], series[1], series[13]])

    def hours(body: dict[str, Any]) -> list[tuple[str, float, int]]:
        return [(r["start"], round(r["energy"], 9), r["quality"]) for r in body["rows"]]

    window = ("2026-05-01T10:00:00+00:00", "2026-05-01T14:00:00+00:00")
    E, G = Quality.ESTIMATED, Quality.GOOD
    gap = await eventually(
        lambda: subject(platform, "meter", meter, "hourly", *window),
        lambda b: sum(e for _, e, _ in hours(b)) == 32.5,
    )
    assert hours(gap) == [
        ("2026-05-01T10:00:00+00:00", 10.0, E),  # 2.5 good + 7.5 estimated
        ("2026-05-01T11:00:00+00:00", 10.0, E),
        ("2026-05-01T12:00:00+00:00", 10.0, E),
        ("2026-05-01T13:00:00+00:00", 2.5, E),
    ]
    # The readings of the gap arrive late: the estimate is withdrawn, and every quarter is good again.
    await publish(platform, site, "main", series[2:13])
    filled = await eventually(
        lambda: subject(platform, "meter", meter, "hourly", *window),
        lambda b: all(q == G for _, _, q in hours(b)),
    )
    assert hours(filled) == [
        ("2026-05-01T10:00:00+00:00", 10.0, G),
        ("2026-05-01T11:00:00+00:00", 10.0, G),
        ("2026-05-01T12:00:00+00:00", 10.0, G),
        ("2026-05-01T13:00:00+00:00", 2.5, G),
    ]
    daily = await eventually(
        lambda: subject(platform, "meter", meter, "daily", "2026-05-01", "2026-05-02"),
        lambda b: settled(b) and [r["quality"] for r in b["rows"]] == [G],
    )
    assert round(daily["rows"][0]["energy"], 9) == 32.5
    # Replaying the late readings changes nothing.
    await publish(platform, site, "main", series[2:13])
    await asyncio.sleep(2)
    assert hours(await subject(platform, "meter", meter, "hourly", *window)) == hours(filled)


# --- cost ------------------------------------------------------------------------------------------------


async def electricity(platform: Platform) -> int:
    categories = (await platform.api.get("/energycategories")).json()
    return int(next(c["id"] for c in categories if c["name"] == "Electricity"))


def day_periods(*periods: tuple[str, str, str, float]) -> list[dict[str, Any]]:
    return [
        {"start_time_of_day": s, "end_time_of_day": e, "peak_type": p, "price": price}
        for s, e, p, price in periods
    ]


async def priced_by(platform: Platform, site: Site, meter: int, tariffs: list[dict[str, Any]]) -> int:
    """Put a meter in a shopfloor (in the site's space) whose cost center has these tariffs; its id.

    Each tariff dict gets the ``id`` and ``name`` it was created with.
    """
    center = await post(platform, "/costcenters", {"name": unique("cc")})
    for tariff in tariffs:
        tariff.update(name=unique("tariff"), unit_of_price="EUR/kWh")
        created = await post(platform, "/tariffs", tariff)
        tariff["id"] = created["id"]
        await post(platform, f"/costcenters/{center['id']}/tariffs", {"tariff_id": created["id"]})
    shopfloor = await post(platform, "/shopfloors", {"name": unique("floor"), "cost_center_id": center["id"]})
    await post(platform, f"/shopfloors/{shopfloor['id']}/meters", {"meter_id": meter})
    await post(platform, f"/spaces/{site.space_id}/shopfloors", {"shopfloor_id": shopfloor["id"]})
    return int(shopfloor["id"])


def costs(body: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    return [
        (r["start"], round(r["energy"], 9), None if r["cost"] is None else round(r["cost"], 9))
        for r in body["rows"]
    ]


async def test_tou_across_midnight_a_tariff_change_on_the_15th_and_a_block_boundary_mid_hour(
    platform: Platform,
) -> None:
    site = await build_site(
        platform.api, unique("cost"), timezone="Europe/Brussels", energy_points=("tou", "change", "block")
    )
    category = await electricity(platform)
    # Time of use, off-peak 22:00-06:00 (written as two periods: they do not wrap past midnight).
    tou = await priced_by(
        platform,
        site,
        site.meters["tou"],
        [
            {
                "energy_category_id": category,
                "tariff_type": "timeofuse",
                "valid_from": "2026-01-01T00:00:00+01:00",
                "valid_through": "2026-02-01T00:00:00+01:00",
                "timeofuse": day_periods(
                    ("00:00:00", "05:59:59", "offpeak", 0.10),
                    ("06:00:00", "21:59:59", "onpeak", 0.30),
                    ("22:00:00", "23:59:59", "offpeak", 0.10),
                ),
            }
        ],
    )
    # 0.10 until local midnight starting the 15th, 0.20 from then on.
    flat = day_periods(("00:00:00", "23:59:59", "offpeak", 0.10))
    await priced_by(
        platform,
        site,
        site.meters["change"],
        [
            {
                "energy_category_id": category,
                "tariff_type": "timeofuse",
                "valid_from": "2026-01-01T00:00:00+01:00",
                "valid_through": "2026-01-15T00:00:00+01:00",
                "timeofuse": flat,
            },
            {
                "energy_category_id": category,
                "tariff_type": "timeofuse",
                "valid_from": "2026-01-15T00:00:00+01:00",
                "valid_through": "2026-02-01T00:00:00+01:00",
                "timeofuse": day_periods(("00:00:00", "23:59:59", "offpeak", 0.20)),
            },
        ],
    )
    # Blocks per calendar month: the first 10 kWh at 0.50, the rest at 0.80.
    ladder: dict[str, Any] = {}
    await priced_by(
        platform,
        site,
        site.meters["block"],
        [
            ladder := {
                "energy_category_id": category,
                "tariff_type": "block",
                "valid_from": "2026-02-01T00:00:00+01:00",
                "valid_through": "2026-03-01T00:00:00+01:00",
                "block": [
                    {"start_amount": "0", "end_amount": "10", "price": "0.50"},
                    {"start_amount": "10", "end_amount": None, "price": "0.80"},
                ],
            }
        ],
    )
    async with internal(platform) as client:
        assert (await client.post("/internal/bindings/sync")).status_code == 200
    await asyncio.sleep(1.5)

    # tou: 2 kWh a quarter from 21:00 on 9 January to 01:00 on the 10th (local, +01:00).
    await publish(platform, site, "tou", steady(datetime(2026, 1, 9, 20, tzinfo=UTC), 16, 2.0))
    # change: 1 kWh a quarter from 23:00 on the 14th to 01:00 on the 15th.
    await publish(platform, site, "change", steady(datetime(2026, 1, 14, 22, tzinfo=UTC), 8, 1.0))
    # block: 1.5 kWh a quarter from 10:00 to 12:00 on 2 February: 12 kWh.
    await publish(platform, site, "block", steady(datetime(2026, 2, 2, 9, tzinfo=UTC), 8, 1.5))

    # 21:00-22:00 on-peak 8 kWh = 2.40; 22:00-24:00 off-peak 16 kWh = 1.60; 00:00-01:00 off-peak 8 kWh = 0.80.
    daily = await eventually(
        lambda: subject(platform, "meter", site.meters["tou"], "daily", "2026-01-09", "2026-01-11"),
        lambda b: settled(b) and costs(b) == [("2026-01-09", 24.0, 4.0), ("2026-01-10", 8.0, 0.8)],
    )
    assert daily["rows"][0]["quality"] == Quality.GOOD
    hourly = await subject(
        platform,
        "meter",
        site.meters["tou"],
        "hourly",
        "2026-01-09T21:00:00+01:00",
        "2026-01-10T01:00:00+01:00",
    )
    assert costs(hourly) == [
        ("2026-01-09T21:00:00+01:00", 8.0, 2.4),
        ("2026-01-09T22:00:00+01:00", 8.0, 0.8),
        ("2026-01-09T23:00:00+01:00", 8.0, 0.8),
        ("2026-01-10T00:00:00+01:00", 8.0, 0.8),
    ]
    # The shopfloor holding only that meter says the same.
    floor = await eventually(
        lambda: subject(platform, "shopfloor", tou, "daily", "2026-01-09", "2026-01-11"),
        lambda b: settled(b) and costs(b) == [("2026-01-09", 24.0, 4.0), ("2026-01-10", 8.0, 0.8)],
    )
    assert floor["timezone"] == "Europe/Brussels"  # its space's

    # The 14th: 4 kWh at 0.10; the 15th: 4 kWh at 0.20. January: 8 kWh, 1.20.
    change = await eventually(
        lambda: subject(platform, "meter", site.meters["change"], "daily", "2026-01-14", "2026-01-16"),
        lambda b: settled(b) and costs(b) == [("2026-01-14", 4.0, 0.4), ("2026-01-15", 4.0, 0.8)],
    )
    assert change["timezone"] == "Europe/Brussels"
    monthly = await subject(platform, "meter", site.meters["change"], "monthly", "2026-01-01", "2026-02-01")
    assert costs(monthly) == [("2026-01-01", 8.0, 1.2)]

    # 10:00-11:00: 6 kWh, all in the first block: 3.00. 11:00-12:00: 6 kWh, of which the first 4 complete the
    # first block (2.00) and the last 2 are in the second (1.60): 3.60, the boundary falling inside 11:30-11:45.
    block = await eventually(
        lambda: subject(
            platform,
            "meter",
            site.meters["block"],
            "hourly",
            "2026-02-02T10:00:00+01:00",
            "2026-02-02T12:00:00+01:00",
        ),
        lambda b: (
            costs(b) == [("2026-02-02T10:00:00+01:00", 6.0, 3.0), ("2026-02-02T11:00:00+01:00", 6.0, 3.6)]
        ),
    )
    assert [r["quality"] for r in block["rows"]] == [Quality.GOOD, Quality.GOOD]
    feb = await eventually(
        lambda: subject(platform, "meter", site.meters["block"], "monthly", "2026-02-01", "2026-03-01"),
        lambda b: settled(b) and costs(b) == [("2026-02-01", 12.0, 6.6)],
    )
    assert feb["rows"][0]["kgco2e"] == pytest.approx(12 * KGCO2E)

    # The space holds all three meters: January 40 kWh costing 6.00 (4.80 + 1.20), February 12 kWh, 6.60.
    space = await eventually(
        lambda: subject(platform, "space", site.space_id, "monthly", "2026-01-01", "2026-03-01"),
        lambda b: settled(b) and costs(b) == [("2026-01-01", 40.0, 6.0), ("2026-02-01", 12.0, 6.6)],
    )
    assert space["timezone"] == "Europe/Brussels"
    assert [r["energy_category_id"] for r in space["rows"]] == [category, category]
    assert space["rows"][0]["kgce"] == pytest.approx(40 * KGCE)

    # One more reading after them: 1.5 kWh in 12:00-12:15, all in the second block: February 13.5 kWh, 7.80.
    await publish(platform, site, "block", [(datetime(2026, 2, 2, 11, 15, tzinfo=UTC), 1013.5)])
    await until(
        platform,
        "meter",
        site.meters["block"],
        "monthly",
        "2026-02-01",
        "2026-03-01",
        lambda b: costs(b) == [("2026-02-01", 13.5, 7.8)],
    )
    # The second block's price goes down to 0.60: February is priced again, 5.00 + 3.5 x 0.60 = 7.10.
    ladder["block"][1]["price"] = "0.60"
    body = {k: v for k, v in ladder.items() if k != "id"}
    updated = await platform.api.put(f"/tariffs/{ladder['id']}", json={"data": body})
    assert updated.status_code == 200, updated.text
    await eventually(
        lambda: subject(platform, "meter", site.meters["block"], "monthly", "2026-02-01", "2026-03-01"),
        lambda b: settled(b) and costs(b) == [("2026-02-01", 13.5, 7.1)],
    )
    await eventually(
        lambda: subject(platform, "space", site.space_id, "monthly", "2026-02-01", "2026-03-01"),
        lambda b: settled(b) and costs(b) == [("2026-02-01", 13.5, 7.1)],
    )


# --- subjects --------------------------------------------------------------------------------------------


async def delete(platform: Platform, path: str) -> None:
    answer = await platform.api.delete(path)
    assert answer.status_code == 204, f"DELETE {path}: {answer.status_code} {answer.text}"


def energy_by_day(body: dict[str, Any]) -> list[tuple[str, float, int]]:
    return [(r["start"], round(r["energy"], 9), r["quality"]) for r in body["rows"]]


def same_days(rows: Sequence[tuple[str, float, int]], body: dict[str, Any]) -> bool:
    return energy_by_day(body) == rows


def one_day_of(energy: float, body: dict[str, Any]) -> bool:
    return [round(r["energy"], 9) for r in body["rows"]] == [energy]


async def test_spaces_equipment_and_shopfloors_add_up_their_counted_meters_in_their_own_zone(
    platform: Platform,
) -> None:
    names = ("m1", "m2", "m3", "m4", "m5", "m6")
    site = await build_site(platform.api, unique("tree"), timezone="America/New_York", energy_points=names)
    m = site.meters
    top = site.space_id
    category = await electricity(platform)
    zones = (await platform.api.get("/timezones")).json()
    new_york = next(z["id"] for z in zones if z["name"] == "America/New_York")
    for name in ("m2", "m3", "m4", "m5"):
        await delete(platform, f"/spaces/{top}/meters/{m[name]}")
    child = await post(
        platform, "/spaces", {"name": unique("child"), "parent_space_id": top, "timezone_id": new_york}
    )
    apart = await post(
        platform,
        "/spaces",
        {"name": unique("apart"), "parent_space_id": top, "timezone_id": new_york, "is_input_counted": False},
    )
    await post(platform, f"/spaces/{child['id']}/meters", {"meter_id": m["m2"]})
    await post(platform, f"/spaces/{apart['id']}/meters", {"meter_id": m["m3"]})
    pump = await post(platform, "/equipments", {"name": unique("pump")})
    await post(platform, f"/spaces/{top}/equipments", {"equipment_id": pump["id"]})
    await post(platform, f"/equipments/{pump['id']}/meters", {"meter_id": m["m4"], "is_output": False})
    await post(platform, f"/equipments/{pump['id']}/meters", {"meter_id": m["m5"], "is_output": True})
    floor = await post(platform, "/shopfloors", {"name": unique("floor")})
    await post(platform, f"/shopfloors/{floor['id']}/meters", {"meter_id": m["m1"]})  # also in the space
    await post(platform, f"/spaces/{top}/shopfloors", {"shopfloor_id": floor["id"]})
    m6 = (await platform.api.get(f"/meters/{m['m6']}")).json()
    changed = await platform.api.put(
        f"/meters/{m['m6']}",
        json={"data": {"name": m6["name"], "energy_category_id": category, "is_counted": False}},
    )
    assert changed.status_code == 200, changed.text
    # An offline meter in the top space: 96 kWh over the UTC day of 1 July, 4 kWh an hour.
    offline = await post(
        platform, "/offlinemeters", {"name": unique("offline"), "energy_category_id": category}
    )
    upload = await platform.api.post(
        "/offlinemeterfiles",
        files={
            "file": (
                "july.csv",
                f"meter,start_datetime,end_datetime,value\n{offline['id']},2026-07-01T00:00:00,2026-07-02T00:00:00,96\n".encode(),
                "text/csv",
            )
        },
        data={"timezone": "UTC"},
    )
    assert upload.status_code == 201 and upload.json()["status"] == "done", upload.text
    await post(platform, f"/spaces/{top}/offlinemeters", {"offline_meter_id": offline["id"]})
    variables = [
        {"name": "a", "meter_type": "meter", "meter_id": m["m1"]},
        {"name": "b", "meter_type": "meter", "meter_id": m["m2"]},
    ]
    virtual = await post(
        platform,
        "/virtualmeters",
        {
            "name": unique("virtual"),
            "energy_category_id": category,
            "expression": {"equation": "a + b", "variables": variables},
        },
    )
    await asyncio.sleep(1.5)

    # Meter mk uses k kWh a quarter from 12:00 to 13:00 UTC on 1 July (08:00-09:00 in New York): 4k kWh.
    start = datetime(2026, 7, 1, 12, tzinfo=UTC)
    async with platform.mqtt() as client:
        readings = [
            {"point_id": site.points[name], "ts": ms(start + q * QUARTER), "value": 100.0 + q * k}
            for k, name in enumerate(names, start=1)
            for q in range(5)
        ]
        await platform.publish_telemetry(client, site.gateway_uuid, readings)

    G, M = Quality.GOOD, Quality.MANUAL
    # The top space: m1 (once, though the shopfloor has it too) + m2 (child) + m4 (the pump's input) = 28;
    # not m3 (its space is not input-counted), m5 (the pump's output) or m6 (not counted). Plus the offline
    # meter's 1 July in New York time: 04:00Z on 1 July to 04:00Z on 2 July holds 20 of its hours (80 kWh),
    # the 4 hours before are 30 June's (16 kWh).
    expected_top = [("2026-06-30", 16.0, M), ("2026-07-01", 108.0, M)]
    top_days = await eventually(
        lambda: subject(platform, "space", top, "daily", "2026-06-30", "2026-07-02"),
        lambda b: settled(b) and energy_by_day(b) == expected_top,
        within=60,
    )
    assert top_days["timezone"] == "America/New_York"
    checks = {
        ("space", child["id"]): [("2026-07-01", 8.0, G)],
        ("space", apart["id"]): [("2026-07-01", 12.0, G)],
        ("equipment", pump["id"]): [("2026-07-01", 16.0, G)],
        ("shopfloor", floor["id"]): [("2026-07-01", 4.0, G)],
        ("offlinemeter", offline["id"]): [("2026-06-30", 16.0, M), ("2026-07-01", 80.0, M)],
        ("virtualmeter", virtual["id"]): [("2026-07-01", 12.0, G)],  # in no space: UTC
    }
    for (kind, ident), rows in checks.items():
        body = await until(
            platform,
            kind,
            ident,
            "daily",
            "2026-06-30",
            "2026-07-02",
            functools.partial(same_days, rows),
        )
        assert all(r["energy_category_id"] == category and r["cost"] is None for r in body["rows"])
    yearly = await subject(platform, "space", top, "yearly", "2026-01-01", "2027-01-01")
    assert energy_by_day(yearly) == [("2026-01-01", 124.0, M)]
    hourly = await subject(
        platform, "space", child["id"], "hourly", "2026-07-01T08:00:00-04:00", "2026-07-01T09:00:00-04:00"
    )
    assert energy_by_day(hourly) == [("2026-07-01T08:00:00-04:00", 8.0, G)]

    # Rebinding rebuilds: m3 joins the child space (counted there, and through it in the top space).
    await post(platform, f"/spaces/{child['id']}/meters", {"meter_id": m["m3"]})
    await eventually(
        lambda: subject(platform, "space", child["id"], "daily", "2026-07-01", "2026-07-02"),
        lambda b: settled(b) and energy_by_day(b) == [("2026-07-01", 20.0, G)],
    )
    await eventually(
        lambda: subject(platform, "space", top, "daily", "2026-06-30", "2026-07-02"),
        lambda b: settled(b) and energy_by_day(b) == [("2026-06-30", 16.0, M), ("2026-07-01", 120.0, M)],
    )
    # A late reading of m2 reaches the spaces above it, incrementally.
    async with platform.mqtt() as client:
        await platform.publish_telemetry(
            client,
            site.gateway_uuid,
            [{"point_id": site.points["m2"], "ts": ms(start + 5 * QUARTER), "value": 113.0}],
        )
    await eventually(
        lambda: subject(platform, "space", top, "daily", "2026-06-30", "2026-07-02"),
        lambda b: settled(b) and energy_by_day(b) == [("2026-06-30", 16.0, M), ("2026-07-01", 125.0, M)],
    )
    async with internal(platform) as client:
        missing = await client.get(
            "/internal/subjects/space/987654/daily", params={"start": "2026-07-01", "end": "2026-07-02"}
        )
        assert missing.status_code == 404


async def test_dst_days_in_brussels_and_new_york_have_23_and_25_hours(platform: Platform) -> None:
    brussels = await build_site(
        platform.api, unique("dst-be"), timezone="Europe/Brussels", energy_points=("spring",)
    )
    new_york = await build_site(
        platform.api, unique("dst-us"), timezone="America/New_York", energy_points=("spring", "autumn")
    )
    await asyncio.sleep(1.5)
    # 1 kWh a quarter over each local day: 29 March in Brussels (23 hours from 23:00Z on the 28th), 8 March
    # in New York (23 hours from 05:00Z) and 1 November in New York (25 hours from 04:00Z).
    days = [
        (brussels, "spring", datetime(2026, 3, 28, 23, tzinfo=UTC), 23, "2026-03-29"),
        (new_york, "spring", datetime(2026, 3, 8, 5, tzinfo=UTC), 23, "2026-03-08"),
        (new_york, "autumn", datetime(2026, 11, 1, 4, tzinfo=UTC), 25, "2026-11-01"),
    ]
    for site, point, start, hours, _ in days:
        await publish(platform, site, point, steady(start, 4 * hours, 1.0))
    for site, point, _, hours, day in days:
        nxt = (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()
        body = await until(
            platform,
            "meter",
            site.meters[point],
            "daily",
            day,
            nxt,
            functools.partial(one_day_of, 4.0 * hours),
        )
        assert [(r["start"], r["hours"], r["quality"]) for r in body["rows"]] == [(day, hours, Quality.GOOD)]
    # The New York space holds both meters: each day in its own right.
    space = await eventually(
        lambda: subject(platform, "space", new_york.space_id, "monthly", "2026-03-01", "2026-12-01"),
        lambda b: (
            settled(b)
            and [(r["start"], round(r["energy"], 9)) for r in b["rows"]]
            == [("2026-03-01", 92.0), ("2026-11-01", 100.0)]
        ),
    )
    assert [r["hours"] for r in space["rows"]] == [23, 25]
