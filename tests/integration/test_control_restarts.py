"""A plan survives a restart of the broker and of the command service in the middle of it: every interval is
dispatched once, none twice, none skipped, and the controller sees every setpoint in order.

The test runs a Mosquitto of its own (persistent, on a free port: the shared broker is never touched) and a
registry and a command service pointed at it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import asyncpg
import httpx
import pytest

from deploy.local.infra import STATE_DIR, Infra, free_port, free_port_block, start_mosquitto
from deploy.local.processes import ServiceProcesses
from libs.service import INTERNAL_TOKEN_HEADER
from libs.settings import SERVICES, Settings
from tests.conftest import drop_schemas, platform_env
from tests.integration.test_commands import Controller
from tests.support import Platform, eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Broker:
    state: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_mosquitto(self.state, self.port)
        if self.proc is None:
            pytest.fail("the mosquitto binary is needed (make system-deps)")

    def stop(self) -> None:
        """A clean stop: Mosquitto saves its state (sessions, retained and queued messages) first."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)
            self.proc = None


@dataclass
class Own:
    platform: Platform
    broker: Broker
    registry: httpx.AsyncClient


@pytest.fixture(scope="module")
async def own(infra: Infra) -> AsyncIterator[Own]:
    broker = Broker(STATE_DIR / "test" / f"restarts-{uuid.uuid4().hex[:8]}", free_port())
    broker.start()
    run_id = f"r{uuid.uuid4().hex[:8]}"
    env = platform_env(
        Infra(database_url=infra.database_url, mqtt_url=f"mqtt://127.0.0.1:{broker.port}"), run_id
    )
    processes = ServiceProcesses(env, STATE_DIR / "test-logs" / run_id, free_port_block(len(SERVICES)))
    with mock.patch.dict("os.environ", env):
        settings = Settings()
    headers = {INTERNAL_TOKEN_HEADER: env["GRIDFLEET_INTERNAL_TOKEN"]}
    pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await asyncio.to_thread(processes.start_all, ["registry", "command"])
        async with (
            httpx.AsyncClient(base_url=processes.url("command"), headers=headers, timeout=30) as command,
            httpx.AsyncClient(base_url=processes.url("registry"), headers=headers, timeout=30) as registry,
        ):
            yield Own(Platform(processes, settings, command, pool), broker, registry)
    finally:
        await asyncio.to_thread(processes.stop_all)
        await pool.close()
        await drop_schemas(infra.database_url, env["GRIDFLEET_SCHEMA_PREFIX"])
        broker.stop()


async def make_site(registry: httpx.AsyncClient) -> tuple[int, str]:
    async def post(path: str, data: dict[str, Any]) -> dict[str, Any]:
        answer = await registry.post(path, json={"data": data})
        assert answer.status_code == 201, f"POST {path}: {answer.text}"
        return dict(answer.json())

    tag = uuid.uuid4().hex[:8]
    gateway = await post("/gateways", {"name": f"controller {tag}"})
    zone = next(z["id"] for z in (await registry.get("/timezones")).json() if z["name"] == "Europe/Amsterdam")
    instance = await post("/instances", {"title": f"Home {tag}", "serial": f"SN-{tag}", "timezone_id": zone})
    await post(f"/instances/{instance['id']}/gateways", {"gateway_id": gateway["id"]})
    await post(
        f"/instances/{instance['id']}/devicegroups",
        {"group": "battery", "max_charge_w": 5000, "max_discharge_w": 5000, "capacity_wh": 10000},
    )
    return int(instance["id"]), str(gateway["uuid"])


async def intervals(own: Own, instance_id: int) -> list[dict[str, Any]]:
    schema = own.platform.schema("command")
    rows = await own.platform.db.fetch(
        f'SELECT seq, start_at, outcome, dispatched_at, dispatch_count FROM "{schema}".schedule_intervals'
        " WHERE instance_id = $1 ORDER BY seq",
        instance_id,
    )
    return [dict(row) for row in rows]


def battery_powers(sim: Controller) -> list[int]:
    """Every battery setpoint the controller was given, each change once, in the order it came."""
    out: list[int] = []
    for _, control in sim.controls:
        battery = next((p for p in control["policies"] if p["group"] == "battery"), None)
        if battery is not None and (not out or out[-1] != battery["setpoint"]["power_w"]):
            out.append(battery["setpoint"]["power_w"])
    return out


async def test_a_plan_survives_a_broker_and_command_service_restart_with_nothing_twice_and_nothing_skipped(
    own: Own,
) -> None:
    instance_id, gateway_uuid = await make_site(own.registry)
    powers = [1000, 2000, 3000]
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    # The interval across the restarts is long: on a busy machine a restart (a new Python process importing
    # everything) has taken 15 s.
    bounds = [
        start,
        start + timedelta(seconds=5),
        start + timedelta(seconds=40),
        start + timedelta(seconds=45),
    ]
    data = {
        "schedule_id": "through-restarts",
        "group": "battery",
        "intervals": [
            {"start": bounds[n].isoformat(), "end": bounds[n + 1].isoformat(), "setpoint": {"power_w": power}}
            for n, power in enumerate(powers)
        ],
    }
    sim = Controller(own.platform, gateway_uuid)
    await sim.connect()
    try:
        answer = await own.platform.api.post(f"/instances/{instance_id}/schedules", json={"data": data})
        assert answer.status_code == 201, answer.text
        await eventually(
            lambda: intervals(own, instance_id), lambda rows: rows[0]["outcome"] == "applied", within=40
        )
        second = bounds[1].timestamp()
        # The broker goes away 1 s before the second interval starts; the command service is still up and tries
        # to dispatch it (its publish fails, the transaction rolls back); then the command service is killed
        # too, the broker comes back, then the command service.
        await asyncio.sleep(max(0.0, second - 1.0 - time.time()))
        await asyncio.to_thread(own.broker.stop)
        await sim.drop()
        await asyncio.sleep(max(0.0, second + 1.5 - time.time()))
        await asyncio.to_thread(own.platform.processes.kill, "command")
        await asyncio.to_thread(own.broker.start)
        await sim.connect()
        await asyncio.to_thread(own.platform.processes.restart, "command")
        rows = await eventually(
            lambda: intervals(own, instance_id), lambda rows: all(r["outcome"] for r in rows), within=60
        )
        await eventually(lambda: asyncio.sleep(0, battery_powers(sim)), lambda p: p[-1:] == [3000], within=15)
    finally:
        await sim.drop()
    assert [r["outcome"] for r in rows] == ["applied"] * 3, rows
    assert [r["dispatch_count"] for r in rows] == [1, 1, 1], rows
    assert rows[1]["dispatched_at"].timestamp() >= second + 1.5  # late, after the restart, but dispatched
    assert rows[2]["dispatched_at"].timestamp() - rows[2]["start_at"].timestamp() < 2.0
    assert battery_powers(sim) == powers
    versions = [control["version"] for _, control in sim.controls]
    assert versions == sorted(versions), "a controller never sees an older state after a newer one"
    assert not own.platform.processes.crashed()
