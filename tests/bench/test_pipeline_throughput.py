"""`make bench`: readings per second from MQTT publish to stored hourly aggregates, beside two ceilings measured
in the same run on the same machine: the broker alone (publisher -> subscriber, same payloads, QoS 1) and the
database alone (bulk upsert of the same rows). Prints each figure and the ratio of the pipeline to the lower
ceiling. Sizes: GRIDFLEET_BENCH_READINGS (default 1,000,000), 100 readings per message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from unittest import mock

import aiomqtt
import asyncpg
import httpx
import orjson
import pytest

from deploy.local.infra import STATE_DIR, Infra, free_port, free_port_block, start_mosquitto
from deploy.local.processes import ServiceProcesses
from libs.settings import SERVICES, MqttTarget, Settings
from proto_schemas import topics
from tests.conftest import drop_schemas, platform_env

pytestmark = pytest.mark.asyncio(loop_scope="session")

READINGS = int(os.environ.get("GRIDFLEET_BENCH_READINGS", "1000000"))
PER_MESSAGE = 100
POINTS = 1000
METERS = 10
WINDOW = 64  # publishes in flight at once, as a controller with a send window would have
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_component(processes: ServiceProcesses) -> dict[str, float]:
    """CPU seconds per service process, and for PostgreSQL and Mosquitto as a whole."""
    out = {name: cpu_seconds(proc.pid) for name, proc in processes.procs.items()}
    for comm in ("postgres", "mosquitto"):
        total = 0.0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "comm").read_text().strip() == comm:
                        total += cpu_seconds(int(entry.name))
                except OSError:
                    continue
        out[comm] = total
    return out


@pytest.fixture(scope="module")
def bench_broker() -> Iterator[str]:
    """A broker of the benchmark's own, configured never to drop a QoS 1 backlog."""
    port = free_port()
    proc = start_mosquitto(STATE_DIR / "bench" / f"mosquitto-{port}", port)
    if proc is None:
        pytest.fail("make bench needs the mosquitto binary (make system-deps installs it)")
    yield f"mqtt://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def payloads(point_ids: list[int]) -> list[bytes]:
    """Every message of the run: 100 points at one minute each, registers rising 1 kWh per minute."""
    out = []
    per_ts = len(point_ids) // PER_MESSAGE
    for m in range(READINGS // PER_MESSAGE):
        minute, chunk = divmod(m, per_ts)
        ts = START_MS + minute * 60_000
        ids = point_ids[chunk * PER_MESSAGE : (chunk + 1) * PER_MESSAGE]
        out.append(
            orjson.dumps({"readings": [{"point_id": p, "ts": ts, "value": float(minute)} for p in ids]})
        )
    return out


async def publish(url: str, topic: str, messages: list[bytes]) -> float:
    """Publish at QoS 1 with a window of in-flight messages; returns the start time."""
    target = MqttTarget(url)
    logger = logging.getLogger("gridfleet.bench.publisher")
    logger.setLevel(logging.ERROR)
    async with aiomqtt.Client(
        target.host,
        target.port,
        identifier=f"gf-bench-pub-{uuid.uuid4().hex[:8]}",
        logger=logger,
        max_inflight_messages=WINDOW,
    ) as client:
        started = time.time()
        for i in range(0, len(messages), WINDOW):
            await asyncio.gather(*(client.publish(topic, body, qos=1) for body in messages[i : i + WINDOW]))
        return started


async def broker_ceiling(url: str, messages: list[bytes]) -> float:
    target = MqttTarget(url)
    topic = f"bench/{uuid.uuid4().hex[:8]}/ceiling"
    args = ["-m", "tests.bench._subscriber", target.host, str(target.port), topic, str(READINGS)]
    sub = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=asyncio.subprocess.PIPE)
    assert sub.stdout is not None
    assert (await sub.stdout.readline()).decode().strip() == "READY"
    started = await publish(url, topic, messages)
    line = (await sub.stdout.readline()).decode()
    await asyncio.wait_for(sub.wait(), 60)
    finished = float(line.split()[1])
    return READINGS / (finished - started)


async def database_ceiling(database_url: str, point_ids: list[int]) -> float:
    """The same rows through the same statement the pipeline's first hop uses, 20,000 per batch."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(
            f"CREATE TABLE {schema}.rows (point_id int, ts timestamptz, value float8,"
            " received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (point_id, ts))"
        )
        await conn.execute("CHECKPOINT")
        per_ts = len(point_ids)
        batch = 20_000
        started = time.perf_counter()
        for first in range(0, READINGS, batch):
            idx = range(first, min(first + batch, READINGS))
            ids = [point_ids[i % per_ts] for i in idx]
            ts = [START_MS + (i // per_ts) * 60_000 for i in idx]
            values = [float(i // per_ts) for i in idx]
            await conn.execute(
                f"INSERT INTO {schema}.rows (point_id, ts, value) SELECT p, to_timestamp(t / 1000.0), v"
                " FROM unnest($1::int[], $2::bigint[], $3::float8[]) AS r(p, t, v) ON CONFLICT DO NOTHING",
                ids,
                ts,
                values,
            )
        elapsed = time.perf_counter() - started
        return READINGS / elapsed
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


@asynccontextmanager
async def bench_platform(infra: Infra, broker_url: str) -> AsyncIterator[tuple[ServiceProcesses, Settings]]:
    run_id = f"b{uuid.uuid4().hex[:8]}"
    env = platform_env(Infra(database_url=infra.database_url, mqtt_url=broker_url), run_id)
    env["GRIDFLEET_LOG_LEVEL"] = "WARNING"
    processes = ServiceProcesses(env, STATE_DIR / "bench-logs" / run_id, free_port_block(len(SERVICES)))
    with mock.patch.dict(os.environ, env):
        settings = Settings()
    try:
        await asyncio.to_thread(processes.start_all)
        yield processes, settings
    finally:
        await asyncio.to_thread(processes.stop_all)
        await drop_schemas(infra.database_url, env["GRIDFLEET_SCHEMA_PREFIX"])


async def provision(url: str, password: str) -> tuple[str, list[int], list[int]]:
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=60) as api:
        login = (
            await api.put("/users/login", json={"data": {"name": "administrator", "password": password}})
        ).json()
        api.headers.update({"User-UUID": login["uuid"], "Token": login["token"]})
        gateway = (await api.post("/gateways", json={"data": {"name": "bench"}})).json()
        source = (
            await api.post(
                "/datasources",
                json={"data": {"name": "bench", "gateway_id": gateway["id"], "protocol": "mqtt"}},
            )
        ).json()
        category = next(
            c["id"] for c in (await api.get("/energycategories")).json() if c["name"] == "Electricity"
        )
        points: list[int] = []
        for i in range(POINTS):
            body = {
                "name": f"p{i}",
                "data_source_id": source["id"],
                "object_type": "ENERGY_VALUE",
                "units": "kWh",
            }
            points.append((await api.post("/points", json={"data": body})).json()["id"])
        meters: list[int] = []
        for m in range(METERS):
            meter = (
                await api.post("/meters", json={"data": {"name": f"m{m}", "energy_category_id": category}})
            ).json()
            meters.append(meter["id"])
            for point in points[m::METERS]:
                await api.post(f"/meters/{meter['id']}/points", json={"data": {"point_id": point}})
        return gateway["uuid"], points, meters


async def test_pipeline_throughput(bench_broker: str, infra: Infra) -> None:
    async with bench_platform(infra, bench_broker) as (processes, settings):
        gateway_uuid, points, meters = await provision(processes.url("gateway"), settings.admin_password)
        # Let aggregation pick up the 1000 bindings before the clock starts.
        async with httpx.AsyncClient(timeout=60) as client:
            answer = await client.post(
                f"{processes.url('aggregation')}/internal/bindings/sync",
                headers={"X-Gridfleet-Internal": settings.internal_token},
            )
            answer.raise_for_status()
        messages = payloads(points)
        minutes = READINGS // POINTS
        expected = float(POINTS * (minutes - 1))
        pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2)
        assert pool is not None
        hourly = f'"{settings.schema_for("aggregation")}".meter_energy_hourly'
        topic = settings.topic_prefix + topics.gateway_topic(gateway_uuid, "telemetry")
        cpu_before = cpu_by_component(processes)
        try:
            started = await publish(settings.mqtt_url, topic, messages)
            published = time.time()
            total = 0.0
            while True:
                total = float(
                    await pool.fetchval(
                        f"SELECT coalesce(sum(energy), 0) FROM {hourly} WHERE meter_id = ANY($1)", meters
                    )
                )
                if abs(total - expected) < 1e-6 * expected:
                    break
                if time.time() - started > 900:
                    pytest.fail(f"pipeline incomplete after 900 s: {total} of {expected} kWh aggregated")
                await asyncio.sleep(0.1)
            finished = time.time()
        finally:
            await pool.close()
        cpu_after = cpu_by_component(processes)
        assert not processes.crashed()
    pipeline = READINGS / (finished - started)

    broker = await broker_ceiling(bench_broker, messages)
    database = await database_ceiling(infra.database_url, points)
    lower = min(broker, database)
    print(
        "\n"
        f"gridfleet pipeline benchmark ({READINGS:,} readings, {PER_MESSAGE} per message, QoS 1, {os.cpu_count()} cores)\n"
        f"  pipeline  MQTT publish -> hourly aggregates  {pipeline:>12,.0f} readings/s"
        f"  (publisher done after {published - started:.1f} s, aggregates after {finished - started:.1f} s)\n"
        f"  ceiling   broker alone (pub -> sub, parsed)    {broker:>12,.0f} readings/s\n"
        f"  ceiling   database alone (bulk upsert)        {database:>12,.0f} rows/s\n"
        f"  ratio     pipeline / lower ceiling           {pipeline / lower:>12.2f}\n"
        f"  ratio     pipeline / database ceiling        {pipeline / database:>12.2f}\n"
        "  CPU seconds spent during the pipeline run: "
        + ", ".join(
            f"{name} {cpu_after[name] - cpu_before.get(name, 0.0):.1f}"
            for name in sorted(cpu_after, key=lambda n: cpu_before.get(n, 0.0) - cpu_after[n])
            if cpu_after[name] - cpu_before.get(name, 0.0) >= 0.05
        )
        + "\n"
    )
    assert total == pytest.approx(expected)
