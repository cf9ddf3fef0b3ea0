"""Text normalisation for speech (services/tts/speech_text.py): exact readings of amounts, dates, times,
phone numbers, ids and abbreviations, the SSML subset, other languages and unspeakable characters.

Pure unit tests: no service is started and nothing is timed.
"""

from __future__ import annotations

import pytest

from services.tts.speech_text import (
    SpeechPiece,
    SpeechTextError,
    UnsupportedLanguage,
    is_ssml,
    normalise_for_speech,
    ssml_to_speech_text,
)

W2378156 = "W two three seven eight one five six"


@pytest.mark.parametrize(
    "text, spoken",
    [
        # amounts
        ("$1,247.99", "one thousand two hundred forty-seven dollars and ninety-nine cents"),
        ("$40,000", "forty thousand dollars"),
        ("$5", "five dollars"),
        ("$0.99", "ninety-nine cents"),
        ("$1.01", "one dollar and one cent"),
        ("-$5.25", "minus five dollars and twenty-five cents"),
        ("$2 million", "two million dollars"),
        ("$1.5 million", "one point five million dollars"),
        ("$40k", "forty thousand dollars"),
        ("£40", "forty pounds sterling"),
        ("€12.50", "twelve euro and fifty cents"),
        ("40 €", "forty euro"),
        ("USD 40", "forty dollars"),
        ("40 USD", "forty dollars"),
        ("40 CAD", "forty Canadian dollars"),
        ("40 dollars", "forty dollars"),
        ("40.50 dollars", "forty dollars and fifty cents"),
        # numbers
        ("1,247.99", "one thousand two hundred forty-seven point nine nine"),
        ("1,000,000", "one million"),
        ("3.14", "three point one four"),
        ("0.5", "zero point five"),
        ("-5", "minus five"),
        ("1247 items", "one thousand two hundred forty-seven items"),
        ("10-15 minutes", "ten to fifteen minutes"),
        ("10GB of data", "ten GB of data"),
        ("1.5GB", "one point five GB"),
        # percentages
        ("4%", "four percent"),
        ("1.5%", "one point five percent"),
        ("-2%", "minus two percent"),
        # ordinals
        ("1st", "first"),
        ("22nd", "twenty-second"),
        ("101st", "one hundred first"),
        # years
        ("in 2024", "in twenty twenty-four"),
        ("since 1993", "since nineteen ninety-three"),
        ("by 2005", "by two thousand five"),
        ("2020-2024", "twenty twenty to twenty twenty-four"),
        # dates
        ("2025-10-10", "October tenth, twenty twenty-five"),
        ("10/10/2025", "October tenth, twenty twenty-five"),
        ("12/25/2025", "December twenty-fifth, twenty twenty-five"),
        ("25/12/2025", "December twenty-fifth, twenty twenty-five"),
        ("December 5, 1993", "December fifth, nineteen ninety-three"),
        ("Nov 14", "November fourteenth"),
        ("Dec. 5", "December fifth"),
        ("on 5 May 2024.", "on May fifth, twenty twenty-four."),
        ("the 3rd of July", "the third of July"),
        ("in March 2024", "in March twenty twenty-four"),
        ("2025-02-30", "two zero two five, zero two, three zero"),
        # times
        ("7 AM", "seven a m"),
        ("7am", "seven a m"),
        ("8:30 pm", "eight thirty p m"),
        ("8:05 p.m.", "eight oh five p m."),
        ("14:05", "fourteen oh five"),
        ("14:00", "fourteen hundred"),
        ("9:00", "nine o'clock"),
        ("9:45", "nine forty-five"),
        # phone numbers
        ("206-555-0293", "two zero six, five five five, zero two nine three"),
        ("+44 20 7946 0123", "plus four four, two zero, seven nine four six, zero one two three"),
        ("0800 555 0123", "zero eight zero zero, five five five, zero one two three"),
        ("(617) 555-0834", "six one seven, five five five, zero eight three four"),
        ("1-800-555-0199", "one, eight zero zero, five five five, zero one nine nine"),
        ("555-0293", "five five five, zero two nine three"),
        # ids
        ("#W2378156", f"number {W2378156}"),
        ("76ad9cc60e", "seven six A D nine C C six zero E"),
        ("4711-0815", "four seven one one, zero eight one five"),
        ("ref 123456", "ref one two three four five six"),
        ("order 0815", "order zero eight one five"),
        ("#12", "number twelve"),
        ("MP3 files", "MP3 files"),
        # abbreviations
        ("Dr. Smith", "Doctor Smith"),
        ("Mr. Lee and Mrs. Lee", "Mister Lee and Missus Lee"),
        ("Ms. Park", "Miz Park"),
        ("12 Main St.", "twelve Main Street."),
        ("St. Louis", "Saint Louis"),
        ("e.g. Visa", "for example Visa"),
        ("i.e., now", "that is, now"),
        ("apples, pears, etc.", "apples, pears, et cetera."),
        ("apples etc. and more", "apples et cetera and more"),
        ("approx. 5", "approximately five"),
        ("Chelsea vs. Arsenal", "Chelsea versus Arsenal"),
        ("No. 5", "Number five"),
        ("room no. 12", "room number twelve"),
        ("Q & A", "Q and A"),
        ("24/7", "twenty-four seven"),
    ],
)
def test_english_readings(text: str, spoken: str) -> None:
    assert normalise_for_speech(text) == spoken


@pytest.mark.parametrize(
    "text, spoken",
    [
        (
            "Your order #W2378156 of $1,247.99 ships on 10/10/2025.",
            (
                f"Your order number {W2378156} of one thousand two hundred forty-seven dollars and ninety-nine cents "
                "ships on October tenth, twenty twenty-five."
            ),
        ),
        (
            "Call 0800 555 0123, 24/7.",
            "Call zero eight zero zero, five five five, zero one two three, twenty-four seven.",
        ),
        (
            "Your card ending 4821 was charged $49.50 on Nov 14. Dr. Patel can call you at 8:30 pm.",
            (
                "Your card ending four thousand eight hundred twenty-one was charged forty-nine dollars and fifty cents "
                "on November fourteenth. Doctor Patel can call you at eight thirty p m."
            ),
        ),
        (
            "Refunds take approx. 5-7 days & the rate is 4%. Questions? Call (617) 555-0834!",
            (
                "Refunds take approximately five to seven days and the rate is four percent. Questions? "
                "Call six one seven, five five five, zero eight three four!"
            ),
        ),
        (
            "Transfer ref. 76ad9cc60e: $40,000 on 2025-10-10 at 14:05.",
            (
                "Transfer ref. seven six A D nine C C six zero E: forty thousand dollars on October tenth, "
                "twenty twenty-five at fourteen oh five."
            ),
        ),
    ],
)
def test_support_sentences(text: str, spoken: str) -> None:
    assert normalise_for_speech(text) == spoken


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! How are you today? Fine; thanks: bye.",
        "Your balance is available in the app.\nAnything else?",
        "It's the customer's (primary) account - isn't it?",
    ],
)
def test_ordinary_words_and_punctuation_survive(text: str) -> None:
    assert normalise_for_speech(text) == text


def test_sentence_ends_survive_replacements() -> None:
    spoken = normalise_for_speech("We close at 5 p.m. Visit 12 Main St. We open Mon. at 9:00. Bring ID etc.")
    assert spoken == (
        "We close at five p m. Visit twelve Main Street. We open Mon. at nine o'clock. Bring ID et cetera."
    )
    assert spoken.count(".") == 5


@pytest.mark.parametrize(
    "text, spoken",
    [
        ("Thanks 👍🏽 see you ❤️", "Thanks see you"),
        ("Done ✅.", "Done."),
        ("bell\x07 here\r\nnext line", "bell here\nnext line"),
        ("tab\there", "tab here"),
        ("👍🎉", ""),
        ("  ...  ", ""),
        ("\x00\x1b", ""),
    ],
)
def test_unspeakable_characters_are_stripped(text: str, spoken: str) -> None:
    assert normalise_for_speech(text) == spoken


@pytest.mark.parametrize(
    "text, language, spoken",
    [
        ("Sie zahlen 40 Euro", "de", "Sie zahlen vierzig Euro"),
        ("Das kostet 40 €.", "de", "Das kostet vierzig Euro."),
        ("€1.247,99", "de", "eintausendzweihundertsiebenundvierzig Euro und neunundneunzig Cent"),
        ("1.247 Kunden", "de", "eintausendzweihundertsiebenundvierzig Kunden"),
        ("Zinsen 1,5%", "de", "Zinsen eins Komma fünf %"),
        ("-3 Grad", "de", "minus drei Grad"),
        ("Rufen Sie 0800 555 0123 an", "de", "Rufen Sie null acht null null, fünf fünf fünf, null eins zwei drei an"),
        ("Bestellung #W2378156", "de", "Bestellung W zwei drei sieben acht eins fünf sechs"),
        ("am 10.10.2025 um 14:05", "de", "am 10.10.2025 um 14:05"),  # numeric dates and times left to the voice
        ("Dr. Weber", "de", "Dr. Weber"),  # abbreviations are English-only
        ("Il paie 1.247,50 €", "fr", "Il paie mille deux cent quarante-sept euros et cinquante centimes"),
        ("$5", "en-US", "five dollars"),
        ("$5", "en_US", "five dollars"),
    ],
)
def test_other_languages(text: str, language: str, spoken: str) -> None:
    assert normalise_for_speech(text, language) == spoken


@pytest.mark.parametrize("language", ["xx", "klingon", ""])
def test_unsupported_language_names_the_choices(language: str) -> None:
    with pytest.raises(UnsupportedLanguage, match=r"num2words; use one of: .*\bde\b.*\ben\b"):
        normalise_for_speech("40", language)
    with pytest.raises(SpeechTextError):  # UnsupportedLanguage is a SpeechTextError
        ssml_to_speech_text("<speak>40</speak>", language)


# ------------------------------------------------------------------------------------------------------ SSML


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<speak>Hi</speak>", True),
        ("  \n<speak version='1.0'>Hi</speak>", True),
        ("<speak/>", True),
        ("<speaker>Hi</speaker>", False),
        ("Hello <speak>", False),
        ("Plain text", False),
    ],
)
def test_is_ssml(text: str, expected: bool) -> None:
    assert is_ssml(text) is expected


@pytest.mark.parametrize(
    "ssml, pieces",
    [
        (
            '<speak>Welcome to Acme Bank.<break time="300ms"/>Your balance is $1,247.99.</speak>',
            [
                SpeechPiece("Welcome to Acme Bank.", 300),
                SpeechPiece("Your balance is one thousand two hundred forty-seven dollars and ninety-nine cents.", 0),
            ],
        ),
        (
            '<speak>One<break time="1s"/>two<break time="1.5s"/>three</speak>',
            [SpeechPiece("One", 1000), SpeechPiece("two", 1500), SpeechPiece("three", 0)],
        ),
        (
            (
                '<speak>a<break strength="none"/>b<break strength="x-weak"/>c<break strength="weak"/>d'
                '<break strength="medium"/>e<break strength="strong"/>f<break strength="x-strong"/>g<break/>h</speak>'
            ),
            [
                SpeechPiece("a", 0),
                SpeechPiece("b", 100),
                SpeechPiece("c", 200),
                SpeechPiece("d", 400),
                SpeechPiece("e", 700),
                SpeechPiece("f", 1000),
                SpeechPiece("g", 400),
                SpeechPiece("h", 0),
            ],
        ),
        ('<speak><break time="500ms"/>Hello</speak>', [SpeechPiece("", 500), SpeechPiece("Hello", 0)]),
        (
            '<speak>Hi<break time="200ms"/><break time="300ms"/>there</speak>',
            [SpeechPiece("Hi", 500), SpeechPiece("there", 0)],
        ),
        ('<speak>Hi<break time="1s" strength="weak"/></speak>', [SpeechPiece("Hi", 1000)]),
        (
            (
                '<speak xmlns="http://www.w3.org/2001/10/synthesis" version="1.0" xml:lang="en-US">'
                'Press <say-as interpret-as="digits">4711</say-as> now.</speak>'
            ),
            [SpeechPiece("Press four seven one one now.", 0)],
        ),
        (
            (
                '<speak>Code <say-as interpret-as="characters">ab-12</say-as>, '
                'or <say-as interpret-as="spell-out">OK</say-as>.</speak>'
            ),
            [SpeechPiece("Code A B, one two, or O K.", 0)],
        ),
        (
            (
                '<speak><say-as interpret-as="date" format="mdy">10/12/2025</say-as>; '
                '<say-as interpret-as="date" format="dmy">10/12/2025</say-as>; '
                '<say-as interpret-as="date" format="ymd">2025-12-10</say-as>.</speak>'
            ),
            [
                SpeechPiece(
                    "October twelfth, twenty twenty-five; December tenth, twenty twenty-five; "
                    "December tenth, twenty twenty-five.",
                    0,
                )
            ],
        ),
        (
            (
                '<speak>You are <say-as interpret-as="ordinal">3</say-as> of '
                '<say-as interpret-as="cardinal">12345</say-as> callers.</speak>'
            ),
            [SpeechPiece("You are third of twelve thousand three hundred forty-five callers.", 0)],
        ),
        (
            '<speak>Call <say-as interpret-as="telephone">+1 206-555-0293</say-as>.</speak>',
            [SpeechPiece("Call plus one, two zero six, five five five, zero two nine three.", 0)],
        ),
        (
            '<speak>Order #W2378156 ships 10/10/2025 &amp; costs 4%.<break time="250ms"/>Thanks 👍</speak>',
            [
                SpeechPiece(
                    f"Order number {W2378156} ships October tenth, twenty twenty-five and costs four percent.", 250
                ),
                SpeechPiece("Thanks", 0),
            ],
        ),
        ("<speak>👍</speak>", []),
    ],
)
def test_ssml_pieces(ssml: str, pieces: list[SpeechPiece]) -> None:
    assert ssml_to_speech_text(ssml) == pieces


def test_ssml_in_another_language() -> None:
    pieces = ssml_to_speech_text(
        '<speak>Sie zahlen 40 Euro.<break time="200ms"/><say-as interpret-as="telephone">0800 555</say-as></speak>',
        "de",
    )
    assert pieces == [
        SpeechPiece("Sie zahlen vierzig Euro.", 200),
        SpeechPiece("null acht null null, fünf fünf fünf", 0),
    ]


@pytest.mark.parametrize(
    "ssml, message",
    [
        ("<speak>Hi", r"malformed SSML, no element found: line 1, column 9; close every tag"),
        ("<speak>Tom & Jerry</speak>", r"malformed SSML, not well-formed .*line 1, column 12.*'&amp;'"),
        ("<speak>\n<break>\n</speak>", r"malformed SSML, mismatched tag: line 3, column 2"),
        ("<speak>Hi<p>there</p></speak>", r"unsupported SSML tag <p>; supported tags: <speak>, <break>, <say-as>"),
        ("<voice>Hi</voice>", r"<speak> as its root element, not <voice>"),
        ("<speak>a<speak>b</speak></speak>", r"<speak> may only be the root element"),
        (
            '<speak>Hi<break foo="1"/></speak>',
            r"unsupported attribute 'foo' on SSML <break>; supported: strength, time",
        ),
        (
            '<speak rate="fast">Hi</speak>',
            r"unsupported attribute 'rate' on SSML <speak>; supported: version, xml:lang",
        ),
        ('<speak>Hi<break time="3"/></speak>', r'<break time="3"> is not a duration; write e\.g\. time="300ms"'),
        ('<speak>Hi<break time="30s"/></speak>', r'<break time="30s"> is longer than 10000 ms'),
        ('<speak>Hi<break strength="huge"/></speak>', r'<break strength="huge"> is unknown; use one of: none, x-weak'),
        ("<speak>Hi<break>now</break></speak>", r"<break> must be empty"),
        (
            '<speak><say-as interpret-as="currency">5</say-as></speak>',
            r'<say-as interpret-as="currency"> is unsupported; use one of: digits, characters, spell-out, date',
        ),
        ('<speak><say-as interpret-as="date" format="dmy">31/02/2025</say-as></speak>', r"is not a dmy date"),
        ('<speak><say-as interpret-as="date" format="myd">1/2/2025</say-as></speak>', r"use one of: mdy, dmy, ymd"),
        ('<speak><say-as interpret-as="date">10/2025</say-as></speak>', r"needs day, month and year"),
        ('<speak><say-as interpret-as="cardinal">abc</say-as></speak>', r"cardinal\"> needs a number, got 'abc'"),
        ('<speak><say-as interpret-as="ordinal">first</say-as></speak>', r"ordinal\"> needs a whole number"),
        (
            '<speak><say-as interpret-as="digits" format="mdy">12</say-as></speak>',
            r'applies only to interpret-as="date"',
        ),
        (
            '<speak><say-as interpret-as="digits">1<break/>2</say-as></speak>',
            r"<say-as> must contain only text, found <break>",
        ),
        ('<!DOCTYPE speak [<!ENTITY a "b">]><speak>&a;</speak>', r"must not contain <!DOCTYPE> or <!ENTITY>"),
    ],
)
def test_ssml_errors_name_the_problem(ssml: str, message: str) -> None:
    with pytest.raises(SpeechTextError, match=message):
        ssml_to_speech_text(ssml)


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("At 14:05:09 it failed.", "At fourteen oh five and nine seconds it failed."),
        ("Don't worry—we can help.", "Don't worry, we can help."),
        ("It was fine – really fine.", "It was fine, really fine."),
    ],
)
def test_timestamps_and_dashes_found_by_the_intelligibility_benchmark(written, spoken):
    assert normalise_for_speech(written) == spoken
