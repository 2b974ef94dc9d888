"""Onboarding events: which external signal provider may steer which installation, and which groups."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from proto_schemas.base import Message

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
