"""Who may steer: roles x control routes through the gateway, and gateways x control topics on the broker.

The expected tables are written out by hand from the access design (docs/control.md), on purpose not
computed from services/gateway/policy.py or services/command/control.py: a change of either needs a matching,
reviewed change here.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import httpx
import pytest

from deploy.local.infra import STATE_DIR, Infra, free_port, free_port_block, start_secure_mosquitto
from deploy.local.processes import ServiceProcesses
from libs import dynsec
from libs.settings import SERVICES, MqttTarget
from proto_schemas import topics
from tests.conftest import drop_schemas, platform_env
from tests.support import Platform

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = f"pw-{uuid.uuid4().hex}"

# -- REST: roles x control routes ----------------------------------------------------------------------

ROUTES = ("send command", "set policy", "remove policy", "set schedule", "remove schedule")
OK = {
    "send command": 202,
    "set policy": 201,
    "remove policy": 204,
    "set schedule": 201,
    "remove schedule": 204,
}
ALLOWED, FORBIDDEN, HIDDEN = "allowed", 403, 404
A, F, H = ALLOWED, FORBIDDEN, HIDDEN

# Commands are the provider's staff tools (seed 001): only staff who steer may send them. Live and scheduled
# control of an installation: staff who steer, and members whose membership allows writing to devices. An
# installer commissions but never steers. The owner of another installation does not even see this one: the
# answer is 404, as for any installation a caller cannot see (its existence is not revealed).
EXPECTED: dict[str, tuple[Any, ...]] = {
    #                       send command  set policy  remove policy  set schedule  remove schedule
    "platform_admin": (A, A, A, A, A),
    "provider_admin": (A, A, A, A, A),
    "operator": (A, A, A, A, A),
    "installer": (F, F, F, F, F),
    "owner (allow_write)": (F, A, A, A, A),
    "guest (no allow_write)": (F, F, F, F, F),
    "guest (allow_write)": (F, A, A, A, A),
    "owner of another installation": (F, H, H, H, H),
}


@dataclass
class Caller:
    label: str
    api: httpx.AsyncClient


async def _user(admin: httpx.AsyncClient, role: str, provider_id: int) -> dict[str, Any]:
    name = f"{role}-{uuid.uuid4().hex[:8]}"
    data = {
        "name": name,
        "display_name": name,
        "role": role,
        "provider_id": provider_id,
        "password": PASSWORD,
    }
    answer = await admin.post("/users", json={"data": data})
    assert answer.status_code == 201, answer.text
    return {"id": answer.json()["id"], "name": name}


async def _session(platform: Platform, stack: contextlib.AsyncExitStack, name: str) -> httpx.AsyncClient:
    login = await platform.api.put("/users/login", json={"data": {"name": name, "password": PASSWORD}})
    assert login.status_code == 200, login.text
    body = login.json()
    return await stack.enter_async_context(
        httpx.AsyncClient(
            base_url=str(platform.api.base_url), headers={"User-UUID": body["uuid"], "Token": body["token"]},
            timeout=30,
        )
    )  # fmt: skip


async def _created(api: httpx.AsyncClient, path: str, data: dict[str, Any]) -> dict[str, Any]:
    answer = await api.post(path, json={"data": data})
    assert answer.status_code == 201, f"POST {path}: {answer.text}"
    return dict(answer.json())


async def _installation(api: httpx.AsyncClient, zone: int) -> tuple[int, dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    gateway = await _created(api, "/gateways", {"name": f"controller {tag}"})
    instance = await _created(
        api, "/instances", {"title": f"Home {tag}", "serial": f"SN-{tag}", "timezone_id": zone}
    )
    await _created(api, f"/instances/{instance['id']}/gateways", {"gateway_id": gateway["id"]})
    await _created(
        api, f"/instances/{instance['id']}/devicegroups", {"group": "battery", "max_charge_w": 5000, "max_discharge_w": 5000, "capacity_wh": 10000}
    )  # fmt: skip
    return int(instance["id"]), gateway


def _plan(schedule_id: str, hours_ahead: int) -> dict[str, Any]:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours_ahead)
    return {
        "schedule_id": schedule_id,
        "group": "battery",
        "intervals": [
            {"start": start.isoformat(), "end": (start + timedelta(minutes=30)).isoformat(), "setpoint": {"power_w": 500}}
        ],
    }  # fmt: skip


def _outcome(route: str, status: int) -> Any:
    if status == OK[route]:
        return ALLOWED
    return status


async def test_roles_by_control_routes_match_the_expected_table(platform: Platform) -> None:
    admin = platform.api
    provider = await _created(admin, "/serviceproviders", {"name": f"Matrix {uuid.uuid4().hex[:6]}"})
    provider_id = provider["id"]
    roles = {
        "provider_admin": "provider_admin",
        "operator": "operator",
        "installer": "installer",
        "owner (allow_write)": "owner",
        "guest (no allow_write)": "guest",
        "guest (allow_write)": "guest",
        "owner of another installation": "owner",
    }
    users = {label: await _user(admin, role, provider_id) for label, role in roles.items()}
    async with contextlib.AsyncExitStack() as stack:
        callers = [Caller("platform_admin", admin)] + [
            Caller(label, await _session(platform, stack, user["name"])) for label, user in users.items()
        ]
        staff = next(c.api for c in callers if c.label == "provider_admin")
        zone = next(
            z["id"] for z in (await staff.get("/timezones")).json() if z["name"] == "Europe/Amsterdam"
        )
        instance_id, gateway = await _installation(staff, zone)
        other_id, _ = await _installation(staff, zone)
        for label, write, where in (
            ("owner (allow_write)", True, instance_id),
            ("guest (no allow_write)", False, instance_id),
            ("guest (allow_write)", True, instance_id),
            ("owner of another installation", True, other_id),
        ):
            role = "owner" if label.startswith("owner") else "guest"
            await _created(
                staff, f"/instances/{where}/users",
                {"user_id": users[label]["id"], "role": role, "share_content": True, "allow_write": write},
            )  # fmt: skip
        command = await _created(
            staff, "/commands",
            {"name": f"limit {uuid.uuid4().hex[:6]}", "gateway_id": gateway["id"], "payload": "{}", "expires_in_s": 5},
        )  # fmt: skip
        owner = next(c.api for c in callers if c.label == "owner (allow_write)")
        policies, schedules = f"/instances/{instance_id}/policies", f"/instances/{instance_id}/schedules"

        found: dict[str, tuple[Any, ...]] = {}
        for hours, caller in enumerate(callers, start=1):
            api, row = caller.api, []
            row.append(
                _outcome("send command", (await api.put(f"/commands/{command['id']}/send")).status_code)
            )
            answer = await api.post(
                policies, json={"data": {"group": "battery", "setpoint": {"power_w": 100}, "ttl_s": 600}}
            )
            row.append(_outcome("set policy", answer.status_code))
            # Something of the lowest priority (the owner's) to remove, so arbitration never decides the answer.
            assert (await admin.delete(f"{policies}/battery")).status_code in (204, 404)
            setup = await owner.post(
                policies, json={"data": {"group": "battery", "setpoint": {"power_w": 50}, "ttl_s": 600}}
            )
            assert setup.status_code == 201, setup.text
            row.append(_outcome("remove policy", (await api.delete(f"{policies}/battery")).status_code))
            answer = await api.post(schedules, json={"data": _plan(f"set-{hours}", 2 * hours)})
            row.append(_outcome("set schedule", answer.status_code))
            setup = await owner.post(schedules, json={"data": _plan(f"del-{hours}", 2 * hours + 1)})
            assert setup.status_code == 201, setup.text
            row.append(
                _outcome("remove schedule", (await api.delete(f"{schedules}/del-{hours}")).status_code)
            )
            found[caller.label] = tuple(row)
    mismatches = {
        f"{label} x {route}": (want, got)
        for label, want_row in EXPECTED.items()
        for route, want, got in zip(ROUTES, want_row, found[label], strict=True)
        if want != got
    }
    assert not mismatches, f"(expected, answered): {mismatches}"


# -- MQTT: gateways x control topics on an authenticated broker ----------------------------------------


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[MqttTarget]:
    port = free_port()
    password = secrets.token_urlsafe(16)
    state = STATE_DIR / "test" / f"secure-ctl-{uuid.uuid4().hex[:8]}"
    proc = start_secure_mosquitto(state, port, "admin", password)
    if proc is None:
        pytest.fail("the mosquitto binary with its dynamic security plugin is needed (make system-deps)")
    admin = MqttTarget(f"mqtt://admin:{password}@127.0.0.1:{port}")
    asyncio.run(dynsec.ensure_platform_account(admin, "gridfleet", password))
    yield MqttTarget(f"mqtt://gridfleet:{password}@127.0.0.1:{port}")
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
async def registry(infra: Infra, secure_broker: MqttTarget) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    run_id = f"m{uuid.uuid4().hex[:8]}"
    b = secure_broker
    env = {
        **platform_env(Infra(database_url=infra.database_url, mqtt_url=f"mqtt://{b.username}:{b.password}@{b.host}:{b.port}"), run_id),
        "GRIDFLEET_MQTT_DYNSEC": "true",
    }  # fmt: skip
    processes = ServiceProcesses(env, STATE_DIR / "test-logs" / run_id, free_port_block(len(SERVICES)))
    try:
        await asyncio.to_thread(processes.start_all, ["registry"])
        headers = {"X-Gridfleet-Internal": env["GRIDFLEET_INTERNAL_TOKEN"]}
        async with httpx.AsyncClient(
            base_url=processes.url("registry"), headers=headers, timeout=30
        ) as client:
            yield client, env["GRIDFLEET_TOPIC_PREFIX"]
    finally:
        await asyncio.to_thread(processes.stop_all)
        await drop_schemas(infra.database_url, env["GRIDFLEET_SCHEMA_PREFIX"])


def _connect(target: MqttTarget, username: str | None, password: str | None) -> aiomqtt.Client:
    return aiomqtt.Client(
        target.host, target.port, username=username, password=password,
        identifier=f"gf-test-{uuid.uuid4().hex[:8]}", protocol=aiomqtt.ProtocolVersion.V5, timeout=10,
    )  # fmt: skip


UP = ("cmd/ack", "control/ack", "schedule/ack")
DOWN = ("cmd", "cmd/inverter", "control", "schedule")


async def test_a_gateway_publishes_only_its_own_acknowledgements_and_reads_only_its_own_control_topics(
    secure_broker: MqttTarget, registry: tuple[httpx.AsyncClient, str]
) -> None:
    client, prefix = registry
    a = (await client.post("/gateways", json={"data": {"name": f"a-{uuid.uuid4().hex[:6]}"}})).json()
    b = (await client.post("/gateways", json={"data": {"name": f"b-{uuid.uuid4().hex[:6]}"}})).json()

    def topic(gateway: dict[str, Any], leaf: str) -> str:
        return prefix + topics.gateway_topic(gateway["uuid"], leaf)

    seen: list[str] = []
    async with _connect(secure_broker, secure_broker.username, secure_broker.password) as watcher:
        await watcher.subscribe(f"{prefix}gf/v1/gw/#", qos=1)
        async with _connect(secure_broker, a["uuid"], a["token"]) as gateway_a:
            # Its own acknowledgements: allowed. Its own down topics and anything of b's: dropped by the broker.
            attempts = [topic(a, leaf) for leaf in UP] + [topic(a, leaf) for leaf in DOWN]
            attempts += [topic(b, leaf) for leaf in UP + DOWN]
            for name in attempts:
                await gateway_a.publish(name, b'{"version": 1, "status": "applied"}', qos=1)
            # Reading: its own down topics yes, b's no.
            for leaf in ("cmd/#", "control", "schedule"):
                granted = await gateway_a.subscribe(topic(a, leaf), qos=1)
                assert [str(code) for code in granted] != ["Not authorized"], leaf
                granted = await gateway_a.subscribe(topic(b, leaf), qos=1)
                assert [str(code) for code in granted] == ["Not authorized"], leaf
            granted = await gateway_a.subscribe(f"{prefix}gf/v1/gw/+/control", qos=1)
            assert [str(code) for code in granted] == ["Not authorized"]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                async for message in watcher.messages:
                    seen.append(message.topic.value)
    assert sorted(seen) == sorted(topic(a, leaf) for leaf in UP)
