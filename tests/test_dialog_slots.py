"""Slot values from caller utterances and keypad input, as the dialog's flows read them."""

from __future__ import annotations

import pytest

from services.dialog.slots import (
    digit_runs,
    extract_email,
    extract_order_id,
    extract_person_name,
    extract_zip_code,
    parse_dtmf,
)


@pytest.mark.parametrize(("utterance", "zip_code"), [
    ("my zip code is eight oh two one eight", "80218"),
    ("It's 80218.", "80218"),
    ("zip is 8 0 2 1 8", "80218"),
    ("double five one two three", "55123"),
    ("I live in Denver", None),
    ("eight oh two one", None),  # four digits is not a zip code
    ("80218 or maybe 80219", None),  # two candidates: ask again rather than guess
])
def test_zip_codes(utterance: str, zip_code: str | None) -> None:
    assert extract_zip_code(utterance) == zip_code


@pytest.mark.parametrize(("utterance", "order_id"), [
    ("the order number is W five four four two five two zero", "#W5442520"),
    ("hash W 5442520 please", "#W5442520"),
    ("order #W5442520", "#W5442520"),
    ("it's w 544-2520", "#W5442520"),
    ("my order from last week", None),
    ("W five four", None),  # too short for an order id
    ("the W five four four two five two zero one", "#W5442520"),  # "the ... one": the id has 7 digits
])
def test_order_ids(utterance: str, order_id: str | None) -> None:
    assert extract_order_id(utterance) == order_id


@pytest.mark.parametrize(("utterance", "email"), [
    ("it is olivia dot ito at example dot com", "olivia.ito@example.com"),
    ("my email is noah.brown7922@example.com", "noah.brown7922@example.com"),
    ("noah dot brown seven nine two two at example dot com", "noah.brown7922@example.com"),
    ("my e-mail is j o h n underscore doe at mail dot example dot org thanks", "john_doe@mail.example.org"),
    ("I will be at home", None),
])
def test_email_addresses(utterance: str, email: str | None) -> None:
    assert extract_email(utterance) == email


@pytest.mark.parametrize(("utterance", "name"), [
    ("My name is Olivia Ito and my zip code is 80218", ("Olivia", "Ito")),
    ("this is Yusuf Rossi", ("Yusuf", "Rossi")),
    ("my name is olivia ito", ("Olivia", "Ito")),
    ("I am calling about my order", None),
    ("I'm not sure", None),
])
def test_person_names(utterance: str, name: tuple[str, str] | None) -> None:
    assert extract_person_name(utterance) == name


def test_digit_runs_join_spoken_digits() -> None:
    assert digit_runs("card ending four eight two one, amount 12") == ["4821", "12"]


def test_keypad_input_and_its_errors() -> None:
    assert parse_dtmf("1234#") == parse_dtmf("99*1234#")  # "*" starts again
    assert parse_dtmf("1234#").complete and not parse_dtmf("12").complete
    with pytest.raises(ValueError, match=r"'x' are not keypad keys"):
        parse_dtmf("12x4#")
