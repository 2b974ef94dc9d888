"""From cumulative register readings to interval energy.

Meters report a cumulative register (kWh since the meter was made, or since it was last reset). Reports need
energy per hour, so every pair of consecutive readings becomes an interval (prev.ts, cur.ts] carrying the
difference; aggregation (services/aggregation/hourly.py) then spreads each interval over the hours it overlaps.

Conventions, shared with the aggregation and reporting services:

* Timestamps are epoch milliseconds (UTC). Hour buckets are UTC hours identified by their start.
* Intervals are half-open on the left: (start, end]. A reading taken at exactly 11:00:00 closes an interval
  that belongs to the 10:00 bucket, because the energy it reports was consumed before 11:00.
* Values are already multiplied by the point's ratio (CT/VT factor); nothing here knows about units.

Everything in this module is pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proto_schemas.quality import Quality

HOUR_MS = 3_600_000
DEFAULT_MAX_GAP_MS = 15 * 60_000

#: Register sizes a counter can wrap around: binary counters and decimal mechanical/LCD registers.
REGISTER_MAXIMA: tuple[int, ...] = tuple(sorted({2**16, 2**32, 2**64, *(10**k for k in range(4, 13))}))

#: How close to the top (before) and to zero (after) a value must be for a decrease to count as a wrap.
ROLLOVER_BAND = 0.1


@dataclass(frozen=True, slots=True)
class EnergyInterval:
    """Energy consumed (or produced) between two readings: the interval is (start_ms, end_ms]."""

    start_ms: int
    end_ms: int
    energy: float
    quality: Quality


def sort_and_dedupe(readings: Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    """Bring raw readings into the strictly ascending order ``interval_energy`` needs.

    Devices resend and brokers redeliver, so the same timestamp can arrive more than once; the first
    occurrence wins because later copies are retransmissions, not corrections.
    """
    ordered = sorted(readings, key=lambda reading: reading[0])  # stable: equal ts keep arrival order
    result: list[tuple[int, float]] = []
    for ts, value in ordered:
        if result and result[-1][0] == ts:
            continue
        result.append((ts, value))
    return result


def rollover_maximum(previous_value: float, current_value: float) -> int | None:
    """The register size the counter most plausibly wrapped around, or None when the drop is a reset.

    A wrap is only believable when the register was close to its top and is now close to zero; any other
    decrease means the meter was replaced or reset, and counting the "missing" range would invent energy.
    The smallest plausible register wins because it implies the least energy.
    """
    for maximum in REGISTER_MAXIMA:
        top = float(maximum)
        if top * (1 - ROLLOVER_BAND) <= previous_value <= top and 0 <= current_value <= top * ROLLOVER_BAND:
            return maximum
    return None


def _step(previous: tuple[int, float], current: tuple[int, float], max_gap_ms: int) -> EnergyInterval:
    (prev_ts, prev_value), (cur_ts, cur_value) = previous, current
    quality = Quality.ESTIMATED if cur_ts - prev_ts > max_gap_ms else Quality.GOOD
    if cur_value >= prev_value:
        energy = cur_value - prev_value
    else:
        maximum = rollover_maximum(prev_value, cur_value)
        if maximum is not None:
            energy = (maximum - prev_value) + cur_value
            quality = Quality.worst(quality, Quality.ROLLOVER)
        else:
            energy = cur_value
            quality = Quality.worst(quality, Quality.RESET)
    return EnergyInterval(start_ms=prev_ts, end_ms=cur_ts, energy=energy, quality=quality)


def interval_energy(
    previous: tuple[int, float] | None,
    readings: Sequence[tuple[int, float]],
    *,
    max_gap_ms: int = DEFAULT_MAX_GAP_MS,
) -> list[EnergyInterval]:
    """Energy between consecutive readings, so that a batch can be processed without re-reading history.

    ``previous`` is the last reading already turned into energy (None for a brand-new point, whose first
    reading only establishes the baseline). A gap longer than ``max_gap_ms`` still counts its energy, marked
    ESTIMATED because the hourly split has to guess how it was distributed over the gap. A drop in the
    register is either a wrap (ROLLOVER, energy counted across the top) or a reset (RESET, energy counted
    from zero); when both a long gap and a drop apply, the worse quality wins.

    Raises ValueError when the timestamps are not strictly ascending (after ``previous``), when a value is
    not finite, or when ``max_gap_ms`` is not positive: silently reordering here would hide upstream bugs,
    use ``sort_and_dedupe`` first.
    """
    if max_gap_ms <= 0:
        raise ValueError(f"max_gap_ms must be positive, got {max_gap_ms}")
    intervals: list[EnergyInterval] = []
    last = previous
    if last is not None and not math.isfinite(last[1]):
        raise ValueError(f"previous reading has a non-finite value: {last!r}")
    for reading in readings:
        ts, value = reading
        if not math.isfinite(value):
            raise ValueError(f"reading at {ts} has a non-finite value: {value!r}")
        if last is not None:
            if ts <= last[0]:
                raise ValueError(f"readings must be strictly ascending: {ts} after {last[0]}")
            intervals.append(_step(last, reading, max_gap_ms))
        last = reading
    return intervals
