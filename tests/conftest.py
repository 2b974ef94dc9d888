"""Real parts for the tests: PostgreSQL and Mosquitto (found or started), and the platform as processes.

Each run gets its own id: its services own schemas `<id>_<service>` and all its topics sit under `<id>/`, so
two runs (or a run beside `make run`) never see each other's data. Schemas are dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from unittest import mock

import asyncpg
import pytest
from hypothesis import settings as hypothesis_settings

from deploy.local.infra import STATE_DIR, Infra, free_port_block, provide
from deploy.local.processes import ServiceProcesses
from libs.settings import SERVICES, Settings
from tests.support import Platform

# CI runs properties on a fixed seed so a result can be reproduced; `--hypothesis-profile=explore` searches anew.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
hypothesis_settings.register_profile("explore", deadline=None, max_examples=2000, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

RUN_ID = f"t{uuid.uuid4().hex[:10]}"

# Benchmarks run under `make bench` only.
collect_ignore_glob = [] if os.environ.get("GRIDFLEET_BENCH") else ["bench/*"]


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    found = provide(
        database_url=os.environ.get("TEST_DATABASE_URL"),
        mqtt_url=os.environ.get("TEST_MQTT_URL"),
        use_local_postgres=True,
        state_dir=STATE_DIR / "test",
    )
    yield found
    found.close()


def platform_env(infra: Infra, run_id: str) -> dict[str, str]:
    return {
        "DATABASE_URL": infra.database_url,
        "MQTT_URL": infra.mqtt_url,
        "GRIDFLEET_SCHEMA_PREFIX": f"{run_id}_",
        "GRIDFLEET_TOPIC_PREFIX": f"{run_id}/",
        "GRIDFLEET_ADMIN_PASSWORD": secrets.token_urlsafe(12),
        "GRIDFLEET_INTERNAL_TOKEN": secrets.token_hex(16),
        "GRIDFLEET_MQTT_SESSION_EXPIRY_S": "600",
        "GRIDFLEET_LOG_LEVEL": "INFO",
    }


async def drop_schemas(database_url: str, schema_prefix: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for service in SERVICES:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema_prefix}{service}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def platform_processes(infra: Infra) -> Iterator[tuple[ServiceProcesses, dict[str, str]]]:
    env = platform_env(infra, RUN_ID)
    processes = ServiceProcesses(env, STATE_DIR / "test-logs" / RUN_ID, free_port_block(len(SERVICES)))
    try:
        processes.start_all()
        yield processes, env
    finally:
        processes.stop_all()
        asyncio.run(drop_schemas(infra.database_url, env["GRIDFLEET_SCHEMA_PREFIX"]))


@pytest.fixture(scope="session")
async def platform(platform_processes: tuple[ServiceProcesses, dict[str, str]]) -> AsyncIterator[Platform]:
    processes, env = platform_processes
    with mock.patch.dict(os.environ, env):
        settings = Settings()
    async with Platform.open(processes, settings) as opened:
        yield opened
