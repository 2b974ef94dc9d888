"""The demo site's controller: publishes the site's telemetry over MQTT per the device protocol.

`python -m deploy.demo [--config .gridfleet/demo.json] [--backfill-hours 24] [--interval 10]`

It first publishes the last hours at one-minute resolution (so reports have history at once), then a reading
of every point every `--interval` seconds. Its status topic says `online`, and `offline` by last will.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

import aiomqtt
import orjson

from deploy.demo.site import MINUTE_MS, SiteState, state_at
from libs.settings import Settings, get_settings
from proto_schemas import topics

log = logging.getLogger("gridfleet.demo")


def _message(readings: list[dict[str, object]]) -> bytes:
    return orjson.dumps({"msg_id": str(uuid.uuid4()), "readings": readings})


def _readings(state: SiteState, points: dict[str, int]) -> list[dict[str, object]]:
    return [
        {"point_id": points[key], "ts": state.ts_ms, "value": value} for key, value in state.values().items()
    ]


async def run(
    config: dict[str, object], backfill_hours: float, interval_s: float, settings: Settings | None = None
) -> None:
    """Publish the backfill, then live readings, until cancelled."""
    settings = settings or get_settings()
    target = settings.mqtt
    gateway_uuid = str(config["gateway_uuid"])
    points = {str(k): int(v) for k, v in dict(config["points"]).items()}  # type: ignore[call-overload]
    prefix = settings.topic_prefix
    telemetry = prefix + topics.gateway_topic(gateway_uuid, "telemetry")
    status = prefix + topics.gateway_topic(gateway_uuid, "status")
    now_ms = int(time.time() * 1000)
    state = state_at(now_ms - int(backfill_hours * 3_600_000))
    will = aiomqtt.Will(status, b"offline", qos=1, retain=True)
    while True:
        try:
            async with aiomqtt.Client(
                target.host,
                target.port,
                username=gateway_uuid,
                password=str(config["gateway_token"]),
                identifier=f"gf-demo-{gateway_uuid}",
                will=will,
                clean_session=False,
            ) as client:
                await client.publish(status, b"online", qos=1, retain=True)
                batch: list[dict[str, object]] = []
                while state.ts_ms + MINUTE_MS <= int(time.time() * 1000):
                    state.step_minute()
                    batch.extend(_readings(state, points))
                    if len(batch) >= 550:
                        await client.publish(telemetry, _message(batch), qos=1)
                        batch = []
                if batch:
                    await client.publish(telemetry, _message(batch), qos=1)
                log.info("backfill published; going live")
                while True:
                    await asyncio.sleep(interval_s)
                    while state.ts_ms + MINUTE_MS <= int(time.time() * 1000):
                        state.step_minute()
                        await client.publish(telemetry, _message(_readings(state, points)), qos=1)
        except aiomqtt.MqttError as exc:
            log.warning("broker connection lost (%s); reconnecting", exc)
            await asyncio.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description="gridfleet demo site simulator")
    parser.add_argument("--config", type=Path, default=Path(".gridfleet/demo.json"))
    parser.add_argument("--backfill-hours", type=float, default=48.0)
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s demo %(levelname)s %(message)s")
    config = json.loads(args.config.read_text())
    asyncio.run(run(config, args.backfill_hours, args.interval))


if __name__ == "__main__":
    main()
