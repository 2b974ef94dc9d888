"""Who may call what: roles by route group, checked at the gateway before any call is forwarded.

The owning service then narrows further: row-level security shows each caller only its provider's rows, and
routes with finer rules (users, installations) check them. Every path of `/api/v1` belongs to exactly one
group below; a path with no group is refused, so a new route cannot ship unchecked (and the authorization
matrix test fails until it is classified).
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.service import Principal

PLATFORM = ("platform_admin",)
ADMINS = ("platform_admin", "provider_admin")
STAFF = ("platform_admin", "provider_admin", "operator", "installer")
COMMISSIONING = ("platform_admin", "provider_admin", "installer")
STEERING = ("platform_admin", "provider_admin", "operator")
EVERYONE = ("platform_admin", "provider_admin", "operator", "installer", "owner", "guest")


@dataclass(frozen=True)
class Rule:
    read: tuple[str, ...]
    write: tuple[str, ...]


# First path segment under /api/v1 -> who may read (GET) and who may write (anything else).
RULES: dict[str, Rule] = {
    # master data a provider commissions
    **{
        head: Rule(STAFF, COMMISSIONING)
        for head in ("gateways", "datasources", "points", "pointlimits", "meters")
    },
    # master data a provider administers
    **{
        head: Rule(STAFF, ADMINS)
        for head in (
            "spaces",
            "contacts",
            "sensors",
            "tenants",
            "tenanttypes",
            "stores",
            "storetypes",
            "shopfloors",
            "equipments",
            "combinedequipments",
            "workingcalendars",
            "nonworkingdays",
            "offlinemeters",
            "offlinemeterfiles",
            "virtualmeters",
            "energyitems",
        )
    },
    # billing: operators steer but never change prices
    "costcenters": Rule(STAFF, ADMINS),
    "tariffs": Rule(STAFF, ADMINS),
    # platform-wide lookups
    "timezones": Rule(EVERYONE, ()),
    "energycategories": Rule(EVERYONE, PLATFORM),
    "protocols": Rule(STAFF, PLATFORM),
    # installations: owners and guests see their own (the registry filters), staff see their provider's
    "instances": Rule(EVERYONE, (*STAFF, "owner")),
    # fleet health
    "fleet": Rule(STAFF, ()),
    # reports and control
    # owners and guests too: the reporting service narrows them to the installations sharing their reports
    "reports": Rule(EVERYONE, ()),
    "commands": Rule(STAFF, STEERING),
    "commandruns": Rule(STAFF, ()),
    "providers": Rule(STAFF, ADMINS),
    # ownership: providers issue codes; users activate, claim and share what they own (onboarding checks who)
    "activationcodes": Rule(ADMINS, ADMINS),
    "devices": Rule(EVERYONE, EVERYONE),
    "licenses": Rule(EVERYONE, EVERYONE),
    # the Data API: administrators keep the account; calls are read-only and narrowed by the key's scope/package
    "dataapi": Rule(ADMINS, ADMINS),
    "data": Rule(EVERYONE, ()),
    # identity
    "users": Rule(ADMINS, ADMINS),
    "privileges": Rule(ADMINS, ADMINS),
    "apikeys": Rule(EVERYONE, EVERYONE),
    "serviceproviders": Rule(ADMINS, PLATFORM),
    "auditlogs": Rule(ADMINS, ()),
}

# Sub-resources with rules of their own: live and scheduled control of an installation. Owners and guests
# may steer where their membership allows writing (the command service checks that); installers may not.
SUBRULES: dict[tuple[str, str], Rule] = {
    ("instances", "policies"): Rule(EVERYONE, (*STEERING, "owner", "guest")),
    ("instances", "schedules"): Rule(EVERYONE, (*STEERING, "owner", "guest")),
    # commands bound to meters and spaces: the parent's rule (binding is a change of the meter or space)
    ("meters", "commands"): Rule(STAFF, COMMISSIONING),
    ("spaces", "commands"): Rule(STAFF, ADMINS),
    # external signal providers of an installation: its owner adds and removes them, as do administrators
    ("instances", "providers"): Rule(EVERYONE, (*ADMINS, "owner")),
}

# Routes every logged-in user may call whatever the group says (about themselves only).
SELF_SERVICE = {("PUT", "users/logout"), ("PUT", "users/changepassword")}


def _leaving(principal: Principal, method: str, path: str) -> bool:
    """A member of an installation may always remove themselves from it."""
    parts = path.split("/")
    return (
        method == "DELETE" and len(parts) == 4 and parts[0] == "instances" and parts[2] == "users"
        and parts[3] == str(principal.user_id)
    )  # fmt: skip


class Denied(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def authorize(principal: Principal, method: str, path: str) -> None:
    """Raise Denied (403) unless the principal's role may make this call."""
    path = path.strip("/")
    if principal.via_key is False and ((method, path) in SELF_SERVICE or _leaving(principal, method, path)):
        return
    parts = path.split("/")
    head = parts[0]
    if principal.data_scope is not None and head != "data":
        raise Denied("a Data API key calls /data only")
    rule = SUBRULES.get((parts[0], parts[2])) if len(parts) >= 3 else None
    rule = rule or RULES.get(head)
    if rule is None:
        raise Denied(f"no access rule covers /{head}")
    reading = method in ("GET", "HEAD")
    if principal.via_key and not reading:
        raise Denied("API keys are read-only; log in to change anything")
    allowed = rule.read if reading else rule.write
    if principal.role not in allowed:
        verb = "read" if reading else "change"
        raise Denied(f"the {principal.role} role may not {verb} /{head}")
