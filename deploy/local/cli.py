"""`gridfleet run`: the whole platform on this machine, with a simulated demo site feeding it.

Uses DATABASE_URL and MQTT_URL when set; otherwise an embedded PostgreSQL (in .gridfleet/pgdata) and the
Mosquitto already listening on 127.0.0.1:1883, or one started here. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time

from deploy.demo.provision import provision
from deploy.local.infra import STATE_DIR, free_port, port_open, provide, start_secure_mosquitto
from deploy.local.processes import ServiceProcesses
from libs import dynsec
from libs.settings import MqttTarget

DEMO_PASSWORD = "gridfleet-demo"


def _without_password(url: str) -> str:
    target = MqttTarget(url)
    return f"mqtt://{target.host}:{target.port}"


def _banner(url: str, mqtt_url: str, password: str, notes: list[str], demo: dict[str, object]) -> str:
    meters = demo.get("meters", {})
    grid_meter = meters.get("grid_import") if isinstance(meters, dict) else None
    today = time.strftime("%Y-%m-%d")
    return f"""
gridfleet is running.

  API       {url}/api/v1
  Docs      {url}/docs
  Broker    {mqtt_url}   (device topics gf/v1/gw/<gateway uuid>/...; username = gateway uuid, password = its token)
  Login     administrator / {password}
  {chr(10).join("  " + n for n in notes).strip()}

Try it (energy of the demo's grid meter, by hour, today):
  curl -s -X PUT {url}/api/v1/users/login -d '{{"data": {{"name": "administrator", "password": "{password}"}}}}'
  curl -s "{url}/api/v1/reports/meterenergy?meterid={grid_meter}&periodtype=hourly&reportingperiodstartdatetime={today}T00:00:00&reportingperiodenddatetime={today}T23:59:59" \\
       -H "User-UUID: <uuid from the login answer>" -H "Token: <token from the login answer>"

Logs are in {STATE_DIR / "logs"}. Press Ctrl-C to stop.
"""


def _secure_broker() -> tuple[str, subprocess.Popen[bytes]] | None:
    """The device-facing broker `make run` starts: no anonymous clients, one account per gateway."""
    secret = STATE_DIR / "mqtt-platform.secret"
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    if not secret.exists():
        secret.write_text(secrets.token_urlsafe(24))
        secret.chmod(0o600)
    password = secret.read_text().strip()
    port = 1884 if not port_open("127.0.0.1", 1884) else free_port()
    proc = start_secure_mosquitto(STATE_DIR / "mosquitto-secure", port, "gridfleet-admin", password)
    if proc is None:
        return None
    admin = MqttTarget(f"mqtt://gridfleet-admin:{password}@127.0.0.1:{port}")
    asyncio.run(dynsec.ensure_platform_account(admin, "gridfleet", password))
    return f"mqtt://gridfleet:{password}@127.0.0.1:{port}", proc


def run(args: argparse.Namespace) -> int:
    secure = None if os.environ.get("MQTT_URL") else _secure_broker()
    infra = provide(
        database_url=os.environ.get("DATABASE_URL"),
        mqtt_url=os.environ.get("MQTT_URL") or (secure[0] if secure else None),
        use_local_postgres=False,  # `make run` keeps its data in its own embedded database by default
    )
    if secure is not None:
        infra.notes[-1] = "broker: Mosquitto with per-gateway accounts (dynamic security) started here"
        infra._processes.append(secure[1])
    password = os.environ.get("GRIDFLEET_ADMIN_PASSWORD", DEMO_PASSWORD)
    env = {
        "DATABASE_URL": infra.database_url,
        "MQTT_URL": infra.mqtt_url,
        "GRIDFLEET_ADMIN_PASSWORD": password,
        "GRIDFLEET_INTERNAL_TOKEN": os.environ.get("GRIDFLEET_INTERNAL_TOKEN", secrets.token_hex(24)),
        "GRIDFLEET_MQTT_DYNSEC": "true"
        if secure is not None
        else os.environ.get("GRIDFLEET_MQTT_DYNSEC", "false"),
    }
    services = ServiceProcesses(env, STATE_DIR / "logs", args.port)
    demo_proc: subprocess.Popen[bytes] | None = None
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        print("starting gridfleet services ...", flush=True)
        services.start_all()
        url = services.url("gateway")
        demo = provision(url, "administrator", password, STATE_DIR / "demo.json")
        demo_log = (STATE_DIR / "logs" / "demo.log").open("ab")
        demo_proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.demo", "--config", str(STATE_DIR / "demo.json")],
            env=services.env,
            stdout=demo_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        print(_banner(url, _without_password(infra.mqtt_url), password, infra.notes, demo), flush=True)
        while not stopping:
            for name in services.crashed():
                print(f"{name} stopped unexpectedly; restarting it (see its log)", flush=True)
                services.start(name)
            time.sleep(1)
    finally:
        print("stopping gridfleet ...", flush=True)
        if demo_proc is not None and demo_proc.poll() is None:
            demo_proc.terminate()
            demo_proc.wait(10)
        services.stop_all()
        infra.close()
        print("stopped.", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gridfleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run the whole platform with a simulated demo site")
    run_parser.add_argument("--port", type=int, default=8000, help="gateway port (services use the next 7)")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
