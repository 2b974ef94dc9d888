"""End to end over MQTT: output energy of equipment, combined equipment and spaces (``direction=output`` on the
subject read route), honouring ``is_output_counted``, so an efficiency (output / input) reads stored rollups.

Every expected figure is worked out by hand from the readings published.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from proto_schemas.quality import Quality
from tests.support import Platform, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUARTER = timedelta(minutes=15)
G = int(Quality.GOOD)


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


async def post(platform: Platform, path: str, data: dict[str, Any]) -> dict[str, Any]:
    answer = await platform.api.post(path, json={"data": data})
    assert answer.status_code == 201, f"POST {path}: {answer.status_code} {answer.text}"
    return dict(answer.json())


async def read(
    platform: Platform, kind: str, ident: int, rollup: str, start: str, end: str, **params: str
) -> httpx.Response:
    async with internal(platform) as client:
        return await client.get(
            f"/internal/subjects/{kind}/{ident}/{rollup}", params={"start": start, "end": end, **params}
        )


async def days(platform: Platform, kind: str, ident: int, direction: str | None) -> dict[str, Any]:
    params = {} if direction is None else {"direction": direction}
    answer = await read(platform, kind, ident, "daily", "2026-06-01", "2026-06-02", **params)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def energy(body: dict[str, Any]) -> list[tuple[str, float, int]]:
    return [(r["start"], round(r["energy"], 9), r["quality"]) for r in body["rows"]]


async def settles_at(
    platform: Platform, kind: str, ident: int, direction: str | None, total: float
) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        return await days(platform, kind, ident, direction)

    return await eventually(
        probe,
        lambda b: not b["stale"] and not b["rebuilding"] and energy(b) == [("2026-06-01", total, G)],
        within=60,
    )


async def test_output_energy_of_equipment_combined_equipment_and_spaces_honours_is_output_counted(
    platform: Platform,
) -> None:
    names = ("in1", "out1", "in2", "out2", "heat")
    site = await build_site(platform.api, unique("outputs"), timezone="Europe/Brussels", energy_points=names)
    m = site.meters
    top = site.space_id
    for name in names:  # the site binds every meter to its space: here they belong to the equipment
        gone = await platform.api.delete(f"/spaces/{top}/meters/{m[name]}")
        assert gone.status_code == 204, gone.text
    zones = (await platform.api.get("/timezones")).json()
    brussels = next(z["id"] for z in zones if z["name"] == "Europe/Brussels")
    annex = await post(
        platform,
        "/spaces",
        {"name": unique("annex"), "parent_space_id": top, "timezone_id": brussels, "is_output_counted": True},
    )
    # The chiller's output counts upwards; the boiler's does not (is_output_counted false).
    chiller = await post(platform, "/equipments", {"name": unique("chiller"), "is_output_counted": True})
    boiler_name = unique("boiler")
    boiler = await post(platform, "/equipments", {"name": boiler_name, "is_output_counted": False})
    plant = await post(platform, "/combinedequipments", {"name": unique("plant"), "is_output_counted": True})
    for equipment, meter_in, meter_out in ((chiller, "in1", "out1"), (boiler, "in2", "out2")):
        await post(
            platform, f"/equipments/{equipment['id']}/meters", {"meter_id": m[meter_in], "is_output": False}
        )
        await post(
            platform, f"/equipments/{equipment['id']}/meters", {"meter_id": m[meter_out], "is_output": True}
        )
        await post(
            platform, f"/combinedequipments/{plant['id']}/equipments", {"equipment_id": equipment["id"]}
        )
    await post(
        platform, f"/combinedequipments/{plant['id']}/meters", {"meter_id": m["heat"], "is_output": True}
    )
    await post(platform, f"/spaces/{annex['id']}/equipments", {"equipment_id": chiller["id"]})
    await post(platform, f"/spaces/{top}/equipments", {"equipment_id": boiler["id"]})
    await post(platform, f"/spaces/{top}/combinedequipments", {"combined_equipment_id": plant["id"]})
    await asyncio.sleep(1.5)  # ingestion learns the new points

    # One hour, 10:00-11:00Z on 1 June (12:00-13:00 in Brussels), per quarter: in1 2, out1 6 (a COP of 3),
    # in2 4, out2 3.6, heat 1. So in the hour: in1 8, out1 24, in2 16, out2 14.4, heat 4.
    per_quarter = {"in1": 2.0, "out1": 6.0, "in2": 4.0, "out2": 3.6, "heat": 1.0}
    start = datetime(2026, 6, 1, 10, tzinfo=UTC)
    async with platform.mqtt() as client:
        await platform.publish_telemetry(
            client,
            site.gateway_uuid,
            [
                {"point_id": site.points[name], "ts": ms(start + q * QUARTER), "value": 1000.0 + q * step}
                for name, step in per_quarter.items()
                for q in range(5)
            ],
        )

    expected = {
        # (route kind, id, direction): the energy of 1 June in Brussels
        ("equipment", chiller["id"], None): 8.0,  # no direction: input, as before
        ("equipment", chiller["id"], "output"): 24.0,
        ("equipment", boiler["id"], "input"): 16.0,
        ("equipment", boiler["id"], "output"): 14.4,  # its own output, whatever its flag says upwards
        # The plant: its own heat 4 + the chiller's 24; not the boiler's (not output-counted).
        ("combinedequipment", plant["id"], "output"): 28.0,
        ("combinedequipment", plant["id"], "input"): 24.0,  # in1 + in2
        ("space", annex["id"], "output"): 24.0,  # the chiller's
        ("space", annex["id"], "input"): 8.0,
        # The top space: the annex (out1) and the plant (heat, out1): out1 counted once; the boiler not.
        ("space", top, "output"): 28.0,
        ("space", top, "input"): 24.0,
    }
    for (kind, ident, direction), total in expected.items():
        body = await settles_at(platform, kind, ident, direction, total)
        assert body["direction"] == (direction or "input")
        assert body["timezone"] == "Europe/Brussels"

    # An efficiency from stored rows: the chiller's coefficient of performance is 24 / 8 = 3.
    async with internal(platform) as client:
        hours = [
            (
                await client.get(
                    f"/internal/subjects/equipment/{chiller['id']}/hourly",
                    params={
                        "start": "2026-06-01T12:00:00+02:00",
                        "end": "2026-06-01T13:00:00+02:00",
                        "direction": direction,
                    },
                )
            ).json()["rows"]
            for direction in ("output", "input")
        ]
    [out_hour], [in_hour] = hours
    assert out_hour["start"] == in_hour["start"] == "2026-06-01T12:00:00+02:00"
    assert out_hour["energy"] / in_hour["energy"] == pytest.approx(3.0)

    # Counting the boiler's output upwards rebuilds the plant and the top space: + 14.4 each.
    changed = await platform.api.put(
        f"/equipments/{boiler['id']}", json={"data": {"name": boiler_name, "is_output_counted": True}}
    )
    assert changed.status_code == 200, changed.text
    await settles_at(platform, "combinedequipment", plant["id"], "output", 42.4)
    await settles_at(platform, "space", top, "output", 42.4)
    await settles_at(platform, "space", top, "input", 24.0)  # inputs unchanged

    # Only spaces, equipment and combined equipment have output energy; a bad direction names the field.
    for kind, ident, direction in (("meter", m["out1"], "output"), ("space", top, "sideways")):
        answer = await read(platform, kind, ident, "daily", "2026-06-01", "2026-06-02", direction=direction)
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "direction" in answer.text


async def test_a_registry_change_outside_the_model_is_not_diffed_again(platform: Platform) -> None:
    schema = platform.schema("aggregation")

    async def state() -> tuple[str, int]:
        row = await platform.db.fetchrow(f'SELECT digest, applies FROM "{schema}".model_state')
        assert row is not None
        return str(row["digest"]), int(row["applies"])

    async def known(kind: str, ident: int) -> bool:
        return bool(
            await platform.db.fetchval(
                f'SELECT 1 FROM "{schema}".subjects WHERE kind = $1 AND subject_id = $2', kind, ident
            )
        )

    # Settle first: a new equipment is copied (its output subject too), and the copy's digest recorded.
    pump = await post(platform, "/equipments", {"name": unique("pump")})
    await eventually(lambda: known("equipment_output", pump["id"]), bool)
    await asyncio.sleep(2.0)
    before = await state()
    # A gateway is no part of the model: its change event syncs, fetches the same model and writes nothing.
    await post(platform, "/gateways", {"name": unique("gateway")})
    await asyncio.sleep(3.0)
    assert await state() == before
    # An equipment is: the next sync diffs and writes, once.
    fan = await post(platform, "/equipments", {"name": unique("fan")})
    await eventually(lambda: known("equipment", fan["id"]), bool)
    digest, applies = await state()
    assert digest != before[0] and applies > before[1]
