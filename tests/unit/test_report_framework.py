"""The report framework's pure parts: parameters, cells, series, statistics, and the files made from them."""

from __future__ import annotations

import csv
import io
import math
import statistics
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook

from libs.service import ProblemError
from proto_schemas.quality import Quality
from services.reporting.api.subjects import describe_values
from services.reporting.export import Block, Sheet, to_csv, to_xlsx
from services.reporting.framework import (
    Cell,
    ReportQuery,
    Subject,
    Table,
    increment_rate,
    period_range,
    report_query,
    resolve_periods,
    series_of,
    series_section,
    subject_key,
)

BRUSSELS = ZoneInfo("Europe/Brussels")
NAMES = ("reportingperiodstartdatetime", "reportingperiodenddatetime")


def problem(function: object, *args: object, **kwargs: object) -> ProblemError:
    with pytest.raises(ProblemError) as caught:
        function(*args, **kwargs)  # type: ignore[operator]
    return caught.value


def query(**overrides: object) -> ReportQuery:
    values: dict[str, object] = {
        "periodtype": "daily",
        "reportingperiodstartdatetime": "2026-01-01T00:00:00",
        "reportingperiodenddatetime": "2026-01-03T00:00:00",
        "baseperiodstartdatetime": None,
        "baseperiodenddatetime": None,
        "quickmode": False,
        "language": "en",
        "format": "json",
    }
    values.update(overrides)
    return report_query(**values)  # type: ignore[arg-type]


def test_each_bad_parameter_is_refused_naming_it() -> None:
    for name, value in (("periodtype", "fortnightly"), ("language", "xx"), ("format", "pdf")):
        assert problem(query, **{name: value}).status == 400
        assert name in str(problem(query, **{name: value}).errors)
    missing = problem(resolve_periods, query(reportingperiodenddatetime=None), BRUSSELS)
    assert "reportingperiodenddatetime" in str(missing.errors)
    half_base = problem(resolve_periods, query(baseperiodstartdatetime="2025-01-01T00:00:00"), BRUSSELS)
    assert "baseperiodenddatetime" in str(half_base.errors)
    backwards = problem(period_range, datetime(2026, 1, 2), datetime(2026, 1, 1), NAMES, BRUSSELS, "daily")
    assert "reportingperiodenddatetime" in str(backwards.errors)
    too_long = problem(period_range, datetime(2026, 1, 1), datetime(2026, 6, 1), NAMES, BRUSSELS, "hourly")
    assert "93 days" in str(too_long.errors)
    assert "spaceuuid" in str(problem(subject_key, None, "nope", "space").errors)
    assert "tenantid" in str(problem(subject_key, None, None, "tenant").errors)
    assert subject_key(None, "0F8FAD5B-D9CB-469F-A165-70867728950E", "space") == (
        "0f8fad5b-d9cb-469f-a165-70867728950e"
    )


def test_an_offset_is_converted_to_the_subjects_wall_clock() -> None:
    start, end = period_range(
        datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
        datetime.fromisoformat("2026-01-02T00:00:00+00:00"),
        NAMES,
        BRUSSELS,
        "daily",
    )
    assert (start, end) == (datetime(2026, 1, 1, 1), datetime(2026, 1, 2, 1))


def test_a_cell_keeps_the_worst_quality_and_loses_its_cost_once_a_part_is_unpriced() -> None:
    cell = Cell()
    cell.add(2.0, 1.5, Quality.GOOD, 4)
    cell.add(3.0, 2.0, Quality.ESTIMATED, 4)
    assert (cell.energy, cell.cost, cell.quality_label, cell.count) == (5.0, 3.5, "estimated", 8)
    cell.add(1.0, None, Quality.GOOD, 1)
    assert cell.cost is None and cell.energy == 6.0
    cell.add(100.0, 1.0, Quality.SUSPECT, 0)  # nothing fed it: ignored
    assert cell.energy == 6.0 and Cell().quality_label == "missing"


def _subject() -> Subject:
    return Subject(
        kind="space",
        id=1,
        name="Site",
        uuid="u",
        tz=BRUSSELS,
        raw={"area": 100.0, "meters": []},
        categories={
            1: {"name": "Electricity", "unit_of_measure": "kWh", "kgce": 0.1229, "kgco2e": 0.5},
            2: {"name": "Water", "unit_of_measure": "m3", "kgce": 0.0857, "kgco2e": 0.2},
        },
        items={7: {"name": "Lighting", "energy_category_id": 1}},
    )


def _table() -> Table:
    starts = [datetime(2026, 1, day, tzinfo=BRUSSELS) for day in (1, 2)]
    table = Table(starts)
    table.cells((1, None))[0].add(10.0, 2.0, 0, 4)
    table.cells((1, 7))[0].add(5.0, 1.0, 0, 4)
    table.cells((1, 7))[1].add(7.0, 1.4, 2, 4)
    table.cells((2, None))[1].add(3.0, None, 0, 4)
    return table


def test_series_merge_by_category_or_item_and_value_energy_cost_or_carbon() -> None:
    subject, table = _subject(), _table()
    by_category = series_of(table, subject)
    assert [(s.name, s.unit, s.values, s.qualities) for s in by_category] == [
        ("Electricity", "kWh", [15.0, 7.0], ["good", "estimated"]),
        ("Water", "m3", [0.0, 3.0], ["missing", "good"]),
    ]
    assert [s.name for s in series_of(table, subject, grouping="item")] == ["Lighting"]
    cost = series_of(table, subject, "cost")
    assert cost[0].values == [3.0, 1.4] and cost[0].subtotal == 4.4
    assert cost[1].values == [0.0, None] and cost[1].subtotal is None  # unpriced water
    carbon = series_of(table, subject, "carbon")
    assert carbon[0].values == [7.5, 3.5] and carbon[0].unit == "kgCO2e"


def test_a_section_compares_each_series_with_the_base_period() -> None:
    subject, table = _subject(), _table()
    reporting = series_of(table, subject)
    base_table = Table(table.starts)
    base_table.cells((1, None))[0].add(11.0, 0, 0, 4)
    section = series_section(reporting, table.starts, subject, base=series_of(base_table, subject))
    assert section["subtotals"] == [22.0, 3.0]
    assert section["increment_rates"] == [1.0, None]
    assert section["subtotals_per_unit_area"] == [0.22, 0.03]
    assert math.isclose(section["total_in_kgce"], 22.0 * 0.1229 + 3.0 * 0.0857)
    assert section["timestamps"][0] == ["2026-01-01T00:00:00+01:00", "2026-01-02T00:00:00+01:00"]
    assert increment_rate(5.0, 0.0) is None and increment_rate(None, 1.0) is None


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=50))
def test_statistics_agree_with_the_standard_library(values: list[float]) -> None:
    described = describe_values(values)
    assert described["minimum"] == min(values) and described["maximum"] == max(values)
    assert described["median"] == statistics.median(values)
    mean = described["mean"]
    assert mean is not None and math.isclose(mean, statistics.fmean(values), rel_tol=1e-9, abs_tol=1e-6)
    if len(values) > 1:
        variance = described["variance"]
        assert variance is not None and math.isclose(
            variance, statistics.variance(values), rel_tol=1e-6, abs_tol=1e-3
        )
    else:
        assert described["stdev"] == 0.0
    assert describe_values([])["mean"] is None


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=12).filter(lambda t: t != "Subtotal"),
            st.one_of(st.none(), st.floats(-1e300, 1e300, allow_nan=False, allow_subnormal=False)),
        ),
        min_size=1,
        max_size=20,
    )
)
@settings(max_examples=30)
def test_the_excel_and_csv_files_hold_the_numbers_given(rows: list[tuple[str, float | None]]) -> None:
    sheet = Sheet("spaceenergycategory", "Site", "2026-01-01 to 2026-01-03")
    sheet.blocks.append(
        Block("Reporting period", ["Datetime", "Electricity (kWh)"], [list(r) for r in rows], True)
    )
    book = load_workbook(io.BytesIO(to_xlsx(sheet)))
    ws = book.active
    assert ws is not None
    table = [list(r) for r in ws.iter_rows(min_row=7, max_col=2, values_only=True)]
    # Excel keeps 15 to 17 significant digits: the same numbers to its precision.
    for (_, value), got in zip(rows, table, strict=False):
        assert got[1] == value if value is None else math.isclose(got[1], value, rel_tol=1e-15)
    assert len(ws._charts) == 1
    lines = list(csv.reader(io.StringIO(to_csv(sheet).decode("utf-8-sig"))))
    assert [line[1] for line in lines[4 : 4 + len(rows)]] == ["" if v is None else repr(v) for _, v in rows]


def test_text_in_the_workbook_stays_text() -> None:
    sheet = Sheet("meterenergy", '=HYPERLINK("http://x")\x07', "p")
    sheet.blocks.append(Block("t", ["Datetime", "v"], [["=1+1", 2.0]]))
    ws = load_workbook(io.BytesIO(to_xlsx(sheet))).active
    assert ws is not None
    assert ws["B2"].value == '=HYPERLINK("http://x")' and ws["B2"].data_type == "s"
    assert ws["A7"].value == "=1+1" and ws["A7"].data_type == "s" and ws["B7"].value == 2.0
