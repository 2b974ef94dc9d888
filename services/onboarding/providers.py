"""External signal providers and their links to installations (CONTRACTS.md §2.1 and §3).

- `/providers`: register a provider (name, webhook base URL, signing secret, the device groups it may steer).
  The secret is write-only: it is kept as given, because the platform signs with it (HMAC needs the secret
  itself, so it cannot be hashed), and no answer ever shows it.
- `/instances/{id}/providers`: the installation's owner (or an administrator) adds a provider, which creates
  the link in state `pending` and queues the `onboarding` webhook in the same transaction; removing it marks the
  link `offboarded`, queues `offboarding` and revokes the provider's MQTT access at once. The provider's answer
  to `onboarding` moves the link to `active` or `rejected` (services/onboarding/outbox.py). Every change is
  published as `ProviderLinkChanged` for the command service.
- `/internal/...`: the read model the command service loads at start-up.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from libs.service import Principal, ProblemError, ServiceContext, current_principal, get_context, not_found
from libs.settings import Settings
from services.onboarding import credentials, installations
from services.onboarding.outbox import enqueue, link_changed, publish_link
from services.onboarding.webhooks import offboarding_payload, onboarding_payload

router = APIRouter(tags=["providers"])
internal = APIRouter(prefix="/internal", include_in_schema=False)

MAX_ID = 2**53 - 1
SINGLE_LINE = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
# http(s)://host[:port][/path]: a host name, an IPv4 address or a bracketed IPv6 address; no user, query or fragment.
WEBHOOK_URL = (
    r"^https?://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
    r"(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$"
)
SECRET = r"^[\x21-\x7e]+$"

Group = Literal["battery", "solar", "ev", "hvac"]
ProviderId = Annotated[int, Path(ge=1, le=MAX_ID, description="The provider's id")]
InstallationId = Annotated[int, Path(ge=1, le=MAX_ID, description="The installation's id")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignalProviderIn(_Body):
    name: str = Field(min_length=1, max_length=255, pattern=SINGLE_LINE)
    webhook_base_url: str = Field(
        max_length=2048,
        pattern=WEBHOOK_URL,
        description="http:// or https:// base; the platform posts to `{base}/onboarding`, `/offboarding`, `/healthcheck`",
    )
    secret: str = Field(
        min_length=16,
        max_length=512,
        pattern=SECRET,
        description="Signing secret for Gridfleet-Signature (16 to 512 printable characters); write-only",
    )
    device_groups: list[Group] = Field(
        default_factory=list, max_length=4, description="The device groups this provider may steer"
    )


class SignalProviderUpdate(SignalProviderIn):
    secret: str | None = Field(  # type: ignore[assignment]
        None,
        min_length=16,
        max_length=512,
        pattern=SECRET,
        description="A new signing secret; the current one is kept when this is left out",
    )


class SignalProviderEnvelope(BaseModel):
    data: SignalProviderIn


class SignalProviderUpdateEnvelope(BaseModel):
    data: SignalProviderUpdate


class ProviderLinkIn(_Body):
    provider_id: int = Field(ge=1, le=MAX_ID)
    contract_number: str = Field(min_length=1, max_length=128, pattern=SINGLE_LINE)


class ProviderLinkEnvelope(BaseModel):
    data: ProviderLinkIn


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _groups(groups: list[str]) -> list[str]:
    order = ("battery", "solar", "ev", "hvac")
    return [group for group in order if group in set(groups)]


def _provider(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "webhook_base_url": row["webhook_base_url"],
        "device_groups": list(row["device_groups"]),
        "mqtt_username": f"provider-{row['id']}",
        "created_datetime": _iso(row["created_at"]),
        "modified_datetime": _iso(row["modified_at"]),
    }


def _conflict(field: str, message: str) -> ProblemError:
    return ProblemError(409, "Conflict", message, [{"field": field, "message": message}])


# -- providers ---------------------------------------------------------------------------------------


@router.post("/providers", status_code=201)
async def create_provider(
    body: SignalProviderEnvelope, response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    """Register a provider. The secret is never shown again; the answer carries the provider's id."""
    d = body.data
    try:
        row = await ctx.db.fetchrow(
            "INSERT INTO signal_providers (name, webhook_base_url, secret, mqtt_password, device_groups)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING *",
            d.name.strip(), d.webhook_base_url, d.secret, secrets.token_urlsafe(24), _groups(list(d.device_groups)),
        )  # fmt: skip
    except asyncpg.UniqueViolationError as exc:
        raise _conflict("name", f"a provider named {d.name.strip()!r} exists already") from exc
    assert row is not None
    response.headers["Location"] = f"/providers/{row['id']}"
    return _provider(row)


@router.get("/providers")
async def list_providers(
    response: Response,
    limit: int = Query(1000, ge=1, le=10000),
    offset: int = Query(0, ge=0, le=MAX_ID),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """The providers the caller's service provider registered (all of them for platform administrators)."""
    total = await ctx.db.fetchval("SELECT count(*) FROM signal_providers")
    rows = await ctx.db.fetch(f"SELECT * FROM signal_providers ORDER BY id LIMIT {limit} OFFSET {offset}")
    response.headers["X-Total-Count"] = str(total)
    return [_provider(row) for row in rows]


@router.get("/providers/{provider_id}")
async def get_provider(provider_id: ProviderId, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    row = await ctx.db.fetchrow("SELECT * FROM signal_providers WHERE id = $1", provider_id)
    if row is None:
        raise not_found("provider", provider_id)
    return _provider(row)


@router.put("/providers/{provider_id}")
async def update_provider(
    provider_id: ProviderId, body: SignalProviderUpdateEnvelope, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    """Change a provider; a change of its device groups applies at once to its onboarded installations."""
    d = body.data
    async with ctx.db.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                "UPDATE signal_providers SET name = $2, webhook_base_url = $3, secret = coalesce($4, secret),"
                " device_groups = $5, modified_at = now() WHERE id = $1 RETURNING *",
                provider_id, d.name.strip(), d.webhook_base_url, d.secret, _groups(list(d.device_groups)),
            )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            raise _conflict("name", f"a provider named {d.name.strip()!r} exists already") from exc
        if row is None:
            raise not_found("provider", provider_id)
        links = await conn.fetch(
            "SELECT * FROM provider_links WHERE signal_provider_id = $1 AND state IN ('pending', 'active')",
            provider_id,
        )
        for link in links:
            await publish_link(ctx, link_changed(link, list(row["device_groups"])))
    return _provider(row)


@router.delete("/providers/{provider_id}", status_code=204)
async def delete_provider(provider_id: ProviderId, ctx: ServiceContext = Depends(get_context)) -> Response:
    """Delete a provider that no installation uses any more and that has no webhook still to send."""
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT id FROM signal_providers WHERE id = $1 FOR UPDATE", provider_id)
        if row is None:
            raise not_found("provider", provider_id)
        in_use = await conn.fetchval(
            "SELECT count(*) FROM provider_links WHERE signal_provider_id = $1 AND state IN ('pending', 'active')",
            provider_id,
        )
        if in_use:
            raise _conflict(
                "id", f"provider {provider_id} is added to {in_use} installation(s); remove it there first"
            )
        sending = await conn.fetchval(
            "SELECT count(*) FROM webhook_outbox WHERE signal_provider_id = $1 AND status = 'pending'",
            provider_id,
        )
        if sending:
            raise _conflict(
                "id", f"provider {provider_id} still has {sending} webhook(s) to deliver; retry later"
            )
        await conn.execute("DELETE FROM webhook_outbox WHERE signal_provider_id = $1", provider_id)
        await conn.execute("DELETE FROM provider_links WHERE signal_provider_id = $1", provider_id)
        await conn.execute("DELETE FROM signal_providers WHERE id = $1", provider_id)
        await credentials.delete_provider(ctx.settings, provider_id)
    return Response(status_code=204)


# -- links to installations --------------------------------------------------------------------------


async def _require_owner_or_admin(
    ctx: ServiceContext, principal: Principal | None, installation_id: int
) -> None:
    """Only the installation's owner or an administrator adds or removes its providers (seed 002)."""
    if principal is None or principal.is_admin or principal.role in ("platform_admin", "provider_admin"):
        return
    for member in await installations.members(ctx, installation_id):
        if member.get("user_id") == principal.user_id and member.get("role") == "owner":
            return
    raise ProblemError(
        403,
        "Forbidden",
        f"only the owner of installation {installation_id} or an administrator may add or remove its providers",
    )


_LINK_SQL = """
SELECT l.*, p.name AS provider_name, p.device_groups,
       d.id::text AS d_id, d.event AS d_event, d.status AS d_status, d.attempts AS d_attempts,
       d.last_error AS d_last_error, d.last_status_code AS d_last_status_code, d.delivered_at AS d_delivered_at,
       d.next_attempt_at AS d_next_attempt_at, d.created_at AS d_created_at
FROM provider_links l JOIN signal_providers p ON p.id = l.signal_provider_id
LEFT JOIN LATERAL (
    SELECT * FROM webhook_outbox o
    WHERE o.signal_provider_id = l.signal_provider_id AND o.installation_id = l.installation_id
    ORDER BY o.seq DESC LIMIT 1
) d ON true
"""


def _link(row: asyncpg.Record) -> dict[str, Any]:
    delivery = None
    if row["d_id"] is not None:
        delivery = {
            "id": row["d_id"],
            "event": row["d_event"],
            "status": row["d_status"],
            "attempts": row["d_attempts"],
            "last_error": row["d_last_error"],
            "last_status_code": row["d_last_status_code"],
            "delivered_at": _iso(row["d_delivered_at"]),
            "next_attempt_at": _iso(row["d_next_attempt_at"]) if row["d_status"] == "pending" else None,
            "created_at": _iso(row["d_created_at"]),
        }
    return {
        "provider_id": row["signal_provider_id"],
        "provider_name": row["provider_name"],
        "installation_id": row["installation_id"],
        "contract_number": row["contract_number"],
        "state": row["state"],
        "reason": row["reason"],
        "device_groups": list(row["device_groups"]),
        "created_datetime": _iso(row["created_at"]),
        "changed_datetime": _iso(row["changed_at"]),
        "last_delivery": delivery,
    }


def provider_mqtt_url(settings: Settings) -> str:
    """The broker address providers are given: the setting, else the platform's broker without credentials."""
    if settings.provider_mqtt_url:
        return settings.provider_mqtt_url
    target = settings.mqtt
    return f"mqtt://{target.host}:{target.port}"


@router.post("/instances/{installation_id}/providers", status_code=201)
async def add_provider(
    installation_id: InstallationId,
    body: ProviderLinkEnvelope,
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any]:
    """Add a provider to the installation: the link is `pending` and the `onboarding` webhook is queued."""
    principal = current_principal(request)
    installation = await installations.installation(ctx, installation_id)
    await _require_owner_or_admin(ctx, principal, installation_id)
    d = body.data
    provider = await ctx.db.fetchrow("SELECT * FROM signal_providers WHERE id = $1", d.provider_id)
    if provider is None:
        message = f"there is no provider {d.provider_id}"
        raise ProblemError(400, "Invalid input", message, [{"field": "provider_id", "message": message}])
    groups = await installations.device_groups(ctx, installation_id)
    payload = onboarding_payload(
        provider_id=provider["id"],
        installation=installation,
        contract_number=d.contract_number.strip(),
        groups=groups,
        allowed=list(provider["device_groups"]),
        mqtt_url=provider_mqtt_url(ctx.settings),
        password="",  # added as the webhook leaves (services/onboarding/outbox.py)
        topic_prefix=ctx.settings.topic_prefix,
        fallback_timeout_s=ctx.settings.provider_fallback_timeout_s,
    )
    async with ctx.db.acquire() as conn, conn.transaction():
        link = await conn.fetchrow(
            "INSERT INTO provider_links (signal_provider_id, installation_id, provider_id, contract_number, state)"
            " VALUES ($1, $2, $3, $4, 'pending')"
            " ON CONFLICT (signal_provider_id, installation_id) DO UPDATE SET state = 'pending',"
            " contract_number = EXCLUDED.contract_number, reason = NULL, epoch = provider_links.epoch + 1,"
            " changed_at = now(), last_health = NULL, health_due_at = NULL"
            " WHERE provider_links.state IN ('rejected', 'offboarded') RETURNING *",
            provider["id"], installation_id, provider["provider_id"], d.contract_number.strip(),
        )  # fmt: skip
        if link is None:
            raise _conflict(
                "provider_id", f"provider {provider['id']} is already added to installation {installation_id}"
            )
        await enqueue(
            conn,
            signal_provider_id=provider["id"],
            installation_id=installation_id,
            provider_id=provider["provider_id"],
            epoch=link["epoch"],
            event="onboarding",
            payload=payload.model_dump(mode="json"),
        )
        await credentials.grant_installation(
            ctx.settings, provider["id"], installation_id, provider["mqtt_password"]
        )
        await publish_link(ctx, link_changed(link, list(provider["device_groups"])))
        row = await conn.fetchrow(_LINK_SQL + " WHERE l.signal_provider_id = $1 AND l.installation_id = $2",
                                  provider["id"], installation_id)  # fmt: skip
    wake(ctx)
    assert row is not None
    response.headers["Location"] = f"/instances/{installation_id}/providers/{provider['id']}"
    return _link(row)


@router.get("/instances/{installation_id}/providers")
async def list_installation_providers(
    installation_id: InstallationId, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    """Each provider added to the installation: its state, the reason of a rejection, the last webhook."""
    await installations.installation(ctx, installation_id)
    rows = await ctx.db.fetch(
        _LINK_SQL + " WHERE l.installation_id = $1 ORDER BY l.created_at, l.signal_provider_id",
        installation_id,
    )
    return [_link(row) for row in rows]


@router.get("/instances/{installation_id}/providers/{provider_id}")
async def get_installation_provider(
    installation_id: InstallationId, provider_id: ProviderId, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    await installations.installation(ctx, installation_id)
    row = await ctx.db.fetchrow(
        _LINK_SQL + " WHERE l.installation_id = $1 AND l.signal_provider_id = $2",
        installation_id,
        provider_id,
    )
    if row is None:
        raise ProblemError(
            404, "Not found", f"provider {provider_id} is not added to installation {installation_id}"
        )
    return _link(row)


@router.delete("/instances/{installation_id}/providers/{provider_id}", status_code=204)
async def remove_provider(
    installation_id: InstallationId,
    provider_id: ProviderId,
    request: Request,
    ctx: ServiceContext = Depends(get_context),
) -> Response:
    """Remove a provider: its control stops at once (event and broker access), `offboarding` is queued."""
    principal = current_principal(request)
    installation = await installations.installation(ctx, installation_id)
    await _require_owner_or_admin(ctx, principal, installation_id)
    async with ctx.db.acquire() as conn, conn.transaction():
        link = await conn.fetchrow(
            "SELECT l.*, p.device_groups FROM provider_links l JOIN signal_providers p ON p.id = l.signal_provider_id"
            " WHERE l.signal_provider_id = $1 AND l.installation_id = $2 FOR UPDATE OF l",
            provider_id, installation_id,
        )  # fmt: skip
        if link is None:
            raise ProblemError(
                404, "Not found", f"provider {provider_id} is not added to installation {installation_id}"
            )
        if link["state"] == "offboarded":
            return Response(status_code=204)  # removed already: nothing changes
        who = "an administrator" if principal is None or principal.role != "owner" else "the owner"
        changed = await conn.fetchrow(
            "UPDATE provider_links SET state = 'offboarded', reason = $3, changed_at = now(), health_due_at = NULL"
            " WHERE signal_provider_id = $1 AND installation_id = $2 RETURNING *",
            provider_id, installation_id, f"removed by {who}",
        )  # fmt: skip
        assert changed is not None
        if link["state"] in ("pending", "active"):
            payload = offboarding_payload(
                installation_id,
                str(installation.get("serial") or ""),
                link["contract_number"],
                f"removed by {who}",
            )
            await enqueue(
                conn,
                signal_provider_id=provider_id,
                installation_id=installation_id,
                provider_id=link["provider_id"],
                epoch=link["epoch"],
                event="offboarding",
                payload=payload.model_dump(mode="json"),
            )
        await credentials.revoke_installation(ctx.settings, provider_id, installation_id)
        await publish_link(ctx, link_changed(changed, list(link["device_groups"])))
    wake(ctx)
    return Response(status_code=204)


def wake(ctx: ServiceContext) -> None:
    """Tell this process's outbox worker that a webhook is waiting (other replicas find it by polling)."""
    worker = ctx.state.get("outbox")
    if worker is not None:
        worker.wake.set()


# -- the read model for the command service ----------------------------------------------------------


def _read_model(row: asyncpg.Record) -> dict[str, Any]:
    steering = row["state"] in ("pending", "active")
    return {
        "provider_id": row["signal_provider_id"],
        "installation_id": row["installation_id"],
        "state": row["state"],
        "device_groups": list(row["device_groups"]) if steering else [],
    }


_READ_SQL = (
    "SELECT l.signal_provider_id, l.installation_id, l.state, p.device_groups"
    " FROM provider_links l JOIN signal_providers p ON p.id = l.signal_provider_id"
)


@internal.get("/providers/{provider_id}/installations/{installation_id}")
async def link_read_model(
    provider_id: ProviderId, installation_id: InstallationId, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    row = await ctx.db.fetchrow(
        _READ_SQL + " WHERE l.signal_provider_id = $1 AND l.installation_id = $2",
        provider_id,
        installation_id,
    )
    if row is None:
        raise ProblemError(
            404, "Not found", f"provider {provider_id} is not added to installation {installation_id}"
        )
    return _read_model(row)


@internal.get("/links")
async def links_read_model(
    state: Literal["pending", "active", "rejected", "offboarded"] | None = Query(None),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    """Every link (in `state`, when given), for the command service's copy at start-up."""
    if state is None:
        rows = await ctx.db.fetch(_READ_SQL + " ORDER BY l.signal_provider_id, l.installation_id")
    else:
        rows = await ctx.db.fetch(
            _READ_SQL + " WHERE l.state = $1 ORDER BY l.signal_provider_id, l.installation_id", state
        )
    return [_read_model(row) for row in rows]


router.include_router(internal)
