"""From interval energy to time buckets: each interval is spread linearly over the UTC buckets it overlaps.

Aggregation stores energy per 15-minute UTC bucket ("quarter"): every time zone in use today is offset from UTC
by a multiple of 15 minutes (Asia/Kolkata +05:30, Asia/Kathmandu +05:45, Pacific/Chatham +12:45), so a local
day, month or year is always a whole number of quarters and its energy is an exact sum of them. Hourly buckets
(``hourly_contributions``) remain for callers that want them.

Intervals are (start, end] in epoch milliseconds, as normalisation emits them (services/normalisation/energy.py).
Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from proto_schemas.quality import Quality

HOUR_MS = 3_600_000
QUARTER_MS = 900_000


def split_interval(
    start_ms: int, end_ms: int, energy: float, *, bucket_ms: int = HOUR_MS
) -> list[tuple[int, float]]:
    """Spread an interval's energy over the buckets it overlaps, assuming a constant rate.

    The interval is (start_ms, end_ms], so an interval ending exactly on a boundary belongs entirely to the
    bucket that ends there. Parts are proportional to the overlapping time; the last part takes the rounding
    remainder so that the parts add back up to ``energy``.
    """
    if start_ms >= end_ms:
        raise ValueError(f"interval must have start_ms < end_ms, got ({start_ms}, {end_ms}]")
    if bucket_ms <= 0:
        raise ValueError(f"bucket_ms must be positive, got {bucket_ms}")
    first = (start_ms // bucket_ms) * bucket_ms  # bucket whose (b, b + size] contains start_ms + epsilon
    last = ((end_ms - 1) // bucket_ms) * bucket_ms  # bucket whose (b, b + size] contains end_ms
    if first == last:
        return [(first, energy)]
    duration = end_ms - start_ms
    parts: list[tuple[int, float]] = []
    assigned = 0.0
    for bucket in range(first, last, bucket_ms):
        overlap = min(end_ms, bucket + bucket_ms) - max(start_ms, bucket)
        part = energy * overlap / duration
        parts.append((bucket, part))
        assigned += part
    parts.append((last, energy - assigned))
    return parts


def hourly_contributions(
    point_ids: Sequence[int],
    start_ms: Sequence[int],
    end_ms: Sequence[int],
    energy: Sequence[float],
    quality: Sequence[int],
) -> dict[tuple[int, int], tuple[float, int]]:
    """Per-point totals per UTC hour: ``bucket_contributions`` with one-hour buckets."""
    return bucket_contributions(point_ids, start_ms, end_ms, energy, quality, bucket_ms=HOUR_MS)


def quarter_contributions(
    point_ids: Sequence[int],
    start_ms: Sequence[int],
    end_ms: Sequence[int],
    energy: Sequence[float],
    quality: Sequence[int],
) -> dict[tuple[int, int], tuple[float, int]]:
    """Per-point totals per 15-minute UTC bucket: what aggregation stores."""
    return bucket_contributions(point_ids, start_ms, end_ms, energy, quality, bucket_ms=QUARTER_MS)


_KNOWN_CODES = frozenset(int(q) for q in Quality)


def bucket_contributions(
    point_ids: Sequence[int],
    start_ms: Sequence[int],
    end_ms: Sequence[int],
    energy: Sequence[float],
    quality: Sequence[int],
    *,
    bucket_ms: int,
) -> dict[tuple[int, int], tuple[float, int]]:
    """Fold a batch of intervals into per-point bucket totals, ready to be upserted in one statement.

    The arguments are columns of equal length (as they come out of a columnar batch). The result maps
    (point_id, bucket start ms) to (energy, worst quality code), so a bucket touched by a RESET interval
    stays marked even when most of its energy came from GOOD intervals.
    """
    n = len(point_ids)
    if not (len(start_ms) == len(end_ms) == len(energy) == len(quality) == n):
        raise ValueError(
            "columns must have equal length: "
            f"point_ids={n}, start_ms={len(start_ms)}, end_ms={len(end_ms)}, "
            f"energy={len(energy)}, quality={len(quality)}"
        )
    if bucket_ms <= 0:
        raise ValueError(f"bucket_ms must be positive, got {bucket_ms}")
    totals: dict[tuple[int, int], tuple[float, int]] = {}
    for point_id, start, end, value, code in zip(point_ids, start_ms, end_ms, energy, quality, strict=True):
        if code not in _KNOWN_CODES:
            raise ValueError(f"unknown quality code {code}")
        bucket = (start // bucket_ms) * bucket_ms
        if start < end and (end - 1) // bucket_ms * bucket_ms == bucket:
            # Fast path: the interval lies within one bucket (almost all of them).
            key = (point_id, bucket)
            known = totals.get(key)
            totals[key] = (value, code) if known is None else (known[0] + value, max(known[1], code))
            continue
        for bucket, part in split_interval(start, end, value, bucket_ms=bucket_ms):
            key = (point_id, bucket)
            known = totals.get(key)
            if known is None:
                totals[key] = (part, code)
            else:
                totals[key] = (known[0] + part, max(known[1], code))
    return totals


def quality_counts(
    point_ids: Sequence[int],
    start_ms: Sequence[int],
    end_ms: Sequence[int],
    energy: Sequence[float],
    quality: Sequence[int],
    *,
    bucket_ms: int = QUARTER_MS,
) -> dict[tuple[int, int, int], int]:
    """Net intervals per (point, bucket, quality): +1 for each interval added, -1 for each one withdrawn.

    Normalisation withdraws an interval a late reading split by sending it again with its energy negated
    (services/normalisation/energy.py), so the sign bit says which is which, even for an interval of zero
    energy (sent back as -0.0). A bucket's quality is then the worst quality whose net count is positive:
    an estimated interval withdrawn and replaced by good ones leaves the bucket good.
    """
    counts: dict[tuple[int, int, int], int] = {}
    for point_id, start, end, value, code in zip(point_ids, start_ms, end_ms, energy, quality, strict=True):
        sign = -1 if math.copysign(1.0, value) < 0 else 1
        first = (start // bucket_ms) * bucket_ms
        last = ((end - 1) // bucket_ms) * bucket_ms if end > start else first
        for bucket in range(first, last + bucket_ms, bucket_ms):
            key = (point_id, bucket, code)
            counts[key] = counts.get(key, 0) + sign
    return counts
