"""Energy-item, offline-meter and weekly reports, end to end against hand-computed values.

The fixture is one space in Europe/Brussels (summer time from 29 March 2026, 02:00 -> 03:00, and back on
25 October, 03:00 -> 02:00) with three offline meters, uploaded as one file in local time:

* `lighting` (energy item Lighting, priced 0.20 EUR/kWh through its cost center): 1 kWh in every real hour
  from Monday 16 March to Monday 6 April (503 hours: one hour is skipped) and from Monday 19 October to
  Monday 2 November (337 hours: one hour is repeated);
* `hvac` (energy item HVAC): 2 kWh in every real hour of the March weeks (1006 kWh);
* `plain` (no energy item): 1 kWh in every real hour of the March weeks (503 kWh).

Hence a local day holds 24 kWh of lighting, 23 on 29 March and 25 on 25 October, and the week of each change
167 and 169 hours of it. Meters themselves carry no energy item (the registry refuses one), so items reach
spaces, equipment and combined equipment through offline (and virtual) meters.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from libs.service import INTERNAL_TOKEN_HEADER
from tests.integration.test_identity import category_id, create_user, created, log_in, timezone_id
from tests.support import Platform, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

ZONE = "Europe/Brussels"
SHARING = 117  # the loopback address the sharing test logs in from (see test_identity.loopback)
MARCH = ("2026-03-16T00:00:00", "2026-04-06T00:00:00")
OCTOBER = ("2026-10-19T00:00:00", "2026-11-02T00:00:00")
AROUND_SPRING = ("2026-03-28T00:00:00", "2026-03-31T00:00:00")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def rounded(values: Any) -> Any:
    if isinstance(values, list):
        return [rounded(v) for v in values]
    return None if values is None else round(values, 6)


async def post(api: httpx.AsyncClient, path: str, data: dict[str, Any]) -> dict[str, Any]:
    answer = await api.post(path, json={"data": data})
    assert answer.status_code == 201, f"POST {path}: {answer.status_code} {answer.text}"
    return dict(answer.json())


async def get_report(platform: Platform, name: str, **params: Any) -> dict[str, Any]:
    answer = await platform.api.get(f"/reports/{name}", params={"quickmode": "true", **params})
    assert answer.status_code == 200, f"{name}: {answer.status_code} {answer.text}"
    return dict(answer.json())


def span(period: tuple[str, str], periodtype: str) -> dict[str, str]:
    return {
        "periodtype": periodtype,
        "reportingperiodstartdatetime": period[0],
        "reportingperiodenddatetime": period[1],
    }


@pytest.fixture(scope="module")
async def fleet(platform: Platform) -> dict[str, Any]:
    api = platform.api
    site = await build_site(api, unique("items"), timezone=ZONE, energy_points=())
    category = next(
        c["id"] for c in (await api.get("/energycategories")).json() if c["name"] == "Electricity"
    )
    items = {
        name: (await post(api, "/energyitems", {"name": unique(name), "energy_category_id": category}))["id"]
        for name in ("Lighting", "HVAC")
    }
    center = await post(api, "/costcenters", {"name": unique("cc")})
    tariff = await post(
        api, "/tariffs",
        {"name": unique("flat"), "unit_of_price": "EUR/kWh", "energy_category_id": category,
         "tariff_type": "timeofuse", "valid_from": "2026-03-01T00:00:00+01:00",
         "valid_through": "2026-05-01T00:00:00+02:00",
         "timeofuse": [{"start_time_of_day": "00:00:00", "end_time_of_day": "23:59:59", "peak_type": "offpeak",
                        "price": 0.2}]},
    )  # fmt: skip
    await post(api, f"/costcenters/{center['id']}/tariffs", {"tariff_id": tariff["id"]})
    meters = {
        "lighting": await post(
            api, "/offlinemeters",
            {"name": unique("lighting"), "energy_category_id": category, "energy_item_id": items["Lighting"],
             "cost_center_id": center["id"]},
        ),
        "hvac": await post(
            api, "/offlinemeters",
            {"name": unique("hvac"), "energy_category_id": category, "energy_item_id": items["HVAC"]},
        ),
        "plain": await post(api, "/offlinemeters", {"name": unique("plain"), "energy_category_id": category}),
    }  # fmt: skip
    ids = {name: meter["id"] for name, meter in meters.items()}
    for ident in ids.values():
        await post(api, f"/spaces/{site.space_id}/offlinemeters", {"offline_meter_id": ident})
    rows = [
        (ids["lighting"], *MARCH, 503),
        (ids["lighting"], *OCTOBER, 337),
        (ids["hvac"], *MARCH, 1006),
        (ids["plain"], *MARCH, 503),
    ]
    content = "meter,start_datetime,end_datetime,value\n" + "".join(
        f"{m},{a},{b},{v}\n" for m, a, b, v in rows
    )
    upload = await api.post(
        "/offlinemeterfiles",
        files={"file": ("spring-autumn.csv", content.encode(), "text/csv")},
        data={"timezone": ZONE},
    )
    assert upload.status_code == 201 and upload.json()["status"] == "done", upload.text

    equipment = await post(api, "/equipments", {"name": unique("ahu")})
    await post(api, f"/spaces/{site.space_id}/equipments", {"equipment_id": equipment["id"]})
    for name in ("lighting", "hvac", "plain"):
        await post(
            api,
            f"/equipments/{equipment['id']}/offlinemeters",
            {"offline_meter_id": ids[name], "is_output": False},
        )
    combined = await post(api, "/combinedequipments", {"name": unique("plant")})
    await post(api, f"/spaces/{site.space_id}/combinedequipments", {"combined_equipment_id": combined["id"]})
    for name in ("hvac", "plain"):
        await post(
            api,
            f"/combinedequipments/{combined['id']}/offlinemeters",
            {"offline_meter_id": ids[name], "is_output": False},
        )
    async with httpx.AsyncClient(base_url=platform.processes.url("aggregation"), timeout=60) as client:
        synced = await client.post(
            "/internal/bindings/sync", headers={INTERNAL_TOKEN_HEADER: platform.settings.internal_token}
        )
        assert synced.status_code == 200, synced.text

    async def weeks() -> dict[str, Any]:
        return await get_report(
            platform, "spaceenergycategory", spaceid=site.space_id, **span(MARCH, "weekly")
        )

    # The file is taken in once the whole three weeks add up (4 kWh in each of the 503 hours).
    await eventually(weeks, lambda r: rounded(r["reporting_period"]["subtotals"]) == [2012.0], 90)
    return {
        "space": site.space_id,
        "items": items,
        "meters": ids,
        "equipment": equipment["id"],
        "combined": combined["id"],
    }


async def test_energy_item_reports_split_spaces_and_equipment_by_item_per_local_day(
    platform: Platform, fleet: dict[str, Any]
) -> None:
    items = fleet["items"]
    subjects = {
        "spaceenergyitem": ("spaceid", fleet["space"], {"Lighting": 1, "HVAC": 2}),
        "equipmentenergyitem": ("equipmentid", fleet["equipment"], {"Lighting": 1, "HVAC": 2}),
        "combinedequipmentenergyitem": ("combinedequipmentid", fleet["combined"], {"HVAC": 2}),
    }
    for report, (key, ident, per_hour) in subjects.items():

        async def fetch(report: str = report, key: str = key, ident: int = ident) -> dict[str, Any]:
            return await get_report(platform, report, **{key: ident}, **span(MARCH, "daily"))

        expected_ids = [items[name] for name in per_hour]
        found = await eventually(
            fetch,
            lambda r, n=len(per_hour): len(r["reporting_period"]["energy_item_ids"]) == n,  # type: ignore[misc]
            60,
        )
        section = found["reporting_period"]
        # One series per item (the meter without an item is in no series), in the item's name.
        assert section["energy_item_ids"] == expected_ids, report
        assert [n.split("-")[0] for n in section["names"]] == list(per_hour), report
        assert rounded(section["subtotals"]) == [503.0 * rate for rate in per_hour.values()], report
        # 21 local days; the 14th (29 March) has 23 hours.
        for values, rate in zip(section["values"], per_hour.values(), strict=True):
            assert rounded(values) == [24.0 * rate] * 13 + [23.0 * rate] + [24.0 * rate] * 7, report
        assert section["timestamps"][0][13] == "2026-03-29T00:00:00+01:00"
        assert section["timestamps"][0][14] == "2026-03-30T00:00:00+02:00"
        assert section["quality"] == ["manual"] * len(per_hour), report

    # The energy-category report of the same space counts the meter without an item too.
    category = await get_report(
        platform, "spaceenergycategory", spaceid=fleet["space"], **span(MARCH, "daily")
    )
    assert rounded(category["reporting_period"]["subtotals"]) == [503.0 * 4]


async def test_offline_meter_energy_and_cost_per_local_day(platform: Platform, fleet: dict[str, Any]) -> None:
    lighting = fleet["meters"]["lighting"]
    energy = await get_report(
        platform,
        "offlinemeterenergy",
        offlinemeterid=lighting,
        **span(AROUND_SPRING, "daily"),
        baseperiodstartdatetime="2026-03-20T00:00:00",
        baseperiodenddatetime="2026-03-23T00:00:00",
    )
    section = energy["reporting_period"]
    assert section["timestamps"] == [
        "2026-03-28T00:00:00+01:00",
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
    ]
    assert rounded(section["values"]) == [24.0, 23.0, 24.0]
    assert rounded(section["total_in_category"]) == 71.0
    assert rounded(energy["base_period"]["values"]) == [24.0, 24.0, 24.0]
    assert energy["offline_meter"]["timezone"] == ZONE

    async def cost() -> dict[str, Any]:
        return await get_report(
            platform, "offlinemetercost", offlinemeterid=lighting, **span(AROUND_SPRING, "daily")
        )

    priced = await eventually(cost, lambda r: rounded(r["reporting_period"]["values"]) == [4.8, 4.6, 4.8], 60)
    assert rounded(priced["reporting_period"]["total_in_category"]) == rounded(71 * 0.2)

    # The meter without a cost center has energy but no cost (unknown, not zero).
    hvac = await get_report(
        platform, "offlinemetercost", offlinemeterid=fleet["meters"]["hvac"], **span(AROUND_SPRING, "daily")
    )
    assert hvac["reporting_period"]["values"] == [None, None, None]
    by_uuid = (await platform.api.get(f"/offlinemeters/{fleet['meters']['hvac']}")).json()["uuid"]
    again = await get_report(
        platform, "offlinemeterenergy", offlinemeteruuid=by_uuid, **span(AROUND_SPRING, "daily")
    )
    assert rounded(again["reporting_period"]["values"]) == [48.0, 46.0, 48.0]


async def test_weeks_start_on_local_monday_and_hold_167_or_169_hours_across_dst(
    platform: Platform, fleet: dict[str, Any]
) -> None:
    lighting = fleet["meters"]["lighting"]
    spring = await get_report(
        platform, "offlinemeterenergy", offlinemeterid=lighting, **span(MARCH, "weekly")
    )
    assert spring["reporting_period"]["timestamps"] == [
        "2026-03-16T00:00:00+01:00",
        "2026-03-23T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
    ]
    assert rounded(spring["reporting_period"]["values"]) == [168.0, 167.0, 168.0]

    autumn = await get_report(
        platform, "offlinemeterenergy", offlinemeterid=lighting, **span(OCTOBER, "weekly")
    )
    assert autumn["reporting_period"]["timestamps"] == [
        "2026-10-19T00:00:00+02:00",
        "2026-10-26T00:00:00+01:00",
    ]
    assert rounded(autumn["reporting_period"]["values"]) == [169.0, 168.0]

    # A report from a Wednesday is labelled by the Monday of its first week and holds what is in range.
    midweek = await get_report(
        platform,
        "spaceenergycategory",
        spaceid=fleet["space"],
        periodtype="weekly",
        reportingperiodstartdatetime="2026-03-25T00:00:00",
        reportingperiodenddatetime="2026-04-06T00:00:00",
    )
    section = midweek["reporting_period"]
    assert section["timestamps"] == [["2026-03-23T00:00:00+01:00", "2026-03-30T00:00:00+02:00"]]
    # Wednesday 25 to Monday 30 March: 5 days, one of 23 hours = 119 hours at 4 kWh; then a whole week.
    assert rounded(section["values"]) == [[119.0 * 4, 168.0 * 4]]


async def test_owners_and_guests_sharing_reports_read_their_installations_only(platform: Platform) -> None:
    """Seed 000: an installation's owner reads its reports, a guest only with "share reports"; nobody reads
    another installation's (a 404, as for another provider's subject)."""
    tag = uuid.uuid4().hex[:6]
    provider = await created(platform.api, "/serviceproviders", {"name": f"reports {tag}"})
    admin_account = await create_user(platform.api, "provider_admin", provider_id=provider)
    admin = await log_in(platform, admin_account.name, admin_account.password, at=SHARING)
    sessions = [admin]
    try:
        sites = [await build_site(admin.api, unique(f"home{n}"), energy_points=()) for n in (1, 2)]
        category = await category_id(admin.api)
        offline = await created(
            admin.api, "/offlinemeters", {"name": unique("gas"), "energy_category_id": category}
        )
        await created(admin.api, f"/spaces/{sites[0].space_id}/offlinemeters", {"offline_meter_id": offline})
        upload = await admin.api.post(
            "/offlinemeterfiles",
            files={"file": ("day.csv", f"meter,start_datetime,end_datetime,value\n{offline},2026-02-02T00:00:00,2026-02-03T00:00:00,24\n".encode(), "text/csv")},
            data={"timezone": "Europe/Amsterdam"},
        )  # fmt: skip
        assert upload.status_code == 201 and upload.json()["status"] == "done", upload.text
        # A boiler of the first home, metered by an offline meter bound to the boiler only.
        boiler = await created(admin.api, "/equipments", {"name": unique("boiler")})
        await created(admin.api, f"/spaces/{sites[0].space_id}/equipments", {"equipment_id": boiler})
        boiler_meter = await created(
            admin.api, "/offlinemeters", {"name": unique("boiler gas"), "energy_category_id": category}
        )
        await created(
            admin.api,
            f"/equipments/{boiler}/offlinemeters",
            {"offline_meter_id": boiler_meter, "is_output": False},
        )
        tz = await timezone_id(admin.api)
        installations = [
            await created(
                admin.api,
                "/instances",
                {
                    "title": unique(f"home{n}"),
                    "serial": f"R-{tag}-{n}",
                    "timezone_id": tz,
                    "root_space_id": site.space_id,
                },
            )
            for n, site in enumerate(sites)
        ]
        members: dict[str, tuple[int, dict[str, Any]]] = {
            "owner": (0, {"role": "owner"}),
            "sharing guest": (0, {"role": "guest", "share_reports": True}),
            "guest": (0, {"role": "guest", "share_reports": False}),
            "other owner": (1, {"role": "owner"}),
        }
        apis: dict[str, httpx.AsyncClient] = {}
        for label, (index, membership) in members.items():
            account = await create_user(admin.api, membership["role"])
            await created(
                admin.api, f"/instances/{installations[index]}/users", {"user_id": account.id, **membership}
            )
            session = await log_in(platform, account.name, account.password, at=SHARING)
            sessions.append(session)
            apis[label] = session.api

        day: dict[str, Any] = {"periodtype": "daily", "reportingperiodstartdatetime": "2026-02-02T00:00:00",
               "reportingperiodenddatetime": "2026-02-03T00:00:00", "quickmode": "true"}  # fmt: skip
        space: dict[str, Any] = {"spaceid": sites[0].space_id, **day}

        async def owner_reads() -> httpx.Response:
            return await apis["owner"].get("/reports/spaceenergycategory", params=space)

        answer = await eventually(
            owner_reads,
            lambda a: a.status_code == 200 and rounded(a.json()["reporting_period"]["values"]) == [[24.0]],
            60,
        )
        assert answer.status_code == 200, answer.text
        shared = await apis["sharing guest"].get("/reports/spaceenergycategory", params=space)
        assert shared.status_code == 200 and rounded(shared.json()["reporting_period"]["values"]) == [[24.0]]
        meter = await apis["sharing guest"].get(
            "/reports/offlinemeterenergy", params={"offlinemeterid": offline, **day}
        )
        assert meter.status_code == 200 and rounded(meter.json()["reporting_period"]["values"]) == [24.0]

        for name, params in (
            ("spaceenergycategory", space),
            ("offlinemeterenergy", {"offlinemeterid": offline, **day}),
        ):
            withheld = await apis["guest"].get(f"/reports/{name}", params=params)
            assert withheld.status_code == 403 and "share" in withheld.json()["detail"], withheld.text
            foreign = await apis["other owner"].get(f"/reports/{name}", params=params)
            assert foreign.status_code == 404, foreign.text
        batch = await apis["other owner"].get("/reports/equipmentbatch", params=space)
        assert batch.status_code == 404, batch.text
        # What is bound to the installation's equipment is the installation's too.
        for name, params in (
            ("equipmentbatch", space),
            ("equipmentenergycategory", {"equipmentid": boiler, **day}),
            ("offlinemeterenergy", {"offlinemeterid": boiler_meter, **day}),
        ):
            assert (await apis["owner"].get(f"/reports/{name}", params=params)).status_code == 200, name
            assert (await apis["other owner"].get(f"/reports/{name}", params=params)).status_code == 404, name
        listed = (await apis["owner"].get("/reports/equipmentbatch", params=space)).json()["equipments"]
        assert [e["id"] for e in listed] == [boiler]
        own = await apis["other owner"].get(
            "/reports/spaceenergycategory", params={**space, "spaceid": sites[1].space_id}
        )
        assert own.status_code == 200 and own.json()["space"]["id"] == sites[1].space_id  # no meters yet

        # The dashboard of each shows the root space of the installations sharing their reports, and no other.
        for label, spaces in (
            ("owner", [sites[0].space_id]),
            ("guest", []),
            ("other owner", [sites[1].space_id]),
        ):
            board = await apis[label].get("/reports/dashboard", params=day)
            assert board.status_code == 200, board.text
            assert [s["space"]["id"] for s in board.json()["spaces"]] == spaces, label
        mine = (await apis["owner"].get("/reports/dashboard", params=day)).json()["spaces"][0]
        assert rounded(mine["reporting_period"]["subtotals"]) == [24.0]
    finally:
        for session in sessions:
            await session.api.aclose()
