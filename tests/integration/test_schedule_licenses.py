"""The `scheduling` license sets how many plans an installation may hold at once (docs/control.md, Licenses).

Through the gateway: the provider's administrator issues codes, the owner takes the installation and
activates licenses on it, and plans are posted for it. Without a license the limit is the default; a Basic
license raises it at once; a license a few seconds long lets more plans in until it expires, then new plans are
refused while the ones stored stay; a provider's plan over MQTT beyond the limit is rejected with the reason;
and while the onboarding service is down the limit without a license applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.command.entitlements import PLANS_BY_TYPE, scheduling_settings
from tests.integration.test_provider_control import interval, link, link_stored, provider
from tests.support import Platform, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = f"pw-{uuid.uuid4().hex}"
DEFAULT = scheduling_settings().plans_without_license
_basic = PLANS_BY_TYPE["Basic"]
assert _basic is not None
BASIC: int = _basic


@dataclass
class User:
    name: str
    api: httpx.AsyncClient

    async def post(self, path: str, data: dict[str, Any]) -> httpx.Response:
        return await self.api.post(path, json={"data": data})


@dataclass
class World:
    admin: User  # the provider's administrator: issues codes, builds installations, posts plans
    owner: User
    zone: int


@pytest.fixture(scope="module")
async def world(platform: Platform) -> AsyncIterator[World]:
    tag = uuid.uuid4().hex[:6]
    made = await platform.api.post("/serviceproviders", json={"data": {"name": f"Plans {tag}"}})
    assert made.status_code == 201, made.text
    provider_id = made.json()["id"]
    async with contextlib.AsyncExitStack() as stack:
        users: dict[str, User] = {}
        for role in ("provider_admin", "owner"):
            name = f"{role}-{tag}"
            data = {
                "name": name,
                "display_name": role,
                "role": role,
                "provider_id": provider_id,
                "password": PASSWORD,
            }
            created = await platform.api.post("/users", json={"data": data})
            assert created.status_code == 201, created.text
            login = await platform.api.put(
                "/users/login", json={"data": {"name": name, "password": PASSWORD}}
            )
            assert login.status_code == 200, login.text
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=str(platform.api.base_url),
                    headers={"User-UUID": login.json()["uuid"], "Token": login.json()["token"]},
                    timeout=30,
                )
            )
            users[role] = User(name, client)
        zones = (await platform.api.get("/timezones")).json()
        zone = next(z["id"] for z in zones if z["name"] == "Europe/Amsterdam")
        yield World(users["provider_admin"], users["owner"], zone)


async def created(user: User, path: str, data: dict[str, Any]) -> dict[str, Any]:
    answer = await user.post(path, data)
    assert answer.status_code == 201, f"POST {path}: {answer.text}"
    return dict(answer.json())


async def site(world: World) -> int:
    """An installation with a controller and a battery, owned by the world's owner through its code."""
    tag = uuid.uuid4().hex[:8]
    gateway = await created(world.admin, "/gateways", {"name": f"controller {tag}"})
    instance = await created(
        world.admin, "/instances", {"title": f"Home {tag}", "serial": f"SN-{tag}", "timezone_id": world.zone}
    )
    device = int(instance["id"])
    await created(world.admin, f"/instances/{device}/gateways", {"gateway_id": gateway["id"]})
    await created(
        world.admin, f"/instances/{device}/devicegroups",
        {"group": "battery", "max_charge_w": 5000, "max_discharge_w": 5000, "capacity_wh": 10000},
    )  # fmt: skip
    code = await created(world.admin, "/activationcodes", {"kind": "single", "installation_id": device})
    await created(world.owner, "/devices/activate", {"code": code["code"]})
    return device


async def license(world: World, device: int, kind: str, days: float) -> dict[str, Any]:
    """The owner activates a new `scheduling` license of this type on the device."""
    code = await created(
        world.admin, "/activationcodes", {"kind": "license", "service": "scheduling", "type": kind, "duration_days": days}
    )  # fmt: skip
    return await created(world.owner, "/licenses/activate", {"code": code["code"], "device_id": device})


BASE = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)


def plan(number: int, schedule_id: str | None = None) -> dict[str, Any]:
    """Plan `number`: one battery interval of its own ten minutes, hours ahead (it does not finish meanwhile)."""
    start = BASE + timedelta(minutes=10 * number)
    return {
        "schedule_id": schedule_id or f"plan-{number}",
        "group": "battery",
        "intervals": [interval(start, 300, 100 + number)],
    }


async def post_plans(world: World, device: int, numbers: range) -> None:
    for number in numbers:
        answer = await world.admin.post(f"/instances/{device}/schedules", plan(number))
        assert answer.status_code == 201, (number, answer.text)


async def refused(world: World, device: int, number: int) -> str:
    answer = await world.admin.post(f"/instances/{device}/schedules", plan(number))
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    return str(answer.json()["detail"])


async def live(world: World, device: int) -> list[str]:
    answer = await world.admin.api.get(f"/instances/{device}/schedules")
    assert answer.status_code == 200, answer.text
    return [s["schedule_id"] for s in answer.json()]


async def test_a_basic_license_raises_the_limit_at_once_and_a_provider_beyond_it_is_rejected(
    platform: Platform, world: World
) -> None:
    device = await site(world)
    await post_plans(world, device, range(DEFAULT))
    detail = await refused(world, device, DEFAULT)
    assert f"holds {DEFAULT} plans" in detail and "no scheduling license" in detail, detail
    # Replacing a live plan is not a new one.
    again = await world.admin.post(f"/instances/{device}/schedules", plan(DEFAULT, schedule_id="plan-0"))
    assert again.status_code == 201 and again.json()["replaced"] is True, again.text

    # A provider onboarded to the installation is rejected with the same reason over MQTT.
    pid = random.randint(10**6, 10**9)
    await link(platform, pid, device, "active", ["battery"], int(time.time() * 1000))
    await link_stored(platform, pid, device, "active")
    async with provider(platform, pid, device) as p:
        ack = await p.first(await p.request("schedule", plan(DEFAULT + 1, schedule_id="day-ahead")))
    assert ack["status"] == "rejected", ack
    assert ack["reason"].startswith("plan limit of the license") and "no scheduling license" in ack["reason"]

    basic = await license(world, device, "Basic", 30)
    assert basic["status"] == "active"
    await post_plans(world, device, range(DEFAULT + 1, BASIC + 1))  # counts at once, no cache to wait for
    detail = await refused(world, device, BASIC + 1)
    assert f"holds {BASIC} plans" in detail and "a Basic scheduling license" in detail, detail
    assert len(await live(world, device)) == BASIC


async def test_at_expiry_stored_plans_stay_and_new_ones_are_refused(world: World) -> None:
    device = await site(world)
    seconds = 15.0
    short = await license(world, device, "PRO", seconds / 86400)
    expires = datetime.fromisoformat(short["expires_at"])
    await post_plans(world, device, range(DEFAULT + 2))  # above the default while the license runs
    assert datetime.now(UTC) < expires, "the machine was too slow to post the plans within the license"
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)
    detail = await refused(world, device, DEFAULT + 2)
    assert f"holds {DEFAULT + 2} plans" in detail and "no scheduling license" in detail, detail
    assert len(await live(world, device)) == DEFAULT + 2  # what was stored stays until it finishes
    # Below the default again (plans removed), a new plan is taken.
    for number in range(3):
        assert (
            await world.admin.api.delete(f"/instances/{device}/schedules/plan-{number}")
        ).status_code == 204
    await post_plans(world, device, range(DEFAULT + 2, DEFAULT + 3))
    assert len(await live(world, device)) == DEFAULT


async def test_while_onboarding_is_down_the_limit_without_a_license_applies(
    platform: Platform, world: World
) -> None:
    device = await site(world)
    await license(world, device, "Elite", 30)
    await asyncio.to_thread(platform.processes.kill, "onboarding")
    try:
        await post_plans(world, device, range(DEFAULT))
        detail = await refused(world, device, DEFAULT)
        assert "did not answer" in detail, detail
    finally:
        await asyncio.to_thread(platform.processes.restart, "onboarding")

    async def attempt() -> int:
        answer = await world.admin.post(f"/instances/{device}/schedules", plan(DEFAULT))
        return answer.status_code

    assert await eventually(attempt, lambda status: status == 201, within=30) == 201
    await post_plans(world, device, range(DEFAULT + 1, DEFAULT + 3))  # Elite: no limit
