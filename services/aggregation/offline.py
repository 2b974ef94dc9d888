"""Offline meters: period totals typed in or uploaded (registry `offline_meter_values`) become quarters.

Each period's total is spread evenly (by time) over the 15-minute UTC buckets of [start, end), with quality
MANUAL. Periods of one offline meter that overlap add up. Pure functions only: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.aggregation.hourly import QUARTER_MS, split_interval


def spread_periods(periods: Iterable[tuple[int, int, float]]) -> dict[int, float]:
    """Energy per quarter start (epoch ms) of periods given as (start ms, end ms, total)."""
    totals: dict[int, float] = {}
    for start, end, value in periods:
        if end <= start:
            continue  # the registry refuses these; never divide by a non-positive duration
        for quarter, part in split_interval(start, end, value, bucket_ms=QUARTER_MS):
            totals[quarter] = totals.get(quarter, 0.0) + part
    return totals
