"""Commands bound to meters and spaces (seed 001): `/meters/{id}/commands` and `/spaces/{id}/commands`.

The binding lives here, beside the commands, not in the registry beside the meters: a binding's answer is a
list of commands (this service's rows, narrowed to the caller's provider here), deleting a command must drop
its bindings in the same statement (a foreign key does it), and the registry already tells every service when
a meter or a space is deleted (`…/config/changed`), which drops theirs. The other way round the registry would
have to ask this service for every command it lists and learn of every command deleted. The gateway routes
these sub-paths here (services/gateway/routing.py `SUBROUTES`), with the parent's access rule.

The meter or space is checked through the registry as the caller sees it (404 when they cannot); the command
must be one the caller sees (400 naming `command_id` otherwise).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import Field

from libs.bus import Delivery
from libs.service import ServiceContext, get_context, not_found
from proto_schemas.registry import RegistryChange
from services.command import registry
from services.command.commands import MAX_ID, _command, _visible
from services.command.common import Body, Envelope, caller, conflict, invalid, who

router = APIRouter(tags=["commands"])

Kind = Literal["meter", "space"]
ObjectId = Annotated[int, Path(ge=1, le=MAX_ID)]
CommandKey = Annotated[int, Path(ge=1, le=MAX_ID)]
_PLURAL = {"meter": "meters", "space": "spaces"}


class BindIn(Body):
    command_id: int = Field(ge=1, le=MAX_ID)


async def _object_or_404(ctx: ServiceContext, kind: Kind, object_id: int) -> None:
    answer = await registry._get(ctx, f"/{_PLURAL[kind]}/{object_id}")
    if answer.status_code != 200:
        raise not_found(kind, object_id)


async def _list(ctx: ServiceContext, request: Request, kind: Kind, object_id: int) -> list[dict[str, Any]]:
    await _object_or_404(ctx, kind, object_id)
    rows = await ctx.db.fetch(
        "SELECT c.* FROM command_bindings b JOIN commands c ON c.id = b.command_id"
        " WHERE b.kind = $3 AND b.object_id = $4 AND ($1 OR c.provider_id = $2) ORDER BY c.id",
        *_visible(caller(request)),
        kind,
        object_id,
    )
    return [_command(row) for row in rows]


async def _bind(
    ctx: ServiceContext, request: Request, response: Response, kind: Kind, object_id: int, command_id: int
) -> dict[str, int]:
    await _object_or_404(ctx, kind, object_id)
    visible = await ctx.db.fetchval(
        "SELECT id FROM commands c WHERE ($1 OR c.provider_id = $2) AND c.id = $3",
        *_visible(caller(request)),
        command_id,
    )
    if visible is None:
        raise invalid("command_id", f"command {command_id} does not exist")
    try:
        await ctx.db.execute(
            "INSERT INTO command_bindings (kind, object_id, command_id, bound_by) VALUES ($1, $2, $3, $4)",
            kind,
            object_id,
            command_id,
            who(caller(request)),
        )
    except asyncpg.UniqueViolationError as exc:
        raise conflict("command_id", f"command {command_id} is already bound to {kind} {object_id}") from exc
    except asyncpg.ForeignKeyViolationError as exc:  # deleted meanwhile
        raise invalid("command_id", f"command {command_id} does not exist") from exc
    response.headers["Location"] = f"/{_PLURAL[kind]}/{object_id}/commands/{command_id}"
    return {"id": command_id}


async def _unbind(
    ctx: ServiceContext, request: Request, kind: Kind, object_id: int, command_id: int
) -> Response:
    await _object_or_404(ctx, kind, object_id)
    found = await ctx.db.fetchval(
        "DELETE FROM command_bindings b USING commands c WHERE c.id = b.command_id AND b.kind = $3"
        " AND b.object_id = $4 AND b.command_id = $5 AND ($1 OR c.provider_id = $2) RETURNING b.command_id",
        *_visible(caller(request)),
        kind,
        object_id,
        command_id,
    )
    if found is None:
        raise not_found(f"command bound to {kind} {object_id}", command_id)
    return Response(status_code=204)


@router.get("/meters/{meter_id}/commands")
async def meter_commands(
    meter_id: ObjectId, request: Request, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    """The commands bound to the meter."""
    return await _list(ctx, request, "meter", meter_id)


@router.post("/meters/{meter_id}/commands", status_code=201)
async def bind_meter_command(
    meter_id: ObjectId,
    body: Envelope[BindIn],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, int]:
    """Bind a command to the meter (`{"data": {"command_id"}}`); 409 when it is bound already."""
    return await _bind(ctx, request, response, "meter", meter_id, body.data.command_id)


@router.delete("/meters/{meter_id}/commands/{command_id}", status_code=204)
async def unbind_meter_command(
    meter_id: ObjectId, command_id: CommandKey, request: Request, ctx: ServiceContext = Depends(get_context)
) -> Response:
    return await _unbind(ctx, request, "meter", meter_id, command_id)


@router.get("/spaces/{space_id}/commands")
async def space_commands(
    space_id: ObjectId, request: Request, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    """The commands bound to the space."""
    return await _list(ctx, request, "space", space_id)


@router.post("/spaces/{space_id}/commands", status_code=201)
async def bind_space_command(
    space_id: ObjectId,
    body: Envelope[BindIn],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, int]:
    """Bind a command to the space (`{"data": {"command_id"}}`); 409 when it is bound already."""
    return await _bind(ctx, request, response, "space", space_id, body.data.command_id)


@router.delete("/spaces/{space_id}/commands/{command_id}", status_code=204)
async def unbind_space_command(
    space_id: ObjectId, command_id: CommandKey, request: Request, ctx: ServiceContext = Depends(get_context)
) -> Response:
    return await _unbind(ctx, request, "space", space_id, command_id)


async def on_registry_change(ctx: ServiceContext, deliveries: list[Delivery[RegistryChange]]) -> None:
    """A meter or space deleted in the registry: its bindings go too (idempotent)."""
    gone = [
        (d.model.entity, d.model.id)
        for d in deliveries
        if d.model.entity in ("meter", "space")
        and d.model.action == "deleted"
        and isinstance(d.model.id, int)
    ]
    for kind, object_id in gone:
        await ctx.db.execute(
            "DELETE FROM command_bindings WHERE kind = $1 AND object_id = $2", kind, object_id
        )
