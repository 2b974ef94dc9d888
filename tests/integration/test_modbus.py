"""Modbus TCP acquisition against a real pymodbus server: decoded values, retries, offline/online, end to end.

The tests without the `platform` fixture need only the simulator; the end-to-end test adds the real broker,
registry and database: the poller loads its data source from the registry, publishes telemetry for the data
source's gateway, and ingestion stores it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from libs.bus import Bus
from libs.service import ServiceContext, sibling_client
from proto_schemas import topics
from proto_schemas.telemetry import Telemetry
from services.ingestion.modbus.decoding import decode_registers
from services.ingestion.modbus.poller import (
    ModbusPoller,
    ModbusSource,
    PollerConfig,
    SourcePoller,
    StatusChange,
    registry_sources,
)
from services.simulator.modbus_server import (
    InverterModel,
    ModbusSimulator,
    expected_reading,
    point_addresses,
)
from tests.support import Platform, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = PollerConfig(interval_s=0.25, timeout_s=0.5, retries=1, backoff_s=0.05, offline_after=3)


class FrozenClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def source_row(port: int, addresses: Mapping[str, dict[str, Any]], first_id: int = 1) -> dict[str, Any]:
    """A data source as the registry's /internal/modbussources serves it, point ids in map order."""
    return {
        "data_source_id": 1,
        "gateway_uuid": "00000000-0000-0000-0000-000000000001",
        "host": "127.0.0.1",
        "port": port,
        "points": [{"point_id": first_id + i, "address": a} for i, a in enumerate(addresses.values())],
    }


class Collector:
    """Stands in for the bus: keeps what the poller publishes and every status change."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Telemetry]] = []
        self.changes: list[StatusChange] = []

    async def publish(self, topic: str, message: Telemetry) -> None:
        self.messages.append((topic, message))

    async def on_status(self, change: StatusChange) -> None:
        self.changes.append(change)


@contextlib.asynccontextmanager
async def running(poller: ModbusPoller) -> AsyncIterator[ModbusPoller]:
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.wait_for(poller.loaded.wait(), 30)
        yield poller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_every_format_and_order_is_decoded_as_the_device_encodes_it() -> None:
    model = InverterModel(clock=FrozenClock())
    names = list(point_addresses())
    async with ModbusSimulator(model=model) as sim:
        for function_code in (3, 4):  # holding and input registers serve the same map
            sink = Collector()
            source = ModbusSource.from_row(source_row(sim.port, point_addresses(function_code=function_code)))
            poller = SourcePoller(source, FAST, sink.publish, sink.on_status)
            try:
                readings = await poller.poll_once()
            finally:
                poller.close()
            expected = model.values()
            assert {names[r.point_id - 1]: r.value for r in readings} == {
                name: expected_reading(name, expected) for name in names
            }
            # The batch over the unmapped registers 24-29 was refused and split; the split plan is kept.
            assert poller.state.read_errors == 0
            assert [(r.function_code, r.start, r.count) for r in poller.plan] == [
                (1, 0, 2),
                (2, 0, 2),
                (function_code, 0, 24),
                (function_code, 30, 2),
            ]
            [(topic, message)] = sink.messages
            assert topic == topics.gateway_topic("00000000-0000-0000-0000-000000000001", "telemetry")
            assert message.msg_id is not None and message.msg_id.startswith("modbus-1-")
            assert len({r.ts for r in message.readings}) == 1  # one timestamp per poll
            assert [c.status for c in sink.changes] == ["online"]
    # Signed and swapped values really are exercised.
    assert expected["reactive_power_var"] == -100 and expected["serial_number"] == 20_260_001


async def test_the_register_map_evolves_with_time() -> None:
    clock = FrozenClock()
    model = InverterModel(clock=clock, period_s=600)
    async with ModbusSimulator(model=model) as sim:
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0, reconnect_delay=0)
        await client.connect()
        try:
            seen = []
            for _ in range(6):
                clock.now += 45.0
                response = await client.read_holding_registers(0, count=4, device_id=1)
                energy = decode_registers(response.registers[0:2], "uint32")
                power = decode_registers(response.registers[2:4], "float32")
                seen.append((energy, power))
            coils = await client.read_coils(0, count=2, device_id=1)
            write = await client.write_register(0, 1, device_id=1)
        finally:
            client.close()
    energies = [energy for energy, _ in seen]
    powers = [power for _, power in seen]
    assert energies == sorted(energies) and energies[-1] - energies[0] > 100  # cumulative, rising
    assert len(set(powers)) == len(powers) and all(1_000 <= p <= 10_000 for p in powers)
    assert list(coils.bits[:2]) == [True, False]  # running, no fault
    assert write.isError()  # the map is read-only


async def test_a_silent_device_is_retried_with_backoff_then_goes_offline() -> None:
    """A device that accepts connections but never answers: each poll tries 1 + retries times, reconnecting."""
    connections = 0

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(Exception):
            while await reader.read(1024):
                pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = PollerConfig(interval_s=0.1, timeout_s=0.3, retries=2, backoff_s=0.1, offline_after=2)
    sink = Collector()
    source = ModbusSource.from_row(source_row(port, {"p": point_addresses()["energy_total_wh"]}))
    poller = SourcePoller(source, config, sink.publish, sink.on_status)
    try:
        started = time.monotonic()
        assert await poller.poll_once() == []
        elapsed = time.monotonic() - started
        assert connections == 3  # the first attempt and two retries, each on a fresh connection
        assert elapsed >= 3 * 0.3 + 0.1 + 0.2  # three timeouts and the backoff (0.1 s, then 0.2 s)
        assert poller.state.status == "unknown" and poller.state.consecutive_failures == 1
        await poller.poll_once()
        assert [c.status for c in sink.changes] == ["offline"]
        assert "no answer" in (sink.changes[0].reason or "")
        assert sink.messages == []
    finally:
        poller.close()
        server.close()
        await server.wait_closed()


async def test_the_data_source_goes_offline_when_the_device_stops_and_online_when_it_returns() -> None:
    sink = Collector()
    async with ModbusSimulator() as sim:
        rows = [source_row(sim.port, point_addresses())]

        async def load() -> Sequence[Mapping[str, Any]]:
            return rows

        async with running(
            ModbusPoller(None, load, config=FAST, publish=sink.publish, on_status=sink.on_status)
        ) as poller:
            await eventually(lambda: asyncio.sleep(0, poller.status()[1]["status"]), lambda s: s == "online")
            await sim.stop()
            state = await eventually(
                lambda: asyncio.sleep(0, poller.status()[1]), lambda s: s["status"] == "offline", within=10
            )
            assert state["consecutive_failures"] >= FAST.offline_after
            published = len(sink.messages)
            await sim.start()  # same port
            await eventually(
                lambda: asyncio.sleep(0, poller.status()[1]["status"]), lambda s: s == "online", within=10
            )
            await eventually(lambda: asyncio.sleep(0, len(sink.messages)), lambda n: n > published)
    assert [c.status for c in sink.changes] == ["online", "offline", "online"]
    assert [c.previous for c in sink.changes] == ["unknown", "online", "offline"]


async def test_the_poller_follows_the_sources_it_is_given() -> None:
    sink = Collector()
    async with ModbusSimulator() as sim:
        rows: list[dict[str, Any]] = [source_row(sim.port, {"energy": point_addresses()["energy_total_wh"]})]

        async def load() -> Sequence[Mapping[str, Any]]:
            return rows

        poller = ModbusPoller(None, load, config=FAST, publish=sink.publish, on_status=sink.on_status)
        async with running(poller):
            await eventually(lambda: asyncio.sleep(0, len(sink.messages)), lambda n: n >= 1)
            # A point added: the source is restarted with its status kept (no second "online").
            rows[0] = source_row(
                sim.port,
                {"energy": point_addresses()["energy_total_wh"], "v": point_addresses()["voltage_dv"]},
            )
            poller.refresh()
            await eventually(lambda: asyncio.sleep(0, len(sink.messages[-1][1].readings)), lambda n: n == 2)
            rows.clear()
            poller.refresh()
            await eventually(lambda: asyncio.sleep(0, poller.status()), lambda s: s == {})
    assert [c.status for c in sink.changes] == ["online"]


async def test_replicas_share_the_data_sources() -> None:
    rows = [{**source_row(1, {}), "data_source_id": source_id} for source_id in range(1, 8)]
    polled = []
    for replica in range(3):
        config = PollerConfig(shard_index=replica, shard_count=3, start_spread_s=60)
        poller = ModbusPoller(
            None, lambda: asyncio.sleep(0, rows), config=config, publish=Collector().publish
        )
        poller.apply(rows)
        polled.append(sorted(poller.sources()))
        await poller.stop()
    assert polled == [[3, 6], [1, 4, 7], [2, 5]]


@contextlib.asynccontextmanager
async def simulator_process() -> AsyncIterator[int]:
    """`python -m services.simulator.modbus_server --port 0` in its own process; yields its port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.simulator.modbus_server",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.readline(), 30)
        match = re.match(rb"modbus simulator on [^:]+:(\d+)", first)
        assert match, first
        yield int(match.group(1))
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0  # SIGTERM stops it cleanly


# -- end to end ---------------------------------------------------------------------------------------


async def test_modbus_readings_reach_the_broker_and_are_stored(platform: Platform) -> None:
    name = f"modbus-{uuid.uuid4().hex[:6]}"

    async def post(path: str, data: dict[str, Any]) -> dict[str, Any]:
        answer = await platform.api.post(path, json={"data": data})
        assert answer.status_code == 201, f"POST {path}: {answer.status_code} {answer.text}"
        return dict(answer.json())

    model = InverterModel(clock=FrozenClock())
    async with ModbusSimulator(model=model) as sim:
        gateway = await post("/gateways", {"name": f"{name} gateway"})
        datasource = await post(
            "/datasources",
            {
                "name": f"{name} inverter",
                "gateway_id": gateway["id"],
                "protocol": "modbus-tcp",
                "connection": {"host": "127.0.0.1", "port": sim.port},
            },
        )
        point_names: dict[int, str] = {}
        for field, address in point_addresses().items():
            bit = address["function_code"] in (1, 2)
            point = await post(
                "/points",
                {
                    "name": field,
                    "data_source_id": datasource["id"],
                    "object_type": "BINARY_VALUE" if bit else "ANALOG_VALUE",
                    "address": address,
                },
            )
            point_names[point["id"]] = field
        point_ids = sorted(point_names)

        settings = platform.settings.model_copy(update={"registry_url": platform.processes.url("registry")})
        bus = Bus(
            settings, "modbus-test", client_id=f"gf-modbus-test-{uuid.uuid4().hex[:8]}", persistent=False
        )
        ctx = ServiceContext(name="ingestion", settings=settings, bus=bus, http=sibling_client())
        from_registry = registry_sources(ctx)

        async def ours() -> Sequence[Mapping[str, Any]]:  # other tests' modbus sources are not ours to poll
            return [row for row in await from_registry() if row["data_source_id"] == datasource["id"]]

        changes: list[StatusChange] = []

        async def on_status(change: StatusChange) -> None:
            changes.append(change)

        telemetry_topic = platform.topic(topics.gateway_topic(gateway["uuid"], "telemetry"))
        received: list[Telemetry] = []
        config = PollerConfig(interval_s=0.5, timeout_s=0.5, retries=1, backoff_s=0.05, offline_after=3)
        try:
            await bus.start()
            async with platform.mqtt() as client:
                await client.subscribe(telemetry_topic, qos=1)

                async def collect() -> None:
                    async for message in client.messages:
                        received.append(Telemetry.model_validate_json(message.payload))

                collector = asyncio.create_task(collect())
                poller = ModbusPoller(ctx, ours, config=config, on_status=on_status)
                async with running(poller):
                    assert set(poller.sources()) == {datasource["id"]}
                    await eventually(lambda: asyncio.sleep(0, len(received)), lambda n: n >= 2, within=20)
                    # Every point's value, decoded, on the broker.
                    expected = model.values()
                    ours_received = [
                        m for m in received if (m.msg_id or "").startswith(f"modbus-{datasource['id']}-")
                    ]
                    assert ours_received
                    for message in ours_received:
                        assert {point_names[r.point_id]: r.value for r in message.readings} == {
                            field: expected_reading(field, expected) for field in point_names.values()
                        }
                    # ... and stored by ingestion.
                    await eventually(
                        lambda: platform.count_raw(point_ids), lambda n: n >= 2 * len(point_ids), within=30
                    )

                    # The device stops: offline after the missed polls; it comes back: online.
                    await sim.stop()
                    await eventually(
                        lambda: asyncio.sleep(0, [c.status for c in changes]),
                        lambda s: s[-1:] == ["offline"],
                        within=15,
                    )
                    assert poller.status()[datasource["id"]]["status"] == "offline"
                    stored = await platform.count_raw(point_ids)
                    await sim.start()
                    await eventually(
                        lambda: asyncio.sleep(0, [c.status for c in changes]),
                        lambda s: s[-1:] == ["online"],
                        within=15,
                    )
                    await eventually(lambda: platform.count_raw(point_ids), lambda n: n > stored, within=30)
                collector.cancel()
        finally:
            await bus.stop()
            assert ctx.http is not None
            await ctx.http.aclose()
    assert [(c.previous, c.status) for c in changes] == [
        ("unknown", "online"),
        ("online", "offline"),
        ("offline", "online"),
    ]
    assert all(c.data_source_id == datasource["id"] and c.gateway_uuid == gateway["uuid"] for c in changes)
    assert not platform.processes.crashed()
