"""Normalisation service: ratio, limits, quality, energy from cumulative registers, held spikes."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from libs.service import ServiceContext, create_service_app
from services.normalisation import dataapi_internal
from services.normalisation.consumer import Normalisation
from services.normalisation.held import router as held_router

MIGRATIONS = Path(__file__).parent / "migrations"


async def setup(ctx: ServiceContext) -> None:
    normalisation = Normalisation(ctx)
    await normalisation.points.load_when_ready()
    normalisation.register()
    ctx.state["normalisation"] = normalisation


def create_app() -> FastAPI:
    return create_service_app(
        "normalisation", routers=[held_router, dataapi_internal.router], migrations=MIGRATIONS, setup=setup
    )
