"""Equipment and combined-equipment parameters (MyEMS `/{equipments|combinedequipments}/{id}/parameters`).

A parameter is a constant, a point's value, or a fraction of two meters (numerator / denominator), used by
efficiency reports. MyEMS's result table calls the fraction type `meter`; its examples send `fraction`: both
are accepted, `fraction` is stored.
"""

from __future__ import annotations

from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Response
from pydantic import model_validator

from libs.db import Queryable
from libs.service import ProblemError, ServiceContext, bad_request, get_context, not_found
from services.registry.api.common import Body, Envelope, Name, fetch_or_404, must_exist, publish_change

router = APIRouter()

_OWNERS = {"equipments": ("equipments", "equipment_id", "equipment"),
           "combinedequipments": ("combined_equipments", "combined_equipment_id", "combined equipment")}  # fmt: skip


class ParameterIn(Body):
    name: Name
    parameter_type: Literal["constant", "point", "fraction", "meter"]
    constant: str | None = None
    point_id: int | None = None
    numerator_meter_uuid: str | None = None
    denominator_meter_uuid: str | None = None

    @model_validator(mode="after")
    def _fields_of_type(self) -> ParameterIn:
        if self.parameter_type == "constant" and (self.constant is None or self.constant == ""):
            raise ValueError("a constant parameter needs constant")
        if self.parameter_type == "point" and self.point_id is None:
            raise ValueError("a point parameter needs point_id")
        if self.parameter_type in ("fraction", "meter") and not (
            self.numerator_meter_uuid and self.denominator_meter_uuid
        ):
            raise ValueError("a fraction parameter needs numerator_meter_uuid and denominator_meter_uuid")
        return self


_SQL = (
    "SELECT ep.*, p.name AS point_name, nm.name AS num_name, nm.uuid AS num_uuid, dm.name AS den_name,"
    " dm.uuid AS den_uuid FROM equipment_parameters ep LEFT JOIN points p ON p.id = ep.point_id"
    " LEFT JOIN meters nm ON nm.id = ep.numerator_meter_id LEFT JOIN meters dm ON dm.id = ep.denominator_meter_id"
)


def _parameter(row: asyncpg.Record) -> dict[str, Any]:
    def meter(prefix: str, column: str) -> dict[str, Any] | None:
        if row[column] is None:
            return None
        return {"id": row[column], "name": row[f"{prefix}_name"], "uuid": str(row[f"{prefix}_uuid"])}

    return {
        "id": row["id"],
        "name": row["name"],
        "parameter_type": row["parameter_type"],
        "constant": row["constant"],
        "point": {"id": row["point_id"], "name": row["point_name"]} if row["point_id"] else None,
        "numerator_meter": meter("num", "numerator_meter_id"),
        "denominator_meter": meter("den", "denominator_meter_id"),
    }


async def _meter_id(db: Queryable, meter_uuid: str | None, field: str) -> int | None:
    if meter_uuid is None:
        return None
    found = await db.fetchval("SELECT id FROM meters WHERE uuid::text = $1", meter_uuid.strip().lower())
    if found is None:
        raise bad_request(field, f"meter {meter_uuid} does not exist")
    return int(found)


def _routes(owner_path: str) -> None:
    table, column, label = _OWNERS[owner_path]
    base = f"/{owner_path}/{{owner_id}}/parameters"

    async def owner_exists(db: Queryable, owner_id: int) -> None:
        await fetch_or_404(db, label, f"SELECT id FROM {table} WHERE id = $1", owner_id)

    @router.get(base, tags=[owner_path], name=f"list {label} parameters")
    async def list_parameters(
        owner_id: int, ctx: ServiceContext = Depends(get_context)
    ) -> list[dict[str, Any]]:
        await owner_exists(ctx.db, owner_id)
        return [
            _parameter(r)
            for r in await ctx.db.fetch(_SQL + f" WHERE ep.{column} = $1 ORDER BY ep.id", owner_id)
        ]

    async def write(ctx: ServiceContext, owner_id: int, d: ParameterIn, parameter_id: int | None) -> int:
        kind = "fraction" if d.parameter_type == "meter" else d.parameter_type
        async with ctx.db.acquire() as conn:
            await owner_exists(conn, owner_id)
            await must_exist(conn, "points", d.point_id if kind == "point" else None, "point_id")
            numerator = await _meter_id(
                conn, d.numerator_meter_uuid if kind == "fraction" else None, "numerator_meter_uuid"
            )
            denominator = await _meter_id(
                conn, d.denominator_meter_uuid if kind == "fraction" else None, "denominator_meter_uuid"
            )
            values = (d.name, kind, d.constant if kind == "constant" else None, d.point_id if kind == "point" else None,
                      numerator, denominator)  # fmt: skip
            try:
                if parameter_id is None:
                    return int(await conn.fetchval(
                        f"INSERT INTO equipment_parameters ({column}, name, parameter_type, constant, point_id,"
                        " numerator_meter_id, denominator_meter_id) VALUES ($1,$2,$3,$4,$5,$6,$7) RETURNING id",
                        owner_id, *values,
                    ))  # fmt: skip
                found = await conn.fetchval(
                    "UPDATE equipment_parameters SET name=$3, parameter_type=$4, constant=$5, point_id=$6,"
                    f" numerator_meter_id=$7, denominator_meter_id=$8 WHERE id=$1 AND {column}=$2 RETURNING id",
                    parameter_id, owner_id, *values,
                )  # fmt: skip
            except asyncpg.UniqueViolationError as exc:
                raise ProblemError(
                    409, "Duplicate", f"this {label} has a parameter named {d.name} already"
                ) from exc
        if found is None:
            raise not_found(f"{label} parameter", parameter_id)
        return parameter_id

    async def create(
        owner_id: int,
        body: Envelope[ParameterIn],
        response: Response,
        ctx: ServiceContext = Depends(get_context),
    ) -> dict[str, int]:
        new_id = await write(ctx, owner_id, body.data, None)
        response.headers["Location"] = f"/{owner_path}/{owner_id}/parameters/{new_id}"
        await publish_change(ctx, f"{label.replace(' ', '_')}_parameter", "created", new_id, owner_id)
        return {"id": new_id}

    router.add_api_route(
        base, create, methods=["POST"], status_code=201, tags=[owner_path], name=f"create {label} parameter"
    )

    @router.get(base + "/{parameter_id}", tags=[owner_path], name=f"get {label} parameter")
    async def get_parameter(
        owner_id: int, parameter_id: int, ctx: ServiceContext = Depends(get_context)
    ) -> dict[str, Any]:
        row = await ctx.db.fetchrow(_SQL + f" WHERE ep.id = $1 AND ep.{column} = $2", parameter_id, owner_id)
        if row is None:
            raise not_found(f"{label} parameter", parameter_id)
        return _parameter(row)

    async def update(
        owner_id: int,
        parameter_id: int,
        body: Envelope[ParameterIn],
        ctx: ServiceContext = Depends(get_context),
    ) -> dict[str, int]:
        await write(ctx, owner_id, body.data, parameter_id)
        await publish_change(ctx, f"{label.replace(' ', '_')}_parameter", "updated", parameter_id, owner_id)
        return {"id": parameter_id}

    router.add_api_route(
        base + "/{parameter_id}", update, methods=["PUT"], tags=[owner_path], name=f"update {label} parameter"
    )

    @router.delete(
        base + "/{parameter_id}", status_code=204, tags=[owner_path], name=f"delete {label} parameter"
    )
    async def delete_parameter(
        owner_id: int, parameter_id: int, ctx: ServiceContext = Depends(get_context)
    ) -> Response:
        found = await ctx.db.fetchval(
            f"DELETE FROM equipment_parameters WHERE id = $1 AND {column} = $2 RETURNING id",
            parameter_id,
            owner_id,
        )
        if found is None:
            raise not_found(f"{label} parameter", parameter_id)
        await publish_change(ctx, f"{label.replace(' ', '_')}_parameter", "deleted", parameter_id, owner_id)
        return Response(status_code=204)


for _owner in _OWNERS:
    _routes(_owner)
