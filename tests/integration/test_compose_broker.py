"""`docker compose up` gets the same broker as `make run`: Mosquitto with the dynamic security plugin, no
anonymous clients, the services on the platform's account and one account per gateway.

There is no container engine here, so the test reads docker-compose.yml, checks that what the broker container
mounts and loads exists and is the plugin `make run` loads, then runs the broker container's own start script
and config (container paths moved to a scratch directory) with the local Mosquitto, and the `broker-accounts`
step against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import aiomqtt
import pytest
import yaml

from deploy.docker import broker_accounts
from deploy.local.infra import STATE_DIR, dynsec_plugin, free_port, port_open
from libs import dynsec
from libs.settings import SERVICES, MqttTarget
from proto_schemas import topics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
BROKER = COMPOSE["services"]["mosquitto"]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (or volume name) of a service's volumes."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def broker_conf() -> tuple[Path, list[str]]:
    host_path = mounts(BROKER)["/mosquitto/config/mosquitto.conf"]
    path = (ROOT / host_path).resolve()
    lines = [line.strip() for line in path.read_text().splitlines()]
    return path, [line for line in lines if line and not line.startswith("#")]


def defaults(text: str) -> str:
    """Compose interpolation with no .env file: `${VAR:-default}` -> default, `$$` -> `$`."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text).replace("$$", "$")


def test_the_compose_broker_loads_the_plugin_make_run_loads() -> None:
    path, lines = broker_conf()
    assert path.is_file()
    assert "allow_anonymous false" in lines
    assert not any(line.startswith("password_file") for line in lines)
    plugin = next(line.split(None, 1)[1] for line in lines if line.startswith("plugin "))
    local = dynsec_plugin()
    assert local is not None, "mosquitto's dynamic security plugin is needed (make system-deps)"
    assert Path(plugin).name == Path(local).name
    assert plugin == "/usr/lib/mosquitto_dynamic_security.so"  # where eclipse-mosquitto:2 ships it
    accounts = next(line.split(None, 1)[1] for line in lines if line.startswith("plugin_opt_config_file"))
    # The accounts live in the data volume (kept across restarts), and the start script makes that file.
    assert accounts.startswith("/mosquitto/data/")
    assert not mounts(BROKER)["/mosquitto/data"].startswith((".", "/"))  # a named volume
    script = BROKER["command"][-1]
    assert f"accounts={accounts}" in script
    assert "mosquitto_ctrl dynsec init" in script


def test_every_service_uses_the_platform_account_with_dynamic_security() -> None:
    setup = COMPOSE["services"]["broker-accounts"]
    assert (ROOT / "deploy/docker/broker_accounts.py").is_file()
    assert setup["command"][-1] == "deploy.docker.broker_accounts"
    assert setup["restart"] == "no"
    platform_url = defaults(setup["environment"]["MQTT_URL"])
    for name in [*SERVICES, "demo"]:
        service = COMPOSE["services"][name]
        env = service["environment"]
        assert defaults(env["MQTT_URL"]) == platform_url, name
        assert env["GRIDFLEET_MQTT_DYNSEC"] == "true", name
        assert service["depends_on"]["broker-accounts"]["condition"] == "service_completed_successfully"
    assert setup["environment"]["MQTT_ADMIN_PASSWORD"] == BROKER["environment"]["MQTT_ADMIN_PASSWORD"]


@pytest.fixture(scope="module")
def compose_broker() -> Iterator[tuple[int, dict[str, str]]]:
    """The broker container's start script and config, run here (paths and port moved, same settings)."""
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_ctrl") is None or dynsec_plugin() is None:
        pytest.fail("mosquitto with its dynamic security plugin is needed (make system-deps)")
    work = STATE_DIR / "test" / f"compose-broker-{uuid.uuid4().hex[:8]}"
    data = work / "data"
    data.mkdir(parents=True)
    port = free_port()
    _, lines = broker_conf()
    conf = work / "mosquitto.conf"
    adapted = []
    for line in lines:
        if line.startswith("listener "):
            line = f"listener {port} 127.0.0.1"
        elif line.startswith("plugin "):
            line = f"plugin {dynsec_plugin()}"
        elif line.startswith("log_dest"):
            line = "log_dest stderr"
        adapted.append(line.replace("/mosquitto/data", str(data)))
    conf.write_text("\n".join(adapted) + "\n")
    script = (
        defaults(BROKER["command"][-1])
        .replace("/mosquitto/data", str(data))
        .replace("/mosquitto/config/mosquitto.conf", str(conf))
    )
    env = {key: defaults(str(value)) for key, value in BROKER["environment"].items()}
    with (work / "mosquitto.log").open("ab") as log:
        proc = subprocess.Popen(["sh", "-c", script], env={**os.environ, **env}, stderr=log)
    try:
        for _ in range(100):
            if port_open("127.0.0.1", port, 0.2) or proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert proc.poll() is None, (work / "mosquitto.log").read_text()
        yield port, env
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_compose_broker_refuses_strangers_and_serves_the_platform_and_gateways(
    compose_broker: tuple[int, dict[str, str]],
) -> None:
    port, broker_env = compose_broker
    setup_env = {
        key: defaults(str(value))
        for key, value in COMPOSE["services"]["broker-accounts"]["environment"].items()
    }
    platform_url = setup_env["MQTT_URL"].replace("@mosquitto:1883", f"@127.0.0.1:{port}")
    with mock.patch.dict(os.environ, {**setup_env, "MQTT_URL": platform_url}):
        await broker_accounts.main()
        await broker_accounts.main()  # a restart of the stack runs it again: still fine
    platform = MqttTarget(platform_url)

    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"anon-{uuid.uuid4().hex[:6]}"):
            pass

    gateway = str(uuid.uuid4())
    await dynsec.create_gateway(platform, gateway, "token-1")  # what the registry does for a new gateway
    own = topics.gateway_topic(gateway, "telemetry")
    async with aiomqtt.Client(
        "127.0.0.1", port, username=platform.username, password=platform.password,
        identifier=f"platform-{uuid.uuid4().hex[:6]}",
    ) as services:  # fmt: skip
        await services.subscribe("gf/#", qos=1)
        async with aiomqtt.Client(
            "127.0.0.1", port, username=gateway, password="token-1", identifier=gateway
        ) as controller:
            # Another gateway's topic first: had the broker let it through, it would arrive first.
            await controller.publish(topics.gateway_topic(str(uuid.uuid4()), "telemetry"), b"{}", qos=1)
            await controller.publish(own, b'{"readings": []}', qos=1)
        seen = []
        async with asyncio.timeout(10):
            async for message in services.messages:
                seen.append(message.topic.value)
                if message.topic.value == own:
                    break
        assert seen == [own]
    # The administrator made by the container's first start can administer but not publish.
    assert broker_env["MQTT_ADMIN_USERNAME"] == "gridfleet-admin"
