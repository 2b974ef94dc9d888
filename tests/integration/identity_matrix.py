"""The expected-access table for the authorization matrix in test_identity.py.

Written out by hand from the access design (who may read and who may change each part of `/api/v1`), on
purpose NOT computed from services/gateway/policy.py: the test compares what the running gateway answers with
this table, so a change of the policy needs a matching, reviewed change here. A first path segment missing
from ACCESS makes the matrix test fail, so a new route cannot ship unclassified.
"""

from __future__ import annotations

from typing import Literal

ROLES = ("platform_admin", "provider_admin", "operator", "installer", "owner", "guest")

_PLATFORM = frozenset({"platform_admin"})
_ADMINS = frozenset({"platform_admin", "provider_admin"})
_STAFF = frozenset({"platform_admin", "provider_admin", "operator", "installer"})
_COMMISSIONING = frozenset({"platform_admin", "provider_admin", "installer"})
_STEERING = frozenset({"platform_admin", "provider_admin", "operator"})
_EVERYONE = frozenset(ROLES)
_NOBODY: frozenset[str] = frozenset()

# First path segment below /api/v1 -> (roles that may read (GET), roles that may change (any other method)).
ACCESS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # acquisition master data: staff read, commissioning staff change
    "gateways": (_STAFF, _COMMISSIONING),
    "datasources": (_STAFF, _COMMISSIONING),
    "points": (_STAFF, _COMMISSIONING),
    "pointlimits": (_STAFF, _COMMISSIONING),
    "meters": (_STAFF, _COMMISSIONING),
    # master data the provider's administrators keep
    "spaces": (_STAFF, _ADMINS),
    "contacts": (_STAFF, _ADMINS),
    "sensors": (_STAFF, _ADMINS),
    "tenants": (_STAFF, _ADMINS),
    "tenanttypes": (_STAFF, _ADMINS),
    "stores": (_STAFF, _ADMINS),
    "storetypes": (_STAFF, _ADMINS),
    "shopfloors": (_STAFF, _ADMINS),
    "equipments": (_STAFF, _ADMINS),
    "combinedequipments": (_STAFF, _ADMINS),
    "workingcalendars": (_STAFF, _ADMINS),
    "nonworkingdays": (_STAFF, _ADMINS),
    "offlinemeters": (_STAFF, _ADMINS),
    "offlinemeterfiles": (_STAFF, _ADMINS),
    "virtualmeters": (_STAFF, _ADMINS),
    "energyitems": (_STAFF, _ADMINS),
    # billing: operators see prices but never change them
    "costcenters": (_STAFF, _ADMINS),
    "tariffs": (_STAFF, _ADMINS),
    # platform-wide lookups
    "timezones": (_EVERYONE, _NOBODY),
    "energycategories": (_EVERYONE, _PLATFORM),
    "protocols": (_STAFF, _PLATFORM),
    # installations: owners and guests read theirs; guests never change one (except leaving it, below)
    "instances": (_EVERYONE, _STAFF | {"owner"}),
    # reports and control
    # owners and guests read the reports their installations share (services/reporting narrows them)
    "reports": (_EVERYONE, _NOBODY),
    "commands": (_STAFF, _STEERING),
    "commandruns": (_STAFF, _NOBODY),
    "providers": (_STAFF, _ADMINS),
    # ownership (services/onboarding): codes are the provider's; devices and licenses are every user's own
    "activationcodes": (_ADMINS, _ADMINS),
    "devices": (_EVERYONE, _EVERYONE),
    "licenses": (_EVERYONE, _EVERYONE),
    # the Data API: the account is an administrator's; the calls are read-only for any holder
    "dataapi": (_ADMINS, _ADMINS),
    "data": (_EVERYONE, _NOBODY),
    # the fleet view (services/ingestion/api.py): controllers' health, read-only, for whoever sees gateways
    "fleet": (_STAFF, _NOBODY),
    # identity
    "users": (_ADMINS, _ADMINS),
    # MyEMS privileges (services/registry/resources/myems.py): which spaces a user is narrowed to; an
    # administrator's business, like the users they are given to
    "privileges": (_ADMINS, _ADMINS),
    "apikeys": (_EVERYONE, _EVERYONE),
    "serviceproviders": (_ADMINS, _PLATFORM),
    "auditlogs": (_ADMINS, _NOBODY),
}

# Anyone may call these, without credentials.
# Live and scheduled control: steering staff, and owners/guests (the command service narrows them further).
SUB_ACCESS: dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = {
    ("instances", "policies"): (_EVERYONE, _STEERING | {"owner", "guest"}),
    ("instances", "schedules"): (_EVERYONE, _STEERING | {"owner", "guest"}),
    # commands bound to meters and spaces (served by the command service): as the meter or space itself
    ("meters", "commands"): (_STAFF, _COMMISSIONING),
    ("spaces", "commands"): (_STAFF, _ADMINS),
    ("instances", "providers"): (_EVERYONE, _ADMINS | {"owner"}),
}

PUBLIC = frozenset({("PUT", "users/login")})
# Every user logged in with a password may call these about themselves, whatever the table says.
SELF_SERVICE = frozenset({("PUT", "users/logout"), ("PUT", "users/changepassword")})

Outcome = Literal["unauthenticated", "denied", "allowed"]


def leaving(method: str, path: str, user_id: int | None) -> bool:
    """DELETE instances/{id}/users/{own id}: a member may always remove themselves from an installation."""
    parts = path.strip("/").split("/")
    return (
        method == "DELETE"
        and len(parts) == 4
        and parts[0] == "instances"
        and parts[2] == "users"
        and user_id is not None
        and parts[3] == str(user_id)
    )


def expected(*, role: str | None, via_key: bool, user_id: int | None, method: str, path: str) -> Outcome:
    """What the gateway must answer. `role` None: no valid credential; `path` is concrete, below /api/v1."""
    path = path.strip("/")
    if (method, path) in PUBLIC:
        return "allowed"
    if role is None:
        return "unauthenticated"
    if not via_key and ((method, path) in SELF_SERVICE or leaving(method, path, user_id)):
        return "allowed"
    reading = method in ("GET", "HEAD")
    if via_key and not reading:
        return "denied"  # API keys are read-only
    parts = path.split("/")
    readers, writers = (
        SUB_ACCESS.get((parts[0], parts[2]), ACCESS[parts[0]]) if len(parts) >= 3 else ACCESS[parts[0]]
    )
    return "allowed" if role in (readers if reading else writers) else "denied"
