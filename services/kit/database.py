"""PostgreSQL plumbing every service that keeps data uses: schema migrations and connecting.

Each service keeps its tables in a schema of its own (`knowledge`, `dialog`, `backoffice`), with its
migrations as numbered `.sql` files in a folder beside its code; `apply_migrations` applies the
pending ones at start, exactly once even when several processes start together.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from services.kit.config import ConfigError

log = logging.getLogger("quietline.database")

CONNECT_TIMEOUT_S = 10


class DatabaseError(ConfigError):
    """A service's database cannot be used at start; the message names the problem and the fix."""


def describe_dsn(dsn: str) -> str:
    """The DSN's host, port, database and user, without the password, for error messages."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparseable DSN)"
    return " ".join(f"{key}={parts[key]}" for key in ("host", "port", "dbname", "user") if parts.get(key))


async def apply_migrations(conn: psycopg.AsyncConnection, schema: str, migrations_dir: Path) -> list[str]:
    """Apply the migrations in `migrations_dir` not yet recorded in `<schema>.schema_migrations`.

    Each runs in its own transaction, in file-name order, under an advisory lock named after the
    schema, with `schema` first on the search path (the migrations name no schema). `conn` must be in
    autocommit mode. Returns the versions applied now.
    """
    applied_now: list[str] = []
    name = sql.Identifier(schema)
    lock = f"quietline.{schema}.migrations"
    await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [lock])
    try:
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
        await conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(name))
        cursor = await conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations").format(name))
        applied = {row[0] for row in await cursor.fetchall()}
        for path in sorted(migrations_dir.glob("*.sql")):
            if path.stem in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(sql.SQL("SET LOCAL search_path TO {}, public").format(name))
                    await conn.execute(path.read_text())
                    await conn.execute(
                        sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES (%s)").format(name), [path.stem]
                    )
            except psycopg.Error as err:
                raise DatabaseError(
                    f"{schema}: database migration {path.name} failed ({err}); nothing of it was applied: "
                    "fix the database (are the extensions it needs installed, and may this user create them?) "
                    "and start again"
                ) from None
            applied_now.append(path.stem)
            log.info("migration applied", extra={"schema": schema, "version": path.stem})
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [lock])
    return applied_now


async def migrate(dsn: str, schema: str, migrations_dir: Path) -> list[str]:
    """Connect to `dsn` and apply `schema`'s pending migrations; DatabaseError names the fix on failure."""
    if not dsn.strip():
        raise DatabaseError(
            f"{schema}: database.dsn is empty: set QUIETLINE_DATABASE__DSN (quietline up does) or "
            "database.dsn in the config file to a PostgreSQL 16+ with pgvector"
        )
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            return await apply_migrations(conn, schema, migrations_dir)
    except psycopg.OperationalError as err:
        raise DatabaseError(
            f"{schema}: cannot connect to PostgreSQL at {describe_dsn(dsn)} ({str(err).strip()}): "
            "start the database or correct database.dsn"
        ) from None
    except psycopg.ProgrammingError as err:
        raise DatabaseError(f"{schema}: database.dsn is not a valid connection string ({str(err).strip()}): correct it") from None
