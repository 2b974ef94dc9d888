"""Ingestion service: the device protocol's entry point."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI

from libs.service import ServiceContext, create_service_app, get_context
from services.ingestion import api
from services.ingestion.consumer import Ingestion

MIGRATIONS = Path(__file__).parent / "migrations"
router = APIRouter(prefix="/internal", include_in_schema=False)


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


def create_app() -> FastAPI:
    return create_service_app("ingestion", routers=[router, api.router], migrations=MIGRATIONS, setup=setup)
