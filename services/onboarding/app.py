"""Onboarding service: external signal providers, webhooks and ownership (CONTRACTS.md §2, §3).

- services/onboarding/providers.py: `/providers`, `/instances/{id}/providers` and the read model the command
  service loads; services/onboarding/outbox.py: the persisted webhook outbox and its worker;
  services/onboarding/health.py: healthcheck webhooks; services/onboarding/credentials.py: providers' MQTT
  accounts; services/onboarding/webhooks.py: signatures, backoff and payloads (no I/O).
- Ownership (activation codes, devices, claims, licenses) registers its routers through `extra_routers()`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi

from libs.bus import Delivery
from libs.service import ServiceContext, create_service_app
from proto_schemas import topics
from proto_schemas.onboarding import (
    HealthcheckWebhook,
    OffboardingWebhook,
    OnboardingAnswer,
    OnboardingWebhook,
)
from proto_schemas.registry import RegistryChange
from services.onboarding import health, providers
from services.onboarding.outbox import OutboxWorker, enqueue, link_changed, publish_link
from services.onboarding.webhooks import offboarding_payload

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
_EXTRA_MODULES = ("services.onboarding.ownership", "services.onboarding.licenses")


def extra_routers() -> list[APIRouter]:
    """The routers of the service's other modules (ownership, licenses) that are present."""
    found: list[APIRouter] = []
    for name in _EXTRA_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        router = getattr(importlib.import_module(name), "router", None)
        if isinstance(router, APIRouter):
            found.append(router)
    return found


async def offboard_deleted_installation(ctx: ServiceContext, installation_id: int) -> None:
    """An installation left the registry: its providers are offboarded (their control stops at once)."""
    async with ctx.system() as conn, conn.transaction():
        links = await conn.fetch(
            "SELECT l.*, p.device_groups, (SELECT o.payload #>> '{installation,serial}' FROM webhook_outbox o"
            "  WHERE o.signal_provider_id = l.signal_provider_id AND o.installation_id = l.installation_id"
            "  AND o.event = 'onboarding' ORDER BY o.seq DESC LIMIT 1) AS serial"
            " FROM provider_links l JOIN signal_providers p ON p.id = l.signal_provider_id"
            " WHERE l.installation_id = $1 AND l.state IN ('pending', 'active') FOR UPDATE OF l",
            installation_id,
        )
        for link in links:
            changed = await conn.fetchrow(
                "UPDATE provider_links SET state = 'offboarded', reason = 'installation deleted', changed_at = now(),"
                " health_due_at = NULL WHERE signal_provider_id = $1 AND installation_id = $2 RETURNING *",
                link["signal_provider_id"], installation_id,
            )  # fmt: skip
            assert changed is not None
            payload = offboarding_payload(
                installation_id, link["serial"] or "", link["contract_number"], "installation deleted"
            )
            await enqueue(
                conn,
                signal_provider_id=link["signal_provider_id"],
                installation_id=installation_id,
                provider_id=link["provider_id"],
                epoch=link["epoch"],
                event="offboarding",
                payload=payload.model_dump(mode="json"),
            )
            await providers.credentials.revoke_installation(
                ctx.settings, link["signal_provider_id"], installation_id
            )
            await publish_link(ctx, link_changed(changed, list(link["device_groups"])))
    if links:
        providers.wake(ctx)


async def setup(ctx: ServiceContext) -> None:
    worker = OutboxWorker(ctx)
    ctx.state["outbox"] = worker
    ctx.background(worker.run, "webhook-outbox")
    watch = health.register(ctx)

    async def on_change(deliveries: list[Delivery[RegistryChange]]) -> None:
        await watch.on_change(deliveries)
        for delivery in deliveries:
            change = delivery.model
            if change.entity == "instance" and change.action == "deleted" and isinstance(change.id, int):
                await offboard_deleted_installation(ctx, change.id)

    # Every replica: each keeps its own gateway directory (offboarding a deleted installation is idempotent).
    ctx.mqtt.subscribe(
        topics.CONFIG_CHANGED, RegistryChange, on_change, shared=False, name="registry-changes"
    )


def _document_webhooks(app: FastAPI) -> None:
    """The webhooks the platform sends, in the service's OpenAPI document (`webhooks`, OpenAPI 3.1)."""
    described: list[tuple[str, type[Any], str]] = [
        ("onboarding", OnboardingWebhook, "The owner added the provider to an installation"),
        ("offboarding", OffboardingWebhook, "The provider was removed from an installation"),
        (
            "healthcheck",
            HealthcheckWebhook,
            "Every few minutes and on every change of the installation's status",
        ),
    ]
    for event, model, summary in described:

        def receiver(body: Any) -> Any:  # documentation only: providers serve this route
            raise NotImplementedError

        receiver.__annotations__ = {
            "body": model,
            "return": OnboardingAnswer if event == "onboarding" else None,
        }
        app.webhooks.post(
            event,
            summary=summary,
            description=(
                f"`POST {{webhook_base_url}}/{event}` with headers `Gridfleet-Event: {event}`, "
                "`Gridfleet-Delivery` (unique, stable across retries: deduplicate on it) and "
                '`Gridfleet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`. '
                "A 2xx within 10 s is success; anything else is retried with backoff for 72 hours."
            ),
            operation_id=f"webhook_{event}",
        )(receiver)

    paths_only = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = paths_only()
        hooks = get_openapi(title=app.title, version=app.version, routes=[], webhooks=app.webhooks.routes)
        schema["webhooks"] = hooks.get("webhooks", {})
        for item in schema["webhooks"].values():
            for operation in item.values():
                responses = operation.get("responses", {})
                responses.pop("422", None)  # the provider answers; gridfleet does not validate that way
                if "200" in responses:
                    responses["200"]["description"] = "Any 2xx: delivered"
        schema.setdefault("components", {}).setdefault("schemas", {}).update(
            hooks.get("components", {}).get("schemas", {})
        )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app() -> FastAPI:
    app = create_service_app(
        "onboarding",
        routers=[providers.router, *extra_routers()],
        migrations=MIGRATIONS,
        setup=setup,
        tenancy=True,
        title="gridfleet onboarding",
    )
    _document_webhooks(app)
    return app
