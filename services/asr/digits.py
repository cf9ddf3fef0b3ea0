"""Structured capture modes (digits, alphanumeric ids, yes/no): constrained decoding and normalised finals.

Pure functions, used by `Recognizer` (what to decode) and by the servicer on each final (what to
send). benchmarks/asr/digits_eval.py measures the choices made here on the real 8 kHz spoken digits of
../shared/data/digits8k with tiny.en (results/asr_digits.json; bench-asr measures the streaming service):

- A lone digit (speech short enough for one) is not decoded but scored: the decoder rates each of the
  ten digits, as word and numeral, after the digits prompt, on one encoder pass, and the most probable
  wins (`Recognizer._best_single_digit`). Free decoding answers a short narrowband word with a common
  word ("Bye." for "five") or nothing; scoring always picks the nearest digit.
- Longer answers are decoded with every token that cannot be part of a spoken number suppressed, so
  the decoder can only choose among digits, number words and punctuation. Punctuation stays allowed:
  Whisper ends a number with "." before end-of-text, and without it keeps adding digits.
- A final in digits mode is the string of digits ("4711"): number words are turned into digits with
  Whisper's own English number normaliser (transformers), which also reads "double four" and
  "nineteen eighty four".
- Alphanumeric ids keep letters and digits (single letters and short capital groups, no words), and
  the final is upper-case letters and digits without spaces ("W4711B9").
- Yes/no finals are mapped to "yes", "no" or "" (unclear) with a small vocabulary.

English number words only: with another language hint, constrained decoding still allows numerals.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faster_whisper.tokenizer import Tokenizer

DIGITS = "digits"
ALPHANUMERIC = "alphanumeric"
YES_NO = "yes_no"
# Modes decoded with a constrained vocabulary (yes/no is decoded freely and mapped afterwards).
CONSTRAINED_MODES = frozenset({DIGITS, ALPHANUMERIC})

DIGIT_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}
# How each digit may be written in a transcript, for scoring a lone digit against the audio.
# Capitalised too: after the prompt's full stop Whisper expects "Five", and scoring only "five" lost 3 points.
SPOKEN_DIGITS = {digit: (f" {word}", f" {word.capitalize()}", f" {digit}") for word, digit in DIGIT_WORDS.items()}
SPOKEN_DIGITS["0"] += (" oh", " Oh")
# Words a caller uses inside a spoken number ("double four" is 44); the normaliser expands them.
REPEAT_WORDS = {"double": 2, "triple": 3}
# Allowed in constrained answers (see above); finals drop it.
ANSWER_PUNCTUATION = frozenset({".", ",", "-", "?", "!"})
# Letter groups an id tokenizes into ("AB" of "AB12"); longer capital runs are words, not ids.
MAX_LETTER_GROUP = 3
# Common mishearings of a lone digit when decoding is not constrained (interims, or a free decode).
DIGIT_HOMOPHONES = {"oh": "zero", "o": "zero", "won": "one", "to": "two", "too": "two", "for": "four",
                    "fore": "four", "ate": "eight"}

YES_WORDS = frozenset({
    "yes", "yeah", "yep", "yup", "ya", "yea", "aye", "sure", "correct", "right", "affirmative",
    "absolutely", "certainly", "definitely", "indeed", "ok", "okay", "exactly", "true",
})
NO_WORDS = frozenset({"no", "nope", "nah", "negative", "incorrect", "wrong", "never", "false"})
# A negator flips the yes word that follows it ("not correct", "that isn't right").
NEGATORS = frozenset({"not", "isn't", "isnt", "don't", "dont", "doesn't", "doesnt", "wasn't", "wasnt"})


def _allowed_in(mode: str, token_text: str) -> bool:
    """Whether a token (its decoded text) can be part of an answer in `mode`."""
    text = token_text.strip()
    if not text or not text.isascii():
        return False
    if text.isdigit() or text in ANSWER_PUNCTUATION:
        return True
    word = text.lower()
    if mode == DIGITS:
        return word in DIGIT_WORDS or word in REPEAT_WORDS
    if mode == ALPHANUMERIC:
        return (word in DIGIT_WORDS or word in REPEAT_WORDS
                or (text.isalpha() and (len(text) == 1 or (text.isupper() and len(text) <= MAX_LETTER_GROUP))))
    raise ValueError(f"mode {mode!r} has no constrained vocabulary: use {DIGITS!r} or {ALPHANUMERIC!r}")


def suppressed_tokens(tokenizer: Tokenizer, mode: str) -> tuple[int, ...]:
    """Token ids faster-whisper must suppress so that only answers of `mode` can be decoded.

    `tokenizer` is faster-whisper's Tokenizer for the model. Every text token outside the mode's
    vocabulary is suppressed, and every special token below the timestamps except end-of-text (a model
    may otherwise "answer" with <|notimestamps|> and give an empty text). Slow (it decodes the whole
    vocabulary): callers keep the result.
    """
    return tuple(
        token for token in range(tokenizer.timestamp_begin)
        if token != tokenizer.eot and (token > tokenizer.eot or not _allowed_in(mode, tokenizer.decode([token])))
    )


@lru_cache(maxsize=1)
def _number_normaliser():
    from transformers.models.whisper.english_normalizer import EnglishNumberNormalizer

    return EnglishNumberNormalizer()


def _words(text: str) -> list[str]:
    """Lower-case words without punctuation; digits split from letters ("4711b" is "4711 b")."""
    text = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", " ", text.lower())
    return re.sub(r"[^a-z0-9']+", " ", text).split()


def digits_text(text: str) -> str:
    """A spoken number as the string of its digits: "four seven, one 1" is "4711"; "" when none.

    Number words go through Whisper's English number normaliser ("double four" is "44", "nineteen
    eighty four" is "1984", "oh" is "0"), then everything but the digits is dropped.
    """
    words = [DIGIT_HOMOPHONES.get(word, word) for word in _words(text)]
    if not words:
        return ""
    normaliser = _number_normaliser()
    # process_words without the normaliser's postprocess, which writes a lone "1" back as "one".
    spoken = normaliser.process_words(normaliser.preprocess(" ".join(words)).split())
    return "".join(ch for word in spoken if word for ch in word if ch.isdigit())


def alphanumeric_text(text: str) -> str:
    """An id read aloud as upper-case letters and digits without spaces: "w 47 one b" is "W471B"."""
    out: list[str] = []
    repeat = 1
    for word in _words(text):
        if word in REPEAT_WORDS:
            repeat = REPEAT_WORDS[word]
            continue
        piece = DIGIT_WORDS.get(word, re.sub(r"[^a-z0-9]", "", word).upper())
        # "double" repeats the character that follows it, as in "double b" or "double seven".
        out.append(piece[:1] * repeat + piece[1:] if piece else "")
        repeat = 1
    return "".join(out)


def yes_no_text(text: str) -> str:
    """A yes/no answer as "yes" or "no"; "" when it says neither or both ("yes, no" is unclear)."""
    said: set[str] = set()
    negated = False
    for word in _words(text):
        if word in NEGATORS:
            negated = True
            continue
        if word in YES_WORDS:
            said.add("no" if negated else "yes")
        elif word in NO_WORDS:
            said.add("no")
        negated = False
    return said.pop() if len(said) == 1 else ""


def format_final(text: str, mode: str) -> str:
    """The final text a dialog gets in `mode` (the RecognitionMode name, lower case, without prefix).

    digits: only digits; alphanumeric: upper-case letters and digits; yes_no: "yes", "no" or "";
    any other mode: the text unchanged.
    """
    if mode == DIGITS:
        return digits_text(text)
    if mode == ALPHANUMERIC:
        return alphanumeric_text(text)
    if mode == YES_NO:
        return yes_no_text(text)
    return text
