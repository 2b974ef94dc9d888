"""End to end over MQTT: quarters, local-time rollups, late data, redelivery, virtual and offline meters.

Every expected figure is worked out by hand from the readings published.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from proto_schemas import topics
from proto_schemas.pipeline import EnergyIntervalBatch
from proto_schemas.quality import Quality
from tests.support import Platform, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUARTER = timedelta(minutes=15)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def report(platform: Platform, meter_id: int, period: str, start: str, end: str) -> dict[str, Any]:
    answer = await platform.api.get(
        "/reports/meterenergy",
        params={
            "meterid": meter_id,
            "periodtype": period,
            "reportingperiodstartdatetime": start,
            "reportingperiodenddatetime": end,
        },
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["reporting_period"])


def rounded(values: list[float]) -> list[float]:
    return [round(v, 9) for v in values]


async def daily_rows(platform: Platform, meter_id: int) -> dict[str, tuple[float, str, datetime]]:
    """Stored daily rollups: local date -> (energy, quality, updated_at)."""
    rows = await platform.db.fetch(
        f'SELECT local_date, energy, quality, updated_at FROM "{platform.schema("aggregation")}".meter_energy_daily'
        " WHERE meter_id = $1 ORDER BY local_date",
        meter_id,
    )
    return {
        r["local_date"].isoformat(): (round(r["energy"], 9), Quality(r["quality"]).label, r["updated_at"])
        for r in rows
    }


def energies(rows: dict[str, tuple[float, str, datetime]]) -> dict[str, float]:
    return {day: energy for day, (energy, _, _) in rows.items()}


async def quarter_rows(platform: Platform, meter_id: int) -> dict[datetime, tuple[float, int, datetime]]:
    rows = await platform.db.fetch(
        f'SELECT quarter, energy, quality, updated_at FROM "{platform.schema("aggregation")}".meter_energy_quarter'
        " WHERE meter_id = $1 ORDER BY quarter",
        meter_id,
    )
    return {r["quarter"]: (round(r["energy"], 9), r["quality"], r["updated_at"]) for r in rows}


async def test_a_kolkata_day_is_exact_across_a_local_midnight_in_the_middle_of_a_utc_hour(
    platform: Platform,
) -> None:
    site = await build_site(platform.api, unique("kolkata"), timezone="Asia/Kolkata")
    meter = site.meters["main"]
    # Local midnight of 2026-03-11 is 2026-03-10T18:30Z. Readings every 15 minutes from 16:00Z (21:30 IST);
    # the k-th interval (ending 16:00Z + 15k min) holds k kWh.
    first = datetime(2026, 3, 10, 16, tzinfo=UTC)
    value, readings = 100.0, []
    for k in range(21):
        value += k
        readings.append({"point_id": site.points["main"], "ts": ms(first + k * QUARTER), "value": value})
    async with platform.mqtt() as client:
        await platform.publish_telemetry(client, site.gateway_uuid, readings)

    # Intervals 1..10 end by 18:30Z (the 10th), intervals 11..20 after: 55 and 155 kWh. Whole UTC hours
    # would have put the 18:00Z hour (9 + 10 + 11 + 12) into the 10th and said 78.
    daily = await eventually(
        lambda: report(platform, meter, "daily", "2026-03-10T00:00:00", "2026-03-12T00:00:00"),
        lambda r: rounded(r["values"]) == [55.0, 155.0],
    )
    assert daily["timestamps"] == ["2026-03-10T00:00:00+05:30", "2026-03-11T00:00:00+05:30"]
    assert daily["qualities"] == ["good", "good"]
    assert round(daily["total_in_category"], 9) == 210.0
    # Local hours start at :30 UTC: 22:00 IST holds intervals 3..6, then 7..10, 11..14, 15..18.
    hourly = await report(platform, meter, "hourly", "2026-03-10T22:00:00", "2026-03-11T02:00:00")
    assert rounded(hourly["values"]) == [18.0, 34.0, 50.0, 66.0]
    assert hourly["timestamps"][0] == "2026-03-10T22:00:00+05:30"

    # The stored rollups say the same, and the report uses them: a (deliberately) wrong stored day shows
    # in a report over whole days, never in one that starts mid-day (that one sums quarters).
    stored = await eventually(
        lambda: daily_rows(platform, meter),
        lambda rows: energies(rows) == {"2026-03-10": 55.0, "2026-03-11": 155.0},
    )
    assert {day: quality for day, (_, quality, _) in stored.items()} == {
        "2026-03-10": "good",
        "2026-03-11": "good",
    }
    monthly = await report(platform, meter, "monthly", "2026-03-01T00:00:00", "2026-04-01T00:00:00")
    assert rounded(monthly["values"]) == [210.0]
    table = f'"{platform.schema("aggregation")}".meter_energy_daily'
    await platform.db.execute(
        f"UPDATE {table} SET energy = 999 WHERE meter_id = $1 AND local_date = '2026-03-10'", meter
    )
    try:
        whole = await report(platform, meter, "daily", "2026-03-10T00:00:00", "2026-03-12T00:00:00")
        assert rounded(whole["values"]) == [999.0, 155.0]
        partial = await report(platform, meter, "daily", "2026-03-10T06:00:00", "2026-03-12T00:00:00")
        assert rounded(partial["values"]) == [55.0, 155.0]
    finally:
        await platform.db.execute(
            f"UPDATE {table} SET energy = 55 WHERE meter_id = $1 AND local_date = '2026-03-10'", meter
        )


async def test_a_brussels_autumn_day_has_25_hours_and_its_rollups_match_the_report(
    platform: Platform,
) -> None:
    site = await build_site(platform.api, unique("brussels"), timezone="Europe/Brussels")
    meter = site.meters["main"]
    # 2026-10-25 runs from 22:00Z on the 24th (+02:00) to 23:00Z on the 25th (+01:00): 25 hours. Readings
    # every 15 minutes from an hour before it to an hour after it, 1 kWh each.
    first = datetime(2026, 10, 24, 21, tzinfo=UTC)
    readings = [
        {"point_id": site.points["main"], "ts": ms(first + k * QUARTER), "value": 40.0 + k}
        for k in range(109)
    ]
    async with platform.mqtt() as client:
        await platform.publish_telemetry(client, site.gateway_uuid, readings[60:])
        await platform.publish_telemetry(client, site.gateway_uuid, readings[:61])

    daily = await eventually(
        lambda: report(platform, meter, "daily", "2026-10-24T00:00:00", "2026-10-27T00:00:00"),
        lambda r: rounded(r["values"]) == [4.0, 100.0, 4.0],
    )
    assert daily["timestamps"] == [
        "2026-10-24T00:00:00+02:00",
        "2026-10-25T00:00:00+02:00",
        "2026-10-26T00:00:00+01:00",
    ]
    hourly = await report(platform, meter, "hourly", "2026-10-25T00:00:00", "2026-10-26T00:00:00")
    assert len(hourly["values"]) == 25 and set(rounded(hourly["values"])) == {4.0}
    assert hourly["timestamps"][2:4] == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00"]

    stored = await eventually(
        lambda: daily_rows(platform, meter),
        lambda rows: energies(rows) == {"2026-10-24": 4.0, "2026-10-25": 100.0, "2026-10-26": 4.0},
    )
    assert [stored[d][0] for d in ("2026-10-24", "2026-10-25", "2026-10-26")] == rounded(daily["values"])
    schema = platform.schema("aggregation")
    monthly = await platform.db.fetchrow(
        f'SELECT energy, quarters FROM "{schema}".meter_energy_monthly WHERE meter_id = $1', meter
    )
    yearly = await platform.db.fetchrow(
        f'SELECT local_year, energy FROM "{schema}".meter_energy_yearly WHERE meter_id = $1', meter
    )
    assert monthly is not None and (round(monthly["energy"], 9), monthly["quarters"]) == (108.0, 108)
    assert yearly is not None and (yearly["local_year"], round(yearly["energy"], 9)) == (2026, 108.0)
    report_month = await report(platform, meter, "monthly", "2026-10-01T00:00:00", "2026-11-01T00:00:00")
    report_year = await report(platform, meter, "yearly", "2026-01-01T00:00:00", "2027-01-01T00:00:00")
    assert rounded(report_month["values"]) == [108.0] and rounded(report_year["values"]) == [108.0]


async def test_late_out_of_order_readings_change_exactly_their_days_and_a_replay_changes_nothing(
    platform: Platform,
) -> None:
    site = await build_site(platform.api, unique("late"), timezone="Europe/Brussels")
    meter, point = site.meters["main"], site.points["main"]
    # Hourly readings from 2026-06-01T00:00+02:00 for four local days; hour h holds 1 + (h % 5) / 2 kWh.
    start = datetime(2026, 5, 31, 22, tzinfo=UTC)
    increments = [0.0] + [1 + (h % 5) / 2 for h in range(1, 97)]
    values = [500.0]
    for h in range(1, 97):
        values.append(values[-1] + increments[h])
    readings = [
        {"point_id": point, "ts": ms(start + timedelta(hours=h)), "value": values[h]} for h in range(97)
    ]
    withheld = range(43, 56)  # 2026-06-02T19:00 to 2026-06-03T07:00 local: across a local midnight (h = 48)
    days = ["2026-06-01", "2026-06-02", "2026-06-03", "2026-06-04"]
    exact = {day: round(sum(increments[24 * i + 1 : 24 * i + 25]), 9) for i, day in enumerate(days)}
    # Until the withheld readings come, (h42, h56] is one 14-hour interval spread evenly: 6 hours of it on
    # the 2nd, 8 on the 3rd.
    gap = sum(increments[43:57])
    before = dict(exact)
    before["2026-06-02"] = round(sum(increments[25:43]) + gap * 6 / 14, 9)
    before["2026-06-03"] = round(gap * 8 / 14 + sum(increments[57:73]), 9)
    assert before != exact

    async with platform.mqtt() as client:
        await platform.publish_telemetry(
            client, site.gateway_uuid, [r for h, r in enumerate(readings) if h not in withheld]
        )
    first = await eventually(lambda: daily_rows(platform, meter), lambda rows: energies(rows) == before)
    assert first["2026-06-02"][1] == first["2026-06-03"][1] == "estimated"
    assert first["2026-06-01"][1] == first["2026-06-04"][1] == "good"
    quarters_before = await quarter_rows(platform, meter)

    # Two days later (after the 4th was in), out of order: the later half first, each half backwards.
    async with platform.mqtt() as client:
        await platform.publish_telemetry(
            client, site.gateway_uuid, [readings[h] for h in reversed(range(49, 56))]
        )
        await platform.publish_telemetry(
            client, site.gateway_uuid, [readings[h] for h in reversed(range(43, 49))]
        )
    after = await eventually(lambda: daily_rows(platform, meter), lambda rows: energies(rows) == exact)
    # The untouched days were not even rewritten, nor were their quarters.
    for day in ("2026-06-01", "2026-06-04"):
        assert after[day] == first[day]
    quarters_after = await quarter_rows(platform, meter)
    assert quarters_after.keys() == quarters_before.keys()
    touched = {q for q in quarters_after if quarters_after[q] != quarters_before[q]}
    assert touched and all(start + timedelta(hours=42) <= q < start + timedelta(hours=56) for q in touched)
    report_days = await report(platform, meter, "daily", "2026-06-01T00:00:00", "2026-06-05T00:00:00")
    assert rounded(report_days["values"]) == [exact[day] for day in days]

    # Everything again, then one new reading as a marker: once it is in, the replay has been through.
    async with platform.mqtt() as client:
        await platform.publish_telemetry(client, site.gateway_uuid, readings)
        await platform.publish_telemetry(client, site.gateway_uuid, [readings[h] for h in withheld])
        marker = {"point_id": point, "ts": ms(start + timedelta(hours=97)), "value": values[96] + 2.0}
        await platform.publish_telemetry(client, site.gateway_uuid, [marker])
    replayed = await eventually(lambda: daily_rows(platform, meter), lambda rows: "2026-06-05" in rows)
    assert replayed["2026-06-05"][0] == 2.0
    assert {day: replayed[day] for day in days} == {day: after[day] for day in days}
    final_quarters = await quarter_rows(platform, meter)
    assert {q: v for q, v in final_quarters.items() if q in quarters_after} == quarters_after


async def test_a_redelivered_or_regrouped_interval_batch_counts_once(platform: Platform) -> None:
    site = await build_site(platform.api, unique("redeliver"), timezone="UTC")
    meter, point = site.meters["main"], site.points["main"]
    t0 = datetime(2026, 4, 1, tzinfo=UTC)
    hour = timedelta(hours=1)

    def batch(name: str, start: datetime, end: datetime, energy: float) -> bytes:
        return (
            EnergyIntervalBatch(
                batch_id=f"{name}-{site.gateway_uuid}",
                correlation_id=name,
                point_ids=[point],
                start_ms=[ms(start)],
                end_ms=[ms(end)],
                energy=[energy],
                quality=[int(Quality.GOOD)],
            )
            .model_dump_json()
            .encode()
        )

    a = batch("a", t0, t0 + hour, 4.0)  # one kWh in each quarter of the first hour
    c = batch("c", t0 + hour, t0 + 2 * hour, 8.0)
    d = batch("d", t0 + 2 * hour, t0 + 2 * hour + QUARTER, 1.0)
    topic = platform.topic(topics.ENERGY_INTERVALS)
    async with platform.mqtt() as client:
        for payload in (a, a, c):  # very likely one handler call: a batch twice, regrouped with another
            await client.publish(topic, payload, qos=1)
    await eventually(
        lambda: quarter_rows(platform, meter), lambda q: round(sum(v for v, _, _ in q.values()), 9) == 12.0
    )
    async with platform.mqtt() as client:
        await client.publish(topic, a, qos=1)  # again, on its own, later
        await client.publish(topic, d, qos=1)  # the marker
    quarters = await eventually(lambda: quarter_rows(platform, meter), lambda q: len(q) == 9)
    assert [v for v, _, _ in quarters.values()] == [1.0] * 4 + [2.0] * 4 + [1.0]
    await eventually(lambda: daily_rows(platform, meter), lambda rows: energies(rows) == {"2026-04-01": 13.0})


async def test_virtual_and_offline_meters_are_evaluated_per_quarter(platform: Platform) -> None:
    site = await build_site(platform.api, unique("virtual"), timezone="UTC", energy_points=("a", "b"))
    category = next(
        c for c in (await platform.api.get("/energycategories")).json() if c["name"] == "Electricity"
    )
    offline = await platform.api.post(
        "/offlinemeters", json={"data": {"name": unique("Gas"), "energy_category_id": category["id"]}}
    )
    assert offline.status_code == 201, offline.text
    offline_id = offline.json()["id"]
    upload = await platform.api.post(
        "/offlinemeterfiles",
        files={
            "file": (
                "august.csv",
                f"meter,start_datetime,end_datetime,value\n{offline_id},2026-08-01T00:00:00,2026-08-02T00:00:00,96\n".encode(),
                "text/csv",
            )
        },
        data={"timezone": "UTC"},
    )
    assert upload.status_code == 201 and upload.json()["status"] == "done", upload.text
    variables = [
        {"name": "a", "meter_type": "meter", "meter_id": site.meters["a"]},
        {"name": "b", "meter_type": "meter", "meter_id": site.meters["b"]},
        {"name": "o", "meter_type": "offline_meter", "meter_id": offline_id},
    ]
    body = {"name": unique("Net"), "energy_category_id": category["id"]}
    created = await platform.api.post(
        "/virtualmeters",
        json={"data": {**body, "expression": {"equation": "a - b + 2 * o", "variables": variables}}},
    )
    assert created.status_code == 201, created.text
    virtual_id = created.json()["id"]
    # Meter a uses 3 kWh a quarter, b 1 kWh, over two hours; the offline meter's day is 1 kWh a quarter.
    start = datetime(2026, 8, 1, tzinfo=UTC)
    readings = []
    for k in range(9):
        at = ms(start + k * QUARTER)
        readings += [
            {"point_id": site.points["a"], "ts": at, "value": 3.0 * k},
            {"point_id": site.points["b"], "ts": at, "value": 10.0 + k},
        ]
    async with platform.mqtt() as client:
        await platform.publish_telemetry(client, site.gateway_uuid, readings)

    schema = platform.schema("aggregation")

    async def virtual_quarters() -> list[tuple[float, int]]:
        rows = await platform.db.fetch(
            f'SELECT energy, quality FROM "{schema}".virtual_meter_energy_quarter WHERE virtual_meter_id = $1'
            " ORDER BY quarter",
            virtual_id,
        )
        return [(round(r["energy"], 9), r["quality"]) for r in rows]

    # 3 - 1 + 2 * 1 in each of the 8 quarters with readings; manual is the worst input quality.
    await eventually(virtual_quarters, lambda rows: rows == [(4.0, int(Quality.MANUAL))] * 8)
    offline_rows = await platform.db.fetch(
        f'SELECT energy, quality FROM "{schema}".offline_meter_energy_quarter WHERE offline_meter_id = $1',
        offline_id,
    )
    assert len(offline_rows) == 96
    assert {(r["energy"], r["quality"]) for r in offline_rows} == {(1.0, int(Quality.MANUAL))}

    # Redefined: recomputed wholly, with the new inputs' quality.
    changed = await platform.api.put(
        f"/virtualmeters/{virtual_id}",
        json={"data": {**body, "expression": {"equation": "2 * a + b", "variables": variables}}},
    )
    assert changed.status_code == 200, changed.text
    await eventually(virtual_quarters, lambda rows: rows == [(7.0, int(Quality.GOOD))] * 8)
    # New readings of an input reach the virtual meter in their quarter only.
    async with platform.mqtt() as client:
        await platform.publish_telemetry(
            client,
            site.gateway_uuid,
            [
                {"point_id": site.points["a"], "ts": ms(start + 9 * QUARTER), "value": 3.0 * 8 + 5},
                {"point_id": site.points["b"], "ts": ms(start + 9 * QUARTER), "value": 10.0 + 8 + 1},
            ],
        )
    await eventually(virtual_quarters, lambda rows: rows == [(7.0, int(Quality.GOOD))] * 8 + [(11.0, 0)])
    # The unchanged quarters of the day were summed from the stored quarters; the day is the sum.
    answer = await platform.api.get(
        "/reports/meterenergy",
        params={
            "meterid": site.meters["a"],
            "periodtype": "daily",
            "reportingperiodstartdatetime": "2026-08-01T00:00:00",
            "reportingperiodenddatetime": "2026-08-02T00:00:00",
        },
    )
    assert rounded(answer.json()["reporting_period"]["values"]) == [29.0]
    assert date(2026, 8, 1).isoformat() in await daily_rows(platform, site.meters["a"])
