"""Declarative MyEMS resources: one spec per resource gives its whole REST surface.

A `Resource` lists its columns; `resource_router()` turns it into list (filter by name, paginate), get,
create, update, delete, export, import and clone routes with MyEMS bodies (`{"data": {...}}`), references as
ids on the way in and objects on the way out, and a change event after every write. A `Binding` gives the
bind/list/unbind routes of one parent -> children link table. Adding a MyEMS resource is one spec here plus
its table in a migration.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, create_model

from libs.db import Queryable
from libs.service import ProblemError, ServiceContext, bad_request, get_context, not_found
from services.registry.api.common import (
    Page,
    copy_name,
    fetch_page,
    page_params,
    parse_json_field,
    publish_change,
)

Validator = Callable[[Queryable, dict[str, Any], int | None], Awaitable[None]]


@dataclass(frozen=True)
class Col:
    """A column a client writes (and reads back)."""

    name: str
    type: Any = str
    required: bool = False
    default: Any = None
    ref: str | None = None  # referenced table for an `*_id` column; read back as an object
    ref_fields: tuple[str, ...] = ("name", "uuid")
    json: bool = False  # a JSON object, which MyEMS clients may send as a string
    constraints: dict[str, Any] = field(default_factory=dict)
    description: str | None = None

    @property
    def out_name(self) -> str:
        return self.name.removesuffix("_id") if self.ref else self.name


@dataclass(frozen=True)
class Resource:
    path: str
    table: str
    label: str
    cols: tuple[Col, ...]
    tag: str | None = None
    qrcode: str | None = None
    validate: Validator | None = None
    verbs: tuple[str, ...] = ("export", "import", "clone")

    @property
    def ref_cols(self) -> list[Col]:
        return [c for c in self.cols if c.ref]


@dataclass(frozen=True)
class Binding:
    """`/{parent}/{id}/{child}`: bind with `{"data": {"<child_key>": n}}`, unbind by child id."""

    parent: Resource
    child_path: str
    child_table: str
    link_table: str
    parent_col: str
    child_col: str
    child_key: str
    child_label: str
    flags: tuple[str, ...] = ()  # extra boolean columns of the link, e.g. is_output


class ImportBody(BaseModel):
    """`POST /{res}/import`: the object as `GET /{res}/{id}/export` gave it, wrapped in `data`."""

    data: dict[str, Any]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def request_model(resource: Resource) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for col in resource.cols:
        kwargs = dict(col.constraints)
        if col.description:
            kwargs["description"] = col.description
        if col.name == "name":
            kwargs.setdefault("min_length", 1)
            kwargs.setdefault("max_length", 255)
        annotation = Any if col.json else col.type
        if col.required:
            fields[col.name] = (annotation, Field(..., **kwargs))
        elif col.default is not None:
            # A column with a default takes a value or nothing: an explicit null is refused, not stored.
            fields[col.name] = (annotation, Field(col.default, **kwargs))
        else:
            fields[col.name] = (annotation | None, Field(None, **kwargs))
    fields["description"] = (str | None, Field(None, max_length=4096))
    model_name = "".join(part.capitalize() for part in resource.label.split()) + "In"
    data_model = create_model(model_name, __base__=_Body, **fields)
    return create_model(f"{model_name}Envelope", data=(data_model, ...))


def _select(resource: Resource) -> str:
    parts = ["t.*"]
    joins = []
    for i, col in enumerate(resource.ref_cols):
        alias = f"r{i}"
        for ref_field in col.ref_fields:
            parts.append(f"{alias}.{ref_field} AS {col.out_name}__{ref_field}")
        joins.append(f"LEFT JOIN {col.ref} {alias} ON {alias}.id = t.{col.name}")
    return f"SELECT {', '.join(parts)} FROM {resource.table} t {' '.join(joins)}"


def _out(resource: Resource, row: asyncpg.Record) -> dict[str, Any]:
    out: dict[str, Any] = {"id": row["id"], "name": row["name"], "uuid": str(row["uuid"])}
    for col in resource.cols:
        if col.name == "name":
            continue
        value = row[col.name]
        if col.ref:
            out[col.out_name] = (
                None
                if value is None
                else {"id": value, **{f: _plain(row[f"{col.out_name}__{f}"]) for f in col.ref_fields}}
            )
        elif col.json:
            out[col.name] = json.dumps(value) if value is not None else None
        else:
            out[col.name] = _plain(value)
    out["description"] = row["description"]
    if resource.qrcode:
        out["qrcode"] = f"{resource.qrcode}:{row['uuid']}"
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, uuidlib.UUID):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


async def _check_refs(conn: Queryable, resource: Resource, data: dict[str, Any]) -> None:
    for col in resource.ref_cols:
        value = data.get(col.name)
        if value is not None and not await conn.fetchval(f"SELECT 1 FROM {col.ref} WHERE id = $1", value):
            raise bad_request(col.name, f"{col.name} {value} does not exist")


def _db_error(resource: Resource, exc: asyncpg.PostgresError) -> ProblemError:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return ProblemError(
            409,
            "Duplicate",
            f"a {resource.label} with this name exists already",
            [{"field": "name", "message": "already exists"}],
        )
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return ProblemError(409, "In use", f"the {resource.label} is still referenced ({exc.detail})")
    if isinstance(exc, asyncpg.CheckViolationError):
        return ProblemError(400, "Invalid input", f"{resource.label} violates {exc.constraint_name}")
    raise exc


async def write(ctx: ServiceContext, resource: Resource, data: dict[str, Any], ident: int | None) -> int:
    """Insert (ident None) or update one row after validating references and the resource's own rules."""
    values = dict(data)
    for col in resource.cols:
        if col.json:
            values[col.name] = (
                parse_json_field(values.get(col.name), col.name) if values.get(col.name) is not None else None
            )
    columns = [c.name for c in resource.cols] + ["description"]
    async with ctx.db.acquire() as db:
        await _check_refs(db, resource, values)
        if resource.validate is not None:
            await resource.validate(db, values, ident)
        try:
            if ident is None:
                placeholders = ", ".join(f"${i + 2}" for i in range(len(columns)))
                sql = f"INSERT INTO {resource.table} (uuid, {', '.join(columns)}) VALUES ($1, {placeholders}) RETURNING id"
                return int(await db.fetchval(sql, uuidlib.uuid4(), *[values.get(c) for c in columns]))
            assignments = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns))
            sql = f"UPDATE {resource.table} SET {assignments} WHERE id = $1 RETURNING id"
            found = await db.fetchval(sql, ident, *[values.get(c) for c in columns])
        except asyncpg.PostgresError as exc:
            raise _db_error(resource, exc) from exc
    if found is None:
        raise not_found(resource.label, ident)
    return ident


async def fetch_one(db: Queryable, resource: Resource, ident: int) -> dict[str, Any]:
    row = await db.fetchrow(_select(resource) + " WHERE t.id = $1", ident)
    if row is None:
        raise not_found(resource.label, ident)
    return _out(resource, row)


def _import_data(resource: Resource, exported: dict[str, Any]) -> dict[str, Any]:
    """Turn an export (references as objects) back into a request body (references as ids)."""
    data: dict[str, Any] = {"description": exported.get("description")}
    for col in resource.cols:
        if col.ref:
            ref = exported.get(col.out_name)
            data[col.name] = ref.get("id") if isinstance(ref, dict) else exported.get(col.name)
        else:
            data[col.name] = exported.get(col.name)
    return data


async def _resolve_import_refs(
    db: Queryable, resource: Resource, exported: dict[str, Any], data: dict[str, Any]
) -> None:
    """References are matched by uuid, then name, then id, so an export moves between databases."""
    for col in resource.ref_cols:
        ref = exported.get(col.out_name)
        if not isinstance(ref, dict):
            continue
        found = None
        if ref.get("uuid") and "uuid" in col.ref_fields:
            found = await db.fetchval(f"SELECT id FROM {col.ref} WHERE uuid::text = $1", str(ref["uuid"]))
        if found is None and ref.get("name"):
            found = await db.fetchval(f"SELECT id FROM {col.ref} WHERE name = $1 LIMIT 1", str(ref["name"]))
        if found is None:
            raise bad_request(
                col.out_name, f"{col.out_name} {ref.get('name') or ref.get('id')} does not exist here"
            )
        data[col.name] = found


def resource_router(resource: Resource, bindings: Sequence[Binding] = ()) -> APIRouter:
    """The REST routes of one resource."""
    router = APIRouter(tags=[resource.tag or resource.path])
    envelope = request_model(resource)
    body_model = envelope.model_fields["data"].annotation
    assert body_model is not None
    base = f"/{resource.path}"

    @router.get(base, name=f"list {resource.path}")
    async def list_items(
        response: Response, page: Page = Depends(page_params), ctx: ServiceContext = Depends(get_context)
    ) -> list[dict[str, Any]]:
        return [
            _out(resource, row) for row in await fetch_page(ctx.db, response, _select(resource), "t", page)
        ]

    @router.get(base + "/{item_id}", name=f"get {resource.label}")
    async def get_item(item_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
        return await fetch_one(ctx.db, resource, item_id)

    async def create(
        body: Any, response: Response, ctx: ServiceContext = Depends(get_context)
    ) -> dict[str, int]:
        new_id = await write(ctx, resource, body.data.model_dump(), None)
        response.headers["Location"] = f"{base}/{new_id}"
        await publish_change(ctx, resource.label, "created", new_id)
        return {"id": new_id}

    create.__annotations__["body"] = envelope  # the generated model, resolved by FastAPI at registration
    router.add_api_route(base, create, methods=["POST"], status_code=201, name=f"create {resource.label}")

    async def update(item_id: int, body: Any, ctx: ServiceContext = Depends(get_context)) -> dict[str, int]:
        await write(ctx, resource, body.data.model_dump(), item_id)
        await publish_change(ctx, resource.label, "updated", item_id)
        return {"id": item_id}

    update.__annotations__["body"] = envelope
    router.add_api_route(base + "/{item_id}", update, methods=["PUT"], name=f"update {resource.label}")

    @router.delete(base + "/{item_id}", status_code=204, name=f"delete {resource.label}")
    async def delete_item(item_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
        async with ctx.db.acquire() as conn:
            await ensure_unbound(conn, resource.table, resource.label, item_id)
            try:
                found = await conn.fetchval(
                    f"DELETE FROM {resource.table} WHERE id = $1 RETURNING id", item_id
                )
            except asyncpg.PostgresError as exc:
                raise _db_error(resource, exc) from exc
        if found is None:
            raise not_found(resource.label, item_id)
        await publish_change(ctx, resource.label, "deleted", item_id)
        return Response(status_code=204)

    if "export" in resource.verbs:

        @router.get(base + "/{item_id}/export", name=f"export {resource.label}")
        async def export_item(item_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
            """The object as JSON, references as objects, ready for `POST /{res}/import` elsewhere."""
            return await fetch_one(ctx.db, resource, item_id)

    if "import" in resource.verbs:

        @router.post(base + "/import", status_code=201, name=f"import {resource.label}")
        async def import_item(
            body: ImportBody, response: Response, ctx: ServiceContext = Depends(get_context)
        ) -> dict[str, int]:
            nested = body.data.get("data")
            exported: dict[str, Any] = nested if isinstance(nested, dict) else body.data
            data = _import_data(resource, exported)
            async with ctx.db.acquire() as conn:
                await _resolve_import_refs(conn, resource, exported, data)
            try:
                validated = body_model.model_validate(data)
            except Exception as exc:
                from pydantic import ValidationError

                if isinstance(exc, ValidationError):
                    errors = [
                        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                        for e in exc.errors()
                    ]
                    raise ProblemError(
                        400, "Invalid input", "the exported object does not validate", errors
                    ) from exc
                raise
            new_id = await write(ctx, resource, validated.model_dump(), None)
            response.headers["Location"] = f"{base}/{new_id}"
            await publish_change(ctx, resource.label, "created", new_id)
            return {"id": new_id}

    if "clone" in resource.verbs:

        @router.post(base + "/{item_id}/clone", status_code=201, name=f"clone {resource.label}")
        async def clone_item(
            item_id: int, response: Response, ctx: ServiceContext = Depends(get_context)
        ) -> dict[str, int]:
            """A copy under a new uuid and a name with `(copy)` (numbered when taken)."""
            original = await fetch_one(ctx.db, resource, item_id)
            data = _import_data(resource, original)
            data["name"] = await copy_name(ctx.db, resource.table, original["name"])
            new_id = await write(ctx, resource, data, None)
            response.headers["Location"] = f"{base}/{new_id}"
            await publish_change(ctx, resource.label, "created", new_id)
            return {"id": new_id}

    return router


_BINDINGS: list[Binding] = []


async def ensure_unbound(db: Queryable, table: str, label: str, item_id: int) -> None:
    """Refuse (409, naming the holders) to delete an object still bound somewhere."""
    for binding in _BINDINGS:
        if binding.child_table != table:
            continue
        holders = await db.fetch(
            f"SELECT p.id, p.name FROM {binding.link_table} l JOIN {binding.parent.table} p"
            f" ON p.id = l.{binding.parent_col} WHERE l.{binding.child_col} = $1 ORDER BY p.id LIMIT 5",
            item_id,
        )
        if holders:
            names = ", ".join(f"{binding.parent.label} {h['id']} ({h['name']})" for h in holders)
            raise ProblemError(409, "In use", f"{label} {item_id} is bound to {names}; unbind it first")


def register_binding(binding: Binding) -> None:
    """Make a link known to delete protection (for links whose routes are written by hand)."""
    _BINDINGS.append(binding)


def binding_router(binding: Binding) -> APIRouter:
    """GET, POST (bind) and DELETE (unbind) for one parent -> children link."""
    register_binding(binding)
    router = APIRouter(tags=[binding.parent.tag or binding.parent.path])
    base = f"/{binding.parent.path}/{{parent_id}}/{binding.child_path}"
    fields: dict[str, Any] = {binding.child_key: (int, Field(..., ge=1))}
    for flag in binding.flags:
        fields[flag] = (bool, Field(False))
    data_model = create_model(
        f"Bind{binding.child_key.title().replace('_', '')}To{binding.parent.label.title().replace(' ', '')}",
        __base__=_Body,
        **fields,
    )
    envelope = create_model(f"{data_model.__name__}Envelope", data=(data_model, ...))

    async def parent_exists(db: Queryable, parent_id: int) -> None:
        if not await db.fetchval(f"SELECT 1 FROM {binding.parent.table} WHERE id = $1", parent_id):
            raise not_found(binding.parent.label, parent_id)

    @router.get(base, name=f"list {binding.child_path} of {binding.parent.label}")
    async def list_children(
        parent_id: int, ctx: ServiceContext = Depends(get_context)
    ) -> list[dict[str, Any]]:
        await parent_exists(ctx.db, parent_id)
        flag_cols = "".join(f", l.{flag}" for flag in binding.flags)
        rows = await ctx.db.fetch(
            f"SELECT c.id, c.name, c.uuid{flag_cols} FROM {binding.link_table} l JOIN {binding.child_table} c"
            f" ON c.id = l.{binding.child_col} WHERE l.{binding.parent_col} = $1 ORDER BY c.id",
            parent_id,
        )
        return [{**dict(row), "uuid": str(row["uuid"])} for row in rows]

    async def bind(parent_id: int, body: Any, ctx: ServiceContext = Depends(get_context)) -> dict[str, int]:
        data = body.data.model_dump()
        child_id = data[binding.child_key]
        async with ctx.db.acquire() as conn:
            await parent_exists(conn, parent_id)
            if not await conn.fetchval(f"SELECT 1 FROM {binding.child_table} WHERE id = $1", child_id):
                raise bad_request(binding.child_key, f"{binding.child_label} {child_id} does not exist")
            flag_names = "".join(f", {flag}" for flag in binding.flags)
            flag_args = "".join(f", ${i + 3}" for i in range(len(binding.flags)))
            await conn.execute(
                f"INSERT INTO {binding.link_table} ({binding.parent_col}, {binding.child_col}{flag_names})"
                f" VALUES ($1, $2{flag_args}) ON CONFLICT DO NOTHING",
                parent_id,
                child_id,
                *[data[flag] for flag in binding.flags],
            )
        await publish_change(
            ctx, f"{binding.parent.label}_{binding.child_label}", "bound", parent_id, child_id
        )
        return {"id": child_id}

    bind.__annotations__["body"] = envelope
    router.add_api_route(
        base,
        bind,
        methods=["POST"],
        status_code=201,
        name=f"bind {binding.child_label} to {binding.parent.label}",
    )

    @router.delete(
        base + "/{child_id}",
        status_code=204,
        name=f"unbind {binding.child_label} from {binding.parent.label}",
    )
    async def unbind(parent_id: int, child_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
        await parent_exists(ctx.db, parent_id)  # link tables carry no tenancy: the parent's row does
        found = await ctx.db.fetchval(
            f"DELETE FROM {binding.link_table} WHERE {binding.parent_col} = $1 AND {binding.child_col} = $2"
            f" RETURNING {binding.child_col}",
            parent_id,
            child_id,
        )
        if found is None:
            raise not_found(
                f"{binding.parent.label} {binding.child_label} binding", f"{parent_id}/{child_id}"
            )
        await publish_change(
            ctx, f"{binding.parent.label}_{binding.child_label}", "unbound", parent_id, child_id
        )
        return Response(status_code=204)

    return router
