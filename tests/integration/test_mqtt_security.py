"""Per-gateway MQTT credentials: a gateway reaches only its own subtree; anonymous clients are refused.

A broker of the test's own runs Mosquitto's dynamic security plugin; a registry of the test's own programs it
as gateways are created, their tokens rotated, and deleted.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator

import aiomqtt
import httpx
import pytest

from deploy.local.infra import STATE_DIR, Infra, free_port, free_port_block, start_secure_mosquitto
from deploy.local.processes import ServiceProcesses
from libs import dynsec
from libs.settings import SERVICES, MqttTarget
from proto_schemas import topics
from tests.conftest import drop_schemas, platform_env

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[MqttTarget]:
    port = free_port()
    password = secrets.token_urlsafe(16)
    state = STATE_DIR / "test" / f"secure-{uuid.uuid4().hex[:8]}"
    proc = start_secure_mosquitto(state, port, "admin", password)
    if proc is None:
        pytest.fail("the mosquitto binary with its dynamic security plugin is needed (make system-deps)")
    admin = MqttTarget(f"mqtt://admin:{password}@127.0.0.1:{port}")
    asyncio.run(dynsec.ensure_platform_account(admin, "gridfleet", password))
    target = MqttTarget(f"mqtt://gridfleet:{password}@127.0.0.1:{port}")
    yield target
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
async def registry(infra: Infra, secure_broker: MqttTarget) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    run_id = f"s{uuid.uuid4().hex[:8]}"
    url = (
        f"mqtt://{secure_broker.username}:{secure_broker.password}@{secure_broker.host}:{secure_broker.port}"
    )
    env = {
        **platform_env(Infra(database_url=infra.database_url, mqtt_url=url), run_id),
        "GRIDFLEET_MQTT_DYNSEC": "true",
    }
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


def connect(target: MqttTarget, username: str | None, password: str | None) -> aiomqtt.Client:
    return aiomqtt.Client(
        target.host, target.port, username=username, password=password,
        identifier=f"gf-test-{uuid.uuid4().hex[:8]}", protocol=aiomqtt.ProtocolVersion.V5, timeout=10,
    )  # fmt: skip


async def refused(target: MqttTarget, username: str | None, password: str | None) -> bool:
    try:
        async with connect(target, username, password):
            return False
    except aiomqtt.MqttError:
        return True


async def test_a_gateway_reaches_only_its_own_topics(
    secure_broker: MqttTarget, registry: tuple[httpx.AsyncClient, str]
) -> None:
    client, prefix = registry
    a = (await client.post("/gateways", json={"data": {"name": f"a-{uuid.uuid4().hex[:6]}"}})).json()
    b = (await client.post("/gateways", json={"data": {"name": f"b-{uuid.uuid4().hex[:6]}"}})).json()
    own = prefix + topics.gateway_topic(a["uuid"], "telemetry")
    other = prefix + topics.gateway_topic(b["uuid"], "telemetry")
    seen: list[str] = []
    async with connect(secure_broker, secure_broker.username, secure_broker.password) as watcher:
        await watcher.subscribe(f"{prefix}gf/v1/gw/#", qos=1)
        async with connect(secure_broker, a["uuid"], a["token"]) as gateway_a:
            await gateway_a.publish(own, b'{"readings": []}', qos=1)
            await gateway_a.publish(other, b'{"readings": []}', qos=1)  # the broker drops it: not authorized
            granted = await gateway_a.subscribe(f"{prefix}gf/v1/gw/{b['uuid']}/#", qos=1)
            assert [str(code) for code in granted] == ["Not authorized"]
            granted = await gateway_a.subscribe(f"{prefix}gf/v1/gw/{a['uuid']}/cmd", qos=1)
            assert [str(code) for code in granted] != ["Not authorized"]
        try:
            async with asyncio.timeout(2):
                async for message in watcher.messages:
                    seen.append(message.topic.value)
        except TimeoutError:
            pass
    assert seen == [own]


async def test_anonymous_and_wrong_credentials_are_refused_and_rotation_and_deletion_take_effect_at_once(
    secure_broker: MqttTarget, registry: tuple[httpx.AsyncClient, str]
) -> None:
    client, _ = registry
    gateway = (await client.post("/gateways", json={"data": {"name": f"c-{uuid.uuid4().hex[:6]}"}})).json()
    assert await refused(secure_broker, None, None)
    assert await refused(secure_broker, gateway["uuid"], "wrong")
    assert not await refused(secure_broker, gateway["uuid"], gateway["token"])

    rotated = (await client.post(f"/gateways/{gateway['id']}/token")).json()
    assert await refused(secure_broker, gateway["uuid"], gateway["token"])
    assert not await refused(secure_broker, gateway["uuid"], rotated["token"])

    assert (await client.delete(f"/gateways/{gateway['id']}")).status_code == 204
    assert await refused(secure_broker, gateway["uuid"], rotated["token"])
