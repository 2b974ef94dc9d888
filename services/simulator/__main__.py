"""Run simulated controllers, or create them through the API.

    python -m services.simulator --config gateways.json [--interval 10] [--health-interval 60] [--seed 0]
        [--broker mqtt://host:1883] [--topic-prefix P] [--window 20]
        [--backfill-hours H | --from TIME] [--until TIME] [--step 60] [--per-message 100] [--once] [--sync]

    python -m services.simulator --provision N M --config gateways.json [--api http://127.0.0.1:8000]
        [--user administrator] [--password PW] [--kinds energy,power] [--name PREFIX]

The config lists gateways `{uuid, token, points: [{id, kind}]}` (kinds: see `controllers.KINDS`; a point may
override its kind's `modulus`, `resolution_wh`, `mean_w`, `rollover_every_s`, `reset_every_s`, `reset_phase_s`,
`start`). `--provision` creates N gateways with M points each through the gateway REST API and writes it.

Run mode connects every gateway, publishes the history from `--from` (or `--backfill-hours` ago) to `--until`
(default now) at `--step` seconds, then a reading of every point every `--interval` seconds until stopped
(`--once`: exit once the history is published). Defaults for the broker, the topic prefix, the API and the
administrator's password come from the platform's settings (MQTT_URL, GRIDFLEET_TOPIC_PREFIX, …).

`--sync` is for load tests: the simulator connects every gateway and prepares every message, prints
`READY <gateways> <messages> <readings>`, waits for a line on stdin, publishes, prints
`DONE <start epoch s> <end epoch s> <messages> <readings>` once the broker acknowledged everything, then waits
for another line (or end of input) before it says `offline` and disconnects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import resource
import signal
import sys
import threading
import time
from collections.abc import Awaitable
from datetime import datetime
from pathlib import Path
from typing import Any

from libs.settings import MqttTarget, get_settings
from services.simulator.controllers import KINDS, BrokerTarget, Fleet, load_config, provision

log = logging.getLogger("gridfleet.simulator")


def parse_time(text: str) -> int:
    """Epoch milliseconds from an ISO 8601 time with an offset, or from an integer of epoch milliseconds."""
    if text.lstrip("-").isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no offset")
    return int(moment.timestamp() * 1000)


def _raise_fd_limit() -> None:
    """One socket per gateway: lift the soft limit on open files to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _stdin_line() -> asyncio.Future[str]:
    """The next line on stdin ("" at its end), read by a daemon thread that never holds up the exit."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def settle(text: str) -> None:
        if not line.done():
            line.set_result(text)

    def read() -> None:
        text = sys.stdin.readline()
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(settle, text)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return line


async def _first_of(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()


async def run(args: argparse.Namespace) -> None:
    settings = get_settings()
    target = settings.mqtt if args.broker is None else MqttTarget(args.broker)
    prefix = settings.topic_prefix if args.topic_prefix is None else args.topic_prefix
    configs = load_config(json.loads(args.config.read_text()))
    fleet = Fleet(
        configs,
        BrokerTarget(target.host, target.port, prefix),
        seed=args.seed,
        window=args.window,
        interval_s=None if args.once else args.interval,
        health_interval_s=args.health_interval,
        connect_concurrency=args.connect_concurrency,
    )
    until = args.until if args.until is not None else int(time.time() * 1000)
    start = args.start
    if start is None and args.backfill_hours:
        start = until - int(args.backfill_hours * 3_600_000)
    messages = readings = 0
    if start is not None:
        messages, readings = fleet.backfill(start, until, int(args.step * 1000), args.per_message)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, fleet.stop.set)
    fleet.start()
    try:
        if args.sync:
            await _first_of(fleet.wait_connected(), fleet.stop.wait())
            _say(f"READY {len(configs)} {messages} {readings}")
            await _first_of(_stdin_line(), fleet.stop.wait())
        else:
            log.info("%d gateways, %d messages (%d readings) of history", len(configs), messages, readings)
        if fleet.stop.is_set():
            return
        started = time.time()
        fleet.go.set()
        if args.sync or args.once:
            await _first_of(fleet.wait_drained(), fleet.stop.wait())
            if fleet.stop.is_set():
                return
            finished = time.time()
            if args.sync:
                _say(f"DONE {started} {finished} {fleet.stats.messages} {fleet.stats.readings}")
            log.info("history published: %d readings in %.1f s", fleet.stats.readings, finished - started)
        if not args.once:
            await fleet.stop.wait()
        elif args.sync:
            await _first_of(_stdin_line(), fleet.stop.wait())
    finally:
        await fleet.close()


def _say(line: str) -> None:
    """A line for the process driving a --sync run (gone already: nothing to say)."""
    with contextlib.suppress(BrokenPipeError):
        print(line, flush=True)


async def run_provision(args: argparse.Namespace) -> None:
    settings = get_settings()
    count, points = args.provision
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    started = time.perf_counter()
    configs = await provision(
        args.api or settings.url_for("gateway"),
        args.user,
        args.password or settings.admin_password,
        count,
        points,
        kinds,
        name=args.name,
        concurrency=args.concurrency,
    )
    args.config.parent.mkdir(parents=True, exist_ok=True)
    args.config.write_text(json.dumps({"gateways": [c.to_json() for c in configs]}, indent=1))
    args.config.chmod(0o600)  # it holds the gateways' tokens
    log.info(
        "%d gateways with %d points each written to %s in %.1f s",
        count,
        points,
        args.config,
        time.perf_counter() - started,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m services.simulator", description="gridfleet controller simulator"
    )
    p.add_argument(
        "--config", type=Path, required=True, help="gateways file (read, or written by --provision)"
    )
    p.add_argument("--provision", nargs=2, type=int, metavar=("N", "M"), help="create N gateways x M points")
    p.add_argument("--api", help="gateway base URL (default: the platform's settings)")
    p.add_argument("--user", default="administrator")
    p.add_argument("--password", help="default: GRIDFLEET_ADMIN_PASSWORD")
    p.add_argument("--kinds", default="energy,power", help=f"point kinds, cycled: {', '.join(KINDS)}")
    p.add_argument("--name", help="name prefix of the created gateways (default: sim-<random>)")
    p.add_argument("--concurrency", type=int, default=16, help="API requests in flight while provisioning")
    p.add_argument("--broker", help="mqtt://host:port (default: MQTT_URL)")
    p.add_argument("--topic-prefix", help="default: GRIDFLEET_TOPIC_PREFIX")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between live readings")
    p.add_argument("--health-interval", type=float, default=60.0)
    p.add_argument("--window", type=int, default=20, help="QoS 1 messages in flight per gateway")
    p.add_argument("--connect-concurrency", type=int, default=50)
    p.add_argument("--backfill-hours", type=float, default=0.0)
    p.add_argument("--from", dest="start", type=parse_time, help="history from (ISO 8601 or epoch ms)")
    p.add_argument("--until", type=parse_time, help="history until (default: now)")
    p.add_argument("--step", type=float, default=60.0, help="seconds between readings of the history")
    p.add_argument("--per-message", type=int, default=100, help="readings per telemetry message (about)")
    p.add_argument("--once", action="store_true", help="exit once the history is published")
    p.add_argument("--sync", action="store_true", help="READY / wait / publish / DONE on stdio (load tests)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s simulator %(levelname)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    if args.provision:
        asyncio.run(run_provision(args))
        return
    _raise_fd_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of the services
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
