"""Make the platform's broker account on the dynamic-security Mosquitto of `docker-compose.yml`.

    python -m deploy.docker.broker_accounts

The broker container creates its first administrator (`mosquitto_ctrl dynsec init`) from
`MQTT_ADMIN_USERNAME` / `MQTT_ADMIN_PASSWORD`. This one-shot step then logs in as that administrator and makes
the account the services use (user and password from `MQTT_URL`): every topic, and the right to manage gateway
accounts, exactly as `make run` does (`libs.dynsec.ensure_platform_account`). Running it again only resets the
platform account's password, so a changed `GRIDFLEET_MQTT_PASSWORD` takes effect on the next start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping

from libs import dynsec
from libs.settings import MqttTarget

log = logging.getLogger("gridfleet.broker_accounts")


def admin_target(platform_url: str, environ: Mapping[str, str]) -> MqttTarget:
    """The broker's administrator: same host and port as the platform's account, its own credentials."""
    password = environ.get("MQTT_ADMIN_PASSWORD", "")
    if not password:
        raise SystemExit("MQTT_ADMIN_PASSWORD is not set")
    admin = MqttTarget(platform_url)
    admin.username = environ.get("MQTT_ADMIN_USERNAME", "gridfleet-admin")
    admin.password = password
    return admin


async def main(attempts: int = 30) -> None:
    url = os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883")
    platform = MqttTarget(url)
    if not platform.username or not platform.password:
        raise SystemExit("MQTT_URL must carry the platform account's user and password")
    admin = admin_target(url, os.environ)
    for attempt in range(1, attempts + 1):
        try:
            await dynsec.ensure_platform_account(admin, platform.username, platform.password)
        except Exception as exc:  # the broker may still be starting
            if attempt == attempts:
                raise
            log.warning("broker not ready (%r), retrying", exc)
            await asyncio.sleep(2.0)
        else:
            log.info("platform account %r ready on %s:%s", platform.username, platform.host, platform.port)
            return


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(main())
