"""Device protocol v1: what a controller publishes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, ConfigDict, Field, WithJsonSchema

from proto_schemas.base import Message

MAX_READINGS_PER_MESSAGE = 10_000


# Validated natively by pydantic-core (no Python per reading): this is the platform's hottest path.
ReadingTime = Annotated[
    AwareDatetime,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time", "description": "ISO 8601 with an offset"},
                {"type": "integer", "description": "epoch milliseconds"},
            ]
        }
    ),
]


class Reading(Message):
    schema_name = "gridfleet.reading"
    model_config = ConfigDict(val_temporal_unit="milliseconds")

    point_id: int = Field(
        ge=1, le=2**31 - 1, strict=True, description="A point of this gateway's data sources"
    )
    ts: ReadingTime = Field(description="ISO 8601 with offset, or epoch milliseconds")
    value: float = Field(strict=True, allow_inf_nan=False, description="Raw value, before the point's ratio")


class Telemetry(Message):
    """`gf/v1/gw/{uuid}/telemetry`: one or many timestamped readings."""

    schema_name = "gridfleet.telemetry"

    msg_id: str | None = Field(
        None, min_length=1, max_length=128, description="Optional unique id; a resent message is stored once"
    )
    readings: list[Reading] = Field(min_length=1, max_length=MAX_READINGS_PER_MESSAGE)


class GatewayStatus(Message):
    """`gf/v1/gw/{uuid}/status` carries the bare string `online` or `offline` (retained, last will)."""

    schema_name = "gridfleet.gateway_status"

    status: Literal["online", "offline"]

    @classmethod
    def from_wire(cls, payload: bytes) -> GatewayStatus:
        """The topic carries a bare word, not JSON; accept `online`, `"online"` and `{"status": "online"}`."""
        text = payload.decode("utf-8", errors="replace").strip()
        if text.startswith("{"):
            return cls.model_validate_json(payload)
        return cls(status=text.strip('"'))
