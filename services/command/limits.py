"""Setpoints checked against what an installation's device groups can do (CONTRACTS.md §1, §3).

The shape per group comes from the contract (`proto_schemas.control.check_setpoint`); the bounds come from the
device group as the registry holds it:

| group   | setpoint      | allowed                                                                     |
|---------|---------------|-----------------------------------------------------------------------------|
| battery | `power_w`     | from `-max_discharge_w` (discharging) to `max_charge_w` (charging)          |
| solar   | `max_power_w` | from 0 to the group's `max_power_w` (peak power)                            |
| ev      | `power_w`     | from 0 to the group's `max_power_w` (else `max_charge_w`) when one is known |
| hvac    | `max_power_w` | up to the group's `max_power_w` when one is known; `setpoint_c` 5 to 35 °C  |

Time limits of a request: `ttl_s` from 1 s to 24 h, or a `valid_until` within the same window.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from proto_schemas.control import check_setpoint

MIN_TTL_S = 1
MAX_TTL_S = 24 * 3600
HVAC_MIN_C, HVAC_MAX_C = 5.0, 35.0
# How far ahead a schedule may reach, and how many intervals one plan may hold.
MAX_SCHEDULE_AHEAD = timedelta(days=31)
MAX_INTERVALS = 2000


def _watts(value: Any) -> str:
    number = float(value)
    return f"{int(number)} W" if number.is_integer() else f"{number:g} W"


def setpoint_problems(group: str, setpoint: dict[str, Any], capacity: dict[str, Any] | None) -> list[str]:
    """Why this setpoint cannot be sent to this group (empty when it can). `capacity` is the registry's device
    group (None: the installation has no such group)."""
    if capacity is None:
        return [f"the installation has no {group} group"]
    try:
        check_setpoint(group, setpoint)
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    if group == "battery":
        power = setpoint["power_w"]
        charge, discharge = capacity.get("max_charge_w"), capacity.get("max_discharge_w")
        if charge is not None and power > charge:
            problems.append(f"battery power_w {_watts(power)} exceeds the charge limit {_watts(charge)}")
        if discharge is not None and power < -discharge:
            problems.append(
                f"battery power_w {_watts(power)} exceeds the discharge limit {_watts(discharge)}"
                " (negative power discharges)"
            )
    elif group == "solar":
        peak = capacity.get("max_power_w")
        if peak is not None and setpoint["max_power_w"] > peak:
            problems.append(
                f"solar max_power_w {_watts(setpoint['max_power_w'])} exceeds the peak power {_watts(peak)}"
            )
    elif group == "ev":
        limit = capacity.get("max_power_w") or capacity.get("max_charge_w")
        if limit is not None and setpoint["power_w"] > limit:
            problems.append(
                f"ev power_w {_watts(setpoint['power_w'])} exceeds the charging limit {_watts(limit)}"
            )
    elif group == "hvac":
        limit = capacity.get("max_power_w")
        if limit is not None and setpoint.get("max_power_w") is not None and setpoint["max_power_w"] > limit:
            problems.append(
                f"hvac max_power_w {_watts(setpoint['max_power_w'])} exceeds the group's {_watts(limit)}"
            )
        target = setpoint.get("setpoint_c")
        if target is not None and not HVAC_MIN_C <= target <= HVAC_MAX_C:
            problems.append(f"hvac setpoint_c must lie between {HVAC_MIN_C:g} and {HVAC_MAX_C:g} °C")
    return problems


def valid_until(ttl_s: int | None, until: datetime | None, at: datetime) -> datetime:
    """When a policy ends: `at + ttl_s`, or `until`; ValueError unless within 1 s to 24 h of `at`."""
    if (ttl_s is None) == (until is None):
        raise ValueError("give exactly one of ttl_s and valid_until")
    if ttl_s is not None:
        if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must lie between {MIN_TTL_S} and {MAX_TTL_S} seconds")
        return at + timedelta(seconds=ttl_s)
    assert until is not None
    if until <= at:
        raise ValueError("valid_until must lie in the future")
    if until - at > timedelta(seconds=MAX_TTL_S):
        raise ValueError("valid_until must lie within 24 hours")
    return until
