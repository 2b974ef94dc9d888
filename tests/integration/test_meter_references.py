"""Meters carry a cost center and an energy item, spaces a contact and a cost center (MyEMS fields): stored,
shown as references, validated, kept by export/import, and protected from deletion while in use."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support import Platform

pytestmark = pytest.mark.asyncio(loop_scope="session")


def unique(stem: str) -> str:
    return f"{stem} {uuid.uuid4().hex[:6]}"


async def create(platform: Platform, path: str, data: dict[str, Any]) -> int:
    answer = await platform.api.post(f"/{path}", json={"data": data})
    assert answer.status_code == 201, f"POST /{path}: {answer.status_code} {answer.text}"
    return int(answer.json()["id"])


def field_of(answer: Any) -> str:
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    return str(answer.json()["errors"][0]["field"])


async def categories(platform: Platform) -> dict[str, int]:
    return {c["name"]: c["id"] for c in (await platform.api.get("/energycategories")).json()}


async def test_a_meter_keeps_its_cost_center_and_energy_item_through_export_and_import(
    platform: Platform,
) -> None:
    category = await categories(platform)
    electricity = category["Electricity"]
    center = await create(platform, "costcenters", {"name": unique("Plant B")})
    lighting = await create(
        platform, "energyitems", {"name": unique("Lighting"), "energy_category_id": electricity}
    )
    meter = await create(
        platform,
        "meters",
        {"name": unique("Lights"), "energy_category_id": electricity, "cost_center_id": center,
         "energy_item_id": lighting},
    )  # fmt: skip
    got = (await platform.api.get(f"/meters/{meter}")).json()
    assert got["cost_center"]["id"] == center and got["energy_item"]["id"] == lighting
    assert got["energy_item"]["name"].startswith("Lighting")

    exported = (await platform.api.get(f"/meters/{meter}/export")).json()
    exported["name"] = unique("Lights copy")
    imported = await platform.api.post("/meters/import", json={"data": exported})
    assert imported.status_code == 201, imported.text
    copy = (await platform.api.get(f"/meters/{imported.json()['id']}")).json()
    assert copy["cost_center"]["id"] == center and copy["energy_item"]["id"] == lighting

    # Clearing them is allowed; the references are then null again.
    cleared = await platform.api.put(
        f"/meters/{meter}", json={"data": {"name": got["name"], "energy_category_id": electricity}}
    )
    assert cleared.status_code == 200, cleared.text
    again = (await platform.api.get(f"/meters/{meter}")).json()
    assert again["cost_center"] is None and again["energy_item"] is None


async def test_a_meter_refuses_an_item_of_another_category_and_unknown_references(platform: Platform) -> None:
    category = await categories(platform)
    water = await create(platform, "energycategories", {"name": unique("Water"), "unit_of_measure": "m3"})
    item = await create(platform, "energyitems", {"name": unique("Pumps"), "energy_category_id": water})
    base = {"name": unique("Mixed"), "energy_category_id": category["Electricity"]}
    assert field_of(await platform.api.post("/meters", json={"data": {**base, "energy_item_id": item}})) == (
        "energy_item_id"
    )
    assert field_of(await platform.api.post("/meters", json={"data": {**base, "cost_center_id": 10**9}})) == (
        "cost_center_id"
    )
    names = {m["name"] for m in (await platform.api.get("/meters", params={"limit": 1000})).json()}
    assert base["name"] not in names  # nothing stored half-done


async def test_a_space_keeps_its_contact_and_cost_center_and_they_cannot_be_deleted_in_use(
    platform: Platform,
) -> None:
    zone = next(
        z["id"] for z in (await platform.api.get("/timezones")).json() if z["name"] == "Europe/Brussels"
    )
    contact = await create(platform, "contacts", {"name": unique("Site desk"), "email": "desk@example.com"})
    center = await create(platform, "costcenters", {"name": unique("Campus")})
    space = await create(
        platform,
        "spaces",
        {"name": unique("Campus"), "timezone_id": zone, "contact_id": contact, "cost_center_id": center},
    )
    got = (await platform.api.get(f"/spaces/{space}")).json()
    assert got["contact"]["id"] == contact and got["cost_center"]["id"] == center
    assert (
        field_of(
            await platform.api.post(
                "/spaces", json={"data": {"name": unique("Bad"), "timezone_id": zone, "contact_id": 10**9}}
            )
        )
        == "contact_id"
    )
    in_use = await platform.api.delete(f"/costcenters/{center}")
    assert 400 <= in_use.status_code < 500, in_use.text
    assert (await platform.api.get(f"/costcenters/{center}")).status_code == 200
