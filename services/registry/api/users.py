"""Identity: users (MyEMS `/users`), sessions, API keys, service providers, and the checks the gateway runs.

Passwords are argon2 hashes; session tokens and API keys are random and stored only as SHA-256 digests.
Five failed logins lock an account for fifteen minutes. Every list and lookup here runs under row-level
security, so a provider's administrator only ever sees that provider's users and keys.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field, model_validator

from libs.auth import hash_password, new_token, token_digest, verify_password
from libs.service import (
    Principal,
    ProblemError,
    ServiceContext,
    bad_request,
    current_principal,
    get_context,
    not_found,
)
from services.registry.api import dataapi
from services.registry.api.common import (
    Body,
    Description,
    Envelope,
    Name,
    Page,
    fetch_page,
    page_params,
    publish_change,
)

router = APIRouter(tags=["users"])

SESSION_LIFETIME = timedelta(hours=8)
MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
KEY_PREFIX = "gfk_"

Role = Literal["platform_admin", "provider_admin", "operator", "installer", "owner", "guest"]
# Roles that manage users and keys of their provider.
USER_ADMINS = ("platform_admin", "provider_admin")


def _require(principal: Principal | None, *roles: str) -> Principal:
    if principal is None:
        raise ProblemError(401, "Unauthorized", "log in first")
    if principal.role not in roles:
        raise ProblemError(403, "Forbidden", f"this needs one of the roles: {', '.join(roles)}")
    return principal


# -- login and sessions ------------------------------------------------------------------------------


class LoginData(Body):
    name: str | None = Field(None, min_length=1, max_length=255, description="User name or e-mail")
    email: str | None = Field(None, min_length=3, max_length=255)
    password: str = Field(min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _who(self) -> LoginData:
        if not self.name and not self.email:
            raise ValueError("name or email is required")
        return self


class LoginResult(BaseModel):
    id: int
    name: str
    uuid: str
    display_name: str
    email: str | None
    is_admin: bool
    role: str
    provider_id: int | None
    account_expiration_datetime: str | None
    password_expiration_datetime: str | None
    token: str


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@router.put("/users/login", response_model=LoginResult)
async def login(body: Envelope[LoginData], ctx: ServiceContext = Depends(get_context)) -> LoginResult:
    """Exchange a name (or e-mail) and password for a session token (`User-UUID` + `Token`, or Bearer)."""
    who = (body.data.name or body.data.email or "").strip()
    now = datetime.now(UTC)
    async with ctx.db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM users WHERE name = $1 OR lower(email) = lower($1) ORDER BY (name = $1) DESC LIMIT 1 FOR UPDATE",
            who,
        )
        if row is None:
            # Same work and answer as a wrong password, so names cannot be probed.
            verify_password(_DUMMY_HASH, body.data.password)
            raise ProblemError(400, "Invalid credentials", "the user name or password is wrong")
        if row["locked_until"] is not None and row["locked_until"] > now:
            raise ProblemError(
                423,
                "Locked",
                f"too many failed logins; the account is locked until {row['locked_until'].isoformat()}",
            )
        refusal: ProblemError | None = None
        if not verify_password(row["password_hash"], body.data.password):
            failed = row["failed_logins"] + 1
            locked = now + LOCKOUT if failed >= MAX_FAILED_LOGINS else None
            await conn.execute(
                "UPDATE users SET failed_logins = $2, locked_until = $3 WHERE id = $1",
                row["id"], 0 if locked else failed, locked,
            )  # fmt: skip
            refusal = (
                ProblemError(
                    423, "Locked", f"too many failed logins; the account is locked until {locked.isoformat()}"
                )
                if locked
                else ProblemError(400, "Invalid credentials", "the user name or password is wrong")
            )
    # Raised after the transaction, so the failed attempt stays counted.
    if refusal is not None:
        raise refusal
    async with ctx.db.acquire() as conn, conn.transaction():
        if row["is_disabled"]:
            raise ProblemError(403, "Disabled", "this account is disabled")
        if row["account_expires_at"] is not None and row["account_expires_at"] <= now:
            raise ProblemError(403, "Expired", "this account has expired")
        if row["password_expires_at"] is not None and row["password_expires_at"] <= now:
            raise ProblemError(
                403, "Password expired", "the password has expired; ask an administrator to reset it"
            )
        token = new_token(64)  # 128 hex characters, as MyEMS issues
        await conn.execute("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1", row["id"])
        await conn.execute(
            "INSERT INTO user_sessions (token_digest, user_id, expires_at) VALUES ($1, $2, $3)",
            token_digest(token), row["id"], now + SESSION_LIFETIME,
        )  # fmt: skip
        await conn.execute("DELETE FROM user_sessions WHERE expires_at < now() - interval '1 day'")
    return LoginResult(
        id=row["id"],
        name=row["name"],
        uuid=str(row["uuid"]),
        display_name=row["display_name"],
        email=row["email"],
        is_admin=row["role"] == "platform_admin",
        role=row["role"],
        provider_id=row["provider_id"],
        account_expiration_datetime=_iso(row["account_expires_at"]),
        password_expiration_datetime=_iso(row["password_expires_at"]),
        token=token,
    )


_DUMMY_HASH = hash_password(secrets.token_hex(16))


@router.put("/users/logout", status_code=204)
async def logout(request: Request, ctx: ServiceContext = Depends(get_context)) -> Response:
    """End the session of the token sent; it stops working at once."""
    token = request.headers.get("Token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
    await ctx.db.execute(
        "UPDATE user_sessions SET revoked_at = now() WHERE token_digest = $1 AND revoked_at IS NULL",
        token_digest(token.strip()),
    )
    return Response(status_code=204)


class VerifyRequest(BaseModel):
    token: str | None = None
    user_uuid: str | None = None
    api_key: str | None = None


_PRINCIPAL_SQL = (
    "SELECT u.id, u.uuid, u.name, u.role, u.provider_id, u.is_disabled, u.account_expires_at, u.privilege_id"
    " FROM users u"
)


def _principal(row: asyncpg.Record, via_key: bool = False) -> dict[str, Any]:
    now = datetime.now(UTC)
    if row["is_disabled"] or (row["account_expires_at"] is not None and row["account_expires_at"] <= now):
        raise ProblemError(401, "Unauthorized", "the account is disabled or expired")
    principal = Principal(
        user_id=row["id"],
        user_uuid=str(row["uuid"]),
        name=row["name"],
        is_admin=row["role"] == "platform_admin",
        provider_id=row["provider_id"],
        role=row["role"],
        via_key=via_key,
    )
    return principal.__dict__


@router.post("/internal/auth/verify", include_in_schema=False)
async def verify(body: VerifyRequest, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    """The principal behind a session token or an API key, or 401."""
    if body.api_key and body.api_key.strip().startswith(dataapi.DATA_KEY_PREFIX):
        return await dataapi.verify_data_key(ctx, body.api_key.strip())
    if body.api_key:
        parts = body.api_key.strip().split("_")
        if len(parts) != 3 or f"{parts[0]}_" != KEY_PREFIX:
            raise ProblemError(401, "Unauthorized", "the API key is malformed")
        key = await ctx.db.fetchrow(
            "SELECT * FROM api_keys WHERE prefix = $1 AND key_digest = $2",
            parts[1],
            token_digest(body.api_key.strip()),
        )
        if key is None or key["revoked_at"] is not None or key["expires_at"] <= datetime.now(UTC):
            raise ProblemError(401, "Unauthorized", "the API key is unknown, revoked or expired")
        await ctx.db.execute("UPDATE api_keys SET last_used_at = now() WHERE id = $1", key["id"])
        row = await ctx.db.fetchrow(_PRINCIPAL_SQL + " WHERE u.id = $1", key["user_id"])
        if row is None:
            raise ProblemError(401, "Unauthorized", "the key's user no longer exists")
        principal = _principal(row, via_key=True)
        principal["expires_at"] = _earliest(key["expires_at"], row["account_expires_at"])
        principal["privileges"] = [
            f"scope:{key['scope']}",
            f"package:{key['package']}",
            *await _space_grant(ctx, row),
        ]
        return principal
    row = await ctx.db.fetchrow(
        _PRINCIPAL_SQL.replace(" FROM users u", ", s.expires_at AS session_expires_at FROM users u")
        + " JOIN user_sessions s ON s.user_id = u.id"
        " WHERE s.token_digest = $1 AND s.expires_at > now() AND s.revoked_at IS NULL",
        token_digest(body.token or ""),
    )
    if row is None or (body.user_uuid is not None and str(row["uuid"]) != body.user_uuid.strip().lower()):
        raise ProblemError(401, "Unauthorized", "the token is unknown, expired or revoked")
    principal = _principal(row)
    principal["privileges"] = await _space_grant(ctx, row)
    principal["expires_at"] = _earliest(row["session_expires_at"], row["account_expires_at"])
    return principal


def _earliest(*moments: datetime | None) -> float | None:
    """When the credential stops working (epoch seconds): the gateway caches it no longer than that."""
    known = [m for m in moments if m is not None]
    return min(known).timestamp() if known else None


async def _space_grant(ctx: ServiceContext, row: asyncpg.Record) -> list[str]:
    """A user narrowed by a privilege gets `spaces:<ids>`: the granted spaces and everything below them."""
    if row["privilege_id"] is None:
        return []
    ids = await ctx.db.fetchval(
        "WITH RECURSIVE granted(id) AS ("
        " SELECT (jsonb_array_elements_text(data -> 'spaces'))::bigint FROM privileges WHERE id = $1"
        " UNION SELECT s.id FROM spaces s JOIN granted g ON s.parent_space_id = g.id)"
        " SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM granted",
        row["privilege_id"],
    )
    return [f"spaces:{','.join(str(i) for i in ids)}"]


async def ensure_admin(ctx: ServiceContext) -> None:
    """The first platform administrator, created at start with the configured password (kept if it exists)."""
    async with ctx.system() as conn:
        await conn.execute(
            "INSERT INTO users (uuid, name, display_name, password_hash, is_admin, role, provider_id)"
            " VALUES ($1, 'administrator', 'Administrator', $2, true, 'platform_admin', NULL)"
            " ON CONFLICT (name) DO NOTHING",
            uuid.uuid4(),
            hash_password(ctx.settings.admin_password),
        )


# -- users -------------------------------------------------------------------------------------------


class UserIn(Body):
    name: Name
    display_name: Name
    email: str | None = Field(None, max_length=255, pattern=r"^[^@\s]+@[^@\s]+$")
    role: Role = "operator"
    provider_id: int | None = Field(
        None, description="Platform admins only: the provider the user belongs to"
    )
    password: str | None = Field(None, min_length=10, max_length=1024, description="At least 10 characters")
    is_admin: bool | None = Field(None, description="MyEMS compatibility: true means platform_admin")
    account_expiration_datetime: datetime | None = None
    password_expiration_datetime: datetime | None = None
    is_disabled: bool = False
    privilege_id: int | None = Field(None, description="Narrows the user to the spaces of this privilege")


def _user(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "uuid": str(row["uuid"]),
        "display_name": row["display_name"],
        "email": row["email"],
        "is_admin": row["role"] == "platform_admin",
        "role": row["role"],
        "provider_id": row["provider_id"],
        "is_disabled": row["is_disabled"],
        "privilege_id": row["privilege_id"],
        "is_locked": row["locked_until"] is not None and row["locked_until"] > datetime.now(UTC),
        "account_expiration_datetime": _iso(row["account_expires_at"]),
        "password_expiration_datetime": _iso(row["password_expires_at"]),
    }


def _role_and_provider(principal: Principal, d: UserIn) -> tuple[str, int | None]:
    role = "platform_admin" if d.is_admin else d.role
    if principal.role == "platform_admin":
        if role == "platform_admin":
            return role, None
        if d.provider_id is None:
            raise bad_request("provider_id", "a provider user needs provider_id")
        return role, d.provider_id
    if role == "platform_admin":
        raise ProblemError(403, "Forbidden", "only platform administrators create platform administrators")
    if d.provider_id not in (None, principal.provider_id):
        raise bad_request("provider_id", "users are created in your own provider")
    return role, principal.provider_id


@router.get("/users")
async def list_users(
    request: Request,
    response: Response,
    page: Page = Depends(page_params),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict[str, Any]]:
    _require(current_principal(request), *USER_ADMINS)
    return [_user(r) for r in await fetch_page(ctx.db, response, "SELECT * FROM users u", "u", page)]


@router.get("/users/{user_id}")
async def get_user(
    user_id: int, request: Request, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    principal = current_principal(request)
    if principal is None or (principal.user_id != user_id and principal.role not in USER_ADMINS):
        raise ProblemError(403, "Forbidden", "only administrators see other users")
    row = await ctx.db.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
    if row is None:
        raise not_found("user", user_id)
    return _user(row)


@router.post("/users", status_code=201)
async def create_user(
    body: Envelope[UserIn], request: Request, response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    principal = _require(current_principal(request), *USER_ADMINS)
    d = body.data
    if d.password is None:
        raise bad_request("password", "a new user needs a password")
    role, provider_id = _role_and_provider(principal, d)
    try:
        new_id = await ctx.db.fetchval(
            "INSERT INTO users (uuid, name, display_name, email, password_hash, is_admin, role, provider_id,"
            " account_expires_at, password_expires_at, is_disabled, privilege_id)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) RETURNING id",
            uuid.uuid4(), d.name, d.display_name, d.email, hash_password(d.password), role == "platform_admin",
            role, provider_id, d.account_expiration_datetime, d.password_expiration_datetime, d.is_disabled,
            d.privilege_id,
        )  # fmt: skip
    except asyncpg.UniqueViolationError as exc:
        field = "email" if "email" in (exc.constraint_name or "") else "name"
        raise ProblemError(
            409, "Duplicate", f"a user with this {field} exists", [{"field": field, "message": "taken"}]
        ) from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise bad_request("provider_id", f"provider {provider_id} does not exist") from exc
    except asyncpg.InsufficientPrivilegeError as exc:  # row-level security: another provider
        raise bad_request("provider_id", "users are created in your own provider") from exc
    response.headers["Location"] = f"/users/{new_id}"
    await publish_change(ctx, "user", "created", new_id)
    return {"id": new_id}


@router.delete("/users/{user_id}", status_code=204)
async def delete_user(user_id: int, request: Request, ctx: ServiceContext = Depends(get_context)) -> Response:
    principal = _require(current_principal(request), *USER_ADMINS)
    if user_id == principal.user_id:
        raise ProblemError(409, "In use", "you cannot delete yourself")
    if await ctx.db.fetchval("DELETE FROM users WHERE id = $1 RETURNING id", user_id) is None:
        raise not_found("user", user_id)
    await publish_change(ctx, "user", "deleted", user_id)
    return Response(status_code=204)


async def _set_password(ctx: ServiceContext, user_id: int, password: str) -> None:
    """New password; every session of the user ends."""
    await ctx.db.execute(
        "UPDATE users SET password_hash = $2, password_changed_at = now(), failed_logins = 0, locked_until = NULL"
        " WHERE id = $1",
        user_id, hash_password(password),
    )  # fmt: skip
    await ctx.db.execute(
        "UPDATE user_sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", user_id
    )


class ChangePassword(Body):
    old_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=10, max_length=1024, description="At least 10 characters")


@router.put("/users/changepassword", status_code=204)
async def change_password(
    body: Envelope[ChangePassword], request: Request, ctx: ServiceContext = Depends(get_context)
) -> Response:
    """Change your own password (all your sessions end; log in again)."""
    principal = current_principal(request)
    if principal is None or principal.via_key:
        raise ProblemError(403, "Forbidden", "log in with your password to change it")
    stored = await ctx.db.fetchval("SELECT password_hash FROM users WHERE id = $1", principal.user_id)
    if stored is None or not verify_password(stored, body.data.old_password):
        raise bad_request("old_password", "the current password is wrong")
    await _set_password(ctx, principal.user_id, body.data.new_password)
    return Response(status_code=204)


class ResetPassword(Body):
    name: Name
    password: str = Field(min_length=10, max_length=1024)


@router.put("/users/resetpassword", status_code=204)
async def reset_password(
    body: Envelope[ResetPassword], request: Request, ctx: ServiceContext = Depends(get_context)
) -> Response:
    """An administrator sets a user's password (MyEMS `PUT /users/resetpassword`)."""
    _require(current_principal(request), *USER_ADMINS)
    user_id = await ctx.db.fetchval("SELECT id FROM users WHERE name = $1", body.data.name)
    if user_id is None:
        raise not_found("user", body.data.name)
    await _set_password(ctx, user_id, body.data.password)
    return Response(status_code=204)


@router.put("/users/unlock/{user_id}", status_code=204)
async def unlock(user_id: int, request: Request, ctx: ServiceContext = Depends(get_context)) -> Response:
    _require(current_principal(request), *USER_ADMINS)
    if (
        await ctx.db.fetchval(
            "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1 RETURNING id", user_id
        )
        is None
    ):
        raise not_found("user", user_id)
    return Response(status_code=204)


@router.put("/users/{user_id}")
async def update_user(
    user_id: int, body: Envelope[UserIn], request: Request, ctx: ServiceContext = Depends(get_context)
) -> dict[str, int]:
    principal = _require(current_principal(request), *USER_ADMINS)
    d = body.data
    role, provider_id = _role_and_provider(principal, d)
    if user_id == principal.user_id and role != principal.role:
        raise bad_request("role", "you cannot change your own role")
    found = await ctx.db.fetchval(
        "UPDATE users SET name=$2, display_name=$3, email=$4, role=$5, is_admin=$6, provider_id=$7,"
        " account_expires_at=$8, password_expires_at=$9, is_disabled=$10, privilege_id=$11 WHERE id=$1 RETURNING id",
        user_id, d.name, d.display_name, d.email, role, role == "platform_admin", provider_id,
        d.account_expiration_datetime, d.password_expiration_datetime, d.is_disabled, d.privilege_id,
    )  # fmt: skip
    if found is None:
        raise not_found("user", user_id)
    if d.password:
        await _set_password(ctx, user_id, d.password)
    await publish_change(ctx, "user", "updated", user_id)
    return {"id": user_id}


# -- API keys ----------------------------------------------------------------------------------------


class ApiKeyIn(Body):
    name: Name
    expires_datetime_utc: datetime = Field(description="When the key stops working (UTC)")
    scope: Literal["user", "portal"] = "user"
    package: Literal["basic", "advanced"] = "basic"

    @model_validator(mode="after")
    def _future(self) -> ApiKeyIn:
        expires = self.expires_datetime_utc
        if expires.tzinfo is None:
            self.expires_datetime_utc = expires = expires.replace(tzinfo=UTC)
        if expires <= datetime.now(UTC):
            raise ValueError("expires_datetime_utc must be in the future")
        if expires > datetime.now(UTC) + timedelta(days=3 * 366):
            raise ValueError("a key lives at most three years")
        return self


def _key(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "uuid": str(row["uuid"]),
        "user_id": row["user_id"],
        "prefix": f"{KEY_PREFIX}{row['prefix']}",
        "scope": row["scope"],
        "package": row["package"],
        "created_datetime_utc": row["created_at"].isoformat(),
        "expires_datetime_utc": row["expires_at"].isoformat(),
        "revoked_datetime_utc": _iso(row["revoked_at"]),
        "last_used_datetime_utc": _iso(row["last_used_at"]),
    }


@router.get("/apikeys", tags=["apikeys"])
async def list_keys(request: Request, ctx: ServiceContext = Depends(get_context)) -> list[dict[str, Any]]:
    """Your keys; administrators see every key of their provider. The secret is never shown again."""
    principal = _require(
        current_principal(request),
        "platform_admin",
        "provider_admin",
        "operator",
        "installer",
        "owner",
        "guest",
    )
    if principal.role in USER_ADMINS:
        rows = await ctx.db.fetch("SELECT * FROM api_keys ORDER BY id")
    else:
        rows = await ctx.db.fetch("SELECT * FROM api_keys WHERE user_id = $1 ORDER BY id", principal.user_id)
    return [_key(row) for row in rows]


@router.post("/apikeys", status_code=201, tags=["apikeys"])
async def create_key(
    body: Envelope[ApiKeyIn], request: Request, response: Response, ctx: ServiceContext = Depends(get_context)
) -> dict[str, Any]:
    """A key for yourself, with at most your rights and read-only; the answer shows it once."""
    principal = current_principal(request)
    if principal is None or principal.via_key:
        raise ProblemError(403, "Forbidden", "keys are created by a logged-in user")
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32).replace('_', 'x')}"
    d = body.data
    row = await ctx.db.fetchrow(
        "INSERT INTO api_keys (uuid, name, user_id, provider_id, prefix, key_digest, scope, package, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
        uuid.uuid4(), d.name, principal.user_id, principal.provider_id, prefix, token_digest(key), d.scope, d.package,
        d.expires_datetime_utc,
    )  # fmt: skip
    assert row is not None
    response.headers["Location"] = f"/apikeys/{row['id']}"
    await publish_change(ctx, "api_key", "created", row["id"])
    return {**_key(row), "api_key": key}


@router.delete("/apikeys/{key_id}", status_code=204, tags=["apikeys"])
async def revoke_key(key_id: int, request: Request, ctx: ServiceContext = Depends(get_context)) -> Response:
    """Revoke a key: it stops working at once (it stays listed, marked revoked)."""
    principal = _require(
        current_principal(request),
        "platform_admin",
        "provider_admin",
        "operator",
        "installer",
        "owner",
        "guest",
    )
    owner_only = "" if principal.role in USER_ADMINS else f" AND user_id = {int(principal.user_id)}"
    found = await ctx.db.fetchval(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1{owner_only} RETURNING id",
        key_id,
    )
    if found is None:
        raise not_found("API key", key_id)
    await publish_change(ctx, "api_key", "deleted", key_id)
    return Response(status_code=204)


# -- service providers (tenants) ---------------------------------------------------------------------


class ProviderIn(Body):
    name: Name
    description: Description = None


@router.get("/serviceproviders", tags=["serviceproviders"])
async def list_providers(
    request: Request, ctx: ServiceContext = Depends(get_context)
) -> list[dict[str, Any]]:
    principal = _require(current_principal(request), "platform_admin", "provider_admin")
    if principal.role == "platform_admin":
        rows = await ctx.db.fetch("SELECT * FROM providers ORDER BY id")
    else:
        rows = await ctx.db.fetch("SELECT * FROM providers WHERE id = $1", principal.provider_id)
    return [{**dict(r), "uuid": str(r["uuid"]), "created_at": r["created_at"].isoformat()} for r in rows]


@router.post("/serviceproviders", status_code=201, tags=["serviceproviders"])
async def create_provider(
    body: Envelope[ProviderIn],
    request: Request,
    response: Response,
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, int]:
    """A new tenant (platform administrators only); then create its administrator with `POST /users`."""
    _require(current_principal(request), "platform_admin")
    try:
        new_id = await ctx.db.fetchval(
            "INSERT INTO providers (uuid, name, description) VALUES ($1, $2, $3) RETURNING id",
            uuid.uuid4(), body.data.name, body.data.description,
        )  # fmt: skip
    except asyncpg.UniqueViolationError as exc:
        raise ProblemError(
            409, "Duplicate", "a provider with this name exists", [{"field": "name", "message": "taken"}]
        ) from exc
    response.headers["Location"] = f"/serviceproviders/{new_id}"
    await publish_change(ctx, "provider", "created", new_id)
    return {"id": new_id}
