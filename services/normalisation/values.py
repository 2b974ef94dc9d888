"""What a point's registry settings mean for its readings: scaled value, quality, register, spike bound.

Pure: no I/O. Works on `services.registry.client.PointInfo` (or anything with the same attributes).
"""

from __future__ import annotations

import math
from typing import Any

from proto_schemas.quality import Quality
from services.normalisation.energy import Register, register_from_address
from services.registry.client import PointInfo


def classify(info: PointInfo, value: float) -> Quality:
    """SUSPECT outside the point's [low_limit, high_limit]; GOOD otherwise."""
    if info.low_limit is not None and value < info.low_limit:
        return Quality.SUSPECT
    if info.high_limit is not None and value > info.high_limit:
        return Quality.SUSPECT
    return Quality.GOOD


def normalise_value(info: PointInfo | None, raw: float) -> tuple[float, Quality]:
    """A raw reading as stored: in the point's unit, with its quality.

    * unknown point (deleted between ingestion and here): kept as it came, SUSPECT, rather than lost;
    * DIGITAL_VALUE: a state, 0 or 1 (anything non-zero is 1); a raw value other than 0 or 1 is SUSPECT;
      neither ratio nor limits apply;
    * anything else: raw x ratio, SUSPECT outside the point's [low_limit, high_limit].
    """
    if info is None:
        return raw, Quality.SUSPECT
    if info.object_type == "DIGITAL_VALUE":
        state = 0.0 if raw == 0 else 1.0
        return state, Quality.GOOD if raw in (0.0, 1.0) else Quality.SUSPECT
    value = raw * info.ratio
    return value, classify(info, value)


def point_address(info: PointInfo) -> dict[str, Any]:
    """The point's address, once the registry sends it (`PointInfo.address`); empty until then."""
    address = getattr(info, "address", None)
    return address if isinstance(address, dict) else {}


def point_register(info: PointInfo) -> Register | None:
    """The register an energy point counts in (from its address), or None to guess it."""
    return register_from_address(point_address(info), info.ratio)


def max_energy_per_hour(info: PointInfo) -> float | None:
    """The most energy per hour the point plausibly delivers: its `higher_limit` when that is positive."""
    limit = info.higher_limit
    if limit is None or not math.isfinite(limit) or limit <= 0:
        return None
    return float(limit)
