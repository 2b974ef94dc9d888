"""Acquisition layer (MyEMS): gateways -> data sources -> points."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import aiomqtt
import asyncpg
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from libs import dynsec
from libs.auth import new_token, token_digest
from libs.expressions import ExpressionError, parse
from libs.service import ProblemError, ServiceContext, bad_request, get_context, not_found
from services.registry.addresses import address_problems
from services.registry.api.common import (
    Body,
    Description,
    Envelope,
    Name,
    Page,
    conflict_from,
    fetch_or_404,
    fetch_page,
    must_exist,
    page_params,
    parse_json_field,
    publish_change,
    ref,
)
from services.registry.resources.framework import ensure_unbound

log = logging.getLogger(__name__)
router = APIRouter()


def _epoch_ms(moment: datetime | None) -> float | None:
    return moment.timestamp() * 1000 if moment else None


# -- gateways ----------------------------------------------------------------------------------------


class GatewayIn(Body):
    name: Name
    description: Description = None


class GatewayOut(BaseModel):
    id: int
    name: str
    uuid: str
    last_seen_datetime: float | None = Field(description="Epoch milliseconds, UTC")
    status: Literal["online", "offline"]
    description: str | None


class GatewayCreated(BaseModel):
    id: int
    uuid: str
    token: str = Field(description="Shown once: the gateway's MQTT password. Only its hash is stored.")


def _gateway(row: asyncpg.Record, online_window_s: int) -> dict[str, Any]:
    seen = row["last_seen_at"]
    online = seen is not None and (datetime.now(UTC) - seen).total_seconds() <= online_window_s
    if row["reported_status"] == "offline":
        online = False
    return {
        "id": row["id"],
        "name": row["name"],
        "uuid": str(row["uuid"]),
        "last_seen_datetime": _epoch_ms(seen),
        "status": "online" if online else "offline",
        "description": row["description"],
    }


@router.get("/gateways", response_model=list[GatewayOut], tags=["gateways"])
async def list_gateways(
    response: Response, page: Page = Depends(page_params), ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    rows = await fetch_page(ctx.db, response, "SELECT * FROM gateways g", "g", page)
    return [_gateway(row, ctx.settings.gateway_online_window_s) for row in rows]


@router.get("/gateways/{gateway_id}", response_model=GatewayOut, tags=["gateways"])
async def get_gateway(gateway_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    row = await fetch_or_404(ctx.db, "gateway", "SELECT * FROM gateways WHERE id = $1", gateway_id)
    return _gateway(row, ctx.settings.gateway_online_window_s)


@router.post("/gateways", status_code=201, response_model=GatewayCreated, tags=["gateways"])
async def create_gateway(
    body: Envelope[GatewayIn], response: Response, ctx: ServiceContext = Depends(get_context)
) -> GatewayCreated:
    """Create a gateway; the answer holds its uuid and token (the token is never shown again)."""
    created = await new_gateway(ctx, body.data.name, body.data.description)
    response.headers["Location"] = f"/gateways/{created.id}"
    return created


async def broker_accounts(ctx: ServiceContext, change: Callable[[], Awaitable[None]]) -> None:
    """Apply a change to the broker's accounts (when the broker enforces them), or fail the request whole."""
    if not ctx.settings.mqtt_dynsec:
        return
    try:
        await change()
    except (dynsec.DynsecError, aiomqtt.MqttError, OSError) as exc:
        log.error("broker account change failed", extra={"fields": {"error": repr(exc)}})
        raise ProblemError(
            503, "Unavailable", "the MQTT broker did not take the gateway's credentials; retry"
        ) from exc


async def new_gateway(ctx: ServiceContext, name: str, description: str | None) -> GatewayCreated:
    """Create a gateway and its broker account together: both or neither."""
    gateway_uuid, token = uuid.uuid4(), new_token(32)
    async with ctx.db.acquire() as conn, conn.transaction():
        try:
            new_id = await conn.fetchval(
                "INSERT INTO gateways (uuid, name, token_digest, description) VALUES ($1, $2, $3, $4) RETURNING id",
                gateway_uuid, name, token_digest(token), description,
            )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            raise conflict_from(exc) from exc
        await broker_accounts(
            ctx,
            lambda: dynsec.create_gateway(
                ctx.settings.mqtt, str(gateway_uuid), token, ctx.settings.topic_prefix
            ),
        )
    await publish_change(ctx, "gateway", "created", new_id)
    return GatewayCreated(id=new_id, uuid=str(gateway_uuid), token=token)


@router.post("/gateways/{gateway_id}/token", response_model=GatewayCreated, tags=["gateways"])
async def rotate_gateway_token(gateway_id: int, ctx: ServiceContext = Depends(get_context)) -> GatewayCreated:
    """Issue a new token (shown once); the old one stops working at once."""
    token = new_token(32)
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE gateways SET token_digest = $2 WHERE id = $1 RETURNING uuid",
            gateway_id,
            token_digest(token),
        )
        if row is None:
            raise not_found("gateway", gateway_id)
        await broker_accounts(
            ctx,
            lambda: dynsec.set_gateway_token(
                ctx.settings.mqtt, str(row["uuid"]), token, ctx.settings.topic_prefix
            ),
        )
    await publish_change(ctx, "gateway", "updated", gateway_id)
    return GatewayCreated(id=gateway_id, uuid=str(row["uuid"]), token=token)


@router.put("/gateways/{gateway_id}", tags=["gateways"])
async def update_gateway(
    gateway_id: int, body: Envelope[GatewayIn], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    try:
        found = await ctx.db.fetchval(
            "UPDATE gateways SET name = $2, description = $3 WHERE id = $1 RETURNING id",
            gateway_id,
            body.data.name,
            body.data.description,
        )
    except asyncpg.UniqueViolationError as exc:
        raise conflict_from(exc) from exc
    if found is None:
        raise not_found("gateway", gateway_id)
    await publish_change(ctx, "gateway", "updated", gateway_id)
    return {"id": gateway_id}


@router.delete("/gateways/{gateway_id}", status_code=204, tags=["gateways"])
async def delete_gateway(gateway_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    """Delete a gateway; its broker account goes with it (it is disconnected at once)."""
    async with ctx.db.acquire() as conn, conn.transaction():
        try:
            found = await conn.fetchval("DELETE FROM gateways WHERE id = $1 RETURNING uuid", gateway_id)
        except asyncpg.ForeignKeyViolationError as exc:
            raise conflict_from(exc) from exc
        if found is None:
            raise not_found("gateway", gateway_id)
        await broker_accounts(ctx, lambda: dynsec.delete_gateway(ctx.settings.mqtt, str(found)))
    await publish_change(ctx, "gateway", "deleted", gateway_id)
    return Response(status_code=204)


@router.get("/gateways/{gateway_id}/datasources", tags=["gateways"])
async def gateway_datasources(
    gateway_id: int, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    await fetch_or_404(ctx.db, "gateway", "SELECT id FROM gateways WHERE id = $1", gateway_id)
    rows = await ctx.db.fetch(_DATASOURCE_SQL + " WHERE d.gateway_id = $1 ORDER BY d.id", gateway_id)
    return [_datasource(row, ctx.settings.gateway_online_window_s) for row in rows]


# -- data sources ------------------------------------------------------------------------------------


def _validate_connection(protocol: str, connection: dict[str, Any]) -> None:
    if protocol == "modbus-tcp":
        host, port = connection.get("host"), connection.get("port", 502)
        if not isinstance(host, str) or not host:
            raise bad_request("connection.host", "modbus-tcp needs a host")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise bad_request("connection.port", "port must be an integer 1-65535")


Protocol = Literal[
    "modbus-tcp", "modbus-rtu", "bacnet-ip", "s7", "profibus", "profinet", "opc-ua", "lora", "simulation",
    "controllogix", "weather", "mysql", "sqlserver", "postgresql", "oracle", "mongodb", "influxdb", "mqtt",
]  # fmt: skip
ObjectType = Literal["ENERGY_VALUE", "ANALOG_VALUE", "DIGITAL_VALUE", "BINARY_VALUE"]


class DataSourceIn(Body):
    name: Name
    gateway_id: int = Field(ge=1)
    protocol: Protocol
    connection: Any = None
    description: Description = None


_DATASOURCE_SQL = (
    "SELECT d.*, g.id AS gateway_id, g.name AS gateway_name, g.uuid AS gateway_uuid, g.last_seen_at AS gw_seen"
    " FROM data_sources d JOIN gateways g ON g.id = d.gateway_id"
)


def _datasource(row: asyncpg.Record, online_window_s: int) -> dict[str, Any]:
    seen = row["last_seen_at"] or row["gw_seen"]
    online = seen is not None and (datetime.now(UTC) - seen).total_seconds() <= online_window_s
    if row["status"] is not None:  # a polled source: its poller's verdict
        online = row["status"] == "online"
    return {
        "id": row["id"],
        "name": row["name"],
        "uuid": str(row["uuid"]),
        "gateway": ref(row, "gateway", "name", "uuid"),
        "protocol": row["protocol"],
        "connection": json.dumps(row["connection"]),
        "last_seen_datetime": seen.isoformat() if seen else None,
        "status": "online" if online else "offline",
        "description": row["description"],
    }


@router.get("/datasources", tags=["datasources"])
async def list_datasources(
    response: Response, page: Page = Depends(page_params), ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    rows = await fetch_page(ctx.db, response, _DATASOURCE_SQL, "d", page)
    return [_datasource(row, ctx.settings.gateway_online_window_s) for row in rows]


@router.get("/datasources/{datasource_id}", tags=["datasources"])
async def get_datasource(datasource_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    row = await fetch_or_404(ctx.db, "data source", _DATASOURCE_SQL + " WHERE d.id = $1", datasource_id)
    return _datasource(row, ctx.settings.gateway_online_window_s)


async def _write_datasource(ctx: ServiceContext, d: DataSourceIn, datasource_id: int | None) -> int:
    connection = parse_json_field(d.connection, "connection")
    _validate_connection(d.protocol, connection)
    async with ctx.db.acquire() as conn:
        await must_exist(conn, "gateways", d.gateway_id, "gateway_id")
        try:
            if datasource_id is None:
                return int(
                    await conn.fetchval(
                        "INSERT INTO data_sources (uuid, name, gateway_id, protocol, connection, description)"
                        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                        uuid.uuid4(),
                        d.name,
                        d.gateway_id,
                        d.protocol,
                        connection,
                        d.description,
                    )
                )
            found = await conn.fetchval(
                "UPDATE data_sources SET name=$2, gateway_id=$3, protocol=$4, connection=$5, description=$6"
                " WHERE id=$1 RETURNING id",
                datasource_id,
                d.name,
                d.gateway_id,
                d.protocol,
                connection,
                d.description,
            )
        except asyncpg.UniqueViolationError as exc:
            raise conflict_from(exc) from exc
    if found is None:
        raise not_found("data source", datasource_id)
    return datasource_id


@router.post("/datasources", status_code=201, tags=["datasources"])
async def create_datasource(
    body: Envelope[DataSourceIn], response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    new_id = await _write_datasource(ctx, body.data, None)
    response.headers["Location"] = f"/datasources/{new_id}"
    await publish_change(ctx, "data_source", "created", new_id)
    return {"id": new_id}


@router.put("/datasources/{datasource_id}", tags=["datasources"])
async def update_datasource(
    datasource_id: int, body: Envelope[DataSourceIn], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    await _write_datasource(ctx, body.data, datasource_id)
    await publish_change(ctx, "data_source", "updated", datasource_id)
    return {"id": datasource_id}


@router.delete("/datasources/{datasource_id}", status_code=204, tags=["datasources"])
async def delete_datasource(datasource_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    try:
        found = await ctx.db.fetchval("DELETE FROM data_sources WHERE id = $1 RETURNING id", datasource_id)
    except asyncpg.ForeignKeyViolationError as exc:
        raise conflict_from(exc) from exc
    if found is None:
        raise not_found("data source", datasource_id)
    await publish_change(ctx, "data_source", "deleted", datasource_id)
    return Response(status_code=204)


@router.get("/datasources/{datasource_id}/points", tags=["datasources"])
async def datasource_points(
    datasource_id: int, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    await fetch_or_404(ctx.db, "data source", "SELECT id FROM data_sources WHERE id = $1", datasource_id)
    rows = await ctx.db.fetch(_POINT_SQL + " WHERE p.data_source_id = $1 ORDER BY p.id", datasource_id)
    return [_point(row) for row in rows]


# -- points ------------------------------------------------------------------------------------------


class PointIn(Body):
    name: Name
    data_source_id: int = Field(ge=1)
    object_type: ObjectType
    units: str = Field("", max_length=32)
    high_limit: float | None = None
    low_limit: float | None = None
    higher_limit: float | None = None
    lower_limit: float | None = None
    ratio: float = Field(1.0, gt=-1e9, lt=1e9)
    is_trend: bool = True
    is_virtual: bool = False
    address: Any = None
    description: Description = None

    @field_validator("ratio")
    @classmethod
    def _nonzero_ratio(cls, value: float) -> float:
        if value == 0:
            raise ValueError("ratio must not be 0")
        return value

    @model_validator(mode="after")
    def _limits_ordered(self) -> PointIn:
        if self.low_limit is not None and self.high_limit is not None and self.low_limit > self.high_limit:
            raise ValueError("low_limit must not exceed high_limit")
        if (
            self.lower_limit is not None
            and self.higher_limit is not None
            and self.lower_limit > self.higher_limit
        ):
            raise ValueError("lower_limit must not exceed higher_limit")
        if self.is_virtual and self.object_type != "ANALOG_VALUE":
            raise ValueError("is_virtual applies to ANALOG_VALUE points only")
        return self


_POINT_SQL = (
    "SELECT p.*, d.id AS data_source_id, d.name AS data_source_name, d.uuid AS data_source_uuid"
    " FROM points p JOIN data_sources d ON d.id = p.data_source_id"
)


def _point(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "uuid": str(row["uuid"]),
        "data_source": ref(row, "data_source", "name", "uuid"),
        "object_type": row["object_type"],
        "units": row["units"],
        "high_limit": row["high_limit"],
        "low_limit": row["low_limit"],
        "higher_limit": row["higher_limit"],
        "lower_limit": row["lower_limit"],
        "ratio": row["ratio"],
        "is_trend": row["is_trend"],
        "is_virtual": row["is_virtual"],
        "address": json.dumps(row["address"]),
        "description": row["description"],
    }


@router.get("/points", tags=["points"])
async def list_points(
    response: Response, page: Page = Depends(page_params), ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    return [_point(row) for row in await fetch_page(ctx.db, response, _POINT_SQL, "p", page)]


@router.get("/points/{point_id}", tags=["points"])
async def get_point(point_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    return _point(await fetch_or_404(ctx.db, "point", _POINT_SQL + " WHERE p.id = $1", point_id))


async def _write_point(ctx: ServiceContext, d: PointIn, point_id: int | None) -> int:
    address = parse_json_field(d.address, "address")
    values = (
        d.name, d.data_source_id, d.object_type, d.units, d.high_limit, d.low_limit, d.higher_limit,
        d.lower_limit, d.ratio, d.is_trend, d.is_virtual, address, d.description,
    )  # fmt: skip
    async with ctx.db.acquire() as conn:
        await must_exist(conn, "data_sources", d.data_source_id, "data_source_id")
        protocol = await conn.fetchval("SELECT protocol FROM data_sources WHERE id = $1", d.data_source_id)
        if d.is_virtual:
            expression = address.get("expression")
            if not isinstance(expression, str):
                raise bad_request("address.expression", "a virtual point's address holds its expression")
            try:
                parse(expression)
            except ExpressionError as exc:
                raise bad_request("address.expression", exc.message) from exc
        else:
            problems = address_problems(protocol, address)
            if problems:
                raise ProblemError(
                    400, "Invalid input", problems[0][1], [{"field": f, "message": m} for f, m in problems]
                )
        try:
            if point_id is None:
                return int(
                    await conn.fetchval(
                        "INSERT INTO points (name, data_source_id, object_type, units, high_limit, low_limit,"
                        " higher_limit, lower_limit, ratio, is_trend, is_virtual, address, description)"
                        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) RETURNING id",
                        *values,
                    )
                )
            found = await conn.fetchval(
                "UPDATE points SET name=$2, data_source_id=$3, object_type=$4, units=$5, high_limit=$6,"
                " low_limit=$7, higher_limit=$8, lower_limit=$9, ratio=$10, is_trend=$11, is_virtual=$12,"
                " address=$13, description=$14 WHERE id=$1 RETURNING id",
                point_id,
                *values,
            )
        except asyncpg.UniqueViolationError as exc:
            raise conflict_from(exc) from exc
    if found is None:
        raise not_found("point", point_id)
    return point_id


@router.post("/points", status_code=201, tags=["points"])
async def create_point(
    body: Envelope[PointIn], response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    new_id = await _write_point(ctx, body.data, None)
    response.headers["Location"] = f"/points/{new_id}"
    await publish_change(ctx, "point", "created", new_id)
    return {"id": new_id}


@router.put("/points/{point_id}", tags=["points"])
async def update_point(
    point_id: int, body: Envelope[PointIn], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    await _write_point(ctx, body.data, point_id)
    await publish_change(ctx, "point", "updated", point_id)
    return {"id": point_id}


class PointLimitsIn(Body):
    model_config = ConfigDict(extra="ignore")  # MyEMS sends the whole point; only the limits matter here

    high_limit: float | None = None
    low_limit: float | None = None
    higher_limit: float | None = None
    lower_limit: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> PointLimitsIn:
        if self.low_limit is not None and self.high_limit is not None and self.low_limit > self.high_limit:
            raise ValueError("low_limit must not exceed high_limit")
        if (
            self.lower_limit is not None
            and self.higher_limit is not None
            and self.lower_limit > self.higher_limit
        ):
            raise ValueError("lower_limit must not exceed higher_limit")
        return self


@router.put("/pointlimits/{point_id}", tags=["points"])
async def update_point_limits(
    point_id: int, body: Envelope[PointLimitsIn], ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    """Change only a point's limits (MyEMS `PUT /pointlimits/{id}`); other fields in the body are ignored."""
    d = body.data
    found = await ctx.db.fetchval(
        "UPDATE points SET high_limit=$2, low_limit=$3, higher_limit=$4, lower_limit=$5 WHERE id=$1 RETURNING id",
        point_id, d.high_limit, d.low_limit, d.higher_limit, d.lower_limit,
    )  # fmt: skip
    if found is None:
        raise not_found("point", point_id)
    await publish_change(ctx, "point", "updated", point_id)
    return {"id": point_id}


@router.delete("/points/{point_id}", status_code=204, tags=["points"])
async def delete_point(point_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    await ensure_unbound(ctx.db, "points", "point", point_id)
    try:
        found = await ctx.db.fetchval("DELETE FROM points WHERE id = $1 RETURNING id", point_id)
    except asyncpg.ForeignKeyViolationError as exc:
        raise conflict_from(exc) from exc
    if found is None:
        raise not_found("point", point_id)
    await publish_change(ctx, "point", "deleted", point_id)
    return Response(status_code=204)
