"""Device protocol v1: live policies and schedules down to a controller, and their acks (planned; CONTRACTS.md §1).

`control` and `schedule` are retained and each message replaces the previous one completely; a controller
ignores any `version` not greater than the last one it applied. Setpoints are a JSON object whose shape
depends on the device group:

| group   | setpoint                                                                      |
|---------|-------------------------------------------------------------------------------|
| battery | `{"power_w": number}`: positive charges, negative discharges                  |
| solar   | `{"max_power_w": number >= 0}`: curtailment limit for PV output               |
| ev      | `{"power_w": number >= 0}`: charging power, 0 pauses charging                 |
| hvac    | `{"mode": "off"|"heat"|"cool"|"auto", "setpoint_c"?: number, "max_power_w"?: number >= 0}` |

Unknown setpoint keys are kept and ignored, like unknown fields anywhere else (a newer platform may send more).
Bounds that depend on the installation (inverter limits, capacity) and request rules such as `ttl_s` belong to
the services that build these messages, not to these models.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self, get_args

from pydantic import Field, model_validator

from proto_schemas.base import Message, Timestamp

DeviceGroup = Literal["battery", "solar", "ev", "hvac"]
HvacMode = Literal["off", "heat", "cool", "auto"]
DEVICE_GROUPS: tuple[str, ...] = get_args(DeviceGroup)


def _source() -> Any:
    return Field(
        pattern=r"^(user:.+|provider:.+|operator)$",
        max_length=255,
        description="Who set it: `user:<uuid>`, `provider:<id>` or `operator`",
    )


_SETPOINT_DESCRIPTION = (
    "Shape per group: battery {power_w}, solar {max_power_w}, ev {power_w}, "
    "hvac {mode: off|heat|cool|auto, setpoint_c?, max_power_w?}"
)
# (key, required, minimum) per group; every value is a JSON number.
_NUMBERS: dict[str, tuple[tuple[str, bool, float | None], ...]] = {
    "battery": (("power_w", True, None),),
    "solar": (("max_power_w", True, 0),),
    "ev": (("power_w", True, 0),),
    "hvac": (("setpoint_c", False, None), ("max_power_w", False, 0)),
}


def check_setpoint(group: str, setpoint: dict[str, Any]) -> None:
    """Raise ValueError unless `setpoint` has the shape the contract gives for `group`."""
    for key, required, minimum in _NUMBERS[group]:
        if key not in setpoint:
            if required:
                raise ValueError(f"a {group} setpoint needs {key!r}")
            continue
        value = setpoint[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"setpoint {key!r} must be a finite number")
        if minimum is not None and value < minimum:
            raise ValueError(f"setpoint {key!r} must be >= {minimum}")
    if group == "hvac" and setpoint.get("mode") not in get_args(HvacMode):
        raise ValueError(f"an hvac setpoint needs 'mode', one of {', '.join(get_args(HvacMode))}")


def _check_ack(status: str, failure: str, reason: str | None) -> None:
    if status == failure and not reason:
        raise ValueError(f"status {failure!r} needs a reason")


class Policy(Message):
    """One policy in force for one device group."""

    schema_name = "gridfleet.policy"

    policy_id: str = Field(min_length=1, max_length=128)
    group: DeviceGroup
    setpoint: dict[str, Any] = Field(description=_SETPOINT_DESCRIPTION)
    valid_until: Timestamp = Field(
        description="Stops being in force at this time, even without a new message"
    )
    source: str = _source()

    @model_validator(mode="after")
    def _setpoint_shape(self) -> Self:
        check_setpoint(self.group, self.setpoint)
        return self


class ControlState(Message):
    """`gf/v1/gw/{uuid}/control` (retained): everything in force now, at most one policy per group.

    A group without a policy here has none in force; after `fallback_timeout_s` without one the controller
    returns that group to local control.
    """

    schema_name = "gridfleet.control_state"

    version: int = Field(ge=0, strict=True, description="Increases with every change")
    issued_at: Timestamp = Field(description="When the platform built this state")
    fallback_timeout_s: int = Field(
        ge=1, strict=True, description="Seconds without a policy before local control"
    )
    policies: list[Policy]

    @model_validator(mode="after")
    def _one_per_group(self) -> Self:
        groups = [policy.group for policy in self.policies]
        if len(groups) != len(set(groups)):
            raise ValueError("at most one policy per device group")
        return self


class ControlAck(Message):
    """`gf/v1/gw/{uuid}/control/ack`: `applied` (every policy of that version in force) or `rejected`."""

    schema_name = "gridfleet.control_ack"

    version: int = Field(ge=0, strict=True)
    status: Literal["applied", "rejected"]
    reason: str | None = Field(None, max_length=1024, description="Required when rejected")

    @model_validator(mode="after")
    def _reason(self) -> Self:
        _check_ack(self.status, "rejected", self.reason)
        return self


class ScheduleInterval(Message):
    """One step of a plan: `setpoint` applies in the half-open interval `[start, end)`."""

    schema_name = "gridfleet.schedule_interval"

    start: Timestamp
    end: Timestamp
    setpoint: dict[str, Any] = Field(description=_SETPOINT_DESCRIPTION)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end <= self.start:
            raise ValueError("an interval's end must be after its start")
        return self


class Schedule(Message):
    """A plan for one device group: intervals sorted by start, not overlapping (touching is fine)."""

    schema_name = "gridfleet.schedule"

    schedule_id: str = Field(min_length=1, max_length=128)
    group: DeviceGroup
    intervals: list[ScheduleInterval] = Field(min_length=1)
    source: str = _source()

    @model_validator(mode="after")
    def _sorted_and_shaped(self) -> Self:
        for number, interval in enumerate(self.intervals, start=1):
            try:
                check_setpoint(self.group, interval.setpoint)
            except ValueError as exc:
                raise ValueError(f"interval {number}: {exc}") from None
        for number, (before, after) in enumerate(zip(self.intervals, self.intervals[1:], strict=False), 2):
            if after.start < before.start:
                raise ValueError(f"intervals must be sorted by start (interval {number})")
            if after.start < before.end:
                raise ValueError(f"interval {number} overlaps interval {number - 1}")
        return self


class ScheduleState(Message):
    """`gf/v1/gw/{uuid}/schedule` (retained): every plan not yet finished; store it and run it on your clock."""

    schema_name = "gridfleet.schedule_state"

    version: int = Field(ge=0, strict=True, description="Increases with every change")
    issued_at: Timestamp = Field(description="When the platform built this set")
    schedules: list[Schedule]

    @model_validator(mode="after")
    def _unique_ids(self) -> Self:
        ids = [schedule.schedule_id for schedule in self.schedules]
        if len(ids) != len(set(ids)):
            raise ValueError("schedule_id must be unique")
        return self


class ScheduleAck(Message):
    """`gf/v1/gw/{uuid}/schedule/ack`: `stored` (the whole set is saved and will run) or `rejected`."""

    schema_name = "gridfleet.schedule_ack"

    version: int = Field(ge=0, strict=True)
    status: Literal["stored", "rejected"]
    reason: str | None = Field(None, max_length=1024, description="Required when rejected")

    @model_validator(mode="after")
    def _reason(self) -> Self:
        _check_ack(self.status, "rejected", self.reason)
        return self
