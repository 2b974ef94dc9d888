"""Cost of energy per quarter from a cost center's tariffs. Pure: no I/O, no clock.

A source (meter, virtual or offline meter) is priced with the tariffs its cost center has for its energy
category; at any instant at most one applies (the registry refuses overlapping validity in one cost center).

* **Time of use**: the price of the period (``services/registry/tariffs.py``: seconds of the local day,
  ``[start, end)``) covering each moment, in the source's local time. A quarter that straddles a period
  boundary or the edge of a tariff's validity is split by time, its energy spread evenly over it, so a tariff
  that changes on the 15th prices the 14th with the old one and the 15th with the new one.
* **Block**: the energy is cumulated per billing period, the local calendar month (only the energy that tariff
  prices counts), and each part of it is priced by the block it falls in: a quarter whose energy crosses a
  block boundary pays the lower price for the part below and the higher one for the part above. Energy beyond
  a bounded last block pays the last block's price. A negative correction takes its energy back from the top.

A quarter no tariff covers has no cost (not zero: nothing is silently zeroed); a quarter partly covered costs
what its covered part costs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from services.registry.tariffs import Block, Period

QUARTER_MS = 900_000


@dataclass(frozen=True)
class Tariff:
    id: int
    energy_category_id: int
    valid_from_ms: int
    valid_through_ms: int  # exclusive
    periods: tuple[Period, ...] = ()
    blocks: tuple[Block, ...] = ()

    @property
    def is_block(self) -> bool:
        return bool(self.blocks)


def _ms(value: str) -> int:
    return int(datetime.fromisoformat(value).timestamp() * 1000)


def tariff_from_model(row: Mapping[str, Any]) -> Tariff:
    """A tariff as the registry's read model describes it (services/registry/api/aggregation_internal.py)."""
    periods = tuple(
        Period(int(p["start_second"]), int(p["end_second"]), str(p["peak_type"]), Decimal(str(p["price"])))
        for p in row.get("timeofuse") or ()
    )
    blocks = tuple(
        Block(
            Decimal(str(b["start_amount"])),
            None if b.get("end_amount") is None else Decimal(str(b["end_amount"])),
            Decimal(str(b["price"])),
        )
        for b in row.get("block") or ()
    )
    if row.get("tariff_type") == "block":
        periods = ()
    else:
        blocks = ()
    return Tariff(
        int(row["id"]),
        int(row["energy_category_id"]),
        _ms(str(row["valid_from"])),
        _ms(str(row["valid_through"])),
        periods,
        blocks,
    )


def block_cost(blocks: Sequence[Block], before: float, energy: float) -> float:
    """Cost of ``energy`` added to a billing period that already had ``before``, block by block."""
    if energy < 0:
        low = max(before + energy, 0.0)
        return -block_cost(blocks, low, before - low)
    total = 0.0
    lo, hi = before, before + energy
    for index, block in enumerate(blocks):
        start = float(block.start_amount)
        last = index == len(blocks) - 1
        end = float("inf") if block.end_amount is None or last else float(block.end_amount)
        overlap = min(hi, end) - max(lo, start)
        if overlap > 0:
            total += overlap * float(block.price)
    return total


@dataclass(frozen=True)
class Piece:
    """A part of a quarter priced one way: [start_ms, end_ms), its energy, its cost, the tariff used."""

    start_ms: int
    end_ms: int
    energy: float
    cost: float
    tariff_id: int


def _second_of_day(ms: int, tz: ZoneInfo) -> int:
    local = datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz)
    return local.hour * 3600 + local.minute * 60 + local.second


def _billing_period(ms: int, tz: ZoneInfo) -> tuple[int, int]:
    local = datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz)
    return local.year, local.month


def price_quarters(
    quarters: Iterable[tuple[int, float]],
    tariffs: Sequence[Tariff],
    tz: ZoneInfo,
    cumulated: Mapping[tuple[int, tuple[int, int]], float] | None = None,
) -> tuple[dict[int, float], list[Piece]]:
    """Cost per quarter start (epoch ms) of (quarter start, energy) pairs, and the pieces behind it.

    Quarters are priced in time order. ``cumulated`` gives the block energy already counted in a billing
    period before the first quarter given, keyed by (tariff id, (local year, month)).
    """
    running: dict[tuple[int, tuple[int, int]], float] = dict(cumulated or {})
    costs: dict[int, float] = {}
    pieces: list[Piece] = []
    ordered = sorted(tariffs, key=lambda t: t.valid_from_ms)
    for quarter, energy in sorted(quarters):
        end = quarter + QUARTER_MS
        for tariff in ordered:
            lo, hi = max(quarter, tariff.valid_from_ms), min(end, tariff.valid_through_ms)
            if lo >= hi:
                continue
            cuts = {lo, hi}
            if tariff.periods:
                offset = _second_of_day(quarter, tz)
                for period in tariff.periods:
                    for edge in (period.start, period.end):
                        at = quarter + (edge - offset) * 1000
                        if lo < at < hi:
                            cuts.add(at)
            bounds = sorted(cuts)
            for a, b in itertools.pairwise(bounds):
                part = energy * (b - a) / QUARTER_MS
                if tariff.is_block:
                    key = (tariff.id, _billing_period(a, tz))
                    before = running.get(key, 0.0)
                    cost = block_cost(tariff.blocks, before, part)
                    running[key] = before + part
                else:
                    second = (_second_of_day(quarter, tz) + (a - quarter) // 1000) % 86_400
                    price = next((p.price for p in tariff.periods if p.covers(second)), None)
                    if price is None:
                        continue
                    cost = part * float(price)
                pieces.append(Piece(a, b, part, cost, tariff.id))
                costs[quarter] = costs.get(quarter, 0.0) + cost
    return costs, pieces
