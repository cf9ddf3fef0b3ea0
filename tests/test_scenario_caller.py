"""The scripted caller for tau2 banking scenarios: what it reads from a scenario, and how it answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.dialog.scenario_caller import GOODBYE, UNKNOWN, ScenarioCaller, parse_scenario


@pytest.fixture(scope="module")
def scenarios(shared_data: Path) -> dict[str, str]:
    return {path.stem: json.loads(path.read_text())["user_scenario"]["instructions"]
            for path in sorted((shared_data / "kb" / "banking" / "tasks").glob("task_*.json"))}


def test_facts_come_from_the_scenario_text(scenarios: dict[str, str]) -> None:
    fatima = parse_scenario(scenarios["task_036"])
    assert (fatima.name, fatima.email, fatima.phone) == ("Fatima Al-Hassan", "coffeelover_fati@protonmail.com",
                                                        "313-555-0246")
    assert fatima.shipping_address == "2500 Woodward Avenue, Suite 300, Detroit, MI 48201"  # the work address
    assert fatima.urgent and fatima.compromised and "Silver Rewards Card" in fatima.cards
    assert fatima.opening.startswith("Hi, I need some help.")
    kenji = parse_scenario(scenarios["task_004"])
    assert kenji.opening == "Hi, I want to change the email on my account because I recently changed it."
    assert kenji.email == "kenji.tanaka@gmail.com" and kenji.date_of_birth is None and kenji.demands_person


def test_every_scenario_opens_with_words_and_never_volunteers_an_id(scenarios: dict[str, str]) -> None:
    assert len(scenarios) == 54
    for name, text in scenarios.items():
        facts = parse_scenario(text)
        assert len(facts.opening.split()) >= 4, (name, facts.opening)
        for line in [facts.opening, *facts.lines]:
            assert "user id" not in line.lower(), (name, line)


def test_the_caller_answers_what_is_asked_and_only_what_it_knows(scenarios: dict[str, str]) -> None:
    caller = ScenarioCaller(scenarios["task_036"])
    answer = caller.reply("First I need to confirm who you are. Please tell me your full name, and two of these: "
                          "your phone number, your e-mail address or your date of birth.")
    assert "Fatima Al-Hassan" in answer and "313-555-0246" in answer and "coffeelover_fati@protonmail.com" in answer
    assert caller.reply("Thank you. And your date of birth?") == UNKNOWN  # not in the scenario: not invented
    assert caller.reply("Which card is it: your Silver Rewards Card or EcoCard?") == "My Silver Rewards Card."
    assert "2500 Woodward Avenue" in caller.reply("Shall we send the new card to your address on file, 1 Main St, "
                                                  "or to a different address?")
    assert caller.reply("... Would you like expedited shipping?") == "Yes, expedited please."
    assert caller.reply("To confirm: ... Shall I go ahead?") == "Yes, please go ahead."
    quiet = ScenarioCaller(scenarios["task_001"])
    assert quiet.reply("Here is what we offer. Is there anything else I can help with?") == GOODBYE
    assert quiet.reply("Thank you for calling. Goodbye.") is None
