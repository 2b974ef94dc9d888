"""Device protocol v1: the controller's periodic health report (planned; CONTRACTS.md §1)."""

from __future__ import annotations

from pydantic import Field

from proto_schemas.base import Message, Timestamp

_TEXT = 255


class Health(Message):
    """`gf/v1/gw/{uuid}/health`: what the controller knows about itself. Every field may be missing.

    Numbers are strict (a JSON number, never a string or a boolean); unknown fields are ignored.
    """

    schema_name = "gridfleet.health"

    ts: Timestamp | None = Field(None, description="When this report was taken")
    serial: str | None = Field(None, max_length=_TEXT, description="The controller's serial number")
    sw_version: str | None = Field(None, max_length=_TEXT, description="Firmware / software version")
    types_version: str | None = Field(
        None, max_length=_TEXT, description="Version of the installed device-type definitions"
    )
    init_phase: str | None = Field(None, max_length=_TEXT, description="The controller's start-up phase")
    last_reboot: Timestamp | None = Field(None, description="Time of the last reboot")
    cpu_temp_c: float | None = Field(None, strict=True, description="CPU temperature, °C")
    mem_available_mb: float | None = Field(None, ge=0, strict=True, description="Free memory, MB")
    unpublished_messages: int | None = Field(
        None,
        ge=0,
        strict=True,
        description="Messages buffered on the controller, not yet accepted by the broker",
    )
    db_status: str | None = Field(None, max_length=_TEXT, description="State of the controller's local store")
    ping_ms: float | None = Field(None, ge=0, strict=True, description="Round-trip time to the platform, ms")
    last_message_at: Timestamp | None = Field(
        None, description="When the controller last published successfully"
    )
