"""Slot values from what a caller said (a final transcript) or keyed (DTMF), for the dialog's flows.

Callers say numbers as words ("eight oh two one eight"), spell ids in pieces ("W five four four two,
five two zero") and read e-mail addresses aloud ("john dot smith at example dot com"); the recogniser
writes some of it as digits and some as words. Each extractor here returns the value in the form the
back office stores, or None when the utterance does not contain one, never a guess. Number words
become digits with text2num (`alpha2digit`); the rest is small, explicit rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

import phonenumbers
import usaddress
from text_to_num import alpha2digit

# Spoken forms of single digits that text2num leaves alone.
_SPOKEN_DIGITS = {"oh": "0", "zero": "0", "nought": "0"}
_DIGIT_RUN = re.compile(r"\d(?:[\s-]*\d)*")
_EMAIL_WORDS = [
    (re.compile(r"\s+(?:at)\s+"), "@"),
    (re.compile(r"\s+(?:dot|period|point)\s+"), "."),
    (re.compile(r"\s+(?:underscore|under score)\s+"), "_"),
    (re.compile(r"\s+(?:dash|hyphen|minus)\s+"), "-"),
]
_EMAIL = re.compile(r"[a-z0-9][a-z0-9._%+-]*@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}")
_NAME_INTRO = re.compile(
    r"\b(?:my name is|my name's|name is|this is|i am|i'm)\s+"
    r"(?P<name>[a-z][a-z'-]+(?:\s+[a-z][a-z'-]+){1,2})", re.IGNORECASE)
# Words that end a name ("my name is Olivia Ito and my zip ...").
_NAME_ENDS = {"and", "my", "from", "here", "at", "dot", "zip", "the", "calling", "speaking", "with", "about"}
_EMAIL_INTRO_WORDS = {"is", "it's", "its", "email", "e-mail", "address", "mail", "my", "it", "that's", "use", "try"}
# Words that follow "I am" but are not names ("I am calling about ...").
_NOT_NAMES = {"calling", "trying", "looking", "not", "a", "the", "here", "just", "ringing", "phoning", "having",
              "wondering", "sorry", "fine", "good", "well", "going", "interested", "worried", "afraid"}


def spoken_digits(text: str) -> str:
    """`text` with number words as digits ("eight oh two" -> "8 0 2"); other words unchanged."""
    words = [_SPOKEN_DIGITS.get(word, word) for word in text.lower().split()]
    expanded: list[str] = []
    for index, word in enumerate(words):
        if word == "double" and index + 1 < len(words):
            continue  # "double five" -> "five five", handled by repeating the next word below
        if index and words[index - 1] == "double":
            expanded += [word, word]
        else:
            expanded.append(word)
    return alpha2digit(" ".join(expanded), "en")


def digit_runs(text: str) -> list[str]:
    """Every run of digits in the utterance, with the spaces and dashes between spoken digits removed."""
    return [re.sub(r"[\s-]", "", run) for run in _DIGIT_RUN.findall(spoken_digits(text))]


def extract_zip_code(text: str) -> str | None:
    """A five-digit US zip code, or None."""
    candidates = [run for run in digit_runs(text) if len(run) == 5]
    return candidates[0] if len(candidates) == 1 else None


def extract_order_id(text: str, prefix: str = "W", digits: int = 7) -> str | None:
    """An order id like "#W5442520" said as "W five four four two five two zero" or "hash W 5442520".

    Order ids have a fixed number of `digits`; a longer run keeps its first `digits` ("the W 5442520
    one": the caller's "one" is not part of the id), a shorter one is no id.
    """
    spoken = spoken_digits(text)
    match = re.search(rf"(?:^|[\s#]){prefix.lower()}\s*[-\s]?\s*(\d(?:[\s-]*\d)*)", spoken.lower())
    if not match:
        return None
    number = re.sub(r"[\s-]", "", match.group(1))
    if len(number) < digits:
        return None
    return f"#{prefix.upper()}{number[:digits]}"


def extract_email(text: str) -> str | None:
    """An e-mail address, written or read aloud ("john dot smith at example dot com"), in lower case."""
    written = _EMAIL.search(text.lower())
    if written:
        return written.group(0)
    spoken = " " + spoken_digits(text).lower().strip().rstrip(".") + " "
    for pattern, symbol in _EMAIL_WORDS:
        spoken = pattern.sub(symbol, spoken)
    if "@" not in spoken:
        return None
    local, _, domain = spoken.partition("@")
    # The address starts after the last word that introduces it ("my email is ...", "it's ...").
    local_words = local.split()
    for index in range(len(local_words) - 1, -1, -1):
        if local_words[index] in _EMAIL_INTRO_WORDS:
            local_words = local_words[index + 1:]
            break
    candidate = "".join(local_words) + "@" + "".join(domain.split()[:1] if " " not in domain.strip() else
                                                     _domain_words(domain))
    match = _EMAIL.fullmatch(candidate)
    return match.group(0) if match else None


def _domain_words(domain: str) -> list[str]:
    """The words of a spoken domain up to its last dotted part ("example.com thanks" -> ["example.com"])."""
    words = domain.split()
    kept: list[str] = []
    for word in words:
        kept.append(word)
        if re.search(r"\.[a-z]{2,}$", "".join(kept)):
            break
    return kept


def extract_person_name(text: str) -> tuple[str, str] | None:
    """(first name, last name) from "my name is Olivia Ito" / "this is Olivia Ito", or None."""
    match = _NAME_INTRO.search(text)
    if not match:
        return None
    words = []
    for word in match.group("name").split():
        if word.lower() in _NAME_ENDS:
            break
        words.append(word)
    if not words or words[0].lower() in _NOT_NAMES:
        return None
    return words[0].capitalize(), words[-1].capitalize() if len(words) > 1 else ""


_MONTHS = {name: number for number, names in enumerate(
    [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
     ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"), ("october", "oct"),
     ("november", "nov"), ("december", "dec")], start=1) for name in names}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_DATE_FORMS = [
    re.compile(r"\b(?P<month>\d{1,2})[/.-](?P<day>\d{1,2})[/.-](?P<year>(?:19|20)\d{2})\b"),  # 07/22/1985
    re.compile(r"\b(?P<year>(?:19|20)\d{2})-(?P<month>\d{1,2})-(?P<day>\d{1,2})\b"),  # 1985-07-22
    re.compile(rf"\b(?P<month>{_MONTH})\.?\s+(?:the\s+)?{_DAY},?\s+(?P<year>(?:19|20)\d{{2}})\b"),  # July 22nd, 1985
    re.compile(rf"\b(?:the\s+)?{_DAY}\s+(?:of\s+)?(?P<month>{_MONTH})\.?,?\s+(?P<year>(?:19|20)\d{{2}})\b"),  # 22 July 1985
]


def extract_date(text: str) -> str | None:
    """A calendar date said or written in a common US or spelled-out form, as MM/DD/YYYY, or None.

    "07/22/1985", "1985-07-22", "July 22nd, 1985", "the 22nd of July 1985" (and the years and days
    as words, which text2num turns into digits) all give "07/22/1985"; an impossible date is None.
    """
    spoken = re.sub(r"\b(19|20) (\d{2})\b", r"\1\2", spoken_digits(text).lower())  # "19 85" -> "1985"
    for form in _DATE_FORMS:
        match = form.search(spoken)
        if not match:
            continue
        month = match.group("month")
        month_number = _MONTHS[month] if month in _MONTHS else int(month)
        day, year = int(match.group("day")), int(match.group("year"))
        try:
            date(year, month_number, day)
        except ValueError:
            return None
        return f"{month_number:02d}/{day:02d}/{year}"
    return None


def extract_phone_number(text: str, region: str = "US") -> str | None:
    """A phone number said or written ("two oh six, five five five, oh two nine three"), as NNN-NNN-NNNN
    for North American numbers (the back office's form) or E.164 otherwise; None when there is none.

    libphonenumber finds the number; the spoken digit groups are joined first (callers pause between
    them, and the recogniser writes the pauses as commas).
    """
    spoken = re.sub(r"(?<=\d)[,.]?\s+(?=\d)", " ", spoken_digits(text))
    for match in phonenumbers.PhoneNumberMatcher(spoken, region, leniency=phonenumbers.Leniency.POSSIBLE):
        number = match.number
        national = str(number.national_number)
        if number.country_code == 1 and len(national) == 10:
            return f"{national[:3]}-{national[3:6]}-{national[6:]}"
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


@dataclass(frozen=True)
class PostalAddress:
    """A US postal address in the back office's parts."""

    address1: str  # number and street: "2500 Woodward Avenue"
    address2: str  # apartment or suite, or ""
    city: str
    state: str
    zip: str
    country: str = "USA"

    def one_line(self) -> str:
        """"2500 Woodward Avenue, Suite 300, Detroit, MI 48201"."""
        return ", ".join(part for part in (self.address1, self.address2, self.city, f"{self.state} {self.zip}") if part)


_STREET_PARTS = ("AddressNumberPrefix", "AddressNumber", "AddressNumberSuffix", "StreetNamePreModifier",
                 "StreetNamePreDirectional", "StreetNamePreType", "StreetName", "StreetNamePostType",
                 "StreetNamePostDirectional", "StreetNamePostModifier")


def extract_postal_address(text: str) -> PostalAddress | None:
    """A complete US street address (number, street, city, state, zip) in what the caller said, or None.

    usaddress (a CRF trained on US addresses) labels the parts; words around the address ("send it to
    ...", "... please") are left out. An address missing a part is None: the flow asks again rather
    than ship to half an address.
    """
    # As written first (the recogniser's casing and digits); then with number words as digits.
    spoken = re.sub(r"\b(\d) (?=\d\b)", r"\1", spoken_digits(text))  # "4 8 2 0 1" -> "48201"
    for candidate, recased in ((text, False), (spoken, True)):
        address = _tagged_address(candidate, recased)
        if address:
            return address
    return None


def _tagged_address(text: str, recased: bool) -> PostalAddress | None:
    try:
        parts, _ = usaddress.tag(text)
    except usaddress.RepeatedLabelError:
        return None
    parts = {label: value.strip(" ,.") for label, value in parts.items()}
    street = " ".join(parts[label] for label in _STREET_PARTS if label in parts)
    unit = " ".join(parts[label] for label in ("OccupancyType", "OccupancyIdentifier") if label in parts)
    city, state, zip_code = (parts.get(label, "") for label in ("PlaceName", "StateName", "ZipCode"))
    if not (parts.get("AddressNumber") and street and city and state and re.fullmatch(r"\d{5}", zip_code)):
        return None
    if recased:  # number words made it lower case
        street, unit, city = street.title(), unit.title(), city.title()
    return PostalAddress(street, unit, city, state.upper() if len(state) == 2 else state.title(), zip_code)


@dataclass(frozen=True)
class KeyedDigits:
    """What a caller keyed on the phone's keypad: the digits, and whether it ended with # (done)."""

    digits: str
    complete: bool


def parse_dtmf(keys: str) -> KeyedDigits:
    """DTMF keys as sent by the gateway ("1234#"); raises ValueError naming a key that is not one."""
    bad = sorted({key for key in keys if key not in "0123456789*#ABCD"})
    if bad:
        raise ValueError(f"DTMF keys {''.join(bad)!r} are not keypad keys (0-9, *, #, A-D): send the keys as pressed")
    complete = keys.endswith("#")
    # "*" clears what was keyed before it (the usual keypad convention for "start again").
    digits = keys.rstrip("#").rsplit("*", 1)[-1]
    return KeyedDigits("".join(key for key in digits if key.isdigit()), complete)
