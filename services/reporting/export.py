"""Report files: the numbers of a report as an Excel workbook (with a chart) or as CSV.

A report describes its numbers once as a ``Sheet`` of ``Block``s (a title, a header row, data rows); the JSON
answer and both files are made from the same values, so the Excel file holds exactly the numbers of the JSON.
"""

from __future__ import annotations

import base64
import csv
import io
from dataclasses import dataclass, field
from typing import Any

from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.chart import BarChart, Reference
from openpyxl.styles import Font

_LABELS = {
    "en": {"report": "Report", "subject": "Subject", "period": "Reporting period", "base": "Base period"},
    "de": {"report": "Bericht", "subject": "Objekt", "period": "Berichtszeitraum", "base": "Basiszeitraum"},
    "fr": {"report": "Rapport", "subject": "Objet", "period": "Période", "base": "Période de base"},
    "nl": {"report": "Rapport", "subject": "Object", "period": "Rapportageperiode", "base": "Basisperiode"},
    "es": {"report": "Informe", "subject": "Objeto", "period": "Periodo", "base": "Periodo base"},
    "zh_CN": {"report": "报表", "subject": "对象", "period": "报告期", "base": "基准期"},
}


@dataclass
class Block:
    """One table of a report: a title, a header and rows. ``chart`` adds a bar chart of its data rows
    (first column as categories, each other column a series; a trailing "Subtotal" row is left out)."""

    title: str
    header: list[str]
    rows: list[list[Any]]
    chart: bool = False


@dataclass
class Sheet:
    report: str
    subject: str
    period: str
    language: str = "en"
    blocks: list[Block] = field(default_factory=list)


def _append(ws: Any, values: list[Any]) -> int:
    """Write a row below the last; text stays text (never a formula) and loses characters Excel refuses."""
    row = ws.max_row + 1 if ws.max_row > 1 or ws.cell(1, 1).value is not None else 1
    for column, value in enumerate(values, start=1):
        if value is None or isinstance(value, bool | int | float):
            ws.cell(row=row, column=column, value=value)
            continue
        cell = ws.cell(row=row, column=column, value=ILLEGAL_CHARACTERS_RE.sub("", str(value)))
        cell.data_type = "s"
    return int(row)


def to_xlsx(sheet: Sheet) -> bytes:
    """The report as an .xlsx workbook: a heading, then each block as a table, charts to their right."""
    labels = _LABELS.get(sheet.language, _LABELS["en"])
    book = Workbook()
    ws = book.active
    assert ws is not None
    ws.title = sheet.report[:31]
    _append(ws, [labels["report"], sheet.report])
    _append(ws, [labels["subject"], sheet.subject])
    _append(ws, [labels["period"], sheet.period])
    ws["A1"].font = Font(bold=True)
    for block in sheet.blocks:
        title_row = _append(ws, [None]) + 1
        _append(ws, [block.title])
        ws.cell(row=title_row, column=1).font = Font(bold=True)
        header_row = _append(ws, block.header)
        for cell in ws[header_row]:
            cell.font = Font(bold=True)
        for row in block.rows:
            _append(ws, row)
        data_rows = [r for r in block.rows if not (r and r[0] == "Subtotal")]
        if block.chart and data_rows and len(block.header) > 1:
            chart = BarChart()
            chart.title = block.title
            chart.height, chart.width = 7.5, 16
            last = header_row + len(data_rows)
            data = Reference(ws, min_col=2, max_col=len(block.header), min_row=header_row, max_row=last)
            chart.add_data(data, titles_from_data=True)
            chart.set_categories(Reference(ws, min_col=1, min_row=header_row + 1, max_row=last))
            ws.add_chart(chart, f"{_column(len(block.header) + 2)}{header_row}")
    ws.column_dimensions["A"].width = 28
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _column(index: int) -> str:
    name = ""
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(65 + rest) + name
    return name


def xlsx_base64(sheet: Sheet) -> str:
    """The workbook as MyEMS returns it in JSON: ``excel_bytes_base64``."""
    return base64.b64encode(to_xlsx(sheet)).decode("ascii")


def to_csv(sheet: Sheet) -> bytes:
    """The report as CSV (UTF-8 with a BOM, so spreadsheet programs read it right): blocks one after
    another, each with its title line and header, separated by an empty line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([sheet.report, sheet.subject, sheet.period])
    for block in sheet.blocks:
        writer.writerow([])
        writer.writerow([block.title])
        writer.writerow(block.header)
        for row in block.rows:
            writer.writerow(["" if v is None else v for v in row])
    return ("\ufeff" + out.getvalue()).encode("utf-8")
