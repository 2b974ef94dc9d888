"""Held intervals: energy normalisation kept back as a spike, and what a person decides about it.

Internal routes (sibling services and the gateway, with the internal token):

* ``GET  /internal/held`` lists held intervals (filter by ``status``, ``point_id``);
* ``POST /internal/held/{id}/confirm`` sends the held energy on to aggregation as a new interval batch,
  quality MANUAL, withdrawing in the same batch the 0-energy SUSPECT interval sent for it (so the quality
  aggregation derives becomes MANUAL), and marks it confirmed. Confirming again answers the same and sends nothing more; the
  batch id is derived from the held id, so even a resend after a crash is applied once.
* ``POST /internal/held/{id}/reject`` marks it rejected: the interval stays counted as 0, the row stays.

An interval later readings have split (superseded) can be neither confirmed nor rejected: 409.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from libs.logs import correlation_id, new_correlation_id
from libs.service import ProblemError, ServiceContext, current_principal, get_context, not_found
from proto_schemas import topics
from proto_schemas.pipeline import EnergyIntervalBatch
from proto_schemas.quality import Quality
from services.normalisation.consumer import HELD

router = APIRouter(prefix="/internal", include_in_schema=False)

HELD_ID = Path(ge=1, le=2**63 - 1)

Status = Literal["held", "confirmed", "rejected", "superseded"]

_COLUMNS = (
    "id, point_id, start_ms, end_ms, energy, quality, reason, status, held_at, resolved_at, resolved_by,"
    " superseded_at"
)


def confirm_batch_id(held_id: int) -> str:
    return hashlib.sha256(f"held-confirm:{held_id}".encode()).hexdigest()[:32]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _out(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["start"], out["end"] = _iso(row["start_ms"]), _iso(row["end_ms"])
    out["quality"] = Quality(row["quality"]).label
    for key in ("held_at", "resolved_at", "superseded_at"):
        out[key] = row[key].isoformat() if row[key] is not None else None
    return out


def _who(request: Request) -> str | None:
    principal = current_principal(request)
    return principal.name if principal is not None else None


@router.get("/held")
async def list_held(
    status: Status | None = Query(None),
    point_id: int | None = Query(None, ge=1, le=2**31 - 1),
    limit: int = Query(100, ge=1, le=1000),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    rows = await ctx.db.fetch(
        f"SELECT {_COLUMNS} FROM held_intervals"
        " WHERE ($1::text IS NULL OR status = $1) AND ($2::int IS NULL OR point_id = $2)"
        " ORDER BY id LIMIT $3",
        status,
        point_id,
        limit,
    )
    return [_out(row) for row in rows]


async def _resolve(ctx: ServiceContext, held_id: int, to: Status, who: str | None) -> dict[str, Any]:
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM held_intervals WHERE id = $1 FOR UPDATE", held_id)
        if row is None:
            raise not_found("held interval", held_id)
        if row["status"] == to:
            return _out(row)  # already done: answer the same, send nothing more
        if row["status"] != "held":
            raise ProblemError(
                409, "Conflict", f"held interval {held_id} is {row['status']} and cannot be {to} now"
            )
        row = await conn.fetchrow(
            f"UPDATE held_intervals SET status = $2, resolved_at = now(), resolved_by = $3 WHERE id = $1"
            f" RETURNING {_COLUMNS}",
            held_id,
            to,
            who,
        )
        assert row is not None
        if to == "confirmed":
            # The interval that went as 0, SUSPECT is withdrawn (-0.0: the sign says so) and the confirmed
            # energy added, so aggregation's quality ledger leaves the interval MANUAL, not SUSPECT.
            batch = EnergyIntervalBatch(
                batch_id=confirm_batch_id(held_id),
                correlation_id=correlation_id.get() or new_correlation_id(),
                point_ids=[row["point_id"]] * 2,
                start_ms=[row["start_ms"]] * 2,
                end_ms=[row["end_ms"]] * 2,
                energy=[-0.0, row["energy"]],
                quality=[int(Quality.SUSPECT), int(Quality.MANUAL)],
            )
            # Inside the transaction: if the commit fails the row stays held and a retry sends the same batch.
            await ctx.mqtt.publish(topics.ENERGY_INTERVALS, batch)
    HELD.labels(to).inc()
    return _out(row)


@router.post("/held/{held_id}/confirm")
async def confirm_held(
    request: Request, held_id: int = HELD_ID, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    """Count a held interval's energy after all: it goes to aggregation with quality MANUAL."""
    return await _resolve(ctx, held_id, "confirmed", _who(request))


@router.post("/held/{held_id}/reject")
async def reject_held(
    request: Request, held_id: int = HELD_ID, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    """Keep a held interval uncounted for good (it stays on record)."""
    return await _resolve(ctx, held_id, "rejected", _who(request))
