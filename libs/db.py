"""Database access: one asyncpg pool per service, bound to the service's own schema, and migrations.

Each service keeps plain SQL files in `services/<name>/migrations/NNN_description.sql`. They are applied in
order, once each, inside a transaction, under an advisory lock so that replicas starting together do not race.
The SQL is written without schema names: the pool's `search_path` is the service's schema.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

# Anything a query can run on: the pool, a connection, or a connection borrowed from the pool.
Queryable = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy

_MIGRATION_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def create_pool(dsn: str, schema: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    """A pool whose connections see `schema` first (and `public` for extensions)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
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
