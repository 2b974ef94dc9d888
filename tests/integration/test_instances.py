"""Installations (`/instances`) through the gateway: details, controllers, device groups, owner and guests.

Errors name the field as the registry does everywhere: `data.<path>` when the body breaks its schema (the
OpenAPI document states the rule), the bare field name when a rule needs the database or other fields
(an unknown reference, a battery without its capacity, a second owner).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from libs.auth import hash_password
from libs.db import Queryable
from proto_schemas import topics
from tests.support import Platform, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(stem: str) -> str:
    return f"{stem} {uuid.uuid4().hex[:6]}"


async def zone_id(platform: Platform, name: str) -> int:
    zones = (await platform.api.get("/timezones")).json()
    return int(next(z["id"] for z in zones if z["name"] == name))


async def new_instance(platform: Platform, **fields: Any) -> int:
    data = {
        "title": unique("Home"),
        "serial": f"SN-{uuid.uuid4().hex[:10]}",
        "timezone_id": await zone_id(platform, "Europe/Amsterdam"),
        **fields,
    }
    answer = await platform.api.post("/instances", json={"data": data})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


async def _has_tenancy(conn: Queryable, schema: str) -> bool:
    """Whether the registry's users belong to service providers (row-level security on, migration 006)."""
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_schema = $1 AND table_name = 'users' AND column_name = 'provider_id'",
            schema,
        )
    )


async def new_user(platform: Platform, stem: str, password: str = "not-used") -> dict[str, Any]:
    """A user straight into the registry's table, so the test needs no user-management API. Where users
    belong to service providers, the user is a guest of a provider of its own."""
    schema = platform.schema("registry")
    name = unique(stem).replace(" ", "-")
    values = (uuid.uuid4(), name, stem.title(), f"{name}@example.com", hash_password(password))
    async with platform.db.acquire() as conn, conn.transaction():
        if not await _has_tenancy(conn, schema):
            row = await conn.fetchrow(
                f'INSERT INTO "{schema}".users (uuid, name, display_name, email, password_hash)'
                " VALUES ($1, $2, $3, $4, $5) RETURNING id, name, NULL::bigint AS provider_id",
                *values,
            )
        else:
            await conn.execute("SELECT set_config('gridfleet.admin', 'on', true)")
            provider = await conn.fetchval(
                f'INSERT INTO "{schema}".providers (uuid, name) VALUES ($1, $2) RETURNING id',
                uuid.uuid4(),
                unique("provider"),
            )
            row = await conn.fetchrow(
                f'INSERT INTO "{schema}".users (uuid, name, display_name, email, password_hash, role,'
                " provider_id) VALUES ($1, $2, $3, $4, $5, 'guest', $6) RETURNING id, name, provider_id",
                *values,
                provider,
            )
    assert row is not None
    return dict(row)


async def move_to_provider(platform: Platform, instance: int, provider_id: int | None) -> None:
    """Where installations belong to service providers, put one in the given provider's (no-op otherwise)."""
    if provider_id is None:
        return
    schema = platform.schema("registry")
    async with platform.db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('gridfleet.admin', 'on', true)")
        await conn.execute(
            f'UPDATE "{schema}".instances SET provider_id = $2 WHERE id = $1', instance, provider_id
        )


async def admin_id(platform: Platform) -> int:
    answer = await platform.api.put(
        "/users/login", json={"data": {"name": "administrator", "password": platform.settings.admin_password}}
    )
    assert answer.status_code == 200, answer.text
    return int(answer.json()["id"])


def problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, f"{answer.status_code} {answer.text}"
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def fields_of(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body.get("errors", [])}


async def test_an_installation_keeps_address_time_zone_and_parameters(platform: Platform) -> None:
    site_name = unique("inst")
    site = await build_site(platform.api, site_name)
    amsterdam = await zone_id(platform, "Europe/Amsterdam")
    title, serial = unique("Villa"), f"34400+{uuid.uuid4().hex[:6]}"
    created = await platform.api.post(
        "/instances",
        json={
            "data": {
                "title": title,
                "type": "home",
                "serial": serial,
                "address": {
                    "street": "Damrak 1",
                    "postal_code": "1012 LG",
                    "city": "Amsterdam",
                    "country": "nl",
                },
                "timezone_id": str(amsterdam),
                "parameters": {
                    "HEMS version": "HEMS2",
                    "Maximum daily power (kW)": 5,
                    "Scripts Enabled": False,
                },
                "root_space_id": site.space_id,
                "description": "pilot",
            }
        },
    )
    assert created.status_code == 201, created.text
    instance = created.json()["id"]
    assert created.headers["location"] == f"/api/v1/instances/{instance}"

    got = (await platform.api.get(f"/instances/{instance}")).json()
    assert got["title"] == title and got["type"] == "home" and got["serial"] == serial
    assert got["address"] == {
        "street": "Damrak 1",
        "postal_code": "1012 LG",
        "city": "Amsterdam",
        "country": "NL",
    }
    assert got["timezone"] == {"id": amsterdam, "name": "Europe/Amsterdam", "utc_offset": "+01:00"}
    assert got["status"] == "active"
    assert got["parameters"] == {
        "HEMS version": "HEMS2",
        "Maximum daily power (kW)": 5,
        "Scripts Enabled": False,
    }
    assert got["root_space"]["id"] == site.space_id and got["root_space"]["name"] == f"{site_name} space"
    assert uuid.UUID(got["root_space"]["uuid"]) and got["description"] == "pilot"
    assert uuid.UUID(got["uuid"])
    created_at = datetime.fromisoformat(got["created_datetime"])
    assert abs((datetime.now(UTC) - created_at).total_seconds()) < 120
    assert got["controllers"] == {"count": 0, "online": 0, "offline": 0, "ping_time": None}

    # PUT replaces the details; the change is visible at once.
    updated = await platform.api.put(
        f"/instances/{instance}",
        json={
            "data": {
                "title": title,
                "type": "commercial",
                "serial": serial,
                "timezone_id": await zone_id(platform, "UTC"),
                "status": "maintenance",
                "parameters": '{"Currency": "EUR"}',  # MyEMS clients send nested JSON as a string
            }
        },
    )
    assert updated.status_code == 200, updated.text
    got = (await platform.api.get(f"/instances/{instance}")).json()
    assert (got["type"], got["status"], got["timezone"]["name"]) == ("commercial", "maintenance", "UTC")
    assert got["parameters"] == {"Currency": "EUR"} and got["root_space"] is None
    assert got["address"] == {"street": None, "postal_code": None, "city": None, "country": None}


async def test_bad_details_are_400_naming_the_field_and_duplicates_409(platform: Platform) -> None:
    amsterdam = await zone_id(platform, "Europe/Amsterdam")
    title, serial = unique("Flat"), f"SN-{uuid.uuid4().hex[:10]}"
    good: dict[str, Any] = {"title": title, "serial": serial, "timezone_id": amsterdam}

    async def refused(data: dict[str, Any], status: int = 400) -> set[str]:
        answer = await platform.api.post("/instances", json={"data": data})
        return fields_of(problem(answer, status))

    assert await refused({**good, "address": {"country": "Netherlands"}}) == {"data.address.country"}
    assert await refused({**good, "address": {"country": "XX"}}) == {"data.address.country"}
    assert await refused({**good, "address": {"zip": "1012"}}) == {"data.address.zip"}
    assert await refused({**good, "status": "on"}) == {"data.status"}
    assert await refused({**good, "type": "x" * 65}) == {"data.type"}
    assert await refused({**good, "timezone_id": 987654}) == {"timezone_id"}
    assert await refused({**good, "root_space_id": 987654321}) == {"root_space_id"}
    assert await refused({**good, "parameters": {"nested": {"a": 1}}}) == {"data.parameters.nested"}
    assert await refused({**good, "parameters": {"empty": None}}) == {"data.parameters.empty"}
    assert await refused({**good, "parameters": {f"k{i}": i for i in range(101)}}) == {"data.parameters"}
    assert await refused({**good, "title": "two\nlines"}) == {"data.title"}
    assert await refused({"title": title}) == {"data.serial", "data.timezone_id"}

    first = await new_instance(platform, **good)
    same_title = await refused({**good, "title": title.upper(), "serial": f"other-{serial}"}, 409)
    assert same_title == {"title"}
    same_serial = await refused({**good, "title": unique("Other")}, 409)
    assert same_serial == {"serial"}
    # Nothing was stored by the refused requests.
    listed = (await platform.api.get("/instances", params={"q": serial})).json()
    assert [row["id"] for row in listed] == [first]

    missing = await platform.api.get("/instances/987654321")
    assert "987654321" in problem(missing, 404)["detail"]
    problem(await platform.api.put("/instances/987654321", json={"data": good}), 404)
    problem(await platform.api.delete("/instances/987654321"), 404)


async def test_a_controller_is_offline_until_heard_from_and_belongs_to_one_installation(
    platform: Platform,
) -> None:
    site = await build_site(platform.api, unique("ctl"))
    instance = await new_instance(platform)
    bound = await platform.api.post(
        f"/instances/{instance}/gateways", json={"data": {"gateway_id": str(site.gateway_id)}}
    )
    assert bound.status_code == 201, bound.text
    again = await platform.api.post(
        f"/instances/{instance}/gateways", json={"data": {"gateway_id": site.gateway_id}}
    )
    assert again.status_code == 201  # binding twice changes nothing

    controllers = (await platform.api.get(f"/instances/{instance}/gateways")).json()
    assert len(controllers) == 1
    controller = controllers[0]
    assert controller["id"] == site.gateway_id and controller["uuid"] == site.gateway_uuid
    assert controller["name"].endswith("gateway")
    assert (controller["status"], controller["last_seen_datetime"], controller["ping_time"]) == (
        "offline",
        None,
        None,
    )

    # Another installation cannot take it: the 409 names the holder.
    other = await new_instance(platform)
    taken = problem(
        await platform.api.post(
            f"/instances/{other}/gateways", json={"data": {"gateway_id": site.gateway_id}}
        ),
        409,
    )
    assert f"installation {instance}" in taken["detail"] and fields_of(taken) == {"gateway_id"}
    unknown = problem(
        await platform.api.post(f"/instances/{other}/gateways", json={"data": {"gateway_id": 987654321}}), 400
    )
    assert fields_of(unknown) == {"gateway_id"}
    problem(
        await platform.api.post(f"/instances/{other}/gateways", json={"data": {"gateway_id": "abc"}}), 400
    )
    problem(
        await platform.api.post(
            "/instances/987654321/gateways", json={"data": {"gateway_id": site.gateway_id}}
        ),
        404,
    )

    # Telemetry makes it online, with its ping time.
    before = datetime.now(UTC).timestamp() * 1000
    async with platform.mqtt() as client:
        await platform.publish_telemetry(
            client,
            site.gateway_uuid,
            [{"point_id": site.points["main"], "ts": datetime.now(UTC).isoformat(), "value": 1.0}],
        )

    async def first_controller() -> dict[str, Any]:
        return dict((await platform.api.get(f"/instances/{instance}/gateways")).json()[0])

    online = await eventually(first_controller, lambda c: c["status"] == "online")
    assert (
        online["last_seen_datetime"] >= before - 1000 and online["ping_time"] == online["last_seen_datetime"]
    )
    summary = (await platform.api.get(f"/instances/{instance}")).json()["controllers"]
    assert summary == {"count": 1, "online": 1, "offline": 0, "ping_time": online["last_seen_datetime"]}

    # A bound controller cannot be deleted; once unbound another installation may take it.
    assert (await platform.api.delete(f"/gateways/{site.gateway_id}")).status_code >= 400
    assert (await platform.api.delete(f"/instances/{instance}/gateways/{site.gateway_id}")).status_code == 204
    problem(await platform.api.delete(f"/instances/{instance}/gateways/{site.gateway_id}"), 404)
    assert (await platform.api.get(f"/instances/{instance}/gateways")).json() == []
    moved = await platform.api.post(
        f"/instances/{other}/gateways", json={"data": {"gateway_id": site.gateway_id}}
    )
    assert moved.status_code == 201, moved.text


async def test_device_groups_one_each_with_checked_capacities(platform: Platform) -> None:
    instance = await new_instance(platform)
    base = f"/instances/{instance}/devicegroups"
    battery = {
        "group": "battery",
        "devices": [{"id": "bat-1", "type": "battery", "vendor": "BYD", "model": "HVS 10.2"}],
        "capacity_wh": 10240,
        "max_charge_w": 5000,
        "max_discharge_w": 5000,
    }
    created = await platform.api.post(base, json={"data": battery})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/api/v1{base}/battery"
    duplicate = problem(await platform.api.post(base, json={"data": battery}), 409)
    assert fields_of(duplicate) == {"group"} and "battery" in duplicate["detail"]

    async def refused(data: dict[str, Any]) -> set[str]:
        return fields_of(problem(await platform.api.post(base, json={"data": data}), 400))

    assert await refused({"group": "solar"}) == {"max_power_w"}
    assert await refused({"group": "solar", "max_power_w": -1}) == {"data.max_power_w"}
    assert await refused({"group": "ev", "max_power_w": "lots"}) == {"data.max_power_w"}
    assert await refused({"group": "wind"}) == {"data.group"}
    assert await refused({"group": "ev", "devices": [{"id": "x"}]}) == {
        "data.devices.0.type",
        "data.devices.0.vendor",
        "data.devices.0.model",
    }
    # A battery needs its capacity and both limits, none of them negative; nothing is stored when refused.
    other = await new_instance(platform)
    missing = problem(
        await platform.api.post(
            f"/instances/{other}/devicegroups", json={"data": {"group": "battery", "max_charge_w": -5}}
        ),
        400,
    )
    assert fields_of(missing) == {"data.max_charge_w"}
    missing = problem(
        await platform.api.post(f"/instances/{other}/devicegroups", json={"data": {"group": "battery"}}), 400
    )
    assert fields_of(missing) == {"capacity_wh", "max_charge_w", "max_discharge_w"}
    assert (await platform.api.get(f"/instances/{other}/devicegroups")).json() == []

    solar = {
        "group": "solar",
        "devices": [{"id": "inv-1", "type": "inverter", "vendor": "SMA", "model": "STP 8.0"}],
        "max_power_w": 8000,
    }
    assert (await platform.api.post(base, json={"data": solar})).status_code == 201
    # One device belongs to one group of the installation.
    clash = {
        "group": "ev",
        "devices": [{"id": "bat-1", "type": "charger", "vendor": "Alfen", "model": "Eve"}],
    }
    assert fields_of(problem(await platform.api.post(base, json={"data": clash}), 409)) == {"devices.0.id"}
    heat_pump = {"id": "hp-1", "type": "heat pump", "vendor": "Daikin", "model": "Altherma"}
    twice = {"group": "hvac", "devices": [heat_pump, heat_pump], "max_power_w": 3000}
    assert fields_of(problem(await platform.api.post(base, json={"data": twice}), 400)) == {"devices.1.id"}

    groups = (await platform.api.get(base)).json()
    assert [g["group"] for g in groups] == ["battery", "solar"]
    assert groups[0]["capacity_wh"] == 10240 and groups[0]["devices"] == battery["devices"]
    assert groups[1]["max_power_w"] == 8000 and groups[1]["max_charge_w"] is None

    changed = await platform.api.put(f"{base}/battery", json={"data": {**battery, "capacity_wh": 15360}})
    assert changed.status_code == 200, changed.text
    assert (await platform.api.get(f"{base}/battery")).json()["capacity_wh"] == 15360
    bad = problem(
        await platform.api.put(f"{base}/battery", json={"data": {**battery, "capacity_wh": -1}}), 400
    )
    assert fields_of(bad) == {"data.capacity_wh"}
    renamed = problem(
        await platform.api.put(f"{base}/battery", json={"data": {**battery, "group": "ev"}}), 400
    )
    assert fields_of(renamed) == {"group"}
    problem(await platform.api.put(f"{base}/hvac", json={"data": {"max_power_w": 3000}}), 404)

    assert (await platform.api.delete(f"{base}/solar")).status_code == 204
    problem(await platform.api.delete(f"{base}/solar"), 404)
    assert [g["group"] for g in (await platform.api.get(base)).json()] == ["battery"]


async def test_at_most_one_owner_and_guests_follow_the_sharing_rules(platform: Platform) -> None:
    instance = await new_instance(platform)
    base = f"/instances/{instance}/users"
    admin = await admin_id(platform)
    guest = await new_user(platform, "guest")

    owner = await platform.api.post(
        base,
        json={
            "data": {
                "user_id": str(admin),
                "role": "owner",
                "share_content": True,
                "share_reports": True,
                "allow_write": True,
            }
        },
    )
    assert owner.status_code == 201, owner.text
    second = problem(
        await platform.api.post(base, json={"data": {"user_id": guest["id"], "role": "owner"}}), 409
    )
    assert second["detail"] == "installation already has an owner: administrator"
    assert fields_of(second) == {"role"}

    # A guest may write to devices only when content is shared with them.
    no_share = problem(
        await platform.api.post(
            base, json={"data": {"user_id": guest["id"], "role": "guest", "allow_write": True}}
        ),
        400,
    )
    assert fields_of(no_share) == {"allow_write"}
    unknown = problem(
        await platform.api.post(base, json={"data": {"user_id": 987654321, "role": "guest"}}), 400
    )
    assert fields_of(unknown) == {"user_id"}
    bad_role = problem(
        await platform.api.post(base, json={"data": {"user_id": guest["id"], "role": "admin"}}), 400
    )
    assert fields_of(bad_role) == {"data.role"}

    added = await platform.api.post(
        base,
        json={"data": {"user_id": guest["id"], "role": "guest", "share_content": True, "allow_write": True}},
    )
    assert added.status_code == 201, added.text
    twice = problem(
        await platform.api.post(base, json={"data": {"user_id": guest["id"], "role": "guest"}}), 409
    )
    assert fields_of(twice) == {"user_id"}

    members = (await platform.api.get(base)).json()
    assert [(m["id"], m["role"]) for m in members] == [(admin, "owner"), (guest["id"], "guest")]
    assert members[1]["name"] == guest["name"] and members[1]["share_content"] is True
    assert (members[1]["share_reports"], members[1]["allow_write"]) == (False, True)
    assert (await platform.api.get(f"/instances/{instance}")).json()["user_count"] == 2

    # The owner leaves; the guest can then be made the owner.
    assert (await platform.api.delete(f"{base}/{admin}")).status_code == 204
    problem(await platform.api.delete(f"{base}/{admin}"), 404)
    promoted = await platform.api.put(f"{base}/{guest['id']}", json={"data": {"role": "owner"}})
    assert promoted.status_code == 200, promoted.text
    back = problem(await platform.api.post(base, json={"data": {"user_id": admin, "role": "owner"}}), 409)
    assert back["detail"] == f"installation already has an owner: {guest['name']}"


async def test_guests_cannot_change_the_settings(platform: Platform) -> None:
    instance = await new_instance(platform, parameters={"icon": "hems"})
    password = uuid.uuid4().hex
    guest = await new_user(platform, "visitor", password)
    await move_to_provider(platform, instance, guest["provider_id"])
    added = await platform.api.post(
        f"/instances/{instance}/users",
        json={"data": {"user_id": guest["id"], "role": "guest", "share_content": True}},
    )
    assert added.status_code == 201, added.text

    async with httpx.AsyncClient(base_url=str(platform.api.base_url), timeout=30) as as_guest:
        login = await as_guest.put(
            "/users/login", json={"data": {"name": guest["name"], "password": password}}
        )
        assert login.status_code == 200, login.text
        as_guest.headers.update({"User-UUID": login.json()["uuid"], "Token": login.json()["token"]})
        current = (await as_guest.get(f"/instances/{instance}")).json()
        assert current["parameters"] == {"icon": "hems"}
        change = {
            "title": current["title"],
            "serial": current["serial"],
            "timezone_id": current["timezone"]["id"],
            "parameters": {"icon": "mine"},
        }
        refused = problem(await as_guest.put(f"/instances/{instance}", json={"data": change}), 403)
        assert "guest" in refused["detail"]
        problem(
            await as_guest.post(f"/instances/{instance}/devicegroups", json={"data": {"group": "ev"}}), 403
        )
        problem(await as_guest.delete(f"/instances/{instance}"), 403)
        # ... but may leave.
        assert (await as_guest.delete(f"/instances/{instance}/users/{guest['id']}")).status_code == 204
    assert (await platform.api.get(f"/instances/{instance}")).json()["parameters"] == {"icon": "hems"}


async def test_list_filters_paginates_and_delete_takes_the_bindings_along(platform: Platform) -> None:
    stem = f"fleet-{uuid.uuid4().hex[:6]}"
    ids = [await new_instance(platform, title=f"{stem}-{i}", serial=f"{stem}-SN{i}") for i in range(5)]
    page = await platform.api.get("/instances", params={"q": stem, "limit": 2, "offset": 2})
    assert page.status_code == 200
    assert page.headers["x-total-count"] == "5"
    assert [row["id"] for row in page.json()] == ids[2:4]
    by_serial = (await platform.api.get("/instances", params={"q": f"{stem}-sn3"})).json()
    assert [row["id"] for row in by_serial] == [ids[3]]
    assert (await platform.api.get("/instances", params={"q": "%"})).json() == []  # wildcards are literal
    problem(await platform.api.get("/instances", params={"limit": 0}), 400)

    site = await build_site(platform.api, unique("del"))
    target = ids[0]
    await platform.api.post(f"/instances/{target}/gateways", json={"data": {"gateway_id": site.gateway_id}})
    await platform.api.post(
        f"/instances/{target}/devicegroups", json={"data": {"group": "hvac", "max_power_w": 3000}}
    )
    await platform.api.post(
        f"/instances/{target}/users", json={"data": {"user_id": await admin_id(platform), "role": "owner"}}
    )
    maintenance = (await platform.api.get(f"/instances/{target}")).json()
    await platform.api.put(
        f"/instances/{target}",
        json={"data": {"title": maintenance["title"], "serial": maintenance["serial"],
                       "timezone_id": maintenance["timezone"]["id"], "status": "maintenance"}},
    )  # fmt: skip
    only = await platform.api.get("/instances", params={"q": stem, "status": "maintenance"})
    assert [row["id"] for row in only.json()] == [target] and only.headers["x-total-count"] == "1"

    async with platform.mqtt() as client:
        await client.subscribe(platform.topic(topics.CONFIG_CHANGED), qos=1)
        await asyncio.sleep(0.2)
        assert (await platform.api.delete(f"/instances/{target}")).status_code == 204

        async def deleted_event() -> dict[str, Any]:
            async for message in client.messages:
                change: dict[str, Any] = orjson.loads(message.payload)
                if change["entity"] == "instance" and change["id"] == target:
                    return change
            raise AssertionError("subscription ended")

        assert (await asyncio.wait_for(deleted_event(), 5))["action"] == "deleted"
    problem(await platform.api.get(f"/instances/{target}"), 404)
    problem(await platform.api.get(f"/instances/{target}/gateways"), 404)
    # The controller is free again.
    rebound = await platform.api.post(
        f"/instances/{ids[1]}/gateways", json={"data": {"gateway_id": site.gateway_id}}
    )
    assert rebound.status_code == 201, rebound.text
