"""Text normalisation for speech: what the Piper voice is given instead of the raw answer text.

Callers judge the bot by how numbers, dates and amounts sound, and the voice's own phonemizer reads
"$1,247.99", "10/10/2025" or "#W2378156" badly. `normalise_for_speech` rewrites them into words; all number
words come from num2words. `ssml_to_speech_text` reads the small SSML subset used by stock prompts.

Readings chosen for English (American style, to match the default en_US voice: no "and" inside numbers
and no commas inside a number, since a comma makes the voice pause mid-number):

- amounts: "$1,247.99" -> "one thousand two hundred forty-seven dollars and ninety-nine cents"; zero cents
  are not read ("$5" -> "five dollars"); "£" / "€" / "USD 40" / "40 CAD" use num2words' currency names.
- numbers: "1,247.99" -> "one thousand two hundred forty-seven point nine nine"; "-5" -> "minus five";
  a lone 4-digit number from 1700 to 2099 is a year ("in 2024" -> "in twenty twenty-four");
  "10-15" -> "ten to fifteen".
- dates: month name and ordinal day, year as a year: "2025-10-10", "10/10/2025" (month first; day first
  when the month would be over 12) -> "October tenth, twenty twenty-five"; "Nov 14" -> "November fourteenth".
- times: "7 AM" -> "seven a m", "8:30 pm" -> "eight thirty p m", "8:05 pm" -> "eight oh five p m";
  24-hour "14:05" -> "fourteen oh five", "14:00" -> "fourteen hundred", "9:00" -> "nine o'clock".
- phone numbers: digit by digit, "0" as "zero", the written groups separated by commas (a short pause),
  "+" as "plus": "206-555-0293" -> "two zero six, five five five, zero two nine three".
- ids (letters mixed with 2+ digits, 5+ digit runs, digit groups joined by "-" that are not a range,
  numbers with a leading zero): character by character, letters as capitals, "-" as a pause:
  "#W2378156" -> "number W two three seven eight one five six".
- abbreviations: a small table (Dr., Mr., Mrs., Ms., St., e.g., i.e., etc., approx., vs., no., &, 24/7).

Other languages that num2words knows get numbers, amounts and percentages in that language's words;
phone numbers and ids are read digit by digit there. English-only: month-name dates and clock times
(left as written for the voice to read), ordinal suffixes, years, ranges, the "number" for "#" and the
abbreviations; "%" stays a sign after the number words ("vier %").
"""

from __future__ import annotations

import calendar
import datetime
import inspect
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from xml.etree import ElementTree

import num2words as num2words_package
from num2words import num2words

try:  # defusedxml refuses entity expansion and external references; SSML may come from an operator's file
    from defusedxml.ElementTree import fromstring as _parse_xml
except ImportError:  # pragma: no cover - the standard parser plus the DOCTYPE check below still bound it
    _parse_xml = ElementTree.fromstring

__all__ = [
    "SpeechPiece",
    "SpeechTextError",
    "UnsupportedLanguage",
    "is_ssml",
    "normalise_for_speech",
    "ssml_to_speech_text",
]


class SpeechTextError(ValueError):
    """Bad SSML or input the normaliser cannot read; the message names the problem and the fix."""


class UnsupportedLanguage(SpeechTextError):
    """A language num2words has no number words for."""


@dataclass(frozen=True)
class SpeechPiece:
    """A piece of text to speak, followed by a pause of pause_ms milliseconds."""

    text: str
    pause_ms: int


@dataclass(frozen=True)
class _Language:
    code: str  # the num2words converter key, e.g. "en", "de", "en_IN"
    english: bool


# ---------------------------------------------------------------------------------------------- languages


@lru_cache(maxsize=64)
def _resolve_language(language: str) -> _Language:
    converters = num2words_package.CONVERTER_CLASSES
    tag = language.strip().replace("-", "_")
    base, _, region = tag.partition("_")
    for candidate in (tag, f"{base.lower()}_{region.upper()}", base.lower()):
        if candidate in converters:
            return _Language(code=candidate, english=base.lower() == "en")
    raise UnsupportedLanguage(
        f"language {language!r} has no number words in num2words; use one of: {', '.join(sorted(converters))}"
    )


def _converter(lang: _Language):
    return num2words_package.CONVERTER_CLASSES[lang.code]


@lru_cache(maxsize=64)
def _currency_parameters(code: str) -> dict[str, inspect.Parameter]:
    method = getattr(num2words_package.CONVERTER_CLASSES[code], "to_currency", None)
    return dict(inspect.signature(method).parameters) if method else {}


# ------------------------------------------------------------------------------------------- number words

_BRITISH_AND = re.compile(r"\b(hundred|thousand|\w+illion)\s+and\b")
# Separates units from cents in num2words' currency output so zero cents / zero units can be dropped.
_CENTS_MARK = " \u2016"


@lru_cache(maxsize=4096)
def _cached_words(value: str, lang_code: str, to: str, english: bool) -> str:
    number = Decimal(value) if "." in value else int(value)
    try:
        words = num2words(number, lang=lang_code, to=to)
    except OverflowError:  # beyond num2words' largest scale word: read the digits
        words = " ".join(num2words(int(d), lang=lang_code) for d in value if d.isdigit())
    return _tidy(words, english)


def _tidy(words: str, english: bool) -> str:
    """Drop commas inside number words (they make the voice pause mid-number) and, for English, the "and"."""
    words = words.replace(",", "")
    return _BRITISH_AND.sub(r"\1", words) if english else words


def _words(number: int | str | Decimal, lang: _Language, to: str = "cardinal") -> str:
    return _cached_words(str(number), lang.code, to, lang.english)


def _digit_words(digits: str, lang: _Language) -> str:
    return " ".join(_words(int(d), lang) for d in digits if d in "0123456789")


_ID_GROUP_SEPARATORS = re.compile(r"[\s\-\u2013/._:]+")


@lru_cache(maxsize=1024)
def _read_characters(token: str, lang: _Language) -> str:
    """Character by character: digits as words, letters as capitals, separators as a pause."""
    groups = []
    for group in _ID_GROUP_SEPARATORS.split(token):
        spoken = " ".join(_words(int(ch), lang) if ch in "0123456789" else ch.upper() for ch in group if ch.isalnum())
        if spoken:
            groups.append(spoken)
    return ", ".join(groups)


_DIGIT_RUN = re.compile(r"\d+")


@lru_cache(maxsize=1024)
def _read_phone(text: str, lang: _Language) -> str:
    groups = ", ".join(_digit_words(group, lang) for group in _DIGIT_RUN.findall(text))
    return f"plus {groups}" if text.lstrip().startswith("+") else groups


def _negative_word(lang: _Language) -> str:
    return getattr(_converter(lang), "negword", "minus ").strip() or "minus"


def _is_year(digits: str) -> bool:
    return len(digits) == 4 and 1700 <= int(digits) <= 2099


def _has_leading_zero(digits: str) -> bool:
    return len(digits) > 1 and digits.startswith("0")


def _integer_words(digits: str, lang: _Language) -> str:
    """A bare run of digits: codes (leading zero, 5+ digits) digit by digit, years as years, else a number."""
    if _has_leading_zero(digits) or len(digits) >= 5:
        return _digit_words(digits, lang)
    if lang.english and _is_year(digits):
        return _words(int(digits), lang, "year")
    return _words(int(digits), lang)


_GENERIC_SEPARATOR = re.compile(r"[.,\u00a0\u202f]")


def _parse_number(text: str, lang: _Language) -> Decimal | None:
    """English: "," groups thousands, "." is the decimal point. Other languages: see _parse_generic_number."""
    if lang.english:
        return Decimal(text.replace(",", ""))
    return _parse_generic_number(text)


def _parse_generic_number(text: str) -> Decimal | None:
    """Locale-agnostic: with two kinds of separator the last is the decimal one ("1.247,99"); one separator
    followed by exactly three digits groups thousands ("1.247"); otherwise it is the decimal one ("1,5")."""
    separators = _GENERIC_SEPARATOR.findall(text)
    parts = _GENERIC_SEPARATOR.split(text)
    if not separators:
        return Decimal(text)
    if len(set(separators)) > 1:
        if len(set(separators[:-1])) > 1 or separators[-1] in separators[:-1]:
            return None
        return Decimal(f"{''.join(parts[:-1])}.{parts[-1]}")
    grouped = all(len(part) == 3 for part in parts[1:]) and parts[0] != "0"
    if grouped or separators[0] in "\u00a0\u202f":
        return Decimal("".join(parts)) if grouped else None
    if len(separators) == 1:
        return Decimal(f"{parts[0]}.{parts[1]}")
    return None


def _number_words(number: Decimal, lang: _Language) -> str:
    """A parsed number: written without a fraction it is read as an integer, else with its decimals."""
    return _words(int(number) if number.as_tuple().exponent >= 0 else number, lang)


# ---------------------------------------------------------------------------------------------- currency

_CURRENCY_SYMBOLS = {"$": "USD", "£": "GBP", "€": "EUR"}
_CURRENCY_WORDS = {"dollar": "USD", "dollars": "USD", "euro": "EUR", "euros": "EUR"}
_CURRENCY_CODES = ("USD", "EUR", "GBP", "CAD", "AUD")
# Codes read without num2words' adjective; the others get it: "40 CAD" -> "forty Canadian dollars".
_PLAIN_CURRENCIES = frozenset({"USD", "EUR", "GBP"})
_SCALE_BY_SUFFIX = {"k": "thousand", "K": "thousand"}


def _currency_words(amount: Decimal, code: str, lang: _Language, scale: str | None, adjective: bool) -> str:
    negative, amount = amount < 0, abs(amount)
    converter = _converter(lang)
    adjective_word = getattr(converter, "CURRENCY_ADJECTIVES", {}).get(code) if adjective else None
    if scale:  # "$1.5 million" -> "one point five million dollars" (how people say it)
        forms = getattr(converter, "CURRENCY_FORMS", {}).get(code)
        unit = forms[0][-1] if forms else code
        words = " ".join(filter(None, (_number_words(amount, lang), scale, adjective_word, unit)))
    else:
        words = _plain_currency_words(amount, code, lang, adjective_word is not None)
    return f"{_negative_word(lang)} {words}" if negative else words


@lru_cache(maxsize=1024)
def _plain_currency_words(amount: Decimal, code: str, lang: _Language, adjective: bool) -> str:
    parameters = _currency_parameters(lang.code)
    options: dict[str, object] = {"lang": lang.code, "to": "currency", "currency": code}
    if "separator" in parameters:
        options["separator"] = _CENTS_MARK
    if adjective and "adjective" in parameters:
        options["adjective"] = True
    try:
        # A Decimal, never an int: num2words reads an int amount as cents (40000 -> "four hundred dollars").
        words = num2words(amount, **options)
    except (NotImplementedError, KeyError, TypeError, AttributeError, ValueError):
        return f"{_number_words(amount, lang)} {code}"  # a currency this language's converter cannot name
    if _CENTS_MARK not in words:
        return _tidy(words, lang.english)
    units, cents = (_tidy(part.strip(), lang.english) for part in words.split(_CENTS_MARK, 1))
    whole = int(amount)
    if amount == whole:
        return units
    if whole == 0:
        return cents
    joiner = " and" if lang.english else parameters["separator"].default
    return f"{units}{joiner} {cents}"


# ------------------------------------------------------------------------------------------------ patterns

_MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_MONTH_BY_PREFIX = {name[:3]: number for number, name in enumerate(_MONTH_NAMES, start=1)}
_MONTH = "(?:" + "|".join(_MONTH_NAMES) + "|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)"
_ORDINAL_SUFFIX = "(?i:st|nd|rd|th)"

_ENGLISH_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_ENGLISH_AMOUNT = r"\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?|\d+(?:\.\d{1,2})?"
_GENERIC_NUMBER = r"\d+(?:[.,\u00a0\u202f]\d+)*"
_CODES = "|".join(_CURRENCY_CODES)
_NUMBER_END = r"(?![\w-]|[.,]\d)"  # not glued to letters and not the middle of a longer number

_PHONE = (
    r"(?<![\w+])(?P<phone>"
    r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]\d{1,5}){2,5}"  # +44 20 7946 0123
    r"|(?:1[ .-]?)?\(\d{3}\)[ ]?\d{3}[ .-]\d{4}"  # (617) 555-0834
    r"|(?:1[ .-])?\d{3}(?P<phone_sep>[ .-])\d{3}(?P=phone_sep)\d{4}"  # 206-555-0293, 1-800-555-0199
    r"|0\d{2,4}(?:[ -]\d{3,4}){2}|0\d{2,4}[ -]\d{6,8}"  # 0800 555 0123
    r"|\d{3}-\d{4}"  # 555-0293
    r")" + _NUMBER_END
)


def _scale(prefix: str) -> str:
    return rf"(?:(?P<{prefix}_k>[kK])\b|\s(?P<{prefix}_scale>thousand|million|billion|trillion)\b)?"


def _currency_patterns(amount: str, english: bool) -> tuple[list[str], list[str]]:
    """Amount alternatives: those starting at a digit or symbol, and those starting at a currency code."""
    scale = _scale if english else (lambda prefix: "")
    symbol_first = [
        rf"(?<![\d.,])(?P<cur_sym>(?P<cs_neg>-)?(?P<cs_sym>[$£€])\s?(?P<cs_amt>{amount})(?!\d){scale('cs')})",
        (
            rf"(?<![\w.,])(?P<cur_symbol_after>(?P<cz_neg>-)?(?P<cz_amt>{amount})(?!\d){scale('cz')}"
            rf"\s?(?P<cz_sym>[$£€]))"
        ),
        rf"(?<![\w.,])(?P<cur_post>(?P<cq_neg>-)?(?P<cq_amt>{amount})(?!\d){scale('cq')}\s?(?P<cq_code>{_CODES})\b)",
    ]
    if english:
        symbol_first.append(
            rf"(?<![\w.,])(?P<cur_word>(?P<cw_neg>-)?(?P<cw_amt>{amount})(?!\d){scale('cw')}"
            rf"\s(?P<cw_word>(?i:dollars?|euros?))\b)"
        )
    word_first = [rf"\b(?P<cur_pre>(?P<cp_code>{_CODES})\s?(?P<cp_neg>-)?(?P<cp_amt>{amount})(?!\d){scale('cp')})"]
    return symbol_first, word_first


def _shared_symbol_first(number: str) -> list[str]:
    """Digit- or symbol-first alternatives that come after dates, times and amounts in every language."""
    return [
        rf"(?<![\w.,])(?P<percent>(?P<pc_neg>-)?(?P<pc_num>{number})(?!\d)\s?%)",
        r"(?<!\w)(?P<hash>\#\s?(?P<hash_id>[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*))(?![\w-])",
        r"(?<![\w.,-])(?P<digit_groups>\d+(?:-\d+)+)" + _NUMBER_END,
    ]


def _shared_last(number: str) -> list[str]:
    """Ids and plain numbers: tried last, once nothing more specific matched at that position."""
    return [
        (
            r"(?<![\w-])(?P<mixed_id>(?=[A-Za-z0-9-]*\d)(?=[A-Za-z0-9-]*[A-Za-z])[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*)"
            r"(?![\w-])"
        ),
        rf"(?<![\w.,])(?P<number>(?P<num_neg>-)?(?P<num>{number})(?!\d|[.,]\d)(?P<num_unit>[A-Za-z]{{1,3}}(?!\w))?)",
    ]


def _combine(symbol_first: list[str], word_first: list[str], last: list[str]) -> re.Pattern[str]:
    """One alternation, in priority order, with each block behind a one-character guard: most positions in
    prose are inside a word, and a failed guard there is far cheaper than trying every alternative."""
    blocks = [rf"(?=[-\d$£€#(+])(?:{'|'.join(symbol_first)})", rf"\b(?=[A-Za-z])(?:{'|'.join(word_first)})"]
    return re.compile("|".join(blocks + last))


_ENGLISH_CURRENCY_SYMBOL_FIRST, _ENGLISH_CURRENCY_WORD_FIRST = _currency_patterns(_ENGLISH_AMOUNT, english=True)
_ENGLISH_PATTERN = _combine(
    symbol_first=[
        r"(?<![\w/])(?P<always>24/7)(?![\w/])",
        r"(?<![\w-])(?P<iso_date>(?P<iso_y>\d{4})-(?P<iso_m>\d{1,2})-(?P<iso_d>\d{1,2}))(?![\w-])",
        r"(?<![\w/])(?P<us_date>(?P<us_m>\d{1,2})/(?P<us_d>\d{1,2})/(?P<us_y>\d{4}))(?![\w/])",
        (
            rf"(?<![\w.,])(?P<day_month>(?P<dm_d>\d{{1,2}}){_ORDINAL_SUFFIX}?\s+(?P<dm_of>of\s+)?(?P<dm_m>{_MONTH})\b"
            rf"(?:\.?,?\s+(?P<dm_y>\d{{4}}))?)(?!\w)"
        ),
        (
            r"(?<![\w:.])(?P<time_ampm>(?P<ap_h>\d{1,2})(?::(?P<ap_min>[0-5]\d))?\s?(?P<ap_x>[AaPp])\.?\s?[Mm]"
            r"(?P<ap_dot>\.)?)(?!\w)"
        ),
        r"(?<![\w:.])(?P<time_24>(?P<t_h>[01]?\d|2[0-3]):(?P<t_m>[0-5]\d)(?::(?P<t_s>[0-5]\d))?)(?![\w:]|\.\d)",
        _PHONE,
        *_ENGLISH_CURRENCY_SYMBOL_FIRST,
        rf"(?<![\w.,])(?P<ordinal>(?P<ord_num>\d{{1,3}}(?:,\d{{3}})+|\d+){_ORDINAL_SUFFIX})(?!\w)",
        *_shared_symbol_first(_ENGLISH_NUMBER),
    ],
    word_first=[
        rf"(?P<month_year>(?P<my_m>{_MONTH})\.?\s+(?P<my_y>\d{{4}}))(?!\w)",
        (
            rf"(?P<month_day>(?P<md_m>{_MONTH})\.?\s+(?P<md_d>\d{{1,2}}){_ORDINAL_SUFFIX}?(?:,?\s+(?P<md_y>\d{{4}}))?)"
            r"(?!\w)"
        ),
        *_ENGLISH_CURRENCY_WORD_FIRST,
        r"(?P<number_word>(?P<no_word>[Nn]o)\.\s?)(?=\d)",
        r"(?P<title>Dr|Mr|Mrs|Ms)\.(?=\s+[A-Z])",
        r"(?P<street>St)\.",
        r"(?P<abbreviation>[Ee]\.g\.|[Ii]\.e\.|[Ee]tc\.|[Aa]pprox\.|[Vv]s\b\.?)",
    ],
    last=[*_shared_last(_ENGLISH_NUMBER), r"(?P<ampersand>&)"],
)

_GENERIC_CURRENCY_SYMBOL_FIRST, _GENERIC_CURRENCY_WORD_FIRST = _currency_patterns(_GENERIC_NUMBER, english=False)
_GENERIC_PATTERN = _combine(
    symbol_first=[
        # Numeric dates and clock times are left for the voice to read: month names are English-only here.
        (
            r"(?<![\w.,/-])(?P<verbatim>\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./]\d{1,2}[./](?:\d{4}|\d{2})|\d{1,2}:[0-5]\d)"
            r"(?![\w/:-]|[.,]\d)"
        ),
        _PHONE,
        *_GENERIC_CURRENCY_SYMBOL_FIRST,
        *_shared_symbol_first(_GENERIC_NUMBER),
    ],
    word_first=_GENERIC_CURRENCY_WORD_FIRST,
    last=_shared_last(_GENERIC_NUMBER),
)

# What follows an abbreviation's period when that period also ends the sentence.
_SENTENCE_END = re.compile(r"[ \t]*(?:\n|$)|\s+[A-Z]")
_LINE_END = re.compile(r"[ \t]*(?:\n|$)")
_CAPITAL_AFTER = re.compile(r"[ \t]+[A-Z]")
_CAPITALISED_WORD_BEFORE = re.compile(r"(?:[A-Z][\w'-]*|\d\w*)[ \t]+$")
_NUMBER_WITH_UNIT = re.compile(r"(?P<digits>\d{1,4})(?P<unit>[A-Za-z]{1,3})")

_TITLES = {"Dr": "Doctor", "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz"}
_ABBREVIATIONS = {  # lower-case written form -> (spoken, whether its period may also end a sentence)
    "e.g.": ("for example", False),
    "i.e.": ("that is", False),
    "etc.": ("et cetera", True),
    "approx.": ("approximately", False),
    "vs.": ("versus", False),
    "vs": ("versus", False),
}


# ------------------------------------------------------------------------------------------------ handlers

Match = re.Match[str]


def _period_ends_sentence(match: Match) -> bool:
    return _SENTENCE_END.match(match.string, match.end()) is not None


def _date_words(year: int | None, month: int, day: int, lang: _Language) -> str | None:
    """Month name, ordinal day and year as a year: "October tenth, twenty twenty-five"; None if no such day."""
    last_day = calendar.monthrange(year or 2000, month)[1] if 1 <= month <= 12 else 0  # 2000: leap year
    if not 1 <= day <= last_day:
        return None
    spoken = f"{_MONTH_NAMES[month - 1]} {_words(day, lang, 'ordinal')}"
    return f"{spoken}, {_words(year, lang, 'year')}" if year is not None else spoken


def _on_iso_date(m: Match, lang: _Language) -> str:
    spoken = _date_words(int(m["iso_y"]), int(m["iso_m"]), int(m["iso_d"]), lang)
    return spoken or _read_characters(m["iso_date"], lang)


def _on_us_date(m: Match, lang: _Language) -> str:
    month, day, year = int(m["us_m"]), int(m["us_d"]), int(m["us_y"])
    if month > 12:  # "25/12/2025" can only be day first
        month, day = day, month
    return _date_words(year, month, day, lang) or _read_characters(m["us_date"], lang)


def _on_month_date(m: Match, lang: _Language, prefix: str) -> str:
    month = _MONTH_BY_PREFIX[m[f"{prefix}_m"][:3]]
    year = int(m[f"{prefix}_y"]) if m[f"{prefix}_y"] else None
    day = int(m[f"{prefix}_d"])
    spoken = _date_words(year, month, day, lang)
    if spoken is None:
        return f"{_MONTH_NAMES[month - 1]} {_words(day, lang)}"
    if m.groupdict().get(f"{prefix}_of"):  # "the 3rd of July" keeps its order: "the third of July"
        spoken = f"{_words(day, lang, 'ordinal')} of {_MONTH_NAMES[month - 1]}"
        return f"{spoken}, {_words(year, lang, 'year')}" if year is not None else spoken
    return spoken


def _on_month_year(m: Match, lang: _Language) -> str:
    return f"{_MONTH_NAMES[_MONTH_BY_PREFIX[m['my_m'][:3]] - 1]} {_words(int(m['my_y']), lang, 'year')}"


def _minute_words(minute: int, lang: _Language) -> str:
    return f"oh {_words(minute, lang)}" if minute < 10 else _words(minute, lang)


def _on_time_ampm(m: Match, lang: _Language) -> str:
    hour, minute = int(m["ap_h"]), int(m["ap_min"] or 0)
    clock = _words(hour, lang) if minute == 0 else f"{_words(hour, lang)} {_minute_words(minute, lang)}"
    spoken = f"{clock} {m['ap_x'].lower()} m"
    return spoken + "." if m["ap_dot"] and _period_ends_sentence(m) else spoken


def _on_time_24(m: Match, lang: _Language) -> str:
    hour, minute = int(m["t_h"]), int(m["t_m"])
    if minute:
        spoken = f"{_words(hour, lang)} {_minute_words(minute, lang)}"
    else:
        spoken = f"{_words(hour, lang)} hundred" if hour > 12 or hour == 0 else f"{_words(hour, lang)} o'clock"
    seconds = int(m["t_s"] or 0)
    # A timestamp's seconds ("02:30:15") are said only when there are some.
    return f"{spoken} and {_words(seconds, lang)} seconds" if seconds else spoken


def _on_currency(m: Match, lang: _Language, prefix: str) -> str:
    groups = m.groupdict()
    amount = _parse_number(groups[f"{prefix}_amt"], lang)
    if amount is None:
        return _read_characters(m.group(0), lang)
    if groups[f"{prefix}_neg"]:
        amount = -amount
    code = (
        _CURRENCY_SYMBOLS.get(groups.get("cs_sym") or groups.get("cz_sym") or "")
        or groups.get(f"{prefix}_code")
        or _CURRENCY_WORDS[(groups.get("cw_word") or "").lower()]
    )
    scale = groups.get(f"{prefix}_scale") or _SCALE_BY_SUFFIX.get(groups.get(f"{prefix}_k") or "")
    return _currency_words(amount, code, lang, scale, adjective=code not in _PLAIN_CURRENCIES)


def _on_percent(m: Match, lang: _Language) -> str:
    value = _parse_number(m["pc_num"], lang)
    if value is None:
        return _read_characters(m["pc_num"], lang) + " %"
    spoken = _number_words(-value if m["pc_neg"] else value, lang)
    return f"{spoken} percent" if lang.english else f"{spoken} %"


def _on_ordinal(m: Match, lang: _Language) -> str:
    return _words(int(m["ord_num"].replace(",", "")), lang, "ordinal")


def _on_hash(m: Match, lang: _Language) -> str:
    token = m["hash_id"]
    if token.isdigit() and len(token) <= 4 and not _has_leading_zero(token):
        spoken = _words(int(token), lang)
    else:
        spoken = _read_characters(token, lang)
    return f"number {spoken}" if lang.english else spoken


def _on_digit_groups(m: Match, lang: _Language) -> str:
    parts = m["digit_groups"].split("-")
    if len(parts) == 2 and not any(_has_leading_zero(part) for part in parts):
        first, second = parts
        joiner = " to " if lang.english else " - "
        if len(first) <= 3 and len(second) <= 3:  # a range: "10-15 minutes"
            return _words(int(first), lang) + joiner + _words(int(second), lang)
        if lang.english and _is_year(first) and (len(second) == 2 or (_is_year(second) and second > first)):
            return _words(int(first), lang, "year") + joiner + _words(int(second), lang, "year")
    return _read_characters(m["digit_groups"], lang)


def _on_mixed_id(m: Match, lang: _Language) -> str:
    token = m["mixed_id"]
    with_unit = _NUMBER_WITH_UNIT.fullmatch(token)
    if with_unit and not _has_leading_zero(with_unit["digits"]):  # "10GB", "4G", "5km": a quantity
        return f"{_words(int(with_unit['digits']), lang)} {with_unit['unit']}"
    if sum(ch.isdigit() for ch in token) >= 2:
        return _read_characters(token, lang)
    return token  # "MP3", "A1": too short to be a reference, the voice reads it


def _on_number(m: Match, lang: _Language) -> str:
    written = m["num"]
    value = _parse_number(written, lang)
    if value is None:
        spoken = _read_characters(written, lang)
    elif written.isdigit():
        spoken = _integer_words(written, lang)
        if m["num_neg"]:
            spoken = f"{_negative_word(lang)} {spoken}"
    else:
        spoken = _number_words(-value if m["num_neg"] else value, lang)
    return f"{spoken} {m['num_unit']}" if m["num_unit"] else spoken


def _on_street(m: Match, lang: _Language) -> str:
    after_name = _CAPITALISED_WORD_BEFORE.search(m.string, max(0, m.start() - 40), m.start()) is not None
    before_name = _CAPITAL_AFTER.match(m.string, m.end()) is not None
    if before_name and not after_name:  # "St. Louis"
        return "Saint"
    return "Street." if _period_ends_sentence(m) else "Street"


def _on_abbreviation(m: Match, lang: _Language) -> str:
    written = m["abbreviation"]
    spoken, may_end_sentence = _ABBREVIATIONS[written.lower()]
    if written[0].isupper():
        spoken = spoken[0].upper() + spoken[1:]
    # The abbreviation's period also ends the sentence at the end of the text or line, and for "etc." before
    # a capitalised word; keep it so the sentence splitter still sees the end.
    at_line_end = _LINE_END.match(m.string, m.end()) is not None
    if written.endswith(".") and (at_line_end or (may_end_sentence and _period_ends_sentence(m))):
        return spoken + "."
    return spoken


_Handler = Callable[[Match, _Language], str]
_HANDLERS: dict[str, _Handler] = {
    "always": lambda m, lang: f"{_words(24, lang)} {_words(7, lang)}",
    "iso_date": _on_iso_date,
    "us_date": _on_us_date,
    "month_year": _on_month_year,
    "month_day": lambda m, lang: _on_month_date(m, lang, "md"),
    "day_month": lambda m, lang: _on_month_date(m, lang, "dm"),
    "time_ampm": _on_time_ampm,
    "time_24": _on_time_24,
    "verbatim": lambda m, lang: m.group(0),
    "phone": lambda m, lang: _read_phone(m["phone"], lang),
    "cur_sym": lambda m, lang: _on_currency(m, lang, "cs"),
    "cur_symbol_after": lambda m, lang: _on_currency(m, lang, "cz"),
    "cur_pre": lambda m, lang: _on_currency(m, lang, "cp"),
    "cur_post": lambda m, lang: _on_currency(m, lang, "cq"),
    "cur_word": lambda m, lang: _on_currency(m, lang, "cw"),
    "percent": _on_percent,
    "ordinal": _on_ordinal,
    "number_word": lambda m, lang: "Number " if m["no_word"] == "No" else "number ",
    "title": lambda m, lang: _TITLES[m["title"]],
    "street": _on_street,
    "abbreviation": _on_abbreviation,
    "ampersand": lambda m, lang: " and ",
    "hash": _on_hash,
    "digit_groups": _on_digit_groups,
    "mixed_id": _on_mixed_id,
    "number": _on_number,
}


# ------------------------------------------------------------------------------------------------- plain text

_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_UNSPEAKABLE_CATEGORIES = frozenset({"So", "Cn", "Co", "Cs", "Cc", "Cf"})
_SPACE_RUN = re.compile(r"[ \t]+")
_DASH_BETWEEN_WORDS = re.compile(r"(?<=[^\W\d])\s*\u2014\s*(?=\w)|\s+\u2013\s+(?=[^\W\d])")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"[ \t]+(?=[.,!?;:])")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")


def _is_speakable(ch: str) -> bool:
    if ch in "\n\t":
        return True
    # Variation selectors and skin-tone modifiers are what is left of an emoji once its symbol is gone.
    if "\ufe00" <= ch <= "\ufe0f" or "\U0001f3fb" <= ch <= "\U0001f3ff":
        return False
    return unicodedata.category(ch) not in _UNSPEAKABLE_CATEGORIES


def _strip_unspeakable(text: str) -> str:
    if text.isascii():  # the common case, without a per-character lookup
        return _ASCII_CONTROL.sub("", text)
    kept = "".join(ch for ch in text if _is_speakable(ch))
    # "Done ✅." must not become "Done ." once the emoji is gone.
    return _SPACE_BEFORE_PUNCTUATION.sub("", kept) if len(kept) != len(text) else kept


def _rewrite(text: str, lang: _Language) -> str:
    """Replace numbers, amounts, dates... with words; leaves spacing at the ends as it was."""
    pattern = _ENGLISH_PATTERN if lang.english else _GENERIC_PATTERN
    return pattern.sub(lambda m: _HANDLERS[m.lastgroup](m, lang), _strip_unspeakable(text))


def _tidy_spacing(text: str) -> str:
    text = _SPACE_AROUND_NEWLINE.sub("\n", _SPACE_RUN.sub(" ", text)).strip()
    return text if any(ch.isalnum() for ch in text) else ""


def normalise_for_speech(text: str, language: str = "en") -> str:
    """Rewrite plain text so a TTS voice reads it correctly: numbers, amounts, percentages, dates, times,
    phone numbers, reference ids and common abbreviations become words (see the module docstring for the
    readings); ordinary words and sentence punctuation are kept.

    Control characters, emoji and other symbols the voice cannot say are removed; returns "" when nothing
    speakable remains. Raises UnsupportedLanguage when num2words has no number words for `language`.
    """
    lang = _resolve_language(language)
    # An em dash between words is a pause; the voice otherwise runs over it (and can drop what follows).
    return _tidy_spacing(_rewrite(_DASH_BETWEEN_WORDS.sub(", ", text), lang))


# ------------------------------------------------------------------------------------------------------- SSML

_SSML_NAMESPACE = "{http://www.w3.org/2001/10/synthesis}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_SUPPORTED_TAGS = ("speak", "break", "say-as")
_SUPPORTED_ATTRIBUTES = {
    "speak": {"version", _XML_LANG},  # xml:lang is accepted; the `language` argument decides the reading
    "break": {"time", "strength"},
    "say-as": {"interpret-as", "format"},
}
# SSML's strength names; medium is also what a <break/> without attributes means.
_BREAK_STRENGTH_MS = {"none": 0, "x-weak": 100, "weak": 200, "medium": 400, "strong": 700, "x-strong": 1000}
_BREAK_TIME = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*")
_MAX_BREAK_MS = 10_000
_SAY_AS_KINDS = ("digits", "characters", "spell-out", "date", "cardinal", "ordinal", "telephone")
_DATE_FORMATS = ("mdy", "dmy", "ymd")
_SSML_START = re.compile(r"\s*<speak[\s>/]")
_DOCTYPE = re.compile(r"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_ORDINAL_TEXT = re.compile(r"\s*(-?[\d,]+)\s*(?:(?i:st|nd|rd|th)|\.)?\s*")
_CARDINAL_TEXT = re.compile(r"\s*(-?)\s*(\d[\d.,\u00a0\u202f]*)\s*")


def is_ssml(text: str) -> bool:
    """Whether text is an SSML document (starts with a <speak> tag, leading whitespace allowed)."""
    return _SSML_START.match(text) is not None


def _tag_name(element: ElementTree.Element) -> str:
    tag = element.tag if isinstance(element.tag, str) else "?"
    return tag.removeprefix(_SSML_NAMESPACE)


def _attribute_name(name: str) -> str:
    return "xml:lang" if name == _XML_LANG else name


def _check_element(element: ElementTree.Element) -> str:
    name = _tag_name(element)
    if name not in _SUPPORTED_TAGS:
        raise SpeechTextError(
            f"unsupported SSML tag <{name}>; supported tags: {', '.join(f'<{t}>' for t in _SUPPORTED_TAGS)}"
        )
    unknown = sorted(set(element.attrib) - _SUPPORTED_ATTRIBUTES[name])
    if unknown:
        allowed = ", ".join(sorted(_attribute_name(a) for a in _SUPPORTED_ATTRIBUTES[name]))
        raise SpeechTextError(
            f"unsupported attribute {_attribute_name(unknown[0])!r} on SSML <{name}>; supported: {allowed}"
        )
    return name


def _parse_ssml(ssml: str) -> ElementTree.Element:
    if _DOCTYPE.search(ssml):  # a prompt needs no DTD, and entity declarations are how XML bombs start
        raise SpeechTextError("SSML must not contain <!DOCTYPE> or <!ENTITY> declarations; remove them")
    try:
        root = _parse_xml(ssml)
    except ElementTree.ParseError as error:
        raise SpeechTextError(  # the parser's message ends with its position: "line 1, column 9"
            f"malformed SSML, {error}; close every tag and write '&' as '&amp;' and '<' as '&lt;'"
        ) from error
    except ValueError as error:  # defusedxml's refusals
        raise SpeechTextError(f"SSML refused by the XML parser: {error}") from error
    if _tag_name(root) != "speak":
        raise SpeechTextError(f"SSML must have <speak> as its root element, not <{_tag_name(root)}>")
    return root


def _break_ms(element: ElementTree.Element) -> int:
    time = element.get("time")
    if time is not None:  # SSML: time wins over strength
        match = _BREAK_TIME.fullmatch(time)
        if not match:
            raise SpeechTextError(f'<break time="{time}"> is not a duration; write e.g. time="300ms" or time="1s"')
        milliseconds = round(float(match[1]) * (1000 if match[2] == "s" else 1))
        if milliseconds > _MAX_BREAK_MS:
            raise SpeechTextError(f'<break time="{time}"> is longer than {_MAX_BREAK_MS} ms; split the prompt')
        return milliseconds
    strength = element.get("strength", "medium")
    if strength not in _BREAK_STRENGTH_MS:
        raise SpeechTextError(f'<break strength="{strength}"> is unknown; use one of: {", ".join(_BREAK_STRENGTH_MS)}')
    return _BREAK_STRENGTH_MS[strength]


def _say_as_date(text: str, date_format: str | None, lang: _Language) -> str:
    parts = [int(part) for part in _DIGIT_RUN.findall(text)]
    date_format = date_format or ("ymd" if text.strip()[:4].isdigit() else "mdy")
    if date_format not in _DATE_FORMATS:
        raise SpeechTextError(f'<say-as format="{date_format}"> is unknown; use one of: {", ".join(_DATE_FORMATS)}')
    if len(parts) != 3:
        raise SpeechTextError(f'<say-as interpret-as="date"> needs day, month and year, got {text.strip()!r}')
    values = dict(zip(date_format, parts))
    try:
        datetime.date(values["y"], values["m"], values["d"])
    except ValueError as error:
        raise SpeechTextError(
            f'<say-as interpret-as="date"> {text.strip()!r} is not a {date_format} date: {error}'
        ) from error
    if not lang.english:
        return text.strip()  # month names are English-only; the voice reads the numeric date
    return _date_words(values["y"], values["m"], values["d"], lang) or text.strip()


def _say_as(element: ElementTree.Element, lang: _Language) -> str:
    kind = element.get("interpret-as")
    if kind not in _SAY_AS_KINDS:
        raise SpeechTextError(f'<say-as interpret-as="{kind}"> is unsupported; use one of: {", ".join(_SAY_AS_KINDS)}')
    if len(element):
        raise SpeechTextError(f"<say-as> must contain only text, found <{_tag_name(element[0])}> inside it")
    date_format = element.get("format")
    if date_format is not None and kind != "date":
        raise SpeechTextError(f'<say-as format="..."> applies only to interpret-as="date", not "{kind}"')
    text = element.text or ""
    if kind in ("digits", "characters", "spell-out"):
        return _read_characters(text, lang)
    if kind == "telephone":
        return _read_phone(text, lang)
    if kind == "date":
        return _say_as_date(text, date_format, lang)
    if kind == "ordinal":
        match = _ORDINAL_TEXT.fullmatch(text)
        if match and match[1].replace(",", "").lstrip("-").isdigit():
            return _words(int(match[1].replace(",", "")), lang, "ordinal")
        raise SpeechTextError(f'<say-as interpret-as="ordinal"> needs a whole number, got {text!r}')
    match = _CARDINAL_TEXT.fullmatch(text)  # cardinal
    value = _parse_number(match[2], lang) if match else None
    if value is None:
        raise SpeechTextError(f'<say-as interpret-as="cardinal"> needs a number, got {text!r}')
    return _number_words(-value if match[1] else value, lang)


class _PieceBuilder:
    """Collects spoken text until a <break>, then closes a SpeechPiece with that pause."""

    def __init__(self, lang: _Language) -> None:
        self.lang = lang
        self.pieces: list[SpeechPiece] = []
        self.parts: list[str] = []

    def add_text(self, text: str | None) -> None:
        if text:
            self.parts.append(_rewrite(text, self.lang))

    def add_words(self, words: str) -> None:
        self.parts.append(words)

    def add_pause(self, milliseconds: int) -> None:
        text = _tidy_spacing("".join(self.parts))
        self.parts = []
        if not text and self.pieces:  # breaks in a row add up
            last = self.pieces[-1]
            self.pieces[-1] = SpeechPiece(last.text, last.pause_ms + milliseconds)
        else:
            self.pieces.append(SpeechPiece(text, milliseconds))

    def finish(self) -> list[SpeechPiece]:
        self.add_pause(0)
        return [piece for piece in self.pieces if piece.text or piece.pause_ms]


def _walk(element: ElementTree.Element, builder: _PieceBuilder) -> None:
    name = _check_element(element)
    if name == "speak":
        raise SpeechTextError("<speak> may only be the root element; remove the nested <speak>")
    if name == "break":
        if len(element) or (element.text or "").strip():
            raise SpeechTextError('<break> must be empty; write it as <break time="300ms"/>')
        builder.add_pause(_break_ms(element))
    else:
        builder.add_words(_say_as(element, builder.lang))
    builder.add_text(element.tail)


def ssml_to_speech_text(ssml: str, language: str = "en") -> list[SpeechPiece]:
    """Read an SSML prompt into pieces of text to speak, each followed by a pause.

    Supported: a <speak> root; <break time="300ms"/>, time="1s" or strength="none|x-weak|weak|medium|strong|
    x-strong" (0/100/200/400/700/1000 ms; a bare <break/> is medium); <say-as interpret-as="..."> with digits,
    characters, spell-out, date (format="mdy"|"dmy"|"ymd"), cardinal, ordinal or telephone. Text outside
    say-as is normalised like normalise_for_speech. Consecutive breaks add up; a leading break gives a
    piece with empty text. Raises SpeechTextError for malformed XML (with the parser's position), unknown
    tags or attributes, and say-as content that does not fit its kind.
    """
    lang = _resolve_language(language)
    root = _parse_ssml(ssml)
    _check_element(root)
    builder = _PieceBuilder(lang)
    builder.add_text(root.text)
    for child in root:
        _walk(child, builder)
    return builder.finish()


if __name__ == "__main__":  # a speed check by hand: python -m services.tts.speech_text
    import timeit

    answer = (
        "Your order #W2378156 of $1,247.99 ships on 10/10/2025. Call 0800 555 0123, 24/7, or Dr. Lee at "
        "(617) 555-0834 after 8:30 pm. Rates rose 1.5% since Nov 14, 2024; approx. 40 dollars, e.g. EUR 12. "
    )
    answer = (answer * (2000 // len(answer) + 1))[:2000]
    runs = 200
    seconds = timeit.timeit(lambda: normalise_for_speech(answer), number=runs) / runs
    print(f"{len(answer)} characters: {seconds * 1000:.2f} ms per call")
