"""Onboarding service: external signal providers, webhooks and ownership (CONTRACTS.md §2).

This release declares the service, its topics and its routes' home; provider onboarding arrives next.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI

from libs.bus import Delivery
from libs.service import ServiceContext, create_service_app
from proto_schemas import topics
from proto_schemas.registry import RegistryChange

log = logging.getLogger(__name__)
router = APIRouter(tags=["providers"])


@router.get("/providers")
async def list_providers() -> list[dict[str, object]]:
    """External signal providers (none can be registered in this release)."""
    return []


async def setup(ctx: ServiceContext) -> None:
    async def on_change(deliveries: list[Delivery[RegistryChange]]) -> None:
        # Installations leaving the registry will trigger offboarding webhooks here.
        for delivery in deliveries:
            log.debug("registry change", extra={"fields": {"entity": delivery.model.entity}})

    ctx.mqtt.subscribe(topics.CONFIG_CHANGED, RegistryChange, on_change, shared=True, name="registry-changes")


def create_app() -> FastAPI:
    return create_service_app("onboarding", routers=[router], setup=setup, title="gridfleet onboarding")
