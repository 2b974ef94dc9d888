"""Tariff rules: time-of-use periods tile the day exactly once, blocks form a ladder from 0, prices are looked up."""

from __future__ import annotations

import random
from datetime import datetime, time
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.registry.tariffs import (
    PEAK_TYPES,
    SECONDS_PER_DAY,
    Block,
    TariffError,
    block_at,
    block_price,
    format_end,
    format_start,
    parse_time_of_day,
    period_at,
    price_at,
    validate_blocks,
    validate_timeofuse,
)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)

# Seed 001's time-of-use example: seven slots, MyEMS's inclusive end seconds.
SEED_TIMEOFUSE: list[dict[str, Any]] = [
    {"start_time_of_day": "00:00:00", "end_time_of_day": "05:59:59", "peak_type": "offpeak", "price": 0.345},
    {"start_time_of_day": "06:00:00", "end_time_of_day": "07:59:59", "peak_type": "midpeak", "price": 0.708},
    {"start_time_of_day": "08:00:00", "end_time_of_day": "10:59:59", "peak_type": "onpeak", "price": 1.159},
    {"start_time_of_day": "11:00:00", "end_time_of_day": "17:59:59", "peak_type": "midpeak", "price": 0.708},
    {"start_time_of_day": "18:00:00", "end_time_of_day": "20:59:59", "peak_type": "onpeak", "price": 1.159},
    {"start_time_of_day": "21:00:00", "end_time_of_day": "21:59:59", "peak_type": "midpeak", "price": 0.708},
    {"start_time_of_day": "22:00:00", "end_time_of_day": "23:59:59", "peak_type": "offpeak", "price": 0.345},
]
# Seed 001's block example: amounts as strings, as MyEMS sends them.
SEED_BLOCKS: list[dict[str, Any]] = [
    {"start_amount": "0", "end_amount": "10000", "price": "0.567"},
    {"start_amount": "10000", "end_amount": "30000", "price": "0.678"},
    {"start_amount": "30000", "end_amount": "100000", "price": "0.789"},
]


def representable(second: int) -> bool:
    """An end at second 59 of a minute cannot be written: `..:59` reads as inclusive (one second later)."""
    return second % 60 != 59


def write_end(second: int, inclusive: bool) -> str:
    """An end boundary in either style the API accepts."""
    if second == SECONDS_PER_DAY and not inclusive:
        return "24:00:00"
    if inclusive and second % 60 == 0:
        return format_start(second - 1)
    return format_start(second)


def periods_for(bounds: list[int], prices: list[Decimal], styles: list[bool]) -> list[dict[str, Any]]:
    return [
        {
            "start_time_of_day": format_start(start),
            "end_time_of_day": write_end(end, inclusive),
            "peak_type": PEAK_TYPES[i % len(PEAK_TYPES)],
            "price": price,
        }
        for i, ((start, end), price, inclusive) in enumerate(
            zip(pairwise(bounds), prices, styles, strict=False)
        )
    ]


@st.composite
def day_partitions(draw: st.DrawFn) -> tuple[list[int], list[dict[str, Any]]]:
    """Boundaries 0 < b1 < ... < 86400 and the periods between them, written in mixed end styles, shuffled."""
    inner = draw(
        st.lists(
            st.integers(1, SECONDS_PER_DAY - 1).filter(representable), min_size=0, max_size=24, unique=True
        )
    )
    bounds = [0, *sorted(inner), SECONDS_PER_DAY]
    count = len(bounds) - 1
    prices = draw(
        st.lists(st.integers(0, 500_000).map(lambda c: Decimal(c) / 1000), min_size=count, max_size=count)
    )
    styles = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    items = periods_for(bounds, prices, styles)
    draw(st.randoms(use_true_random=False)).shuffle(items)
    return bounds, items


# -- times of day -------------------------------------------------------------------------------------


def test_inclusive_and_exclusive_ends_mean_the_same_boundary() -> None:
    assert parse_time_of_day("05:59:59", end=True) == parse_time_of_day("06:00:00", end=True) == 6 * 3600
    assert parse_time_of_day("23:59:59", end=True) == SECONDS_PER_DAY
    assert (
        parse_time_of_day("24:00:00", end=True) == parse_time_of_day("00:00:00", end=True) == SECONDS_PER_DAY
    )
    assert parse_time_of_day("06:00:30", end=True) == 6 * 3600 + 30
    assert parse_time_of_day("05:59:59") == 6 * 3600 - 1  # a start is never shifted
    assert parse_time_of_day(time(5, 59, 59), end=True) == 6 * 3600


@pytest.mark.parametrize("text", ["6", "06:60:00", "06:00:61", "25:00:00", "aa:bb:cc", "", "06-00-00"])
def test_malformed_times_are_refused(text: str) -> None:
    with pytest.raises(TariffError) as caught:
        parse_time_of_day(text, end=True, field="timeofuse.0.end_time_of_day")
    assert caught.value.field == "timeofuse.0.end_time_of_day"


def test_a_period_cannot_start_at_the_end_of_the_day() -> None:
    with pytest.raises(TariffError):
        parse_time_of_day("24:00:00")


@given(st.integers(1, SECONDS_PER_DAY).filter(representable))
def test_ends_are_written_back_as_they_are_read(second: int) -> None:
    assert parse_time_of_day(format_end(second), end=True) == second
    if second % 60 == 0:
        assert format_end(second).endswith(":59")  # MyEMS style


# -- time of use: the seed ----------------------------------------------------------------------------


def test_seed_timeofuse_example_covers_the_day() -> None:
    periods = validate_timeofuse(SEED_TIMEOFUSE)
    assert (periods[0].start, periods[0].end) == (0, 6 * 3600)
    assert periods[-1].end == SECONDS_PER_DAY
    assert [p.end_time_of_day for p in periods] == [item["end_time_of_day"] for item in SEED_TIMEOFUSE]
    assert price_at(periods, time(5, 59, 59)) == Decimal("0.345")
    assert price_at(periods, time(6, 0, 0)) == Decimal("0.708")
    assert price_at(periods, time(9, 30)) == Decimal("1.159")
    assert price_at(periods, datetime(2026, 3, 1, 23, 59, 59)) == Decimal("0.345")
    assert period_at(periods, 21 * 3600).peak_type == "midpeak"


def test_seed_timeofuse_in_exclusive_style_is_the_same_tariff() -> None:
    exclusive = [
        {
            **item,
            "end_time_of_day": format_start(parse_time_of_day(item["end_time_of_day"], end=True) % 86400),
        }
        for item in SEED_TIMEOFUSE
    ]
    assert exclusive[0]["end_time_of_day"] == "06:00:00" and exclusive[-1]["end_time_of_day"] == "00:00:00"
    assert validate_timeofuse(exclusive) == validate_timeofuse(SEED_TIMEOFUSE)


def test_overlapping_periods_are_named_with_where_they_overlap() -> None:
    items = [dict(item) for item in SEED_TIMEOFUSE]
    items[2]["end_time_of_day"] = "11:59:59"  # runs into period 3 (11:00-18:00)
    with pytest.raises(TariffError) as caught:
        validate_timeofuse(items)
    assert caught.value.message.startswith("periods 2 and 3 overlap from 11:00:00")
    assert caught.value.field == "timeofuse.3.start_time_of_day"


def test_a_gap_is_named_with_the_uncovered_time() -> None:
    items = [item for i, item in enumerate(SEED_TIMEOFUSE) if i != 3]  # drops 11:00-18:00
    with pytest.raises(TariffError) as caught:
        validate_timeofuse(items)
    assert caught.value.message == "nothing covers 11:00:00-18:00:00"
    items = SEED_TIMEOFUSE[:-1]  # drops 22:00-24:00
    with pytest.raises(TariffError) as caught:
        validate_timeofuse(items)
    assert caught.value.message == "nothing covers 22:00:00-24:00:00"
    assert caught.value.field == "timeofuse.5.end_time_of_day"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"end_time_of_day": "05:00:00", "start_time_of_day": "06:00:00"}, "timeofuse.0.end_time_of_day"),
        ({"peak_type": "superpeak"}, "timeofuse.0.peak_type"),
        ({"price": -0.1}, "timeofuse.0.price"),
        ({"price": "NaN"}, "timeofuse.0.price"),
        ({"price": "cheap"}, "timeofuse.0.price"),
        ({"start_time_of_day": "0:0"}, "timeofuse.0.start_time_of_day"),
    ],
)
def test_bad_periods_are_named(change: dict[str, Any], field: str) -> None:
    items = [{**SEED_TIMEOFUSE[0], **change}, *SEED_TIMEOFUSE[1:]]
    with pytest.raises(TariffError) as caught:
        validate_timeofuse(items)
    assert caught.value.field == field


def test_no_periods_is_refused() -> None:
    with pytest.raises(TariffError) as caught:
        validate_timeofuse([])
    assert caught.value.field == "timeofuse"


# -- time of use: properties --------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(day_partitions(), st.lists(st.integers(0, SECONDS_PER_DAY - 1), max_size=50))
def test_any_partition_of_the_day_is_accepted_and_priced_by_its_covering_period(
    partition: tuple[list[int], list[dict[str, Any]]], seconds: list[int]
) -> None:
    bounds, items = partition
    periods = validate_timeofuse(items)
    assert [p.start for p in periods] == bounds[:-1] and [p.end for p in periods] == bounds[1:]
    by_start = {parse_time_of_day(item["start_time_of_day"]): item for item in items}
    samples = seconds + bounds[:-1] + [b - 1 for b in bounds[1:]]
    for second in samples:
        start = max(b for b in bounds[:-1] if b <= second)
        assert price_at(periods, second) == Decimal(by_start[start]["price"])
        assert price_at(periods, time(second // 3600, second // 60 % 60, second % 60)) == price_at(
            periods, second
        )


@PROPERTY_SETTINGS
@given(day_partitions(), st.data())
def test_removing_a_period_leaves_a_gap_and_is_refused(
    partition: tuple[list[int], list[dict[str, Any]]], data: st.DataObject
) -> None:
    _, items = partition
    assume(len(items) >= 2)
    drop = data.draw(st.integers(0, len(items) - 1))
    with pytest.raises(TariffError) as caught:
        validate_timeofuse(items[:drop] + items[drop + 1 :])
    assert "nothing covers" in caught.value.message


@PROPERTY_SETTINGS
@given(day_partitions(), st.data())
def test_shifting_one_boundary_makes_a_gap_or_an_overlap_and_is_refused(
    partition: tuple[list[int], list[dict[str, Any]]], data: st.DataObject
) -> None:
    _, items = partition
    index = data.draw(st.integers(0, len(items) - 1))
    which = data.draw(st.sampled_from(["start_time_of_day", "end_time_of_day"]))
    item = items[index]
    start = parse_time_of_day(item["start_time_of_day"])
    end = parse_time_of_day(item["end_time_of_day"], end=True)
    if which == "start_time_of_day":
        moved = data.draw(st.integers(0, SECONDS_PER_DAY - 1).filter(lambda s: s != start))
        text = format_start(moved)
    else:
        moved = data.draw(st.integers(1, SECONDS_PER_DAY).filter(lambda s: s != end and representable(s)))
        text = write_end(moved, data.draw(st.booleans()))
    shifted = [*items[:index], {**item, which: text}, *items[index + 1 :]]
    with pytest.raises(TariffError) as caught:
        validate_timeofuse(shifted)
    assert caught.value.field.startswith("timeofuse.")


# -- blocks -------------------------------------------------------------------------------------------


def test_seed_block_example_is_a_ladder() -> None:
    blocks = validate_blocks(SEED_BLOCKS)
    assert [(b.start_amount, b.end_amount) for b in blocks] == [
        (0, 10000),
        (10000, 30000),
        (30000, 100000),
    ]
    assert block_price(blocks, 0) == Decimal("0.567")
    assert block_price(blocks, 9999.99) == Decimal("0.567")
    assert block_price(blocks, 10000) == Decimal("0.678")
    assert block_price(blocks, Decimal("29999.5")) == Decimal("0.678")
    assert block_price(blocks, 30000) == Decimal("0.789")
    assert block_price(blocks, 100000) == Decimal("0.789")  # the top of the last block belongs to it
    with pytest.raises(TariffError):
        block_price(blocks, 100000.01)
    with pytest.raises(TariffError):
        block_price(blocks, -1)


def test_an_open_ended_last_block_prices_any_amount() -> None:
    blocks = validate_blocks([*SEED_BLOCKS[:2], {"start_amount": 30000, "end_amount": None, "price": 0.9}])
    assert block_price(blocks, 10**12) == Decimal("0.9")


@pytest.mark.parametrize(
    ("blocks", "field", "words"),
    [
        ([{**SEED_BLOCKS[0], "start_amount": "5"}, *SEED_BLOCKS[1:]], "block.0.start_amount", "start at 0"),
        ([SEED_BLOCKS[0], SEED_BLOCKS[2]], "block.1.start_amount", "gap"),
        (
            [SEED_BLOCKS[0], {**SEED_BLOCKS[1], "start_amount": "9000"}, SEED_BLOCKS[2]],
            "block.1.start_amount",
            "overlap",
        ),
        ([{**SEED_BLOCKS[0], "end_amount": None}, *SEED_BLOCKS[1:]], "block.0.end_amount", "last block"),
        ([{**SEED_BLOCKS[0], "end_amount": "0"}], "block.0.end_amount", "above"),
        ([SEED_BLOCKS[0], {**SEED_BLOCKS[1], "price": "-1"}], "block.1.price", "negative"),
        ([], "block", "at least one"),
    ],
)
def test_bad_ladders_are_named(blocks: list[dict[str, Any]], field: str, words: str) -> None:
    with pytest.raises(TariffError) as caught:
        validate_blocks(blocks)
    assert caught.value.field == field and words in caught.value.message


@st.composite
def ladders(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A contiguous ladder from 0; the last block is open-ended half of the time."""
    widths = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=12))
    ends = [sum(widths[: i + 1]) for i in range(len(widths))]
    starts = [0, *ends[:-1]]
    prices = draw(st.lists(st.integers(0, 10**5), min_size=len(ends), max_size=len(ends)))
    open_ended = draw(st.booleans())
    return [
        {
            "start_amount": start,
            "end_amount": None if open_ended and i == len(ends) - 1 else end,
            "price": Decimal(price) / 1000,
        }
        for i, (start, end, price) in enumerate(zip(starts, ends, prices, strict=True))
    ]


def index_of(blocks: list[Block], amount: int) -> int:
    return blocks.index(block_at(blocks, amount))


@PROPERTY_SETTINGS
@given(ladders(), st.lists(st.integers(0, 13 * 10**6), min_size=1, max_size=40))
def test_any_contiguous_ladder_is_accepted_and_looked_up_monotonically(
    items: list[dict[str, Any]], amounts: list[int]
) -> None:
    blocks = validate_blocks(items)
    top = blocks[-1].end_amount
    inside = sorted(a for a in amounts if top is None or a <= top)
    inside += [int(b.start_amount) for b in blocks]
    inside.sort()
    found = [index_of(blocks, a) for a in inside]
    assert found == sorted(found)  # a larger amount never falls in an earlier block
    for amount, index in zip(inside, found, strict=True):
        block = blocks[index]
        assert block.start_amount <= amount and (block.end_amount is None or amount <= block.end_amount)
        assert block_price(blocks, amount) == items[index]["price"]
    for amount in amounts:
        if top is not None and amount > top:
            with pytest.raises(TariffError):
                block_price(blocks, amount)


@PROPERTY_SETTINGS
@given(ladders(), st.data())
def test_a_ladder_with_a_gap_or_an_overlap_is_refused(
    items: list[dict[str, Any]], data: st.DataObject
) -> None:
    assume(len(items) >= 2)
    index = data.draw(st.integers(1, len(items) - 1))
    delta = data.draw(st.integers(-(10**6), 10**6).filter(lambda d: d != 0))
    moved = items[index]["start_amount"] + delta
    assume(moved >= 0)
    broken = [*items[:index], {**items[index], "start_amount": moved}, *items[index + 1 :]]
    with pytest.raises(TariffError) as caught:
        validate_blocks(broken)
    assert caught.value.field.startswith(f"block.{index}.")


def test_periods_may_arrive_in_any_order() -> None:
    shuffled = list(SEED_TIMEOFUSE)
    random.Random(7).shuffle(shuffled)
    assert validate_timeofuse(shuffled) == validate_timeofuse(SEED_TIMEOFUSE)
