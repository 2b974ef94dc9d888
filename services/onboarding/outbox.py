"""The persisted webhook outbox and the worker that delivers it.

A webhook is written to `webhook_outbox` in the same transaction as the change it reports, so it is never
lost. The worker claims due rows with `SELECT … FOR UPDATE SKIP LOCKED` and a lease, so several replicas never
send the same row at once; it sends only the oldest undelivered row of each (provider, installation), so a
provider sees one installation's webhooks in order. A failure is retried with exponential backoff until the
retry window (72 h) is spent; then the row is `failed` and an alert is raised (log, audit event, metric).
A replica that dies mid-send leaves its lease to expire (or releases it when it starts again), and the row is
sent again under the same `Gridfleet-Delivery` id: receivers deduplicate on it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import asyncpg
import httpx
import orjson
from prometheus_client import Counter
from pydantic import ValidationError

from libs.db import Queryable
from libs.service import ProblemError, ServiceContext
from proto_schemas import topics
from proto_schemas.audit import AuditEvent
from proto_schemas.onboarding import OnboardingAnswer, ProviderLinkChanged
from services.onboarding import credentials
from services.onboarding.webhooks import join_url, next_attempt, webhook_headers

log = logging.getLogger(__name__)

ATTEMPTS = Counter("gridfleet_webhook_attempts_total", "Webhook sends", ["event", "outcome"])
FAILED = Counter("gridfleet_webhook_failed_total", "Webhooks given up after the retry window", ["event"])

CLAIM_BATCH = 20
IDLE_POLL_S = 1.0
# Database errors the worker waits out (a restart, a terminated connection) instead of crashing on.
TRANSIENT = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError, OSError)


async def enqueue(
    conn: Queryable,
    *,
    signal_provider_id: int,
    installation_id: int,
    provider_id: int | None,
    epoch: int,
    event: str,
    payload: dict[str, Any],
) -> str:
    """Add a webhook to the outbox (call inside the transaction of the change it reports)."""
    delivery_id = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO webhook_outbox (id, signal_provider_id, installation_id, provider_id, link_epoch, event, payload)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        delivery_id, signal_provider_id, installation_id, provider_id, epoch, event, payload,
    )  # fmt: skip
    return delivery_id


def link_changed(row: asyncpg.Record | dict[str, Any], device_groups: list[str]) -> ProviderLinkChanged:
    return ProviderLinkChanged(
        provider_id=row["signal_provider_id"],
        installation_id=row["installation_id"],
        state=row["state"],
        device_groups=device_groups if row["state"] in ("pending", "active") else [],
        changed_ms=int(row["changed_at"].timestamp() * 1000),
    )


async def publish_link(ctx: ServiceContext, event: ProviderLinkChanged) -> None:
    """Publish a link change (inside the transaction that makes it: no commit without the event)."""
    try:
        await ctx.mqtt.publish(topics.ONBOARDING_EVENTS, event, wait_s=10)
    except aiomqtt.MqttError as exc:
        raise ProblemError(503, "Unavailable", "the message bus did not take the change; retry") from exc


@dataclass
class _Outcome:
    status_code: int | None
    error: str | None
    answer: Any = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


_CLAIM = """
WITH due AS (
    SELECT d.id FROM webhook_outbox d
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.lease_until IS NULL OR d.lease_until < now())
      AND NOT EXISTS (
          SELECT 1 FROM webhook_outbox e
          WHERE e.signal_provider_id = d.signal_provider_id AND e.installation_id = d.installation_id
            AND e.status = 'pending' AND e.seq < d.seq)
    ORDER BY d.next_attempt_at, d.seq
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_outbox o
SET lease_until = now() + make_interval(secs => $2), leased_by = $3, attempts = o.attempts + 1
FROM due, signal_providers p
WHERE o.id = due.id AND p.id = o.signal_provider_id
RETURNING o.id::text AS id, o.seq, o.signal_provider_id, o.installation_id, o.provider_id, o.link_epoch,
          o.event, o.payload, o.attempts, o.created_at, p.webhook_base_url, p.secret, p.mqtt_password,
          p.name AS provider_name
"""


class OutboxWorker:
    """Claims due webhooks, sends them signed, records the outcome; one per process."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.wake = asyncio.Event()
        self.replica = f"{ctx.settings.replica}"
        self.http: httpx.AsyncClient | None = None

    @property
    def lease_s(self) -> float:
        return self.ctx.settings.webhook_timeout_s * 3 + 5

    async def run(self) -> None:
        self.http = httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": "gridfleet-webhooks/1"})
        try:
            await self._release_own_leases()
            while True:
                try:
                    claimed = await self._claim()
                except TRANSIENT as exc:
                    log.warning("outbox: database unavailable", extra={"fields": {"error": repr(exc)}})
                    await asyncio.sleep(1.0)
                    continue
                if claimed:
                    await asyncio.gather(*(self._deliver(row) for row in claimed))
                    continue
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), IDLE_POLL_S)
                except TimeoutError:
                    pass
        finally:
            await self.http.aclose()

    async def _release_own_leases(self) -> None:
        """A restarted replica takes back what it held when it stopped (its sends are not in flight now)."""
        while True:
            try:
                async with self.ctx.system() as conn:
                    await conn.execute(
                        "UPDATE webhook_outbox SET lease_until = NULL, leased_by = NULL"
                        " WHERE status = 'pending' AND split_part(leased_by, ':', 1) = $1",
                        self.replica,
                    )
                return
            except TRANSIENT as exc:
                log.warning("outbox: database unavailable", extra={"fields": {"error": repr(exc)}})
                await asyncio.sleep(1.0)

    async def _claim(self) -> list[dict[str, Any]]:
        token = f"{self.replica}:{secrets.token_hex(8)}"
        async with self.ctx.system() as conn:
            rows = await conn.fetch(_CLAIM, CLAIM_BATCH, self.lease_s, token)
        return [{**dict(row), "lease": token} for row in rows]

    async def _send(self, row: dict[str, Any]) -> _Outcome:
        payload = dict(row["payload"])
        if row["event"] == "onboarding":
            # The password lives with the provider, not in the outbox; it is added as the webhook leaves.
            payload["control"] = {**payload["control"], "password": row["mqtt_password"]}
        body = orjson.dumps(payload)
        headers = webhook_headers(row["event"], row["id"], row["secret"], int(time.time()), body)
        assert self.http is not None
        try:
            answer = await self.http.post(
                join_url(row["webhook_base_url"], row["event"]),
                content=body,
                headers=headers,
                timeout=self.ctx.settings.webhook_timeout_s,
            )
        except httpx.TimeoutException:
            return _Outcome(None, f"no answer within {self.ctx.settings.webhook_timeout_s:g} s")
        except (httpx.HTTPError, ValueError) as exc:
            return _Outcome(None, f"{type(exc).__name__}: {exc}"[:1024])
        if not 200 <= answer.status_code < 300:
            return _Outcome(answer.status_code, f"HTTP {answer.status_code}: {answer.text[:200]}")
        try:
            parsed = answer.json() if answer.content else None
        except ValueError:
            parsed = None
        return _Outcome(answer.status_code, None, parsed)

    async def _deliver(self, row: dict[str, Any]) -> None:
        outcome = await self._send(row)
        ATTEMPTS.labels(row["event"], "ok" if outcome.ok else "error").inc()
        for wait_s in (0.2, 0.5, 1, 2, 4, 8, 15):
            try:
                await self._record(row, outcome)
                return
            except (*TRANSIENT, ProblemError) as exc:
                # The webhook went out but the outcome is not stored yet: keep trying for a while; if the
                # database stays away the lease expires and the webhook is sent again (same delivery id).
                log.warning("outbox: outcome not recorded yet", extra={"fields": {"error": repr(exc)}})
                await asyncio.sleep(wait_s)
        log.error(
            "outbox: outcome not recorded; the webhook will be sent again",
            extra={"fields": {"id": row["id"]}},
        )

    async def _record(self, row: dict[str, Any], outcome: _Outcome) -> None:
        if outcome.ok:
            await self._record_success(row, outcome)
        else:
            await self._record_failure(row, outcome)

    async def _record_success(self, row: dict[str, Any], outcome: _Outcome) -> None:
        answer, note = _onboarding_answer(row["event"], outcome.answer)
        async with self.ctx.system() as conn, conn.transaction():
            done = await conn.fetchval(
                "UPDATE webhook_outbox SET status = 'delivered', delivered_at = now(), lease_until = NULL,"
                " last_status_code = $3, last_error = $4, answer = $5 WHERE id = $1::uuid AND leased_by = $2"
                " AND status = 'pending' RETURNING id",
                row["id"], row["lease"], outcome.status_code, note, outcome.answer,
            )  # fmt: skip
            if done is None or answer is None:
                return  # another replica took the row over, or nothing to decide
            state = "active" if answer.status == "accepted" else "rejected"
            link = await conn.fetchrow(
                "UPDATE provider_links l SET state = $4, reason = $5, changed_at = now(),"
                " health_due_at = CASE WHEN $4 = 'active' THEN now() ELSE NULL END"
                " WHERE signal_provider_id = $1 AND installation_id = $2 AND epoch = $3 AND state = 'pending'"
                " RETURNING l.*, (SELECT device_groups FROM signal_providers p WHERE p.id = l.signal_provider_id)"
                " AS groups",
                row["signal_provider_id"], row["installation_id"], row["link_epoch"], state,
                None if state == "active" else (answer.reason or "rejected by the provider"),
            )  # fmt: skip
            if link is None:
                return  # the link moved on (offboarded, re-added) since this onboarding was sent
            await publish_link(self.ctx, link_changed(link, list(link["groups"])))
        log.info(
            "provider answered onboarding",
            extra={"fields": {"provider": row["signal_provider_id"], "installation": row["installation_id"],
                              "state": state}},
        )  # fmt: skip
        if state == "rejected":
            # Best effort: the command service already refuses control of a link that is not active.
            try:
                await credentials.revoke_installation(
                    self.ctx.settings, row["signal_provider_id"], row["installation_id"]
                )
            except ProblemError:
                log.error("provider credentials not revoked after a rejection")

    async def _record_failure(self, row: dict[str, Any], outcome: _Outcome) -> None:
        settings = self.ctx.settings
        now = datetime.now(UTC)
        due = next_attempt(
            now,
            row["attempts"],
            row["created_at"],
            settings.webhook_backoff_base_s,
            settings.webhook_backoff_cap_s,
            settings.webhook_retry_window_s,
        )
        async with self.ctx.system() as conn:
            if due is not None:
                await conn.execute(
                    "UPDATE webhook_outbox SET next_attempt_at = $3, lease_until = NULL, last_status_code = $4,"
                    " last_error = $5 WHERE id = $1::uuid AND leased_by = $2 AND status = 'pending'",
                    row["id"], row["lease"], due, outcome.status_code, outcome.error,
                )  # fmt: skip
                return
            failed = await conn.fetchval(
                "UPDATE webhook_outbox SET status = 'failed', failed_at = now(), lease_until = NULL,"
                " last_status_code = $3, last_error = $4 WHERE id = $1::uuid AND leased_by = $2"
                " AND status = 'pending' RETURNING id",
                row["id"], row["lease"], outcome.status_code, outcome.error,
            )  # fmt: skip
        if failed is not None:
            await self._alert(row, outcome)

    async def _alert(self, row: dict[str, Any], outcome: _Outcome) -> None:
        FAILED.labels(row["event"]).inc()
        fields = {
            "delivery": row["id"], "event": row["event"], "provider": row["signal_provider_id"],
            "installation": row["installation_id"], "attempts": row["attempts"], "error": outcome.error,
        }  # fmt: skip
        log.error("webhook failed for good after the retry window", extra={"fields": fields})
        event = AuditEvent(
            event_key=f"webhook-failed-{row['id']}",
            at=datetime.now(UTC),
            actor="system:onboarding-outbox",
            actor_kind="system",
            provider_id=row["provider_id"],
            action="WEBHOOK_FAILED",
            object=f"instances/{row['installation_id']}/providers/{row['signal_provider_id']}/{row['event']}",
            outcome=outcome.status_code if outcome.status_code and 100 <= outcome.status_code <= 599 else 504,
        )
        try:
            await self.ctx.mqtt.publish(topics.AUDIT, event, wait_s=10)
        except Exception:
            log.error("audit event for a failed webhook not published", extra={"fields": fields})


def _onboarding_answer(event: str, body: Any) -> tuple[OnboardingAnswer | None, str | None]:
    """The provider's decision in its answer to `onboarding` (None, with a note, when it gave none)."""
    if event != "onboarding":
        return None, None
    try:
        return OnboardingAnswer.model_validate(body), None
    except ValidationError:
        return (
            None,
            'answer not understood: expected {"status": "accepted"} or {"status": "rejected", "reason"}',
        )
