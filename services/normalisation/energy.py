"""From cumulative register readings to interval energy.

Meters report a cumulative register (kWh since the meter was made, or since it was last reset). Reports need
energy per hour, so every pair of consecutive readings becomes an interval (prev.ts, cur.ts] carrying the
difference; aggregation (services/aggregation/hourly.py) then spreads each interval over the hours it overlaps.

Conventions, shared with the aggregation and reporting services:

* Timestamps are epoch milliseconds (UTC). Hour buckets are UTC hours identified by their start.
* Intervals are half-open on the left: (start, end]. A reading taken at exactly 11:00:00 closes an interval
  that belongs to the 10:00 bucket, because the energy it reports was consumed before 11:00.
* Values are already multiplied by the point's ratio (CT/VT factor); nothing here knows about units.

When the register goes down, the interval is one of three things (``step_energy``):

* **rollover**: the register was near its top and is now near its bottom, so it wrapped. The energy runs
  across the top: ``(top - previous) + (current - bottom)``, quality ROLLOVER. The register's range comes from
  the point (``Register``: its Modbus data format or a configured maximum); when the point does not say, the
  smallest plausible size in ``REGISTER_MAXIMA`` is guessed.
* **reset**: the register dropped to near zero (at most ``RESET_BAND`` of the previous value): the counter was
  reset or the meter replaced by a new one starting at zero. The series restarts: the energy is the current
  value (what was consumed since the reset, never negative), quality RESET.
* **replaced**: any other drop (a replacement meter whose counter starts at an arbitrary value, or a register
  that went back a little). Nothing trustworthy can be said about the interval: its energy is 0, quality
  RESET, and the series continues from the new value. Counting the new value (as for a reset) would invent
  the replacement meter's whole history; counting the difference would be negative.

An interval whose energy implies more than the point's plausible maximum per hour is a **spike**
(``spike_reason``): the consumer holds it back instead of counting it.

Late readings (``point_changes``): a reading older than the latest one known splits the interval it falls
in. The intervals that no longer exist are withdrawn and the new ones added; the rest stay as they were, so
the energy sent downstream always adds up to the energy of the series as it is now known.

Everything in this module is pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proto_schemas.quality import Quality

HOUR_MS = 3_600_000
DEFAULT_MAX_GAP_MS = 15 * 60_000

#: Register sizes a counter can wrap around: binary counters and decimal mechanical/LCD registers.
REGISTER_MAXIMA: tuple[int, ...] = tuple(sorted({2**16, 2**32, 2**64, *(10**k for k in range(4, 13))}))

#: How close to the top (before) and to the bottom (after) a value must be for a decrease to count as a
#: wrap, as a fraction of the register's range.
ROLLOVER_BAND = 0.1

#: A decrease to at most this fraction of the previous value is a reset to zero (energy counted from zero);
#: a smaller decrease is a replaced meter (energy 0).
RESET_BAND = 0.1

#: Register formats (Modbus `data_format`) that wrap, as (bits, signed). Floats do not wrap.
INTEGER_FORMATS: dict[str, tuple[int, bool]] = {
    "uint16": (16, False), "int16": (16, True),
    "uint32": (32, False), "int32": (32, True),
    "uint64": (64, False), "int64": (64, True),
}  # fmt: skip

#: Spikes are judged over at least this long: a short interval between two readings of a coarse register
#: (1 kWh steps read every minute) can imply a huge momentary power without anything being wrong.
MIN_SPIKE_WINDOW_MS = HOUR_MS

# (ts_ms, value, quality code) of a stored reading
Reading = tuple[int, float, int]


@dataclass(frozen=True, slots=True)
class EnergyInterval:
    """Energy consumed (or produced) between two readings: the interval is (start_ms, end_ms]."""

    start_ms: int
    end_ms: int
    energy: float
    quality: Quality

    @property
    def key(self) -> tuple[int, int]:
        return (self.start_ms, self.end_ms)


@dataclass(frozen=True, slots=True)
class Register:
    """The range a counter register wraps in, in the point's unit (after its ratio): [bottom, top)."""

    bottom: float
    top: float

    @property
    def span(self) -> float:
        return self.top - self.bottom


def register_from_address(address: Mapping[str, Any] | None, ratio: float) -> Register | None:
    """The register range a point's address declares, scaled by its ratio; None when it does not say.

    ``address.max_value`` (a positive number: the raw value the register wraps to zero at, e.g. 100000 for
    a five-digit register, 65536 for 16 bits) wins over ``address.data_format`` (``format`` is accepted as
    its alias, as the registry's Modbus validator does): ``uint16`` wraps at 2^16, ``uint32`` at 2^32,
    ``uint64`` at 2^64, and the signed formats cover [-2^(n-1), 2^(n-1)). Floats, unknown formats and a
    ratio that is not a positive number give None: the caller then guesses from ``REGISTER_MAXIMA``.
    """
    if not address or not isinstance(ratio, int | float) or not math.isfinite(ratio) or ratio <= 0:
        return None
    max_value = address.get("max_value")
    if (
        isinstance(max_value, int | float)
        and not isinstance(max_value, bool)
        and math.isfinite(max_value)
        and max_value > 0
    ):
        return Register(0.0, float(max_value) * ratio)
    data_format = address.get("data_format", address.get("format"))
    if not isinstance(data_format, str) or data_format.lower() not in INTEGER_FORMATS:
        return None
    bits, signed = INTEGER_FORMATS[data_format.lower()]
    if signed:
        return Register(-float(2 ** (bits - 1)) * ratio, float(2 ** (bits - 1)) * ratio)
    return Register(0.0, float(2**bits) * ratio)


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
    """The register size the counter most plausibly wrapped around, or None when the drop is no wrap.

    Used when the point does not declare its register. A wrap is only believable when the register was
    close to its top and is now close to zero; any other decrease means the meter was replaced or reset,
    and counting the "missing" range would invent energy. The smallest plausible register wins because it
    implies the least energy.
    """
    for maximum in REGISTER_MAXIMA:
        top = float(maximum)
        if top * (1 - ROLLOVER_BAND) <= previous_value <= top and 0 <= current_value <= top * ROLLOVER_BAND:
            return maximum
    return None


def wrap_energy(
    previous_value: float, current_value: float, register: Register | None = None
) -> float | None:
    """The energy across a wrap of the register, or None when the decrease is not a wrap.

    With a known register only that register is considered (a declared uint32 does not wrap at 10^5);
    without one, the size is guessed (``rollover_maximum``).
    """
    if register is None:
        maximum = rollover_maximum(previous_value, current_value)
        return None if maximum is None else (maximum - previous_value) + current_value
    band = register.span * ROLLOVER_BAND
    if (
        register.top - band <= previous_value <= register.top
        and register.bottom <= current_value <= register.bottom + band
    ):
        return (register.top - previous_value) + (current_value - register.bottom)
    return None


def step_energy(
    previous_value: float, current_value: float, register: Register | None = None
) -> tuple[float, Quality]:
    """Energy between two consecutive register values, and GOOD, ROLLOVER or RESET (see the module doc)."""
    if current_value >= previous_value:
        return current_value - previous_value, Quality.GOOD
    wrapped = wrap_energy(previous_value, current_value, register)
    if wrapped is not None:
        return wrapped, Quality.ROLLOVER
    if 0 <= current_value <= RESET_BAND * previous_value:
        return current_value, Quality.RESET  # reset to zero: count what came after it
    return 0.0, Quality.RESET  # replaced meter (or a register that went back): restart from the new value


def _step(
    previous: tuple[int, float], current: tuple[int, float], max_gap_ms: int, register: Register | None
) -> EnergyInterval:
    (prev_ts, prev_value), (cur_ts, cur_value) = previous, current
    energy, quality = step_energy(prev_value, cur_value, register)
    if cur_ts - prev_ts > max_gap_ms and quality < Quality.ESTIMATED:
        quality = Quality.ESTIMATED
    return EnergyInterval(start_ms=prev_ts, end_ms=cur_ts, energy=energy, quality=quality)


def interval_energy(
    previous: tuple[int, float] | None,
    readings: Sequence[tuple[int, float]],
    *,
    max_gap_ms: int = DEFAULT_MAX_GAP_MS,
    register: Register | None = None,
) -> list[EnergyInterval]:
    """Energy between consecutive readings, so that a batch can be processed without re-reading history.

    ``previous`` is the last reading already turned into energy (None for a brand-new point, whose first
    reading only establishes the baseline). A gap longer than ``max_gap_ms`` still counts its energy, marked
    ESTIMATED because the hourly split has to guess how it was distributed over the gap. A drop in the
    register is a rollover, a reset or a replaced meter (``step_energy``, with the point's ``register`` when
    known); when both a long gap and a drop apply, the worse quality wins.

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
            intervals.append(_step(last, reading, max_gap_ms, register))
        last = reading
    return intervals


def series_intervals(
    previous: Reading | None,
    readings: Sequence[Reading],
    *,
    max_gap_ms: int = DEFAULT_MAX_GAP_MS,
    register: Register | None = None,
) -> list[EnergyInterval]:
    """``interval_energy`` over stored readings, each interval as bad as the worse of its two readings."""
    prev = (previous[0], previous[1]) if previous else None
    intervals = interval_energy(
        prev, [(ts, value) for ts, value, _ in readings], max_gap_ms=max_gap_ms, register=register
    )
    chain = ([previous] if previous else []) + list(readings)
    out: list[EnergyInterval] = []
    for i, iv in enumerate(intervals):
        worst = max(chain[i][2], chain[i + 1][2])
        out.append(
            iv if worst <= iv.quality else EnergyInterval(iv.start_ms, iv.end_ms, iv.energy, Quality(worst))
        )
    return out


@dataclass(frozen=True, slots=True)
class Changes:
    """What a batch of new readings of one point changes: intervals withdrawn, and intervals to send."""

    removed: list[EnergyInterval] = field(default_factory=list)
    added: list[EnergyInterval] = field(default_factory=list)


def late_bounds(previous: Reading | None, fresh: Sequence[Reading]) -> tuple[int, int] | None:
    """(first, last) timestamp of the fresh readings older than ``previous``; None when all are newer."""
    if previous is None:
        return None
    late = [ts for ts, _, _ in fresh if ts < previous[0]]
    return (min(late), max(late)) if late else None


def select_window(stored: Sequence[Reading], first_late_ms: int, last_late_ms: int) -> list[Reading]:
    """The stored readings late readings can change intervals of (the consumer's `_WINDOW` query).

    From the last reading before ``first_late_ms`` (or that one itself when none is older) to the first
    reading after ``last_late_ms`` (or that one itself when none is newer). ``stored`` is sorted by time and
    holds the late readings already.
    """
    times = [ts for ts, _, _ in stored]
    low = bisect.bisect_left(times, first_late_ms)
    high = bisect.bisect_right(times, last_late_ms)
    return list(stored[max(low - 1, 0) : min(high + 1, len(stored))])


def point_changes(
    previous: Reading | None,
    fresh: Sequence[Reading],
    window: Sequence[Reading] = (),
    *,
    max_gap_ms: int = DEFAULT_MAX_GAP_MS,
    register: Register | None = None,
) -> Changes:
    """The intervals new readings of one point withdraw and add.

    ``previous`` is the latest reading stored before them (None for a new point), ``fresh`` the new
    readings (sorted, none at ``previous``'s time) and, when some are older than ``previous``
    (``late_bounds``), ``window`` the stored readings around them (``select_window``, late ones included).
    Readings newer than ``previous`` simply continue the series. Late ones split intervals: those of the
    window as it was (without the late readings) that are not in the window as it is now are withdrawn,
    the new ones added; intervals present in both are left alone.
    """
    if previous is None or fresh[0][0] > previous[0]:
        return Changes([], series_intervals(previous, fresh, max_gap_ms=max_gap_ms, register=register))
    late_ts = {ts for ts, _, _ in fresh if ts < previous[0]}
    in_order = [reading for reading in fresh if reading[0] > previous[0]]
    before = [reading for reading in window if reading[0] not in late_ts]
    old = series_intervals(None, before, max_gap_ms=max_gap_ms, register=register)
    new = series_intervals(None, window, max_gap_ms=max_gap_ms, register=register)
    old_keys = {iv.key for iv in old}
    new_keys = {iv.key for iv in new}
    removed = [iv for iv in old if iv.key not in new_keys]
    added = [iv for iv in new if iv.key not in old_keys]
    added += series_intervals(previous, in_order, max_gap_ms=max_gap_ms, register=register)
    return Changes(removed, added)


def spike_bound(max_per_hour: float | None) -> float | None:
    """The bound ``spike_reason`` applies: ``max_per_hour`` when a positive number, else None (no bound)."""
    if max_per_hour is None or not math.isfinite(max_per_hour) or max_per_hour <= 0:
        return None
    return max_per_hour


def spike_reason(interval: EnergyInterval, max_per_hour: float | None) -> str | None:
    """Why an interval's energy is implausible, or None when it is plausible (or nothing bounds it).

    ``max_per_hour`` is the most energy the point can deliver in an hour (its ``higher_limit``); a bound that
    is not a positive number bounds nothing. An interval may carry up to that much per hour it lasts, and
    never less than one hour's worth (``MIN_SPIKE_WINDOW_MS``).
    """
    bound = spike_bound(max_per_hour)
    if bound is None:
        return None
    duration_ms = interval.end_ms - interval.start_ms
    allowed = bound * max(duration_ms, MIN_SPIKE_WINDOW_MS) / HOUR_MS
    if interval.energy <= allowed:
        return None
    return (
        f"energy {interval.energy:g} over {duration_ms / HOUR_MS:g} h is more than {allowed:g}"
        f" (at most {bound:g} per hour)"
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do about one point's ``Changes``: intervals to send, and spikes to hold."""

    send: list[EnergyInterval] = field(default_factory=list)
    hold: list[tuple[EnergyInterval, str]] = field(default_factory=list)  # (interval as computed, reason)


def settle(
    changes: Changes,
    held: Mapping[tuple[int, int], tuple[float, str]] | None = None,
    max_per_hour: float | None = None,
) -> Outcome:
    """Turn a point's changes into what goes downstream, holding spikes back.

    ``held`` maps the (start, end) of withdrawn intervals that were held to (held energy, status), status
    ``held`` or ``confirmed``. A withdrawn interval is cancelled by the negation of what was sent for it: its
    energy when it went as is; nothing when it is held (it went as 0); the confirmed energy (MANUAL) when it
    was held and confirmed since. An added interval that is a spike (``spike_reason``) goes as energy 0,
    quality SUSPECT, and is returned in ``hold`` with its energy; the others go as they are.
    """
    if not changes.removed and spike_bound(max_per_hour) is None:
        return Outcome(list(changes.added), [])  # the usual case: readings in order, nothing bounds them
    held = held or {}
    send: list[EnergyInterval] = []
    hold: list[tuple[EnergyInterval, str]] = []
    for iv in changes.removed:
        found = held.get(iv.key)
        if found is None:
            send.append(EnergyInterval(iv.start_ms, iv.end_ms, -iv.energy, iv.quality))
        elif found[1] == "confirmed":
            send.append(EnergyInterval(iv.start_ms, iv.end_ms, -found[0], Quality.MANUAL))
    for iv in changes.added:
        reason = spike_reason(iv, max_per_hour)
        if reason is None:
            send.append(iv)
        else:
            hold.append((iv, reason))
            send.append(EnergyInterval(iv.start_ms, iv.end_ms, 0.0, Quality.SUSPECT))
    return Outcome(send, hold)
