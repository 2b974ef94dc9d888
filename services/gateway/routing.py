"""Which service answers which part of `/api/v1`: the first path segment decides."""

from __future__ import annotations

ROUTES: dict[str, str] = {
    # registry: master data and identity (MyEMS paths)
    "users": "registry",
    "timezones": "registry",
    "energycategories": "registry",
    "gateways": "registry",
    "datasources": "registry",
    "points": "registry",
    "pointlimits": "registry",
    "meters": "registry",
    "spaces": "registry",
    "contacts": "registry",
    "costcenters": "registry",
    "tariffs": "registry",
    "instances": "registry",
    "energyitems": "registry",
    "protocols": "registry",
    "sensors": "registry",
    "tenanttypes": "registry",
    "storetypes": "registry",
    "tenants": "registry",
    "stores": "registry",
    "shopfloors": "registry",
    "equipments": "registry",
    "combinedequipments": "registry",
    "workingcalendars": "registry",
    "offlinemeters": "registry",
    "virtualmeters": "registry",
    "nonworkingdays": "registry",
    "offlinemeterfiles": "registry",
    # identity
    "apikeys": "registry",
    "privileges": "registry",
    "serviceproviders": "registry",
    "auditlogs": "registry",
    # fleet health (ingestion owns it)
    "fleet": "ingestion",
    # reporting
    "reports": "reporting",
    # command and control
    "commands": "command",
    "commandruns": "command",
    # onboarding and ownership
    "providers": "onboarding",
    "activationcodes": "onboarding",
    "devices": "onboarding",
    "licenses": "onboarding",
    # the Data API: the account lives with identity, the calls with reporting
    "dataapi": "registry",
    "data": "reporting",
}

# Paths anyone may call without credentials.
PUBLIC = {("PUT", "users/login")}


# Sub-resources served by another service than their parent: /instances/{id}/policies is control.
SUBROUTES: dict[tuple[str, str], str] = {
    ("instances", "policies"): "command",
    ("instances", "schedules"): "command",
    # commands bound to meters and spaces: the binding lives with the commands (services/command/bindings.py)
    ("meters", "commands"): "command",
    ("spaces", "commands"): "command",
    ("instances", "providers"): "onboarding",
}


def service_for(path: str) -> str | None:
    """The service owning a path below /api/v1 (no leading slash), or None for an unknown path."""
    parts = path.split("/")
    if len(parts) >= 3 and (parts[0], parts[2]) in SUBROUTES:
        return SUBROUTES[(parts[0], parts[2])]
    return ROUTES.get(parts[0])
