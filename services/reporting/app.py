"""Reporting service: reports over the aggregates, in the local time of each space."""

from __future__ import annotations

from fastapi import FastAPI

from libs.service import create_service_app
from services.reporting import dataapi
from services.reporting.api import dashboard, meterenergy, meters, subjects


def create_app() -> FastAPI:
    # Reporting reads other services' APIs; it keeps no tables of its own yet.
    return create_service_app(
        "reporting",
        routers=[meterenergy.router, meters.router, subjects.router, dashboard.router, dataapi.router],
        use_bus=False,
        title="gridfleet reporting",
    )
