"""Every MQTT topic gridfleet uses, in one place: publishers and subscribers both import from here.

Device topics form one tree per gateway (`gf/v1/gw/{gateway_uuid}/…`, see docs/device-protocol.md); internal
topics live under `gf/internal/v1/`. A run-wide prefix (`GRIDFLEET_TOPIC_PREFIX`) is added by the bus.
"""

from __future__ import annotations

DEVICE_ROOT = "gf/v1/gw"
INTERNAL_ROOT = "gf/internal/v1"

# Device protocol v1 (controller <-> platform).
TELEMETRY_ALL = f"{DEVICE_ROOT}/+/telemetry"
STATUS_ALL = f"{DEVICE_ROOT}/+/status"
HEALTH_ALL = f"{DEVICE_ROOT}/+/health"
CMD_ACK_ALL = f"{DEVICE_ROOT}/+/cmd/ack"
CONTROL_ACK_ALL = f"{DEVICE_ROOT}/+/control/ack"
SCHEDULE_ACK_ALL = f"{DEVICE_ROOT}/+/schedule/ack"


def gateway_topic(gateway_uuid: str, leaf: str) -> str:
    """`gf/v1/gw/{uuid}/{leaf}` for leaf in telemetry, status, health, cmd, cmd/ack, control, schedule…"""
    return f"{DEVICE_ROOT}/{gateway_uuid}/{leaf}"


def gateway_of(topic: str) -> str:
    """The gateway uuid in a device topic (`gf/v1/gw/{uuid}/…`)."""
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:3]) != DEVICE_ROOT:
        raise ValueError(f"not a device topic: {topic}")
    return parts[3]


# External signal providers (CONTRACTS.md §2.2): `gf/v1/ext/{provider_id}/inst/{installation_id}/{leaf}`.
EXTERNAL_ROOT = "gf/v1/ext"
PROVIDER_LIVE_ALL = f"{EXTERNAL_ROOT}/+/inst/+/live"
PROVIDER_SCHEDULE_ALL = f"{EXTERNAL_ROOT}/+/inst/+/schedule"


def provider_topic(provider_id: int | str, installation_id: int | str, leaf: str) -> str:
    """`gf/v1/ext/{provider_id}/inst/{installation_id}/{leaf}` for leaf in live, schedule, ack, state."""
    return f"{EXTERNAL_ROOT}/{provider_id}/inst/{installation_id}/{leaf}"


def provider_of(topic: str) -> tuple[int, int]:
    """(provider id, installation id) of a provider topic; ValueError when it is not one."""
    parts = topic.split("/")
    if len(parts) != 7 or "/".join(parts[:3]) != EXTERNAL_ROOT or parts[4] != "inst":
        raise ValueError(f"not a provider topic: {topic}")
    return int(parts[3]), int(parts[5])


# Internal pipeline.
READINGS_RAW = f"{INTERNAL_ROOT}/readings/raw"
ENERGY_INTERVALS = f"{INTERNAL_ROOT}/energy/intervals"
CONFIG_CHANGED = f"{INTERNAL_ROOT}/config/changed"
GATEWAYS_SEEN = f"{INTERNAL_ROOT}/gateways/seen"
AUDIT = f"{INTERNAL_ROOT}/audit"
DATASOURCE_STATUS = f"{INTERNAL_ROOT}/datasources/status"
COMMAND_REQUESTS = f"{INTERNAL_ROOT}/commands/requests"
ONBOARDING_EVENTS = f"{INTERNAL_ROOT}/onboarding/events"
DEAD_LETTER_ALL = f"{INTERNAL_ROOT}/deadletter/+"


def dead_letter(service: str) -> str:
    return f"{INTERNAL_ROOT}/deadletter/{service}"
