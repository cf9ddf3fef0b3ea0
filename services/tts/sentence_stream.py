"""Cuts text that arrives in pieces into the sentences (or clauses) to synthesise, as soon as each
is certainly complete.

A sentence is complete once more text follows it (the kit's splitter decides where sentences end,
so "Mr. Smith" or "$1,234.56" never end one). While a sentence is still open, a clause of at least
CLAUSE_MIN_WORDS words ending at a comma, semicolon or colon is released early, so a long first
sentence does not hold back the first audio. A finished sentence longer than LONG_SENTENCE_WORDS is
cut at its clauses the same way.
"""

from __future__ import annotations

import re

from services.kit.text import split_sentences

CLAUSE_MIN_WORDS = 6
LONG_SENTENCE_WORDS = 24
# A clause ends at , ; or : followed by a space (so "1,000" and "10:30" stay whole).
CLAUSE_END = re.compile(r"[,;:](?=\s)")


def _has_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def split_clauses(sentence: str, min_words: int = CLAUSE_MIN_WORDS) -> list[str]:
    """The sentence cut after each clause end that leaves at least `min_words` words on both sides."""
    pieces: list[str] = []
    start = 0
    for match in CLAUSE_END.finditer(sentence):
        head = sentence[start : match.end()]
        tail = sentence[match.end() :]
        if len(head.split()) >= min_words and len(tail.split()) >= min_words:
            pieces.append(head.strip())
            start = match.end()
    pieces.append(sentence[start:].strip())
    return [piece for piece in pieces if _has_words(piece)]


def speech_units(sentence: str) -> list[str]:
    """A complete sentence as the units to synthesise: itself, or its clauses when it is long."""
    if len(sentence.split()) > LONG_SENTENCE_WORDS:
        return split_clauses(sentence)
    return [sentence] if _has_words(sentence) else []


class SentenceStream:
    """Feed text pieces in order; get back the units ready to synthesise, in order."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        """Append `text`; return the units completed by it."""
        self._pending += text
        sentences = split_sentences(self._pending)
        if not sentences:
            return []
        ready: list[str] = []
        # Every sentence but the last is followed by more text, so it is complete.
        for sentence in sentences[:-1]:
            ready.extend(speech_units(sentence))
        open_sentence = sentences[-1]
        # An early clause of the open sentence, when a clause end has enough words on each side.
        clauses = split_clauses(open_sentence)
        for clause in clauses[:-1]:
            ready.append(clause)
        kept = clauses[-1] if clauses else open_sentence
        # What stays pending is the text from the kept part on (the splitter trims whitespace).
        position = self._pending.rfind(kept)
        self._pending = self._pending[position:] if position >= 0 else kept
        return ready

    def finish(self) -> list[str]:
        """The units left when no more text will come."""
        rest, self._pending = self._pending, ""
        units: list[str] = []
        for sentence in split_sentences(rest):
            units.extend(speech_units(sentence))
        return units
