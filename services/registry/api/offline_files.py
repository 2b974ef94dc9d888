"""Offline meter files (MyEMS `/offlinemeterfiles`): upload a CSV or Excel file of period totals.

The file is kept (for `restore`); its rows are checked all together: status `done` with the periods stored, or
`error` with the first bad row and the reason, and nothing stored. Aggregation spreads the stored periods into
hours with quality `manual`.
"""

from __future__ import annotations

import uuid
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from fastapi import APIRouter, Depends, File, Form, Response, UploadFile

from libs.db import Queryable
from libs.service import ServiceContext, bad_request, get_context, not_found
from services.registry.api.common import publish_change
from services.registry.offline_files import FileRowError, PeriodRow, read_periods

router = APIRouter(tags=["offlinemeterfiles"])

MAX_BYTES = 20 * 1024 * 1024


def _file(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "uuid": str(row["uuid"]),
        "file_name": row["file_name"],
        "upload_datetime": row["upload_datetime"].isoformat(),
        "status": row["status"],
        "rows_accepted": row["rows_accepted"],
        "error_row": row["error_row"],
        "error_reason": row["error_reason"],
    }


_COLUMNS = "id, uuid, file_name, upload_datetime, status, rows_accepted, error_row, error_reason"


async def _meter_ids(conn: Queryable, periods: list[PeriodRow]) -> list[int]:
    """Offline meters named by id, uuid or name; the first unknown one is the file's error."""
    rows = await conn.fetch("SELECT id, uuid::text AS uuid, name FROM offline_meters")
    lookup: dict[str, int] = {}
    for row in rows:
        lookup[str(row["id"])] = row["id"]
        lookup[row["uuid"]] = row["id"]
        lookup.setdefault(row["name"], row["id"])
    out = []
    for period in periods:
        found = lookup.get(period.meter) or lookup.get(period.meter.lower())
        if found is None:
            raise FileRowError(period.row, f"offline meter {period.meter} does not exist")
        out.append(found)
    return out


@router.post("/offlinemeterfiles", status_code=201)
async def upload(
    response: Response,
    file: UploadFile = File(
        ..., description="CSV or .xlsx with columns meter, start_datetime, end_datetime, value"
    ),
    timezone: str = Form("UTC", description="Zone of times given without an offset"),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise bad_request("timezone", f"unknown time zone {timezone}") from exc
    data = await file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise bad_request("file", f"files are at most {MAX_BYTES // (1024 * 1024)} MiB")
    name = (file.filename or "upload").rsplit("/", 1)[-1][:255]
    async with ctx.db.acquire() as conn, conn.transaction():
        file_id = await conn.fetchval(
            "INSERT INTO offline_meter_files (uuid, file_name, content_type, status, file_object)"
            " VALUES ($1, $2, $3, 'new', $4) RETURNING id",
            uuid.uuid4(), name, file.content_type or "application/octet-stream", data,
        )  # fmt: skip
        try:
            periods = read_periods(data, name, zone)
            meters = await _meter_ids(conn, periods)
        except FileRowError as exc:
            await conn.execute(
                "UPDATE offline_meter_files SET status = 'error', error_row = $2, error_reason = $3 WHERE id = $1",
                file_id, exc.row, exc.reason,
            )  # fmt: skip
        else:
            await conn.executemany(
                "INSERT INTO offline_meter_values (offline_meter_id, start_datetime, end_datetime, value, file_id)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (offline_meter_id, start_datetime) DO UPDATE"
                " SET end_datetime = EXCLUDED.end_datetime, value = EXCLUDED.value, file_id = EXCLUDED.file_id",
                [(m, p.start, p.end, p.value, file_id) for m, p in zip(meters, periods, strict=True)],
            )
            await conn.execute(
                "UPDATE offline_meter_files SET status = 'done', rows_accepted = $2 WHERE id = $1",
                file_id,
                len(periods),
            )
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM offline_meter_files WHERE id = $1", file_id)
    assert row is not None
    response.headers["Location"] = f"/offlinemeterfiles/{file_id}"
    await publish_change(ctx, "offline_meter_file", "created", file_id)
    return _file(row)


@router.get("/offlinemeterfiles")
async def list_files(ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    return [_file(r) for r in await ctx.db.fetch(f"SELECT {_COLUMNS} FROM offline_meter_files ORDER BY id")]


@router.get("/offlinemeterfiles/{file_id}")
async def get_file(file_id: int, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    row = await ctx.db.fetchrow(f"SELECT {_COLUMNS} FROM offline_meter_files WHERE id = $1", file_id)
    if row is None:
        raise not_found("offline meter file", file_id)
    return _file(row)


@router.get("/offlinemeterfiles/{file_id}/restore")
async def restore_file(file_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    """The file exactly as uploaded."""
    row = await ctx.db.fetchrow(
        "SELECT file_name, content_type, file_object FROM offline_meter_files WHERE id = $1", file_id
    )
    if row is None:
        raise not_found("offline meter file", file_id)
    safe_name = row["file_name"].replace('"', "")
    return Response(
        bytes(row["file_object"]),
        media_type=row["content_type"],
        headers={"Content-Disposition": f'attachment; filename="{safe_name}"'},
    )


@router.delete("/offlinemeterfiles/{file_id}", status_code=204)
async def delete_file(file_id: int, ctx: ServiceContext = Depends(get_context)) -> Response:
    """Deletes the file and the periods it brought."""
    if await ctx.db.fetchval("DELETE FROM offline_meter_files WHERE id = $1 RETURNING id", file_id) is None:
        raise not_found("offline meter file", file_id)
    await publish_change(ctx, "offline_meter_file", "deleted", file_id)
    return Response(status_code=204)
