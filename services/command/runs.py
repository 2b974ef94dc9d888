"""The life of a command run: publish, acknowledgements, timeouts and expiry.

```
QUEUED ──publish, PUBACK──> SENT ──ack delivered──> DELIVERED ──ack succeeded──> SUCCEEDED
   │                          │                         └──────ack failed──────> FAILED
   └──── expires_at passes, not delivered ──────> EXPIRED     (no result by delivered + timeout_s: TIMEOUT)
```

- A run is stored QUEUED before anything is published (an outbox): the send publishes it at QoS 1 and marks
  it SENT once the broker has it. A run still QUEUED after a moment (the broker was away) is published by the
  sweeper. The publish happens with the run's row locked (`FOR UPDATE SKIP LOCKED`), so two replicas never
  publish one run at once.
- The broker keeps a command for an offline controller in its persistent session; when a controller announces
  itself `online` its undelivered runs are published again as well (the controller deduplicates on
  `command_id`), which also covers a controller whose session the broker no longer has.
- Acknowledgements are idempotent: a status only moves forward, a duplicate changes nothing, an
  acknowledgement for a run that already ended is kept in `late_acks` (once). One for an unknown run, or from
  a gateway the run was not sent to, goes to the dead-letter topic.
- `failed` with reason `expired` (the controller received it after `expires_at`) ends the run EXPIRED.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Any

import asyncpg

from libs.bus import TRANSIENT_ERRORS, Delivery
from libs.db import Queryable
from libs.service import ServiceContext
from proto_schemas import topics
from proto_schemas.command import Command, CommandAck
from proto_schemas.telemetry import GatewayStatus
from services.command.common import iso, now

log = logging.getLogger(__name__)

OPEN = ("QUEUED", "SENT")
FINAL = ("SUCCEEDED", "FAILED", "TIMEOUT", "EXPIRED")
OUTBOX_AFTER_S = 2.0
SWEEP_EVERY_S = 0.25


def command_message(row: asyncpg.Record) -> Command:
    return Command(
        command_id=str(row["id"]),
        name=row["command_name"][:255],
        payload=row["payload"],
        expires_at=row["expires_at"],
    )


async def publish_run(ctx: ServiceContext, run_id: uuid.UUID, *, wait_s: float = 5.0) -> bool:
    """Publish an open run (QoS 1, waiting for the broker) and mark it SENT. False when it was not published:
    already delivered or ended, locked by another publisher, or the broker did not take it in time."""
    try:
        async with ctx.db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT id, command_name, topic, payload, expires_at FROM command_runs"
                " WHERE id = $1 AND status = ANY($2::text[]) AND expires_at > $3 FOR UPDATE SKIP LOCKED",
                run_id,
                list(OPEN),
                now(),
            )
            if row is None:
                return False
            await ctx.mqtt.publish(row["topic"], command_message(row), wait_s=wait_s)
            await conn.execute(
                "UPDATE command_runs SET status = CASE WHEN status = 'QUEUED' THEN 'SENT' ELSE status END,"
                " sent_at = coalesce(sent_at, $2), publish_count = publish_count + 1 WHERE id = $1",
                run_id,
                now(),
            )
            return True
    except TRANSIENT_ERRORS as exc:
        log.warning("command not published yet", extra={"fields": {"run": str(run_id), "error": repr(exc)}})
        return False


async def publish_fresh(
    ctx: ServiceContext,
    run_id: uuid.UUID,
    topic: str,
    message: Command,
    *,
    wait_s: float,
    conn: Queryable | None = None,
) -> bool:
    """Publish a run just stored by a send, and mark it SENT: the send's fast path, without `publish_run`'s
    transaction and row lock. The sweeper only takes runs QUEUED for OUTBOX_AFTER_S, so it does not race a
    fresh one; and should it (a publish slower than that), the controller deduplicates on `command_id`.

    The SENT mark is committed without waiting for the write-ahead log to reach the disk (an fsync took 5 to
    15 ms of every send on a busy machine): the run itself was stored durably before the publish, and should a
    database crash lose the mark, the run is QUEUED again and the sweeper publishes it once more, which the
    controller deduplicates; the acknowledgements that follow are committed durably."""
    try:
        await ctx.mqtt.publish(topic, message, wait_s=wait_s)
        await (conn or ctx.db).execute(
            "UPDATE command_runs SET status = CASE WHEN status = 'QUEUED' THEN 'SENT' ELSE status END,"
            " sent_at = coalesce(sent_at, $2), publish_count = publish_count + 1"
            " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS durability WHERE id = $1",
            run_id,
            now(),
        )
        return True
    except TRANSIENT_ERRORS as exc:
        log.warning("command not published yet", extra={"fields": {"run": str(run_id), "error": repr(exc)}})
        return False


def _ack_record(ack: CommandAck) -> dict[str, Any]:
    record: dict[str, Any] = {"status": ack.status}
    if ack.reason is not None:
        record["reason"] = ack.reason
    if ack.result is not None:
        record["result"] = ack.result
    return record


async def apply_ack(conn: Any, gateway_uuid: str, ack: CommandAck) -> str | None:
    """Apply one acknowledgement; the reason it cannot be applied (dead letter), or None."""
    try:
        run_id = uuid.UUID(ack.command_id)
    except ValueError:
        return f"unknown command run {ack.command_id!r}"
    row = await conn.fetchrow(
        "SELECT status, gateway_uuid::text AS gateway_uuid FROM command_runs WHERE id = $1 FOR UPDATE", run_id
    )
    if row is None:
        return f"unknown command run {ack.command_id}"
    if row["gateway_uuid"] != gateway_uuid:
        return f"command run {ack.command_id} was not sent to gateway {gateway_uuid}"
    status, at = row["status"], now()
    if status in ("TIMEOUT", "EXPIRED"):
        record = _ack_record(ack)
        await conn.execute(
            "UPDATE command_runs SET late_acks = late_acks || jsonb_build_array($2::jsonb || jsonb_build_object("
            "'at', $3::text)) WHERE id = $1 AND NOT late_acks @> jsonb_build_array($2::jsonb)",
            run_id,
            record,
            at.isoformat(),
        )
        return None
    if ack.status == "delivered":
        if status in OPEN:
            await conn.execute(
                "UPDATE command_runs SET status = 'DELIVERED', delivered_at = $2, sent_at = coalesce(sent_at, $2),"
                " deadline_at = $2 + make_interval(secs => timeout_s) WHERE id = $1",
                run_id,
                at,
            )
        return None
    if status in ("SUCCEEDED", "FAILED"):
        return None  # a duplicate, or a second answer after the first: the first one stands
    expired = ack.status == "failed" and (ack.reason or "").strip().lower() == "expired"
    final, stamp = (
        ("EXPIRED", "expired_at")
        if expired
        else ("SUCCEEDED", "succeeded_at")
        if ack.status == "succeeded"
        else ("FAILED", "failed_at")
    )
    await conn.execute(
        f"UPDATE command_runs SET status = $2, {stamp} = $3, delivered_at = coalesce(delivered_at, $3),"
        " sent_at = coalesce(sent_at, $3), reason = $4, result = $5 WHERE id = $1",
        run_id,
        final,
        at,
        ack.reason,
        ack.result,
    )
    return None


async def on_acks(ctx: ServiceContext, deliveries: list[Delivery[CommandAck]]) -> None:
    async with ctx.db.acquire() as conn:
        for delivery in deliveries:
            async with conn.transaction():
                problem = await apply_ack(conn, topics.gateway_of(delivery.topic), delivery.model)
            if problem is not None:
                delivery.reject(problem)


async def on_status(ctx: ServiceContext, deliveries: list[Delivery[GatewayStatus]]) -> None:
    """A controller back online: publish its undelivered runs again (it deduplicates on command_id)."""
    online = sorted({topics.gateway_of(d.topic) for d in deliveries if d.model.status == "online"})
    if not online:
        return
    rows = await ctx.db.fetch(
        "SELECT id FROM command_runs WHERE gateway_uuid::text = ANY($1::text[]) AND status = ANY($2::text[])"
        " AND expires_at > $3 ORDER BY queued_at",
        online,
        list(OPEN),
        now(),
    )
    for row in rows:
        await publish_run(ctx, row["id"])


async def sweep_once(ctx: ServiceContext) -> dict[str, int]:
    """End runs past their expiry or deadline, and publish runs left QUEUED. Safe on several replicas."""
    at = now()
    expired = await ctx.db.fetch(
        "UPDATE command_runs SET status = 'EXPIRED', expired_at = $1,"
        " reason = coalesce(reason, 'not delivered before it expired at ' || to_char(expires_at AT TIME ZONE 'UTC',"
        ' \'YYYY-MM-DD"T"HH24:MI:SS"Z"\')) WHERE status = ANY($2::text[]) AND expires_at <= $1 RETURNING id',
        at,
        list(OPEN),
    )
    timed_out = await ctx.db.fetch(
        "UPDATE command_runs SET status = 'TIMEOUT', timeout_at = $1,"
        " reason = coalesce(reason, 'no result within ' || timeout_s || ' s of delivery')"
        " WHERE status = 'DELIVERED' AND deadline_at <= $1 RETURNING id",
        at,
    )
    stale = await ctx.db.fetch(
        "SELECT id FROM command_runs WHERE status = 'QUEUED' AND queued_at <= $1 AND expires_at > $2"
        " ORDER BY queued_at LIMIT 100",
        at - timedelta(seconds=OUTBOX_AFTER_S),
        at,
    )
    published = 0
    for row in stale:
        published += await publish_run(ctx, row["id"])
    return {"expired": len(expired), "timed_out": len(timed_out), "published": published}


async def sweeper(ctx: ServiceContext) -> None:
    while True:
        try:
            await sweep_once(ctx)
        except TRANSIENT_ERRORS as exc:
            log.warning("command sweep failed", extra={"fields": {"error": repr(exc)}})
        await asyncio.sleep(SWEEP_EVERY_S)


def register(ctx: ServiceContext) -> None:
    async def acks(deliveries: list[Delivery[CommandAck]]) -> None:
        await on_acks(ctx, deliveries)

    async def status(deliveries: list[Delivery[GatewayStatus]]) -> None:
        await on_status(ctx, deliveries)

    ctx.mqtt.subscribe(topics.CMD_ACK_ALL, CommandAck, acks, batch_max=200)
    ctx.mqtt.subscribe(topics.STATUS_ALL, GatewayStatus, status, batch_max=500, name="command-status")
    ctx.background(lambda: sweeper(ctx), "command-sweeper")


def run_json(row: asyncpg.Record) -> dict[str, Any]:
    """A run as `GET /commandruns/{id}` and the history show it."""
    return {
        "id": str(row["id"]),
        "command": {"id": row["command_id"], "name": row["command_name"]},
        "gateway": {"id": row["gateway_id"], "uuid": str(row["gateway_uuid"])},
        "topic": row["topic"],
        "payload": row["payload"],
        "set_value": row["set_value"],
        "status": row["status"],
        "reason": row["reason"],
        "result": row["result"],
        "requested_by": row["requested_by"],
        "timeout_s": row["timeout_s"],
        "expires_datetime": iso(row["expires_at"]),
        "deadline_datetime": iso(row["deadline_at"]),
        "queued_datetime": iso(row["queued_at"]),
        "sent_datetime": iso(row["sent_at"]),
        "delivered_datetime": iso(row["delivered_at"]),
        "succeeded_datetime": iso(row["succeeded_at"]),
        "failed_datetime": iso(row["failed_at"]),
        "timeout_datetime": iso(row["timeout_at"]),
        "expired_datetime": iso(row["expired_at"]),
        "publish_count": row["publish_count"],
        "late_acks": row["late_acks"],
    }
