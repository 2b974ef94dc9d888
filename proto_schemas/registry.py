"""Registry events: master-data changes and gateway liveness."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from proto_schemas.base import Message


class RegistryChange(Message):
    """Published by the registry after every committed write, so other services refresh their caches."""

    schema_name = "gridfleet.config_changed"

    entity: str = Field(description="e.g. point, meter, meter_point, gateway, space")
    action: Literal["created", "updated", "deleted", "bound", "unbound"]
    id: int | str
    related_id: int | str | None = None


class GatewaySeen(Message):
    """Ingestion tells the registry when gateways were last heard from (batched, one per gateway)."""

    schema_name = "gridfleet.gateway_seen"

    gateway_uuid: str
    last_seen_ms: int
    status: Literal["online", "offline"] | None = None


class DataSourceStatus(Message):
    """A polled data source went online or offline (ingestion's Modbus poller to the registry)."""

    schema_name = "gridfleet.datasource_status"

    data_source_id: int
    gateway_uuid: str
    status: Literal["online", "offline"]
    previous: Literal["unknown", "online", "offline"]
    changed_ms: int = Field(description="Epoch milliseconds of the change")
    consecutive_failures: int = Field(ge=0)
    last_good_ms: int | None = None
    reason: str | None = Field(None, max_length=1024)
