"""Setpoints against device-group capacities, and the lifetime of a policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.command.limits import setpoint_problems, valid_until

BATTERY = {"max_charge_w": 5000, "max_discharge_w": 4000, "capacity_wh": 10000}
AT = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize("power", [5000, 0, -4000, 1234.5])
def test_battery_power_within_the_charge_and_discharge_limits_is_accepted(power: float) -> None:
    assert setpoint_problems("battery", {"power_w": power}, BATTERY) == []


def test_battery_power_beyond_a_limit_is_refused_with_the_limit() -> None:
    assert setpoint_problems("battery", {"power_w": 5001}, BATTERY) == [
        "battery power_w 5001 W exceeds the charge limit 5000 W"
    ]
    assert "discharge limit 4000 W" in setpoint_problems("battery", {"power_w": -12000}, BATTERY)[0]


def test_a_group_the_installation_lacks_or_a_wrong_shape_is_refused() -> None:
    assert setpoint_problems("ev", {"power_w": 1}, None) == ["the installation has no ev group"]
    assert setpoint_problems("battery", {"watts": 1}, BATTERY) == ["a battery setpoint needs 'power_w'"]
    assert setpoint_problems("solar", {"max_power_w": -1}, {"max_power_w": 6000}) != []
    assert setpoint_problems("hvac", {"setpoint_c": 20}, {}) != []  # mode is required


def test_solar_ev_and_hvac_bounds() -> None:
    assert setpoint_problems("solar", {"max_power_w": 6000}, {"max_power_w": 6000}) == []
    assert setpoint_problems("solar", {"max_power_w": 6001}, {"max_power_w": 6000}) != []
    assert setpoint_problems("ev", {"power_w": 11000}, {"max_power_w": 11000}) == []
    assert setpoint_problems("ev", {"power_w": 11001}, {"max_power_w": 11000}) != []
    assert setpoint_problems("ev", {"power_w": 50000}, {}) == []  # no limit known
    assert setpoint_problems("hvac", {"mode": "heat", "setpoint_c": 20.5}, {"max_power_w": 2500}) == []
    assert setpoint_problems("hvac", {"mode": "heat", "setpoint_c": 60}, {}) != []
    assert setpoint_problems("hvac", {"mode": "cool", "max_power_w": 3000}, {"max_power_w": 2500}) != []


def test_a_policy_lives_one_second_to_a_day() -> None:
    assert valid_until(1, None, AT) == AT + timedelta(seconds=1)
    assert valid_until(None, AT + timedelta(hours=24), AT) == AT + timedelta(hours=24)
    for ttl in (0, 86401):
        with pytest.raises(ValueError):
            valid_until(ttl, None, AT)
    for until in (AT, AT - timedelta(seconds=1), AT + timedelta(hours=24, seconds=1)):
        with pytest.raises(ValueError):
            valid_until(None, until, AT)
    with pytest.raises(ValueError, match="exactly one"):
        valid_until(10, AT + timedelta(hours=1), AT)
    with pytest.raises(ValueError, match="exactly one"):
        valid_until(None, None, AT)


def test_the_operator_outranks_a_provider_which_outranks_a_user() -> None:
    from services.command.common import priority_of

    assert priority_of("operator") > priority_of("provider:12") > priority_of("user:6e0f9a52")
