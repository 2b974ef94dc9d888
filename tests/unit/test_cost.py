"""Pricing quarters with time-of-use and block tariffs (services/aggregation/cost.py): hand-worked scenarios and
properties (the parts of an hour split across periods and blocks add up to the hour)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.aggregation.cost import QUARTER_MS, Tariff, block_cost, price_quarters, tariff_from_model
from services.registry.tariffs import Block, Period, validate_blocks, validate_timeofuse

BRUSSELS = ZoneInfo("Europe/Brussels")
KOLKATA = ZoneInfo("Asia/Kolkata")


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def tou(
    *periods: tuple[int, int, str], valid: tuple[datetime, datetime] | None = None, ident: int = 1
) -> Tariff:
    start, end = valid or (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    return Tariff(
        ident,
        1,
        ms(start),
        ms(end),
        periods=tuple(Period(a * 3600, b * 3600, "onpeak", Decimal(p)) for a, b, p in periods),
    )


def blocks(*rungs: tuple[str, str | None, str], ident: int = 9) -> Tariff:
    return Tariff(
        ident,
        1,
        ms(datetime(2000, 1, 1, tzinfo=UTC)),
        ms(datetime(2100, 1, 1, tzinfo=UTC)),
        blocks=tuple(Block(Decimal(a), None if b is None else Decimal(b), Decimal(p)) for a, b, p in rungs),
    )


def quarters(start: datetime, n: int, energy: float) -> list[tuple[int, float]]:
    return [(ms(start) + k * QUARTER_MS, energy) for k in range(n)]


def test_tou_across_local_midnight_prices_each_side_with_its_period() -> None:
    tariff = tou((0, 6, "0.10"), (6, 22, "0.30"), (22, 24, "0.10"))
    # 21:00 to 01:00 in Brussels (+01:00), 2 kWh a quarter: 8 kWh at 0.30, then 24 kWh at 0.10.
    costs, pieces = price_quarters(
        quarters(datetime(2026, 1, 9, 20, tzinfo=UTC), 16, 2.0), [tariff], BRUSSELS
    )
    assert round(sum(costs.values()), 9) == 2.4 + 2.4
    assert sum(p.energy for p in pieces) == 32.0


def test_a_period_edge_inside_a_quarter_splits_it_by_time() -> None:
    # In Kolkata (+05:30) a period ending at 06:00 local falls on a quarter, but a 06:10 edge does not.
    tariff = Tariff(
        1,
        1,
        0,
        ms(datetime(2100, 1, 1, tzinfo=UTC)),
        periods=(
            Period(0, 6 * 3600 + 600, "offpeak", Decimal("0.1")),
            Period(6 * 3600 + 600, 86_400, "onpeak", Decimal("0.4")),
        ),
    )
    start = datetime(2026, 3, 1, 6, 0, tzinfo=KOLKATA)
    costs, pieces = price_quarters([(ms(start), 3.0)], [tariff], KOLKATA)
    # 10 of 15 minutes at 0.1 (2 kWh) and 5 at 0.4 (1 kWh).
    assert costs == {ms(start): pytest.approx(0.2 + 0.4)}
    assert [round(p.energy, 9) for p in pieces] == [2.0, 1.0]


def test_a_tariff_ending_on_the_15th_hands_over_to_the_next() -> None:
    change = datetime(2026, 1, 15, tzinfo=BRUSSELS)
    old = tou((0, 24, "0.10"), valid=(datetime(2026, 1, 1, tzinfo=BRUSSELS), change), ident=1)
    new = tou((0, 24, "0.20"), valid=(change, datetime(2026, 2, 1, tzinfo=BRUSSELS)), ident=2)
    costs, _ = price_quarters(quarters(datetime(2026, 1, 14, 22, tzinfo=UTC), 8, 1.0), [new, old], BRUSSELS)
    assert round(sum(costs.values()), 9) == 1.2
    assert {p for p, c in costs.items() if round(c, 9) == 0.2} == set(
        range(ms(change), ms(change) + 4 * QUARTER_MS, QUARTER_MS)
    )


def test_a_block_boundary_crossed_mid_hour_splits_that_hours_energy() -> None:
    tariff = blocks(("0", "10", "0.50"), ("10", None, "0.80"))
    costs, _pieces = price_quarters(quarters(datetime(2026, 2, 2, 9, tzinfo=UTC), 8, 1.5), [tariff], BRUSSELS)
    by_quarter = [round(costs[q], 9) for q in sorted(costs)]
    assert by_quarter == [0.75] * 6 + [0.5 + 0.4, 1.2]
    assert round(sum(by_quarter[:4]), 9) == 3.0 and round(sum(by_quarter[4:]), 9) == 3.6


def test_blocks_start_again_each_local_month() -> None:
    tariff = blocks(("0", "1", "1"), ("1", None, "2"))
    # 23:45 on 31 January and 00:00 on 1 February (Brussels): each is the first kWh of its month.
    last = ms(datetime(2026, 1, 31, 23, 45, tzinfo=BRUSSELS))
    costs, _ = price_quarters([(last, 1.0), (last + QUARTER_MS, 1.0)], [tariff], BRUSSELS)
    assert costs == {last: 1.0, last + QUARTER_MS: 1.0}


def test_quarters_outside_every_tariff_have_no_cost() -> None:
    tariff = tou((0, 24, "1"), valid=(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)))
    costs, _ = price_quarters([(ms(datetime(2026, 1, 3, tzinfo=UTC)), 5.0)], [tariff], BRUSSELS)
    assert costs == {}


def test_a_registry_model_row_becomes_a_tariff() -> None:
    tariff = tariff_from_model(
        {
            "id": 3,
            "energy_category_id": 1,
            "tariff_type": "block",
            "valid_from": "2026-01-01T00:00:00+00:00",
            "valid_through": "2026-02-01T00:00:00+00:00",
            "timeofuse": [],
            "block": [{"start_amount": "0", "end_amount": None, "price": "0.5"}],
        }
    )
    assert tariff.is_block and tariff.valid_through_ms - tariff.valid_from_ms == 31 * 86_400_000


# --- properties ------------------------------------------------------------------------------------------

# An end time whose seconds are 59 is inclusive (MyEMS: 05:59:59 ends at 06:00), so cuts avoid :59.
edges = st.lists(st.integers(1, 86_399).filter(lambda s: s % 60 != 59), max_size=6, unique=True).map(sorted)
prices = st.decimals(min_value=0, max_value=5, places=3)


@st.composite
def tou_tariffs(draw: st.DrawFn) -> Tariff:
    cuts = [0, *draw(edges), 86_400]
    periods = [
        {
            "start_time_of_day": f"{a // 3600:02d}:{a // 60 % 60:02d}:{a % 60:02d}",
            "end_time_of_day": f"{b // 3600:02d}:{b // 60 % 60:02d}:{b % 60:02d}"
            if b < 86_400
            else "24:00:00",
            "peak_type": "onpeak",
            "price": str(draw(prices)),
        }
        for a, b in itertools.pairwise(cuts)
    ]
    checked = validate_timeofuse(periods)
    return Tariff(1, 1, 0, ms(datetime(2100, 1, 1, tzinfo=UTC)), periods=tuple(checked))


@st.composite
def block_tariffs(draw: st.DrawFn) -> Tariff:
    tops = sorted(set(draw(st.lists(st.integers(1, 200), max_size=4))))
    starts = [0, *tops]
    rungs = [
        {"start_amount": a, "end_amount": b, "price": str(draw(prices))}
        for a, b in zip(starts, [*tops, None], strict=True)
    ]
    return Tariff(9, 1, 0, ms(datetime(2100, 1, 1, tzinfo=UTC)), blocks=tuple(validate_blocks(rungs)))


hours = st.integers(0, 24 * 366).map(lambda h: ms(datetime(2026, 1, 1, tzinfo=UTC)) + h * 3_600_000)
zones = st.sampled_from([BRUSSELS, KOLKATA, ZoneInfo("America/New_York"), ZoneInfo("Asia/Kathmandu")])


@settings(max_examples=200, deadline=None)
@given(
    tariff=st.one_of(tou_tariffs(), block_tariffs()),
    hour=hours,
    energy=st.lists(st.floats(0, 50), min_size=4, max_size=4),
    tz=zones,
)
def test_the_parts_of_an_hour_add_up_to_its_cost_and_energy(
    tariff: Tariff, hour: int, energy: list[float], tz: ZoneInfo
) -> None:
    series = [(hour + k * QUARTER_MS, e) for k, e in enumerate(energy)]
    costs, pieces = price_quarters(series, [tariff], tz)
    assert sum(p.energy for p in pieces) == pytest.approx(sum(energy), abs=1e-9)
    assert sum(p.cost for p in pieces) == pytest.approx(sum(costs.values()), abs=1e-9)
    for quarter, e in series:
        parts = [p for p in pieces if quarter <= p.start_ms < quarter + QUARTER_MS]
        assert sum(p.energy for p in parts) == pytest.approx(e, abs=1e-9)
        assert sum(p.end_ms - p.start_ms for p in parts) == QUARTER_MS
    if tariff.is_block:
        assert sum(costs.values()) == pytest.approx(block_cost(tariff.blocks, 0.0, sum(energy)), abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(tariff=block_tariffs(), parts=st.lists(st.floats(0, 80), min_size=1, max_size=8))
def test_block_cost_of_a_whole_is_the_cost_of_its_parts_in_order(tariff: Tariff, parts: list[float]) -> None:
    running, total = 0.0, 0.0
    for part in parts:
        total += block_cost(tariff.blocks, running, part)
        running += part
    assert total == pytest.approx(block_cost(tariff.blocks, 0.0, sum(parts)), abs=1e-6)
    # Taking energy back refunds exactly what it cost.
    assert block_cost(tariff.blocks, running, -parts[-1]) == pytest.approx(
        -block_cost(tariff.blocks, running - parts[-1], parts[-1]), abs=1e-6
    )


@settings(max_examples=200, deadline=None)
@given(
    tariff=block_tariffs(),
    energy=st.lists(st.floats(0, 30), min_size=2, max_size=12),
    cut=st.integers(1, 11),
    tz=zones,
)
def test_pricing_the_tail_of_a_month_from_what_came_before_gives_the_same_costs(
    tariff: Tariff, energy: list[float], cut: int, tz: ZoneInfo
) -> None:
    """What aggregation does on a late quarter: cumulate the month before it, price from it onwards."""
    start = ms(datetime(2026, 5, 10, tzinfo=UTC))
    series = [(start + k * QUARTER_MS, e) for k, e in enumerate(energy)]
    cut = min(cut, len(series) - 1)
    whole, _ = price_quarters(series, [tariff], tz)
    key = (tariff.id, (2026, 5))
    tail, _ = price_quarters(series[cut:], [tariff], tz, {key: sum(e for _, e in series[:cut])})
    for quarter, cost in tail.items():
        assert cost == pytest.approx(whole[quarter], abs=1e-9)
