"""Ownership read models and the one membership write the onboarding service makes (internal routes).

The registry stays the source of truth for who owns and who shares an installation (`instance_users`, at most
one owner). The onboarding service decides activations, claims and transfers and then asks here, with the
internal token and as the system:

- `GET /internal/ownership/instances?ids=1&ids=2` or `?user_id=7`: installations with their provider, serial,
  title and members (by ids; or every installation the user is a member of).
- `PUT /internal/instances/{id}/owner {"user_id", "keep_guests", "expected_owner_id"?}`: make a user the owner
  in one transaction with the installation row locked. `expected_owner_id` makes it a compare-and-set: `null`
  means "only while unowned", a number "only while this user owns it"; a mismatch is a 409 naming the current
  owner. The previous owner leaves the installation (a transfer means losing control); guests are removed
  unless `keep_guests`. Asking again for the owner already in place changes nothing (idempotent).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import Field

from libs.service import ProblemError, ServiceContext, get_context, not_found
from services.registry.api.common import Body, publish_change

router = APIRouter(prefix="/internal", include_in_schema=False)

MAX_ID = 2**53 - 1

_INSTANCES_SQL = (
    "SELECT i.id, i.provider_id, i.serial, i.title,"
    " coalesce(json_agg(json_build_object('user_id', iu.user_id, 'name', u.name, 'role', iu.role,"
    "  'share_content', iu.share_content, 'share_reports', iu.share_reports, 'allow_write', iu.allow_write)"
    "  ORDER BY iu.role = 'owner' DESC, u.name) FILTER (WHERE iu.user_id IS NOT NULL), '[]') AS members"
    " FROM instances i LEFT JOIN instance_users iu ON iu.instance_id = i.id"
    " LEFT JOIN users u ON u.id = iu.user_id"
)


def _out(row: Any) -> dict[str, Any]:
    members = list(row["members"])
    owner = next((m for m in members if m["role"] == "owner"), None)
    return {
        "id": row["id"],
        "provider_id": row["provider_id"],
        "serial": row["serial"],
        "title": row["title"],
        "owner_id": owner["user_id"] if owner else None,
        "members": members,
    }


@router.get("/ownership/instances")
async def ownership_instances(
    ids: list[int] = Query([], max_length=10000),
    user_id: int | None = Query(None, ge=1, le=MAX_ID),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Installations by id, or those `user_id` is a member of, with their members (owner first)."""
    if user_id is not None:
        where = " WHERE i.id IN (SELECT instance_id FROM instance_users WHERE user_id = $1)"
        args: list[Any] = [user_id]
    else:
        where, args = " WHERE i.id = ANY($1::bigint[])", [ids]
    rows = await ctx.db.fetch(f"{_INSTANCES_SQL}{where} GROUP BY i.id ORDER BY i.id", *args)
    return [_out(row) for row in rows]


class OwnerIn(Body):
    user_id: int = Field(ge=1, le=MAX_ID)
    keep_guests: bool = False
    expected_owner_id: int | None = Field(
        None, ge=1, le=MAX_ID, description="Compare-and-set: null = only while unowned; absent = always"
    )


def _conflict(message: str) -> ProblemError:
    return ProblemError(409, "Conflict", message, [{"field": "expected_owner_id", "message": message}])


@router.put("/instances/{instance_id}/owner")
async def set_owner(
    instance_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    body: OwnerIn,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Make `user_id` the installation's single owner (see the module's docstring for the rules)."""
    guarded = "expected_owner_id" in body.model_fields_set
    async with ctx.db.acquire() as conn, conn.transaction():
        instance = await conn.fetchrow(
            "SELECT id, provider_id FROM instances WHERE id = $1 FOR NO KEY UPDATE", instance_id
        )
        if instance is None:
            raise not_found("installation", instance_id)
        user = await conn.fetchrow("SELECT id, provider_id FROM users WHERE id = $1", body.user_id)
        if user is None:
            raise ProblemError(
                400,
                "Invalid input",
                f"user {body.user_id} does not exist",
                [{"field": "user_id", "message": "does not exist"}],
            )
        if user["provider_id"] is not None and user["provider_id"] != instance["provider_id"]:
            message = (
                f"user {body.user_id} belongs to another service provider than installation {instance_id}"
            )
            raise ProblemError(400, "Invalid input", message, [{"field": "user_id", "message": message}])
        owner_id = await conn.fetchval(
            "SELECT user_id FROM instance_users WHERE instance_id = $1 AND role = 'owner'", instance_id
        )
        if owner_id == body.user_id:
            return {"instance_id": instance_id, "owner_id": owner_id, "previous_owner_id": owner_id,
                    "changed": False, "removed": []}  # fmt: skip
        if guarded and owner_id != body.expected_owner_id:
            expected = "no owner" if body.expected_owner_id is None else f"owner {body.expected_owner_id}"
            raise _conflict(
                f"installation {instance_id} has {'owner ' + str(owner_id) if owner_id else 'no owner'},"
                f" not {expected}"
            )
        removed = [
            r["user_id"]
            for r in await conn.fetch(
                "DELETE FROM instance_users WHERE instance_id = $1 AND user_id <> $2"
                " AND (role = 'owner' OR NOT $3) RETURNING user_id",
                instance_id,
                body.user_id,
                body.keep_guests,
            )
        ]
        await conn.execute(
            "INSERT INTO instance_users (instance_id, user_id, role, share_content, share_reports, allow_write)"
            " VALUES ($1, $2, 'owner', true, true, true) ON CONFLICT (instance_id, user_id) DO UPDATE"
            " SET role = 'owner', share_content = true, share_reports = true, allow_write = true",
            instance_id,
            body.user_id,
        )
    for user_id in removed:
        await publish_change(ctx, "instance_user", "unbound", instance_id, user_id)
    await publish_change(ctx, "instance_user", "bound", instance_id, body.user_id)
    return {"instance_id": instance_id, "owner_id": body.user_id, "previous_owner_id": owner_id,
            "changed": True, "removed": removed}  # fmt: skip
