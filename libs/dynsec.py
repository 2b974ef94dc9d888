"""Per-gateway MQTT credentials through Mosquitto's dynamic security plugin.

The device-facing broker refuses anonymous clients. Each gateway is a broker client (username = its uuid,
password = its token) with a role of its own whose ACL allows only its subtree `gf/v1/gw/{uuid}/#`. The
registry drives this over the plugin's control topic (`$CONTROL/dynamic-security/v1`) when a gateway is
created, its token rotated, or it is deleted, so each change takes effect at once. The platform's own services
connect with an account that holds the `gridfleet-platform` role (every topic).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import aiomqtt
import orjson

from libs.settings import MqttTarget
from proto_schemas import topics

log = logging.getLogger(__name__)

CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = f"{CONTROL}/response"
PLATFORM_ROLE = "gridfleet-platform"


class DynsecError(RuntimeError):
    """The broker refused a command (or did not answer)."""


def gateway_role(gateway_uuid: str) -> str:
    return f"gridfleet-gw-{gateway_uuid}"


def gateway_acls(gateway_uuid: str, topic_prefix: str = "") -> list[dict[str, Any]]:
    """Publish, receive and subscribe within the gateway's own subtree, nothing else; and publish there only
    what a controller sends up."""
    subtree = f"{topic_prefix}{topics.gateway_topic(gateway_uuid, '#')}"
    # What the platform sends down (commands, the retained control and schedule states) the gateway may
    # read but never publish itself: a controller clearing its own retained `control` would lose what applies.
    down = [
        f"{topic_prefix}{topics.gateway_topic(gateway_uuid, leaf)}"
        for leaf in ("cmd/#", "control", "schedule")
    ]
    return [
        {"acltype": "publishClientSend", "topic": f"{topic_prefix}{topics.gateway_topic(gateway_uuid, 'cmd/ack')}",
         "priority": 2, "allow": True},
        *({"acltype": "publishClientSend", "topic": topic, "priority": 1, "allow": False} for topic in down),
        *(
            {"acltype": kind, "topic": subtree, "priority": 0, "allow": True}
            for kind in ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
        ),
    ]  # fmt: skip


def platform_acls() -> list[dict[str, Any]]:
    return [
        {"acltype": kind, "topic": "#", "priority": 0, "allow": True}
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
    ]


async def run_commands(
    target: MqttTarget,
    commands: Sequence[dict[str, Any]],
    *,
    tolerate: Sequence[str] = (),
    wait_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Send commands on the control topic and wait for the broker's answers.

    An error answer raises DynsecError unless its text contains one of `tolerate` (e.g. "already exists"
    when making sure something exists).
    """
    quiet = logging.getLogger("gridfleet.dynsec.mqtt")
    quiet.setLevel(logging.ERROR)
    async with aiomqtt.Client(
        target.host,
        target.port,
        username=target.username,
        password=target.password,
        identifier=f"gf-dynsec-{uuid.uuid4().hex[:12]}",
        logger=quiet,
        timeout=wait_s,
    ) as client:
        await client.subscribe(RESPONSE, qos=1)
        await client.publish(CONTROL, orjson.dumps({"commands": list(commands)}), qos=1)
        try:
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    answer = orjson.loads(message.payload)
                    responses: list[dict[str, Any]] = answer.get("responses", [])
                    break
        except TimeoutError as exc:
            raise DynsecError("the broker did not answer on the dynamic security control topic") from exc
    for command, response in zip(commands, responses, strict=False):
        error = response.get("error")
        if error and not any(t in error for t in tolerate):
            raise DynsecError(f"{command['command']}: {error}")
    return responses


async def ensure_platform_account(admin: MqttTarget, username: str, password: str) -> None:
    """The account the platform's services use: every topic, and the right to manage gateway accounts.

    Made by the broker's first administrator (from `mosquitto_ctrl dynsec init`); the services never log
    in as that administrator, so changing accounts never disconnects the one making the change.
    """
    await run_commands(
        admin,
        [
            {"command": "createRole", "rolename": PLATFORM_ROLE, "acls": platform_acls()},
            {
                "command": "createClient",
                "username": username,
                "password": password,
                "roles": [{"rolename": PLATFORM_ROLE}, {"rolename": "admin"}],
            },
            {"command": "setClientPassword", "username": username, "password": password},
        ],
        tolerate=("already exists",),
    )


async def create_gateway(target: MqttTarget, gateway_uuid: str, token: str, topic_prefix: str = "") -> None:
    role = gateway_role(gateway_uuid)
    await run_commands(
        target,
        [
            {"command": "createRole", "rolename": role, "acls": gateway_acls(gateway_uuid, topic_prefix)},
            {
                "command": "createClient",
                "username": gateway_uuid,
                "password": token,
                "roles": [{"rolename": role}],
            },
        ],
    )


async def set_gateway_token(
    target: MqttTarget, gateway_uuid: str, token: str, topic_prefix: str = ""
) -> None:
    """New password for the gateway's account; an account the broker lost is created afresh."""
    try:
        await run_commands(
            target, [{"command": "setClientPassword", "username": gateway_uuid, "password": token}]
        )
    except DynsecError as exc:
        if "not found" not in str(exc):
            raise
        await create_gateway(target, gateway_uuid, token, topic_prefix)


async def delete_gateway(target: MqttTarget, gateway_uuid: str) -> None:
    """Remove the gateway's account; the broker disconnects it if it is connected."""
    await run_commands(
        target,
        [
            {"command": "deleteClient", "username": gateway_uuid},
            {"command": "deleteRole", "rolename": gateway_role(gateway_uuid)},
        ],
        tolerate=("not found",),
    )
