"""Word error rate the way Whisper's evaluations compute it.

Both texts go through Whisper's English normaliser (case, punctuation, contractions, spelled-out
numbers and currency), from transformers, before jiwer counts the edits; for other languages through
Whisper's basic normaliser (case, punctuation, symbols; accents kept), as Whisper's multilingual
evaluations do. Tests and benchmarks use this one function so their figures are comparable.
"""

from __future__ import annotations

from functools import lru_cache

import jiwer


@lru_cache(maxsize=2)
def _normaliser(english: bool):
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    return EnglishTextNormalizer({}) if english else BasicTextNormalizer()


def normalise_text(text: str, language: str = "en") -> str:
    """`text` as Whisper's evaluations compare it; `language` is a Whisper code ("en", "de", ...)."""
    return _normaliser(language.split("-", 1)[0].lower() in ("en", ""))(text)


def word_error_rate(reference: str, hypothesis: str, language: str = "en") -> float:
    """WER of `hypothesis` against `reference` after Whisper-style normalisation for `language`."""
    ref, hyp = normalise_text(reference, language), normalise_text(hypothesis, language)
    if not ref:
        return 0.0 if not hyp else 1.0
    return jiwer.wer(ref, hyp)
