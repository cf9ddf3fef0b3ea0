"""Text utilities shared by the services that handle sentences (dialog, tts).

Sentence splitting uses `sentencex` (a maintained, abbreviation-aware segmenter), so "Mr. Smith"
or "$1,234.56" never split a sentence.
"""

from __future__ import annotations

from sentencex import segment


def split_sentences(text: str, language: str = "en") -> list[str]:
    """Split text into trimmed, non-empty sentences."""
    return [s.strip() for s in segment(language, text) if s.strip()]
