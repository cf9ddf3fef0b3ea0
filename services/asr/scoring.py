"""Word error rate the way Whisper's evaluations compute it.

Both texts go through Whisper's English normaliser (case, punctuation, contractions, spelled-out
numbers and currency), from transformers, before jiwer counts the edits. Tests and benchmarks use
this one function so their figures are comparable.
"""

from __future__ import annotations

from functools import lru_cache

import jiwer


@lru_cache(maxsize=1)
def _normaliser():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def normalise_text(text: str) -> str:
    return _normaliser()(text)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of `hypothesis` against `reference` after Whisper-style normalisation."""
    ref, hyp = normalise_text(reference), normalise_text(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return jiwer.wer(ref, hyp)
