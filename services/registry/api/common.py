"""What every registry route shares: the MyEMS request envelope, lookups that 404, change events."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import asyncpg
from fastapi import Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from libs.db import Queryable
from libs.service import ProblemError, ServiceContext, bad_request, not_found
from proto_schemas import topics
from proto_schemas.registry import RegistryChange

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Description = Annotated[str | None, Field(default=None, max_length=4096)]


@dataclass(frozen=True)
class Page:
    """`?q=` (name contains), `?limit=` and `?offset=` of a list route."""

    q: str | None
    limit: int
    offset: int


def page_params(
    q: str | None = Query(None, max_length=255, description="Only objects whose name contains this"),
    limit: int = Query(1000, ge=1, le=10000),
    offset: int = Query(0, ge=0),
) -> Page:
    return Page(q, limit, offset)


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def copy_name(db: Queryable, table: str, name: str) -> str:
    """The name a clone gets: `<name> (copy)`, numbered `(copy) 2`, `(copy) 3`... when that is taken."""
    stem = f"{name} (copy)"
    taken = {
        r["name"]
        for r in await db.fetch(f"SELECT name FROM {table} WHERE name LIKE $1", f"{escape_like(stem)}%")
    }
    candidate, n = stem, 2
    while candidate in taken:
        candidate, n = f"{stem} {n}", n + 1
    return candidate


async def fetch_page(
    db: Queryable, response: Response, select_sql: str, alias: str, page: Page
) -> list[asyncpg.Record]:
    """One page of a list, filtered by name; the total goes in the `X-Total-Count` header."""
    where, args = ("", []) if not page.q else (f" WHERE {alias}.name ILIKE $1", [f"%{escape_like(page.q)}%"])
    total = await db.fetchval(f"SELECT count(*) FROM ({select_sql}{where}) counted", *args)
    response.headers["X-Total-Count"] = str(total)
    return list(
        await db.fetch(
            f"{select_sql}{where} ORDER BY {alias}.id LIMIT {page.limit} OFFSET {page.offset}", *args
        )
    )


class Body(BaseModel):
    """Base of request bodies: unknown fields are refused, so a typo is a 400 naming it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Envelope(BaseModel, Generic[T]):
    """MyEMS wraps every create, update and bind body as `{"data": {...}}`."""

    data: T


def parse_json_field(value: Any, field_name: str) -> dict[str, Any]:
    """MyEMS sends nested JSON (connection, address) as a string; accept a string or an object."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise bad_request(field_name, f"must be a JSON object: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise bad_request(field_name, "must be a JSON object")
    return value


async def fetch_or_404(conn: Queryable, what: str, sql: str, ident: Any) -> asyncpg.Record:
    row = await conn.fetchrow(sql, ident)
    if row is None:
        raise not_found(what, ident)
    return row


async def must_exist(conn: Queryable, table: str, ident: Any, field_name: str) -> None:
    """A reference in a request body must name an existing row: otherwise a 400 naming the field."""
    if ident is None:
        return
    found = await conn.fetchval(f"SELECT 1 FROM {table} WHERE id = $1", ident)
    if not found:
        raise bad_request(field_name, f"{field_name} {ident} does not exist")


def conflict_from(exc: asyncpg.UniqueViolationError | asyncpg.ForeignKeyViolationError) -> ProblemError:
    """Turn a constraint violation into the 4xx a user can act on."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        column = (exc.constraint_name or "").split("_")[-2:-1] or ["name"]
        return ProblemError(
            400,
            "Duplicate",
            f"a row with this {column[0]} exists already",
            [{"field": column[0], "message": "already exists"}],
        )
    return ProblemError(
        400, "In use", f"the object is still referenced ({exc.detail or exc.constraint_name})"
    )


async def publish_change(
    ctx: ServiceContext, entity: str, action: str, ident: int | str, related: int | str | None = None
) -> None:
    """Tell other services master data changed. Best effort: their caches also refresh on a timer."""
    if ctx.bus is None:
        return
    change = RegistryChange(entity=entity, action=action, id=ident, related_id=related)
    try:
        await ctx.bus.publish(topics.CONFIG_CHANGED, change, wait_s=5)
    except Exception:
        log.warning("registry change not published", extra={"fields": {"entity": entity, "id": ident}})


def ref(row: asyncpg.Record, prefix: str, *fields: str) -> dict[str, Any] | None:
    """A MyEMS reference object (`{"id", "name", "uuid"}`) from prefixed columns of a joined row."""
    if row[f"{prefix}_id"] is None:
        return None
    out = {"id": row[f"{prefix}_id"]}
    for name in fields:
        value = row[f"{prefix}_{name}"]
        out[name] = str(value) if name == "uuid" and value is not None else value
    return out
