"""What the integration tests share: a handle on the running platform, and a site built through the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiomqtt
import asyncpg
import httpx
import orjson

from deploy.local.processes import ServiceProcesses
from libs.settings import Settings
from proto_schemas import topics

T = TypeVar("T")


@dataclass
class Platform:
    processes: ServiceProcesses
    settings: Settings
    api: httpx.AsyncClient
    db: asyncpg.Pool
    user_uuid: str = ""
    token: str = ""

    @classmethod
    @asynccontextmanager
    async def open(cls, processes: ServiceProcesses, settings: Settings) -> AsyncIterator[Platform]:
        api = httpx.AsyncClient(base_url=f"{processes.url('gateway')}/api/v1", timeout=30)
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
        assert pool is not None
        platform = cls(processes, settings, api, pool)
        try:
            await platform.login()
            yield platform
        finally:
            await api.aclose()
            await pool.close()

    async def login(self) -> None:
        answer = await self.api.put(
            "/users/login", json={"data": {"name": "administrator", "password": self.settings.admin_password}}
        )
        answer.raise_for_status()
        body = answer.json()
        self.user_uuid, self.token = body["uuid"], body["token"]
        self.api.headers.update({"User-UUID": self.user_uuid, "Token": self.token})

    def topic(self, topic: str) -> str:
        return f"{self.settings.topic_prefix}{topic}"

    def schema(self, service: str) -> str:
        return self.settings.schema_for(service)

    @asynccontextmanager
    async def mqtt(self, **kwargs: Any) -> AsyncIterator[aiomqtt.Client]:
        target = self.settings.mqtt
        async with aiomqtt.Client(target.host, target.port, **kwargs) as client:
            yield client

    async def publish_telemetry(
        self,
        client: aiomqtt.Client,
        gateway_uuid: str,
        readings: list[dict[str, Any]],
        msg_id: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"readings": readings}
        if msg_id:
            body["msg_id"] = msg_id
        await client.publish(
            self.topic(topics.gateway_topic(gateway_uuid, "telemetry")), orjson.dumps(body), qos=1
        )

    async def count_raw(self, point_ids: list[int]) -> int:
        return int(
            await self.db.fetchval(
                f'SELECT count(*) FROM "{self.schema("ingestion")}".raw_readings WHERE point_id = ANY($1)',
                point_ids,
            )
        )

    async def meter_hourly(self, meter_id: int) -> dict[str, float]:
        rows = await self.db.fetch(
            f'SELECT hour, energy FROM "{self.schema("aggregation")}".meter_energy_hourly WHERE meter_id = $1',
            meter_id,
        )
        return {row["hour"].isoformat(): row["energy"] for row in rows}


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], within: float = 30.0, every: float = 0.2
) -> T:
    """Poll `probe` until `accept` holds; on timeout fail with the last value seen."""
    deadline = time.monotonic() + within
    value = await probe()
    while not accept(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s; last value: {value!r}")
        await asyncio.sleep(every)
        value = await probe()
    return value


@dataclass
class Site:
    gateway_id: int
    gateway_uuid: str
    gateway_token: str
    datasource_id: int
    space_id: int
    points: dict[str, int] = field(default_factory=dict)
    meters: dict[str, int] = field(default_factory=dict)


async def build_site(
    api: httpx.AsyncClient,
    name: str,
    *,
    timezone: str = "Europe/Amsterdam",
    energy_points: tuple[str, ...] = ("main",),
    analog_points: tuple[str, ...] = (),
    ratio: float = 1.0,
) -> Site:
    """A gateway with one data source, energy points each metered by a meter, all in one space."""

    async def post(path: str, data: dict[str, Any]) -> dict[str, Any]:
        answer = await api.post(path, json={"data": data})
        assert answer.status_code == 201, f"POST {path}: {answer.status_code} {answer.text}"
        return dict(answer.json())

    gateway = await post("/gateways", {"name": f"{name} gateway"})
    datasource = await post(
        "/datasources", {"name": f"{name} source", "gateway_id": gateway["id"], "protocol": "mqtt"}
    )
    zones = (await api.get("/timezones")).json()
    timezone_id = next(z["id"] for z in zones if z["name"] == timezone)
    space = await post("/spaces", {"name": f"{name} space", "timezone_id": timezone_id})
    categories = (await api.get("/energycategories")).json()
    category_id = next(c["id"] for c in categories if c["name"] == "Electricity")
    site = Site(gateway["id"], gateway["uuid"], gateway["token"], datasource["id"], space["id"])
    for point_name in energy_points:
        point = await post(
            "/points",
            {
                "name": point_name,
                "data_source_id": datasource["id"],
                "object_type": "ENERGY_VALUE",
                "units": "kWh",
                "ratio": ratio,
            },
        )
        meter = await post(
            "/meters", {"name": f"{name} {point_name} meter", "energy_category_id": category_id}
        )
        await post(f"/meters/{meter['id']}/points", {"point_id": point["id"]})
        await post(f"/spaces/{space['id']}/meters", {"meter_id": meter["id"]})
        site.points[point_name], site.meters[point_name] = point["id"], meter["id"]
    for point_name in analog_points:
        point = await post(
            "/points",
            {
                "name": point_name,
                "data_source_id": datasource["id"],
                "object_type": "ANALOG_VALUE",
                "units": "W",
                "low_limit": 0,
                "high_limit": 10_000,
            },
        )
        site.points[point_name] = point["id"]
    return site
