"""Reading offline meter files (CSV or Excel) into period totals. Pure: bytes in, rows or a row error out.

A file has a header row and one row per period: `meter` (offline meter id, uuid or name), `start_datetime`,
`end_datetime` (ISO 8601; without an offset they are taken in the upload's time zone) and `value` (energy in
the meter's unit for the period). Either every row is good, or the first bad row is reported with its number
(1 = the header) and nothing of the file is kept.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import datetime, tzinfo

COLUMNS = ("meter", "start_datetime", "end_datetime", "value")
MAX_ROWS = 100_000


@dataclass(frozen=True)
class PeriodRow:
    row: int
    meter: str
    start: datetime
    end: datetime
    value: float


class FileRowError(ValueError):
    def __init__(self, row: int, reason: str) -> None:
        super().__init__(f"row {row}: {reason}")
        self.row = row
        self.reason = reason


def _cells(data: bytes, file_name: str) -> list[list[object]]:
    if file_name.lower().endswith((".xlsx", ".xlsm")) or data[:2] == b"PK":
        from openpyxl import load_workbook

        try:
            sheet = load_workbook(io.BytesIO(data), read_only=True, data_only=True).worksheets[0]
        except Exception as exc:
            raise FileRowError(0, f"not a readable Excel file ({exc.__class__.__name__})") from exc
        return [list(row) for row in sheet.iter_rows(values_only=True)]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileRowError(0, "a CSV file must be UTF-8") from exc
    dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t") if text.strip() else csv.excel
    return [list(row) for row in csv.reader(io.StringIO(text), dialect)]


def _time(value: object, zone: tzinfo, row: int, column: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip())
        except ValueError as exc:
            raise FileRowError(row, f"{column} {value!r} is not an ISO 8601 date and time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def read_periods(data: bytes, file_name: str, zone: tzinfo) -> list[PeriodRow]:
    """Every period of the file, checked; raises FileRowError for the first bad row."""
    rows = [row for row in _cells(data, file_name) if any(cell not in (None, "") for cell in row)]
    if not rows:
        raise FileRowError(0, "the file is empty")
    header = [str(cell or "").strip().lower() for cell in rows[0]]
    missing = [column for column in COLUMNS if column not in header]
    if missing:
        raise FileRowError(1, f"missing column(s): {', '.join(missing)}")
    if len(rows) - 1 > MAX_ROWS:
        raise FileRowError(MAX_ROWS + 2, f"at most {MAX_ROWS} rows per file")
    index = {column: header.index(column) for column in COLUMNS}
    out: list[PeriodRow] = []
    seen: set[tuple[str, datetime]] = set()
    for number, cells in enumerate(rows[1:], start=2):
        cells = cells + [None] * (len(header) - len(cells))
        meter = str(cells[index["meter"]] or "").strip()
        if not meter:
            raise FileRowError(number, "meter is empty")
        start = _time(cells[index["start_datetime"]], zone, number, "start_datetime")
        end = _time(cells[index["end_datetime"]], zone, number, "end_datetime")
        if end <= start:
            raise FileRowError(number, "end_datetime must be after start_datetime")
        raw = cells[index["value"]]
        try:
            value = (
                float(str(raw).strip().replace(",", ".")) if not isinstance(raw, int | float) else float(raw)
            )
        except ValueError as exc:
            raise FileRowError(number, f"value {raw!r} is not a number") from exc
        if not math.isfinite(value) or value < 0:
            raise FileRowError(number, "value must be a finite number of at least 0")
        if (meter, start) in seen:
            raise FileRowError(number, f"a second period for {meter} starting {start.isoformat()}")
        seen.add((meter, start))
        out.append(PeriodRow(number, meter, start, end, value))
    return out
