"""A provider's MQTT account on a broker that enforces accounts (Mosquitto dynamic security).

One broker client per provider (`provider-{id}`) with a role of its own. For every installation onboarded to
it (pending or active) the role may publish `live` and `schedule` and receive `ack` and `state` under
`gf/v1/ext/{provider_id}/inst/{installation_id}/`; offboarding or a rejection removes those entries at once.
Without such a broker (`GRIDFLEET_MQTT_DYNSEC` off) every call here does nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import aiomqtt

from libs import dynsec
from libs.service import ProblemError
from libs.settings import Settings
from proto_schemas.topics import provider_topic
from services.onboarding.webhooks import provider_username

log = logging.getLogger(__name__)

_SEND = ("live", "schedule")
_RECEIVE = ("ack", "state")


def provider_role(provider_id: int) -> str:
    return f"gridfleet-provider-{provider_id}"


def installation_acls(provider_id: int, installation_id: int, prefix: str = "") -> list[dict[str, Any]]:
    """Publish to live and schedule; subscribe to and receive ack and state; of this installation only."""
    acls: list[dict[str, Any]] = []
    for leaf in _SEND:
        topic = prefix + provider_topic(provider_id, installation_id, leaf)
        acls.append({"acltype": "publishClientSend", "topic": topic})
    for leaf in _RECEIVE:
        topic = prefix + provider_topic(provider_id, installation_id, leaf)
        acls.extend(
            {"acltype": kind, "topic": topic}
            for kind in ("subscribePattern", "publishClientReceive", "unsubscribePattern")
        )
    return acls


async def _apply(settings: Settings, commands: list[dict[str, Any]], tolerate: tuple[str, ...]) -> None:
    if not settings.mqtt_dynsec:
        return
    try:
        await dynsec.run_commands(settings.mqtt, commands, tolerate=tolerate)
    except (dynsec.DynsecError, aiomqtt.MqttError, OSError) as exc:
        log.error("provider broker account change failed", extra={"fields": {"error": repr(exc)}})
        raise ProblemError(
            503, "Unavailable", "the MQTT broker did not take the provider's credentials; retry"
        ) from exc


async def grant_installation(
    settings: Settings, provider_id: int, installation_id: int, password: str
) -> None:
    """Make sure the provider's account exists with this password and may use this installation's topics."""
    role = provider_role(provider_id)
    username = provider_username(provider_id)
    commands: list[dict[str, Any]] = [
        {"command": "createRole", "rolename": role},
        {
            "command": "createClient",
            "username": username,
            "password": password,
            "roles": [{"rolename": role}],
        },
    ]
    commands += [
        {"command": "addRoleACL", "rolename": role, "priority": 0, "allow": True, **acl}
        for acl in installation_acls(provider_id, installation_id, settings.topic_prefix)
    ]
    await _apply(settings, commands, ("already exists",))


async def revoke_installation(settings: Settings, provider_id: int, installation_id: int) -> None:
    """Take this installation's topics from the provider's role (takes effect at once)."""
    role = provider_role(provider_id)
    commands = [
        {"command": "removeRoleACL", "rolename": role, **acl}
        for acl in installation_acls(provider_id, installation_id, settings.topic_prefix)
    ]
    await _apply(settings, commands, ("not found", "does not exist"))


async def delete_provider(settings: Settings, provider_id: int) -> None:
    """Remove the provider's account and role (the provider itself was deleted)."""
    await _apply(
        settings,
        [
            {"command": "deleteClient", "username": provider_username(provider_id)},
            {"command": "deleteRole", "rolename": provider_role(provider_id)},
        ],
        ("not found",),
    )
