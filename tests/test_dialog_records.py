"""Redaction and call records of the dialog: the real Presidio + spaCy redactor and a real PostgreSQL.

Each group of records tests writes to a schema of its own (`dialog_test_<random>`), so the chain
counts are exact and a deliberately broken chain never reaches another test or the `dialog` schema
other test modules may use in the same database.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
import tldextract
import yaml
from psycopg import sql

from services.dialog.records import CallRecordError, CallRecords
from services.dialog.redaction import Redactor, shared_redactor
from services.kit.offline import OFFLINE_ENVIRONMENT

REPO_ROOT = Path(__file__).resolve().parents[1]

# What a caller might say; none of it may reach a stored row. (Invented: no shared data is copied.)
CALLER_NAME = "Maria Lopez"
CALLER_PHONE = "415-555-0132"
CALLER_CARD = "4111 1111 1111 1111"  # a Luhn-valid test card number
CALLER_EMAIL = "maria.lopez@example.com"
ORDER_ID = "#W2611340"
AMOUNT = "$536.65"


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return shared_redactor()


# --- redaction --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "secret", "placeholder"), [
    ("Hi, this is Maria Lopez calling about my order.", "Maria Lopez", "<PERSON>"),
    ("Yes, my name is Aune, and my husband is Mr. Okonkwo-Brandt.", "Aune", "<PERSON>"),
    ("Yes, my name is Aune, and my husband is Mr. Okonkwo-Brandt.", "Okonkwo-Brandt", "<PERSON>"),
    ("You can reach me on 415-555-0132 after five.", "415-555-0132", "<PHONE_NUMBER>"),
    ("My email is maria.lopez@example.com.", "maria.lopez@example.com", "<EMAIL_ADDRESS>"),
    # Read aloud, as a phone transcript has it.
    ("sure, it's maria dot lopez seven two at example dot com", "lopez", "<EMAIL_ADDRESS>"),
    ("The card is 4111 1111 1111 1111, expiry next year.", "4111 1111 1111 1111", "<CREDIT_CARD>"),
    ("Please send it to GB82WEST12345698765432 today.", "GB82WEST12345698765432", "<IBAN_CODE>"),
    ("My social is 536-22-8190.", "536-22-8190", "<US_SSN>"),
    ("Ship it to 42 Oak Tree Lane, Apt 5 please.", "42 Oak Tree Lane", "<STREET_ADDRESS>"),
    ("I moved to Hauptstraße 5 in March.", "Hauptstraße 5", "<STREET_ADDRESS>"),
    ("It is Calle Mayor 12 in Madrid.", "Calle Mayor 12", "<STREET_ADDRESS>"),
    ("Springfield, IL 62704 is where I live.", "IL 62704", "<STREET_ADDRESS>"),
    ("I was born on 16 April 1977, if that helps.", "16 April 1977", "<DATE_OF_BIRTH>"),
    ("My date of birth is 12/9/1983.", "12/9/1983", "<DATE_OF_BIRTH>"),
    ("The account number is 20481736 thanks.", "20481736", "<DIGIT_SEQUENCE>"),
    ("Member number 0077 3422 9015 88, I think.", "0077 3422 9015 88", "<DIGIT_SEQUENCE>"),
    ("it's four four five four seven nine two one", "four four five four seven nine two one", "<DIGIT_SEQUENCE>"),
    ("The router says 192.168.20.14.", "192.168.20.14", "<IP_ADDRESS>"),
])
def test_each_kind_of_personal_data_is_replaced_by_its_placeholder(redactor, text, secret, placeholder):
    redacted = redactor.redact(text)
    assert secret not in redacted
    assert placeholder in redacted, redacted


def test_order_ids_amounts_times_and_ordinary_dates_are_kept(redactor):
    # A briefing needs these; a date is personal only as a date of birth, a letter-led id is an order.
    kept = [
        f"I'm calling about order {ORDER_ID}, it was {AMOUNT} and arrived on March 3rd.",
        "Order W2611340 totalled $1,250.00 on 2024-05-16 at 11:34:35.",
        "The refund of 1,299.99 should come within 5 to 7 business days.",
        "My parcel was meant to arrive on Tuesday, 4 June 2024.",
        # Shapes near the address and digit patterns that are no address and no account number.
        "There is a flat 20 dollar fee, and I used it via the app 3 times.",
        "The lift to floor 3 is broken and unit 4 was sent back.",
        "I have called 5 times since 10:30 and I am 75 years old.",
    ]
    for text in kept:
        assert redactor.redact(text) == text


def test_a_date_is_redacted_only_when_it_is_a_date_of_birth(redactor):
    assert redactor.redact("It was delivered on March 3, 1980.") == "It was delivered on March 3, 1980."
    assert redactor.redact("I was born on March 3, 1980.") == "I was born on <DATE_OF_BIRTH>."
    # Birth words without a day, month or year give nothing away.
    assert redactor.redact("My birthday party is on the weekend.") == "My birthday party is on the weekend."


def test_redact_json_redacts_every_string_and_keeps_keys_and_structure(redactor):
    value = {
        "customer": {"name": CALLER_NAME, "phones": [CALLER_PHONE, "none"]},
        "order_id": ORDER_ID, "amount": 536.65, "quantity": 2, "account": 20481736,
        "confirmed": True, "note": None, "Maria Lopez": "key kept",
    }
    redacted = redactor.redact_json(value)
    assert redacted == {
        "customer": {"name": "<PERSON>", "phones": ["<PHONE_NUMBER>", "none"]},
        "order_id": ORDER_ID, "amount": 536.65, "quantity": 2, "account": "<DIGIT_SEQUENCE>",
        "confirmed": True, "note": None, "Maria Lopez": "key kept",
    }
    assert value["customer"]["name"] == CALLER_NAME, "the input must not be changed in place"
    with pytest.raises(TypeError, match="not JSON"):
        redactor.redact_json({"when": object()})


async def test_redactor_gives_the_same_answers_from_many_threads_at_once(redactor):
    texts = [f"This is Maria Lopez, call me on 415-555-01{n:02d} about order {ORDER_ID}." for n in range(16)]
    expected = [redactor.redact(t) for t in texts]
    assert await asyncio.gather(*(asyncio.to_thread(redactor.redact, t) for t in texts)) == expected


class NetworkGuard:
    """Refuses, and records, every connection or name lookup for an address outside loopback."""

    LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[str] = []
        real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
        guard = self

        def connect(sock, address):
            host = address[0] if isinstance(address, tuple) else address
            if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in guard.LOOPBACK:
                guard.attempts.append(f"connect {address}")
                raise ConnectionRefusedError(f"test forbids connecting to {address}")
            return real_connect(sock, address)

        def getaddrinfo(host, *args, **kwargs):
            if host not in guard.LOOPBACK and host is not None:
                guard.attempts.append(f"lookup {host}")
                raise socket.gaierror(f"test forbids looking up {host}")
            return real_getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_redactor_is_built_and_used_without_the_network(monkeypatch):
    guard = NetworkGuard(monkeypatch)
    # The guard is real: tldextract given its public suffix list URLs, with no cache, goes online.
    tldextract.TLDExtract(cache_dir=None, suffix_list_urls=tldextract.tldextract.PUBLIC_SUFFIX_LIST_URLS)(
        "someone@example.co.uk")
    assert guard.attempts, "the network guard did not see tldextract's download attempt"
    guard.attempts.clear()
    # The offline switches (TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS empty) keep any default extractor local.
    tldextract.TLDExtract(cache_dir=None)("someone@example.co.uk")
    assert guard.attempts == []

    offline = Redactor()  # a fresh one: loads the spaCy pipeline and builds every recognizer
    redacted = offline.redact(f"This is {CALLER_NAME}, mail {CALLER_EMAIL} or call {CALLER_PHONE}.")
    assert redacted == "This is <PERSON>, mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>."
    assert guard.attempts == []


# --- records ----------------------------------------------------------------------------------

def fresh_schema() -> str:
    return f"dialog_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def schema() -> str:
    return fresh_schema()


@pytest.fixture(scope="module")
async def records(database_dsn: str, schema: str, redactor: Redactor):
    opened = await CallRecords.open(database_dsn, schema=schema, redactor=redactor)
    yield opened
    await opened.close()


async def connect(dsn: str, schema: str) -> psycopg.AsyncConnection:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema)))
    return conn


async def every_stored_row(dsn: str, schema: str) -> str:
    """Every row of every records table, as JSON text, for searching."""
    async with await connect(dsn, schema) as conn:
        dump = []
        for table in ("calls", "turns", "tool_calls", "escalations", "audit"):
            cursor = await conn.execute(sql.SQL("SELECT row_to_json(t)::text FROM {} AS t").format(sql.Identifier(table)))
            dump += [row[0] for row in await cursor.fetchall()]
    return "\n".join(dump)


def new_call_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def test_a_call_round_trips_with_only_redacted_data_stored(records, database_dsn, schema):
    call_id = new_call_id()
    await records.start_call(call_id, service_line="retail-support", language="en", channel="sip",
                             context={"caller_said_name": CALLER_NAME})
    await records.record_turn(
        call_id, 0, caller_text=f"Hi, this is {CALLER_NAME}, my number is {CALLER_PHONE}.",
        bot_text=f"Thanks {CALLER_NAME}. What is your order number?", route="flow", reason="identify caller",
        timings={"asr_ms": 180.5, "llm_first_token_ms": 412},
    )
    await records.record_turn(
        call_id, 1, caller_text=f"It's {ORDER_ID}, I paid {AMOUNT} with card {CALLER_CARD}.",
        bot_text=f"I found order {ORDER_ID} for {AMOUNT}.", route="flow", reason="order found",
    )
    tool_call_id = await records.record_tool_call(
        call_id, 1, tool="get_order_details",
        arguments={"order_id": ORDER_ID, "card": CALLER_CARD, "email": CALLER_EMAIL},
        outcome="ok", latency_ms=23.4,
    )
    escalation_id = await records.record_escalation(
        call_id, 2, reason=f"{CALLER_NAME} asks for a supervisor", target="retail-tier2",
        briefing={"summary": f"{CALLER_NAME} ({CALLER_PHONE}) disputes a charge of {AMOUNT} on order {ORDER_ID}.",
                  "order_id": ORDER_ID, "verified": True},
    )
    await records.end_call(call_id, end_reason="escalated")
    assert tool_call_id > 0 and escalation_id > 0

    stored = await every_stored_row(database_dsn, schema)
    for secret in (CALLER_NAME, "Maria", "Lopez", CALLER_PHONE, CALLER_CARD, "4111", CALLER_EMAIL):
        assert secret not in stored, f"{secret!r} reached the database"

    async with await connect(database_dsn, schema) as conn:
        cursor = await conn.execute(
            "SELECT turn, caller_text, bot_text, route, reason, timings FROM turns WHERE call_id = %s ORDER BY turn",
            [call_id])
        turns = await cursor.fetchall()
        cursor = await conn.execute("SELECT arguments, outcome FROM tool_calls WHERE call_id = %s", [call_id])
        tool_calls = await cursor.fetchall()
        cursor = await conn.execute("SELECT ended_at IS NOT NULL, end_reason, context FROM calls WHERE call_id = %s",
                                    [call_id])
        call = await cursor.fetchone()
        cursor = await conn.execute("SELECT kind, turn, payload FROM audit WHERE call_id = %s ORDER BY id", [call_id])
        audit = await cursor.fetchall()
    assert turns == [
        (0, "Hi, this is <PERSON>, my number is <PHONE_NUMBER>.", "Thanks <PERSON>. What is your order number?",
         "flow", "identify caller", {"asr_ms": 180.5, "llm_first_token_ms": 412}),
        (1, f"It's {ORDER_ID}, I paid {AMOUNT} with card <CREDIT_CARD>.", f"I found order {ORDER_ID} for {AMOUNT}.",
         "flow", "order found", {}),
    ]
    assert tool_calls == [({"order_id": ORDER_ID, "card": "<CREDIT_CARD>", "email": "<EMAIL_ADDRESS>"}, "ok")]
    assert call == (True, "escalated", {"caller_said_name": "<PERSON>"})
    # Every routing decision, tool call and escalation has its audit row, in order.
    assert [(kind, turn) for kind, turn, _ in audit] == [
        ("call_started", None), ("turn", 0), ("turn", 1), ("tool_call", 1), ("escalation", 2), ("call_ended", None)]
    assert audit[1][2]["route"] == "flow" and audit[1][2]["reason"] == "identify caller"
    assert audit[3][2]["arguments"] == {"order_id": ORDER_ID, "card": "<CREDIT_CARD>", "email": "<EMAIL_ADDRESS>"}
    assert audit[4][2]["target"] == "retail-tier2"


async def test_the_escalation_briefing_is_found_by_call_id(records):
    call_id = new_call_id()
    await records.start_call(call_id, service_line="retail-support")
    briefing = {"summary": f"{CALLER_NAME} wants to return order {ORDER_ID} ({AMOUNT}); the window closed.",
                "intent": "return_order", "order_id": ORDER_ID}
    await records.record_escalation(call_id, 3, reason="policy exception requested", target="returns",
                                    briefing=briefing)
    await records.record_escalation(call_id, 5, reason="caller asked for a person", briefing="Caller repeats request.")

    found = await records.briefing_for(call_id)
    assert [(e.turn, e.reason, e.target) for e in found] == [
        (3, "policy exception requested", "returns"), (5, "caller asked for a person", "")]
    assert found[0].briefing == {
        "summary": f"<PERSON> wants to return order {ORDER_ID} ({AMOUNT}); the window closed.",
        "intent": "return_order", "order_id": ORDER_ID}
    assert found[1].briefing == "Caller repeats request."
    assert await records.briefing_for(new_call_id()) == []


async def test_records_of_unknown_calls_repeated_turns_and_bad_ids_are_refused(records):
    unknown = new_call_id()
    with pytest.raises(CallRecordError, match=f"call {unknown} was never started: call start_call"):
        await records.record_turn(unknown, 0, caller_text="hello", bot_text="hi", route="faq", reason="greeting")
    call_id = new_call_id()
    await records.start_call(call_id)
    await records.record_turn(call_id, 0, caller_text="hello", bot_text="hi", route="faq", reason="greeting")
    with pytest.raises(CallRecordError, match=f"turn 0 of call {call_id} is already recorded"):
        await records.record_turn(call_id, 0, caller_text="again", bot_text="hi", route="faq", reason="greeting")
    with pytest.raises(CallRecordError, match="already recorded: give each call its own id"):
        await records.start_call(call_id)
    with pytest.raises(CallRecordError, match="is not an id"):
        await records.start_call(f"call of {CALLER_NAME}")
    await records.end_call(call_id)
    with pytest.raises(CallRecordError, match="already ended"):
        await records.end_call(call_id)
    # A refused write appends no audit row: the chain still verifies.
    assert (await records.verify_audit_chain()).ok


async def test_the_redactor_runs_off_the_event_loop(database_dsn, schema):
    class ThreadNotingRedactor(Redactor):
        def __init__(self) -> None:
            super().__init__()
            self.threads: set[int] = set()

        def redact_json(self, value):
            self.threads.add(threading.get_ident())
            return super().redact_json(value)

    noting = ThreadNotingRedactor()
    opened = await CallRecords.open(database_dsn, schema=schema, redactor=noting)
    try:
        call_id = new_call_id()
        await opened.start_call(call_id)
        await opened.record_turn(call_id, 0, caller_text=f"I am {CALLER_NAME}", bot_text="Hello", route="faq",
                                 reason="greeting")
    finally:
        await opened.close()
    assert noting.threads and threading.get_ident() not in noting.threads


async def test_concurrent_appends_from_several_pools_keep_one_unforked_chain(database_dsn, redactor):
    schema = fresh_schema()
    writers = [await CallRecords.open(database_dsn, schema=schema, redactor=redactor, max_connections=4)
               for _ in range(3)]
    try:
        call_ids = [new_call_id() for _ in range(5)]
        for call_id in call_ids:
            await writers[0].start_call(call_id)
        writes = []
        for n in range(50):
            writer, call_id = writers[n % 3], call_ids[n % 5]
            if n % 2:
                writes.append(writer.record_turn(call_id, n, caller_text=f"Turn {n}, my number is 415-555-01{n:02d}",
                                                 bot_text="Noted.", route="flow", reason="collect"))
            else:
                writes.append(writer.record_tool_call(call_id, n, tool="lookup", arguments={"n": n}, outcome="ok",
                                                      latency_ms=float(n)))
        await asyncio.gather(*writes)
        verdict = await writers[1].verify_audit_chain()
        async with await connect(database_dsn, schema) as conn:
            cursor = await conn.execute("SELECT count(*), min(id), max(id), count(DISTINCT prev_hash) FROM audit")
            count, first, last, distinct_links = await cursor.fetchone()
    finally:
        for writer in writers:
            await writer.close()
    assert (count, first, last, distinct_links) == (55, 1, 55, 55)
    assert verdict.ok and verdict.rows_checked == 55 and verdict.head_id == 55


async def test_the_database_refuses_to_change_or_remove_audit_rows(records, database_dsn, schema):
    call_id = new_call_id()
    await records.start_call(call_id)
    async with await connect(database_dsn, schema) as conn:
        for statement in ("UPDATE audit SET payload = '{}' WHERE call_id = %s", "DELETE FROM audit WHERE call_id = %s"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                await conn.execute(statement, [call_id])
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only: TRUNCATE"):
            await conn.execute("TRUNCATE audit")
        # The chain cannot be forged by the writer either: the trigger sets id, at and the hashes.
        cursor = await conn.execute(
            "INSERT INTO audit (id, kind, call_id, prev_hash, hash) VALUES (999999, 'forged', %s, %s, %s) "
            "RETURNING id, prev_hash, hash", [call_id, "f" * 64, "f" * 64])
        row_id, prev_hash, row_hash = await cursor.fetchone()
        assert row_id < 999999 and "f" * 64 not in (prev_hash, row_hash)
        # An append in a REPEATABLE READ snapshot could miss the chain head: refused.
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            with pytest.raises(psycopg.errors.RaiseException, match="READ COMMITTED"):
                await conn.execute("INSERT INTO audit (kind, call_id) VALUES ('late', %s)", [call_id])
            raise psycopg.Rollback()
    verdict = await records.verify_audit_chain()
    assert verdict.ok, verdict


def write_config(path: Path, dsn: str, state_dir: Path) -> Path:
    path.write_text(yaml.safe_dump({"state_dir": str(state_dir), "database": {"dsn": dsn}}))
    return path


def verify_command(*args: str) -> subprocess.CompletedProcess:
    # The operator's command, `quietline audit verify`, which runs services.dialog.records' verify.
    return subprocess.run([sys.executable, "-m", "services.appliance.cli", "audit", "verify", *args], check=False,
                          cwd=REPO_ROOT,
                          env={**os.environ, **OFFLINE_ENVIRONMENT}, capture_output=True, text=True, timeout=120)


async def test_a_changed_or_removed_audit_row_is_found_and_named(database_dsn, redactor, tmp_path):
    schema = fresh_schema()
    opened = await CallRecords.open(database_dsn, schema=schema, redactor=redactor)
    try:
        for n in range(4):
            call_id = new_call_id()
            await opened.start_call(call_id)
            await opened.record_turn(call_id, 0, caller_text="Where is my parcel?", bot_text="On its way.",
                                     route="flow", reason="order status")
        config = write_config(tmp_path / "quietline.yaml", database_dsn, tmp_path)
        intact = verify_command("--config", str(config), "--schema", schema)
        assert intact.returncode == 0, intact.stderr
        assert json.loads(intact.stdout)["ok"] is True and json.loads(intact.stdout)["rows_checked"] == 8

        async with await connect(database_dsn, schema) as conn:
            # Rows alternate call_started, turn: row 6 is the third call's turn, routed "flow".
            # Tamper as the database owner would: switch the append-only trigger off, change a row, switch it on.
            await conn.execute("ALTER TABLE audit DISABLE TRIGGER audit_append_only")
            await conn.execute("""UPDATE audit SET payload = jsonb_set(payload, '{route}', '"human"') WHERE id = 6""")
            await conn.execute("ALTER TABLE audit ENABLE TRIGGER audit_append_only")
        verdict = await opened.verify_audit_chain()
        assert (verdict.ok, verdict.first_bad_id, verdict.problem, verdict.rows_checked) == (False, 6, "hash mismatch", 6)
        assert (verdict.head_id, verdict.head_hash is not None) == (5, True)
        broken = verify_command("--config", str(config), "--schema", schema)
        assert broken.returncode == 1, broken.stderr
        assert json.loads(broken.stdout)["first_bad_id"] == 6

        async with await connect(database_dsn, schema) as conn:
            # Put the row back; then remove another one.
            await conn.execute("ALTER TABLE audit DISABLE TRIGGER audit_append_only")
            await conn.execute("""UPDATE audit SET payload = jsonb_set(payload, '{route}', '"flow"') WHERE id = 6""")
            await conn.execute("ALTER TABLE audit ENABLE TRIGGER audit_append_only")
            assert (await opened.verify_audit_chain()).ok
            await conn.execute("ALTER TABLE audit DISABLE TRIGGER audit_append_only")
            await conn.execute("DELETE FROM audit WHERE id = 3")
            await conn.execute("ALTER TABLE audit ENABLE TRIGGER audit_append_only")
        verdict = await opened.verify_audit_chain()
        assert (verdict.ok, verdict.first_bad_id, verdict.problem) == (False, 4, "broken link")
        assert "rows 3..3 are missing" in verdict.detail
    finally:
        await opened.close()


async def test_verify_command_exit_codes_for_configuration_errors(database_dsn, tmp_path):
    missing_schema = verify_command("--dsn", database_dsn, "--schema", fresh_schema())
    assert missing_schema.returncode == 2
    assert "no audit table in schema" in missing_schema.stderr
    unreachable = verify_command("--dsn", "postgresql://quietline@127.0.0.1:1/quietline")
    assert unreachable.returncode == 2
    assert "cannot connect to PostgreSQL" in unreachable.stderr
    no_file = verify_command("--config", str(tmp_path / "absent.yaml"))
    assert no_file.returncode == 2
    assert "does not exist" in no_file.stderr
    # An empty database.dsn falls back to the appliance's embedded database, which is not running here.
    no_database = verify_command("--config", str(write_config(tmp_path / "empty.yaml", "", tmp_path)))
    assert no_database.returncode == 2
    assert "embedded PostgreSQL is not running" in no_database.stderr
