"""Which message travels on which MQTT topic: the single source for the AsyncAPI export and its tests.

Directions are from the platform's view: `subscribe` = a controller sends it and the platform receives it,
`publish` = the platform sends it to a controller, `internal` = one gridfleet service publishes it on the
internal bus and others subscribe.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from typing import Literal

from proto_schemas import topics
from proto_schemas.audit import AuditEvent
from proto_schemas.base import Message
from proto_schemas.command import Command, CommandAck
from proto_schemas.control import ControlAck, ControlState, ScheduleAck, ScheduleState
from proto_schemas.deadletter import DeadLetter
from proto_schemas.health import Health
from proto_schemas.onboarding import ProviderLinkChanged
from proto_schemas.pipeline import EnergyIntervalBatch, RawReadingBatch
from proto_schemas.provider_control import LiveRequest, ProviderAck, ProviderState, ScheduleRequest
from proto_schemas.registry import DataSourceStatus, GatewaySeen, RegistryChange
from proto_schemas.telemetry import GatewayStatus, Telemetry

Direction = Literal["publish", "subscribe", "internal"]

# Wildcard levels of a topic filter, in order, and what they stand for.
PARAMETERS: dict[str, str] = {
    "gateway_uuid": "The gateway's uuid, exactly as the registry gives it",
    "service": "The gridfleet service that could not accept the message (ingestion, normalisation, …)",
    "provider_id": "The external signal provider's id",
    "installation_id": "The installation's id, onboarded to that provider",
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One model on one topic. `topic` is the MQTT filter with `+` per parameter, as in `topics.py`."""

    model: type[Message]
    topic: str
    params: tuple[str, ...]
    direction: Direction
    description: str
    retained: bool = False
    qos: int = 1
    content_type: str = "application/json"

    @property
    def address(self) -> str:
        """The AsyncAPI address: each `+` level replaced by `{param}`."""
        names = iter(self.params)
        return "/".join(f"{{{next(names)}}}" if level == "+" else level for level in self.topic.split("/"))

    @property
    def channel_id(self) -> str:
        """A stable id: `device.cmd.ack`, `internal.readings.raw`, `internal.deadletter`…"""
        roots = (
            (topics.DEVICE_ROOT, "device"),
            (topics.INTERNAL_ROOT, "internal"),
            (topics.EXTERNAL_ROOT, "external"),
        )
        for root, prefix in roots:
            if self.topic.startswith(root + "/"):
                rest = [level for level in self.topic[len(root) + 1 :].split("/") if level != "+"]
                return ".".join([prefix, *rest])
        raise ValueError(f"topic outside the device, internal and external trees: {self.topic}")


def _device(leaf: str) -> str:
    return topics.gateway_topic("+", leaf)


CATALOG: list[Entry] = [
    # Device protocol v1 (docs/device-protocol.md, CONTRACTS.md §1): controller <-> platform.
    Entry(
        Telemetry,
        topics.TELEMETRY_ALL,
        ("gateway_uuid",),
        "subscribe",
        "Timestamped readings from a controller (live)",
    ),
    Entry(
        GatewayStatus,
        topics.STATUS_ALL,
        ("gateway_uuid",),
        "subscribe",
        "Bare word `online` or `offline`; retained, and the controller's last will (live)",
        retained=True,
        content_type="text/plain",
    ),
    Entry(
        Health,
        topics.HEALTH_ALL,
        ("gateway_uuid",),
        "subscribe",
        "Periodic health report of a controller",
    ),
    Entry(
        Command,
        _device("cmd"),
        ("gateway_uuid",),
        "publish",
        "A one-off command for the controller",
    ),
    Entry(CommandAck, topics.CMD_ACK_ALL, ("gateway_uuid",), "subscribe", "Progress of a command"),
    Entry(
        ControlState,
        _device("control"),
        ("gateway_uuid",),
        "publish",
        "Every policy in force now; replaces the previous state",
        retained=True,
    ),
    Entry(
        ControlAck,
        topics.CONTROL_ACK_ALL,
        ("gateway_uuid",),
        "subscribe",
        "A control version applied or rejected",
    ),
    Entry(
        ScheduleState,
        _device("schedule"),
        ("gateway_uuid",),
        "publish",
        "Every plan not yet finished; replaces the previous set",
        retained=True,
    ),
    Entry(
        ScheduleAck,
        topics.SCHEDULE_ACK_ALL,
        ("gateway_uuid",),
        "subscribe",
        "A schedule version stored or rejected",
    ),
    # External signal providers (CONTRACTS.md §2.2): `subscribe` = the provider sends it.
    Entry(
        LiveRequest,
        topics.PROVIDER_LIVE_ALL,
        ("provider_id", "installation_id"),
        "subscribe",
        "A provider's live setpoint for one device group, or its removal",
    ),
    Entry(
        ScheduleRequest,
        topics.PROVIDER_SCHEDULE_ALL,
        ("provider_id", "installation_id"),
        "subscribe",
        "A provider's plan of intervals for one device group, or its removal",
    ),
    Entry(
        ProviderAck,
        topics.provider_topic("+", "+", "ack"),
        ("provider_id", "installation_id"),
        "publish",
        "What became of a provider's request: accepted or rejected, then applied, expired or removed",
    ),
    Entry(
        ProviderState,
        topics.provider_topic("+", "+", "state"),
        ("provider_id", "installation_id"),
        "publish",
        "The installation's state and the policies in force, every 10 s and on change",
        retained=True,
    ),
    # Internal bus (docs/architecture.md).
    Entry(
        RawReadingBatch,
        topics.READINGS_RAW,
        (),
        "internal",
        "Readings accepted by ingestion, for normalisation",
    ),
    Entry(
        EnergyIntervalBatch,
        topics.ENERGY_INTERVALS,
        (),
        "internal",
        "Interval energy from normalisation, for aggregation",
    ),
    Entry(
        RegistryChange,
        topics.CONFIG_CHANGED,
        (),
        "internal",
        "A committed registry write; services refresh their caches",
    ),
    Entry(
        GatewaySeen,
        topics.GATEWAYS_SEEN,
        (),
        "internal",
        "When ingestion last heard from each gateway, for the registry",
    ),
    Entry(
        DataSourceStatus,
        topics.DATASOURCE_STATUS,
        (),
        "internal",
        "A polled (Modbus TCP) data source went online or offline, for the registry",
    ),
    Entry(
        AuditEvent,
        topics.AUDIT,
        (),
        "internal",
        "Every write and control call through the gateway: who, what, when, from where, outcome",
    ),
    Entry(
        ProviderLinkChanged,
        topics.ONBOARDING_EVENTS,
        (),
        "internal",
        "An external signal provider's state for an installation changed, for the command service",
    ),
    Entry(
        DeadLetter,
        topics.DEAD_LETTER_ALL,
        ("service",),
        "internal",
        "A message a service could not accept, with the reason",
    ),
]

# Topics in topics.py without a message model yet, hence without a catalog entry (and no AsyncAPI channel):
# command requests are planned and their payload is not specified. Add the model and an entry above, and
# remove the topic here, when it is.
UNMODELLED_TOPICS: frozenset[str] = frozenset({topics.COMMAND_REQUESTS})


def _check(catalog: list[Entry]) -> None:
    for entry in catalog:
        if (
            entry.topic.split("/").count("+") != len(entry.params)
            or not set(entry.params) <= PARAMETERS.keys()
        ):
            raise ValueError(f"{entry.topic}: parameters {entry.params} do not match its wildcards")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", entry.channel_id):
            raise ValueError(f"{entry.topic}: unusable channel id {entry.channel_id!r}")
    ids = [entry.channel_id for entry in catalog]
    if len(ids) != len(set(ids)):
        raise ValueError("two catalog entries share a channel id")


_check(CATALOG)


def all_models() -> list[type[Message]]:
    """Every concrete Message subclass of the package (catalog payloads and what they nest, and any other),
    sorted by schema_id. Raises if two classes claim the same schema_id."""
    import proto_schemas

    for info in pkgutil.iter_modules(proto_schemas.__path__):
        if info.name not in {"export", "catalog"}:
            importlib.import_module(f"proto_schemas.{info.name}")
    found: set[type[Message]] = {entry.model for entry in CATALOG}
    pending: list[type[Message]] = [Message]
    while pending:
        for sub in pending.pop().__subclasses__():
            pending.append(sub)
            if sub.__module__.startswith("proto_schemas.") and "schema_name" in vars(sub):
                found.add(sub)
    by_id: dict[str, type[Message]] = {}
    for model in found:
        other = by_id.setdefault(model.schema_id(), model)
        if other is not model:
            raise ValueError(f"{model.__qualname__} and {other.__qualname__} share {model.schema_id()}")
    return [by_id[schema_id] for schema_id in sorted(by_id)]
