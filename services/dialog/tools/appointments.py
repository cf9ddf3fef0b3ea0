"""Appointment booking over the PostgreSQL back office: a bank's adviser appointments (a clinic's are the same shape).

The calendar is backoffice.appointment_slots (one adviser's time at one location for one topic) and
backoffice.appointment_bookings (migration 003_appointments.sql). Each tool acts for the session's
verified customer only: no schema names a customer, a booking is written for the session's customer,
and another customer's appointment is answered exactly as a missing one (not_found, the same message),
so a caller learns nothing about other customers' bookings.

Times are stored as timestamptz and said in the calendar's time zone (the appliance's local zone
unless the tools are built with another): a slot's `when` is how the dialog reads it out
("Thursday 3 December at 10:00"), its `starts_at` the ISO time with offset. Dates the tools take
(earliest, latest) are local calendar days, YYYY-MM-DD; parts of the day are morning (before 12:00),
afternoon (12:00 to 17:00) and evening (from 17:00).

The rules enforced, each named in the ToolFailure's `rule`: only a slot still in the future is booked
(slot_in_past), only a free one (slot_taken), and a customer holds at most MAX_FUTURE_BOOKINGS future
bookings (max_future_bookings); only a booked, future appointment is cancelled (already_cancelled,
appointment_in_past). Booking and cancelling read back a preview and wait for the caller's yes.
A booking is one transaction holding the slot's row lock, and the database allows one live booking
per slot (a partial unique index), so of two callers confirming the same slot at once exactly one
gets it and the other is refused cleanly.

`load_demo_calendar_if_empty(dsn)` gives the demo (services.dialog.tools.demo_calendar) three weeks
of slots from today when the calendar holds nothing else.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterable
from datetime import date, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg.rows import dict_row
from purgatory import AsyncCircuitBreakerFactory

from services.dialog.tools.adapter import (
    BuildContext,
    FailureKind,
    ToolAdapter,
    ToolConfigError,
    ToolFailure,
    ToolRegistry,
    ToolSpec,
)
from services.dialog.tools.backoffice import (
    MIGRATIONS_DIR,
    SCHEMA,
    BackofficeStore,
    BackofficeTool,
    Operation,
    configured_store,
)
from services.kit.database import CONNECT_TIMEOUT_S, DatabaseError, describe_dsn, migrate

KIND = "appointments_backoffice"
# Timeouts: a search is one indexed query; a booking locks and writes a row or two.
READ_TIMEOUT_S = 2.0
WRITE_TIMEOUT_S = 4.0
TOPICS = ("mortgage", "loan", "account_opening", "investment", "general")
# Part of the day -> [first hour, hour after the last) of a slot's local start time.
PARTS_OF_DAY = {"morning": (0, 12), "afternoon": (12, 17), "evening": (17, 24)}
# Future bookings one customer may hold at once (a caller cannot block an adviser's whole week).
MAX_FUTURE_BOOKINGS = 3
BOOKED, CANCELLED = "booked", "cancelled"
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December")


# --- LLM-facing schemas -------------------------------------------------------------------------

def _arguments(properties: dict[str, Any], optional: Iterable[str] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": [name for name in properties if name not in set(optional)], "additionalProperties": False}


TOPIC = {"type": "string", "enum": list(TOPICS),
         "description": "What the appointment is about: 'mortgage', 'loan', 'account_opening', 'investment' or 'general'."}
ISO_DATE = {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
CONFIRM = " The agent needs to explain the detail and ask for explicit user confirmation (yes/no) to proceed."

SPECS: dict[str, ToolSpec] = {spec.name: spec for spec in (
    ToolSpec("find_appointment_slots",
             "Find free appointment slots with an adviser for a topic, soonest first: slot id, local start time "
             "(starts_at, and `when` as it is said: 'Thursday 3 December at 10:00'), location, adviser and length in "
             "minutes. Only future slots that nobody has booked are listed. Narrow it with the first and last day "
             "the caller can come and the part of the day they prefer.",
             _arguments({"topic": TOPIC,
                         "earliest": {**ISO_DATE, "description": "The first day the caller can come, as YYYY-MM-DD (local date)."},
                         "latest": {**ISO_DATE, "description": "The last day the caller can come, as YYYY-MM-DD (local date)."},
                         "part_of_day": {"type": "string", "enum": list(PARTS_OF_DAY),
                                         "description": "Morning (before 12:00), afternoon (12:00-17:00) or evening (from 17:00)."},
                         "limit": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3,
                                   "description": "How many slots to return, 1 to 10 (default 3)."}},
                        optional=("earliest", "latest", "part_of_day", "limit")),
             timeout_s=READ_TIMEOUT_S),
    ToolSpec("book_appointment",
             "Book a free appointment slot (found with find_appointment_slots) for the verified customer. The slot must "
             "still be free and in the future, and its topic must be the one given; a customer may hold at most "
             f"{MAX_FUTURE_BOOKINGS} future appointments. Read back the day, time, location and adviser first." + CONFIRM,
             _arguments({"slot_id": {"type": "string", "minLength": 1,
                                     "description": "The slot id, as listed by find_appointment_slots."},
                         "topic": TOPIC,
                         "note": {"type": "string", "maxLength": 500,
                                  "description": "What the caller wants to discuss, in a few words, for the adviser (optional)."}},
                        optional=("note",)),
             mutates=True, timeout_s=WRITE_TIMEOUT_S),
    ToolSpec("list_my_appointments",
             "List the verified customer's upcoming booked appointments, soonest first: appointment id, topic, local "
             "start time (starts_at, and `when` as it is said), location, adviser, length in minutes and note.",
             _arguments({}), timeout_s=READ_TIMEOUT_S),
    ToolSpec("cancel_appointment",
             "Cancel one of the verified customer's upcoming appointments (as listed by list_my_appointments); the slot "
             "becomes free for others." + CONFIRM,
             _arguments({"appointment_id": {"type": "string", "minLength": 1,
                                            "description": "The appointment id, such as 'apt_0a1b2c3d', as listed by list_my_appointments."}}),
             mutates=True, timeout_s=WRITE_TIMEOUT_S),
)}
KNOWN_TOOLS = tuple(SPECS)


# --- time -----------------------------------------------------------------------------------------

def local_zone() -> ZoneInfo:
    """The appliance's time zone: $TZ if it names one, else /etc/localtime's zone, else UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    localtime = os.path.realpath("/etc/localtime")
    if "zoneinfo/" in localtime:
        candidates.append(localtime.split("zoneinfo/", 1)[1])
    for name in candidates:
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def spoken_when(moment: datetime) -> str:
    """A local start time as the dialog says it: 'Thursday 3 December at 10:00'."""
    return (f"{WEEKDAY_NAMES[moment.weekday()]} {moment.day} {MONTH_NAMES[moment.month - 1]} "
            f"at {moment.hour}:{moment.minute:02d}")


def _slot_json(row: dict[str, Any], zone: tzinfo) -> dict[str, Any]:
    """A slot row as the tools return it: the start in local time, also as said."""
    local = row["starts_at"].astimezone(zone)
    return {"slot_id": row["slot_id"], "topic": row["topic"], "starts_at": local.isoformat(),
            "date": local.date().isoformat(), "weekday": WEEKDAY_NAMES[local.weekday()], "time": f"{local:%H:%M}",
            "when": spoken_when(local), "location": row["location"], "adviser": row["adviser"],
            "duration_min": row["duration_min"]}


def _appointment_json(row: dict[str, Any], zone: tzinfo) -> dict[str, Any]:
    """A booking (joined with its slot) as the tools return it."""
    slot = _slot_json(row, zone)
    return {"appointment_id": row["appointment_id"], "status": row["status"], "note": row["note"],
            **{key: slot[key] for key in ("slot_id", "topic", "starts_at", "when", "location", "adviser", "duration_min")}}


def _local_day(tool: str, args: dict[str, Any], name: str) -> date | None:
    if name not in args:
        return None
    try:
        return date.fromisoformat(args[name])
    except ValueError:
        raise ToolFailure(FailureKind.INVALID_ARGUMENTS, tool, f"argument {name}: {args[name]!r} is not a calendar "
                                                               "date: give the day as YYYY-MM-DD", field=name) from None


def _zone_name(zone: tzinfo) -> str:
    return getattr(zone, "key", None) or "UTC"


# --- operations ---------------------------------------------------------------------------------

def _refuse(tool: str, rule: str, message: str) -> ToolFailure:
    return ToolFailure(FailureKind.POLICY_REFUSED, tool, f"{message} (policy rule: {rule})", rule=rule)


async def find_appointment_slots(conn, session, args, *, zone: tzinfo) -> list[dict[str, Any]]:
    """Free future slots of the topic within the days and part of the day asked for, soonest first."""
    tool = "find_appointment_slots"
    earliest, latest = _local_day(tool, args, "earliest"), _local_day(tool, args, "latest")
    if earliest and latest and latest < earliest:
        raise ToolFailure(FailureKind.INVALID_ARGUMENTS, tool, f"argument latest: {latest} is before earliest "
                                                               f"{earliest}: give the days in order", field="latest")
    first_hour, end_hour = PARTS_OF_DAY.get(args.get("part_of_day", ""), (None, None))
    # Days and hours are the calendar's local ones: the transaction's time zone makes date casts and
    # extract(hour) local.
    await conn.execute("SELECT set_config('TimeZone', %s, true)", [_zone_name(zone)])
    cursor = await conn.execute(
        "SELECT s.slot_id, s.topic, s.location, s.adviser, s.starts_at, s.duration_min "
        "FROM backoffice.appointment_slots AS s "
        "WHERE s.topic = %(topic)s AND s.starts_at > now() "
        "AND (%(earliest)s::date IS NULL OR s.starts_at >= %(earliest)s::date::timestamptz) "
        "AND (%(latest)s::date IS NULL OR s.starts_at < (%(latest)s::date + 1)::timestamptz) "
        "AND (%(first_hour)s::integer IS NULL OR extract(hour FROM s.starts_at) >= %(first_hour)s::integer) "
        "AND (%(end_hour)s::integer IS NULL OR extract(hour FROM s.starts_at) < %(end_hour)s::integer) "
        "AND NOT EXISTS (SELECT 1 FROM backoffice.appointment_bookings AS b "
        "                WHERE b.slot_id = s.slot_id AND b.status = 'booked') "
        "ORDER BY s.starts_at, s.slot_id LIMIT %(limit)s",
        {"topic": args["topic"], "earliest": earliest, "latest": latest, "first_hour": first_hour,
         "end_hour": end_hour, "limit": int(args.get("limit", 3))})  # the schema lets 3.0 through as an integer
    return [_slot_json(row, zone) for row in await cursor.fetchall()]


async def _booking_plan(conn, session, args, zone: tzinfo) -> dict[str, Any]:
    """The booking `args` ask for, checked against the policy (customer and slot locked): what is read back."""
    tool = "book_appointment"
    # One booking at a time per customer, so two bookings confirmed at once cannot both pass the limit.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                       [f"quietline.appointments.customer:{session.customer_id}"])
    cursor = await conn.execute(
        "SELECT slot_id, topic, location, adviser, starts_at, duration_min, starts_at <= now() AS started "
        "FROM backoffice.appointment_slots WHERE slot_id = %s FOR UPDATE", [args["slot_id"]])
    slot = await cursor.fetchone()
    if slot is None:
        raise ToolFailure(FailureKind.NOT_FOUND, tool, f"there is no appointment slot {args['slot_id']}: "
                                                       "find_appointment_slots gives the free slots' ids", field="slot_id")
    if slot["topic"] != args["topic"]:
        raise ToolFailure(FailureKind.INVALID_ARGUMENTS, tool,
                          f"argument topic: slot {slot['slot_id']} is for {slot['topic']} appointments, not "
                          f"{args['topic']}: find a slot for the caller's topic", field="topic")
    if slot["started"]:
        raise _refuse(tool, "slot_in_past", f"slot {slot['slot_id']} ({spoken_when(slot['starts_at'].astimezone(zone))}) "
                                            "has already begun: offer a future slot")
    # The slot's row lock is held: a booking committed by a concurrent call is visible here.
    cursor = await conn.execute("SELECT customer_id FROM backoffice.appointment_bookings "
                                "WHERE slot_id = %s AND status = 'booked'", [slot["slot_id"]])
    holder = await cursor.fetchone()
    if holder is not None:
        whose = "the caller already holds it" if holder["customer_id"] == session.customer_id else "it is no longer free"
        raise _refuse(tool, "slot_taken", f"slot {slot['slot_id']} cannot be booked: {whose}; offer another slot")
    cursor = await conn.execute(
        "SELECT count(*) AS upcoming FROM backoffice.appointment_bookings AS b "
        "JOIN backoffice.appointment_slots AS s USING (slot_id) "
        "WHERE b.customer_id = %s AND b.status = 'booked' AND s.starts_at > now()", [session.customer_id])
    if (await cursor.fetchone())["upcoming"] >= MAX_FUTURE_BOOKINGS:
        raise _refuse(tool, "max_future_bookings",
                      f"the caller already has {MAX_FUTURE_BOOKINGS} upcoming appointments, the most one customer may "
                      "hold: offer to cancel or move one (list_my_appointments), or a colleague")
    read_back = _slot_json(slot, zone)
    return {key: read_back[key] for key in ("slot_id", "topic", "starts_at", "when", "location", "adviser",
                                            "duration_min")} | {"note": args.get("note", "").strip()}


async def preview_booking(conn, session, args, *, zone: tzinfo) -> dict[str, Any]:
    """What booking the slot would do, read back before the caller confirms."""
    return await _booking_plan(conn, session, args, zone)


async def book_appointment(conn, session, args, *, zone: tzinfo) -> dict[str, Any]:
    """Book the slot for the session's customer, in one transaction."""
    plan = await _booking_plan(conn, session, args, zone)
    while True:  # 32 random bits: a clash is rare, and the insert tells
        appointment_id = f"apt_{secrets.token_hex(4)}"
        try:
            cursor = await conn.execute(
                "INSERT INTO backoffice.appointment_bookings (appointment_id, slot_id, customer_id, topic, note) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (appointment_id) DO NOTHING RETURNING appointment_id",
                [appointment_id, plan["slot_id"], session.customer_id, plan["topic"], plan["note"]])
        except psycopg.errors.UniqueViolation:
            # The one-live-booking-per-slot index: another writer (not through this lock) got there first.
            raise _refuse("book_appointment", "slot_taken",
                          f"slot {plan['slot_id']} cannot be booked: it is no longer free; offer another slot") from None
        if await cursor.fetchone() is not None:
            return {"appointment_id": appointment_id, "status": BOOKED, **plan}


async def list_my_appointments(conn, session, args, *, zone: tzinfo) -> list[dict[str, Any]]:
    """The session customer's upcoming booked appointments, soonest first."""
    cursor = await conn.execute(
        "SELECT b.appointment_id, b.status, b.note, s.slot_id, s.topic, s.location, s.adviser, s.starts_at, "
        "s.duration_min FROM backoffice.appointment_bookings AS b JOIN backoffice.appointment_slots AS s USING (slot_id) "
        "WHERE b.customer_id = %s AND b.status = 'booked' AND s.starts_at > now() ORDER BY s.starts_at, b.appointment_id",
        [session.customer_id])
    return [_appointment_json(row, zone) for row in await cursor.fetchall()]


async def _cancellation(conn, session, args, zone: tzinfo) -> dict[str, Any]:
    """The cancellation `args` ask for, checked (the booking locked): what is read back."""
    tool = "cancel_appointment"
    cursor = await conn.execute(
        "SELECT b.appointment_id, b.status, b.note, s.slot_id, s.topic, s.location, s.adviser, s.starts_at, "
        "s.duration_min, s.starts_at <= now() AS started "
        "FROM backoffice.appointment_bookings AS b JOIN backoffice.appointment_slots AS s USING (slot_id) "
        "WHERE b.appointment_id = %s AND b.customer_id = %s FOR UPDATE OF b",
        [args["appointment_id"], session.customer_id])
    row = await cursor.fetchone()
    if row is None:
        # Another customer's appointment gets the very answer a missing one gets: nothing says it exists.
        raise ToolFailure(FailureKind.NOT_FOUND, tool, f"the caller has no appointment {args['appointment_id']}: "
                                                       "list_my_appointments gives the caller's appointment ids",
                          field="appointment_id")
    if row["status"] == CANCELLED:
        raise _refuse(tool, "already_cancelled", f"appointment {row['appointment_id']} is already cancelled")
    if row["started"]:
        raise _refuse(tool, "appointment_in_past", f"appointment {row['appointment_id']} has already begun: "
                                                   "it cannot be cancelled any more")
    return _appointment_json(row, zone)


async def preview_cancellation(conn, session, args, *, zone: tzinfo) -> dict[str, Any]:
    """What cancelling the appointment would do, read back before the caller confirms."""
    return await _cancellation(conn, session, args, zone)


async def cancel_appointment(conn, session, args, *, zone: tzinfo) -> dict[str, Any]:
    """Cancel the session customer's appointment; its slot is free again."""
    appointment = await _cancellation(conn, session, args, zone)
    await conn.execute("UPDATE backoffice.appointment_bookings SET status = 'cancelled', cancelled_at = now() "
                       "WHERE appointment_id = %s", [appointment["appointment_id"]])
    return {**appointment, "status": CANCELLED}


OPERATIONS = {operation.__name__: operation for operation in (
    find_appointment_slots, book_appointment, list_my_appointments, cancel_appointment,
)}
# What a mutating tool reads back for confirmation, where that differs from its result.
PREVIEWS = {
    "book_appointment": preview_booking,
    "cancel_appointment": preview_cancellation,
}


# --- the calendar -------------------------------------------------------------------------------

async def load_calendar(dsn: str, slots: Iterable[dict[str, Any]]) -> int:
    """Add `slots` (slot_id, topic, location, adviser, aware starts_at, duration_min) to the calendar.

    A slot whose id is already there is left as it is, so loading the same calendar twice adds
    nothing. Returns how many slots were added.
    """
    await migrate(dsn, SCHEMA, MIGRATIONS_DIR)
    rows = [(slot["slot_id"], slot["topic"], slot["location"], slot["adviser"], slot["starts_at"], slot["duration_min"])
            for slot in slots]
    async with await _connect(dsn) as conn, conn.transaction():
        added = 0
        for row in rows:
            cursor = await conn.execute(
                "INSERT INTO backoffice.appointment_slots (slot_id, topic, location, adviser, starts_at, duration_min) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (slot_id) DO NOTHING RETURNING slot_id", row)
            added += await cursor.fetchone() is not None
    return added


async def load_demo_calendar_if_empty(dsn: str, start: date | None = None, zone: tzinfo | None = None) -> bool:
    """Give the demo three weeks of slots from `start` (today) when the calendar holds nothing else.

    "Nothing else": no slot at all, or only demo slots, none of them in the future (a demo appliance
    left running for weeks gets a fresh calendar at its next start). A site's own calendar is never
    added to. True when slots were added now.
    """
    from services.dialog.tools.demo_calendar import DEMO_SLOT_PREFIX, demo_calendar

    zone = zone or local_zone()
    await migrate(dsn, SCHEMA, MIGRATIONS_DIR)
    async with await _connect(dsn) as conn:
        cursor = await conn.execute("SELECT 1 FROM backoffice.appointment_slots WHERE starts_at > now() "
                                    "OR NOT starts_with(slot_id, %s) LIMIT 1", [DEMO_SLOT_PREFIX])
        in_use = await cursor.fetchone()
    if in_use:
        return False
    return await load_calendar(dsn, demo_calendar(start or datetime.now(zone).date(), zone)) > 0


async def _connect(dsn: str) -> psycopg.AsyncConnection:
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                                     row_factory=dict_row)
    except psycopg.OperationalError as err:
        raise DatabaseError(f"appointments: cannot connect to PostgreSQL at {describe_dsn(dsn)} ({str(err).strip()}): "
                            "start the database or correct the DSN") from None


# --- building ------------------------------------------------------------------------------------

def make_tool(name: str, store: BackofficeStore, breakers: AsyncCircuitBreakerFactory | None = None,
              zone: tzinfo | None = None) -> ToolAdapter:
    """The appointment tool `name` on `store`, saying times in `zone` (default: the appliance's local zone)."""
    zone = zone or local_zone()
    operation: Operation = functools.partial(OPERATIONS[name], zone=zone)
    preview = functools.partial(PREVIEWS[name], zone=zone) if name in PREVIEWS else None
    return BackofficeTool(SPECS[name], store, operation, breakers, preview_operation=preview)


def appointments_registry(store: BackofficeStore, breakers: AsyncCircuitBreakerFactory | None = None,
                          names: Iterable[str] = KNOWN_TOOLS, zone: tzinfo | None = None) -> ToolRegistry:
    """A registry with the appointment tools `names` (all by default) on an open store, sharing one breaker factory."""
    breakers = breakers or AsyncCircuitBreakerFactory()
    return ToolRegistry(make_tool(name, store, breakers, zone) for name in names)


def appointments_tools_config(**per_tool: Any) -> dict[str, Any]:
    """A tools configuration (the YAML shape) offering every appointment tool, each with `per_tool` settings."""
    return {"tools": {name: {"kind": KIND, **per_tool} for name in KNOWN_TOOLS}}


async def build_tool(name: str, options: dict[str, Any], context: BuildContext) -> ToolAdapter:
    """Build tool `name` of kind appointments_backoffice; options: dsn (default: the appliance's),
    max_connections, timezone (an IANA name such as 'Europe/London'; default: the appliance's zone)."""
    store = await configured_store(KIND, name, options, context, frozenset({"timezone"}))
    zone = None
    if "timezone" in options:
        try:
            zone = ZoneInfo(str(options["timezone"]))
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolConfigError(f"tools config, tool {name}: options.timezone {options['timezone']!r} is not a time "
                                  "zone: use an IANA name such as 'Europe/London'") from None
    return make_tool(name, store, context.breakers, zone)
