"""MyEMS-style reports end to end: readings over MQTT, reports through the gateway, checked by hand.

The fixture is the same in two zones (Europe/Brussels, +01:00 in January, and Asia/Kolkata, +05:30, whose
local midnight falls at 18:30 UTC): a space with meters `a` and `b`, read every quarter hour over two local
days from local midnight. Meter a's k-th quarter holds (k mod 4) + 1 kWh, so every hour holds 10 kWh and every
day 240; meter b holds 0.25 kWh a quarter on the first day (24 a day) and 0.5 on the second (48). The space
therefore has 264 kWh on day one and 288 on day two, 11 and 12 kWh in every hour of them.
"""

from __future__ import annotations

import base64
import csv
import io
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from openpyxl import load_workbook

from libs.service import INTERNAL_TOKEN_HEADER
from services.reporting.api.subjects import REPORTS
from tests.support import Platform, Site, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUARTER = timedelta(minutes=15)
DAY1, DAY2, DAY3 = "2026-01-12T00:00:00", "2026-01-13T00:00:00", "2026-01-14T00:00:00"
ZONES = {"Europe/Brussels": "+01:00", "Asia/Kolkata": "+05:30"}
NOWHERE = 2_147_483_000


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def rounded(values: Any) -> Any:
    if isinstance(values, list):
        return [rounded(v) for v in values]
    return None if values is None else round(values, 6)


async def post(api: httpx.AsyncClient, path: str, data: dict[str, Any]) -> dict[str, Any]:
    answer = await api.post(path, json={"data": data})
    assert answer.status_code == 201, f"POST {path}: {answer.status_code} {answer.text}"
    return dict(answer.json())


async def get_report(platform: Platform, name: str, **params: Any) -> dict[str, Any]:
    answer = await platform.api.get(f"/reports/{name}", params=params)
    assert answer.status_code == 200, f"{name}: {answer.status_code} {answer.text}"
    return dict(answer.json())


async def two_day_site(platform: Platform, zone: str) -> Site:
    site = await build_site(
        platform.api, unique(zone.split("/")[1].lower()), timezone=zone, energy_points=("a", "b")
    )
    first = datetime(2026, 1, 12, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    a, b, readings = 1000.0, 50.0, []
    for k in range(193):
        if k:
            a += (k % 4) + 1
            b += 0.25 if k <= 96 else 0.5
        moment = ms(first + k * QUARTER)
        readings += [
            {"point_id": site.points["a"], "ts": moment, "value": a},
            {"point_id": site.points["b"], "ts": moment, "value": b},
        ]
    async with platform.mqtt() as client:
        await platform.publish_telemetry(client, site.gateway_uuid, readings[:200])
        await platform.publish_telemetry(client, site.gateway_uuid, readings[200:])
    return site


def standard(site_key: str, site_id: int, **extra: Any) -> dict[str, Any]:
    return {
        site_key: site_id,
        "periodtype": "daily",
        "reportingperiodstartdatetime": DAY2,
        "reportingperiodenddatetime": DAY3,
        "baseperiodstartdatetime": DAY1,
        "baseperiodenddatetime": DAY2,
        **extra,
    }


@pytest.fixture(scope="module")
async def sites(platform: Platform) -> dict[str, Site]:
    found = {zone: await two_day_site(platform, zone) for zone in ZONES}
    for site in found.values():

        async def both_days(site: Site = site) -> dict[str, Any]:
            return await get_report(
                platform, "spaceenergycategory", spaceid=site.space_id, periodtype="daily",
                reportingperiodstartdatetime=DAY1, reportingperiodenddatetime=DAY3, quickmode="true",
            )  # fmt: skip

        # Every quarter has arrived once the whole two days add up in the report.
        await eventually(
            both_days, lambda r: rounded(r["reporting_period"]["values"]) == [[264.0, 288.0]], 60
        )
    return found


@pytest.mark.parametrize("zone", list(ZONES))
async def test_space_reports_match_hand_computed_values_in_local_days(
    platform: Platform, sites: dict[str, Site], zone: str
) -> None:
    site = sites[zone]
    offset = ZONES[zone]
    energy = await get_report(platform, "spaceenergycategory", **standard("spaceid", site.space_id))
    reporting, base = energy["reporting_period"], energy["base_period"]
    assert reporting["names"] == ["Electricity"] and reporting["units"] == ["kWh"]
    assert reporting["timestamps"] == [[f"2026-01-13T00:00:00{offset}"]]
    assert rounded(reporting["values"]) == [[288.0]] and rounded(reporting["subtotals"]) == [288.0]
    assert rounded(base["values"]) == [[264.0]] and base["timestamps"] == [[f"2026-01-12T00:00:00{offset}"]]
    assert reporting["qualities"] == [["good"]]
    assert rounded(reporting["increment_rates"]) == [rounded((288 - 264) / 264)]
    assert energy["space"]["timezone"] == zone and "excel_bytes_base64" in energy

    electricity = next(
        c for c in (await platform.api.get("/energycategories")).json() if c["name"] == "Electricity"
    )
    carbon = await get_report(platform, "spacecarbon", **standard("spaceid", site.space_id), quickmode="true")
    assert rounded(carbon["reporting_period"]["values"]) == [[rounded(288 * electricity["kgco2e"])]]
    assert carbon["reporting_period"]["units"] == ["kgCO2e"] and "excel_bytes_base64" not in carbon
    assert rounded(energy["reporting_period"]["total_in_kgce"]) == rounded(288 * electricity["kgce"])

    # Local hours: every hour of day two holds 12 kWh (11 on day one), so average = maximum load.
    load = await get_report(platform, "spaceload", **standard("spaceid", site.space_id), quickmode="true")
    assert rounded(load["reporting_period"]["sub_averages"]) == [[12.0]]
    assert rounded(load["reporting_period"]["sub_maximums"]) == [[12.0]]
    assert rounded(load["base_period"]["maximums"]) == [11.0]

    stats = await get_report(
        platform, "spacestatistics", spaceid=site.space_id, periodtype="daily",
        reportingperiodstartdatetime=DAY1, reportingperiodenddatetime=DAY3, quickmode="true",
    )  # fmt: skip
    section = stats["reporting_period"]
    assert rounded(section["means"]) == [276.0] and rounded(section["medians"]) == [276.0]
    assert rounded(section["minimums"]) == [264.0] and rounded(section["maximums"]) == [288.0]
    assert rounded(section["variances"]) == [288.0] and rounded(section["stdevs"]) == [
        rounded(math.sqrt(288))
    ]

    hourly = await get_report(
        platform, "spaceenergycategory", spaceid=site.space_id, periodtype="hourly",
        reportingperiodstartdatetime="2026-01-12T22:00:00", reportingperiodenddatetime="2026-01-13T02:00:00",
        quickmode="true",
    )  # fmt: skip
    assert rounded(hourly["reporting_period"]["values"]) == [[11.0, 11.0, 12.0, 12.0]]
    assert hourly["reporting_period"]["timestamps"][0][0] == f"2026-01-12T22:00:00{offset}"


@pytest.mark.parametrize("zone", list(ZONES))
async def test_report_totals_equal_the_stored_aggregates_and_the_meters(
    platform: Platform, sites: dict[str, Site], zone: str
) -> None:
    site = sites[zone]
    schema = platform.schema("aggregation")
    meters = list(site.meters.values())
    stored = await eventually(
        lambda: platform.db.fetch(
            f'SELECT local_date, sum(energy) AS energy FROM "{schema}".meter_energy_daily'
            " WHERE meter_id = ANY($1::int[]) GROUP BY local_date ORDER BY local_date",
            meters,
        ),
        lambda rows: [round(r["energy"], 6) for r in rows] == [264.0, 288.0],
    )
    report = await get_report(
        platform, "spaceenergycategory", spaceid=site.space_id, periodtype="daily",
        reportingperiodstartdatetime=DAY1, reportingperiodenddatetime=DAY3, quickmode="true",
    )  # fmt: skip
    assert rounded(report["reporting_period"]["values"][0]) == [round(r["energy"], 6) for r in stored]

    # The space's own stored rollups (what the report reads) say the same, once taken in.
    async def space_rows() -> list[float]:
        async with httpx.AsyncClient(base_url=platform.processes.url("aggregation"), timeout=30) as client:
            answer = await client.get(
                f"/internal/subjects/space/{site.space_id}/daily",
                params={"start": DAY1[:10], "end": DAY3[:10]},
                headers={INTERNAL_TOKEN_HEADER: platform.settings.internal_token},
            )
        body: dict[str, Any] = answer.json() if answer.status_code == 200 else {"rows": [], "stale": ["?"]}
        return [] if body["stale"] else [round(r["energy"], 6) for r in body["rows"]]

    assert await eventually(space_rows, lambda rows: rows == [264.0, 288.0], 60) == [264.0, 288.0]
    per_meter = [
        await get_report(
            platform,
            "meterenergy",
            meterid=meter,
            periodtype="daily",
            reportingperiodstartdatetime=DAY1,
            reportingperiodenddatetime=DAY3,
            quickmode="true",
        )
        for meter in meters
    ]
    assert rounded([m["reporting_period"]["values"] for m in per_meter]) == [[240.0, 240.0], [24.0, 48.0]]
    assert rounded(sum(m["reporting_period"]["total_in_category"] for m in per_meter)) == 552.0

    batch = await get_report(
        platform, "meterbatch", spaceid=site.space_id, reportingperiodstartdatetime=DAY1,
        reportingperiodenddatetime=DAY3, quickmode="true",
    )  # fmt: skip
    assert {m["id"]: rounded(m["total_in_category"]) for m in batch["meters"]} == {
        site.meters["a"]: 480.0,
        site.meters["b"]: 72.0,
    }
    monthly = await get_report(
        platform, "spaceenergycategory", spaceid=site.space_id, periodtype="monthly",
        reportingperiodstartdatetime="2026-01-01T00:00:00", reportingperiodenddatetime="2026-02-01T00:00:00",
        quickmode="true",
    )  # fmt: skip
    assert rounded(monthly["reporting_period"]["values"]) == [[552.0]]


def sheet_rows(content: bytes) -> list[list[Any]]:
    book = load_workbook(io.BytesIO(content))
    sheet = book.active
    assert sheet is not None
    return [list(row) for row in sheet.iter_rows(values_only=True)]


async def test_excel_and_csv_hold_the_numbers_of_the_json(platform: Platform, sites: dict[str, Site]) -> None:
    site = sites["Europe/Brussels"]
    params = standard("spaceid", site.space_id, baseperiodstartdatetime=None, baseperiodenddatetime=None)
    params.update(reportingperiodstartdatetime=DAY1, reportingperiodenddatetime=DAY3)
    params = {k: v for k, v in params.items() if v is not None}
    report = await get_report(platform, "spaceenergycategory", **params)
    values = report["reporting_period"]["values"][0]
    stamps = report["reporting_period"]["timestamps"][0]

    answer = await platform.api.get("/reports/spaceenergycategory", params={**params, "format": "xlsx"})
    assert answer.status_code == 200
    assert (
        answer.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    assert 'filename="spaceenergycategory-' in answer.headers["content-disposition"]
    for content in (answer.content, base64.b64decode(report["excel_bytes_base64"])):
        rows = sheet_rows(content)
        data = {row[0]: row[1] for row in rows if row and row[0] in stamps}
        assert [data[s] for s in stamps] == pytest.approx(values, rel=1e-15)
        subtotal = next(row for row in rows if row and row[0] == "Subtotal")
        assert subtotal[1] == pytest.approx(report["reporting_period"]["subtotals"][0], rel=1e-15)
    book = load_workbook(io.BytesIO(answer.content))
    assert book.active is not None and len(book.active._charts) == 1  # the chart of the reporting period

    answer = await platform.api.get("/reports/spaceenergycategory", params={**params, "format": "csv"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"].endswith('.csv"')
    lines = list(csv.reader(io.StringIO(answer.content.decode("utf-8-sig"))))
    data_csv = {line[0]: float(line[1]) for line in lines if line and line[0] in stamps}
    assert [data_csv[s] for s in stamps] == values

    meter = await platform.api.get(
        "/reports/meterenergy",
        params={"meterid": site.meters["a"], "reportingperiodstartdatetime": DAY1,
                "reportingperiodenddatetime": DAY3, "format": "xlsx"},
    )  # fmt: skip
    assert meter.status_code == 200
    assert [
        r[1] for r in sheet_rows(meter.content) if r and isinstance(r[0], str) and r[0].startswith("2026-")
    ] == [
        240.0,
        240.0,
    ]


async def test_meter_trend_and_realtime_show_the_meter_points_and_quarters(
    platform: Platform, sites: dict[str, Site]
) -> None:
    site = sites["Asia/Kolkata"]
    trend = await get_report(
        platform, "metertrend", meterid=site.meters["a"], reportingperiodstartdatetime=DAY1,
        reportingperiodenddatetime=DAY2, quickmode="true",
    )  # fmt: skip
    section = trend["reporting_period"]
    assert section["names"] == ["a (kWh)"]
    # Energy per five minutes of the point: 288 slots of day one, adding up to its 240 kWh.
    assert len(section["values"][0]) == 288 and round(sum(section["values"][0]), 6) == 240.0
    assert section["timestamps"][0][0] == "2026-01-12T00:00:00+05:30"

    realtime = await get_report(platform, "meterrealtime", meterid=site.meters["a"], quickmode="true")
    assert len(realtime["energy_value"]["values"]) == 96  # the last 24 hours by quarter (none of them sent)
    assert set(realtime["energy_value"]["qualities"]) == {"missing"}


def field_of(answer: httpx.Response) -> set[str]:
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.text
    return {error["field"] for error in answer.json().get("errors", [])}


async def test_bad_parameters_are_400_naming_the_field_and_unknown_subjects_404(
    platform: Platform, sites: dict[str, Site]
) -> None:
    site = sites["Europe/Brussels"]
    good = standard("spaceid", site.space_id, quickmode="true")
    cases = {
        "periodtype": {**good, "periodtype": "fortnightly"},
        "reportingperiodenddatetime": {**good, "reportingperiodenddatetime": "2026-01-11T00:00:00"},
        "reportingperiodstartdatetime": {**good, "reportingperiodstartdatetime": "yesterday"},
        "baseperiodenddatetime": {k: v for k, v in good.items() if k != "baseperiodenddatetime"},
        "format": {**good, "format": "pdf"},
        "language": {**good, "language": "klingon"},
        "spaceid": {k: v for k, v in good.items() if k != "spaceid"},
        "spaceuuid": {**{k: v for k, v in good.items() if k != "spaceid"}, "spaceuuid": "not-a-uuid"},
    }
    for name, params in cases.items():
        answer = await platform.api.get("/reports/spaceenergycategory", params=params)
        assert answer.status_code == 400, (name, answer.text)
        assert name in field_of(answer), (name, answer.text)
    answer = await platform.api.get("/reports/equipmentbatch", params={"reportingperiodstartdatetime": DAY1})
    assert answer.status_code == 400 and field_of(answer) == {"spaceid"}

    for name, params in {
        "spaceenergycategory": {**good, "spaceid": NOWHERE},
        "tenantcost": {**{k: v for k, v in good.items() if k != "spaceid"}, "tenantid": NOWHERE},
        "meterenergy": {**{k: v for k, v in good.items() if k != "spaceid"}, "meteruuid": str(uuid.uuid4())},
        "meterbatch": {**good, "spaceid": NOWHERE},
    }.items():
        answer = await platform.api.get(f"/reports/{name}", params=params)
        assert answer.status_code == 404, (name, answer.text)
    space = (await platform.api.get(f"/spaces/{site.space_id}")).json()
    by_uuid = {**{k: v for k, v in good.items() if k != "spaceid"}, "spaceuuid": space["uuid"]}
    found = await get_report(platform, "spaceenergycategory", **by_uuid)
    assert rounded(found["reporting_period"]["values"]) == [[288.0]]


async def test_equipment_tenant_and_balance_reports_follow_their_meters(
    platform: Platform, sites: dict[str, Site]
) -> None:
    site = sites["Asia/Kolkata"]
    a, b = site.meters["a"], site.meters["b"]
    equipment = await post(platform.api, "/equipments", {"name": unique("chiller")})
    await post(platform.api, f"/spaces/{site.space_id}/equipments", {"equipment_id": equipment["id"]})
    await post(platform.api, f"/equipments/{equipment['id']}/meters", {"meter_id": a, "is_output": False})
    await post(platform.api, f"/equipments/{equipment['id']}/meters", {"meter_id": b, "is_output": True})
    efficiency = await get_report(
        platform, "equipmentefficiency", equipmentid=equipment["id"], periodtype="daily",
        reportingperiodstartdatetime=DAY1, reportingperiodenddatetime=DAY3, quickmode="true",
    )  # fmt: skip
    section = efficiency["reporting_period"]
    assert section["names"] == ["Electricity/Electricity"]
    assert rounded(section["values"]) == [[rounded(24 / 240), rounded(48 / 240)]]
    assert rounded(section["cumulations"]) == [rounded(72 / 480)]
    equipment_energy = await eventually(
        lambda: get_report(
            platform, "equipmentenergycategory", equipmentid=equipment["id"], periodtype="daily",
            reportingperiodstartdatetime=DAY1, reportingperiodenddatetime=DAY3, quickmode="true",
        ),
        lambda r: rounded(r["reporting_period"]["values"]) == [[240.0, 240.0]],
    )  # fmt: skip
    assert equipment_energy["equipment"]["timezone"] == "Asia/Kolkata"
    batch = await get_report(
        platform, "equipmentbatch", spaceid=site.space_id, reportingperiodstartdatetime=DAY1,
        reportingperiodenddatetime=DAY3, quickmode="true",
    )  # fmt: skip
    assert [(e["id"], rounded(e["values"])) for e in batch["equipments"]] == [(equipment["id"], [480.0])]

    tenant_type = await post(
        platform.api, "/tenanttypes", {"name": unique("Office"), "simplified_code": "OF"}
    )
    tenant = await post(
        platform.api, "/tenants", {"name": unique("tenant"), "tenant_type_id": tenant_type["id"]}
    )
    await post(platform.api, f"/spaces/{site.space_id}/tenants", {"tenant_id": tenant["id"]})
    await post(platform.api, f"/tenants/{tenant['id']}/meters", {"meter_id": b})
    tenant_energy = await eventually(
        lambda: get_report(platform, "tenantenergy", **standard("tenantid", tenant["id"], quickmode="true")),
        lambda r: rounded(r["reporting_period"]["values"]) == [[48.0]],
    )
    assert rounded(tenant_energy["base_period"]["values"]) == [[24.0]]
    bill = await get_report(platform, "tenantbill", **standard("tenantid", tenant["id"], quickmode="true"))
    assert rounded(bill["reporting_period"]["subtotals_input"]) == [48.0]

    # Meter b as a submeter of a: the balance is what b does not account for.
    meter_b = (await platform.api.get(f"/meters/{b}")).json()
    answer = await platform.api.put(
        f"/meters/{b}",
        json={"data": {"name": meter_b["name"], "energy_category_id": meter_b["energy_category"]["id"],
                       "master_meter_id": a}},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    balance = await get_report(
        platform, "metersubmetersbalance", meterid=a, periodtype="daily",
        reportingperiodstartdatetime=DAY1, reportingperiodenddatetime=DAY3, quickmode="true",
    )  # fmt: skip
    assert rounded(balance["reporting_period"]["differences_values"]) == [216.0, 192.0]
    assert rounded(balance["reporting_period"]["difference_in_category"]) == 408.0
    assert [m["id"] for m in balance["submeters"]] == [b]

    # A user narrowed to this space sees it on the dashboard, and nothing else.
    privilege = await post(
        platform.api, "/privileges", {"name": unique("site only"), "data": f'{{"spaces": [{site.space_id}]}}'}
    )
    password = f"pw-{uuid.uuid4().hex}"
    user = {"name": unique("op"), "display_name": "Op", "is_admin": True, "password": password,
            "privilege_id": privilege["id"]}  # fmt: skip
    await post(platform.api, "/users", user)
    async with httpx.AsyncClient(base_url=str(platform.api.base_url), timeout=30) as client:
        login = await client.put("/users/login", json={"data": {"name": user["name"], "password": password}})
        client.headers.update({"User-UUID": login.json()["uuid"], "Token": login.json()["token"]})
        answer = await client.get(
            "/reports/dashboard",
            params={"periodtype": "daily", "reportingperiodstartdatetime": DAY1,
                    "reportingperiodenddatetime": DAY3, "quickmode": "true"},
        )  # fmt: skip
    assert answer.status_code == 200, answer.text
    spaces = answer.json()["spaces"]
    assert [s["space"]["id"] for s in spaces] == [site.space_id]
    assert rounded(spaces[0]["reporting_period"]["subtotals"]) == [552.0]


async def test_every_subject_kind_reports_its_meters_and_every_report_exports(
    platform: Platform, sites: dict[str, Site]
) -> None:
    site = sites["Europe/Brussels"]
    a, b = site.meters["a"], site.meters["b"]
    category = next(
        c["id"] for c in (await platform.api.get("/energycategories")).json() if c["name"] == "Electricity"
    )
    virtual = await post(
        platform.api, "/virtualmeters",
        {"name": unique("a+b"), "energy_category_id": category,
         "expression": {"equation": "x1+x2", "variables": [{"name": "x1", "meter_type": "meter", "meter_id": a},
                                                            {"name": "x2", "meter_type": "meter", "meter_id": b}]}},
    )  # fmt: skip
    await post(platform.api, f"/spaces/{site.space_id}/virtualmeters", {"virtual_meter_id": virtual["id"]})
    store_type = await post(platform.api, "/storetypes", {"name": unique("Shop"), "simplified_code": "SH"})
    store = await post(platform.api, "/stores", {"name": unique("store"), "store_type_id": store_type["id"]})
    await post(platform.api, f"/spaces/{site.space_id}/stores", {"store_id": store["id"]})
    await post(platform.api, f"/stores/{store['id']}/meters", {"meter_id": a})
    # Meter b is priced through its shopfloor's cost center: a flat 0.20 EUR/kWh in January 2026.
    center = await post(platform.api, "/costcenters", {"name": unique("cc")})
    tariff = await post(
        platform.api, "/tariffs",
        {"name": unique("flat"), "unit_of_price": "EUR/kWh", "energy_category_id": category,
         "tariff_type": "timeofuse", "valid_from": "2026-01-01T00:00:00+01:00",
         "valid_through": "2026-02-01T00:00:00+01:00",
         "timeofuse": [{"start_time_of_day": "00:00:00", "end_time_of_day": "23:59:59", "peak_type": "offpeak",
                        "price": 0.2}]},
    )  # fmt: skip
    await post(platform.api, f"/costcenters/{center['id']}/tariffs", {"tariff_id": tariff["id"]})
    shopfloor = await post(
        platform.api, "/shopfloors", {"name": unique("floor"), "cost_center_id": center["id"]}
    )
    await post(platform.api, f"/spaces/{site.space_id}/shopfloors", {"shopfloor_id": shopfloor["id"]})
    await post(platform.api, f"/shopfloors/{shopfloor['id']}/meters", {"meter_id": b})
    combined = await post(platform.api, "/combinedequipments", {"name": unique("plant")})
    await post(
        platform.api, f"/spaces/{site.space_id}/combinedequipments", {"combined_equipment_id": combined["id"]}
    )
    for meter in (a, b):
        await post(platform.api, f"/combinedequipments/{combined['id']}/meters", {"meter_id": meter})

    both_days = {
        "periodtype": "daily",
        "reportingperiodstartdatetime": DAY1,
        "reportingperiodenddatetime": DAY3,
    }
    expected = {
        ("virtualmeter", virtual["id"]): [264.0, 288.0],
        ("store", store["id"]): [[240.0, 240.0]],
        ("shopfloor", shopfloor["id"]): [[24.0, 48.0]],
        ("combinedequipment", combined["id"]): [[264.0, 288.0]],
    }
    for (kind, ident), values in expected.items():
        name = f"{kind}energycategory" if kind == "combinedequipment" else f"{kind}energy"
        params: dict[str, Any] = {f"{kind}id": ident, **both_days, "quickmode": "true"}

        async def energy(name: str = name, params: dict[str, Any] = params) -> list[Any]:
            return list((await get_report(platform, name, **params))["reporting_period"]["values"])

        got = await eventually(energy, lambda found, values=values: rounded(found) == values)  # type: ignore[misc]
        assert rounded(got) == values, name
    async with httpx.AsyncClient(base_url=platform.processes.url("aggregation"), timeout=60) as client:
        synced = await client.post(
            "/internal/bindings/sync", headers={INTERNAL_TOKEN_HEADER: platform.settings.internal_token}
        )
        assert synced.status_code == 200

    async def shopfloor_cost() -> dict[str, Any]:
        return await get_report(
            platform, "shopfloorcost", shopfloorid=shopfloor["id"], **both_days, quickmode="true"
        )

    cost = await eventually(
        shopfloor_cost, lambda r: rounded(r["reporting_period"]["values"]) == [[4.8, 9.6]], within=60
    )
    assert cost["reporting_period"]["units"] == ["EUR"] and rounded(
        cost["reporting_period"]["subtotals"]
    ) == [14.4]
    meter_cost = await get_report(platform, "metercost", meterid=b, **both_days, quickmode="true")
    assert rounded(meter_cost["reporting_period"]["values"]) == [4.8, 9.6]
    unpriced = await get_report(platform, "metercost", meterid=a, **both_days, quickmode="true")
    assert unpriced["reporting_period"]["values"] == [None, None]  # no tariff applies to meter a

    subjects = {"space": site.space_id, "virtualmeter": virtual["id"], "store": store["id"],
                "shopfloor": shopfloor["id"], "combinedequipment": combined["id"]}  # fmt: skip
    routes = [(f"{kind}{report}", {f"{kind}id": ident}) for kind, ident in subjects.items()
              for report in REPORTS[kind]]  # fmt: skip
    routes += [(name, {"meterid": a}) for name in ("meterenergy", "metercost", "metercarbon", "metertrend")]
    routes += [
        ("combinedequipmentbatch", {"spaceid": site.space_id}),
        ("meterbatch", {"spaceid": site.space_id}),
    ]
    for name, subject in routes:
        params = {**subject, **both_days, "baseperiodstartdatetime": "2026-01-10T00:00:00",
                  "baseperiodenddatetime": DAY1}  # fmt: skip
        full = await platform.api.get(f"/reports/{name}", params=params)
        assert full.status_code == 200, (name, full.text)
        load_workbook(io.BytesIO(base64.b64decode(full.json()["excel_bytes_base64"])))
        as_csv = await platform.api.get(f"/reports/{name}", params={**params, "format": "csv"})
        assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv"), name


async def test_whole_days_come_from_the_stored_space_rollups_and_partial_days_from_hours(
    platform: Platform, sites: dict[str, Site]
) -> None:
    site = sites["Asia/Kolkata"]
    table = f'"{platform.schema("aggregation")}".subject_energy_daily'
    where = "kind = 'space' AND subject_id = $1 AND local_date = '2026-01-12'"

    async def stored() -> float | None:
        value = await platform.db.fetchval(f"SELECT energy FROM {table} WHERE {where}", site.space_id)
        return None if value is None else round(value, 6)

    assert await eventually(stored, lambda v: v == 264.0, within=60) == 264.0
    # A (deliberately) wrong stored day shows in a report over whole days, never in one that starts mid-day.
    await platform.db.execute(f"UPDATE {table} SET energy = 999 WHERE {where}", site.space_id)
    try:
        whole = await get_report(
            platform, "spaceenergycategory", spaceid=site.space_id, periodtype="daily",
            reportingperiodstartdatetime=DAY1, reportingperiodenddatetime=DAY3, quickmode="true",
        )  # fmt: skip
        assert rounded(whole["reporting_period"]["values"]) == [[999.0, 288.0]]
        partial = await get_report(
            platform, "spaceenergycategory", spaceid=site.space_id, periodtype="daily",
            reportingperiodstartdatetime="2026-01-12T06:00:00", reportingperiodenddatetime=DAY3, quickmode="true",
        )  # fmt: skip
        assert rounded(partial["reporting_period"]["values"]) == [[11.0 * 18, 288.0]]
    finally:
        await platform.db.execute(f"UPDATE {table} SET energy = 264 WHERE {where}", site.space_id)
