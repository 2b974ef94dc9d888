"""Audit events: who changed or steered what, when, from where, with what outcome."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from proto_schemas.base import Message, Timestamp


class AuditEvent(Message):
    """Published by the gateway after every write and every control call; the registry keeps them."""

    schema_name = "gridfleet.audit_event"

    event_key: str = Field(
        min_length=8, max_length=64, description="Unique per event: a redelivery is stored once"
    )
    at: Timestamp
    actor: str = Field(max_length=255, description="User name, API key prefix, or the name tried at login")
    actor_kind: Literal["user", "api_key", "anonymous", "system"]
    provider_id: int | None = None
    action: str = Field(max_length=16, description="HTTP method or control verb")
    object: str = Field(max_length=1024, description="Path below /api/v1")
    outcome: int = Field(ge=100, le=599, description="HTTP status answered")
    source_address: str | None = Field(None, max_length=64)
    correlation_id: str | None = Field(None, max_length=64)
