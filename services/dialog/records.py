"""What the dialog keeps about a call: calls, turns, tool calls, escalations and a hash-chained audit.

Tables live in the `dialog` schema (migrations/). Everything written here is redacted first, inside
this module, so no caller can forget: free text (turn texts, reasons, errors) through
`Redactor.redact`, JSON (timings, tool arguments, briefings, call context) through
`Redactor.redact_json`, and so are the short code fields (route, tool, outcome, target, service
line, language, channel): a code field must not become a way around the redactor. Only the call id
is stored as given; it must look like an id. The redactor runs in a worker thread
(`asyncio.to_thread`), off the event loop.

Every write also appends one row to `audit`, in the same transaction, so a turn, tool call or
escalation is never stored without its audit row or the other way round. The audit table is
append-only (a trigger refuses UPDATE, DELETE and TRUNCATE) and hash-chained: the database's insert
trigger numbers each row and sets

    prev_hash = hash of the row before (64 zeros for row 1)
    hash = hex(sha256(utf8(prev_hash || content)))

where content is PostgreSQL's canonical jsonb text of {id, at, kind, call_id, turn, payload}
(`audit_content` in the migration), under an advisory lock, so concurrent writers take turns and
never fork the chain. `verify_audit_chain` recomputes every hash here, in Python, and names the first
row that does not fit. The chain shows that rows were changed or removed; someone who can rewrite
the whole table can also recompute it, so a site that needs more copies the head hash
(`ChainVerdict.head_hash`) somewhere else from time to time.

The audit rows say what was decided and done (route and reason, tool, arguments and outcome,
escalation reason and target) and carry the sha256 of the turn texts and briefing as stored, not the
texts themselves: a retention job may delete a call's turns, never its audit rows.

`python -m services.dialog.records verify --config FILE` checks the chain of a deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from services.kit.config import ConfigError
from services.kit.database import (
    CONNECT_TIMEOUT_S,
    DatabaseError,
    describe_dsn,
    migrate,
)

if TYPE_CHECKING:
    # Imported when a CallRecords opens: the verify command has no use for Presidio and spaCy.
    from services.dialog.redaction import Redactor

SCHEMA = "dialog"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
GENESIS_HASH = "0" * 64
# A call id names the call in logs, traces and the audit; it is the one field stored unredacted, so
# it may hold no spaces (no sentence, no name with a surname) and is at most this long.
CALL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")
# Rows fetched per round trip while verifying the chain.
VERIFY_BATCH_ROWS = 2000

_INSERT_AUDIT = "INSERT INTO audit (kind, call_id, turn, payload) VALUES (%s, %s, %s, %s) RETURNING id"
_VERIFY_ROWS = """
SELECT id, prev_hash, hash, audit_content(id, at, kind, call_id, turn, payload)
FROM audit ORDER BY id
"""


class CallRecordError(ValueError):
    """A record cannot be written as asked; the message names the call, the problem and the fix."""


@dataclass(frozen=True)
class Escalation:
    """One stored hand-over of a call to a person, with its (redacted) briefing."""

    id: int
    call_id: str
    turn: int
    reason: str
    target: str
    briefing: Any
    created_at: datetime


@dataclass(frozen=True)
class ChainVerdict:
    """The result of checking the audit chain.

    ok: every row checked fits; rows_checked: rows read (up to and including the first bad one);
    first_bad_id and problem ("hash mismatch" or "broken link") with a detail when not ok; head_id
    and head_hash: the last row that fits (copy head_hash elsewhere to anchor the chain).
    """

    ok: bool
    rows_checked: int
    first_bad_id: int | None = None
    problem: str | None = None
    detail: str | None = None
    head_id: int | None = None
    head_hash: str | None = None

    def to_json(self) -> str:
        """The verdict as one line of JSON (what the verify command prints)."""
        return json.dumps(asdict(self))


def row_hash(prev_hash: str, content: str) -> str:
    """The hash an audit row must carry: sha256 over its predecessor's hash and its canonical content."""
    return hashlib.sha256((prev_hash + content).encode("utf-8")).hexdigest()


def text_digest(value: Any) -> str:
    """sha256 of a value's canonical JSON (sorted keys, no spaces): ties an audit row to stored text."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


async def verify_chain(conn: psycopg.AsyncConnection) -> ChainVerdict:
    """Check the audit chain reachable on `conn` (search path set to the dialog schema), row by row.

    Reads one snapshot (REPEATABLE READ), so rows appended meanwhile neither disturb nor join the
    check. Stops at the first row whose link or hash is wrong.
    """
    checked = 0
    previous_id, previous_hash = 0, GENESIS_HASH
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        async with conn.cursor(name="audit_verify") as cursor:
            cursor.itersize = VERIFY_BATCH_ROWS
            await cursor.execute(_VERIFY_ROWS)
            async for row_id, prev_hash, stored_hash, content in cursor:
                checked += 1
                problem = detail = None
                if row_id != previous_id + 1:
                    problem = "broken link"
                    detail = (f"row {row_id} follows row {previous_id}: rows {previous_id + 1}..{row_id - 1} "
                              "are missing" if row_id > previous_id + 1 else f"row {row_id} is out of order")
                elif prev_hash != previous_hash:
                    problem = "broken link"
                    detail = (f"row {row_id} names {prev_hash[:16]}... as its predecessor's hash, but row "
                              f"{previous_id} hashes to {previous_hash[:16]}...: a row before it was changed "
                              "or replaced")
                elif row_hash(prev_hash, content) != stored_hash:
                    problem = "hash mismatch"
                    detail = (f"row {row_id}'s content does not hash to its stored hash: the row was changed "
                              "after it was appended")
                if problem:
                    return ChainVerdict(False, checked, row_id, problem, detail,
                                        previous_id or None, previous_hash if previous_id else None)
                previous_id, previous_hash = row_id, stored_hash
    return ChainVerdict(True, checked, head_id=previous_id or None, head_hash=previous_hash if previous_id else None)


def _check_call_id(call_id: str) -> str:
    if not isinstance(call_id, str) or not CALL_ID_PATTERN.match(call_id):
        raise CallRecordError(
            f"call id {call_id!r} is not an id: use 1-128 letters, digits and . _ : / + - (the gateway's "
            "call id); it is stored unredacted, so it may not hold a sentence or a name"
        )
    return call_id


def _check_turn(call_id: str, turn: int) -> int:
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
        raise CallRecordError(f"call {call_id}: turn {turn!r} is not a turn number: pass the turn's index, 0 or more")
    return turn


class CallRecords:
    """Writes and reads a call's records in the dialog schema; everything written is redacted first.

    Open with `await CallRecords.open(dsn)`, close with `await records.close()`.
    """

    def __init__(self, pool: AsyncConnectionPool, redactor: Redactor, schema: str) -> None:
        self.pool = pool
        self.redactor = redactor
        self.schema = schema

    @classmethod
    async def open(cls, dsn: str, *, schema: str = SCHEMA, redactor: Redactor | None = None,
                   max_connections: int = 4) -> CallRecords:
        """Apply pending migrations, build (or reuse) the redactor and open a small connection pool.

        `schema` is `dialog` in the appliance; tests use a schema of their own. Raises DatabaseError
        (a ConfigError) when the database cannot be reached or migrated.
        """
        await migrate(dsn, schema, MIGRATIONS_DIR)
        if redactor is None:
            # Imported here, not at the top: see TYPE_CHECKING above.
            from services.dialog.redaction import shared_redactor

            # Loading the spaCy pipeline takes about a second: not on the event loop.
            redactor = await asyncio.to_thread(shared_redactor)
        search_path = sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema))

        async def configure(conn: psycopg.AsyncConnection) -> None:
            await conn.execute(search_path)

        pool = AsyncConnectionPool(
            dsn, min_size=1, max_size=max_connections, open=False, timeout=10.0,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            configure=configure, check=AsyncConnectionPool.check_connection, name=f"{schema}-records",
        )
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        return cls(pool, redactor, schema)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.pool.close()

    async def _redacted(self, value: Any) -> Any:
        """`value` (text or JSON-like) redacted in a worker thread."""
        return await asyncio.to_thread(self.redactor.redact_json, value)

    @asynccontextmanager
    async def _writing(self, call_id: str) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection inside one transaction; database refusals become CallRecordErrors naming the call."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.errors.ForeignKeyViolation:
            raise CallRecordError(
                f"call {call_id} was never started: call start_call({call_id!r}) before recording its turns, "
                "tool calls and escalations"
            ) from None

    async def _audit(self, conn: psycopg.AsyncConnection, kind: str, call_id: str, turn: int | None,
                     payload: dict) -> int:
        # Appended last in its transaction: the chain's lock is held from here to the commit only.
        cursor = await conn.execute(_INSERT_AUDIT, [kind, call_id, turn, Jsonb(payload)])
        return (await cursor.fetchone())[0]

    async def start_call(self, call_id: str, *, service_line: str = "", language: str = "", channel: str = "",
                         context: dict | None = None) -> None:
        """Record that a call began (and audit it). CallRecordError if the call id is already taken."""
        _check_call_id(call_id)
        fields = await self._redacted({"service_line": service_line, "language": language, "channel": channel,
                                       "context": context or {}})
        try:
            async with self._writing(call_id) as conn:
                await conn.execute(
                    "INSERT INTO calls (call_id, service_line, language, channel, context) VALUES (%s, %s, %s, %s, %s)",
                    [call_id, fields["service_line"], fields["language"], fields["channel"], Jsonb(fields["context"])],
                )
                await self._audit(conn, "call_started", call_id, None, {
                    "service_line": fields["service_line"], "language": fields["language"],
                    "channel": fields["channel"],
                })
        except psycopg.errors.UniqueViolation as err:
            if err.diag.constraint_name != "calls_pkey":
                raise
            raise CallRecordError(f"call {call_id} is already recorded: give each call its own id") from None

    async def record_turn(self, call_id: str, turn: int, *, caller_text: str, bot_text: str, route: str,
                          reason: str, timings: dict | None = None) -> None:
        """Store one turn (texts redacted) and audit its routing decision."""
        _check_call_id(call_id)
        _check_turn(call_id, turn)
        fields = await self._redacted({"caller_text": caller_text, "bot_text": bot_text, "route": route,
                                       "reason": reason, "timings": timings or {}})
        try:
            async with self._writing(call_id) as conn:
                await conn.execute(
                    "INSERT INTO turns (call_id, turn, caller_text, bot_text, route, reason, timings) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [call_id, turn, fields["caller_text"], fields["bot_text"], fields["route"], fields["reason"],
                     Jsonb(fields["timings"])],
                )
                await self._audit(conn, "turn", call_id, turn, {
                    "route": fields["route"], "reason": fields["reason"], "timings": fields["timings"],
                    "texts_sha256": text_digest([fields["caller_text"], fields["bot_text"]]),
                })
        except psycopg.errors.UniqueViolation as err:
            if err.diag.constraint_name != "turns_pkey":
                raise
            raise CallRecordError(
                f"turn {turn} of call {call_id} is already recorded: number each turn of a call once"
            ) from None

    async def record_tool_call(self, call_id: str, turn: int, *, tool: str, arguments: dict, outcome: str,
                               error: str | None = None, latency_ms: float | None = None) -> int:
        """Store one tool call (arguments and error redacted), audit it, and return its id."""
        _check_call_id(call_id)
        _check_turn(call_id, turn)
        if latency_ms is not None and latency_ms < 0:
            raise CallRecordError(f"call {call_id} turn {turn}: latency_ms {latency_ms} is negative: pass the "
                                  "tool call's duration in milliseconds")
        fields = await self._redacted({"tool": tool, "arguments": arguments, "outcome": outcome, "error": error})
        async with self._writing(call_id) as conn:
            cursor = await conn.execute(
                "INSERT INTO tool_calls (call_id, turn, tool, arguments, outcome, error, latency_ms) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                [call_id, turn, fields["tool"], Jsonb(fields["arguments"]), fields["outcome"], fields["error"],
                 latency_ms],
            )
            tool_call_id = (await cursor.fetchone())[0]
            await self._audit(conn, "tool_call", call_id, turn, {
                "tool_call_id": tool_call_id, "tool": fields["tool"], "arguments": fields["arguments"],
                "outcome": fields["outcome"], "error": fields["error"], "latency_ms": latency_ms,
            })
        return tool_call_id

    async def record_escalation(self, call_id: str, turn: int, *, reason: str, briefing: Any,
                                target: str = "") -> int:
        """Store a hand-over to a person with its briefing (redacted), audit it, and return its id.

        `briefing` is text or JSON (e.g. {"summary": ..., "intent": ..., "order_id": ...}).
        """
        _check_call_id(call_id)
        _check_turn(call_id, turn)
        fields = await self._redacted({"reason": reason, "target": target, "briefing": briefing})
        async with self._writing(call_id) as conn:
            cursor = await conn.execute(
                "INSERT INTO escalations (call_id, turn, reason, target, briefing) VALUES (%s, %s, %s, %s, %s) "
                "RETURNING id",
                [call_id, turn, fields["reason"], fields["target"], Jsonb(fields["briefing"])],
            )
            escalation_id = (await cursor.fetchone())[0]
            await self._audit(conn, "escalation", call_id, turn, {
                "escalation_id": escalation_id, "reason": fields["reason"], "target": fields["target"],
                "briefing_sha256": text_digest(fields["briefing"]),
            })
        return escalation_id

    async def end_call(self, call_id: str, *, end_reason: str = "completed") -> None:
        """Record that a call ended (and audit it). CallRecordError for a call never started or already ended."""
        _check_call_id(call_id)
        fields = await self._redacted({"end_reason": end_reason})
        async with self._writing(call_id) as conn:
            cursor = await conn.execute(
                "UPDATE calls SET ended_at = greatest(now(), started_at), end_reason = %s "
                "WHERE call_id = %s AND ended_at IS NULL RETURNING call_id",
                [fields["end_reason"], call_id],
            )
            if await cursor.fetchone() is None:
                cursor = await conn.execute("SELECT ended_at FROM calls WHERE call_id = %s", [call_id])
                row = await cursor.fetchone()
                if row is None:
                    raise CallRecordError(f"call {call_id} was never started: nothing to end (check the call id)")
                raise CallRecordError(f"call {call_id} already ended at {row[0].isoformat()}: end a call once")
            await self._audit(conn, "call_ended", call_id, None, {"end_reason": fields["end_reason"]})

    async def briefing_for(self, call_id: str) -> list[Escalation]:
        """The call's stored escalations with their briefings, oldest first ([] when there are none)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id, call_id, turn, reason, target, briefing, created_at FROM escalations "
                "WHERE call_id = %s ORDER BY id",
                [call_id],
            )
            return [Escalation(*row) for row in await cursor.fetchall()]

    async def verify_audit_chain(self) -> ChainVerdict:
        """Check every audit row's link and hash; the verdict names the first bad row and why."""
        async with self.pool.connection() as conn:
            return await verify_chain(conn)


# --- command line -------------------------------------------------------------------------------

def _resolve_dsn(args: argparse.Namespace) -> str:
    """--dsn, else database.dsn of the configuration, else the running appliance's embedded PostgreSQL."""
    from services.appliance.supervisor import appliance_dsn  # the command line's need only
    from services.kit.config import load_settings

    return appliance_dsn(load_settings(args.config), args.dsn, "check")


async def verify_at(dsn: str, schema: str = SCHEMA) -> ChainVerdict:
    """Check the audit chain in `schema` at `dsn` without changing anything (no migration is applied).

    Raises DatabaseError when the database cannot be reached or holds no audit table in `schema`.
    """
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            cursor = await conn.execute("SELECT to_regclass(%s)", [f"{schema}.audit"])
            if (await cursor.fetchone())[0] is None:
                raise DatabaseError(
                    f"no audit table in schema {schema} at {describe_dsn(dsn)}: point --config/--dsn at the "
                    "database the dialog service writes to (it creates the table when it first starts)"
                )
            await conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema)))
            return await verify_chain(conn)
    except psycopg.OperationalError as err:
        raise DatabaseError(f"cannot connect to PostgreSQL at {describe_dsn(dsn)} ({str(err).strip()}): "
                            "start the database or correct database.dsn") from None
    except psycopg.ProgrammingError as err:
        raise DatabaseError(f"database.dsn is not a valid connection string ({str(err).strip()}): correct it") from None


def main(argv: list[str] | None = None) -> int:
    """`verify`: print the audit chain's verdict as JSON; exit 0 intact, 1 broken, 2 configuration error."""
    parser = argparse.ArgumentParser(prog="python -m services.dialog.records",
                                     description="Check the dialog's hash-chained audit table.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="recompute every audit row's hash and link")
    verify.add_argument("--config", type=Path, help="QuietLine config file (for database.dsn)")
    verify.add_argument("--dsn", help="PostgreSQL connection string (overrides the config)")
    verify.add_argument("--schema", default=SCHEMA, help=f"schema holding the audit table (default {SCHEMA})")
    args = parser.parse_args(argv)
    try:
        verdict = asyncio.run(verify_at(_resolve_dsn(args), args.schema))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(verdict.to_json())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
