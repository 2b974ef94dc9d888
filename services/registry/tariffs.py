"""Tariff rules (MyEMS): time-of-use periods that tile the day, block ladders, and price lookup. No I/O.

A time-of-use tariff is a list of periods, each `start_time_of_day`..`end_time_of_day` with a `peak_type` and a
`price`. MyEMS writes ends inclusively (`05:59:59` is the last second of a period that stops at 06:00:00); people
also write them exclusively (`06:00:00`). Both are accepted: an end whose seconds are 59 is inclusive, any other end
is exclusive, and `24:00:00` or `00:00:00` as an end mean midnight at the end of the day. Internally every period is
a half-open range of seconds `[start, end)` within one day (periods do not wrap past midnight), and together they
must cover the day exactly once.

A block tariff is a ladder of amounts: the first block starts at 0, each block starts where the previous one ended,
and only the last may be open-ended (`end_amount` null).

Errors are `TariffError`s whose `field` names the offending part the way request bodies spell it
(`timeofuse.2.end_time_of_day`, `block.1.start_amount`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "PEAK_TYPES",
    "SECONDS_PER_DAY",
    "TARIFF_TYPES",
    "Block",
    "Period",
    "TariffError",
    "block_at",
    "block_price",
    "format_end",
    "format_start",
    "parse_time_of_day",
    "period_at",
    "price_at",
    "validate_blocks",
    "validate_timeofuse",
]

SECONDS_PER_DAY = 86_400
PEAK_TYPES = ("toppeak", "onpeak", "midpeak", "offpeak")
TARIFF_TYPES = ("timeofuse", "block")

_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


class TariffError(ValueError):
    """A tariff that cannot be used. `field` names the offending part, `message` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Period:
    """One time-of-use period: seconds `[start, end)` of the local day."""

    start: int
    end: int
    peak_type: str
    price: Decimal

    @property
    def start_time_of_day(self) -> str:
        return format_start(self.start)

    @property
    def end_time_of_day(self) -> str:
        return format_end(self.end)

    def covers(self, second: int) -> bool:
        return self.start <= second < self.end


@dataclass(frozen=True)
class Block:
    """One rung of a block tariff: amounts `[start_amount, end_amount)`; `end_amount` None is unbounded."""

    start_amount: Decimal
    end_amount: Decimal | None
    price: Decimal


# -- times of day -------------------------------------------------------------------------------------


def parse_time_of_day(value: object, *, end: bool = False, field: str = "time_of_day") -> int:
    """Seconds since midnight of `HH:MM:SS` (or `HH:MM`).

    As an `end`, a time whose seconds are 59 is inclusive (MyEMS: `05:59:59` -> 21600), and `24:00:00` or
    `00:00:00` mean the end of the day (86400).
    """
    if isinstance(value, time):
        hours, minutes, seconds, explicit = value.hour, value.minute, value.second, True
    else:
        match = _TIME.match(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise TariffError(field, f"{value!r} is not a time of day; write HH:MM:SS, e.g. 05:59:59")
        hours, minutes = int(match.group(1)), int(match.group(2))
        explicit = match.group(3) is not None
        seconds = int(match.group(3) or 0)
    if minutes > 59 or seconds > 59:
        raise TariffError(field, f"{value} is not a time of day: minutes and seconds run to 59")
    total = hours * 3600 + minutes * 60 + seconds
    if not end:
        if total >= SECONDS_PER_DAY:
            raise TariffError(field, f"{value} is not a time of day: a period starts before 24:00:00")
        return total
    if total == 0 or total == SECONDS_PER_DAY:
        return SECONDS_PER_DAY
    if total > SECONDS_PER_DAY:
        raise TariffError(field, f"{value} is after the end of the day (24:00:00)")
    return total + 1 if explicit and seconds == 59 else total


def format_start(second: int) -> str:
    """`HH:MM:SS` of a start second."""
    return f"{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"


def format_end(second: int) -> str:
    """An end second as MyEMS writes it: inclusive on whole minutes (`06:00:00` -> `05:59:59`).

    An end off the minute is written exclusively; `parse_time_of_day(format_end(s), end=True) == s`.
    """
    return format_start(second - 1 if second % 60 == 0 else second)


# -- numbers ------------------------------------------------------------------------------------------


def _decimal(value: Any, field: str, *, allow_none: bool = False) -> Decimal | None:
    """MyEMS sends amounts and prices as numbers or strings ("0.567")."""
    if value is None or (allow_none and value == ""):
        if allow_none:
            return None
        raise TariffError(field, "a number is required")
    if isinstance(value, bool):
        raise TariffError(field, "must be a number")
    try:
        number = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise TariffError(field, f"{value!r} is not a number") from exc
    if not number.is_finite():
        raise TariffError(field, "must be a finite number")
    if number < 0:
        raise TariffError(field, f"must not be negative (got {number})")
    return number


def _item(items: Sequence[Any], index: int, prefix: str) -> Mapping[str, Any]:
    item = items[index]
    if isinstance(item, Mapping):
        return item
    fields = getattr(item, "__dict__", None)  # a pydantic model or a dataclass
    if isinstance(fields, dict):
        return fields
    raise TariffError(f"{prefix}.{index}", "must be an object")


# -- time of use --------------------------------------------------------------------------------------


def validate_timeofuse(items: Sequence[Any]) -> list[Period]:
    """Periods that cover the whole day exactly once, sorted by start; else a `TariffError` naming the period.

    Each item is a mapping (or model) with `start_time_of_day`, `end_time_of_day`, `peak_type` and `price`.
    """
    if not items:
        raise TariffError("timeofuse", "a time-of-use tariff needs periods covering the whole day")
    periods: list[tuple[int, Period]] = []
    for index in range(len(items)):
        item = _item(items, index, "timeofuse")
        where = f"timeofuse.{index}"
        start = parse_time_of_day(item.get("start_time_of_day"), field=f"{where}.start_time_of_day")
        end = parse_time_of_day(item.get("end_time_of_day"), end=True, field=f"{where}.end_time_of_day")
        if end <= start:
            raise TariffError(
                f"{where}.end_time_of_day",
                f"the period must end after it starts ({format_start(start)}); periods do not wrap past"
                " midnight, so split one at 00:00:00",
            )
        peak_type = item.get("peak_type")
        if peak_type not in PEAK_TYPES:
            raise TariffError(f"{where}.peak_type", f"peak_type must be one of {', '.join(PEAK_TYPES)}")
        price = _decimal(item.get("price"), f"{where}.price")
        assert price is not None
        periods.append((index, Period(start, end, str(peak_type), price)))

    ordered = sorted(periods, key=lambda pair: (pair[1].start, pair[0]))
    reached, owner = 0, -1  # the day is covered up to `reached`, by period `owner` last
    for index, period in ordered:
        if period.start > reached:
            raise TariffError(
                f"timeofuse.{index}.start_time_of_day",
                f"nothing covers {format_start(reached)}-{format_start(period.start)}",
            )
        if period.start < reached:
            first, second = sorted((owner, index))
            raise TariffError(
                f"timeofuse.{index}.start_time_of_day",
                f"periods {first} and {second} overlap from {format_start(period.start)}"
                f" to {format_start(min(reached, period.end))}",
            )
        reached, owner = period.end, index
    if reached < SECONDS_PER_DAY:
        raise TariffError(
            f"timeofuse.{owner}.end_time_of_day",
            f"nothing covers {format_start(reached)}-{format_start(SECONDS_PER_DAY)}",
        )
    return [period for _, period in ordered]


def _second_of_day(local_time: time | datetime | int) -> int:
    if isinstance(local_time, datetime):
        local_time = local_time.time()
    if isinstance(local_time, time):
        return local_time.hour * 3600 + local_time.minute * 60 + local_time.second
    if not 0 <= local_time < SECONDS_PER_DAY:
        raise TariffError("local_time", f"{local_time} is not a second of the day")
    return local_time


def period_at(tariff: Sequence[Period], local_time: time | datetime | int) -> Period:
    """The period covering a local time of day (a `time`, a local `datetime` or seconds since midnight)."""
    second = _second_of_day(local_time)
    for period in tariff:
        if period.covers(second):
            return period
    raise TariffError("timeofuse", f"nothing covers {format_start(second)}")


def price_at(tariff: Sequence[Period], local_time: time | datetime | int) -> Decimal:
    """The price in force at a local time of day."""
    return period_at(tariff, local_time).price


# -- blocks -------------------------------------------------------------------------------------------


def validate_blocks(items: Sequence[Any]) -> list[Block]:
    """A contiguous ladder from 0, in the order given; else a `TariffError` naming the block.

    Each item is a mapping (or model) with `start_amount`, `end_amount` (null on the last: unbounded) and `price`.
    """
    if not items:
        raise TariffError("block", "a block tariff needs at least one block, starting at 0")
    blocks: list[Block] = []
    for index in range(len(items)):
        item = _item(items, index, "block")
        where = f"block.{index}"
        start = _decimal(item.get("start_amount"), f"{where}.start_amount")
        end = _decimal(item.get("end_amount"), f"{where}.end_amount", allow_none=True)
        price = _decimal(item.get("price"), f"{where}.price")
        assert start is not None and price is not None
        if index == 0 and start != 0:
            raise TariffError(f"{where}.start_amount", f"the first block must start at 0, not {start}")
        if blocks:
            previous = blocks[-1].end_amount
            if start != previous:
                how = "leaving a gap" if previous is not None and start > previous else "overlapping it"
                raise TariffError(
                    f"{where}.start_amount",
                    f"block {index} starts at {start} but block {index - 1} ends at {previous}: {how}",
                )
        if end is None and index != len(items) - 1:
            raise TariffError(f"{where}.end_amount", "only the last block may be open-ended (null)")
        if end is not None and end <= start:
            raise TariffError(f"{where}.end_amount", f"must be above start_amount {start} (got {end})")
        blocks.append(Block(start, end, price))
    return blocks


def block_at(blocks: Sequence[Block], amount: Decimal | float | int) -> Block:
    """The block an amount falls in: `[start, end)`, the last bounded block including its end."""
    value = Decimal(str(amount)) if not isinstance(amount, Decimal) else amount
    if not value.is_finite() or value < 0:
        raise TariffError("amount", f"{amount} is not an amount (a finite number >= 0)")
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1
        below_end = (
            block.end_amount is None or value < block.end_amount or (last and value == block.end_amount)
        )
        if block.start_amount <= value and below_end:
            return block
    top = blocks[-1].end_amount if blocks else None
    raise TariffError("amount", f"{amount} lies beyond the last block (which ends at {top})")


def block_price(blocks: Sequence[Block], amount: Decimal | float | int) -> Decimal:
    """The price of the block an amount falls in."""
    return block_at(blocks, amount).price
