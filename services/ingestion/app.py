"""Ingestion service: the device protocol's entry point."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI

from libs.bus import Delivery
from libs.service import ServiceContext, create_service_app, get_context
from proto_schemas import topics
from proto_schemas.registry import DataSourceStatus, RegistryChange
from services.ingestion import api
from services.ingestion.consumer import Ingestion
from services.ingestion.modbus.poller import ModbusPoller, PollerConfig, StatusChange, registry_sources

MIGRATIONS = Path(__file__).parent / "migrations"
router = APIRouter(prefix="/internal", include_in_schema=False)


@router.get("/modbus/status")
async def modbus_status(ctx: ServiceContext = Depends(get_context)) -> dict[int, dict[str, object]]:
    """Each polled data source's state, counters and last error."""
    return dict(ctx.state["modbus"].status())


@router.get("/stats")
async def stats(ctx: ServiceContext = Depends(get_context)) -> dict[str, int]:
    """How many raw readings are stored and how many messages were dead-lettered by this process."""
    stored = await ctx.db.fetchval("SELECT count(*) FROM raw_readings")
    return {"raw_readings": int(stored), "dead_letters": ctx.mqtt.dead_letters}


async def setup(ctx: ServiceContext) -> None:
    ingestion = Ingestion(ctx)
    await ingestion.points.load_when_ready()
    ingestion.register()
    ctx.state["ingestion"] = ingestion

    async def publish_status(change: StatusChange) -> None:
        await ctx.mqtt.publish(topics.DATASOURCE_STATUS, DataSourceStatus(**asdict(change)))

    poller = ModbusPoller(
        ctx,
        registry_sources(ctx),
        config=PollerConfig(interval_s=ctx.settings.modbus_interval_s),
        on_status=publish_status,
    )
    ctx.state["modbus"] = poller
    ctx.background(poller.run, "modbus-poller")

    async def on_change(deliveries: list[Delivery[RegistryChange]]) -> None:
        if any(d.model.entity in ("data_source", "point", "gateway") for d in deliveries):
            poller.refresh()

    ctx.mqtt.subscribe(topics.CONFIG_CHANGED, RegistryChange, on_change, shared=False, name="modbus-sources")


def create_app() -> FastAPI:
    return create_service_app("ingestion", routers=[router, api.router], migrations=MIGRATIONS, setup=setup)
