"""What the knowledge service does with a query before and after it searches.

- `rewrite_query`: a caller's utterance carries greetings, pleasantries and request frames ("Hi,
  could you help me ...") that match every document equally; they are dropped before searching so
  the words that name the problem weigh more.
- `QueryLanguage`: the index is English (the full-text configuration and the embedding model); a
  query confidently in another language is refused with a clear error instead of returning
  unrelated passages. py3langid (a maintained langid.py) does the identification.
- `best_snippet`: the sentences of a passage that share most words with the query, with their
  offsets, so the dialog can quote one sentence and cite exactly where it stands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.knowledge.chunking import sentence_spans

# Spoken openers and request frames; each removed wherever it stands in the utterance.
CONVERSATIONAL_FILLER = re.compile(
    r"""
    \b(?:hi|hello|hey|good\s+(?:morning|afternoon|evening))(?:\s+there)?\b[!,.]?
    | \b(?:thanks|thank\s+you)(?:\s+(?:so|very)\s+much)?\b[!,.]?
    | \bplease\b
    | \b(?:can|could|would|will)\s+you\s+(?:please\s+)?(?:help\s+me(?:\s+(?:with|figure\s+out|check))?|tell\s+me|let\s+me\s+know|check)\b
    | \bwhat'?s\s+going\s+on\b\??
    | \bi\s+(?:just\s+)?(?:need|want|wanted|would\s+like|'d\s+like)\s+(?:some\s+)?help(?:\s+with)?\b
    | \bi\s+have\s+a\s+question\s+(?:about|on)\b
    """,
    re.IGNORECASE | re.VERBOSE,
)
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Words that say nothing about a passage's topic when picking a snippet.
SNIPPET_STOP_WORDS = frozenset(
    "a an and are as at be by can could do does for from have how i i'm i've i'd if in is it its me my "
    "of on or our so that the their there this to was we what when where which who why will with would "
    "you your".split()
)
# Languages the identifier chooses among: those the appliance's speech recognition serves. A small
# set keeps short English queries from being taken for a language nobody calls in.
CANDIDATE_LANGUAGES = ("en", "de", "es", "fr", "it", "pt", "nl")
# Identification is only trusted for queries of at least this many words and this probability.
MIN_WORDS_FOR_LANGUAGE = 3
MIN_LANGUAGE_PROBABILITY = 0.85
LANGUAGE_NAMES = {
    "en": "English", "de": "German", "es": "Spanish", "fr": "French", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch",
}


def rewrite_query(query: str) -> str:
    """`query` without conversational filler; the query itself when nothing else would remain."""
    rewritten = CONVERSATIONAL_FILLER.sub(" ", query)
    rewritten = re.sub(r"\s+([,.!?])", r"\1", re.sub(r"\s+", " ", rewritten)).strip(" ,.!?")
    return rewritten if WORD.search(rewritten.lower()) else query


class QueryLanguage:
    """Identifies a query's language among CANDIDATE_LANGUAGES (py3langid, normalised probabilities)."""

    def __init__(self) -> None:
        from py3langid import langid

        self._identifier = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
        self._identifier.set_languages(list(CANDIDATE_LANGUAGES))

    def foreign_language(self, query: str, expected: str = "en") -> tuple[str, float] | None:
        """(language, probability) when `query` is confidently not in `expected`; None otherwise,
        including for queries too short to tell."""
        if len(WORD.findall(query.lower())) < MIN_WORDS_FOR_LANGUAGE:
            return None
        language, probability = self._identifier.classify(query)
        if language != expected and probability >= MIN_LANGUAGE_PROBABILITY:
            return language, float(probability)
        return None


@dataclass(frozen=True)
class Snippet:
    """A quotable part of a passage and where it starts and ends in the document's content."""

    text: str
    start_char: int
    end_char: int


def _topic_words(text: str) -> set[str]:
    return {word for word in WORD.findall(text.lower()) if word not in SNIPPET_STOP_WORDS}


def best_snippet(query: str, text: str, start_char: int, max_chars: int = 300) -> Snippet:
    """The sentence of `text` (a passage starting at `start_char` in its document) sharing the most
    topic words with `query`, extended by the following sentences while it stays within `max_chars`."""
    sentences = sentence_spans(text, 0, len(text))
    if not sentences:
        return Snippet(text[:max_chars], start_char, start_char + min(len(text), max_chars))
    wanted = _topic_words(query)
    overlaps = [len(wanted & _topic_words(text[begin:end])) for begin, end in sentences]
    best = max(range(len(sentences)), key=lambda index: (overlaps[index], -index))
    begin, end = sentences[best]
    for following_begin, following_end in sentences[best + 1 :]:
        if following_end - begin > max_chars:
            break
        end = following_end
    end = min(end, begin + max_chars)
    return Snippet(text[begin:end], start_char + begin, start_char + end)
