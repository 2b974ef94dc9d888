"""Device protocol v1: commands down to a controller and its acknowledgements up (CONTRACTS.md §1)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from proto_schemas.base import Message, Timestamp


class Command(Message):
    """`gf/v1/gw/{uuid}/cmd`: one command for the controller to run."""

    schema_name = "gridfleet.command"

    command_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=255)
    payload: dict[str, Any] = Field(default_factory=dict)
    expires_at: Timestamp | None = None


class CommandAck(Message):
    """`gf/v1/gw/{uuid}/cmd/ack`: the controller's progress on a command."""

    schema_name = "gridfleet.command_ack"

    command_id: str = Field(min_length=1, max_length=64)
    status: Literal["delivered", "succeeded", "failed"]
    reason: str | None = Field(None, max_length=1024)
    result: dict[str, Any] | None = None
