"""Database access: one asyncpg pool per service, bound to the service's own schema, and migrations.

Each service keeps plain SQL files in `services/<name>/migrations/NNN_description.sql`. They are applied in
order, once each, inside a transaction, under an advisory lock so that replicas starting together do not race.
The SQL is written without schema names: the pool's `search_path` is the service's schema.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


# Row-level security: a service whose tables belong to tenants (service providers) runs every query as this
# role with `gridfleet.*` settings naming who asks; policies in its migrations then show each caller only its
# own provider's rows. Superusers bypass row-level security, so a superuser login switches to this role.
TENANT_ROLE = "gridfleet_tenant"


@dataclass(frozen=True)
class Scope:
    """Who a connection works for: the policies read these as `gridfleet.admin|provider|user|role`."""

    admin: bool = False
    provider_id: int | None = None
    user_id: int | None = None
    role: str = ""
    # A privilege narrowing the caller to parts of the space tree: the allowed space ids (None: no narrowing).
    spaces: tuple[int, ...] | None = None


SYSTEM = Scope(admin=True, role="system")
NOBODY = Scope()

_SCOPE_SQL = (
    "SELECT set_config('gridfleet.admin', $1, false), set_config('gridfleet.provider', $2, false),"
    " set_config('gridfleet.user', $3, false), set_config('gridfleet.role', $4, false),"
    " set_config('gridfleet.spaces', $5, false)"
)


async def apply_scope(conn: Queryable, scope: Scope) -> None:
    await conn.execute(
        _SCOPE_SQL,
        "on" if scope.admin else "off",
        "" if scope.provider_id is None else str(scope.provider_id),
        "" if scope.user_id is None else str(scope.user_id),
        scope.role,
        "" if scope.spaces is None else "{" + ",".join(str(int(s)) for s in scope.spaces) + "}",
    )


class _TenantSetup:
    """Run on every acquire: switch a superuser login to the tenant role, then deny everything by default."""

    def __init__(self) -> None:
        self.use_role: bool | None = None

    async def __call__(self, conn: asyncpg.Connection) -> None:
        if self.use_role is None:
            row = await conn.fetchrow(
                "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user),"
                " EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
                TENANT_ROLE,
            )
            assert row is not None
            superuser, role_exists = row
            if not superuser:
                self.use_role = False  # row-level security (forced) applies to this login as it is
            elif role_exists:
                self.use_role = True
        if self.use_role:
            await conn.execute(f"SET ROLE {TENANT_ROLE}")
        await apply_scope(conn, NOBODY)


class ScopedDB:
    """One connection, already scoped, offering the pool's query methods (used for the life of a request)."""

    def __init__(self, conn: PoolConnectionProxy) -> None:
        self.conn = conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return list(await self.conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self.conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        return await self.conn.execute(query, *args)

    async def executemany(self, query: str, args: Any) -> None:
        await self.conn.executemany(query, args)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[PoolConnectionProxy]:
        yield self.conn


# Anything a query can run on: the pool, a connection, a borrowed connection, or a request's scoped one.
Queryable = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy | ScopedDB


@asynccontextmanager
async def scoped(pool: asyncpg.Pool, scope: Scope) -> AsyncIterator[PoolConnectionProxy]:
    """A connection of the pool working for `scope` (e.g. SYSTEM for a service's own background work)."""
    async with pool.acquire() as conn:
        await apply_scope(conn, scope)
        yield conn


async def create_pool(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 8, tenancy: bool = False
) -> asyncpg.Pool:
    """A pool whose connections see `schema` first (and `public` for extensions).

    With `tenancy`, every connection handed out is scoped to nobody until a caller applies a scope.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        setup=cast(Any, _TenantSetup()) if tenancy else None,
        server_settings={"search_path": f"{schema},public", "application_name": f"gridfleet-{schema}"},
    )
    assert pool is not None
    return pool


def _lock_key(schema: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"gridfleet-migrate:{schema}".encode()).digest()[:8], "big", signed=True
    )


def discover_migrations(directory: Path) -> list[tuple[int, str, str]]:
    """(version, file name, sql) for each migration file, in version order; rejects misnamed files."""
    found: list[tuple[int, str, str]] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path} must be named NNN_description.sql")
        found.append((int(match.group(1)), path.name, path.read_text()))
    versions = [version for version, _, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {directory}")
    return found


async def migrate(pool: asyncpg.Pool, schema: str, directory: Path) -> list[str]:
    """Create the schema if needed and apply every migration not yet applied. Returns the names applied."""
    migrations = discover_migrations(directory)
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("RESET ROLE")  # migrations run as the login role, even on a tenancy pool
        await apply_scope(conn, SYSTEM)
        await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
            done = {row["version"] for row in rows}
            for version, name, sql in migrations:
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
                    await conn.execute(sql)
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version, name) VALUES ($1, $2)',
                        version,
                        name,
                    )
                applied_now.append(name)
                log.info("applied migration", extra={"fields": {"schema": schema, "migration": name}})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    return applied_now
