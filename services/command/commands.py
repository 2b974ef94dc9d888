"""Commands (seed 001): `/commands` with export, import and clone, `PUT /commands/{id}/send`, and the runs.

A command names a gateway and a topic in that gateway's `cmd` subtree, a payload template (JSON with `$s1`),
an optional default set value, and how long a run may wait: `expires_in_s` until it must have reached the
controller, `timeout_s` from delivery until its result. Each send creates a run (services/command/runs.py)
and answers 202 at once; the run's record shows its progress.

Commands belong to the service provider of whoever created them: a provider's staff see and send only their
own (platform administrators see all), and a gateway is checked through the registry as the caller sees it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi import Body as BodyParam
from pydantic import BaseModel, Field, ValidationError

from libs.service import Principal, ProblemError, ServiceContext, get_context, not_found
from proto_schemas import topics
from proto_schemas.command import Command
from services.command import registry, runs, templates
from services.command.common import Body, Envelope, caller, conflict, invalid, iso, now

router = APIRouter(tags=["commands"])

MAX_ID = 2**53 - 1
CommandId = Annotated[int, Path(ge=1, le=MAX_ID, description="The command's id")]
# One line of text with something besides spaces in it.
SINGLE_LINE = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
Number = Annotated[float, Field(allow_inf_nan=False, ge=-1e15, le=1e15)]


class CommandIn(Body):
    name: Annotated[str, Field(min_length=1, max_length=255, pattern=SINGLE_LINE)]
    gateway_id: int = Field(ge=1, le=MAX_ID)
    topic: str | None = Field(
        None, max_length=1024, description="In the gateway's cmd subtree; default gf/v1/gw/{uuid}/cmd"
    )
    payload: Any = Field(description='The template: a JSON object (or its text) with "$s1" for the value')
    set_value: Number | None = Field(None, description="Substituted for $s1 when a send names no value")
    description: Annotated[str, Field(max_length=4096, pattern=r"^[^\x00]*$")] | None = None
    timeout_s: int = Field(60, ge=1, le=86400, description="From delivery until the result, else TIMEOUT")
    expires_in_s: int = Field(
        3600, ge=1, le=604800, description="From the send until delivery, else EXPIRED (at most 7 days)"
    )


class SendIn(Body):
    set_value: Number | None = Field(None, description="Substituted for $s1; default: the command's")
    expires_in_s: int | None = Field(None, ge=1, le=604800, description="Default: the command's")
    timeout_s: int | None = Field(None, ge=1, le=86400, description="Default: the command's")


class ImportIn(BaseModel):
    """`{"data": <an export, as GET /commands/{id}/export gives it>}`."""

    data: dict[str, Any]


# -- helpers -----------------------------------------------------------------------------------------


def _visible(principal: Principal | None) -> tuple[bool, int | None]:
    """(sees every provider's commands, the caller's provider)."""
    if principal is None or principal.is_admin:
        return True, None
    return False, principal.provider_id


_SELECT = "SELECT * FROM commands c WHERE ($1 OR c.provider_id = $2)"


def _command(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "uuid": str(row["uuid"]),
        "topic": row["topic"],
        "payload": row["payload"],
        "set_value": row["set_value"],
        "description": row["description"],
        "gateway": {"id": row["gateway_id"], "name": row["gateway_name"], "uuid": str(row["gateway_uuid"])},
        "gateway_id": row["gateway_id"],
        "timeout_s": row["timeout_s"],
        "expires_in_s": row["expires_in_s"],
        "created_datetime": iso(row["created_at"]),
        "modified_datetime": iso(row["modified_at"]),
    }


async def _fetch(ctx: ServiceContext, request: Request, command_id: int) -> asyncpg.Record:
    row = await ctx.db.fetchrow(_SELECT + " AND c.id = $3", *_visible(caller(request)), command_id)
    if row is None:
        raise not_found("command", command_id)
    return row


async def _checked(ctx: ServiceContext, d: CommandIn) -> tuple[dict[str, Any], str, str]:
    """(the gateway as the caller sees it, the topic, the template text), or a 400 naming the field."""
    gateway = await registry.gateway(ctx, d.gateway_id)
    if gateway is None:
        raise invalid("gateway_id", f"gateway {d.gateway_id} does not exist")
    topic = d.topic.strip() if d.topic and d.topic.strip() else topics.gateway_topic(gateway["uuid"], "cmd")
    try:
        templates.check_topic(topic, gateway["uuid"])
    except templates.TemplateError as exc:
        raise invalid("topic", str(exc)) from exc
    try:
        text = templates.normalise(d.payload)
        templates.check(text)
    except templates.TemplateError as exc:
        raise invalid("payload", str(exc)) from exc
    return gateway, topic, text


def _duplicate(name: str) -> Any:
    return conflict("name", f"a command called {name!r} exists already")


async def _write(ctx: ServiceContext, request: Request, d: CommandIn, command_id: int | None) -> int:
    gateway, topic, text = await _checked(ctx, d)
    principal = caller(request)
    values = (
        d.name.strip(), topic, text, d.set_value, d.description, d.gateway_id, uuid.UUID(gateway["uuid"]),
        gateway.get("name"), d.timeout_s, d.expires_in_s,
    )  # fmt: skip
    try:
        if command_id is None:
            return int(
                await ctx.db.fetchval(
                    "INSERT INTO commands (uuid, name, topic, payload, set_value, description, gateway_id,"
                    " gateway_uuid, gateway_name, timeout_s, expires_in_s, provider_id)"
                    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) RETURNING id",
                    uuid.uuid4(),
                    *values,
                    principal.provider_id if principal is not None else None,
                )
            )
        found = await ctx.db.fetchval(
            "UPDATE commands SET name=$4, topic=$5, payload=$6, set_value=$7, description=$8, gateway_id=$9,"
            " gateway_uuid=$10, gateway_name=$11, timeout_s=$12, expires_in_s=$13, modified_at=now()"
            " WHERE id=$3 AND ($1 OR provider_id = $2) RETURNING id",
            *_visible(principal),
            command_id,
            *values,
        )
    except asyncpg.UniqueViolationError as exc:
        raise _duplicate(d.name.strip()) from exc
    if found is None:
        raise not_found("command", command_id)
    return int(found)


async def _copy_name(ctx: ServiceContext, principal: Principal | None, name: str) -> str:
    stem = f"{name} (copy)"[:240]
    taken = {
        row["name"]
        for row in await ctx.db.fetch(
            "SELECT name FROM commands WHERE coalesce(provider_id, 0) = $1 AND name LIKE $2",
            (principal.provider_id if principal is not None else None) or 0,
            stem.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",
        )
    }
    if stem not in taken:
        return stem
    number = 2
    while f"{stem} {number}" in taken:
        number += 1
    return f"{stem} {number}"


# -- commands ----------------------------------------------------------------------------------------


@router.get("/commands")
async def list_commands(
    request: Request,
    response: Response,
    q: str | None = Query(None, max_length=255, description="Only commands whose name contains this"),
    gateway_id: int | None = Query(None, ge=1, le=MAX_ID),
    limit: int = Query(1000, ge=1, le=10000),
    offset: int = Query(0, ge=0, le=MAX_ID),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Commands by id; the total matching is in `X-Total-Count`."""
    where, args = _SELECT, list[Any](_visible(caller(request)))
    if q:
        if "\x00" in q:
            raise invalid("q", "must not contain NUL characters")
        args.append("%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        where += f" AND c.name ILIKE ${len(args)}"
    if gateway_id is not None:
        args.append(gateway_id)
        where += f" AND c.gateway_id = ${len(args)}"
    total = await ctx.db.fetchval(f"SELECT count(*) FROM ({where}) counted", *args)
    rows = await ctx.db.fetch(f"{where} ORDER BY c.id LIMIT {limit} OFFSET {offset}", *args)
    response.headers["X-Total-Count"] = str(total)
    return [_command(row) for row in rows]


@router.post("/commands", status_code=201)
async def create_command(
    body: Envelope[CommandIn],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, int]:
    """A command for one gateway. The payload template is checked now: with `$s1` replaced by a number it
    must be a JSON object."""
    new_id = await _write(ctx, request, body.data, None)
    response.headers["Location"] = f"/commands/{new_id}"
    return {"id": new_id}


@router.get("/commands/{command_id}")
async def get_command(
    command_id: CommandId, request: Request, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    return _command(await _fetch(ctx, request, command_id))


@router.put("/commands/{command_id}")
async def update_command(
    command_id: CommandId,
    body: Envelope[CommandIn],
    request: Request,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, int]:
    await _fetch(ctx, request, command_id)
    return {"id": await _write(ctx, request, body.data, command_id)}


@router.delete("/commands/{command_id}", status_code=204)
async def delete_command(
    command_id: CommandId, request: Request, ctx: ServiceContext = Depends(get_context)
) -> Response:
    """Delete the command; its runs stay in the history (with the command's name)."""
    found = await ctx.db.fetchval(
        "DELETE FROM commands WHERE id = $3 AND ($1 OR provider_id = $2) RETURNING id",
        *_visible(caller(request)),
        command_id,
    )
    if found is None:
        raise not_found("command", command_id)
    return Response(status_code=204)


@router.get("/commands/{command_id}/export")
async def export_command(
    command_id: CommandId, request: Request, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    """The command as `GET` shows it; import it elsewhere with `POST /commands/import`."""
    return _command(await _fetch(ctx, request, command_id))


@router.post("/commands/import", status_code=201)
async def import_command(
    body: ImportIn, request: Request, response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    """A new command from an export. Its gateway is found by uuid (an export from another database), then by
    `gateway_id`; a topic naming the exported gateway is moved to the gateway found."""
    exported: dict[str, Any] = body.data
    if isinstance(exported.get("data"), dict):
        exported = exported["data"]
    ref: dict[str, Any] = exported["gateway"] if isinstance(exported.get("gateway"), dict) else {}
    old_uuid = ref.get("uuid") if isinstance(ref.get("uuid"), str) else None
    gateway = await registry.gateway_by_uuid(ctx, old_uuid) if old_uuid else None
    gateway_id = exported.get("gateway_id", ref.get("id"))
    if (
        gateway is None
        and isinstance(gateway_id, int)
        and not isinstance(gateway_id, bool)
        and gateway_id > 0
    ):
        gateway = await registry.gateway(ctx, gateway_id)
    if gateway is None:
        raise invalid("gateway", "the command's gateway does not exist here (looked for its uuid and id)")
    topic = exported.get("topic")
    if isinstance(topic, str) and old_uuid and old_uuid != gateway["uuid"]:
        topic = topic.replace(f"/{old_uuid}/", f"/{gateway['uuid']}/", 1)
    fields = {name: exported[name] for name in CommandIn.model_fields if name in exported}
    fields.update(gateway_id=gateway["id"], topic=topic)
    try:
        data = CommandIn.model_validate(fields)
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
        raise ProblemError(400, "Invalid input", "not a command export", errors) from exc
    new_id = await _write(ctx, request, data, None)
    response.headers["Location"] = f"/commands/{new_id}"
    return {"id": new_id}


@router.post("/commands/{command_id}/clone", status_code=201)
async def clone_command(
    command_id: CommandId, request: Request, response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    """A copy named `<name> (copy)` for the same gateway."""
    row = await _fetch(ctx, request, command_id)
    data = CommandIn(
        name=await _copy_name(ctx, caller(request), row["name"]),
        gateway_id=row["gateway_id"],
        topic=row["topic"],
        payload=row["payload"],
        set_value=row["set_value"],
        description=row["description"],
        timeout_s=row["timeout_s"],
        expires_in_s=row["expires_in_s"],
    )
    new_id = await _write(ctx, request, data, None)
    response.headers["Location"] = f"/commands/{new_id}"
    return {"id": new_id}


# -- sending and runs --------------------------------------------------------------------------------


@router.put("/commands/{command_id}/send", status_code=202)
async def send_command(
    command_id: CommandId,
    request: Request,
    body: Annotated[Envelope[SendIn] | None, BodyParam()] = None,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, str]:
    """Send the command: a run is recorded QUEUED and published to the controller at QoS 1. Follow it at
    `GET /commandruns/{id}`. The substituted payload must be a JSON object, else 400."""
    d = body.data if body is not None else SendIn()
    # One connection for the whole send: every pool call of its own would add the pool's reset round trip.
    async with ctx.db.acquire() as conn:
        row = await conn.fetchrow(_SELECT + " AND c.id = $3", *_visible(caller(request)), command_id)
        if row is None:
            raise not_found("command", command_id)
        value = d.set_value if d.set_value is not None else row["set_value"]
        try:
            payload = templates.render(row["payload"], value)
        except templates.TemplateError as exc:
            field = "set_value" if templates.uses_value(row["payload"]) and value is None else "payload"
            raise invalid(field, str(exc)) from exc
        principal = caller(request)
        run_id, queued = uuid.uuid4(), now()
        expires_in = d.expires_in_s or row["expires_in_s"]
        await conn.execute(
            "INSERT INTO command_runs (id, command_id, command_name, provider_id, gateway_id, gateway_uuid, topic,"
            " payload, set_value, requested_by, requested_by_uuid, timeout_s, expires_at, queued_at)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)",
            run_id, row["id"], row["name"], row["provider_id"], row["gateway_id"], row["gateway_uuid"], row["topic"],
            payload, value if templates.uses_value(row["payload"]) else None,
            principal.name if principal else "system", principal.user_uuid if principal else None,
            d.timeout_s or row["timeout_s"], queued + timedelta(seconds=expires_in), queued,
        )  # fmt: skip
        message = Command(
            command_id=str(run_id),
            name=row["name"][:255],
            payload=payload,
            expires_at=queued + timedelta(seconds=expires_in),
        )
        await runs.publish_fresh(ctx, run_id, row["topic"], message, wait_s=2.0, conn=conn)
    return {"id": str(run_id), "status": "QUEUED"}


async def _run_or_404(ctx: ServiceContext, request: Request, run_id: str) -> asyncpg.Record:
    try:
        key = uuid.UUID(run_id)
    except ValueError:
        raise not_found("command run", run_id) from None
    row = await ctx.db.fetchrow(
        "SELECT * FROM command_runs WHERE id = $3 AND ($1 OR provider_id = $2)",
        *_visible(caller(request)),
        key,
    )
    if row is None:
        raise not_found("command run", run_id)
    return row


@router.get("/commandruns/{run_id}")
async def get_run(
    run_id: Annotated[str, Path(max_length=64)], request: Request, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    """A run: `status` (QUEUED, SENT, DELIVERED, SUCCEEDED, FAILED, TIMEOUT, EXPIRED), `reason`, `result`, who
    sent it and the time of each step."""
    return runs.run_json(await _run_or_404(ctx, request, run_id))


@router.get("/commandruns")
async def list_runs(
    request: Request,
    response: Response,
    command_id: int | None = Query(None, ge=1, le=MAX_ID),
    gateway_id: int | None = Query(None, ge=1, le=MAX_ID),
    status: str | None = Query(None, pattern="^(QUEUED|SENT|DELIVERED|SUCCEEDED|FAILED|TIMEOUT|EXPIRED)$"),
    limit: int = Query(100, ge=1, le=10000),
    offset: int = Query(0, ge=0, le=MAX_ID),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Runs, newest first, filtered by command, gateway and status; the total is in `X-Total-Count`."""
    where, args = (
        "SELECT * FROM command_runs r WHERE ($1 OR r.provider_id = $2)",
        list[Any](_visible(caller(request))),
    )
    for column, value in (("command_id", command_id), ("gateway_id", gateway_id), ("status", status)):
        if value is not None:
            args.append(value)
            where += f" AND r.{column} = ${len(args)}"
    total = await ctx.db.fetchval(f"SELECT count(*) FROM ({where}) counted", *args)
    rows = await ctx.db.fetch(f"{where} ORDER BY r.queued_at DESC, r.id LIMIT {limit} OFFSET {offset}", *args)
    response.headers["X-Total-Count"] = str(total)
    return [runs.run_json(row) for row in rows]


@router.get("/commands/{command_id}/history")
async def command_history(
    command_id: CommandId,
    request: Request,
    response: Response,
    limit: int = Query(100, ge=1, le=10000),
    offset: int = Query(0, ge=0, le=MAX_ID),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Every run of the command, newest first: who sent what, when, and how it ended."""
    await _fetch(ctx, request, command_id)
    total = await ctx.db.fetchval("SELECT count(*) FROM command_runs WHERE command_id = $1", command_id)
    rows = await ctx.db.fetch(
        f"SELECT * FROM command_runs WHERE command_id = $1 ORDER BY queued_at DESC, id"
        f" LIMIT {limit} OFFSET {offset}",
        command_id,
    )
    response.headers["X-Total-Count"] = str(total)
    return [runs.run_json(row) for row in rows]
