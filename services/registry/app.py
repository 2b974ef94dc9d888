"""Registry: master data (MyEMS-compatible) and identity. Other services read it through its API."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI

from libs.bus import Delivery
from libs.service import ServiceContext, create_service_app
from proto_schemas import topics
from proto_schemas.audit import AuditEvent
from proto_schemas.registry import DataSourceStatus, GatewaySeen
from services.registry.api import (
    acquisition,
    aggregation_internal,
    audit,
    calendars,
    dataapi,
    instances,
    internal,
    lookups,
    metering,
    offline_files,
    ownership_internal,
    parameters,
    tariffs,
    transfer,
    users,
)
from services.registry.resources import myems

MIGRATIONS = Path(__file__).parent / "migrations"


async def _record_seen(ctx: ServiceContext, deliveries: list[Delivery[GatewaySeen]]) -> None:
    latest: dict[str, GatewaySeen] = {}
    for delivery in deliveries:
        seen = delivery.model
        if seen.gateway_uuid not in latest or seen.last_seen_ms >= latest[seen.gateway_uuid].last_seen_ms:
            latest[seen.gateway_uuid] = seen
    rows = [
        (uuid, datetime.fromtimestamp(seen.last_seen_ms / 1000, UTC), seen.status)
        for uuid, seen in latest.items()
    ]
    # Never move last_seen backwards: a redelivered or late notice changes nothing.
    async with ctx.system() as conn:
        await conn.executemany(
            "UPDATE gateways SET last_seen_at = GREATEST(coalesce(last_seen_at, $2), $2),"
            " reported_status = coalesce($3, reported_status) WHERE uuid = $1::uuid",
            rows,
        )


async def setup(ctx: ServiceContext) -> None:
    await lookups.seed_timezones(ctx)
    await users.ensure_admin(ctx)

    async def on_seen(deliveries: list[Delivery[GatewaySeen]]) -> None:
        await _record_seen(ctx, deliveries)

    ctx.mqtt.subscribe(topics.GATEWAYS_SEEN, GatewaySeen, on_seen, batch_max=500)

    async def on_source_status(deliveries: list[Delivery[DataSourceStatus]]) -> None:
        async with ctx.system() as conn:
            for delivery in deliveries:
                change = delivery.model
                # Only a newer change overrides: a redelivered or late event changes nothing.
                await conn.execute(
                    "UPDATE data_sources SET status = $2, status_changed_at = $3, last_seen_at = coalesce($4, last_seen_at)"
                    " WHERE id = $1 AND (status_changed_at IS NULL OR status_changed_at <= $3)",
                    change.data_source_id,
                    change.status,
                    datetime.fromtimestamp(change.changed_ms / 1000, UTC),
                    datetime.fromtimestamp(change.last_good_ms / 1000, UTC) if change.last_good_ms else None,
                )

    ctx.mqtt.subscribe(topics.DATASOURCE_STATUS, DataSourceStatus, on_source_status, batch_max=100)

    async def on_audit(deliveries: list[Delivery[AuditEvent]]) -> None:
        await audit.store(ctx, deliveries)

    ctx.mqtt.subscribe(topics.AUDIT, AuditEvent, on_audit, batch_max=500)


def create_app() -> FastAPI:
    return create_service_app(
        "registry",
        routers=[
            users.router,
            dataapi.router,
            lookups.router,
            acquisition.router,
            metering.router,
            tariffs.router,
            instances.router,
            transfer.router(),
            *myems.routers(),
            calendars.router,
            parameters.router,
            offline_files.router,
            audit.router,
            internal.router,
            ownership_internal.router,
            aggregation_internal.router,
        ],
        migrations=MIGRATIONS,
        setup=setup,
        tenancy=True,
        title="gridfleet registry",
    )
