"""Onboarding: which external signal provider may steer which installation (the bus event), and the webhooks
the platform sends to providers with the answer they give (CONTRACTS.md §2.1)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from proto_schemas.base import Message, Timestamp

LinkState = Literal["pending", "active", "rejected", "offboarded"]


class ProviderLinkChanged(Message):
    """The onboarding service changed a provider's state for an installation (onboarded, accepted, removed).

    The command service keeps its own copy from these: a provider steers an installation only while the
    link is `active`, and only the device groups listed; `offboarded` or `rejected` ends its control at once.
    """

    schema_name = "gridfleet.provider_link_changed"

    provider_id: int = Field(ge=1)
    installation_id: int = Field(ge=1)
    state: LinkState
    device_groups: list[Literal["battery", "solar", "ev", "hvac"]] = Field(
        default_factory=list, description="The groups this provider may steer on this installation"
    )
    changed_ms: int = Field(description="Epoch milliseconds of the change")


# -- Webhooks the platform sends to a provider (CONTRACTS.md §2.1) ------------------------------------------

DeviceGroupName = Literal["battery", "solar", "ev", "hvac"]
WebhookEvent = Literal["onboarding", "offboarding", "healthcheck"]


class WebhookAddress(BaseModel):
    street: str | None = None
    postal_code: str | None = None
    city: str | None = None
    country: str | None = Field(None, description="ISO 3166-1 alpha-2")


class OnboardingInstallation(BaseModel):
    id: int = Field(description="The installation's id in gridfleet")
    serial: str
    contract_number: str = Field(
        description="The provider's contract for this installation, as the owner gave it"
    )
    address: WebhookAddress
    timezone: str = Field(description="IANA time zone, e.g. Europe/Amsterdam")


class WebhookDevice(BaseModel):
    id: str
    type: str
    vendor: str
    model: str


class WebhookDeviceGroup(BaseModel):
    group: DeviceGroupName
    devices: list[WebhookDevice] = Field(default_factory=list)
    max_charge_w: float | None = None
    max_discharge_w: float | None = None
    capacity_wh: float | None = None
    max_power_w: float | None = None


class ControlTopics(BaseModel):
    live: str = Field(description="Provider → platform: live setpoints")
    schedule: str = Field(description="Provider → platform: plans of intervals")
    ack: str = Field(description="Platform → provider: acknowledgements")
    state: str = Field(description="Platform → provider, retained: the installation's state")


class ControlAccess(BaseModel):
    mqtt_url: str = Field(description="The broker the provider connects to")
    username: str = Field(description="The provider's broker account, `provider-{provider_id}`")
    password: str = Field(description="Its password; the same for every installation of the provider")
    topics: ControlTopics
    fallback_timeout_s: int = Field(
        description="Seconds without a policy in force after which the controller returns to local control"
    )


class OnboardingWebhook(Message):
    """`POST {webhook_base_url}/onboarding`: the owner added the provider to an installation."""

    schema_name = "gridfleet.webhook_onboarding"

    installation: OnboardingInstallation
    device_groups: list[WebhookDeviceGroup] = Field(description="Only the groups the provider may steer")
    control: ControlAccess


class InstallationRef(BaseModel):
    id: int
    serial: str
    contract_number: str


class OffboardingWebhook(Message):
    """`POST {webhook_base_url}/offboarding`: the provider was removed; its control has already stopped."""

    schema_name = "gridfleet.webhook_offboarding"

    installation: InstallationRef
    reason: str


class HealthSystem(BaseModel):
    status: Literal["ok", "degraded", "error"]
    online: bool = Field(description="At least one of the installation's controllers is online")


class HealthDevice(BaseModel):
    id: str
    group: DeviceGroupName
    status: Literal["ok", "offline", "error"]
    error: str | None = Field(None, description="What is wrong, e.g. a lost connection to a data source")


class HealthcheckWebhook(Message):
    """`POST {webhook_base_url}/healthcheck`: every few minutes and on every change of status."""

    schema_name = "gridfleet.webhook_healthcheck"

    installation: InstallationRef
    system: HealthSystem
    devices: list[HealthDevice]
    ts: Timestamp


class OnboardingAnswer(Message):
    """What the provider answers to `onboarding`: accepted, or rejected with a reason."""

    schema_name = "gridfleet.webhook_onboarding_answer"

    status: Literal["accepted", "rejected"]
    reason: str | None = Field(None, max_length=1024)
