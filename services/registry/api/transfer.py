"""Export, import and clone for the hand-written MyEMS resources (gateways, data sources, points, meters, spaces).

An export is the object as `GET` returns it, references as objects. Import resolves each reference by uuid,
then by name, so an export moves between databases; clone copies under a new uuid and `<name> (copy)`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ValidationError

from libs.db import Queryable
from libs.service import ProblemError, ServiceContext, bad_request, get_context
from services.registry.api import acquisition, metering
from services.registry.api.common import Body, copy_name, publish_change
from services.registry.resources.framework import ImportBody


@dataclass(frozen=True)
class _Ref:
    field: str  # request field, e.g. gateway_id
    key: str  # export key, e.g. gateway
    table: str
    by_uuid: bool = True


@dataclass(frozen=True)
class _Transfer:
    path: str
    label: str
    table: str
    get: Callable[[int, ServiceContext], Awaitable[dict[str, Any]]]
    model: type[Body]
    write: Callable[[ServiceContext, Any, int | None], Awaitable[int]]
    refs: tuple[_Ref, ...]
    json_fields: tuple[str, ...] = ()


def _body_from_export(spec: _Transfer, exported: dict[str, Any]) -> dict[str, Any]:
    fields = spec.model.model_fields
    data = {
        name: exported[name]
        for name in fields
        if name in exported and not any(r.field == name for r in spec.refs)
    }
    for name in spec.json_fields:
        if isinstance(data.get(name), str):
            data[name] = json.loads(data[name])
    return data


async def _resolve(db: Queryable, spec: _Transfer, exported: dict[str, Any], data: dict[str, Any]) -> None:
    for ref in spec.refs:
        value = exported.get(ref.key)
        if value is None:
            data[ref.field] = exported.get(ref.field)
            continue
        if not isinstance(value, dict):
            raise bad_request(ref.key, f"{ref.key} must be an object with uuid or name")
        found = None
        if ref.by_uuid and value.get("uuid"):
            found = await db.fetchval(f"SELECT id FROM {ref.table} WHERE uuid::text = $1", str(value["uuid"]))
        if found is None and value.get("name"):
            found = await db.fetchval(
                f"SELECT id FROM {ref.table} WHERE name = $1 LIMIT 1", str(value["name"])
            )
        if found is None:
            raise bad_request(
                ref.key, f"{ref.key} {value.get('name') or value.get('uuid')} does not exist here"
            )
        data[ref.field] = found


def _validated(spec: _Transfer, data: dict[str, Any]) -> BaseModel:
    try:
        return spec.model.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        raise ProblemError(400, "Invalid input", "the exported object does not validate", errors) from exc


TRANSFERS = (
    _Transfer("datasources", "data source", "data_sources", acquisition.get_datasource, acquisition.DataSourceIn,
              acquisition._write_datasource, (_Ref("gateway_id", "gateway", "gateways"),), ("connection",)),
    _Transfer("points", "point", "points", acquisition.get_point, acquisition.PointIn, acquisition._write_point,
              (_Ref("data_source_id", "data_source", "data_sources"),), ("address",)),
    _Transfer("meters", "meter", "meters", metering.get_meter, metering.MeterIn, metering._write_meter,
              (_Ref("energy_category_id", "energy_category", "energy_categories"), _Ref("master_meter_id", "master_meter", "meters"),
               _Ref("cost_center_id", "cost_center", "cost_centers"), _Ref("energy_item_id", "energy_item", "energy_items"))),
    _Transfer("spaces", "space", "spaces", metering.get_space, metering.SpaceIn, metering._write_space,
              (_Ref("timezone_id", "timezone", "timezones", by_uuid=False), _Ref("contact_id", "contact", "contacts"),
               _Ref("cost_center_id", "cost_center", "cost_centers"))),
)  # fmt: skip


def _routes(router: APIRouter, spec: _Transfer) -> None:
    base = f"/{spec.path}"

    @router.get(base + "/{item_id}/export", tags=[spec.path], name=f"export {spec.label}")
    async def export_item(item_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
        return await spec.get(item_id, ctx)

    @router.post(base + "/import", status_code=201, tags=[spec.path], name=f"import {spec.label}")
    async def import_item(
        body: ImportBody, response: Response, ctx: ServiceContext = Depends(get_context)
    ) -> dict[str, int]:
        nested = body.data.get("data")
        exported: dict[str, Any] = nested if isinstance(nested, dict) else body.data
        data = _body_from_export(spec, exported)
        await _resolve(ctx.db, spec, exported, data)
        new_id = await spec.write(ctx, _validated(spec, data), None)
        response.headers["Location"] = f"{base}/{new_id}"
        await publish_change(ctx, spec.label.replace(" ", "_"), "created", new_id)
        return {"id": new_id}

    @router.post(base + "/{item_id}/clone", status_code=201, tags=[spec.path], name=f"clone {spec.label}")
    async def clone_item(
        item_id: int, response: Response, ctx: ServiceContext = Depends(get_context)
    ) -> dict[str, int]:
        exported = await spec.get(item_id, ctx)
        data = _body_from_export(spec, exported)
        await _resolve(ctx.db, spec, exported, data)
        data["name"] = await copy_name(ctx.db, spec.table, exported["name"])
        new_id = await spec.write(ctx, _validated(spec, data), None)
        response.headers["Location"] = f"{base}/{new_id}"
        await publish_change(ctx, spec.label.replace(" ", "_"), "created", new_id)
        return {"id": new_id}


def _gateway_routes(router: APIRouter) -> None:
    @router.get("/gateways/{gateway_id}/export", tags=["gateways"])
    async def export_gateway(gateway_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
        """The gateway without its token (only its hash is stored)."""
        return await acquisition.get_gateway(gateway_id, ctx)

    @router.post(
        "/gateways/import", status_code=201, response_model=acquisition.GatewayCreated, tags=["gateways"]
    )
    async def import_gateway(
        body: ImportBody, ctx: ServiceContext = Depends(get_context)
    ) -> acquisition.GatewayCreated:
        """A new gateway from an export: new uuid and token (shown once), same name and description."""
        nested = body.data.get("data")
        exported: dict[str, Any] = nested if isinstance(nested, dict) else body.data
        data = acquisition.GatewayIn.model_validate(
            {"name": exported.get("name"), "description": exported.get("description")}
        )
        return await acquisition.new_gateway(ctx, data.name, data.description)

    @router.post(
        "/gateways/{gateway_id}/clone",
        status_code=201,
        response_model=acquisition.GatewayCreated,
        tags=["gateways"],
    )
    async def clone_gateway(
        gateway_id: int, ctx: ServiceContext = Depends(get_context)
    ) -> acquisition.GatewayCreated:
        original = await acquisition.get_gateway(gateway_id, ctx)
        return await acquisition.new_gateway(
            ctx, await copy_name(ctx.db, "gateways", original["name"]), original["description"]
        )


def router() -> APIRouter:
    out = APIRouter()
    _gateway_routes(out)
    for spec in TRANSFERS:
        _routes(out, spec)
    return out
