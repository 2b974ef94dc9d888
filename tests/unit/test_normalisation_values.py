"""What a point's registry settings do to its readings (services/normalisation/values.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from proto_schemas.quality import Quality
from services.normalisation.energy import Register
from services.normalisation.values import (
    classify,
    max_energy_per_hour,
    normalise_value,
    point_address,
    point_register,
)
from services.registry.client import PointInfo


def point(object_type: str = "ANALOG_VALUE", **changes: Any) -> PointInfo:
    fields: dict[str, Any] = {
        "id": 1,
        "gateway_uuid": "g",
        "object_type": object_type,
        "ratio": 1.0,
        "high_limit": None,
        "low_limit": None,
        "higher_limit": None,
        "lower_limit": None,
        "is_trend": True,
        "is_virtual": False,
    }
    fields.update(changes)
    return PointInfo(**fields)


@dataclass(frozen=True)
class PointWithAddress:
    """PointInfo as it is once the registry sends `address` too."""

    id: int = 1
    object_type: str = "ENERGY_VALUE"
    ratio: float = 1.0
    higher_limit: float | None = None
    address: dict[str, Any] = field(default_factory=dict)


def test_analog_value_is_scaled_and_checked_against_its_limits() -> None:
    info = point(ratio=0.5, low_limit=0.0, high_limit=100.0)
    assert normalise_value(info, 100.0) == (50.0, Quality.GOOD)
    assert normalise_value(info, 200.0) == (100.0, Quality.GOOD)  # the limits apply after the ratio
    assert normalise_value(info, 202.0) == (101.0, Quality.SUSPECT)
    assert normalise_value(info, -2.0) == (-1.0, Quality.SUSPECT)
    assert classify(info, 100.5) is Quality.SUSPECT


def test_a_reading_of_an_unknown_point_is_kept_as_it_came_and_suspect() -> None:
    assert normalise_value(None, 42.5) == (42.5, Quality.SUSPECT)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (0.0, (0.0, Quality.GOOD)),
        (1.0, (1.0, Quality.GOOD)),
        (-0.0, (0.0, Quality.GOOD)),
        (2.0, (1.0, Quality.SUSPECT)),
        (-1.0, (1.0, Quality.SUSPECT)),
        (0.5, (1.0, Quality.SUSPECT)),
        (math.nan, (1.0, Quality.SUSPECT)),
    ],
)
def test_digital_value_is_stored_as_0_or_1(raw: float, expected: tuple[float, Quality]) -> None:
    # Neither the ratio nor the limits apply to a state.
    info = point("DIGITAL_VALUE", ratio=10.0, high_limit=0.5)
    assert normalise_value(info, raw) == expected


def test_register_from_the_point_address_once_the_registry_sends_it() -> None:
    assert point_address(point("ENERGY_VALUE")) == {}  # PointInfo without `address` yet
    assert point_register(point("ENERGY_VALUE")) is None
    with_format = PointWithAddress(ratio=0.1, address={"data_format": "uint16"})
    assert point_register(with_format) == Register(0.0, 65_536 * 0.1)  # type: ignore[arg-type]
    with_max = PointWithAddress(address={"data_format": "uint32", "max_value": 100_000})
    assert point_register(with_max) == Register(0.0, 100_000.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "higher_limit, expected", [(None, None), (50.0, 50.0), (0.0, None), (-1.0, None), (math.inf, None)]
)
def test_max_energy_per_hour_is_the_higher_limit(higher_limit: float | None, expected: float | None) -> None:
    assert max_energy_per_hour(point("ENERGY_VALUE", higher_limit=higher_limit)) == expected
