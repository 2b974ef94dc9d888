"""`make bench`: readings per second stored by ingestion while a fleet of simulated controllers publishes at once
through a broker with per-gateway accounts, beside the broker-alone ceiling for the same traffic, measured in the
same run on the same machine.

A Mosquitto of the benchmark's own runs the dynamic security plugin; the platform's services log in with the
platform account (GRIDFLEET_MQTT_DYNSEC=true), and the registry makes each gateway's broker account as the
gateways are created through the REST API. Then `GRIDFLEET_BENCH_SIM_PROCESSES` simulator processes
(`python -m services.simulator --sync`) connect every gateway (one authenticated connection each, one asyncio
task each), and on a signal publish the same history at once: every point at `GRIDFLEET_BENCH_FLEET_STEPS`
one-minute timestamps, about 100 readings per message, QoS 1, a window of messages in flight per gateway.
The pipeline figure is the readings stored in `<schema>.raw_readings` divided by the time from the signal to
the last of them stored. The ceiling replays the same payloads over the same connections to one subscriber
that parses each message and counts its readings. The CPU each component used during the pipeline run is
printed too, PostgreSQL's charged to the service whose connection each backend serves (`postgres <- service`)
and the rest of the server apart (`postgres (other)`: on a shared machine, other people's work).

Sizes: GRIDFLEET_BENCH_GATEWAYS (1000) x GRIDFLEET_BENCH_GATEWAY_POINTS (10 ENERGY points) x
GRIDFLEET_BENCH_FLEET_STEPS (100) readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import secrets
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from unittest import mock

import aiomqtt
import asyncpg
import httpx
import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from deploy.local.infra import STATE_DIR, Infra, free_port, free_port_block, start_secure_mosquitto
from deploy.local.processes import ServiceProcesses
from libs import dynsec
from libs.bus import Bus
from libs.settings import SERVICES, MqttTarget, Settings
from proto_schemas import topics
from services.simulator.controllers import GatewayConfig, provision
from tests.conftest import drop_schemas, platform_env

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(3600)]

GATEWAYS = int(os.environ.get("GRIDFLEET_BENCH_GATEWAYS", "1000"))
POINTS_PER_GATEWAY = int(os.environ.get("GRIDFLEET_BENCH_GATEWAY_POINTS", "10"))
STEPS = int(os.environ.get("GRIDFLEET_BENCH_FLEET_STEPS", "100"))
SIM_PROCESSES = int(os.environ.get("GRIDFLEET_BENCH_SIM_PROCESSES", "2"))
WINDOW = int(os.environ.get("GRIDFLEET_BENCH_FLEET_WINDOW", "10"))
PER_MESSAGE = 100
STEP_S = 60
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
READINGS = GATEWAYS * POINTS_PER_GATEWAY * STEPS
WARMUP_TS = START_MS - STEP_S * 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_ports(pid: int) -> set[int]:
    """Local TCP ports of a process's sockets (Linux /proc)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def backends_by_service(processes: ServiceProcesses, database_url: str) -> dict[int, str]:
    """PostgreSQL backend pid -> the service whose connection it serves (matched by the client's TCP port), so
    the database's CPU is charged to the services that caused it, apart from other users of the server."""
    owner = {port: name for name, proc in processes.procs.items() for port in local_ports(proc.pid)}
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT pid, client_port FROM pg_stat_activity WHERE client_port IS NOT NULL")
    finally:
        await conn.close()
    return {row["pid"]: owner[row["client_port"]] for row in rows if row["client_port"] in owner}


def cpu_by_component(
    processes: ServiceProcesses | None,
    simulators: list[int],
    broker: int,
    backends: dict[int, str] | None = None,
) -> dict[str, float]:
    """CPU seconds so far per service process, the simulators, the broker, this process, and each PostgreSQL
    process (`postgres <- service/<pid>` for the platform's own backends, `postgres (other)/<pid>` for the
    rest of the server: deltas are taken per process, so backends that come and go do not skew them)."""
    out = {name: cpu_seconds(proc.pid) for name, proc in (processes.procs.items() if processes else [])}
    out["simulators"] = sum(cpu_seconds(pid) for pid in simulators)
    out["mosquitto"] = cpu_seconds(broker)
    out["pytest (counting)"] = cpu_seconds(os.getpid())
    backends = backends or {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    service = backends.get(int(entry.name))
                    name = f"postgres <- {service}" if service else "postgres (other)"
                    out[f"{name}/{entry.name}"] = cpu_seconds(int(entry.name))
            except OSError:
                continue
    return out


def cpu_line(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    spent: dict[str, float] = {}
    for name, value in after.items():
        key = name.split("/", 1)[0] if name.startswith("postgres") else name
        spent[key] = spent.get(key, 0.0) + max(0.0, value - before.get(name, 0.0))
    busy = sorted((n for n in spent if spent[n] >= 0.05), key=lambda n: -spent[n])
    total = sum(spent[n] for n in busy)
    return (
        f"{total:.1f} CPU s in {seconds:.1f} s ({total / seconds:.2f} of {os.cpu_count()} cores): "
        + ", ".join(f"{n} {spent[n]:.1f}" for n in busy)
    )


async def handler_metrics(url: str) -> tuple[float, float, float]:
    """Ingestion's telemetry handler so far: (batches, seconds in the handler, messages handled)."""
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(f"{url}/metrics")).text
    wanted = {"gridfleet_bus_handler_seconds_count": 0.0, "gridfleet_bus_handler_seconds_sum": 0.0}
    messages = 0.0
    for line in text.splitlines():
        if f'subscription="{topics.TELEMETRY_ALL}"' not in line:
            continue
        name, value = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
        if name in wanted:
            wanted[name] += value
        elif name == "gridfleet_bus_messages_total":
            messages += value
    return (
        wanted["gridfleet_bus_handler_seconds_count"],
        wanted["gridfleet_bus_handler_seconds_sum"],
        messages,
    )


async def dead_letter_count(processes: ServiceProcesses, env: dict[str, str]) -> int:
    """Messages ingestion has sent to its dead-letter topic since it started."""
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(
            f"{processes.url('ingestion')}/internal/stats",
            headers={"X-Gridfleet-Internal": env["GRIDFLEET_INTERNAL_TOKEN"]},
        )
    return int(answer.json()["dead_letters"])


def _raise_fd_limit() -> None:
    """A thousand connections: the broker and the simulators (started from here) inherit this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class SecureBroker:
    def __init__(self, port: int, password: str, pid: int) -> None:
        self.port = port
        self.password = password
        self.pid = pid

    @property
    def platform(self) -> MqttTarget:
        return MqttTarget(self.platform_url)

    @property
    def platform_url(self) -> str:
        return f"mqtt://gridfleet:{self.password}@127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def secure_bench_broker() -> Iterator[SecureBroker]:
    """A broker of the benchmark's own with dynamic security (per-gateway accounts)."""
    _raise_fd_limit()
    port = free_port()
    password = secrets.token_urlsafe(16)
    state = STATE_DIR / "bench" / f"secure-{port}-{uuid.uuid4().hex[:6]}"
    proc = start_secure_mosquitto(state, port, "admin", password)
    if proc is None:
        pytest.fail("make bench needs mosquitto with its dynamic security plugin (make system-deps)")
    admin = MqttTarget(f"mqtt://admin:{password}@127.0.0.1:{port}")
    asyncio.run(dynsec.ensure_platform_account(admin, "gridfleet", password))
    yield SecureBroker(port, password, proc.pid)
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(state, ignore_errors=True)  # a thousand gateways' accounts: not worth keeping


@asynccontextmanager
async def secure_platform(
    infra: Infra, broker: SecureBroker
) -> AsyncIterator[tuple[ServiceProcesses, Settings, dict[str, str]]]:
    run_id = f"f{uuid.uuid4().hex[:8]}"
    env = {
        **platform_env(Infra(database_url=infra.database_url, mqtt_url=broker.platform_url), run_id),
        "GRIDFLEET_MQTT_DYNSEC": "true",
        "GRIDFLEET_LOG_LEVEL": "WARNING",
        # Provisioning a thousand gateways is one administrator's burst of requests: lift the per-user limit.
        "GRIDFLEET_RATE_LIMIT_PER_S": "100000",
        "GRIDFLEET_RATE_LIMIT_BURST": "100000",
    }
    processes = ServiceProcesses(env, STATE_DIR / "bench-logs" / run_id, free_port_block(len(SERVICES)))
    with mock.patch.dict(os.environ, env):
        settings = Settings()
    try:
        await asyncio.to_thread(processes.start_all)
        yield processes, settings, env
    finally:
        await asyncio.to_thread(processes.stop_all)
        await drop_schemas(infra.database_url, env["GRIDFLEET_SCHEMA_PREFIX"])


async def forget_service_sessions(broker: SecureBroker, settings: Settings) -> None:
    """Drop the stopped services' persistent sessions, so the broker queues nothing for them in the ceiling."""
    for service in SERVICES:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        client_id = Bus(settings, service).client_id
        target = broker.platform
        async with aiomqtt.Client(
            target.host, target.port, username=target.username, password=target.password,
            identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5, clean_start=True, properties=props,
        ):  # fmt: skip
            pass


class Simulators:
    """Simulator processes driven over stdio: READY once connected, a line to publish, DONE, a line to leave."""

    def __init__(self, configs: list[GatewayConfig], broker: SecureBroker, prefix: str, work: Path) -> None:
        self.configs = configs
        self.broker = broker
        self.prefix = prefix
        self.work = work
        self.procs: list[asyncio.subprocess.Process] = []
        self.ready: list[list[int]] = []
        self.done: list[list[float]] = []

    async def start(self) -> None:
        for index in range(SIM_PROCESSES):
            part = self.configs[index::SIM_PROCESSES]
            config = self.work / f"gateways-{index}.json"
            config.write_text(json.dumps({"gateways": [c.to_json() for c in part]}))
            args = [
                "-m", "services.simulator", "--config", str(config),
                "--broker", f"mqtt://127.0.0.1:{self.broker.port}", "--topic-prefix", self.prefix,
                "--from", str(START_MS), "--until", str(START_MS + STEPS * STEP_S * 1000),
                "--step", str(STEP_S), "--per-message", str(PER_MESSAGE), "--window", str(WINDOW),
                "--seed", "1", "--once", "--sync", "--log-level", "WARNING",
            ]  # fmt: skip
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
                )
            )
        for proc in self.procs:
            self.ready.append([int(x) for x in (await self._line(proc, "READY", 600))[1:]])

    async def _line(self, proc: asyncio.subprocess.Process, word: str, wait_s: float) -> list[str]:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), wait_s)).decode().split()
        if not line or line[0] != word:
            raise RuntimeError(
                f"simulator {proc.pid}: expected {word}, got {line!r} (exit {proc.returncode})"
            )
        return line

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def signal(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")

    async def wait_done(self, wait_s: float) -> None:
        for proc in self.procs:
            self.done.append([float(x) for x in (await self._line(proc, "DONE", wait_s))[1:]])

    async def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.write(b"bye\n")
                proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def warm_up(
    broker: SecureBroker,
    prefix: str,
    configs: list[GatewayConfig],
    count: Callable[[], Awaitable[int]],
    wait_s: float = 180.0,
) -> None:
    """One reading of every point before the clock starts: ingestion must know all points (it refreshes its
    directory on registry changes), and every meter gets its first reading. Resent until all are stored."""
    expected = sum(len(c.points) for c in configs)
    target = broker.platform
    deadline = time.monotonic() + wait_s
    async with aiomqtt.Client(
        target.host, target.port, username=target.username, password=target.password,
        identifier=f"gf-bench-warmup-{uuid.uuid4().hex[:8]}", max_inflight_messages=100,
        logger=_quiet(),
    ) as client:  # fmt: skip
        while True:
            for first in range(0, len(configs), 100):
                await asyncio.gather(
                    *(
                        client.publish(
                            prefix + topics.gateway_topic(c.uuid, "telemetry"),
                            orjson.dumps(
                                {
                                    "msg_id": f"warmup-{c.uuid}",
                                    "readings": [
                                        {"point_id": p.id, "ts": WARMUP_TS, "value": 0} for p in c.points
                                    ],
                                }
                            ),
                            qos=1,
                        )
                        for c in configs[first : first + 100]
                    )
                )
            until = time.monotonic() + 10
            while time.monotonic() < until:
                if await count() >= expected:
                    return
                await asyncio.sleep(0.5)
            if time.monotonic() > deadline:
                pytest.fail(
                    f"warm-up readings not all stored after {wait_s:.0f} s: {await count()} of {expected}"
                )


def _quiet() -> logging.Logger:
    quiet = logging.getLogger("gridfleet.bench.fleet.mqtt")
    quiet.setLevel(logging.ERROR)
    return quiet


async def broker_ceiling(
    broker: SecureBroker, prefix: str, configs: list[GatewayConfig], work: Path
) -> tuple[float, float, str]:
    """The same payloads over the same authenticated connections, to one subscriber that parses and counts."""
    target = broker.platform
    received = 0
    finished = asyncio.get_running_loop().create_future()
    async with aiomqtt.Client(
        target.host, target.port, username=target.username, password=target.password,
        identifier=f"gf-bench-sub-{uuid.uuid4().hex[:8]}", max_queued_incoming_messages=0, logger=_quiet(),
    ) as client:  # fmt: skip
        await client.subscribe(prefix + topics.TELEMETRY_ALL, qos=1)

        async def count() -> None:
            nonlocal received
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                received += len(orjson.loads(message.payload)["readings"])
                if received >= READINGS:
                    finished.set_result(time.time())
                    return

        counter = asyncio.create_task(count())
        sims = Simulators(configs, broker, prefix, work)
        try:
            await sims.start()
            before = cpu_by_component(None, sims.pids(), broker.pid)
            started = time.time()
            sims.signal()
            try:
                done_at = await asyncio.wait_for(finished, 600)
            except TimeoutError:
                pytest.fail(f"broker ceiling: {received} of {READINGS} readings delivered after 600 s")
            after = cpu_by_component(None, sims.pids(), broker.pid)
            await sims.wait_done(60)
        finally:
            await sims.close()
            counter.cancel()
    publishers_done = max(d[1] for d in sims.done) - started
    return READINGS / (done_at - started), publishers_done, cpu_line(before, after, done_at - started)


async def test_fleet_throughput(secure_bench_broker: SecureBroker, infra: Infra, tmp_path: Path) -> None:
    broker = secure_bench_broker
    async with secure_platform(infra, broker) as (processes, settings, env):
        prefix = settings.topic_prefix
        provision_started = time.perf_counter()
        configs = await provision(
            processes.url("gateway"),
            "administrator",
            settings.admin_password,
            GATEWAYS,
            POINTS_PER_GATEWAY,
            ("energy",),
            name=f"bench-{prefix.strip('/')}",
            concurrency=32,
        )
        provision_s = time.perf_counter() - provision_started

        raw = f'"{settings.schema_for("ingestion")}".raw_readings'
        state = f'"{settings.schema_for("ingestion")}".gateway_state'
        pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2)
        assert pool is not None

        async def count() -> int:
            return int(await pool.fetchval(f"SELECT count(*) FROM {raw}"))

        async def inserted() -> int:
            """Rows inserted so far by the server's statistics: nearly free, but up to ~1 s late."""
            return int(await pool.fetchval("SELECT pg_stat_get_tuples_inserted($1::regclass)", raw))

        sims = Simulators(configs, broker, prefix, tmp_path)
        try:
            await warm_up(broker, prefix, configs, count)
            warm = await count()
            await sims.start()
            # Every gateway said `online` and sent a health report at connect: let ingestion settle them first.
            deadline = time.monotonic() + 120
            while await pool.fetchval(
                f"SELECT count(*) FROM {state} WHERE status = 'online' AND health IS NOT NULL"
            ) < len(configs):
                if time.monotonic() > deadline:
                    pytest.fail("the gateways' status and health were not all stored within 120 s")
                await asyncio.sleep(0.5)
            backends = await backends_by_service(processes, infra.database_url)
            before = cpu_by_component(processes, sims.pids(), broker.pid, backends)
            handler_before = await handler_metrics(processes.url("ingestion"))
            inserted_before = await inserted()
            dead_letters_before = await dead_letter_count(processes, env)
            load_before = os.getloadavg()[0]
            started = time.time()
            sims.signal()
            stored = 0
            exact_at = started
            while True:
                # count(*) over a million rows costs the database ~50 ms: on a big run only once nearly done
                # (or every 5 s); a small table is cheap to count every time.
                if (
                    READINGS <= 200_000
                    or await inserted() - inserted_before >= 0.9 * READINGS
                    or time.time() - exact_at > 5
                ):
                    exact_at = time.time()
                    stored = await count() - warm
                    if stored >= READINGS:
                        break
                if time.time() - started > 900:
                    pytest.fail(f"ingestion incomplete after 900 s: {stored} of {READINGS} readings stored")
                if processes.crashed():
                    pytest.fail(f"services crashed: {processes.crashed()}")
                await asyncio.sleep(0.2)
            finished = time.time()
            load_after = os.getloadavg()[0]
            after = cpu_by_component(processes, sims.pids(), broker.pid, backends)
            handler_after = await handler_metrics(processes.url("ingestion"))
            await sims.wait_done(60)
            dead_letters = await dead_letter_count(processes, env) - dead_letters_before
        finally:
            await sims.close()
            await pool.close()
        assert not processes.crashed()
    await forget_service_sessions(broker, settings)
    pipeline = READINGS / (finished - started)
    publishers_done = max(d[1] for d in sims.done) - started
    published = sum(int(d[3]) for d in sims.done)
    batches, busy, handled = (a - b for a, b in zip(handler_after, handler_before, strict=True))

    ceiling, ceiling_publishers_done, ceiling_cpu = await broker_ceiling(broker, prefix, configs, tmp_path)
    print(
        "\n"
        f"gridfleet fleet benchmark ({GATEWAYS:,} gateways x {POINTS_PER_GATEWAY} ENERGY points x {STEPS} steps"
        f" = {READINGS:,} readings, ~{PER_MESSAGE} per message, QoS 1, window {WINDOW} per gateway,"
        f" {SIM_PROCESSES} simulator processes, authenticated broker (dynamic security), {os.cpu_count()} cores)\n"
        f"  provisioning through the REST API       {provision_s:>12.1f} s"
        f"  ({GATEWAYS / provision_s:,.0f} gateways/s, {GATEWAYS * POINTS_PER_GATEWAY / provision_s:,.0f} points/s)\n"
        f"  pipeline  fleet publish -> raw_readings  {pipeline:>12,.0f} readings/s"
        f"  (publishers acked after {publishers_done:.1f} s, all stored after {finished - started:.1f} s)\n"
        f"  ceiling   broker alone (same connections and payloads -> 1 subscriber, parsed)"
        f" {ceiling:>12,.0f} readings/s  (publishers acked after {ceiling_publishers_done:.1f} s)\n"
        f"  ratio     pipeline / broker ceiling      {pipeline / ceiling:>12.2f}\n"
        f"  target    100,000 readings/s stored, ratio 0.1 -> "
        f"{'met' if pipeline >= 100_000 and pipeline / ceiling >= 0.1 else 'NOT met'}\n"
        f"  ingestion: {batches:,.0f} batches of {handled / max(batches, 1):.0f} messages"
        f" ({READINGS / max(batches, 1):,.0f} readings) on average; in its telemetry handler"
        f" {busy:.1f} s of the {finished - started:.1f} s; dead letters {dead_letters}\n"
        f"  CPU, pipeline run: {cpu_line(before, after, finished - started)}\n"
        f"  1-minute load average {load_before:.1f} before the pipeline run, {load_after:.1f} after"
        " (other work on this machine competes for its cores)\n"
        f"  CPU, ceiling run:  {ceiling_cpu}\n"
    )
    assert published == READINGS
    assert dead_letters == 0
    assert stored == READINGS  # every reading stored exactly once
