"""Booking an appointment with an adviser (a bank's branch appointments; a clinic's take the same shape).

`AppointmentFlow` asks what the appointment is about (mortgage, loan, opening an account, investment,
something else) and when the caller would like to come ("Thursday morning", "tomorrow afternoon", "next
week", "on the 3rd of December", "as soon as possible"), offers up to three free slots read out as
they are said ("Thursday 3 December at 10:00 at the Riverside branch with Maren Holt"), lets the caller
pick one ("the second one", "ten o'clock", "the Thursday one", "with Maren") or ask for another time,
reads the choice back and books it only after an explicit yes. A time with nothing free gets the
nearest free slots offered instead. Each question is asked a bounded number of times before a
colleague takes over; a tool that fails is said plainly, never papered over.

The flow calls only the appointment tools (services.dialog.tools.appointments) by name, so it runs on
any line whose registry holds them beside that line's own tools. `APPOINTMENT_FLOWS` maps the task
intent to the flow, for a line to offer.

Days and times are read by the small explicit rules below (`time_preference`, `clock_time`): weekday
names, today / tomorrow / the day after tomorrow, this / next week, the weekend, next month, a date
with or without a year, a part of the day, a clock time. The phrases a caller uses to name a time for
an appointment are few and known; rules answer them predictably, and a word that is no date (the
"second" of "the second one") is never taken for one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from services.dialog.flows import MAX_SLOT_ATTEMPTS, CallState, FlowStep, call_tool, merged_steps, tool_trouble
from services.dialog.slots import extract_date, spoken_digits
from services.dialog.tools.adapter import FailureKind, ToolFailure, ToolRegistry

# Slots offered at once: as many as a caller can keep in mind from one hearing.
OFFERED = 3
# Slots fetched when the caller named a clock time, to offer the ones nearest to it.
NEAR_TIME_CANDIDATES = 10
# Topic code -> (how it is said, phrases that mark it). Checked in this order, so "a home loan" is a
# mortgage and "open an investment account" is opening an account.
TOPICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mortgage": ("a mortgage", ("mortgage", "home loan", "house loan", "buy a house", "buying a house", "buy a home",
                                "buying a home", "buy a flat", "buying a flat", "property")),
    "account_opening": ("opening an account", ("open an account", "open a new account", "opening an account",
                                               "open a bank account", "open a savings", "open a current",
                                               "open a checking", "open an investment account", "new account",
                                               "account opening", "an account", "savings account",
                                               "current account", "checking account")),
    "investment": ("investments", ("invest", "pension", "retirement", "stocks", "shares", "portfolio", "wealth",
                                   "savings plan")),
    "loan": ("a loan", ("loan", "borrow", "line of credit", "credit line", "car finance", "finance a car")),
    "general": ("a general question", ("general", "something else", "anything else", "other matter",
                                       "other thing", "financial advice", "advice", "just a chat")),
}
ANY_TIME_WORDS = ("any time", "anytime", "whenever", "as soon as possible", "asap", "earliest", "soonest",
                  "first available", "next available", "first free", "doesn't matter", "does not matter",
                  "don't mind", "do not mind", "any day", "flexible", "you choose", "up to you")
# "None of those": the caller wants other times. Looked for before a pick, so "none of those, the
# Friday one" is not taken for a pick.
DECLINE_WORDS = ("none", "neither", "not those", "don't suit", "doesn't suit", "do not suit", "don't work",
                 "doesn't work", "does not work", "can't make", "cannot make", "can't do", "cannot do",
                 "another time", "other time", "different time", "another day", "other day", "different day",
                 "other options", "something else", "anything else", "something later", "something earlier")
ORDINALS = {"first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2, "last": -1, "earliest": 0,
            "earlier": 0}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEKDAY_NAMES = tuple(day.capitalize() for day in WEEKDAYS)
MONTHS = {name: number for number, names in enumerate(
    [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
     ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"), ("october", "oct"),
     ("november", "nov"), ("december", "dec")], start=1) for name in names}
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December")
# Part of the day -> the words that name it (the tools' parts: morning < 12:00 <= afternoon < 17:00 <= evening).
PARTS_OF_DAY = {"morning": ("morning", "in the am", "before noon", "before lunch"),
                "afternoon": ("afternoon", "after lunch", "lunchtime", "lunch time", "in the pm"),
                "evening": ("evening", "tonight", "after work", "after five", "after 5")}
# Hour words text2num leaves alone ("two pm"); the digits' own forms are read by the patterns below.
HOUR_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
              "ten": 10, "eleven": 11, "twelve": 12}
# Offices open from 9:00 to 17:00: a bare "two" or "at 4" is in the afternoon.
LAST_AFTERNOON_HOUR = 7


# --- what the caller says about time ----------------------------------------------------------------

@dataclass(frozen=True)
class TimePreference:
    """When the caller would like to come: local days (both included; None: no limit), a part of the
    day, a clock time (hour, minute), and the caller's own words for the days ("tomorrow", "next week")."""

    earliest: date | None = None
    latest: date | None = None
    part_of_day: str | None = None
    clock: tuple[int, int] | None = None
    span: str = ""

    @property
    def said(self) -> str:
        """The preference as it is said back: "on Thursday 5 March in the morning", "next week at 10:00"."""
        span = self.span
        if not span and self.earliest is not None:
            span = (f"on {say_day(self.earliest)}" if self.earliest == self.latest
                    else f"between {say_day(self.earliest)} and {say_day(self.latest)}" if self.latest
                    else f"from {say_day(self.earliest)}")
        hours = (f"at {self.clock[0]}:{self.clock[1]:02d}" if self.clock
                 else f"in the {self.part_of_day}" if self.part_of_day else "")
        return " ".join(piece for piece in (span, hours) if piece)

    def refined_by(self, newer: TimePreference) -> TimePreference:
        """`newer` said after this one: its days, or these when it names none ("Thursday", then "ten o'clock")."""
        if newer.earliest is not None or self.earliest is None:
            return newer
        return TimePreference(self.earliest, self.latest, newer.part_of_day, newer.clock, self.span)

    def search_arguments(self) -> dict:
        """The find_appointment_slots arguments (besides the topic) this preference asks for."""
        arguments = {}
        if self.earliest:
            arguments["earliest"] = self.earliest.isoformat()
        if self.latest:
            arguments["latest"] = self.latest.isoformat()
        if self.part_of_day:
            arguments["part_of_day"] = self.part_of_day
        return arguments


def _words(text: str) -> str:
    """`text` in lower case with number words as digits and hour words too ("two pm" -> "2 pm")."""
    spoken = spoken_digits(text.replace("’", "'")).lower()
    spoken = re.sub(r"\bo'? ?clock\b|\boclock\b", "o'clock", spoken)
    return re.sub(r"\b(" + "|".join(HOUR_WORDS) + r")\b", lambda match: str(HOUR_WORDS[match.group(1)]), spoken)


_MERIDIEM = r"(?P<meridiem>(?:a|p)\.?\s?m\.?)(?![a-z])"
# (pattern, the minute when the words fix it, hours to subtract): "quarter to eleven" is 10:45.
_CLOCK_FORMS = (
    (re.compile(r"\b(?:12\s+)?(?:noon|midday)\b"), 0, 0),
    (re.compile(r"\bhalf past (?P<hour>\d{1,2})\b"), 30, 0),
    (re.compile(r"\bquarter past (?P<hour>\d{1,2})\b"), 15, 0),
    (re.compile(r"\bquarter to (?P<hour>\d{1,2})\b"), 45, 1),
    (re.compile(rf"\b(?P<hour>\d{{1,2}})[:.](?P<minute>[0-5]\d)\s*(?:{_MERIDIEM})?"), None, 0),
    (re.compile(rf"\b(?P<hour>\d{{1,2}})\s+(?P<minute>15|30|45)\b\s*(?:{_MERIDIEM})?"), None, 0),
    (re.compile(rf"\b(?P<hour>\d{{1,2}})\s*(?:o'clock\s*)?{_MERIDIEM}"), 0, 0),
    (re.compile(r"\b(?P<hour>\d{1,2})\s*o'clock"), 0, 0),
    (re.compile(r"\b(?:at|around|about|for|after|by)\s+(?P<hour>\d{1,2})\b(?!\s*(?:st|nd|rd|th|/|-))"), 0, 0),
)


def clock_time(text: str, bare: bool = False) -> tuple[int, int] | None:
    """The clock time said ("ten o'clock", "half past nine", "2 pm", "at 4", "11:30", "noon"), as (hour,
    minute) on a 24-hour clock, or None. `bare` also takes a number said alone ("ten"), as when a caller
    picks an offered time. Without am or pm, 1 to 7 are afternoon hours: the offices close at 17:00."""
    words = _words(text)
    for form, minute, hours_back in _CLOCK_FORMS:
        match = form.search(words)
        if match:
            found = match.groupdict()
            hour = int(found.get("hour") or 12) - hours_back
            return _on_24_hours(hour, int(found.get("minute") or 0) if minute is None else minute,
                                found.get("meridiem"))
    if bare:
        match = re.fullmatch(r"\W*(?:at\s+|the\s+)?(\d{1,2})(?:\s+(?:one|1))?\W*", words)
        if match:
            return _on_24_hours(int(match.group(1)), 0, None)
    return None


def _on_24_hours(hour: int, minute: int, meridiem: str | None) -> tuple[int, int] | None:
    if not 0 <= hour <= 23:
        return None
    marker = (meridiem or "").replace(".", "").replace(" ", "")
    if marker == "pm" and hour < 12:
        hour += 12
    elif marker == "am" and hour == 12:
        hour = 0
    elif not marker and 1 <= hour <= LAST_AFTERNOON_HOUR:
        hour += 12
    return hour, minute


def part_of_day(text: str) -> str | None:
    """Morning, afternoon or evening when the caller names one, else None."""
    words = _words(text)
    for part, phrases in PARTS_OF_DAY.items():
        if any(re.search(rf"\b{re.escape(phrase)}\b", words) for phrase in phrases):
            return part
    return None


def _weekdays_said(words: str) -> list[int]:
    return [index for index, day in enumerate(WEEKDAYS) if re.search(rf"\b{day}s?\b", words)]


def _next_weekday(today: date, weekday: int) -> date:
    """The coming `weekday` after today (a week ahead when today is that day: it is nearly gone)."""
    return today + timedelta(days=(weekday - today.weekday() - 1) % 7 + 1)


_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))
_DAY_MONTH_FORMS = (
    re.compile(rf"\b(?:the\s+)?{_DAY}\s+(?:of\s+)?(?P<month>{_MONTH})\b"),  # the 3rd of December
    re.compile(rf"\b(?P<month>{_MONTH})\.?\s+(?:the\s+)?{_DAY}\b"),  # December 3rd
)
_DAY_ALONE = re.compile(r"\b(?:on\s+)?the\s+(?P<day>\d{1,2})(?:st|nd|rd|th)\b")


def _calendar_date(words: str, original: str, today: date) -> date | None:
    """A date named by day and month (the next one to come), with a year, or a day of the month alone."""
    with_year = extract_date(original)
    if with_year:
        return datetime.strptime(with_year, "%m/%d/%Y").date()
    for form in _DAY_MONTH_FORMS:
        match = form.search(words)
        if match:
            month, day = MONTHS[match.group("month")], int(match.group("day"))
            for year in (today.year, today.year + 1):
                try:
                    named = date(year, month, day)
                except ValueError:
                    return None
                if named >= today:
                    return named
    match = _DAY_ALONE.search(words)
    if match:
        day = int(match.group("day"))
        for months_on in (0, 1, 2):  # this month's, else the next month that has that day
            year, month = divmod(today.month - 1 + months_on, 12)
            try:
                named = date(today.year + year, month + 1, day)
            except ValueError:
                continue
            if named >= today:
                return named
    return None


def say_day(day: date) -> str:
    """A date as it is said: 'Thursday 5 March'."""
    return f"{WEEKDAY_NAMES[day.weekday()]} {day.day} {MONTH_NAMES[day.month - 1]}"


def time_preference(text: str, today: date) -> TimePreference | None:
    """When the caller would like to come, from their words and today's date; None when they named no time.

    "as soon as possible" is a preference with no limits. Several weekdays ("Tuesday or Wednesday")
    span the days between them.
    """
    words = _words(text)
    part = part_of_day(text)
    clock = clock_time(text)
    if clock and not part:
        part = "morning" if clock[0] < 12 else "afternoon" if clock[0] < 17 else "evening"
    earliest = latest = None
    span = ""
    if re.search(r"\bday after tomorrow\b", words):
        earliest = latest = today + timedelta(days=2)
    elif re.search(r"\btomorrow\b", words):
        earliest = latest = today + timedelta(days=1)
        span = "tomorrow"
    elif re.search(r"\b(?:today|tonight|this (?:morning|afternoon|evening))\b", words):
        earliest = latest = today
        span = "today"
    elif re.search(r"\bnext week\b", words):
        earliest = today + timedelta(days=7 - today.weekday())
        latest, span = earliest + timedelta(days=6), "next week"
    elif re.search(r"\bthis week\b|\blater this week\b", words):
        earliest, latest, span = today, today + timedelta(days=6 - today.weekday()), "this week"
    elif re.search(r"\bnext month\b", words):
        earliest = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
        latest, span = (earliest + timedelta(days=32)).replace(day=1) - timedelta(days=1), "next month"
    elif re.search(r"\bweekend\b", words):
        earliest = _next_weekday(today, 5) if today.weekday() != 5 else today
        latest, span = earliest + timedelta(days=6 - earliest.weekday()), "at the weekend"
    else:
        named = _calendar_date(words, text, today)
        weekdays = _weekdays_said(words)
        if named:
            earliest = latest = named
        elif weekdays:
            days = sorted(_next_weekday(today, weekday) for weekday in weekdays)
            earliest, latest = days[0], days[-1]
    any_time = any(phrase in words for phrase in ANY_TIME_WORDS)
    if earliest is None and part is None and clock is None and not any_time:
        return None
    return TimePreference(earliest, latest, part, clock, span)


def appointment_topic(text: str) -> str | None:
    """The appointment topic code the caller's words give, or None."""
    text = text.lower()
    for topic, (_, phrases) in TOPICS.items():
        if any(re.search(rf"\b{re.escape(phrase)}", text) for phrase in phrases):
            return topic
    return None


# --- the flow -------------------------------------------------------------------------------------

def offer_text(slot: dict) -> str:
    """A slot as it is read out: 'Thursday 3 December at 10:00 at the Riverside branch with Maren Holt'."""
    return f"{slot['when']} at the {slot['location']} with {slot['adviser']}"


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "; ".join(items[:-1]) + "; or " + items[-1]


class AppointmentFlow:
    """Book an adviser appointment: topic, preferred time, up to three slots offered, a pick, read-back, yes."""

    name = "book_appointment"
    needs_verification = True

    def __init__(self, registry: ToolRegistry, today: Callable[[], date] | None = None) -> None:
        self.registry = registry
        self.today = today or date.today  # the calendar's "today" (a test's fixed day)
        self.topic: str | None = None
        self.preference: TimePreference | None = None
        self.offered: list[dict] = []
        self.slot: dict | None = None
        self.unavailable: set[str] = set()  # slots refused as taken or past during this call: not offered again
        self.asking = ""  # the slot the last question asked for
        self.asked: dict[str, int] = {}
        self.confirming = False

    def opening(self) -> str:
        return ("What would you like to see an adviser about: a mortgage, a loan, opening an account, investments, "
                "or something else?")

    async def step(self, state: CallState, utterance: str, control: str = "none") -> FlowStep:
        step = FlowStep("")
        try:
            if self.confirming:
                return await self._confirmed(state, step, utterance, control)
            if self.offered:
                return await self._choice(state, step, utterance, control)
            self.topic = self.topic or appointment_topic(utterance)
            said = time_preference(utterance, self.today())
            if said is not None:
                self.preference = self.preference.refined_by(said) if self.preference else said
            if self.topic is None:
                return self._ask(step, "topic", "Which kind of appointment would you like: a mortgage, a loan, opening an "
                                                "account, investments, or a general question?"
                                 if self.asking == "topic" else self.opening())
            if self.preference is None:
                question = ("Sorry, I did not catch that. Which day and time would suit you, for example Thursday "
                            "morning, or next week? You can also say as soon as possible."
                            if self.asking == "time" else
                            f"When would you like to come in about {TOPICS[self.topic][0]}? For example Thursday "
                            "morning, tomorrow afternoon, or next week.")
                return self._ask(step, "time", question)
            return await self._offer(state, step)
        except ToolFailure as failure:
            return merged_steps(step, tool_trouble(failure))

    # --- asking ---------------------------------------------------------------------------------

    def _ask(self, step: FlowStep, slot: str, question: str) -> FlowStep:
        self.asking = slot
        self.asked[slot] = self.asked.get(slot, 0) + 1
        if self.asked[slot] > MAX_SLOT_ATTEMPTS:
            step.say, step.done, step.escalate = ("Let me put you through to a colleague who can book the appointment "
                                                  "with you.", True, f"{self.name}: {slot} not understood")
            return step
        step.say = question
        return step

    # --- offering ---------------------------------------------------------------------------------

    async def _search(self, state: CallState, step: FlowStep, preference: TimePreference) -> list[dict]:
        wanted = NEAR_TIME_CANDIDATES if preference.clock else OFFERED
        arguments = {"topic": self.topic, **preference.search_arguments(),
                     "limit": min(NEAR_TIME_CANDIDATES, wanted + len(self.unavailable))}
        found = await call_tool(self.registry, state, step, "find_appointment_slots", arguments)
        found = [slot for slot in found if slot["slot_id"] not in self.unavailable]
        if preference.clock:
            # The slots nearest the time asked for, then read out in the order they come.
            asked = preference.clock[0] * 60 + preference.clock[1]
            found = sorted(found, key=lambda slot: (abs(_minutes(slot) - asked), slot["starts_at"]))[:OFFERED]
            found.sort(key=lambda slot: slot["starts_at"])
        return found[:OFFERED]

    async def _offer(self, state: CallState, step: FlowStep, lead: str = "") -> FlowStep:
        """Offer the free slots matching the preference; the nearest others when none does."""
        preference = self.preference or TimePreference()
        found = await self._search(state, step, preference)
        intro = f"For {TOPICS[self.topic][0]}, I have"
        asked = preference.clock[0] * 60 + preference.clock[1] if preference.clock else None
        if found and asked is not None and all(_minutes(slot) != asked for slot in found):
            intro = f"I have nothing free for {TOPICS[self.topic][0]} {preference.said}. The nearest I have"
            intro += " is" if len(found) == 1 else " are"
        if not found and preference.search_arguments():
            # Nothing then: the soonest from the day asked (same part of day first), else the soonest at all.
            fallbacks = [TimePreference(earliest=preference.earliest or self.today()),
                         TimePreference()]
            if preference.part_of_day:
                fallbacks.insert(0, TimePreference(earliest=preference.earliest, part_of_day=preference.part_of_day))
            for fallback in fallbacks:
                found = await self._search(state, step, fallback)
                if found:
                    break
            intro = f"I have nothing free for {TOPICS[self.topic][0]} {preference.said}. The nearest I have"
            intro += " is" if len(found) == 1 else " are"
        if not found:
            step.say, step.done, step.escalate = (
                f"{lead}I am sorry, there are no free appointments for {TOPICS[self.topic][0]} in the coming weeks. "
                "Let me put you through to a colleague who can help.", True, f"{self.name}: no free {self.topic} slots")
            return step
        self.offered = found
        self.asking, self.asked["choice"] = "choice", 1  # each offer is a fresh question
        if len(found) == 1:
            step.say = f"{lead}{intro} {offer_text(found[0])}. Would that suit you?"
        else:
            numbered = [offer_text(slot) for slot in found]
            step.say = f"{lead}{intro}: {_listed(numbered)}. Which would suit you?"
        return step

    async def _choice(self, state: CallState, step: FlowStep, utterance: str, control: str) -> FlowStep:
        """The caller's answer to the slots offered: one of them, other times, or not understood."""
        text = _words(utterance)
        declined = any(phrase in text for phrase in DECLINE_WORDS)
        picked = None if declined else self._picked(utterance, control)
        if isinstance(picked, dict):
            self.slot, self.offered = picked, []
            return await self._read_back(state, step)
        if declined or control == "no":
            self.offered = []
            other = time_preference(utterance, self.today())
            if other is not None:  # "none of those, something in the afternoon"
                self.preference = (self.preference or TimePreference()).refined_by(other)
                return await self._offer(state, step)
            self.preference = None
            return self._ask(step, "another_time", "All right. Which other day or time would suit you?")
        other = time_preference(utterance, self.today())
        refined = (self.preference or TimePreference()).refined_by(other) if other is not None else None
        # "What about Friday?" when no Friday was offered; the time just answered again gets the same
        # slots, so that is asked about instead.
        if refined is not None and picked is None and refined != self.preference:
            self.offered, self.preference = [], refined
            return await self._offer(state, step)
        if isinstance(picked, list):  # "the two o'clock one" with two offered at 14:00: ask between those
            self.offered = picked
        if len(self.offered) == 1:
            return self._ask(step, "choice", f"Would {offer_text(self.offered[0])} suit you? Please say yes or no, "
                                             "or tell me another day or time.")
        options = [f"the {('first', 'second', 'third')[index]}, {offer_text(slot)}" for index, slot in enumerate(self.offered)]
        return self._ask(step, "choice", f"Sorry, which one would you like: {_listed(options)}? "
                                         "Or say none of these for other times.")

    def _picked(self, utterance: str, control: str) -> dict | list[dict] | None:
        """The offered slot the caller picked; the offered slots still possible when the words fit several;
        None when the words name none of them."""
        text = _words(utterance)
        candidates = list(self.offered)
        named = False
        ordinal = re.search(r"\b(" + "|".join(ORDINALS) + r")\b", text) or re.search(r"\b(?:number|option)\s+(\d)\b", text)
        if ordinal:
            index = ORDINALS.get(ordinal.group(1), None)
            index = int(ordinal.group(1)) - 1 if index is None else index
            if -1 <= index < len(self.offered):
                candidates, named = [self.offered[index]], True
        weekdays = _weekdays_said(text)
        if weekdays:
            candidates = [slot for slot in candidates if WEEKDAYS.index(slot["weekday"].lower()) in weekdays]
            named = True
        part = part_of_day(utterance)
        if part:
            candidates = [slot for slot in candidates if _part(slot) == part]
            named = True
        clock = clock_time(utterance, bare=True)
        if clock:
            exact = [slot for slot in candidates if _minutes(slot) == clock[0] * 60 + clock[1]]
            # "nine" with 9:00 and 9:30 offered is 9:00; with only 9:30 offered, it is that one.
            candidates = exact or ([slot for slot in candidates if _minutes(slot) // 60 == clock[0]] if clock[1] == 0 else [])
            named = True
        for key in ("adviser", "location"):
            mentioned = [slot for slot in candidates if _mentions(text, slot[key])]
            if mentioned:
                candidates, named = mentioned, True
        if not named:
            # A plain yes takes the one slot offered; to several it answers nothing.
            return self.offered[0] if control == "yes" and len(self.offered) == 1 else None
        if len(candidates) == 1:
            return candidates[0]
        return candidates or None

    # --- read-back and booking ---------------------------------------------------------------------

    def _booking_arguments(self) -> dict:
        return {"slot_id": self.slot["slot_id"], "topic": self.topic}

    async def _read_back(self, state: CallState, step: FlowStep) -> FlowStep:
        try:
            await call_tool(self.registry, state, step, "book_appointment", self._booking_arguments())
        except ToolFailure as failure:
            if failure.kind is FailureKind.NEEDS_CONFIRMATION:
                preview = failure.preview or {}
                step.say = (f"To confirm: an appointment about {TOPICS[self.topic][0]} on {preview.get('when')} at the "
                            f"{preview.get('location')} with {preview.get('adviser')}, for "
                            f"{preview.get('duration_min')} minutes. Shall I book it?")
                step.awaiting_confirmation = self.confirming = True
                self.asking, self.asked["confirmation"] = "confirmation", 1
                return step
            if failure.kind is FailureKind.POLICY_REFUSED:
                return await self._refused(state, step, failure)
            return merged_steps(step, tool_trouble(failure))
        raise AssertionError("book_appointment ran without a confirmation")  # the adapter never allows it

    async def _confirmed(self, state: CallState, step: FlowStep, utterance: str, control: str) -> FlowStep:
        if control == "no":
            self.confirming = False
            other = time_preference(utterance, self.today())
            if other is not None:  # "no, make it Friday instead"
                self.slot, self.preference = None, (self.preference or TimePreference()).refined_by(other)
                return await self._offer(state, step, "All right. ")
            step.say, step.done = "All right, I have not booked anything.", True
            return step
        if control != "yes":
            question = f"Shall I book {self.slot['when']} at the {self.slot['location']}? Please say yes or no."
            step = self._ask(step, "confirmation", question)
            step.awaiting_confirmation = not step.done
            return step
        self.confirming = False
        try:
            booking = await call_tool(self.registry, state, step, "book_appointment", self._booking_arguments(),
                                      confirmed=True)
        except ToolFailure as failure:
            if failure.kind is FailureKind.POLICY_REFUSED:
                return await self._refused(state, step, failure)
            return merged_steps(step, tool_trouble(failure))
        step.say = (f"Done: your appointment about {TOPICS[self.topic][0]} is booked for {booking['when']} at the "
                    f"{booking['location']} with {booking['adviser']}.")
        step.done = True
        return step

    async def _refused(self, state: CallState, step: FlowStep, failure: ToolFailure) -> FlowStep:
        """Say a policy refusal plainly; a slot gone meanwhile gets other slots offered."""
        if failure.rule in ("slot_taken", "slot_in_past"):
            self.unavailable.add(self.slot["slot_id"])
            self.slot, self.confirming = None, False
            why = "has just been taken" if failure.rule == "slot_taken" else "has already passed"
            return await self._offer(state, step, f"I am sorry, that time {why}. ")
        why = REFUSALS.get(failure.rule or "", "our booking rules do not allow it")
        step.say, step.done = (f"I cannot book that appointment: {why}. A colleague can help you with it if you "
                               "like."), True
        return step


# What the caller hears when the booking rules refuse (by the tool's rule name).
REFUSALS = {
    "max_future_bookings": "you already have three upcoming appointments, which is the most we can hold for one "
                           "customer; you can cancel or move one of them first",
}


def _minutes(slot: dict) -> int:
    hour, minute = slot["time"].split(":")
    return int(hour) * 60 + int(minute)


def _part(slot: dict) -> str:
    hour = _minutes(slot) // 60
    return "morning" if hour < 12 else "afternoon" if hour < 17 else "evening"


def _mentions(text: str, name: str) -> bool:
    """True when the caller said a distinctive word of an adviser's or branch's name ("Maren", "Riverside")."""
    generic = {"branch", "the", "old", "office"}
    return any(re.search(rf"\b{re.escape(word)}\b", text)
               for word in re.findall(r"[a-z]+", name.lower()) if word not in generic and len(word) > 2)


APPOINTMENT_FLOWS = {"book_appointment": AppointmentFlow}
