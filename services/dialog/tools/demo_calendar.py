"""A fictional bank's adviser calendar for the product demo: two branches, five advisers, 21 days of slots.

Written here (nothing from ../shared): the advisers, branches and hours are invented for the demo.
`demo_calendar(start)` is deterministic: the same start date (and time zone) always gives the same
slots with the same ids, so loading it twice adds nothing, and tests can build a calendar of their own
from a fixed date. Advisers work weekdays only, each on some days and hours, between 9:00 and 17:00
local time; a slot is for one topic (an adviser with two topics alternates them through the day).
`services.dialog.tools.appointments.load_demo_calendar_if_empty` loads it when the dialog starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

# Slot ids of the demo calendar start with this, so a site's own calendar is never mistaken for it.
DEMO_SLOT_PREFIX = "demo-"
DEMO_DAYS = 21
BRANCHES = ("Riverside branch", "Old Market branch")
MONDAY, TUESDAY, WEDNESDAY, THURSDAY, FRIDAY = range(5)


@dataclass(frozen=True)
class Adviser:
    """One adviser's week: where they sit, what they advise on, which weekdays and start times, how long."""

    key: str  # short, for slot ids
    name: str
    location: str
    topics: tuple[str, ...]
    weekdays: tuple[int, ...]  # date.weekday(): Monday is 0
    starts: tuple[time, ...]
    duration_min: int


ADVISERS = (
    Adviser("mholt", "Maren Holt", BRANCHES[0], ("mortgage",), (MONDAY, TUESDAY, THURSDAY),
            (time(9), time(10), time(11), time(14), time(15)), 60),
    Adviser("tquayle", "Tobias Quayle", BRANCHES[1], ("mortgage", "investment"), (TUESDAY, WEDNESDAY, THURSDAY, FRIDAY),
            (time(9, 30), time(11), time(13, 30), time(15)), 60),
    Adviser("ivarga", "Ines Varga", BRANCHES[0], ("account_opening", "general"), (MONDAY, TUESDAY, WEDNESDAY, THURSDAY, FRIDAY),
            (time(9), time(9, 30), time(10, 30), time(12), time(13), time(16)), 30),
    Adviser("olindqvist", "Oscar Lindqvist", BRANCHES[1], ("loan",), (MONDAY, WEDNESDAY, THURSDAY),
            (time(10), time(12), time(14), time(16)), 45),
    Adviser("pnatarajan", "Priya Natarajan", BRANCHES[0], ("investment", "loan"), (THURSDAY, FRIDAY),
            (time(10), time(14), time(15, 30)), 60),
)


def demo_calendar(start: date, zone: tzinfo, days: int = DEMO_DAYS) -> list[dict[str, Any]]:
    """The demo's slots on the `days` days from `start` (included), local times in `zone`, soonest first.

    Each slot: slot_id, topic, location, adviser, starts_at (an aware datetime), duration_min.
    """
    slots = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        for adviser in ADVISERS:
            if day.weekday() not in adviser.weekdays:
                continue
            for index, starts in enumerate(adviser.starts):
                # A wall-clock time in the branch's zone (ZoneInfo resolves summer time per date).
                starts_at = datetime.combine(day, starts, tzinfo=zone)
                slots.append({
                    "slot_id": f"{DEMO_SLOT_PREFIX}{day:%Y%m%d}-{starts:%H%M}-{adviser.key}",
                    "topic": adviser.topics[index % len(adviser.topics)],
                    "location": adviser.location,
                    "adviser": adviser.name,
                    "starts_at": starts_at,
                    "duration_min": adviser.duration_min,
                })
    slots.sort(key=lambda slot: (slot["starts_at"], slot["slot_id"]))
    return slots
