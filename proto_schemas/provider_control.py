"""External signal providers: live and scheduled control over MQTT (CONTRACTS.md §2.2).

A provider uses only `gf/v1/ext/{provider_id}/inst/{installation_id}/…` of installations onboarded to it:
it publishes `live` and `schedule` requests, and receives an `ack` for each request (`accepted` or `rejected`
with the reason, then `applied` when the controller confirms, and `expired` or `removed` when it ends) and the
retained `state` of the installation (every 10 s and on every change).

Request rules the platform checks (a failure is a `rejected` ack naming the rule, never silence): the link is
`active` and the group is one the provider may steer; the setpoint has the group's shape and lies within the
device group's capacity; `ttl_s` (or `valid_until`) is 1 s to 24 h; a plan's intervals are sorted, do not
overlap each other or another live plan of the group; a policy of a higher priority (the operator's) in force is
never overwritten.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, model_validator

from proto_schemas.base import Message, Timestamp
from proto_schemas.control import DeviceGroup, Policy, ScheduleInterval

MAX_TTL_S = 24 * 3600
_REQUEST_ID = Field(
    min_length=1, max_length=128, description="The provider's id of this request, echoed in `ack`"
)


class LiveRequest(Message):
    """`gf/v1/ext/{provider_id}/inst/{installation_id}/live`: a setpoint for one device group (it replaces the
    provider's previous one), or `remove: true` to end it."""

    schema_name = "gridfleet.provider_live_request"

    request_id: str = _REQUEST_ID
    group: DeviceGroup
    setpoint: dict[str, Any] | None = Field(
        None,
        description="battery {power_w}, solar {max_power_w}, ev {power_w}, hvac {mode, setpoint_c?, max_power_w?}",
    )
    ttl_s: int | None = Field(None, ge=1, le=MAX_TTL_S, strict=True, description="1 s to 24 h")
    valid_until: Timestamp | None = Field(None, description="Instead of ttl_s: within 24 h")
    remove: bool = Field(False, description="End the provider's policy of this group")

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if self.remove:
            if self.setpoint is not None or self.ttl_s is not None or self.valid_until is not None:
                raise ValueError("a remove request carries no setpoint, ttl_s or valid_until")
            return self
        if self.setpoint is None:
            raise ValueError("a live request needs a setpoint (or remove: true)")
        if (self.ttl_s is None) == (self.valid_until is None):
            raise ValueError("give exactly one of ttl_s and valid_until")
        return self


class ScheduleRequest(Message):
    """`gf/v1/ext/{provider_id}/inst/{installation_id}/schedule`: a plan of intervals for one group (it replaces
    the provider's live plan with the same `schedule_id`), or `remove: true` to end that plan."""

    schema_name = "gridfleet.provider_schedule_request"

    request_id: str = _REQUEST_ID
    schedule_id: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f/]+$")
    group: DeviceGroup | None = None
    intervals: list[ScheduleInterval] | None = Field(None, min_length=1, max_length=2000)
    remove: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if self.remove:
            if self.intervals is not None:
                raise ValueError("a remove request carries no intervals")
            return self
        if self.group is None or self.intervals is None:
            raise ValueError("a plan needs a group and intervals (or remove: true)")
        return self


class ProviderAck(Message):
    """`gf/v1/ext/{provider_id}/inst/{installation_id}/ack`: what became of a request."""

    schema_name = "gridfleet.provider_ack"

    request_id: str = Field(max_length=128, description="The request's id (empty when it could not be read)")
    status: Literal["accepted", "rejected", "applied", "expired", "removed"]
    reason: str | None = Field(None, max_length=4096, description="Why it was rejected or removed")
    group: DeviceGroup | None = None
    schedule_id: str | None = None
    policy_id: str | None = None

    @model_validator(mode="after")
    def _reason(self) -> Self:
        if self.status == "rejected" and not self.reason:
            raise ValueError("status 'rejected' needs a reason")
        return self


class PowerReading(Message):
    schema_name = "gridfleet.provider_state_power"

    power_w: float | None = Field(None, description="Latest measured power, W (null: not measured yet)")


class BatteryReading(PowerReading):
    schema_name = "gridfleet.provider_state_battery"

    soc_pct: float | None = Field(
        None, ge=0, le=100, description="State of charge, % (null: not measured yet)"
    )


class ProviderState(Message):
    """`gf/v1/ext/{provider_id}/inst/{installation_id}/state` (retained): every 10 s and on every change."""

    schema_name = "gridfleet.provider_state"

    ts: Timestamp
    grid: PowerReading = Field(default_factory=PowerReading)
    solar: PowerReading = Field(default_factory=PowerReading)
    battery: BatteryReading = Field(default_factory=BatteryReading)
    ev: PowerReading = Field(default_factory=PowerReading)
    hvac: PowerReading = Field(default_factory=PowerReading)
    policies: list[Policy] = Field(description="Every policy in force on the installation, whoever set it")
    device_groups: list[DeviceGroup] = Field(
        default_factory=list, description="The groups this provider may steer"
    )
