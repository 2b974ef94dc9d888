"""The MyEMS master-data model through the gateway: resources, bindings, export/import/clone, change events."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest

from proto_schemas import topics
from tests.support import Platform, build_site

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(stem: str) -> str:
    return f"{stem} {uuid.uuid4().hex[:6]}"


async def create(platform: Platform, path: str, data: dict[str, Any]) -> int:
    answer = await platform.api.post(f"/{path}", json={"data": data})
    assert answer.status_code == 201, f"POST /{path}: {answer.status_code} {answer.text}"
    return int(answer.json()["id"])


async def test_organisation_resources_follow_myems_result_fields(platform: Platform) -> None:
    contact = await create(
        platform,
        "contacts",
        {"name": unique("Facility desk"), "email": "desk@example.com", "phone": "+31 20 000"},
    )
    cost_center = await create(
        platform, "costcenters", {"name": unique("Building A"), "external_id": "SAP-4711"}
    )
    tenant_type = await create(platform, "tenanttypes", {"name": unique("Office"), "simplified_code": "OF1"})
    tenant = await create(
        platform,
        "tenants",
        {
            "name": unique("Acme"),
            "buildings": "B1",
            "floors": "3",
            "rooms": "301-305",
            "area": 420.5,
            "tenant_type_id": str(tenant_type),  # MyEMS clients send ids as strings
            "is_key_tenant": True,
            "lease_number": "L-2026-01",
            "lease_start_datetime": "2026-01-01T00:00:00+01:00",
            "lease_end_datetime": "2027-01-01T00:00:00+01:00",
            "contact_id": contact,
            "cost_center_id": cost_center,
        },
    )
    got = (await platform.api.get(f"/tenants/{tenant}")).json()
    for field in (
        "id", "name", "uuid", "buildings", "floors", "rooms", "area", "tenant_type", "is_input_counted", "is_key_tenant",
        "lease_number", "lease_start_datetime", "lease_end_datetime", "is_in_lease", "contact", "cost_center",
        "description", "qrcode",
    ):  # fmt: skip
        assert field in got, field
    assert got["tenant_type"]["id"] == tenant_type and got["contact"]["id"] == contact
    assert got["cost_center"]["id"] == cost_center and got["qrcode"] == f"tenant:{got['uuid']}"

    bad_lease = await platform.api.post(
        "/tenants",
        json={"data": {"name": unique("Late"), "tenant_type_id": tenant_type,
                       "lease_start_datetime": "2027-01-01T00:00:00Z", "lease_end_datetime": "2026-01-01T00:00:00Z"}},
    )  # fmt: skip
    assert bad_lease.status_code == 400
    assert bad_lease.json()["errors"][0]["field"] == "lease_end_datetime"
    missing_type = await platform.api.post(
        "/tenants", json={"data": {"name": unique("X"), "tenant_type_id": 987654}}
    )
    assert missing_type.status_code == 400 and missing_type.json()["errors"][0]["field"] == "tenant_type_id"


async def test_lists_are_paginated_and_filtered_by_name(platform: Platform) -> None:
    stem = f"pager-{uuid.uuid4().hex[:6]}"
    for i in range(5):
        await create(platform, "sensors", {"name": f"{stem}-{i}"})
    page = await platform.api.get("/sensors", params={"q": stem, "limit": 2, "offset": 2})
    assert page.status_code == 200
    assert page.headers["x-total-count"] == "5"
    assert [row["name"] for row in page.json()] == [f"{stem}-2", f"{stem}-3"]
    # LIKE wildcards in the filter are taken literally.
    assert (await platform.api.get("/sensors", params={"q": "%"})).json() == []


async def test_export_import_and_clone_reproduce_the_object(platform: Platform) -> None:
    category = next(
        c for c in (await platform.api.get("/energycategories")).json() if c["name"] == "Electricity"
    )
    cost_center = await create(platform, "costcenters", {"name": unique("CC")})
    offline = await create(
        platform,
        "offlinemeters",
        {
            "name": unique("Gas bill"),
            "energy_category_id": category["id"],
            "hourly_high_limit": 50,
            "cost_center_id": cost_center,
        },
    )
    exported = (await platform.api.get(f"/offlinemeters/{offline}/export")).json()
    assert exported["energy_category"]["name"] == "Electricity"
    # Same name is taken: importing a copy under a new name reproduces every other field.
    exported["name"] = exported["name"] + " imported"
    imported_id = (await platform.api.post("/offlinemeters/import", json={"data": exported})).json()["id"]
    imported = (await platform.api.get(f"/offlinemeters/{imported_id}")).json()
    for field in (
        "energy_category",
        "is_counted",
        "hourly_low_limit",
        "hourly_high_limit",
        "cost_center",
        "description",
    ):
        assert imported[field] == exported[field], field
    assert imported["uuid"] != exported["uuid"]

    clone = await platform.api.post(f"/offlinemeters/{offline}/clone")
    assert clone.status_code == 201
    cloned = (await platform.api.get(f"/offlinemeters/{clone.json()['id']}")).json()
    assert cloned["name"] == f"{exported['name'].removesuffix(' imported')} (copy)"
    again = (await platform.api.post(f"/offlinemeters/{offline}/clone")).json()
    assert (await platform.api.get(f"/offlinemeters/{again['id']}")).json()["name"].endswith("(copy) 2")

    duplicate = await platform.api.post("/offlinemeters/import", json={"data": exported})
    assert duplicate.status_code == 409


async def test_bindings_follow_the_matrix_and_protect_deletes(platform: Platform) -> None:
    site = await build_site(platform.api, unique("bind"))
    meter = site.meters["main"]
    equipment = await create(platform, "equipments", {"name": unique("Chiller"), "is_output_counted": True})
    bound = await platform.api.post(
        f"/equipments/{equipment}/meters", json={"data": {"meter_id": str(meter), "is_output": True}}
    )
    assert bound.status_code == 201
    listed = (await platform.api.get(f"/equipments/{equipment}/meters")).json()
    assert [(row["id"], row["is_output"]) for row in listed] == [(meter, True)]
    combined = await create(platform, "combinedequipments", {"name": unique("Chiller plant")})
    await platform.api.post(
        f"/combinedequipments/{combined}/equipments", json={"data": {"equipment_id": equipment}}
    )
    # The meter is bound to a space and an equipment: deleting it says which ones.
    refused = await platform.api.delete(f"/meters/{meter}")
    assert refused.status_code == 409
    assert f"space {site.space_id}" in refused.json()["detail"]
    refused = await platform.api.delete(f"/equipments/{equipment}")
    assert refused.status_code == 409 and f"combined equipment {combined}" in refused.json()["detail"]
    assert (
        await platform.api.delete(f"/combinedequipments/{combined}/equipments/{equipment}")
    ).status_code == 204
    assert (await platform.api.delete(f"/equipments/{equipment}/meters/{meter}")).status_code == 204
    assert (await platform.api.delete(f"/equipments/{equipment}")).status_code == 204
    assert (await platform.api.get(f"/equipments/{equipment}")).status_code == 404
    unknown_child = await platform.api.post(
        f"/spaces/{site.space_id}/sensors", json={"data": {"sensor_id": 987654}}
    )
    assert unknown_child.status_code == 400 and unknown_child.json()["errors"][0]["field"] == "sensor_id"
    unknown_parent = await platform.api.post("/spaces/987654/sensors", json={"data": {"sensor_id": 1}})
    assert unknown_parent.status_code == 404


async def test_virtual_meter_expressions_are_validated_on_save(platform: Platform) -> None:
    site = await build_site(platform.api, unique("vm"), energy_points=("a", "b"))
    category = next(
        c for c in (await platform.api.get("/energycategories")).json() if c["name"] == "Electricity"
    )
    variables = [
        {"name": "x1", "meter_type": "meter", "meter_id": site.meters["a"]},
        {"name": "x2", "meter_type": "meter", "meter_id": site.meters["b"]},
    ]
    good = {
        "name": unique("Net"),
        "energy_category_id": category["id"],
        "expression": {"equation": "x1-x2", "variables": variables},
    }
    vm = await create(platform, "virtualmeters", good)
    stored = (await platform.api.get(f"/virtualmeters/{vm}")).json()
    assert orjson.loads(stored["expression"])["equation"] == "x1-x2"

    async def refused(expression: dict[str, Any], field: str) -> None:
        answer = await platform.api.post(
            "/virtualmeters", json={"data": {**good, "name": unique("Bad"), "expression": expression}}
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["errors"][0]["field"] == field

    await refused({"equation": "x1+x3", "variables": variables}, "expression.equation")
    await refused({"equation": "x1+*x2", "variables": variables}, "expression.equation")
    await refused({"equation": "__import__('os')", "variables": variables}, "expression.equation")
    await refused(
        {"equation": "x1", "variables": [{"name": "x1", "meter_type": "meter", "meter_id": 987654}]},
        "expression.variables.0.meter_id",
    )
    # A virtual meter may use another, but never itself through a chain.
    second = await create(
        platform,
        "virtualmeters",
        {
            **good,
            "name": unique("Outer"),
            "expression": {
                "equation": "v",
                "variables": [{"name": "v", "meter_type": "virtual_meter", "meter_id": vm}],
            },
        },
    )
    loop = await platform.api.put(
        f"/virtualmeters/{vm}",
        json={
            "data": {
                **good,
                "expression": {
                    "equation": "w",
                    "variables": [{"name": "w", "meter_type": "virtual_meter", "meter_id": second}],
                },
            }
        },
    )
    assert loop.status_code == 400 and "depend on themselves" in loop.json()["detail"]


async def test_a_binding_reaches_aggregation_within_seconds_not_at_the_next_timed_sync(
    platform: Platform,
) -> None:
    site = await build_site(platform.api, unique("fast"), energy_points=("a", "b"))
    started = time.monotonic()
    await platform.api.post(
        f"/meters/{site.meters['a']}/points", json={"data": {"point_id": site.points["b"]}}
    )
    table = f'"{platform.schema("aggregation")}".meter_points'

    async def bound() -> bool:
        return bool(await platform.db.fetchval(
            f"SELECT 1 FROM {table} WHERE meter_id = $1 AND point_id = $2", site.meters["a"], site.points["b"]
        ))  # fmt: skip

    while not await bound():
        # The timed re-sync runs every 60 s; 5 s proves the change event carried it (with room for a busy host).
        assert time.monotonic() - started < 5.0, "aggregation did not see the new binding within 5 s"
        await asyncio.sleep(0.02)


async def test_a_registry_change_reaches_the_bus_within_a_second(platform: Platform) -> None:
    async with platform.mqtt() as client:
        await client.subscribe(platform.topic(topics.CONFIG_CHANGED), qos=1)
        await asyncio.sleep(0.2)
        started = time.monotonic()
        created = await create(platform, "contacts", {"name": unique("Bus")})

        async def first_matching() -> float:
            async for message in client.messages:
                change = orjson.loads(message.payload)
                if change["entity"] == "contact" and change["id"] == created:
                    assert change["action"] == "created"
                    return time.monotonic() - started
            raise AssertionError("subscription ended")

        elapsed = await asyncio.wait_for(first_matching(), 5)
    assert elapsed < 1.0


async def test_space_tree_children_submeters_token_rotation_and_point_limits(platform: Platform) -> None:
    site = await build_site(platform.api, unique("tree"))
    child = await create(
        platform, "spaces", {"name": unique("Floor 1"), "parent_space_id": site.space_id, "timezone_id": 1}
    )
    grandchild = await create(
        platform, "spaces", {"name": unique("Room 101"), "parent_space_id": child, "timezone_id": 1}
    )
    children = (await platform.api.get(f"/spaces/{site.space_id}/children")).json()
    assert [c["id"] for c in children] == [child]
    tree = (await platform.api.get("/spaces/tree")).json()
    root = next(node for node in tree if node["id"] == site.space_id)
    assert root["children"][0]["id"] == child and root["children"][0]["children"][0]["id"] == grandchild
    # A space cannot move under its own descendant.
    zones = (await platform.api.get("/timezones")).json()
    cycle = await platform.api.put(
        f"/spaces/{site.space_id}",
        json={"data": {"name": "x", "parent_space_id": grandchild, "timezone_id": zones[0]["id"]}},
    )
    assert cycle.status_code == 400 and cycle.json()["errors"][0]["field"] == "parent_space_id"

    category = next(
        c for c in (await platform.api.get("/energycategories")).json() if c["name"] == "Electricity"
    )
    sub = await create(
        platform,
        "meters",
        {"name": unique("Sub"), "energy_category_id": category["id"], "master_meter_id": site.meters["main"]},
    )
    assert [m["id"] for m in (await platform.api.get(f"/meters/{site.meters['main']}/submeters")).json()] == [
        sub
    ]

    rotated = await platform.api.post(f"/gateways/{site.gateway_id}/token")
    assert rotated.status_code == 200 and rotated.json()["token"] != site.gateway_token

    limits = await platform.api.put(
        f"/pointlimits/{site.points['main']}",
        json={"data": {"name": "ignored", "high_limit": 500.0, "low_limit": 0.0}},
    )
    assert limits.status_code == 200
    point = (await platform.api.get(f"/points/{site.points['main']}")).json()
    assert (point["high_limit"], point["low_limit"], point["name"]) == (500.0, 0.0, "main")
    inverted = await platform.api.put(
        f"/pointlimits/{site.points['main']}", json={"data": {"high_limit": 1.0, "low_limit": 2.0}}
    )
    assert inverted.status_code == 400


async def test_modbus_point_addresses_are_validated_against_the_data_source(platform: Platform) -> None:
    gateway = (await platform.api.post("/gateways", json={"data": {"name": unique("gw")}})).json()
    source = await create(
        platform, "datasources",
        {"name": unique("plc"), "gateway_id": gateway["id"], "protocol": "modbus-tcp", "connection": {"host": "10.0.0.5", "port": 502}},
    )  # fmt: skip
    base = {"name": unique("p"), "data_source_id": source, "object_type": "ANALOG_VALUE", "units": "W"}
    good = {"slave_id": 1, "function_code": 3, "offset": 1, "number_of_registers": 2, "data_format": "float"}
    assert (await platform.api.post("/points", json={"data": {**base, "address": good}})).status_code == 201
    bad = await platform.api.post(
        "/points",
        json={
            "data": {
                **base,
                "name": unique("p"),
                "address": {**good, "function_code": 6, "number_of_registers": 1},
            }
        },
    )
    assert bad.status_code == 400
    fields = [error["field"] for error in bad.json()["errors"]]
    assert "address.function_code" in fields


# Result fields of seed 001's tables for the objects of the walk below.
MYEMS_FIELDS = {
    "energycategories": {"id", "name", "uuid", "unit_of_measure", "kgce", "kgco2e"},
    "costcenters": {"id", "name", "uuid", "external_id"},
    "tariffs": {"id", "name", "uuid", "unit_of_price", "valid_from", "valid_through", "tariff_type", "timeofuse", "block"},
    "gateways": {"id", "name", "uuid", "last_seen_datetime", "status"},
    "datasources": {"id", "name", "uuid", "gateway", "protocol", "connection", "last_seen_datetime", "status"},
    "points": {"id", "name", "data_source", "object_type", "units", "high_limit", "low_limit", "ratio", "is_trend",
               "is_virtual", "address", "description"},
    "meters": {"id", "name", "uuid", "energy_category", "is_counted", "hourly_low_limit", "hourly_high_limit",
               "cost_center", "energy_item", "master_meter", "description", "qrcode"},
    "spaces": {"id", "name", "uuid", "parent_space_id", "area", "timezone", "is_input_counted", "is_output_counted",
               "contact", "cost_center", "description", "qrcode"},
}  # fmt: skip


async def test_the_myems_flow_of_seed_001_works_through_the_gateway(platform: Platform) -> None:
    tag = uuid.uuid4().hex[:6]
    category = await create(
        platform,
        "energycategories",
        {"name": f"Diesel {tag}", "unit_of_measure": "L", "kgce": 0.1229, "kgco2e": 0.8825},
    )
    cost_center = await create(platform, "costcenters", {"name": f"Plant {tag}", "external_id": "ERP-1"})
    tariff = await create(
        platform, "tariffs",
        {"name": f"Block {tag}", "energy_category_id": category, "tariff_type": "block", "unit_of_price": "CNY/L",
         "valid_from": "2020-01-01T00:00:00", "valid_through": "2021-01-01T00:00:00",
         "block": [{"start_amount": "0", "end_amount": "10000", "price": "0.567"},
                   {"start_amount": "10000", "end_amount": "30000", "price": "0.678"},
                   {"start_amount": "30000", "end_amount": "100000", "price": "0.789"}]},
    )  # fmt: skip
    assert (
        await platform.api.post(
            f"/costcenters/{cost_center}/tariffs", json={"data": {"tariff_id": str(tariff)}}
        )
    ).status_code == 201
    assert [t["id"] for t in (await platform.api.get(f"/costcenters/{cost_center}/tariffs")).json()] == [
        tariff
    ]
    gateway = (
        await platform.api.post(
            "/gateways", json={"data": {"name": f"Gateway {tag}", "description": "MyEMS gateway"}}
        )
    ).json()["id"]
    source = await create(
        platform, "datasources",
        {"name": f"PLC {tag}", "gateway_id": gateway, "protocol": "modbus-tcp", "connection": '{"host":"10.1.2.88", "port":502}'},
    )  # fmt: skip
    address = '{"slave_id":1, "function_code":3, "offset":1, "number_of_registers":2, "data_format":"float"}'
    point = await create(
        platform, "points",
        {"name": f"Fuel {tag}", "data_source_id": str(source), "object_type": "ENERGY_VALUE", "units": "L",
         "high_limit": 999999999, "low_limit": 0, "higher_limit": 1099999998.9, "lower_limit": 0, "ratio": 1,
         "is_trend": True, "is_virtual": False, "address": address, "description": None},
    )  # fmt: skip
    meter = await create(
        platform,
        "meters",
        {
            "name": f"Genset {tag}",
            "energy_category_id": category,
            "is_counted": True,
            "hourly_low_limit": 0,
            "hourly_high_limit": 999,
        },
    )
    zones = {z["name"]: z["id"] for z in (await platform.api.get("/timezones")).json()}
    root = await create(
        platform,
        "spaces",
        {
            "name": f"Campus {tag}",
            "timezone_id": zones["Asia/Shanghai"],
            "area": 10000,
            "is_input_counted": True,
        },
    )
    building = await create(
        platform,
        "spaces",
        {"name": f"Building {tag}", "parent_space_id": root, "timezone_id": zones["Asia/Shanghai"]},
    )
    assert (
        await platform.api.post(f"/meters/{meter}/points", json={"data": {"point_id": str(point)}})
    ).status_code == 201
    assert (
        await platform.api.post(f"/spaces/{building}/meters", json={"data": {"meter_id": str(meter)}})
    ).status_code == 201

    for path, ident in (("energycategories", category), ("costcenters", cost_center), ("tariffs", tariff), ("gateways", gateway),
                        ("datasources", source), ("points", point), ("meters", meter), ("spaces", building)):  # fmt: skip
        got = (await platform.api.get(f"/{path}/{ident}")).json()
        assert MYEMS_FIELDS[path] <= set(got), (path, MYEMS_FIELDS[path] - set(got))

    # Export, import under a new name, clone: each reproduces the object with a new id and uuid.
    for path, ident in (
        ("datasources", source),
        ("points", point),
        ("meters", meter),
        ("spaces", building),
        ("gateways", gateway),
    ):
        exported = (await platform.api.get(f"/{path}/{ident}/export")).json()
        exported["name"] = f"{exported['name']} imported"
        imported = await platform.api.post(f"/{path}/import", json={"data": exported})
        assert imported.status_code == 201, (path, imported.text)
        copy = (await platform.api.get(f"/{path}/{imported.json()['id']}")).json()
        assert copy["uuid"] != exported["uuid"]
        ignore = {"id", "uuid", "name", "qrcode", "last_seen_datetime", "status"}
        assert {k: v for k, v in copy.items() if k not in ignore} == {
            k: v for k, v in exported.items() if k not in ignore
        }, path
        cloned = await platform.api.post(f"/{path}/{ident}/clone")
        assert cloned.status_code == 201, (path, cloned.text)
        assert (await platform.api.get(f"/{path}/{cloned.json()['id']}")).json()["name"].endswith("(copy)")

    # Delete in dependency order; while bound, deletes are refused with the holder named.
    refused = await platform.api.delete(f"/meters/{meter}")
    assert refused.status_code == 409 and f"space {building}" in refused.json()["detail"]
    assert (await platform.api.delete(f"/spaces/{building}/meters/{meter}")).status_code == 204
    assert (await platform.api.delete(f"/meters/{meter}/points/{point}")).status_code == 204
    refused = await platform.api.delete(f"/spaces/{root}")
    assert refused.status_code == 409 and f"space {building}" in refused.json()["detail"]
    for path, ident in (("meters", meter), ("points", point), ("spaces", building)):
        deleted = await platform.api.delete(f"/{path}/{ident}")
        assert deleted.status_code == 204, (path, deleted.text)
        assert (await platform.api.get(f"/{path}/{ident}")).status_code == 404


async def test_working_calendars_hold_non_working_days(platform: Platform) -> None:
    calendar = await create(platform, "workingcalendars", {"name": unique("Plant calendar")})
    day = await platform.api.post(
        f"/workingcalendars/{calendar}/nonworkingdays",
        json={"data": {"date_local": "2026-12-25", "description": "Christmas"}},
    )
    assert day.status_code == 201
    again = await platform.api.post(
        f"/workingcalendars/{calendar}/nonworkingdays", json={"data": {"date_local": "2026-12-25"}}
    )
    assert again.status_code == 409
    bad = await platform.api.post(
        f"/workingcalendars/{calendar}/nonworkingdays", json={"data": {"date_local": "2026-02-30"}}
    )
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "data.date_local"
    listed = (await platform.api.get(f"/workingcalendars/{calendar}/nonworkingdays")).json()
    assert [(d["date_local"], d["description"]) for d in listed] == [("2026-12-25", "Christmas")]
    site = await build_site(platform.api, unique("cal"))
    assert (
        await platform.api.post(
            f"/spaces/{site.space_id}/workingcalendars", json={"data": {"working_calendar_id": calendar}}
        )
    ).status_code == 201
    assert (await platform.api.delete(f"/workingcalendars/{calendar}")).status_code == 409
    assert (await platform.api.delete(f"/nonworkingdays/{day.json()['id']}")).status_code == 204


async def test_equipment_parameters_are_constants_points_or_meter_fractions(platform: Platform) -> None:
    site = await build_site(platform.api, unique("param"), energy_points=("in", "out"))
    equipment = await create(platform, "equipments", {"name": unique("Boiler")})
    meters = {m["id"]: m["uuid"] for m in (await platform.api.get("/meters", params={"q": "param"})).json()}
    fraction = {
        "name": "efficiency",
        "parameter_type": "fraction",
        "numerator_meter_uuid": meters[site.meters["out"]],
        "denominator_meter_uuid": meters[site.meters["in"]],
    }
    created = await platform.api.post(f"/equipments/{equipment}/parameters", json={"data": fraction})
    assert created.status_code == 201, created.text
    constant = await platform.api.post(
        f"/equipments/{equipment}/parameters",
        json={"data": {"name": "rated", "parameter_type": "constant", "constant": "120"}},
    )
    assert constant.status_code == 201
    listed = (await platform.api.get(f"/equipments/{equipment}/parameters")).json()
    assert [p["name"] for p in listed] == ["efficiency", "rated"]
    assert listed[0]["numerator_meter"]["id"] == site.meters["out"]
    missing = await platform.api.post(
        f"/equipments/{equipment}/parameters", json={"data": {"name": "p", "parameter_type": "point"}}
    )
    assert missing.status_code == 400
    unknown = await platform.api.post(
        f"/equipments/{equipment}/parameters",
        json={"data": {**fraction, "name": "x", "numerator_meter_uuid": str(uuid.uuid4())}},
    )
    assert unknown.status_code == 400 and unknown.json()["errors"][0]["field"] == "numerator_meter_uuid"


async def test_offline_meter_files_are_accepted_whole_or_refused_with_the_row(platform: Platform) -> None:
    from io import BytesIO

    from openpyxl import Workbook

    category = next(
        c for c in (await platform.api.get("/energycategories")).json() if c["name"] == "Electricity"
    )
    name = unique("Gas")
    meter = await create(platform, "offlinemeters", {"name": name, "energy_category_id": category["id"]})
    good = f"meter,start_datetime,end_datetime,value\n{meter},2026-01-01T00:00:00,2026-02-01T00:00:00,1200.5\n{name},2026-02-01T00:00:00,2026-03-01T00:00:00,980\n"
    answer = await platform.api.post(
        "/offlinemeterfiles",
        files={"file": ("jan-feb.csv", good.encode(), "text/csv")},
        data={"timezone": "Europe/Brussels"},
    )
    assert answer.status_code == 201, answer.text
    assert (answer.json()["status"], answer.json()["rows_accepted"]) == ("done", 2)
    stored = await platform.db.fetch(
        f'SELECT start_datetime, value FROM "{platform.schema("registry")}".offline_meter_values WHERE offline_meter_id = $1 ORDER BY 1',
        meter,
    )
    assert [(r["start_datetime"].isoformat(), r["value"]) for r in stored] == [
        ("2025-12-31T23:00:00+00:00", 1200.5),
        ("2026-01-31T23:00:00+00:00", 980.0),
    ]
    bad = f"meter,start_datetime,end_datetime,value\n{meter},2026-03-01T00:00:00Z,2026-04-01T00:00:00Z,5\n{meter},2026-04-01T00:00:00Z,2026-03-01T00:00:00Z,7\n"
    refused = (
        await platform.api.post("/offlinemeterfiles", files={"file": ("bad.csv", bad.encode(), "text/csv")})
    ).json()
    assert (refused["status"], refused["error_row"]) == ("error", 3)
    assert "end_datetime must be after start_datetime" in refused["error_reason"]
    count = await platform.db.fetchval(
        f'SELECT count(*) FROM "{platform.schema("registry")}".offline_meter_values WHERE offline_meter_id = $1',
        meter,
    )
    assert count == 2  # nothing of the bad file was kept

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["meter", "start_datetime", "end_datetime", "value"])
    sheet.append([name, "2026-05-01T00:00:00+00:00", "2026-06-01T00:00:00+00:00", 42])
    buffer = BytesIO()
    book.save(buffer)
    xlsx = await platform.api.post(
        "/offlinemeterfiles", files={"file": ("may.xlsx", buffer.getvalue(), "application/octet-stream")}
    )
    assert xlsx.json()["status"] == "done", xlsx.text
    restored = await platform.api.get(f"/offlinemeterfiles/{answer.json()['id']}/restore")
    assert restored.content == good.encode()
