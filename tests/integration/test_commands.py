"""Commands end to end: a simulated controller over the real broker acknowledges what the platform sends.

The controller keeps a persistent session (client id = its gateway uuid, clean start off), so a command sent
while it is offline waits at the broker; `Controller` answers commands as a test tells it to.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiomqtt
import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from proto_schemas import topics
from tests.support import Platform, build_site, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

Mode = Literal["succeed", "fail", "deliver_only", "silent", "honour_expiry"]


def payload_bytes(payload: Any) -> bytes:
    return bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode()


def no_delay(client: aiomqtt.Client) -> aiomqtt.Client:
    """Turn Nagle's algorithm off on the client's socket (paho leaves it on); call before connecting."""
    opened = client._client.on_socket_open

    def hook(paho: Any, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if opened is not None:
            opened(paho, userdata, sock)

    client._client.on_socket_open = hook
    return client


@dataclass
class Controller:
    """An on-site controller as docs/device-protocol.md describes it, reduced to what the tests need."""

    platform: Platform
    gateway_uuid: str
    mode: Mode = "succeed"
    control_answer: Literal["applied", "rejected", "silent"] = "applied"
    commands: list[dict[str, Any]] = field(default_factory=list)
    controls: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    command_topics: list[str] = field(default_factory=list)
    nodelay: bool = False  # TCP_NODELAY on the controller's socket (Nagle's algorithm off)
    _client: aiomqtt.Client | None = None
    _task: asyncio.Task[None] | None = None

    def topic(self, leaf: str) -> str:
        return self.platform.topic(topics.gateway_topic(self.gateway_uuid, leaf))

    async def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        target = self.platform.settings.mqtt
        client = aiomqtt.Client(
            target.host, target.port, identifier=self.gateway_uuid, protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False, properties=props, timeout=10,
        )  # fmt: skip
        if self.nodelay:
            no_delay(client)
        await client.__aenter__()
        self._client = client
        self._task = asyncio.create_task(self._listen(client))
        # As docs/device-protocol.md says: every command topic (`cmd` and below), without our own `cmd/ack`
        # echoed back (MQTT 5 No Local), and the retained states.
        await client.subscribe(self.topic("cmd/#"), options=SubscribeOptions(qos=1, noLocal=True))
        for leaf in ("control", "schedule"):
            await client.subscribe(self.topic(leaf), qos=1)
        await client.publish(self.topic("status"), b"online", qos=1, retain=True)

    async def disconnect(self) -> None:
        if self._client is not None:
            await self._client.publish(self.topic("status"), b"offline", qos=1, retain=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
        self._client, self._task = None, None

    async def drop(self) -> None:
        """Lose the connection without a word (the broker went away): the session stays at the broker."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
        self._client, self._task = None, None

    async def publish(self, leaf: str, body: dict[str, Any]) -> None:
        assert self._client is not None
        self.acks.append({"leaf": leaf, **body})
        await self._client.publish(self.topic(leaf), orjson.dumps(body), qos=1)

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if not payload_bytes(message.payload):
                continue  # a retained state cleared
            body = orjson.loads(payload_bytes(message.payload))
            leaf = message.topic.value.split(f"/{self.gateway_uuid}/", 1)[-1]
            if leaf == "cmd" or (leaf.startswith("cmd/") and leaf != "cmd/ack"):
                self.command_topics.append(leaf)
                self.commands.append(body)
                await self._answer_command(body)
            elif leaf == "control":
                self.controls.append((time.time(), body))
                if self.control_answer == "applied":
                    await self.publish("control/ack", {"version": body["version"], "status": "applied"})
                elif self.control_answer == "rejected":
                    await self.publish(
                        "control/ack",
                        {"version": body["version"], "status": "rejected", "reason": "inverter in fault"},
                    )
            elif leaf == "schedule":
                self.schedules.append(body)
                await self.publish("schedule/ack", {"version": body["version"], "status": "stored"})

    async def _answer_command(self, command: dict[str, Any]) -> None:
        command_id = command["command_id"]
        if self.mode == "silent":
            return
        if self.mode == "honour_expiry" and datetime.fromisoformat(command["expires_at"]) <= datetime.now(
            UTC
        ):
            await self.publish("cmd/ack", {"command_id": command_id, "status": "failed", "reason": "expired"})
            return
        await self.publish("cmd/ack", {"command_id": command_id, "status": "delivered"})
        if self.mode in ("succeed", "honour_expiry"):
            await self.publish(
                "cmd/ack", {"command_id": command_id, "status": "succeeded", "result": {"written": True}}
            )
        elif self.mode == "fail":
            await self.publish(
                "cmd/ack",
                {"command_id": command_id, "status": "failed", "reason": "modbus timeout on unit 3"},
            )


@contextlib.asynccontextmanager
async def controller(platform: Platform, gateway_uuid: str, **kwargs: Any) -> AsyncIterator[Controller]:
    sim = Controller(platform, gateway_uuid, **kwargs)
    await sim.connect()
    try:
        yield sim
    finally:
        await sim.disconnect()


async def new_gateway(platform: Platform, name: str) -> dict[str, Any]:
    answer = await platform.api.post("/gateways", json={"data": {"name": name}})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def new_command(platform: Platform, gateway: dict[str, Any], **fields: Any) -> int:
    data = {
        "name": f"export limit {uuid.uuid4().hex[:8]}",
        "gateway_id": gateway["id"],
        "payload": '{"register": 40123, "value": $s1}',
        "set_value": 5000,
        "description": "write the export limit",
        **fields,
    }
    answer = await platform.api.post("/commands", json={"data": data})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


async def send(platform: Platform, command_id: int, **data: Any) -> str:
    answer = await platform.api.put(f"/commands/{command_id}/send", json={"data": data})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "QUEUED"
    return str(body["id"])


async def run(platform: Platform, run_id: str) -> dict[str, Any]:
    answer = await platform.api.get(f"/commandruns/{run_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def run_reaches(platform: Platform, run_id: str, status: str, within: float = 15) -> dict[str, Any]:
    return await eventually(lambda: run(platform, run_id), lambda r: r["status"] == status, within=within)


# -- lifecycle ---------------------------------------------------------------------------------------


async def test_a_command_is_delivered_and_succeeds_with_each_step_timed(platform: Platform) -> None:
    gateway = await new_gateway(platform, f"cmd-ok-{uuid.uuid4().hex[:6]}")
    command_id = await new_command(platform, gateway)
    async with controller(platform, gateway["uuid"]) as sim:
        run_id = await send(platform, command_id, set_value=3200)
        done = await run_reaches(platform, run_id, "SUCCEEDED")
    assert done["payload"] == {"register": 40123, "value": 3200}
    assert done["result"] == {"written": True}
    assert done["reason"] is None
    steps = [done[f"{step}_datetime"] for step in ("queued", "sent", "delivered", "succeeded")]
    assert all(steps) and steps == sorted(steps)
    assert done["requested_by"] == "administrator"
    assert sim.commands[0]["command_id"] == run_id
    assert sim.commands[0]["name"].startswith("export limit")
    assert sim.commands[0]["payload"] == {"register": 40123, "value": 3200}
    assert datetime.fromisoformat(sim.commands[0]["expires_at"]) > datetime.now(UTC)

    history = await platform.api.get(f"/commands/{command_id}/history")
    assert history.status_code == 200
    assert [r["id"] for r in history.json()] == [run_id]


async def test_a_duplicate_acknowledgement_changes_nothing(platform: Platform) -> None:
    gateway = await new_gateway(platform, f"cmd-dup-{uuid.uuid4().hex[:6]}")
    command_id = await new_command(platform, gateway)
    async with controller(platform, gateway["uuid"]) as sim:
        run_id = await send(platform, command_id)
        first = await run_reaches(platform, run_id, "SUCCEEDED")
        for ack in list(sim.acks):
            await sim.publish(ack.pop("leaf"), ack)
        await sim.publish(
            "cmd/ack", {"command_id": run_id, "status": "failed", "reason": "late second answer"}
        )
        await asyncio.sleep(1.0)
        assert await run(platform, run_id) == first


async def test_a_command_that_fails_on_site_is_failed_with_the_reason(platform: Platform) -> None:
    gateway = await new_gateway(platform, f"cmd-fail-{uuid.uuid4().hex[:6]}")
    command_id = await new_command(platform, gateway, payload={"coil": 12, "on": True}, set_value=None)
    async with controller(platform, gateway["uuid"], mode="fail"):
        run_id = await send(platform, command_id)
        failed = await run_reaches(platform, run_id, "FAILED")
    assert failed["reason"] == "modbus timeout on unit 3"
    assert failed["delivered_datetime"] and failed["failed_datetime"]
    assert failed["succeeded_datetime"] is None


async def test_a_command_delivered_but_never_answered_times_out(platform: Platform) -> None:
    gateway = await new_gateway(platform, f"cmd-timeout-{uuid.uuid4().hex[:6]}")
    command_id = await new_command(platform, gateway, timeout_s=1)
    async with controller(platform, gateway["uuid"], mode="deliver_only"):
        run_id = await send(platform, command_id)
        await run_reaches(platform, run_id, "DELIVERED")
        timed_out = await run_reaches(platform, run_id, "TIMEOUT")
    assert timed_out["reason"] == "no result within 1 s of delivery"
    assert timed_out["timeout_datetime"] >= timed_out["deadline_datetime"]


async def test_a_command_for_an_offline_controller_waits_and_is_delivered_when_it_reconnects(
    platform: Platform,
) -> None:
    gateway = await new_gateway(platform, f"cmd-offline-{uuid.uuid4().hex[:6]}")
    command_id = await new_command(platform, gateway)
    sim = Controller(platform, gateway["uuid"])
    await sim.connect()  # the broker now holds a session for it
    await sim.disconnect()
    run_id = await send(platform, command_id, set_value=-1500)
    waiting = await run_reaches(platform, run_id, "SENT")
    await asyncio.sleep(1.0)
    assert (await run(platform, run_id))["status"] == "SENT"
    assert waiting["delivered_datetime"] is None
    await sim.connect()
    try:
        done = await run_reaches(platform, run_id, "SUCCEEDED")
    finally:
        await sim.disconnect()
    assert done["payload"]["value"] == -1500
    # Delivered once, or again after the controller said it was online: it never runs a command_id twice.
    assert {c["command_id"] for c in sim.commands} == {run_id}


async def test_a_command_not_delivered_in_time_expires_and_a_late_answer_is_only_recorded(
    platform: Platform,
) -> None:
    gateway = await new_gateway(platform, f"cmd-expire-{uuid.uuid4().hex[:6]}")
    command_id = await new_command(platform, gateway)
    sim = Controller(platform, gateway["uuid"], mode="honour_expiry")
    await sim.connect()
    await sim.disconnect()
    run_id = await send(platform, command_id, expires_in_s=1)
    expired = await run_reaches(platform, run_id, "EXPIRED")
    assert expired["reason"].startswith("not delivered before it expired at")
    assert expired["delivered_datetime"] is None
    await sim.connect()  # the broker hands over the queued command; the controller refuses to run it
    try:
        await eventually(lambda: asyncio.sleep(0, sim.acks), lambda acks: len(acks) >= 1)
        later = await eventually(lambda: run(platform, run_id), lambda r: len(r["late_acks"]) == 1, within=10)
    finally:
        await sim.disconnect()
    assert later["status"] == "EXPIRED"
    assert later["late_acks"][0]["reason"] == "expired"


async def test_an_acknowledgement_for_an_unknown_run_or_from_another_gateway_is_a_dead_letter(
    platform: Platform,
) -> None:
    gateway = await new_gateway(platform, f"cmd-dl-{uuid.uuid4().hex[:6]}")
    other = await new_gateway(platform, f"cmd-dl-other-{uuid.uuid4().hex[:6]}")
    command_id = await new_command(platform, gateway)
    letters: list[dict[str, Any]] = []
    async with platform.mqtt(identifier=f"gf-test-dl-{uuid.uuid4().hex[:8]}") as watcher:
        await watcher.subscribe(platform.topic(topics.dead_letter("command")), qos=1)

        async def collect() -> None:
            async for message in watcher.messages:
                letters.append(orjson.loads(payload_bytes(message.payload)))

        task = asyncio.create_task(collect())
        try:
            async with controller(platform, gateway["uuid"], mode="silent"):
                run_id = await send(platform, command_id)
                await run_reaches(platform, run_id, "SENT")
            async with controller(platform, other["uuid"], mode="silent") as intruder:
                unknown = str(uuid.uuid4())
                await intruder.publish("cmd/ack", {"command_id": unknown, "status": "delivered"})
                await intruder.publish("cmd/ack", {"command_id": run_id, "status": "succeeded"})
                await eventually(lambda: asyncio.sleep(0, letters), lambda got: len(got) >= 2)
        finally:
            task.cancel()
    reasons = sorted(letter["reason"] for letter in letters)
    assert reasons == [
        f"command run {run_id} was not sent to gateway {other['uuid']}",
        f"unknown command run {unknown}",
    ]
    assert (await run(platform, run_id))["status"] == "SENT"


# -- the command resource ----------------------------------------------------------------------------


async def test_a_template_is_checked_on_save_and_the_topic_must_lie_in_the_gateways_cmd_subtree(
    platform: Platform,
) -> None:
    gateway = await new_gateway(platform, f"cmd-check-{uuid.uuid4().hex[:6]}")
    other = await new_gateway(platform, f"cmd-check-other-{uuid.uuid4().hex[:6]}")
    base = {"name": f"c-{uuid.uuid4().hex[:6]}", "gateway_id": gateway["id"]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"payload": '{"value": $s1'}, "payload"),
        ({"payload": "[1]"}, "payload"),
        ({"payload": '{"v": $s2}'}, "payload"),
        ({"payload": "{}", "topic": topics.gateway_topic(other["uuid"], "cmd")}, "topic"),
        ({"payload": "{}", "topic": topics.gateway_topic(gateway["uuid"], "cmd/ack")}, "topic"),
        ({"payload": "{}", "gateway_id": 987654}, "gateway_id"),
    ]
    for extra, field_name in cases:
        answer = await platform.api.post("/commands", json={"data": {**base, **extra}})
        assert answer.status_code == 400, (extra, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["errors"][0]["field"] == field_name, answer.text

    command_id = await new_command(
        platform, gateway, topic=topics.gateway_topic(gateway["uuid"], "cmd/modbus"), set_value=None
    )
    refused = await platform.api.put(f"/commands/{command_id}/send", json={"data": {}})
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "set_value"
    nothing = await platform.api.get("/commandruns", params={"command_id": command_id})
    assert nothing.json() == []


async def test_commands_are_listed_changed_exported_imported_cloned_and_deleted(platform: Platform) -> None:
    gateway = await new_gateway(platform, f"cmd-crud-{uuid.uuid4().hex[:6]}")
    name = f"heat pump boost {uuid.uuid4().hex[:6]}"
    command_id = await new_command(platform, gateway, name=name, payload={"mode": "boost", "minutes": "$s1"})
    got = (await platform.api.get(f"/commands/{command_id}")).json()
    assert got["name"] == name
    assert got["topic"] == topics.gateway_topic(gateway["uuid"], "cmd")
    assert (got["gateway"]["id"], got["gateway"]["uuid"]) == (gateway["id"], gateway["uuid"])
    listed = await platform.api.get("/commands", params={"q": name})
    assert [c["id"] for c in listed.json()] == [command_id]
    assert listed.headers["X-Total-Count"] == "1"

    changed = {**{k: got[k] for k in ("name", "topic", "payload", "set_value", "description")},
               "gateway_id": gateway["id"], "set_value": 30}  # fmt: skip
    assert (await platform.api.put(f"/commands/{command_id}", json={"data": changed})).status_code == 200
    assert (await platform.api.get(f"/commands/{command_id}")).json()["set_value"] == 30
    duplicate = await platform.api.post("/commands", json={"data": {**changed}})
    assert duplicate.status_code == 409

    exported = (await platform.api.get(f"/commands/{command_id}/export")).json()
    assert (await platform.api.delete(f"/commands/{command_id}")).status_code == 204
    assert (await platform.api.get(f"/commands/{command_id}")).status_code == 404
    imported = await platform.api.post("/commands/import", json={"data": exported})
    assert imported.status_code == 201, imported.text
    new_id = imported.json()["id"]
    assert (await platform.api.get(f"/commands/{new_id}")).json()["payload"] == exported["payload"]
    clone = await platform.api.post(f"/commands/{new_id}/clone", json={"data": {}})
    assert clone.status_code == 201
    assert (await platform.api.get(f"/commands/{clone.json()['id']}")).json()["name"] == f"{name} (copy)"
    assert (await platform.api.put("/commands/987654/send", json={"data": {}})).status_code == 404
    assert (await platform.api.get("/commandruns/987654")).status_code == 404


async def test_a_command_on_a_cmd_sub_topic_reaches_a_controller_subscribed_as_the_protocol_says(
    platform: Platform,
) -> None:
    """Commands may target `cmd/<sub-topic>` (say one inverter of the site); docs/device-protocol.md tells
    controllers to subscribe to `cmd/#` (with No Local, so their own `cmd/ack` is not echoed back)."""
    gateway = await new_gateway(platform, f"cmd-sub-{uuid.uuid4().hex[:6]}")
    command_id = await new_command(
        platform, gateway, topic=topics.gateway_topic(gateway["uuid"], "cmd/inverter/2")
    )
    async with controller(platform, gateway["uuid"]) as sim:
        run_id = await send(platform, command_id, set_value=1500)
        done = await run_reaches(platform, run_id, "SUCCEEDED")
        # Our own acknowledgements never come back to us as commands.
        await asyncio.sleep(0.3)
    assert done["topic"] == topics.gateway_topic(gateway["uuid"], "cmd/inverter/2")
    assert sim.command_topics == ["cmd/inverter/2"]
    assert [c["command_id"] for c in sim.commands] == [run_id]
    for topic in ("cmd/ack/x", "cmd//x", "cmd/+", "cmdx"):
        answer = await platform.api.post(
            "/commands",
            json={"data": {"name": f"bad-{uuid.uuid4().hex[:6]}", "gateway_id": gateway["id"], "payload": "{}",
                           "topic": topics.gateway_topic(gateway["uuid"], topic)}},
        )  # fmt: skip
        assert answer.status_code == 400, (topic, answer.text)
        assert answer.json()["errors"][0]["field"] == "topic"


async def test_commands_are_bound_to_meters_and_spaces_listed_unbound_and_dropped_with_their_objects(
    platform: Platform,
) -> None:
    site = await build_site(platform.api, f"bind-{uuid.uuid4().hex[:6]}")
    meter, space = site.meters["main"], site.space_id
    gateway = {"id": site.gateway_id, "uuid": site.gateway_uuid}
    first, second = await new_command(platform, gateway), await new_command(platform, gateway)
    api = platform.api
    for parent in (f"/meters/{meter}", f"/spaces/{space}"):
        assert (await api.get(f"{parent}/commands")).json() == []
        for command_id in (first, second):
            bound = await api.post(f"{parent}/commands", json={"data": {"command_id": command_id}})
            assert bound.status_code == 201, bound.text
        again = await api.post(f"{parent}/commands", json={"data": {"command_id": first}})
        assert again.status_code == 409 and again.json()["errors"][0]["field"] == "command_id"
        unknown = await api.post(f"{parent}/commands", json={"data": {"command_id": 987654321}})
        assert unknown.status_code == 400 and unknown.json()["errors"][0]["field"] == "command_id"
        bad = await api.post(f"{parent}/commands", json={"data": {"command": first}})
        assert bad.status_code in (400, 422), bad.text
        listed = (await api.get(f"{parent}/commands")).json()
        assert [c["id"] for c in listed] == [first, second]
        assert listed[0]["topic"] == topics.gateway_topic(site.gateway_uuid, "cmd")
        assert (await api.delete(f"{parent}/commands/{first}")).status_code == 204
        assert (await api.delete(f"{parent}/commands/{first}")).status_code == 404
        assert [c["id"] for c in (await api.get(f"{parent}/commands")).json()] == [second]
    missing = await api.get("/meters/987654321/commands")
    assert missing.status_code == 404
    # Deleting the command drops its bindings; deleting the meter drops the meter's.
    assert (await api.delete(f"/commands/{second}")).status_code == 204
    assert (await api.get(f"/spaces/{space}/commands")).json() == []
    third = await new_command(platform, gateway)
    assert (
        await api.post(f"/meters/{meter}/commands", json={"data": {"command_id": third}})
    ).status_code == 201
    assert (await api.delete(f"/spaces/{space}/meters/{meter}")).status_code == 204
    assert (await api.delete(f"/meters/{meter}/points/{site.points['main']}")).status_code == 204
    assert (await api.delete(f"/meters/{meter}")).status_code == 204, "the meter could not be deleted"
    bindings = f'"{platform.schema("command")}".command_bindings'
    await eventually(
        lambda: platform.db.fetchval(
            f"SELECT count(*) FROM {bindings} WHERE kind = 'meter' AND object_id = $1", meter
        ),
        lambda n: n == 0,
    )
