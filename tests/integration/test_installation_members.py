"""Owners and guests see the installations they belong to, and nothing else of their provider."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from tests.support import Platform

pytestmark = pytest.mark.asyncio(loop_scope="session")


@asynccontextmanager
async def logged_in(platform: Platform, name: str, password: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=str(platform.api.base_url), timeout=30) as client:
        answer = await client.put("/users/login", json={"data": {"name": name, "password": password}})
        assert answer.status_code == 200, answer.text
        client.headers.update({"User-UUID": answer.json()["uuid"], "Token": answer.json()["token"]})
        yield client


async def test_an_owner_sees_only_the_installations_they_belong_to(platform: Platform) -> None:
    tag = uuid.uuid4().hex[:6]
    provider = (
        await platform.api.post("/serviceproviders", json={"data": {"name": f"Installer {tag}"}})
    ).json()["id"]
    password = f"pw-{uuid.uuid4().hex}"
    admin = {
        "name": f"admin-{tag}",
        "display_name": "Admin",
        "role": "provider_admin",
        "provider_id": provider,
        "password": password,
    }
    assert (await platform.api.post("/users", json={"data": admin})).status_code == 201
    owner = {
        "name": f"owner-{tag}",
        "display_name": "Owner",
        "role": "owner",
        "provider_id": provider,
        "password": password,
    }
    owner_id = (await platform.api.post("/users", json={"data": owner})).json()["id"]
    zones = {z["name"]: z["id"] for z in (await platform.api.get("/timezones")).json()}

    async with logged_in(platform, admin["name"], password) as provider_admin:
        ids = []
        for n in range(2):
            answer = await provider_admin.post(
                "/instances",
                json={
                    "data": {
                        "title": f"Home {tag} {n}",
                        "serial": f"SN-{tag}-{n}",
                        "timezone_id": zones["Europe/Berlin"],
                    }
                },
            )
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
        bound = await provider_admin.post(
            f"/instances/{ids[0]}/users",
            json={
                "data": {
                    "user_id": owner_id,
                    "role": "owner",
                    "share_content": True,
                    "share_reports": True,
                    "allow_write": True,
                }
            },
        )
        assert bound.status_code == 201, bound.text
        assert {i["id"] for i in (await provider_admin.get("/instances", params={"q": tag})).json()} == set(
            ids
        )

    async with logged_in(platform, owner["name"], password) as as_owner:
        assert [i["id"] for i in (await as_owner.get("/instances")).json()] == [ids[0]]
        assert (await as_owner.get(f"/instances/{ids[1]}")).status_code == 404
        assert (await as_owner.get(f"/instances/{ids[0]}")).status_code == 200
        # An owner is not staff: master data of the provider stays out of reach.
        assert (await as_owner.get("/meters")).status_code == 403


async def test_a_privilege_narrows_a_user_to_part_of_the_space_tree(platform: Platform) -> None:
    tag = uuid.uuid4().hex[:6]
    provider = (
        await platform.api.post("/serviceproviders", json={"data": {"name": f"Campus {tag}"}})
    ).json()["id"]
    password = f"pw-{uuid.uuid4().hex}"
    admin = {
        "name": f"padmin-{tag}",
        "display_name": "Admin",
        "role": "provider_admin",
        "provider_id": provider,
        "password": password,
    }
    assert (await platform.api.post("/users", json={"data": admin})).status_code == 201
    zone = next(z["id"] for z in (await platform.api.get("/timezones")).json() if z["name"] == "Europe/Paris")
    category = next(
        c["id"] for c in (await platform.api.get("/energycategories")).json() if c["name"] == "Electricity"
    )

    async with logged_in(platform, admin["name"], password) as api:

        async def make(path: str, data: dict[str, object]) -> int:
            answer = await api.post(path, json={"data": data})
            assert answer.status_code == 201, answer.text
            return int(answer.json()["id"])

        campus = await make("/spaces", {"name": f"Campus {tag}", "timezone_id": zone})
        building = await make(
            "/spaces", {"name": f"Building {tag}", "timezone_id": zone, "parent_space_id": campus}
        )
        floor = await make(
            "/spaces", {"name": f"Floor {tag}", "timezone_id": zone, "parent_space_id": building}
        )
        annex = await make(
            "/spaces", {"name": f"Annex {tag}", "timezone_id": zone, "parent_space_id": campus}
        )
        inside = await make("/meters", {"name": f"Floor meter {tag}", "energy_category_id": category})
        outside = await make("/meters", {"name": f"Annex meter {tag}", "energy_category_id": category})
        await make(f"/spaces/{floor}/meters", {"meter_id": inside})
        await make(f"/spaces/{annex}/meters", {"meter_id": outside})
        bad = await api.post("/privileges", json={"data": {"name": "x", "data": '{"spaces": [987654]}'}})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "data.spaces.0"
        privilege = await make(
            "/privileges", {"name": f"Building only {tag}", "data": f'{{"spaces": [{building}]}}'}
        )
        narrowed = {
            "name": f"op-{tag}",
            "display_name": "Op",
            "role": "operator",
            "password": password,
            "privilege_id": privilege,
        }
        await make("/users", narrowed)

    async with logged_in(platform, str(narrowed["name"]), password) as as_operator:
        assert {s["id"] for s in (await as_operator.get("/spaces")).json()} == {building, floor}
        assert (await as_operator.get(f"/spaces/{annex}")).status_code == 404
        assert [m["id"] for m in (await as_operator.get("/meters")).json()] == [inside]
        assert (await as_operator.get(f"/meters/{outside}")).status_code == 404
