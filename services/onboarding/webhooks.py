"""What a provider webhook is, without I/O: its signature, its retry schedule, its topics and its payloads.

A webhook is `POST {webhook_base_url}/{event}` with the raw JSON body signed as
`Gridfleet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>` (CONTRACTS.md §2.1).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.auth import sign_payload
from proto_schemas.onboarding import (
    ControlAccess,
    ControlTopics,
    HealthcheckWebhook,
    HealthDevice,
    HealthSystem,
    InstallationRef,
    OffboardingWebhook,
    OnboardingInstallation,
    OnboardingWebhook,
    WebhookAddress,
    WebhookDevice,
    WebhookDeviceGroup,
)
from proto_schemas.topics import provider_topic

EVENT_HEADER = "Gridfleet-Event"
DELIVERY_HEADER = "Gridfleet-Delivery"
SIGNATURE_HEADER = "Gridfleet-Signature"
SIGNATURE_TOLERANCE_S = 300  # receivers reject a signature older than this
GROUPS = ("battery", "solar", "ev", "hvac")

_SIGNATURE = re.compile(r"^t=(\d{1,12}),v1=([0-9a-f]{64})$")


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The value of `Gridfleet-Signature` for this body, signed at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={sign_payload(secret, timestamp, body)}"


def verify_signature(
    secret: str, header: str, body: bytes, now: int, tolerance_s: int = SIGNATURE_TOLERANCE_S
) -> bool:
    """What a receiver checks: the header parses, the HMAC matches the raw body, and it is recent enough."""
    match = _SIGNATURE.match(header.strip())
    if match is None:
        return False
    timestamp = int(match.group(1))
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(match.group(2), sign_payload(secret, timestamp, body))


def webhook_headers(event: str, delivery_id: str, secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: signature_header(secret, timestamp, body),
    }


def retry_delay_s(attempts: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: base, doubling, never above cap."""
    if attempts < 1:
        return 0.0
    exponent = min(attempts - 1, 62)  # 2**62 * base is past any cap; avoids huge floats
    return float(min(cap_s, base_s * (2**exponent)))


def next_attempt(
    failed_at: datetime, attempts: int, created_at: datetime, base_s: float, cap_s: float, window_s: float
) -> datetime | None:
    """When to try again after a failure, or None once the retry window (72 h) is spent: failed for good."""
    due = failed_at + timedelta(seconds=retry_delay_s(attempts, base_s, cap_s))
    if due > created_at + timedelta(seconds=window_s):
        return None
    return due


def join_url(base_url: str, event: str) -> str:
    return f"{base_url.rstrip('/')}/{event}"


def provider_username(provider_id: int) -> str:
    return f"provider-{provider_id}"


def control_topics(provider_id: int, installation_id: int, prefix: str = "") -> ControlTopics:
    return ControlTopics(
        **{
            leaf: prefix + provider_topic(provider_id, installation_id, leaf)
            for leaf in ("live", "schedule", "ack", "state")
        }
    )


def _address(installation: Mapping[str, Any]) -> WebhookAddress:
    address = installation.get("address") or {}
    return WebhookAddress(
        street=address.get("street"),
        postal_code=address.get("postal_code"),
        city=address.get("city"),
        country=address.get("country"),
    )


def _timezone(installation: Mapping[str, Any]) -> str:
    zone = installation.get("timezone")
    if isinstance(zone, Mapping):
        return str(zone.get("name") or "UTC")
    return str(zone or "UTC")


def permitted_groups(groups: Sequence[Mapping[str, Any]], allowed: Sequence[str]) -> list[WebhookDeviceGroup]:
    """The installation's device groups the provider may steer, with their devices and capacities."""
    out = []
    for group in groups:
        if group.get("group") not in allowed:
            continue
        out.append(
            WebhookDeviceGroup(
                group=group["group"],
                devices=[WebhookDevice.model_validate(device) for device in group.get("devices") or []],
                max_charge_w=group.get("max_charge_w"),
                max_discharge_w=group.get("max_discharge_w"),
                capacity_wh=group.get("capacity_wh"),
                max_power_w=group.get("max_power_w"),
            )
        )
    return out


def onboarding_payload(
    *,
    provider_id: int,
    installation: Mapping[str, Any],
    contract_number: str,
    groups: Sequence[Mapping[str, Any]],
    allowed: Sequence[str],
    mqtt_url: str,
    password: str,
    topic_prefix: str,
    fallback_timeout_s: int,
) -> OnboardingWebhook:
    return OnboardingWebhook(
        installation=OnboardingInstallation(
            id=int(installation["id"]),
            serial=str(installation.get("serial") or ""),
            contract_number=contract_number,
            address=_address(installation),
            timezone=_timezone(installation),
        ),
        device_groups=permitted_groups(groups, allowed),
        control=ControlAccess(
            mqtt_url=mqtt_url,
            username=provider_username(provider_id),
            password=password,
            topics=control_topics(provider_id, int(installation["id"]), topic_prefix),
            fallback_timeout_s=fallback_timeout_s,
        ),
    )


def offboarding_payload(
    installation_id: int, serial: str, contract_number: str, reason: str
) -> OffboardingWebhook:
    return OffboardingWebhook(
        installation=InstallationRef(id=installation_id, serial=serial, contract_number=contract_number),
        reason=reason,
    )


def installation_health(
    gateways: Sequence[Mapping[str, Any]],
    sources: Sequence[Mapping[str, Any]],
    groups: Sequence[Mapping[str, Any]],
) -> tuple[HealthSystem, list[HealthDevice]]:
    """The system's status from its controllers and data sources, and each device's from the same.

    `ok`: every controller online and every data source online; `degraded`: some online, something offline;
    `error`: no controller online (or none bound). The registry does not yet map a device to the data
    source it is read through, so a device carries its installation's verdict, with the offline sources
    named in `error`.
    """
    online = [gw for gw in gateways if gw.get("status") == "online"]
    lost = [src for src in sources if src.get("status") == "offline"]
    if not online:
        system = HealthSystem(status="error", online=False)
    elif len(online) < len(gateways) or lost:
        system = HealthSystem(status="degraded", online=True)
    else:
        system = HealthSystem(status="ok", online=True)
    error: str | None = None
    if not online:
        error = "no controller of the installation is online"
    elif lost:
        error = "; ".join(
            f"data source {src.get('name') or src.get('id')} offline"
            + (f": {src['reason']}" if src.get("reason") else "")
            for src in lost
        )[:1024]
    status = "offline" if not online else ("error" if lost else "ok")
    devices = [
        HealthDevice(id=str(device["id"]), group=group["group"], status=status, error=error)
        for group in groups
        for device in group.get("devices") or []
    ]
    return system, devices


def healthcheck_payload(
    ref: InstallationRef, system: HealthSystem, devices: list[HealthDevice], now: datetime | None = None
) -> HealthcheckWebhook:
    return HealthcheckWebhook(installation=ref, system=system, devices=devices, ts=now or datetime.now(UTC))
