"""Tariffs through the gateway: MyEMS bodies and results, rules refused by field, cost-center binding."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.support import Platform

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Seed 001's examples, as MyEMS clients send them.
TIMEOFUSE: list[dict[str, Any]] = [
    {"start_time_of_day": "00:00:00", "end_time_of_day": "05:59:59", "peak_type": "offpeak", "price": 0.345},
    {"start_time_of_day": "06:00:00", "end_time_of_day": "07:59:59", "peak_type": "midpeak", "price": 0.708},
    {"start_time_of_day": "08:00:00", "end_time_of_day": "10:59:59", "peak_type": "onpeak", "price": 1.159},
    {"start_time_of_day": "11:00:00", "end_time_of_day": "17:59:59", "peak_type": "midpeak", "price": 0.708},
    {"start_time_of_day": "18:00:00", "end_time_of_day": "20:59:59", "peak_type": "onpeak", "price": 1.159},
    {"start_time_of_day": "21:00:00", "end_time_of_day": "21:59:59", "peak_type": "midpeak", "price": 0.708},
    {"start_time_of_day": "22:00:00", "end_time_of_day": "23:59:59", "peak_type": "offpeak", "price": 0.345},
]
BLOCKS: list[dict[str, Any]] = [
    {"start_amount": "0", "end_amount": "10000", "price": "0.567"},
    {"start_amount": "10000", "end_amount": "30000", "price": "0.678"},
    {"start_amount": "30000", "end_amount": "100000", "price": "0.789"},
]
RESULT_FIELDS = {
    "id", "name", "uuid", "unit_of_price", "valid_from", "valid_through", "tariff_type", "timeofuse", "block",
}  # fmt: skip


def unique(stem: str) -> str:
    return f"{stem} {uuid.uuid4().hex[:6]}"


def ms(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000


async def electricity(platform: Platform) -> int:
    categories = (await platform.api.get("/energycategories")).json()
    return int(next(c["id"] for c in categories if c["name"] == "Electricity"))


async def created(answer: httpx.Response) -> int:
    assert answer.status_code == 201, f"{answer.status_code} {answer.text}"
    return int(answer.json()["id"])


def timeofuse_tariff(category: int, **changes: Any) -> dict[str, Any]:
    return {
        "name": unique("TOU 2020 H1"),
        "energy_category_id": category,
        "tariff_type": "timeofuse",
        "unit_of_price": "CNY/kWh",
        "valid_from": "2020-01-01T00:00:00",
        "valid_through": "2020-07-01T00:00:00",
        "timeofuse": copy.deepcopy(TIMEOFUSE),
        **changes,
    }


def block_tariff(category: int, **changes: Any) -> dict[str, Any]:
    return {
        "name": unique("Block 2020"),
        "energy_category_id": category,
        "tariff_type": "block",
        "unit_of_price": "CNY/kWh",
        "valid_from": "2020-01-01T00:00:00",
        "valid_through": "2021-01-01T00:00:00",
        "block": copy.deepcopy(BLOCKS),
        **changes,
    }


def refused_fields(answer: httpx.Response, status: int = 400) -> list[str]:
    assert answer.status_code == status, f"{answer.status_code} {answer.text}"
    assert answer.headers["content-type"].startswith("application/problem+json")
    return [error["field"] for error in answer.json().get("errors", [])]


async def test_tariffs_are_created_and_read_back_with_myems_fields(platform: Platform) -> None:
    category = await electricity(platform)
    tou = await created(await platform.api.post("/tariffs", json={"data": timeofuse_tariff(category)}))
    got = (await platform.api.get(f"/tariffs/{tou}")).json()
    assert set(got) >= RESULT_FIELDS
    assert got["tariff_type"] == "timeofuse" and got["unit_of_price"] == "CNY/kWh"
    assert got["valid_from"] == ms("2020-01-01T00:00:00") and got["valid_through"] == ms(
        "2020-07-01T00:00:00"
    )
    assert got["timeofuse"] == TIMEOFUSE and got["block"] == []
    assert got["energy_category"]["id"] == category

    blocks = await created(await platform.api.post("/tariffs", json={"data": block_tariff(category)}))
    got = (await platform.api.get(f"/tariffs/{blocks}")).json()
    assert got["block"] == [
        {"start_amount": 0, "end_amount": 10000, "price": 0.567},
        {"start_amount": 10000, "end_amount": 30000, "price": 0.678},
        {"start_amount": 30000, "end_amount": 100000, "price": 0.789},
    ]
    listed = await platform.api.get("/tariffs", params={"q": got["name"]})
    assert [t["id"] for t in listed.json()] == [blocks] and listed.headers["x-total-count"] == "1"

    # Exclusive-style ends are the same tariff; results use MyEMS's inclusive style.
    exclusive = copy.deepcopy(TIMEOFUSE)
    for period, end in zip(
        exclusive,
        ["06:00:00", "08:00:00", "11:00:00", "18:00:00", "21:00:00", "22:00:00", "24:00:00"],
        strict=True,
    ):
        period["end_time_of_day"] = end
    answer = await platform.api.put(
        f"/tariffs/{tou}",
        json={"data": timeofuse_tariff(category, name=got["name"] + " tou", timeofuse=exclusive)},
    )
    assert answer.status_code == 200, answer.text
    assert (await platform.api.get(f"/tariffs/{tou}")).json()["timeofuse"] == TIMEOFUSE


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"timeofuse": [*TIMEOFUSE[:2], {**TIMEOFUSE[2], "end_time_of_day": "11:59:59"}, *TIMEOFUSE[3:]]}, "timeofuse.3.start_time_of_day"),
        ({"timeofuse": [*TIMEOFUSE[:2], {**TIMEOFUSE[2], "end_time_of_day": "09:59:59"}, *TIMEOFUSE[3:]]}, "timeofuse.3.start_time_of_day"),
        ({"timeofuse": TIMEOFUSE[:-1]}, "timeofuse.5.end_time_of_day"),
        ({"timeofuse": [*TIMEOFUSE[:2], {**TIMEOFUSE[2], "end_time_of_day": "7:00"}, *TIMEOFUSE[3:]]}, "timeofuse.2.end_time_of_day"),
        ({"timeofuse": [{**TIMEOFUSE[0], "peak_type": "superpeak"}, *TIMEOFUSE[1:]]}, "data.timeofuse.0.peak_type"),
        ({"timeofuse": [{**TIMEOFUSE[0], "price": -1}, *TIMEOFUSE[1:]]}, "data.timeofuse.0.price"),
        ({"timeofuse": [], "block": BLOCKS}, "block"),
        ({"valid_through": "2019-01-01T00:00:00"}, "valid_through"),
        ({"energy_category_id": 987654}, "energy_category_id"),
        ({"tariff_type": "flat"}, "data.tariff_type"),
        ({"surprise": 1}, "data.surprise"),
    ],
)  # fmt: skip
async def test_bad_timeofuse_tariffs_are_400_naming_the_field(
    platform: Platform, change: dict[str, Any], field: str
) -> None:
    category = await electricity(platform)
    answer = await platform.api.post("/tariffs", json={"data": timeofuse_tariff(category, **change)})
    assert field in refused_fields(answer)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"block": [BLOCKS[0], BLOCKS[2]]}, "block.1.start_amount"),
        ({"block": [{**BLOCKS[0], "start_amount": "1"}, *BLOCKS[1:]]}, "block.0.start_amount"),
        ({"block": [{**BLOCKS[0], "end_amount": None}, *BLOCKS[1:]]}, "block.0.end_amount"),
        ({"block": [BLOCKS[0], {**BLOCKS[1], "price": "x"}]}, "data.block.1.price"),
        ({"block": []}, "block"),
    ],
)
async def test_bad_block_tariffs_are_400_naming_the_field(
    platform: Platform, change: dict[str, Any], field: str
) -> None:
    category = await electricity(platform)
    answer = await platform.api.post("/tariffs", json={"data": block_tariff(category, **change)})
    assert field in refused_fields(answer)


async def test_nothing_is_stored_when_a_write_is_refused(platform: Platform) -> None:
    category = await electricity(platform)
    name = unique("Half done")
    bad = timeofuse_tariff(category, name=name, timeofuse=TIMEOFUSE[1:])
    assert (await platform.api.post("/tariffs", json={"data": bad})).status_code == 400
    assert (await platform.api.get("/tariffs", params={"q": name})).json() == []
    tariff = await created(
        await platform.api.post("/tariffs", json={"data": timeofuse_tariff(category, name=name)})
    )
    assert (await platform.api.put(f"/tariffs/{tariff}", json={"data": bad})).status_code == 400
    assert (await platform.api.get(f"/tariffs/{tariff}")).json()["timeofuse"] == TIMEOFUSE
    duplicate = await platform.api.post("/tariffs", json={"data": timeofuse_tariff(category, name=name)})
    assert refused_fields(duplicate, 409) == ["name"]


async def test_cost_centers_bind_tariffs_without_overlapping_validity(platform: Platform) -> None:
    category = await electricity(platform)
    center = await created(
        await platform.api.post("/costcenters", json={"data": {"name": unique("Building A")}})
    )
    h1 = await created(await platform.api.post("/tariffs", json={"data": timeofuse_tariff(category)}))
    h2 = await created(
        await platform.api.post(
            "/tariffs",
            json={
                "data": timeofuse_tariff(
                    category, valid_from="2020-07-01T00:00:00", valid_through="2021-01-01T00:00:00"
                )
            },
        )
    )
    year = await created(await platform.api.post("/tariffs", json={"data": block_tariff(category)}))

    # MyEMS clients send the id as a string.
    assert (
        await platform.api.post(f"/costcenters/{center}/tariffs", json={"data": {"tariff_id": str(h1)}})
    ).status_code == 201
    assert (
        await platform.api.post(f"/costcenters/{center}/tariffs", json={"data": {"tariff_id": h2}})
    ).status_code == 201
    bound = (await platform.api.get(f"/costcenters/{center}/tariffs")).json()
    assert [t["id"] for t in bound] == [h1, h2] and bound[0]["timeofuse"] == TIMEOFUSE

    # The block tariff covers all of 2020: it overlaps the first half-year tariff, which the 409 names.
    overlap = await platform.api.post(f"/costcenters/{center}/tariffs", json={"data": {"tariff_id": year}})
    assert refused_fields(overlap, 409) == ["tariff_id"]
    assert f"tariff {h1} (" in overlap.json()["detail"]
    assert [t["id"] for t in (await platform.api.get(f"/costcenters/{center}/tariffs")).json()] == [h1, h2]

    # Moving a bound tariff's validity onto its neighbour's is refused too, and changes nothing.
    h1_body = timeofuse_tariff(category, name=(await platform.api.get(f"/tariffs/{h1}")).json()["name"])
    moved = await platform.api.put(
        f"/tariffs/{h1}", json={"data": {**h1_body, "valid_through": "2020-08-01T00:00:00"}}
    )
    assert refused_fields(moved, 409) == ["valid_from"] and f"tariff {h2} (" in moved.json()["detail"]
    assert (await platform.api.get(f"/tariffs/{h1}")).json()["valid_through"] == ms("2020-07-01T00:00:00")

    missing = await platform.api.post(f"/costcenters/{center}/tariffs", json={"data": {"tariff_id": 987654}})
    assert refused_fields(missing) == ["tariff_id"]
    assert (
        await platform.api.post("/costcenters/987654/tariffs", json={"data": {"tariff_id": h1}})
    ).status_code == 404

    # A bound tariff cannot be deleted; the 409 names the cost center.
    refused = await platform.api.delete(f"/tariffs/{h1}")
    assert refused.status_code == 409 and f"cost center {center} (" in refused.json()["detail"]
    assert (await platform.api.delete(f"/costcenters/{center}/tariffs/{h1}")).status_code == 204
    assert (await platform.api.delete(f"/costcenters/{center}/tariffs/{h1}")).status_code == 404
    assert (await platform.api.delete(f"/tariffs/{h1}")).status_code == 204
    assert (await platform.api.get(f"/tariffs/{h1}")).status_code == 404

    # With the half-year tariff gone, the yearly one still overlaps the second half.
    overlap = await platform.api.post(f"/costcenters/{center}/tariffs", json={"data": {"tariff_id": year}})
    assert overlap.status_code == 409 and f"tariff {h2} (" in overlap.json()["detail"]


async def test_export_import_and_clone_reproduce_the_tariff(platform: Platform) -> None:
    category = await electricity(platform)
    for body in (
        timeofuse_tariff(category),
        block_tariff(
            category, block=[*BLOCKS[:2], {"start_amount": 30000, "end_amount": None, "price": 0.9}]
        ),
    ):
        original = await created(
            await platform.api.post("/tariffs", json={"data": {**body, "description": "seed"}})
        )
        exported = (await platform.api.get(f"/tariffs/{original}/export")).json()
        exported["name"] += " imported"
        imported = await created(await platform.api.post("/tariffs/import", json={"data": exported}))
        again = (await platform.api.get(f"/tariffs/{imported}")).json()
        assert again["uuid"] != exported["uuid"]
        for field in (
            "tariff_type",
            "unit_of_price",
            "valid_from",
            "valid_through",
            "timeofuse",
            "block",
            "description",
            "energy_category",
        ):
            assert again[field] == exported[field], field

        clone = await created(await platform.api.post(f"/tariffs/{original}/clone"))
        cloned = (await platform.api.get(f"/tariffs/{clone}")).json()
        assert cloned["name"] == f"{exported['name'].removesuffix(' imported')} (copy)"
        assert {k: v for k, v in cloned.items() if k not in ("id", "uuid", "name")} == {
            k: v for k, v in exported.items() if k not in ("id", "uuid", "name")
        }
        second = (
            await platform.api.get(
                f"/tariffs/{await created(await platform.api.post(f'/tariffs/{original}/clone'))}"
            )
        ).json()
        assert second["name"] == f"{cloned['name']} 2"

    # MyEMS's own import example sends the request form: ids, ISO strings, amounts as strings.
    myems = await created(await platform.api.post("/tariffs/import", json={"data": block_tariff(category)}))
    assert (await platform.api.get(f"/tariffs/{myems}")).json()["block"][2]["end_amount"] == 100000
    broken = await platform.api.post(
        "/tariffs/import", json={"data": {**exported, "name": unique("x"), "block": [BLOCKS[1]]}}
    )
    assert "block.0.start_amount" in refused_fields(broken)
