"""Settings shared by every gridfleet process.

One pydantic-settings model, read from the environment: `GRIDFLEET_*` variables plus the two conventional
URLs, `DATABASE_URL` and `MQTT_URL`. A service reads only this model; nothing else looks at `os.environ`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ServiceName = Literal[
    "gateway",
    "registry",
    "ingestion",
    "normalisation",
    "aggregation",
    "reporting",
    "command",
    "onboarding",
]

SERVICES: tuple[ServiceName, ...] = (
    "gateway",
    "registry",
    "ingestion",
    "normalisation",
    "aggregation",
    "reporting",
    "command",
    "onboarding",
)


class MqttTarget:
    """Host, port and credentials parsed from an `mqtt://user:pass@host:port` URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp", ""):
            raise ValueError(f"MQTT_URL must start with mqtt:// (got {parts.scheme!r})")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None

    def __repr__(self) -> str:
        return f"MqttTarget({self.host}:{self.port})"


class Settings(BaseSettings):
    """Every setting of every service; unset values take the defaults below."""

    model_config = SettingsConfigDict(env_prefix="GRIDFLEET_", extra="ignore")

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/test",
        validation_alias=AliasChoices("DATABASE_URL", "GRIDFLEET_DATABASE_URL"),
    )
    mqtt_url: str = Field(
        "mqtt://127.0.0.1:1883",
        validation_alias=AliasChoices("MQTT_URL", "GRIDFLEET_MQTT_URL"),
    )
    schema_prefix: str = Field("gf_", pattern=r"^[a-z_][a-z0-9_]{0,30}$")
    topic_prefix: str = Field("", pattern=r"^([A-Za-z0-9_\-]+/)*$")
    admin_password: str = "change-me-now"
    internal_token: str = "gridfleet-internal-dev-token"
    service_host: str = "127.0.0.1"
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    # Services listen on port_base + their index in SERVICES (gateway first).
    port_base: int = Field(8000, ge=1, le=65000)
    # The broker enforces per-gateway accounts (Mosquitto dynamic security); the registry keeps them in step.
    mqtt_dynsec: bool = False
    # Modbus TCP polling (ingestion): seconds between polls of each data source.
    modbus_interval_s: float = Field(10.0, gt=0)
    # How long the broker keeps a disconnected service's session (and its queued messages).
    mqtt_session_expiry_s: int = Field(7 * 24 * 3600, ge=0)
    log_level: str = "INFO"
    log_json: bool = True
    db_pool_min: int = 1
    db_pool_max: int = 8
    # A gateway is online while it was seen within this many seconds.
    gateway_online_window_s: int = 300
    replica: str = "0"
    # Gateway rate limits: per user or key, and per address for unauthenticated calls (login).
    rate_limit_per_s: float = Field(50.0, gt=0)
    rate_limit_burst: int = Field(200, ge=1)
    login_rate_per_min: float = Field(30.0, gt=0)
    # Provider webhooks (onboarding): retry backoff from base doubling to cap, for the retry window; timeout.
    webhook_backoff_base_s: float = Field(1.0, gt=0)
    webhook_backoff_cap_s: float = Field(3600.0, gt=0)
    webhook_retry_window_s: float = Field(72 * 3600.0, gt=0)
    webhook_timeout_s: float = Field(10.0, gt=0)
    provider_healthcheck_interval_s: float = Field(300.0, gt=0)
    # The broker address handed to providers in onboarding (default: MQTT_URL without its credentials).
    provider_mqtt_url: str | None = None
    provider_fallback_timeout_s: int = Field(900, ge=1)

    registry_url: str | None = None
    ingestion_url: str | None = None
    normalisation_url: str | None = None
    aggregation_url: str | None = None
    reporting_url: str | None = None
    command_url: str | None = None
    onboarding_url: str | None = None

    @property
    def mqtt(self) -> MqttTarget:
        return MqttTarget(self.mqtt_url)

    def schema_for(self, service: str) -> str:
        """The Postgres schema a service owns."""
        return f"{self.schema_prefix}{service}"

    def port_for(self, service: str) -> int:
        return self.port_base + SERVICES.index(service)

    def url_for(self, service: str) -> str:
        """Base URL of a service's HTTP surface (overridable per service, e.g. in docker-compose)."""
        override = getattr(self, f"{service}_url", None)
        if override:
            return str(override).rstrip("/")
        return f"http://{self.service_host}:{self.port_for(service)}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
