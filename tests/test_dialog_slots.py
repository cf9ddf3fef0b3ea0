"""Slot values from caller utterances and keypad input, as the dialog's flows read them."""

from __future__ import annotations

import pytest

from services.dialog.slots import (
    digit_runs,
    extract_date,
    extract_email,
    extract_order_id,
    extract_person_name,
    extract_phone_number,
    extract_postal_address,
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


@pytest.mark.parametrize(("utterance", "value"), [
    ("my date of birth is 07/22/1985", "07/22/1985"),
    ("I was born July 22nd, 1985", "07/22/1985"),
    ("the twenty second of July nineteen eighty five", "07/22/1985"),
    ("1985-07-22", "07/22/1985"),
    ("3 March 1992", "03/03/1992"),
    ("02/30/1990", None),  # no such day
    ("I don't have that on hand", None),
])
def test_dates(utterance: str, value: str | None) -> None:
    assert extract_date(utterance) == value


@pytest.mark.parametrize(("utterance", "value"), [
    ("my number is 206-555-0293", "206-555-0293"),
    ("two oh six, five five five, oh two nine three", "206-555-0293"),
    ("(313) 555 0246 thanks", "313-555-0246"),
    ("call me at +44 20 7946 0958", "+442079460958"),
    ("my zip is 48226", None),
    ("born 07/22/1985", None),  # a date is not a phone number
])
def test_phone_numbers(utterance: str, value: str | None) -> None:
    assert extract_phone_number(utterance) == value


@pytest.mark.parametrize(("utterance", "one_line"), [
    ("please send it to my work address, 2500 Woodward Avenue, Suite 300, Detroit, MI 48201",
     "2500 Woodward Avenue, Suite 300, Detroit, MI 48201"),
    ("send it to 1923 Oak Park Boulevard, Detroit, MI 48226 please", "1923 Oak Park Boulevard, Detroit, MI 48226"),
    ("twenty five hundred Woodward Avenue Detroit Michigan four eight two zero one",
     "2500 Woodward Avenue, Detroit, Michigan 48201"),
    ("yes the address on file", None),
    ("2500 Woodward Avenue, Detroit", None),  # no state and zip: asked again, never half an address
])
def test_postal_addresses(utterance: str, one_line: str | None) -> None:
    address = extract_postal_address(utterance)
    assert (address.one_line() if address else None) == one_line
