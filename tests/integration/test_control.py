"""Live and scheduled control end to end: policies and plans over REST, a simulated controller on the broker.

The routes are `/api/v1/instances/{id}/policies` and `/schedules` (CONTRACTS.md §3). While the gateway still
sends every `instances/...` path to the registry, the calls go to the command service directly, with the
internal token and the principal the gateway would have forwarded; once the gateway routes them to the command
service they go through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from deploy.local.infra import free_port
from libs.bus import Bus
from libs.service import INTERNAL_TOKEN_HEADER, PRINCIPAL_HEADER, Principal
from proto_schemas import topics
from tests.integration.test_commands import Controller, controller, payload_bytes
from tests.support import Platform, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = f"pw-{uuid.uuid4().hex}"
GROUPS = [
    {"group": "battery", "max_charge_w": 5000, "max_discharge_w": 5000, "capacity_wh": 10000},
    {"group": "solar", "max_power_w": 6000},
    {"group": "hvac", "max_power_w": 3000},
]


def routed_through_gateway() -> bool:
    try:
        from services.gateway.routing import service_for

        return service_for("instances/1/policies") == "command"
    except Exception:
        return False


@dataclass
class Actor:
    """Someone calling the control routes: through the gateway when it routes them, else directly."""

    name: str
    gateway: httpx.AsyncClient
    direct: httpx.AsyncClient

    def api(self) -> httpx.AsyncClient:
        return self.gateway if routed_through_gateway() else self.direct

    async def post(self, path: str, data: dict[str, Any]) -> httpx.Response:
        return await self.api().post(path, json={"data": data})

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.api().get(path, params=params)

    async def delete(self, path: str) -> httpx.Response:
        return await self.api().delete(path)


@dataclass
class World:
    provider_id: int
    staff: Actor  # the provider's admin: steers as `operator`
    owner: Actor
    owner_uuid: str
    guest: Actor  # a guest not allowed to write to devices
    installer: Actor


async def _login(platform: Platform, name: str) -> dict[str, Any]:
    answer = await platform.api.put("/users/login", json={"data": {"name": name, "password": PASSWORD}})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def _actor(platform: Platform, stack: contextlib.AsyncExitStack, user: dict[str, Any]) -> Actor:
    login = await _login(platform, user["name"])
    via_gateway = await stack.enter_async_context(
        httpx.AsyncClient(
            base_url=str(platform.api.base_url),
            headers={"User-UUID": login["uuid"], "Token": login["token"]},
            timeout=30,
        )
    )
    principal = Principal(
        user_id=login["id"],
        user_uuid=login["uuid"],
        name=user["name"],
        is_admin=False,
        provider_id=user["provider_id"],
        role=user["role"],
    )
    direct = await stack.enter_async_context(
        httpx.AsyncClient(
            base_url=platform.processes.url("command"),
            headers={
                INTERNAL_TOKEN_HEADER: platform.processes.env["GRIDFLEET_INTERNAL_TOKEN"],
                PRINCIPAL_HEADER: principal.to_header(),
            },
            timeout=30,
        )
    )
    return Actor(user["name"], via_gateway, direct)


@pytest.fixture(scope="module")
async def world(platform: Platform) -> AsyncIterator[World]:
    tag = uuid.uuid4().hex[:6]
    provider = await platform.api.post("/serviceproviders", json={"data": {"name": f"Flex {tag}"}})
    assert provider.status_code == 201, provider.text
    provider_id = provider.json()["id"]
    users: dict[str, dict[str, Any]] = {}
    for role in ("provider_admin", "owner", "guest", "installer"):
        user = {
            "name": f"{role}-{tag}",
            "display_name": role,
            "role": role,
            "provider_id": provider_id,
            "password": PASSWORD,
        }
        created = await platform.api.post("/users", json={"data": user})
        assert created.status_code == 201, created.text
        users[role] = {**user, "id": created.json()["id"]}
    async with contextlib.AsyncExitStack() as stack:
        actors = {role: await _actor(platform, stack, user) for role, user in users.items()}
        owner_uuid = (await _login(platform, users["owner"]["name"]))["uuid"]
        yield World(
            provider_id,
            actors["provider_admin"],
            actors["owner"],
            owner_uuid,
            actors["guest"],
            actors["installer"],
        )


@dataclass
class Site:
    instance_id: int
    gateway_uuid: str


async def make_site(
    platform: Platform,
    world: World,
    *,
    groups: list[dict[str, Any]] = GROUPS,
    bind: bool = True,
    parameters: dict[str, Any] | None = None,
) -> Site:
    """An installation of the world's provider with a controller, device groups, an owner and a guest."""
    api = world.staff.gateway
    tag = uuid.uuid4().hex[:8]

    async def post(path: str, data: dict[str, Any]) -> dict[str, Any]:
        answer = await api.post(path, json={"data": data})
        assert answer.status_code == 201, f"POST {path}: {answer.text}"
        return dict(answer.json())

    gateway = await post("/gateways", {"name": f"controller {tag}"})
    zone = next(z["id"] for z in (await api.get("/timezones")).json() if z["name"] == "Europe/Amsterdam")
    instance = await post(
        "/instances",
        {"title": f"Home {tag}", "serial": f"SN-{tag}", "timezone_id": zone, "parameters": parameters or {}},
    )
    if bind:
        await post(f"/instances/{instance['id']}/gateways", {"gateway_id": gateway["id"]})
    for group in groups:
        await post(f"/instances/{instance['id']}/devicegroups", group)
    members = [("owner", True), ("guest", False)]
    all_users = (await platform.api.get("/users")).json()
    for role, write in members:
        name = getattr(world, role).name
        user_id = next(u["id"] for u in all_users if u["name"] == name)
        await post(
            f"/instances/{instance['id']}/users",
            {"user_id": user_id, "role": role, "share_content": True, "allow_write": write},
        )
    return Site(instance["id"], gateway["uuid"])


def policies_in(control: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["group"]: p for p in control["policies"]}


async def latest_control(sim: Controller, accept: Any, within: float = 15) -> dict[str, Any]:
    async def last() -> dict[str, Any] | None:
        return sim.controls[-1][1] if sim.controls else None

    found = await eventually(last, lambda c: c is not None and accept(c), within=within)
    assert found is not None
    return found


# -- live policies -----------------------------------------------------------------------------------


async def test_a_policy_is_held_on_the_retained_control_topic_and_confirmed_by_the_controller(
    platform: Platform, world: World
) -> None:
    site = await make_site(platform, world)
    path = f"/instances/{site.instance_id}/policies"
    async with controller(platform, site.gateway_uuid) as sim:
        answer = await world.staff.post(
            path, {"group": "battery", "setpoint": {"power_w": -3000}, "ttl_s": 600}
        )
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert body["status"] == "accepted"
        control = await latest_control(sim, lambda c: "battery" in policies_in(c))
        battery = policies_in(control)["battery"]
        assert battery == {
            "policy_id": body["policy_id"],
            "group": "battery",
            "setpoint": {"power_w": -3000},
            "valid_until": battery["valid_until"],
            "source": "operator",
        }
        assert control["fallback_timeout_s"] == 900
        assert control["version"] == body["version"]
        listed = await eventually(
            lambda: world.owner.get(path), lambda a: a.json() and a.json()[0]["status"] == "applied"
        )
        assert listed.json()[0]["policy_id"] == body["policy_id"]
        assert int(listed.headers["X-Control-Version"]) == control["version"]

    # A controller that connects later knows at once what applies (the state is retained).
    async with platform.mqtt(identifier=f"gf-test-late-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(platform.topic(topics.gateway_topic(site.gateway_uuid, "control")), qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
    assert message.retain
    retained = orjson.loads(payload_bytes(message.payload))
    assert policies_in(retained)["battery"]["policy_id"] == body["policy_id"]


async def test_a_new_policy_replaces_the_old_a_remove_ends_it_and_expiry_ends_it(
    platform: Platform, world: World
) -> None:
    # The installation's parameter `fallback_timeout_s` tells the controller when to return to local control.
    site = await make_site(platform, world, parameters={"fallback_timeout_s": 120})
    path = f"/instances/{site.instance_id}/policies"
    async with controller(platform, site.gateway_uuid) as sim:
        first = (
            await world.staff.post(path, {"group": "battery", "setpoint": {"power_w": 1000}, "ttl_s": 600})
        ).json()
        solar = await world.staff.post(
            path, {"group": "solar", "setpoint": {"max_power_w": 2500}, "ttl_s": 600}
        )
        assert solar.status_code == 201
        second = await world.staff.post(
            path,
            {
                "group": "battery",
                "setpoint": {"power_w": 2000},
                "valid_until": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
            },
        )
        assert second.status_code == 201, second.text
        replaced = await latest_control(
            sim, lambda c: policies_in(c).get("battery", {}).get("setpoint") == {"power_w": 2000}
        )
        assert replaced["version"] > first["version"]
        assert replaced["fallback_timeout_s"] == 120
        assert set(policies_in(replaced)) == {"battery", "solar"}
        assert policies_in(replaced)["battery"]["policy_id"] == second.json()["policy_id"]

        assert (await world.staff.delete(f"{path}/battery")).status_code == 204
        removed = await latest_control(sim, lambda c: set(policies_in(c)) == {"solar"})
        assert removed["version"] > replaced["version"]
        assert (await world.staff.delete(f"{path}/battery")).status_code == 404

        short = await world.staff.post(path, {"group": "solar", "setpoint": {"max_power_w": 100}, "ttl_s": 1})
        assert short.status_code == 201
        expired = await latest_control(sim, lambda c: c["policies"] == [], within=10)
        assert expired["version"] > removed["version"]
    assert (await world.staff.get(path)).json() == []


async def test_a_policy_the_controller_rejects_shows_the_reason(platform: Platform, world: World) -> None:
    site = await make_site(platform, world)
    path = f"/instances/{site.instance_id}/policies"
    async with controller(platform, site.gateway_uuid, control_answer="rejected"):
        answer = await world.owner.post(
            path, {"group": "hvac", "setpoint": {"mode": "heat", "setpoint_c": 21}, "ttl_s": 60}
        )
        assert answer.status_code == 201, answer.text
        listed = await eventually(
            lambda: world.owner.get(path), lambda a: a.json() and a.json()[0]["status"] == "rejected"
        )
    assert listed.json()[0]["reason"] == "inverter in fault"
    assert listed.json()[0]["source"] == f"user:{world.owner_uuid}"


async def test_a_policy_is_checked_against_the_installation_and_its_lifetime(
    platform: Platform, world: World
) -> None:
    site = await make_site(platform, world)
    path = f"/instances/{site.instance_id}/policies"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"group": "battery", "setpoint": {"power_w": 9000}, "ttl_s": 60}, "exceeds the charge limit 5000 W"),
        ({"group": "battery", "setpoint": {"power_w": -9000}, "ttl_s": 60}, "discharge limit 5000 W"),
        ({"group": "solar", "setpoint": {"max_power_w": 7000}, "ttl_s": 60}, "peak power 6000 W"),
        ({"group": "ev", "setpoint": {"power_w": 1000}, "ttl_s": 60}, "has no ev group"),
        ({"group": "battery", "setpoint": {"watts": 1}, "ttl_s": 60}, "needs 'power_w'"),
        ({"group": "battery", "setpoint": {"power_w": 1}, "ttl_s": 0}, "ttl_s"),
        ({"group": "battery", "setpoint": {"power_w": 1}, "ttl_s": 86401}, "ttl_s"),
        ({"group": "battery", "setpoint": {"power_w": 1}}, "exactly one"),
        (
            {"group": "battery", "setpoint": {"power_w": 1}, "valid_until": "2020-01-01T00:00:00Z"},
            "in the future",
        ),
    ]
    for data, reason in cases:
        answer = await world.staff.post(path, data)
        assert answer.status_code == 400, (data, answer.text)
        assert reason in answer.text, (data, answer.text)
    unbound = await make_site(platform, world, bind=False)
    answer = await world.staff.post(
        f"/instances/{unbound.instance_id}/policies",
        {"group": "battery", "setpoint": {"power_w": 1}, "ttl_s": 60},
    )
    assert answer.status_code == 409
    assert "no controller" in answer.json()["detail"]
    missing = await world.staff.post(
        "/instances/987654/policies", {"group": "battery", "setpoint": {"power_w": 1}, "ttl_s": 60}
    )
    assert missing.status_code == 404


async def test_a_lower_priority_request_is_refused_with_the_reason_not_overwritten(
    platform: Platform, world: World
) -> None:
    site = await make_site(platform, world)
    path = f"/instances/{site.instance_id}/policies"
    async with controller(platform, site.gateway_uuid) as sim:
        mine = await world.owner.post(path, {"group": "battery", "setpoint": {"power_w": 500}, "ttl_s": 600})
        assert mine.status_code == 201, mine.text
        assert mine.json()["source"] == f"user:{world.owner_uuid}"
        # The operator outranks the owner: their policy replaces the owner's.
        theirs = await world.staff.post(
            path, {"group": "battery", "setpoint": {"power_w": -4000}, "ttl_s": 600}
        )
        assert theirs.status_code == 201
        await latest_control(sim, lambda c: policies_in(c).get("battery", {}).get("source") == "operator")
        refused = await world.owner.post(
            path, {"group": "battery", "setpoint": {"power_w": 800}, "ttl_s": 600}
        )
        assert refused.status_code == 409
        assert "higher priority (operator" in refused.json()["detail"]
        assert (await world.owner.delete(f"{path}/battery")).status_code == 409
        # Nobody without write permission steers at all.
        assert (
            await world.guest.post(path, {"group": "solar", "setpoint": {"max_power_w": 1}, "ttl_s": 60})
        ).status_code == 403
        assert (
            await world.installer.post(path, {"group": "solar", "setpoint": {"max_power_w": 1}, "ttl_s": 60})
        ).status_code == 403
        assert (await world.guest.delete(f"{path}/battery")).status_code == 403
        # Everything stayed as the operator set it.
        listed = (await world.guest.get(path)).json()
        assert [(p["group"], p["source"], p["setpoint"]) for p in listed] == [
            ("battery", "operator", {"power_w": -4000})
        ]
        assert (await world.staff.delete(f"{path}/battery")).status_code == 204
        again = await world.owner.post(path, {"group": "battery", "setpoint": {"power_w": 800}, "ttl_s": 600})
        assert again.status_code == 201


# -- schedules ---------------------------------------------------------------------------------------


def plan(start: datetime, seconds: float, powers: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "group": "battery",
        "intervals": [
            {
                "start": (start + timedelta(seconds=seconds * n)).isoformat(),
                "end": (start + timedelta(seconds=seconds * (n + 1))).isoformat(),
                "setpoint": {"power_w": power},
            }
            for n, power in enumerate(powers)
        ],
        **extra,
    }


async def intervals(platform: Platform, instance_id: int) -> list[dict[str, Any]]:
    rows = await platform.db.fetch(
        f"SELECT si.seq, si.start_at, si.outcome, si.dispatched_at, si.dispatch_count, si.dispatched_by, s.schedule_id"
        f' FROM "{platform.schema("command")}".schedule_intervals si'
        f' JOIN "{platform.schema("command")}".schedules s ON s.id = si.schedule_pk'
        f" WHERE si.instance_id = $1 ORDER BY si.start_at",
        instance_id,
    )
    return [dict(row) for row in rows]


def applied_powers(sim: Controller) -> list[tuple[float, int]]:
    """(when it arrived, battery power) for every control state that changed the battery setpoint."""
    out: list[tuple[float, int]] = []
    for at, control in sim.controls:
        battery = policies_in(control).get("battery")
        power = battery["setpoint"]["power_w"] if battery else None
        if power is not None and (not out or out[-1][1] != power):
            out.append((at, power))
    return out


async def test_a_plan_is_validated_stored_on_the_controller_and_dispatched_on_time_once(
    platform: Platform, world: World
) -> None:
    site = await make_site(platform, world)
    path = f"/instances/{site.instance_id}/schedules"
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with controller(platform, site.gateway_uuid) as sim:
        answer = await world.owner.post(path, plan(start, 2, [1000, 2000, 3000], schedule_id="evening"))
        assert answer.status_code == 201, answer.text
        assert answer.json()["status"] == "accepted"
        stored = await eventually(
            lambda: world.owner.get(path), lambda a: a.json() and a.json()[0]["status"] == "stored"
        )
        assert [i["outcome"] for i in stored.json()[0]["intervals"]] == ["pending"] * 3
        assert sim.schedules[-1]["schedules"][0]["schedule_id"] == "evening"
        assert sim.schedules[-1]["schedules"][0]["source"] == f"user:{world.owner_uuid}"
        await eventually(
            lambda: intervals(platform, site.instance_id),
            lambda rows: all(r["outcome"] for r in rows),
            within=20,
        )
        # When the plan is over it leaves the retained schedule state.
        await eventually(
            lambda: asyncio.sleep(0, sim.schedules), lambda s: s[-1]["schedules"] == [], within=10
        )
    rows = await intervals(platform, site.instance_id)
    assert [r["outcome"] for r in rows] == ["applied"] * 3
    assert [r["dispatch_count"] for r in rows] == [1, 1, 1]
    for row in rows:
        lag = (row["dispatched_at"] - row["start_at"]).total_seconds()
        assert 0 <= lag < 1.0, f"interval {row['seq']} dispatched {lag:.3f} s after its start"
    seen = applied_powers(sim)
    assert [power for _, power in seen] == [1000, 2000, 3000]
    for (arrived, _), n in zip(seen, range(3), strict=True):
        assert abs(arrived - (start.timestamp() + 2 * n)) < 1.0
    # The last interval's policy ends with the plan.
    await latest_control(sim, lambda c: "battery" not in policies_in(c), within=5)


async def test_a_plan_is_refused_when_unsorted_overlapping_over_capacity_or_clashing_with_another(
    platform: Platform, world: World
) -> None:
    site = await make_site(platform, world)
    path = f"/instances/{site.instance_id}/schedules"
    start = datetime.now(UTC) + timedelta(minutes=5)
    overlapping = plan(start, 60, [1000, 2000])
    overlapping["intervals"][1]["start"] = (start + timedelta(seconds=30)).isoformat()
    unsorted = plan(start, 60, [1000, 2000])
    unsorted["intervals"].reverse()
    cases = [
        (overlapping, 400, "interval 2 overlaps interval 1"),
        (unsorted, 400, "sorted"),
        (plan(start, 60, [1000, 9000]), 400, "interval 2: battery power_w 9000 W exceeds the charge limit"),
        (plan(start - timedelta(hours=1), 60, [1000]), 400, "already over"),
        (plan(start + timedelta(days=40), 60, [1000]), 400, "31 days"),
        ({**plan(start, 60, [1000]), "group": "ev"}, 400, "no ev group"),
        ({**plan(start, 60, [1000]), "source": "operator"}, 400, "credentials"),
    ]
    for data, status, reason in cases:
        answer = await world.owner.post(path, data)
        assert answer.status_code == status, (reason, answer.text)
        assert reason in answer.text, answer.text
    assert (await world.staff.post(path, plan(start, 60, [1000, 2000], schedule_id="a"))).status_code == 201
    clash = await world.owner.post(path, plan(start + timedelta(seconds=90), 60, [500], schedule_id="b"))
    assert clash.status_code == 409
    assert "overlaps plan 'a' of operator" in clash.json()["detail"]
    # The owner may neither replace nor remove the operator's plan; the operator may.
    assert (await world.owner.post(path, plan(start, 60, [10], schedule_id="a"))).status_code == 409
    assert (await world.owner.delete(f"{path}/a")).status_code == 409
    assert (await world.guest.post(path, plan(start, 60, [10], schedule_id="g"))).status_code == 403
    replaced = await world.staff.post(path, plan(start, 60, [1500], schedule_id="a"))
    assert replaced.status_code == 201 and replaced.json()["replaced"] is True
    listed = (await world.owner.get(path)).json()
    assert [(s["schedule_id"], len(s["intervals"])) for s in listed] == [("a", 1)]
    assert (await world.staff.delete(f"{path}/a")).status_code == 204
    assert (await world.staff.delete(f"{path}/a")).status_code == 404
    assert (await world.owner.get(path)).json() == []
    ended = (await world.owner.get(path, include_ended="true")).json()
    assert sorted(s["status"] for s in ended) == ["removed", "replaced"]


async def test_a_plan_survives_a_restart_of_the_command_service_with_nothing_dispatched_twice(
    platform: Platform, world: World
) -> None:
    site = await make_site(platform, world)
    path = f"/instances/{site.instance_id}/schedules"
    # The interval across the restart is long: on a busy machine a restart (a new Python process importing
    # everything) has taken 15 s.
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    powers = [1000, 2000, 3000]
    second, third = start + timedelta(seconds=5), start + timedelta(seconds=40)
    data = plan(start, 5, powers, schedule_id="restart")
    data["intervals"][1]["end"] = data["intervals"][2]["start"] = third.isoformat()
    data["intervals"][2]["end"] = (third + timedelta(seconds=5)).isoformat()
    async with controller(platform, site.gateway_uuid) as sim:
        answer = await world.staff.post(path, data)
        assert answer.status_code == 201, answer.text
        await eventually(
            lambda: intervals(platform, site.instance_id),
            lambda rows: rows[0]["outcome"] == "applied",
            within=30,
        )
        # Down from a second before the second interval until after its start: it must be dispatched late, once.
        await asyncio.sleep(max(0.0, second.timestamp() - 1.0 - time.time()))
        await asyncio.to_thread(platform.processes.kill, "command")
        await asyncio.sleep(max(0.0, second.timestamp() + 0.5 - time.time()))
        await asyncio.to_thread(platform.processes.restart, "command")
        rows = await eventually(
            lambda: intervals(platform, site.instance_id),
            lambda rows: all(r["outcome"] for r in rows),
            within=40,
        )
        await eventually(lambda: asyncio.sleep(0, applied_powers(sim)), lambda s: len(s) >= 3, within=10)
    assert [r["outcome"] for r in rows] == ["applied"] * 3, rows
    assert [r["dispatch_count"] for r in rows] == [1, 1, 1]
    assert rows[1]["dispatched_at"] >= second
    assert rows[2]["dispatched_at"].timestamp() - rows[2]["start_at"].timestamp() < 2.0
    assert [power for _, power in applied_powers(sim)] == powers
    assert not platform.processes.crashed()


async def end_session(platform: Platform, replica: str) -> None:
    """Remove a stopped replica's persistent session: while the broker keeps it, the shared subscriptions
    go on handing it its share of the command service's messages, which then wait for it in vain."""
    settings = platform.settings.model_copy(update={"replica": replica})
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    target = settings.mqtt
    async with aiomqtt.Client(
        target.host, target.port, identifier=Bus(settings, "command").client_id,
        protocol=aiomqtt.ProtocolVersion.V5, clean_start=True, properties=props, timeout=10,
    ):  # fmt: skip
        pass


def start_replica(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A second command service process (its own replica id, MQTT client id and HTTP port)."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.command"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


async def test_two_replicas_dispatch_every_interval_exactly_once(platform: Platform, world: World) -> None:
    port = free_port()
    env = {**platform.processes.env, "GRIDFLEET_REPLICA": "second", "GRIDFLEET_HTTP_PORT": str(port)}
    second = await asyncio.to_thread(start_replica, env, platform.processes.log_dir / "command-second.log")
    try:
        async with httpx.AsyncClient(timeout=2) as probe:

            async def ready() -> int:
                with contextlib.suppress(httpx.HTTPError):
                    return (await probe.get(f"http://127.0.0.1:{port}/readyz")).status_code
                return 0

            await eventually(ready, lambda status: status == 200, within=60)
        sites = [await make_site(platform, world) for _ in range(6)]
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        for site in sites:
            answer = await world.staff.post(
                f"/instances/{site.instance_id}/schedules", plan(start, 1, [100, 200, 300, 400])
            )
            assert answer.status_code == 201, answer.text

        async def all_rows() -> list[dict[str, Any]]:
            return [row for site in sites for row in await intervals(platform, site.instance_id)]

        rows = await eventually(all_rows, lambda rows: all(r["outcome"] for r in rows), within=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(second.pid, signal.SIGTERM)
        await asyncio.to_thread(second.wait, 15)
        await end_session(platform, "second")
    assert len(rows) == 24
    assert {r["outcome"] for r in rows} == {"applied"}
    assert {r["dispatch_count"] for r in rows} == {1}
    by_replica: dict[str, int] = {}
    for row in rows:
        by_replica[row["dispatched_by"]] = by_replica.get(row["dispatched_by"], 0) + 1
    print(f"intervals dispatched per replica: {by_replica}")
