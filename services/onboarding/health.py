"""Healthcheck webhooks: every few minutes per active link, and whenever an installation's status changes.

A change is noticed on the bus: a controller announcing `online`/`offline` (`GatewaySeen` with a status) or
a polled data source going online or offline (`DataSourceStatus`). The installation is then looked at again
a moment later (the registry applies the same events), and a healthcheck is queued for each active provider
whose last reported status differs. Replicas share the work: the periodic check claims due links with
`FOR UPDATE SKIP LOCKED`, and a change is queued once because the status is compared and stored in one
statement.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import orjson

from libs.bus import Delivery
from libs.service import ProblemError, ServiceContext
from proto_schemas import topics
from proto_schemas.onboarding import InstallationRef
from proto_schemas.registry import DataSourceStatus, GatewaySeen, RegistryChange
from services.onboarding import installations
from services.onboarding.outbox import TRANSIENT, enqueue
from services.onboarding.webhooks import healthcheck_payload, installation_health

log = logging.getLogger(__name__)

SETTLE_S = 1.0  # wait this long after an event so the registry has applied it too
DIRECTORY_REFRESH_S = 5.0  # at most this often for a gateway not in the directory
DIRECTORY_MAX_AGE_S = 60.0
OVERRIDE_S = 30.0  # how long a status heard on the bus overrides the registry's (which may lag)


class HealthWatch:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.dirty: set[int] = set()
        self.directory: dict[str, int] = {}
        self.directory_at = 0.0
        self.gateway_status: dict[str, tuple[str, float]] = {}
        self.source_status: dict[int, tuple[str, str | None, float]] = {}
        self.wake = asyncio.Event()

    # -- events --------------------------------------------------------------------------------------

    async def _installation_of(self, gateway_uuid: str) -> int | None:
        age = time.monotonic() - self.directory_at
        if age > DIRECTORY_MAX_AGE_S or (gateway_uuid not in self.directory and age > DIRECTORY_REFRESH_S):
            await self.refresh_directory()
        return self.directory.get(gateway_uuid)

    async def refresh_directory(self) -> None:
        try:
            self.directory = await installations.gateway_directory(self.ctx)
        except ProblemError:
            log.warning("gateway directory not available from the registry")
        self.directory_at = time.monotonic()

    async def on_seen(self, deliveries: list[Delivery[GatewaySeen]]) -> None:
        for delivery in deliveries:
            seen = delivery.model
            if seen.status is None:
                continue
            previous = self.gateway_status.get(seen.gateway_uuid)
            self.gateway_status[seen.gateway_uuid] = (seen.status, time.monotonic())
            if previous is not None and previous[0] == seen.status:
                continue
            installation_id = await self._installation_of(seen.gateway_uuid)
            if installation_id is not None:
                self.dirty.add(installation_id)
        if self.dirty:
            self.wake.set()

    async def on_source(self, deliveries: list[Delivery[DataSourceStatus]]) -> None:
        for delivery in deliveries:
            change = delivery.model
            self.source_status[change.data_source_id] = (change.status, change.reason, time.monotonic())
            installation_id = await self._installation_of(change.gateway_uuid)
            if installation_id is not None:
                self.dirty.add(installation_id)
        if self.dirty:
            self.wake.set()

    async def on_change(self, deliveries: list[Delivery[RegistryChange]]) -> None:
        if any(d.model.entity in ("gateway", "instance", "instance_gateway") for d in deliveries):
            self.directory_at = 0.0  # look again at the next event
            self.directory.clear()

    # -- loops ---------------------------------------------------------------------------------------

    async def run_changes(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(SETTLE_S)
            pending, self.dirty = self.dirty, set()
            for installation_id in pending:
                try:
                    await self.check(installation_id, periodic=False)
                except (ProblemError, *TRANSIENT) as exc:
                    log.warning("healthcheck not evaluated", extra={"fields": {"error": repr(exc)}})
                    self.dirty.add(installation_id)
            if self.dirty:
                await asyncio.sleep(1.0)
                self.wake.set()

    async def run_periodic(self) -> None:
        interval = self.ctx.settings.provider_healthcheck_interval_s
        while True:
            try:
                async with self.ctx.system() as conn:
                    rows = await conn.fetch(
                        "WITH due AS (SELECT signal_provider_id, installation_id FROM provider_links"
                        " WHERE state = 'active' AND health_due_at <= now() LIMIT 50 FOR UPDATE SKIP LOCKED)"
                        " UPDATE provider_links l SET health_due_at = now() + make_interval(secs => $1) FROM due"
                        " WHERE l.signal_provider_id = due.signal_provider_id AND l.installation_id = due.installation_id"
                        " RETURNING l.installation_id",
                        interval,
                    )
                for installation_id in sorted({row["installation_id"] for row in rows}):
                    try:
                        await self.check(installation_id, periodic=True)
                    except ProblemError as exc:
                        log.warning("healthcheck not evaluated", extra={"fields": {"error": exc.detail}})
            except TRANSIENT as exc:
                log.warning("healthcheck: database unavailable", extra={"fields": {"error": repr(exc)}})
            await asyncio.sleep(min(5.0, interval))

    # -- one installation ----------------------------------------------------------------------------

    async def _status(self, installation_id: int) -> tuple[Any, Any]:
        gateways = await installations.gateways(self.ctx, installation_id)
        now = time.monotonic()
        for gateway in gateways:
            heard = self.gateway_status.get(str(gateway.get("uuid")))
            if heard is not None and now - heard[1] < OVERRIDE_S:
                gateway["status"] = heard[0]
        sources: list[dict[str, Any]] = []
        for gateway in gateways:
            for source in await installations.data_sources(self.ctx, int(gateway["id"])):
                heard_source = self.source_status.get(int(source["id"]))
                if heard_source is not None and now - heard_source[2] < OVERRIDE_S:
                    source["status"], source["reason"] = heard_source[0], heard_source[1]
                elif source.get("protocol") != "modbus-tcp":
                    continue  # only polled sources have a verdict of their own; the controller covers the rest
                sources.append(source)
        groups = await installations.device_groups(self.ctx, installation_id)
        return installation_health(gateways, sources, groups)

    async def check(self, installation_id: int, *, periodic: bool) -> int:
        """Queue a healthcheck for the installation's active providers (periodic, or where it changed)."""
        async with self.ctx.system() as conn:
            links = await conn.fetch(
                "SELECT * FROM provider_links WHERE installation_id = $1 AND state = 'active'",
                installation_id,
            )
        if not links:
            return 0
        installation = await installations.installation(self.ctx, installation_id, as_system=True)
        system, devices = await self._status(installation_id)
        digest = hashlib.sha256(
            orjson.dumps([system.model_dump(mode="json"), [d.model_dump(mode="json") for d in devices]])
        ).hexdigest()
        queued = 0
        async with self.ctx.system() as conn, conn.transaction():
            for link in links:
                ref = InstallationRef(
                    id=installation_id,
                    serial=str(installation.get("serial") or ""),
                    contract_number=link["contract_number"],
                )
                payload = healthcheck_payload(ref, system, devices).model_dump(mode="json")
                changed = await conn.fetchval(
                    "UPDATE provider_links SET last_health = $4 WHERE signal_provider_id = $1"
                    " AND installation_id = $2 AND epoch = $3 AND state = 'active'"
                    " AND ($5 OR last_health IS DISTINCT FROM $4) RETURNING epoch",
                    link["signal_provider_id"], installation_id, link["epoch"], digest, periodic,
                )  # fmt: skip
                if changed is None:
                    continue
                # A healthcheck not yet tried is brought up to date instead of queueing another behind it.
                refreshed = await conn.fetchval(
                    "UPDATE webhook_outbox SET payload = $3 WHERE id = (SELECT id FROM webhook_outbox"
                    " WHERE signal_provider_id = $1 AND installation_id = $2 AND event = 'healthcheck'"
                    " AND status = 'pending' AND attempts = 0 AND lease_until IS NULL ORDER BY seq DESC LIMIT 1"
                    " FOR UPDATE SKIP LOCKED) RETURNING id",
                    link["signal_provider_id"], installation_id, payload,
                )  # fmt: skip
                if refreshed is None:
                    await enqueue(
                        conn,
                        signal_provider_id=link["signal_provider_id"],
                        installation_id=installation_id,
                        provider_id=link["provider_id"],
                        epoch=link["epoch"],
                        event="healthcheck",
                        payload=payload,
                    )
                queued += 1
        if queued:
            worker = self.ctx.state.get("outbox")
            if worker is not None:
                worker.wake.set()
        return queued


def register(ctx: ServiceContext) -> HealthWatch:
    watch = HealthWatch(ctx)
    ctx.mqtt.subscribe(topics.GATEWAYS_SEEN, GatewaySeen, watch.on_seen, batch_max=500, name="gateways-seen")
    ctx.mqtt.subscribe(
        topics.DATASOURCE_STATUS, DataSourceStatus, watch.on_source, batch_max=100, name="datasource-status"
    )
    ctx.background(watch.run_changes, "healthcheck-changes")
    ctx.background(watch.run_periodic, "healthcheck-periodic")
    return watch
