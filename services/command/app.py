"""Command service: commands with a lifecycle, live setpoints and schedules (CONTRACTS.md §1, §3).

This release declares the service, its topics and its routes' home; the command lifecycle arrives next.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI

from libs.bus import Delivery
from libs.service import ServiceContext, create_service_app
from proto_schemas import topics
from proto_schemas.command import CommandAck

log = logging.getLogger(__name__)
router = APIRouter(tags=["commands"])


@router.get("/commands")
async def list_commands() -> list[dict[str, object]]:
    """Commands defined for gateways (none can be defined in this release)."""
    return []


async def setup(ctx: ServiceContext) -> None:
    async def on_ack(deliveries: list[Delivery[CommandAck]]) -> None:
        for delivery in deliveries:
            log.info(
                "command acknowledgement",
                extra={"fields": {"topic": delivery.topic, "command_id": delivery.model.command_id}},
            )

    ctx.mqtt.subscribe(topics.CMD_ACK_ALL, CommandAck, on_ack, batch_max=100)


def create_app() -> FastAPI:
    return create_service_app("command", routers=[router], setup=setup, title="gridfleet command")
