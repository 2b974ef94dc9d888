"""The REST surface through the gateway: MyEMS shapes, credentials, and clear errors for bad input."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support import Platform

pytestmark = pytest.mark.asyncio(loop_scope="session")


def problem(answer: httpx.Response, status: int) -> dict[str, object]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = dict(answer.json())
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def anonymous(platform: Platform) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=str(platform.api.base_url), timeout=30)


async def test_every_route_but_login_needs_a_valid_token(platform: Platform) -> None:
    async with await anonymous(platform) as client:
        for path in ("/gateways", "/points", "/meters", "/spaces", "/timezones", "/reports/meterenergy"):
            problem(await client.get(path), 401)
        problem(
            await client.get("/gateways", headers={"User-UUID": platform.user_uuid, "Token": "0" * 128}), 401
        )
        problem(await client.get("/gateways", headers={"Authorization": "Bearer nope"}), 401)
        # The right token for another user's uuid is refused too.
        problem(
            await client.get("/gateways", headers={"User-UUID": str(uuid.uuid4()), "Token": platform.token}),
            401,
        )
        assert (
            await client.get("/gateways", headers={"Authorization": f"Bearer {platform.token}"})
        ).status_code == 200
        problem(
            await client.put("/users/login", json={"data": {"name": "administrator", "password": "wrong"}}),
            400,
        )


async def test_services_refuse_calls_that_bypass_the_gateway(platform: Platform) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        problem(await client.get(f"{platform.processes.url('registry')}/gateways"), 401)
        problem(await client.get(f"{platform.processes.url('registry')}/internal/points"), 401)
    problem(await platform.api.get("/internal/points"), 404)


async def test_create_returns_201_with_the_id_and_get_returns_myems_fields(platform: Platform) -> None:
    name = f"gw-{uuid.uuid4().hex[:6]}"
    created = await platform.api.post("/gateways", json={"data": {"name": name, "description": "roof"}})
    assert created.status_code == 201
    body = created.json()
    assert len(body["token"]) == 64 and body["uuid"]
    assert created.headers["location"] == f"/api/v1/gateways/{body['id']}"
    fetched = (await platform.api.get(f"/gateways/{body['id']}")).json()
    assert fetched == {
        "id": body["id"],
        "name": name,
        "uuid": body["uuid"],
        "last_seen_datetime": None,
        "status": "offline",
        "description": "roof",
    }
    # Tokens are stored hashed: the clear token is nowhere in the registry's tables.
    stored = await platform.db.fetchval(
        f'SELECT token_digest FROM "{platform.schema("registry")}".gateways WHERE id = $1', body["id"]
    )
    assert stored != body["token"] and len(stored) == 64


async def test_myems_clients_sending_text_plain_and_string_ids_are_understood(platform: Platform) -> None:
    gateway = (
        await platform.api.post("/gateways", json={"data": {"name": f"gw-{uuid.uuid4().hex[:6]}"}})
    ).json()
    answer = await platform.api.post(
        "/datasources",
        content=f'{{"data": {{"name": "ds-{uuid.uuid4().hex[:6]}", "gateway_id": "{gateway["id"]}", '
        '"protocol": "modbus-tcp", "connection": "{\\"host\\": \\"10.1.2.88\\", \\"port\\": 502}"}}',
        headers={"Content-Type": "text/plain"},
    )
    assert answer.status_code == 201, answer.text
    datasource = (await platform.api.get(f"/datasources/{answer.json()['id']}")).json()
    assert datasource["gateway"]["id"] == gateway["id"]
    assert datasource["connection"] == '{"host": "10.1.2.88", "port": 502}'


@pytest.mark.parametrize(
    ("path", "data", "field"),
    [
        ("/gateways", {}, "data.name"),
        ("/gateways", {"name": "   "}, "data.name"),
        ("/datasources", {"name": "x", "gateway_id": 1, "protocol": "carrier-pigeon"}, "data.protocol"),
        ("/datasources", {"name": "x", "gateway_id": 999_999_999, "protocol": "mqtt"}, "gateway_id"),
        (
            "/points",
            {"name": "x", "data_source_id": 1, "object_type": "ENERGY_VALUE", "ratio": 0},
            "data.ratio",
        ),
        (
            "/points",
            {"name": "x", "data_source_id": "abc", "object_type": "ENERGY_VALUE"},
            "data.data_source_id",
        ),
        ("/meters", {"name": "x", "energy_category_id": 1, "hourly_low_limit": -1}, "data.hourly_low_limit"),
        ("/meters", {"name": "x", "energy_category_id": 424242}, "energy_category_id"),
        ("/spaces", {"name": "x", "timezone_id": 999_999}, "timezone_id"),
        ("/spaces", {"name": "x", "timezone_id": 1, "latitude": 91}, "data.latitude"),
        ("/energycategories", {"name": "x", "unit_of_measure": "kWh", "surprise": 1}, "data.surprise"),
    ],
)
async def test_bad_input_is_a_400_problem_naming_the_field(
    platform: Platform, path: str, data: dict[str, object], field: str
) -> None:
    body = problem(await platform.api.post(path, json={"data": data}), 400)
    assert field in [error["field"] for error in body["errors"]]  # type: ignore[attr-defined]


async def test_unknown_ids_are_404_and_bodies_outside_the_envelope_are_400(platform: Platform) -> None:
    for path in (
        "/gateways/987654321",
        "/points/987654321",
        "/meters/987654321",
        "/spaces/987654321",
        "/timezones/987654",
    ):
        problem(await platform.api.get(path), 404)
    problem(await platform.api.get("/nothing-here"), 404)
    problem(await platform.api.post("/gateways", json={"name": "not wrapped"}), 400)
    problem(
        await platform.api.post(
            "/gateways", content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        400,
    )


async def test_timezones_list_every_iana_zone_with_its_standard_offset(platform: Platform) -> None:
    zones = {zone["name"]: zone for zone in (await platform.api.get("/timezones")).json()}
    assert len(zones) > 400
    assert zones["Europe/Amsterdam"]["utc_offset"] == "+01:00"
    assert zones["Asia/Kolkata"]["description"] == "(UTC+05:30) Asia/Kolkata"
    assert zones["America/St_Johns"]["utc_offset"] == "-03:30"


async def test_a_point_bound_to_a_meter_cannot_be_deleted(platform: Platform) -> None:
    from tests.support import build_site

    site = await build_site(platform.api, f"del-{uuid.uuid4().hex[:6]}")
    body = problem(await platform.api.delete(f"/points/{site.points['main']}"), 409)
    assert f"meter {site.meters['main']}" in str(body["detail"])
    assert (
        await platform.api.delete(f"/meters/{site.meters['main']}/points/{site.points['main']}")
    ).status_code == 204
    assert (await platform.api.delete(f"/points/{site.points['main']}")).status_code == 204
    problem(await platform.api.get(f"/points/{site.points['main']}"), 404)


async def test_report_parameters_are_validated(platform: Platform) -> None:
    base: dict[str, str | int] = {
        "meterid": 1,
        "reportingperiodstartdatetime": "2026-01-01T00:00:00",
        "reportingperiodenddatetime": "2026-01-02T00:00:00",
    }
    body = problem(
        await platform.api.get("/reports/meterenergy", params={**base, "periodtype": "fortnightly"}), 400
    )
    assert body["errors"][0]["field"] == "periodtype"  # type: ignore[index]
    body = problem(
        await platform.api.get(
            "/reports/meterenergy",
            params={**base, "periodtype": "daily", "reportingperiodenddatetime": "yesterday"},
        ),
        400,
    )
    assert body["errors"][0]["field"] == "reportingperiodenddatetime"  # type: ignore[index]
    problem(
        await platform.api.get(
            "/reports/meterenergy", params={**base, "meterid": 987654321, "periodtype": "daily"}
        ),
        404,
    )


async def test_the_gateway_serves_one_openapi_document_for_api_v1(platform: Platform) -> None:
    async with await anonymous(platform) as client:
        root = platform.processes.url("gateway")
        doc = (await client.get(f"{root}/openapi.json")).json()
        assert (await client.get(f"{root}/docs")).status_code == 200
    paths = doc["paths"]
    for path in (
        "/api/v1/users/login",
        "/api/v1/gateways",
        "/api/v1/meters/{meter_id}/points",
        "/api/v1/reports/meterenergy",
    ):
        assert path in paths
    assert not [p for p in paths if "/internal" in p]


async def test_odd_addresses_and_unstorable_values_are_clear_4xx_never_5xx(platform: Platform) -> None:
    # Control characters and encoded separators never reach (or redirect) a service.
    for path in ("/gateways/%01", "/timezones/%0D", "/gateways/1%2Fdatasources", "/gateways/1%3Fx"):
        problem(await platform.api.get(path), 404)
    listed = await platform.api.get("/gateways/")
    assert listed.status_code == 200 and "location" not in listed.headers
    # Values the database cannot hold are bad input.
    problem(await platform.api.get("/meters/9223372036854775808"), 400)
    problem(await platform.api.get("/timezones/2147483648"), 400)
    problem(await platform.api.post("/gateways", json={"data": {"name": "a\u0000b"}}), 400)
    problem(await platform.api.post("/shopfloors", json={"data": {"name": "x", "area": None}}), 400)
    problem(await platform.api.post("/gateways/import", json={"data": {}}), 400)
    from tests.support import build_site

    site = await build_site(platform.api, f"far-{uuid.uuid4().hex[:6]}")
    far: dict[str, str | int] = {
        "meterid": site.meters["main"], "periodtype": "daily", "reportingperiodstartdatetime": "0001-01-01T00:00:00",
        "reportingperiodenddatetime": "0001-01-02T00:00:00",
    }  # fmt: skip
    problem(await platform.api.get("/reports/meterenergy", params=far), 400)
