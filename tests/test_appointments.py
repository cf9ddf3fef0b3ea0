"""Appointment booking: the tools on a real PostgreSQL back office, and the booking flow driven turn by turn.

The calendar is the project's own demo calendar (services.dialog.tools.demo_calendar), generated from a
fixed Monday far in the future, so every slot is still to come whenever the tests run, and what each
test expects is computed from the same generator, not hard-coded. Times are the calendar's local
times in one fixed zone; the flow is given that Monday as "today". A few days of the same calendar
generated from a Monday long gone give slots in the past. Bookings are emptied before every test.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row

from services.dialog.appointment_flows import (
    APPOINTMENT_FLOWS,
    AppointmentFlow,
    appointment_topic,
    clock_time,
    time_preference,
)
from services.dialog.flows import CallState
from services.dialog.intents import match_control
from services.dialog.tools import bank
from services.dialog.tools.adapter import (
    ADAPTER_KINDS,
    CUSTOMER_ID_ARGUMENTS,
    FailureKind,
    ToolConfigError,
    ToolFailure,
    ToolRegistry,
    VerificationLevel,
    VerifiedSession,
    load_tool_registry,
)
from services.dialog.tools.appointments import (
    KIND,
    KNOWN_TOOLS,
    MAX_FUTURE_BOOKINGS,
    appointments_registry,
    appointments_tools_config,
    load_calendar,
    load_demo_calendar_if_empty,
    make_tool,
)
from services.dialog.tools.backoffice import BackofficeStore
from services.dialog.tools.demo_calendar import BRANCHES, demo_calendar

ZONE = ZoneInfo("Europe/London")
START = date(2096, 3, 12)  # a Monday; summer time starts in the calendar's third week
THURSDAY = START + timedelta(days=3)
SATURDAY = START + timedelta(days=5)
PAST_START = date(2020, 3, 2)  # a Monday long gone
CALENDAR = demo_calendar(START, ZONE)
PAST_CALENDAR = demo_calendar(PAST_START, ZONE, days=5)
ADA, BRUNO, CHIARA = "cust_ada", "cust_bruno", "cust_chiara"


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
async def store(database_dsn: str):
    """The back office with exactly the test calendar (and a few past days), whatever was there before."""
    opened = await BackofficeStore.open(database_dsn)
    async with await psycopg.AsyncConnection.connect(database_dsn, autocommit=True) as conn:
        await conn.execute("DELETE FROM backoffice.appointment_slots")  # bookings go with their slots
    assert await load_demo_calendar_if_empty(database_dsn, START, ZONE)
    assert await load_calendar(database_dsn, PAST_CALENDAR) == len(PAST_CALENDAR)
    yield opened
    await opened.close()


@pytest.fixture(scope="module")
def tools(store: BackofficeStore) -> ToolRegistry:
    return appointments_registry(store, zone=ZONE)


@pytest.fixture(autouse=True)
async def no_bookings(store: BackofficeStore, database_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_dsn, autocommit=True) as conn:
        await conn.execute("DELETE FROM backoffice.appointment_bookings")


def session_for(customer_id: str) -> VerifiedSession:
    return VerifiedSession.verified("appointments-test", customer_id, "test")


async def expect_failure(kind: FailureKind, call) -> ToolFailure:
    with pytest.raises(ToolFailure) as caught:
        await call
    assert caught.value.kind is kind, f"expected {kind.value}, got {caught.value!r}"
    return caught.value


async def bookings(dsn: str) -> list[dict]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cursor = await conn.execute("SELECT appointment_id, slot_id, customer_id, topic, note, status "
                                    "FROM backoffice.appointment_bookings ORDER BY created_at, appointment_id")
        return await cursor.fetchall()


def local_hour(slot: dict) -> int:
    return slot["starts_at"].astimezone(ZONE).hour


def calendar(topic: str, day: date | None = None, hours: tuple[int, int] = (0, 24)) -> list[dict]:
    """The test calendar's slots of `topic` (on `day`, starting within `hours`), soonest first."""
    return [slot for slot in CALENDAR if slot["topic"] == topic and (day is None or slot["starts_at"].date() == day)
            and hours[0] <= local_hour(slot) < hours[1]]


def ids(slots: list[dict]) -> list[str]:
    return [slot["slot_id"] for slot in slots]


# --- the calendar -------------------------------------------------------------------------------

def test_the_demo_calendar_is_weekdays_nine_to_five_two_branches_every_topic() -> None:
    assert demo_calendar(START, ZONE) == CALENDAR, "the same start gives the same calendar"
    days = {slot["starts_at"].date() for slot in CALENDAR}
    assert min(days) == START and max(days) < START + timedelta(days=21) and all(day.weekday() < 5 for day in days)
    assert len(days) == 15  # three weeks of weekdays
    for slot in CALENDAR:
        local = slot["starts_at"].astimezone(ZONE)
        assert local.hour >= 9 and local + timedelta(minutes=slot["duration_min"]) <= local.replace(hour=17, minute=0)
    assert {slot["location"] for slot in CALENDAR} == set(BRANCHES)
    assert len({slot["adviser"] for slot in CALENDAR}) >= 4
    assert {slot["topic"] for slot in CALENDAR} == {"mortgage", "loan", "account_opening", "investment", "general"}
    assert len(set(ids(CALENDAR))) == len(CALENDAR)
    # Summer time starts within the three weeks: wall-clock times stay as they are.
    assert {slot["starts_at"].utcoffset() for slot in CALENDAR} == {timedelta(0), timedelta(hours=1)}
    assert all(slot["starts_at"].astimezone(ZONE).minute in (0, 30) for slot in CALENDAR)


async def test_the_demo_calendar_is_loaded_once_and_only_into_an_unused_calendar(store, database_dsn: str) -> None:
    # Future demo slots are there (the module's own load): nothing is added.
    assert not await load_demo_calendar_if_empty(database_dsn, START + timedelta(days=7), ZONE)
    assert await load_calendar(database_dsn, CALENDAR) == 0, "loading the same slots twice added some"
    async with await psycopg.AsyncConnection.connect(database_dsn) as conn:
        count = (await (await conn.execute("SELECT count(*) FROM backoffice.appointment_slots")).fetchone())[0]
    assert count == len(CALENDAR) + len(PAST_CALENDAR)


# --- finding slots --------------------------------------------------------------------------------

async def test_free_slots_of_a_topic_come_soonest_first_and_never_from_the_past(tools) -> None:
    ada = session_for(ADA)
    found = await tools.invoke(ada, "find_appointment_slots", {"topic": "mortgage"})
    assert ids(found) == ids(calendar("mortgage")[:3])
    first, expected = found[0], calendar("mortgage")[0]
    assert first == {"slot_id": expected["slot_id"], "topic": "mortgage", "starts_at": expected["starts_at"].isoformat(),
                     "date": START.isoformat(), "weekday": "Monday", "time": "09:00",
                     "when": "Monday 12 March at 9:00", "location": expected["location"], "adviser": expected["adviser"],
                     "duration_min": expected["duration_min"]}
    everything = await tools.invoke(ada, "find_appointment_slots", {"topic": "loan", "limit": 10})
    assert ids(everything) == ids(calendar("loan")[:10])
    assert not set(ids(PAST_CALENDAR)) & set(ids(everything))


async def test_slots_are_found_by_part_of_day_and_date_range(tools) -> None:
    ada = session_for(ADA)
    day = {"earliest": THURSDAY.isoformat(), "latest": THURSDAY.isoformat()}
    morning = await tools.invoke(ada, "find_appointment_slots", {"topic": "mortgage", **day, "part_of_day": "morning",
                                                                 "limit": 10})
    assert ids(morning) == ids(calendar("mortgage", THURSDAY, (0, 12))) and len(morning) >= 3
    afternoon = await tools.invoke(ada, "find_appointment_slots", {"topic": "mortgage", **day, "part_of_day": "afternoon",
                                                                   "limit": 10})
    assert ids(afternoon) == ids(calendar("mortgage", THURSDAY, (12, 17))) and afternoon
    assert all(slot["time"] >= "12:00" for slot in afternoon)
    assert await tools.invoke(ada, "find_appointment_slots", {"topic": "mortgage", **day, "part_of_day": "evening"}) == []
    weekend = {"earliest": SATURDAY.isoformat(), "latest": (SATURDAY + timedelta(days=1)).isoformat()}
    assert await tools.invoke(ada, "find_appointment_slots", {"topic": "general", **weekend}) == []
    next_week = await tools.invoke(ada, "find_appointment_slots", {
        "topic": "investment", "earliest": (START + timedelta(days=7)).isoformat(), "limit": 10})
    assert ids(next_week) == ids([slot for slot in calendar("investment")
                                  if slot["starts_at"].date() >= START + timedelta(days=7)][:10])
    for arguments, field in (({"earliest": "2096-02-30"}, "earliest"), ({"latest": "next week"}, "latest"),
                             ({"earliest": "2096-03-09", "latest": "2096-03-08"}, "latest"),
                             ({"part_of_day": "night"}, "part_of_day"), ({"limit": 11}, "limit"),
                             ({"topic": "pizza"}, "topic")):
        failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(
            ada, "find_appointment_slots", {"topic": "loan", **arguments}))
        assert failure.field == field, failure


# --- booking --------------------------------------------------------------------------------------

async def test_a_booking_is_read_back_with_a_preview_and_writes_nothing_unconfirmed(tools, database_dsn: str) -> None:
    slot = calendar("mortgage", THURSDAY, (0, 12))[1]
    failure = await expect_failure(FailureKind.NEEDS_CONFIRMATION, tools.invoke(
        session_for(ADA), "book_appointment", {"slot_id": slot["slot_id"], "topic": "mortgage", "note": " first home "}))
    local = slot["starts_at"].astimezone(ZONE)
    assert failure.preview == {"slot_id": slot["slot_id"], "topic": "mortgage", "starts_at": local.isoformat(),
                               "when": f"Thursday 15 March at {local.hour}:{local.minute:02d}",
                               "location": slot["location"], "adviser": slot["adviser"],
                               "duration_min": slot["duration_min"], "note": "first home"}
    assert await bookings(database_dsn) == []


async def test_a_confirmed_booking_is_written_and_the_slot_cannot_be_booked_again(tools, database_dsn: str) -> None:
    slot = calendar("mortgage", THURSDAY)[0]
    arguments = {"slot_id": slot["slot_id"], "topic": "mortgage", "note": "remortgage"}
    booked = await tools.invoke(session_for(ADA), "book_appointment", arguments, confirmed=True)
    assert booked["appointment_id"].startswith("apt_") and booked["status"] == "booked"
    assert booked["slot_id"] == slot["slot_id"] and booked["adviser"] == slot["adviser"]
    assert await bookings(database_dsn) == [{"appointment_id": booked["appointment_id"], "slot_id": slot["slot_id"],
                                             "customer_id": ADA, "topic": "mortgage", "note": "remortgage",
                                             "status": "booked"}]
    found = await tools.invoke(session_for(BRUNO), "find_appointment_slots", {
        "topic": "mortgage", "earliest": THURSDAY.isoformat(), "latest": THURSDAY.isoformat(), "limit": 10})
    assert slot["slot_id"] not in ids(found) and len(found) == len(calendar("mortgage", THURSDAY)) - 1

    for customer in (BRUNO, ADA):  # someone else, or the caller again
        for confirmed in (False, True):
            failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(
                session_for(customer), "book_appointment", arguments, confirmed=confirmed))
            assert failure.rule == "slot_taken"
            assert ADA not in failure.message
    assert len(await bookings(database_dsn)) == 1


async def test_of_concurrent_confirmed_bookings_of_one_slot_exactly_one_succeeds(tools, database_dsn: str) -> None:
    slot = calendar("loan")[0]
    arguments = {"slot_id": slot["slot_id"], "topic": "loan"}
    callers = (ADA, BRUNO, CHIARA, ADA)
    results = await asyncio.gather(*(tools.invoke(session_for(customer), "book_appointment", arguments, confirmed=True)
                                     for customer in callers), return_exceptions=True)
    booked = [result for result in results if isinstance(result, dict)]
    refused = [result for result in results if isinstance(result, ToolFailure)]
    assert len(booked) == 1 and len(refused) == len(callers) - 1, results
    assert all(failure.kind is FailureKind.POLICY_REFUSED and failure.rule == "slot_taken" for failure in refused)
    (written,) = await bookings(database_dsn)
    assert written["appointment_id"] == booked[0]["appointment_id"] and written["slot_id"] == slot["slot_id"]
    # The database itself holds one live booking per slot, whoever writes to it.
    async with await psycopg.AsyncConnection.connect(database_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute("INSERT INTO backoffice.appointment_bookings (appointment_id, slot_id, customer_id, topic) "
                               "VALUES ('apt_direct01', %s, %s, 'loan')", [slot["slot_id"], CHIARA])


async def test_a_slot_in_the_past_is_refused(tools, database_dsn: str) -> None:
    slot = next(slot for slot in PAST_CALENDAR if slot["topic"] == "mortgage")
    for confirmed in (False, True):
        failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(
            session_for(ADA), "book_appointment", {"slot_id": slot["slot_id"], "topic": "mortgage"}, confirmed=confirmed))
        assert failure.rule == "slot_in_past"
    assert await bookings(database_dsn) == []


async def test_a_fourth_future_booking_is_refused_until_one_is_cancelled(tools, database_dsn: str) -> None:
    ada = session_for(ADA)
    # A booking in the past does not count towards the limit.
    past = next(slot for slot in PAST_CALENDAR if slot["topic"] == "general")
    async with await psycopg.AsyncConnection.connect(database_dsn, autocommit=True) as conn:
        await conn.execute("INSERT INTO backoffice.appointment_bookings (appointment_id, slot_id, customer_id, topic) "
                           "VALUES ('apt_past0001', %s, %s, 'general')", [past["slot_id"], ADA])
    slots = calendar("account_opening")[:MAX_FUTURE_BOOKINGS + 1]
    made = [await tools.invoke(ada, "book_appointment", {"slot_id": slot["slot_id"], "topic": "account_opening"},
                               confirmed=True) for slot in slots[:MAX_FUTURE_BOOKINGS]]
    fourth = {"slot_id": slots[-1]["slot_id"], "topic": "account_opening"}
    for confirmed in (False, True):
        failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(ada, "book_appointment", fourth,
                                                                                confirmed=confirmed))
        assert failure.rule == "max_future_bookings" and str(MAX_FUTURE_BOOKINGS) in failure.message
    # Another customer may still book that slot; and once Ada cancels one, so may she.
    await expect_failure(FailureKind.NEEDS_CONFIRMATION, tools.invoke(session_for(BRUNO), "book_appointment", fourth))
    await tools.invoke(ada, "cancel_appointment", {"appointment_id": made[0]["appointment_id"]}, confirmed=True)
    assert (await tools.invoke(ada, "book_appointment", fourth, confirmed=True))["slot_id"] == fourth["slot_id"]


async def test_a_wrong_topic_an_unknown_slot_or_a_customer_argument_is_refused(tools, database_dsn: str) -> None:
    ada = session_for(ADA)
    slot = calendar("investment")[0]
    failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(
        ada, "book_appointment", {"slot_id": slot["slot_id"], "topic": "loan"}, confirmed=True))
    assert failure.field == "topic" and "investment" in failure.message
    failure = await expect_failure(FailureKind.NOT_FOUND, tools.invoke(
        ada, "book_appointment", {"slot_id": "demo-20960305-0900-nobody", "topic": "loan"}))
    assert failure.field == "slot_id"
    failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(
        ada, "book_appointment", {"slot_id": slot["slot_id"], "topic": "investment", "customer_id": BRUNO}, confirmed=True))
    assert failure.field == "customer_id"
    failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(
        ada, "book_appointment", {"slot_id": slot["slot_id"], "topic": "investment", "note": "x" * 501}))
    assert failure.field == "note"
    assert await bookings(database_dsn) == []


# --- the caller's appointments ------------------------------------------------------------------------

async def test_callers_list_and_cancel_only_their_own_appointments(tools, database_dsn: str) -> None:
    ada, bruno = session_for(ADA), session_for(BRUNO)
    later, sooner = calendar("general")[3], calendar("general")[1]
    ada_later = await tools.invoke(ada, "book_appointment", {"slot_id": later["slot_id"], "topic": "general"}, confirmed=True)
    ada_sooner = await tools.invoke(ada, "book_appointment", {"slot_id": sooner["slot_id"], "topic": "general",
                                                              "note": "change of address"}, confirmed=True)
    brunos = await tools.invoke(bruno, "book_appointment", {"slot_id": calendar("general")[0]["slot_id"], "topic": "general"},
                                confirmed=True)
    listed = await tools.invoke(ada, "list_my_appointments", {})
    assert [row["appointment_id"] for row in listed] == [ada_sooner["appointment_id"], ada_later["appointment_id"]]
    assert listed[0] == {"appointment_id": ada_sooner["appointment_id"], "status": "booked", "note": "change of address",
                         **{key: ada_sooner[key] for key in ("slot_id", "topic", "starts_at", "when", "location",
                                                             "adviser", "duration_min")}}
    assert [row["appointment_id"] for row in await tools.invoke(bruno, "list_my_appointments", {})] == [brunos["appointment_id"]]
    assert await tools.invoke(session_for(CHIARA), "list_my_appointments", {}) == []

    # Bruno cannot cancel (or learn of) Ada's appointment: the very answer a missing one gets.
    answers = []
    for appointment_id in (ada_sooner["appointment_id"], "apt_00000000"):
        for confirmed in (False, True):
            failure = await expect_failure(FailureKind.NOT_FOUND, tools.invoke(
                bruno, "cancel_appointment", {"appointment_id": appointment_id}, confirmed=confirmed))
            assert failure.field == "appointment_id" and ADA not in failure.message
            answers.append(failure.message.replace(appointment_id, "<id>"))
    assert len(set(answers)) == 1
    assert {row["status"] for row in await bookings(database_dsn)} == {"booked"}

    failure = await expect_failure(FailureKind.NEEDS_CONFIRMATION, tools.invoke(
        ada, "cancel_appointment", {"appointment_id": ada_sooner["appointment_id"]}))
    assert failure.preview == listed[0]
    cancelled = await tools.invoke(ada, "cancel_appointment", {"appointment_id": ada_sooner["appointment_id"]}, confirmed=True)
    assert cancelled == {**listed[0], "status": "cancelled"}
    assert [row["appointment_id"] for row in await tools.invoke(ada, "list_my_appointments", {})] == [ada_later["appointment_id"]]
    found = await tools.invoke(bruno, "find_appointment_slots", {"topic": "general", "limit": 10})
    assert sooner["slot_id"] in ids(found), "a cancelled appointment's slot is free again"
    failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(
        ada, "cancel_appointment", {"appointment_id": ada_sooner["appointment_id"]}, confirmed=True))
    assert failure.rule == "already_cancelled"
    # The freed slot can be booked again: one live booking per slot, cancelled ones kept as records.
    await tools.invoke(bruno, "book_appointment", {"slot_id": sooner["slot_id"], "topic": "general"}, confirmed=True)
    assert [row["status"] for row in await bookings(database_dsn) if row["slot_id"] == sooner["slot_id"]] == \
        ["cancelled", "booked"]


async def test_an_unverified_caller_gets_none_of_the_tools(tools) -> None:
    anonymous = VerifiedSession.anonymous("appointments-test")
    assert tools.openai_tools(anonymous) == []
    identified = VerifiedSession("appointments-test", VerificationLevel.IDENTIFIED, ADA)
    for name, arguments in (("find_appointment_slots", {"topic": "loan"}), ("list_my_appointments", {}),
                            ("book_appointment", {"slot_id": calendar("loan")[0]["slot_id"], "topic": "loan"}),
                            ("cancel_appointment", {"appointment_id": "apt_00000000"})):
        for session in (anonymous, identified):
            await expect_failure(FailureKind.NOT_VERIFIED, tools.invoke(session, name, arguments, confirmed=True))


# --- registry and site configuration ------------------------------------------------------------------

def test_the_registry_offers_the_four_tools_none_naming_a_customer(store) -> None:
    names = ["find_appointment_slots", "book_appointment", "list_my_appointments", "cancel_appointment"]
    assert list(KNOWN_TOOLS) == names and appointments_registry(store).names() == names
    assert appointments_registry(store, names=["list_my_appointments"]).names() == ["list_my_appointments"]
    assert ADAPTER_KINDS[KIND] == "services.dialog.tools.appointments"
    for name in names:
        spec = make_tool(name, store).spec
        assert spec.parameters["additionalProperties"] is False and len(spec.description) > 40
        assert not CUSTOMER_ID_ARGUMENTS & set(spec.parameters["properties"])
        assert spec.mutates == spec.needs_confirmation == (name in ("book_appointment", "cancel_appointment"))
        assert spec.requires is VerificationLevel.VERIFIED


async def test_tools_yaml_builds_the_appointment_tools_beside_the_bank_tools(database_dsn: str, store) -> None:
    config = appointments_tools_config(options={"timezone": "Europe/London"})
    config["tools"]["list_bank_accounts"] = {"kind": "bank_backoffice"}
    registry = await load_tool_registry(config, default_dsn=database_dsn)
    try:
        assert registry.names() == [*KNOWN_TOOLS, "list_bank_accounts"]
        found = await registry.invoke(session_for(ADA), "find_appointment_slots", {"topic": "mortgage", "limit": 1})
        assert ids(found) == ids(calendar("mortgage")[:1]) and found[0]["time"] == "09:00"
    finally:
        await registry.aclose()
    for options, message in (({"timezone": "Mars/Olympus"}, "not a time zone"), ({"url": "x"}, "unknown option")):
        with pytest.raises(ToolConfigError, match=message):
            await load_tool_registry({"tools": {"list_my_appointments": {"kind": KIND, "options": options}}},
                                     default_dsn=database_dsn)


# --- what callers say about time and topic ------------------------------------------------------------

@pytest.mark.parametrize("said, earliest, latest, part, clock", [
    ("I'd like to see a mortgage adviser on Thursday morning", THURSDAY, THURSDAY, "morning", None),
    ("tomorrow afternoon", START + timedelta(days=1), START + timedelta(days=1), "afternoon", None),
    ("next week", START + timedelta(days=7), START + timedelta(days=13), None, None),
    ("on the 3rd of December", date(2096, 12, 3), date(2096, 12, 3), None, None),
    ("December the third at ten o'clock", date(2096, 12, 3), date(2096, 12, 3), "morning", (10, 0)),
    ("the 1st of March", date(2097, 3, 1), date(2097, 3, 1), None, None),  # gone this year: next year's
    ("Monday", START + timedelta(days=7), START + timedelta(days=7), None, None),  # today is Monday
    ("Tuesday or Wednesday after lunch", START + timedelta(days=1), START + timedelta(days=2), "afternoon", None),
    ("the day after tomorrow at half past two", START + timedelta(days=2), START + timedelta(days=2), "afternoon", (14, 30)),
    ("as soon as possible please", None, None, None, None),
    ("some time in the evening", None, None, "evening", None),
])
def test_times_said_become_a_preference(said, earliest, latest, part, clock) -> None:
    preference = time_preference(said, START)
    assert preference is not None
    assert (preference.earliest, preference.latest, preference.part_of_day, preference.clock) == (earliest, latest, part, clock)


def test_words_that_name_no_time_give_no_preference_and_topics_are_recognised() -> None:
    for said in ("the second one", "purple monkey dishwasher", "I may need help", "my account number"):
        assert time_preference(said, START) is None, said
    assert clock_time("nine thirty") == (9, 30) and clock_time("quarter to eleven") == (10, 45)
    assert clock_time("2 pm") == (14, 0) and clock_time("at four") == (16, 0) and clock_time("ten", bare=True) == (10, 0)
    assert time_preference("Thursday morning", START).said == "on Thursday 15 March in the morning"
    topics = {"I'd like to see a mortgage adviser": "mortgage", "about a home loan": "mortgage", "a car loan": "loan",
              "I want to open an account": "account_opening", "investing my savings": "investment",
              "something else": "general", "hello there": None}
    assert {said: appointment_topic(said) for said in topics} == topics


# --- the booking flow ---------------------------------------------------------------------------------

def verified(customer_id: str = ADA) -> CallState:
    state = CallState.new("appointment-flow")
    state.session = VerifiedSession.verified("appointment-flow", customer_id, "test")
    return state


def turn(text: str) -> tuple[str, str]:
    """A caller's words and their control intent, as the router hands them to a flow."""
    return text, match_control(text).intent


def new_flow(tools: ToolRegistry) -> AppointmentFlow:
    return AppointmentFlow(tools, today=lambda: START)


def said_slot(slot: dict) -> str:
    """How a slot (from the calendar, or as a tool returned it) is read out, from its time on."""
    starts_at = slot["starts_at"]
    local = (datetime.fromisoformat(starts_at) if isinstance(starts_at, str) else starts_at).astimezone(ZONE)
    return f"{local.hour}:{local.minute:02d} at the {slot['location']} with {slot['adviser']}"


@pytest.fixture
def line_tools(store: BackofficeStore) -> ToolRegistry:
    """One registry as the bank line will have it: the bank's tools and the appointment tools."""
    return ToolRegistry([*(bank.make_tool(name, store) for name in bank.KNOWN_TOOLS),
                         *(make_tool(name, store, zone=ZONE) for name in KNOWN_TOOLS)])


async def test_thursday_morning_is_offered_the_second_is_read_back_and_booked_after_yes(line_tools, database_dsn: str) -> None:
    assert APPOINTMENT_FLOWS == {"book_appointment": AppointmentFlow}
    assert AppointmentFlow.needs_verification and AppointmentFlow.name == "book_appointment"
    flow, state = new_flow(line_tools), verified()
    step = await flow.step(state, *turn("I'd like to see a mortgage adviser on Thursday morning"))
    offered = calendar("mortgage", THURSDAY, (0, 12))[:3]
    assert not step.done and [call.tool for call in step.tool_calls] == ["find_appointment_slots"]
    assert "Thursday 15 March at 9:00 at the Riverside branch with Maren Holt" in step.say
    for slot in offered:
        assert said_slot(slot) in step.say
    assert step.say.index(said_slot(offered[0])) < step.say.index(said_slot(offered[1])) < step.say.index(said_slot(offered[2]))

    step = await flow.step(state, *turn("the second one please"))
    assert step.awaiting_confirmation and flow.confirming and not step.done
    assert step.say.startswith("To confirm") and said_slot(offered[1]) in step.say and "Shall I book it?" in step.say
    assert await bookings(database_dsn) == []

    step = await flow.step(state, *turn("yes please"))
    assert step.done and not step.escalate and "booked" in step.say and said_slot(offered[1]) in step.say
    assert [(call.tool, call.outcome) for call in step.tool_calls] == [("book_appointment", "ok")]
    (written,) = await bookings(database_dsn)
    assert (written["slot_id"], written["customer_id"], written["topic"], written["status"]) == \
        (offered[1]["slot_id"], ADA, "mortgage", "booked")


async def test_no_at_the_read_back_books_nothing(tools, database_dsn: str) -> None:
    flow, state = new_flow(tools), verified()
    await flow.step(state, *turn("Can I book an appointment about a loan next week?"))
    step = await flow.step(state, *turn("the first one"))
    assert step.awaiting_confirmation
    step = await flow.step(state, *turn("no, leave it"))
    assert step.done and not step.escalate and "not booked anything" in step.say
    assert await bookings(database_dsn) == []


async def test_a_time_with_nothing_free_gets_the_nearest_slots_offered(tools) -> None:
    flow, state = new_flow(tools), verified()
    step = await flow.step(state, *turn("I need to see someone about a mortgage on Saturday morning"))
    assert "nothing free" in step.say and "Saturday 17 March in the morning" in step.say and not step.done
    monday_mornings = calendar("mortgage", START + timedelta(days=7), (0, 12))[:3]
    assert [slot["slot_id"] for slot in flow.offered] == ids(monday_mornings)
    assert said_slot(monday_mornings[0]) in step.say
    # Another time asked for, with nothing free at that hour: the nearest that day, and a yes takes it.
    step = await flow.step(state, *turn("what about Friday at 3?"))
    friday_afternoon = calendar("mortgage", THURSDAY + timedelta(days=1), (12, 17))
    assert "nothing free" in step.say and "Friday 16 March at 15:00" in step.say
    assert [slot["slot_id"] for slot in flow.offered] == ids(friday_afternoon) and len(friday_afternoon) == 1
    step = await flow.step(state, *turn("yes that's fine"))
    assert step.awaiting_confirmation and said_slot(friday_afternoon[0]) in step.say

    flow = new_flow(tools)
    step = await flow.step(state, *turn("a mortgage appointment on Thursday evening"))
    assert "nothing free" in step.say and [slot["slot_id"] for slot in flow.offered] == ids(calendar("mortgage", THURSDAY)[:3])


async def test_none_of_those_asks_for_another_time_and_a_time_picks_the_slot(tools, database_dsn: str) -> None:
    flow, state = new_flow(tools), verified(BRUNO)
    step = await flow.step(state, *turn("I'd like to talk to someone about a loan"))
    assert "When would you like to come" in step.say and step.tool_calls == []
    step = await flow.step(state, *turn("as soon as possible"))
    assert [slot["slot_id"] for slot in flow.offered] == ids(calendar("loan")[:3])
    step = await flow.step(state, *turn("none of those suit me"))
    assert "Which other day or time" in step.say and flow.offered == []
    step = await flow.step(state, *turn("Thursday afternoon"))
    thursday_afternoon = calendar("loan", THURSDAY, (12, 17))
    assert [slot["slot_id"] for slot in flow.offered] == ids(thursday_afternoon[:3])
    two_pm = [slot for slot in flow.offered if slot["time"] == "14:00"]
    assert len(two_pm) == 2, "the calendar has two loan advisers free at 14:00 on Thursday"
    step = await flow.step(state, *turn("the two o'clock one"))
    assert "which one" in step.say and not step.awaiting_confirmation
    assert all(said_slot(slot) in step.say for slot in two_pm) and "12:00" not in step.say
    priya = next(slot for slot in two_pm if slot["adviser"] == "Priya Natarajan")
    step = await flow.step(state, *turn("with Priya please"))
    assert step.awaiting_confirmation and said_slot(priya) in step.say
    step = await flow.step(state, *turn("yes"))
    assert step.done and [row["slot_id"] for row in await bookings(database_dsn)] == [priya["slot_id"]]


async def test_a_slot_taken_meanwhile_is_said_and_others_are_offered(tools, database_dsn: str) -> None:
    flow, state = new_flow(tools), verified()
    await flow.step(state, *turn("mortgage, Thursday morning"))
    first = flow.offered[0]
    await tools.invoke(session_for(CHIARA), "book_appointment", {"slot_id": first["slot_id"], "topic": "mortgage"},
                       confirmed=True)
    step = await flow.step(state, *turn("the first one"))
    assert "just been taken" in step.say and not step.done and not step.awaiting_confirmation
    assert first["slot_id"] not in [slot["slot_id"] for slot in flow.offered] and flow.offered


async def test_the_booking_limit_is_said_plainly(tools, database_dsn: str) -> None:
    for slot in calendar("general")[:MAX_FUTURE_BOOKINGS]:
        await tools.invoke(session_for(ADA), "book_appointment", {"slot_id": slot["slot_id"], "topic": "general"},
                           confirmed=True)
    flow, state = new_flow(tools), verified()
    await flow.step(state, *turn("an investment appointment next week"))
    step = await flow.step(state, *turn("the last one"))
    assert step.done and not step.escalate and "three upcoming appointments" in step.say
    assert len(await bookings(database_dsn)) == MAX_FUTURE_BOOKINGS


async def test_three_answers_not_understood_hand_the_caller_over(tools, database_dsn: str) -> None:
    flow, state = new_flow(tools), verified()
    step = await flow.step(state, *turn("I'd like to book an appointment"))
    assert "mortgage, a loan, opening an account" in step.say
    for garbage in ("purple monkey dishwasher", "hmm", "the weather is nice"):
        assert not step.done
        step = await flow.step(state, *turn(garbage))
    assert step.done and step.escalate == "book_appointment: topic not understood" and "colleague" in step.say

    # The same bound holds for the choice among the slots offered.
    flow = new_flow(tools)
    await flow.step(state, *turn("a loan, next week"))
    for garbage in ("purple monkey dishwasher", "hmm", "the weather is nice"):
        step = await flow.step(state, *turn(garbage))
    assert step.done and step.escalate == "book_appointment: choice not understood"
    assert await bookings(database_dsn) == []
