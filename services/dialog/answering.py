"""The dialog's turn logic, independent of gRPC serving: what the bot says for one caller turn.

A turn is: retrieval from the knowledge service, a compact prompt, the LLM's answer streamed and split
into sentences, a groundedness guard on every generated sentence, and an extractive fallback (the top
passage's best sentences) whenever the LLM fails, is late or says anything the passages do not
support. Correctness never depends on the LLM: on the `cpu` profile (Gemma 3 270M base) the extractive
answer is the normal path. When nothing can be answered the caller is offered a colleague and the
turn ends with a transfer action carrying a short briefing.

Events leave in this order: one RouteDecision, then the Say events, then at most one Action; the last
event of the turn has `end_of_turn` set. In the rare case that a generated answer stops after a spoken
sentence (the next sentence was rejected, or the LLM failed mid-answer), the turn ends with an event
that carries only `end_of_turn`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

import grpc

from quietline.v1 import common_pb2, dialog_pb2, knowledge_pb2, knowledge_pb2_grpc
from services.kit.config import ConfigError, DialogSettings, QuietLineSettings
from services.kit.metrics import ERRORS
from services.kit.text import split_sentences
from services.llm.client import LlmClient, LlmFailure
from services.llm.prompt_layout import StablePrefix, assemble_messages

log = logging.getLogger("quietline.dialog")

# Stock phrases (cached_prompt=True: the TTS may serve them from its prompt cache).
NO_SPEECH_PROMPT = "Sorry, I did not catch that. Could you say it again?"
NO_INFORMATION_PROMPT = (
    "Sorry, I do not have that information. Let me put you through to a colleague who can help."
)
CANNOT_LOOK_UP_PROMPT = (
    "Sorry, I cannot look that up right now. Let me put you through to a colleague who can help."
)

# Time kept back from the RPC deadline for sending the last events.
SEND_MARGIN_S = 0.05
# Below this much time an LLM answer cannot arrive; the extractive answer is spoken at once.
MIN_LLM_BUDGET_S = 0.25
# Extractive candidates shorter than this are headings or fragments, not answers.
MIN_EXTRACT_WORDS = 4

# The front of the prompt never changes, so the server's prefix cache reuses it across turns
# (services/llm/prompt_layout.py); the client moves it into the first user turn, since Gemma's and
# Mistral's chat formats have no system role.
ANSWER_PREFIX = StablePrefix(
    instructions=(
        "You are a bank's phone assistant. Answer the caller's question in one or two short sentences, "
        "using only the facts in the numbered passages. If the passages do not answer it, say that you "
        "do not know."
    )
)
# Generation stops at a paragraph break or when the model starts a new prompt section.
PROMPT_STOP_SEQUENCES = ["\n\n", "Question:", "Passages:", "<end_of_turn>"]

# Hand-kept rather than a library list: generic lists (scikit-learn's, for one) drop "interest",
# "amount", "bill", "call" and "account", which are content words on a bank's line.
STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing done down during each either else etc even
    ever every few for from further get gets getting got had has have having he her here hers herself
    him himself his how however i if in into is it its itself just let lets like may me might mine
    more most much must my myself need needs neither no nor not now of off often on once one only or
    other others our ours ourselves out over own please rather really same shall she should since so
    some such than thank thanks that the their theirs them themselves then there these they this
    those though through thus to too under until up upon us very want wants was we well were what
    whatever when whenever where whether which while who whom whose why will with within without
    would yes yet you your yours yourself yourselves hello hi hey okay ok oh um uh sure certainly
    im ive dont doesnt didnt cant couldnt wont wouldnt isnt arent wasnt youre
    """.split()
)

# (suffix, replacement) pairs stripped so "cards"/"card" and "blocked"/"blocking"/"block" compare equal.
_SUFFIX_RULES = (("ies", "y"), ("ied", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("ly", ""), ("s", ""))
_MIN_STEM = 3
_WORD = re.compile(r"[a-z0-9]+")

# Markdown that must never be spoken or scored: headings, list markers, emphasis, code, links, tables.
_HEADING_LINE = re.compile(r"^\s{0,3}#{1,6}\s")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,3}[.)])\s+")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`+|~~)")
_CITATION_MARK = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")
# A line opening with a passage number ("[2] Title") is the model copying the prompt's layout.
_PASSAGE_NUMBER = re.compile(r"(?:^|\n)\s*\[\d+\]")
# Numbers as stated ("0800 555 0123", "3", "39.9", "25,000", "8:00").
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
# A generated sentence that ends without these was cut off by max_tokens.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")

# What a generated sentence must not contain: chat-template or prompt-template tokens ...
_TEMPLATE_TOKENS = re.compile(
    r"<\s*/?\s*(?:start_of_turn|end_of_turn|bos|eos|s|unk|pad)\s*>|<\|[^|>]*\|>|\[/?INST\]|<<\s*/?SYS\s*>>"
    r"|\{\{|\}\}|\{%|%\}",
    re.IGNORECASE,
)
# ... or the prompt's own words (the model repeating its instructions or section labels).
_PROMPT_ECHO = re.compile(
    r"\b(?:passages?|question|answer|caller)\s*:|\bnumbered passages?\b|\bphone assistant\b"
    r"|\bone or two short sentences\b|\busing only the facts\b",
    re.IGNORECASE,
)


def _stem(word: str) -> str:
    for suffix, replacement in _SUFFIX_RULES:
        if word.endswith(suffix) and len(word) - len(suffix) >= _MIN_STEM:
            # "access", "status", "basis" keep their final s.
            if suffix == "s" and word[-2] in "sui":
                break
            word = word[: -len(suffix)] + replacement
            break
    if len(word) > _MIN_STEM and word.endswith("e"):
        word = word[:-1]
    return word


def content_terms(text: str) -> set[str]:
    """The content words of `text`: lowercased, stopwords and one-letter tokens removed, suffixes stripped."""
    # Apostrophes dropped: "card's" -> "cards" -> "card", "don't" -> "dont".
    words = _WORD.findall(text.lower().replace("\u2019", "").replace("'", ""))
    return {_stem(word) for word in words if word not in STOPWORDS and (len(word) > 1 or word.isdigit())}


def strip_markup(text: str) -> list[str]:
    """The speakable lines of a Markdown passage: headings and table rules dropped, markers removed."""
    lines = []
    for raw in text.splitlines():
        if not raw.strip() or _HEADING_LINE.match(raw) or _TABLE_RULE.match(raw):
            continue
        line = _LIST_MARKER.sub("", raw)
        line = _LINK.sub(r"\1", line)
        line = _EMPHASIS.sub("", line)
        if "|" in line:
            line = ", ".join(cell.strip() for cell in line.strip().strip("|").split("|") if cell.strip())
        line = " ".join(line.split())
        if line:
            lines.append(line)
    return lines


def passage_sentences(text: str, language: str = "en") -> list[str]:
    """The sentences of a passage, markup removed; each list item or line is split on its own."""
    return [sentence for line in strip_markup(text) for sentence in split_sentences(line, language)]


def clean_generated(sentence: str) -> str:
    """A generated sentence made speakable: citation marks like [1] and Markdown markers removed."""
    text = _CITATION_MARK.sub("", sentence)
    text = _LIST_MARKER.sub("", text.lstrip("# "))
    text = _EMPHASIS.sub("", _LINK.sub(r"\1", text))
    text = " ".join(text.split())
    return re.sub(r"\s+([.,;:!?])", r"\1", text)


def citation_for(passage: knowledge_pb2.Passage) -> common_pb2.Citation:
    """The citation of a passage, as spoken answers carry it."""
    return common_pb2.Citation(
        document_id=passage.document_id, title=passage.title, section=passage.section, score=passage.score
    )


def _passage_text(passage: knowledge_pb2.Passage) -> str:
    return " ".join((passage.title, passage.section, passage.text))


def _passage_terms(passage: knowledge_pb2.Passage) -> set[str]:
    return content_terms(_passage_text(passage))


@dataclass(frozen=True)
class GroundingVerdict:
    """Whether a generated sentence may be spoken, and which passages it rests on."""

    grounded: bool
    # Share of the sentence's content words found in the passage it rests on (0..1).
    overlap: float
    # Why it was rejected ("" when grounded): a short code, never the sentence itself.
    reason: str
    # Indexes of the passages the sentence overlaps most (what it cites), best-ranked first.
    passage_indexes: tuple[int, ...]


def _passage_heading(passage: knowledge_pb2.Passage) -> str:
    # The knowledge service's section path usually starts with the document's title already.
    if passage.section.startswith(passage.title):
        return passage.section
    return passage.title + (f" > {passage.section}" if passage.section else "")


def check_grounding(
    sentence: str, passages: Sequence[knowledge_pb2.Passage], question: str, min_overlap: float,
    answer_document: str = "",
) -> GroundingVerdict:
    """Decide whether a generated sentence (as generated, before `clean_generated`) may be spoken.

    It must not be a question back, echo the prompt (its instructions, labels or passage headers) or
    the caller's question, or contain template tokens. It must rest on one passage, the one it cites:
    at least `min_overlap` of its content words occur in that passage, and so does every number it
    states (a wrong number is the costliest mistake on a bank's line). With `answer_document`, that
    passage must belong to this document (the one retrieval and extractive selection found most
    relevant), so a sentence stitched from a neighbouring topic is not spoken.
    """
    if _TEMPLATE_TOKENS.search(sentence):
        return GroundingVerdict(False, 0.0, "template tokens", ())
    if sentence.rstrip().endswith("?"):
        return GroundingVerdict(False, 0.0, "question back", ())
    text = clean_generated(sentence)
    if _PROMPT_ECHO.search(sentence) or _PASSAGE_NUMBER.search(sentence) or any(
        text.lower().startswith(_passage_heading(passage).lower()) for passage in passages
    ):
        return GroundingVerdict(False, 0.0, "prompt echo", ())
    terms = content_terms(text)
    if not terms:
        return GroundingVerdict(False, 0.0, "no content words", ())
    if terms <= content_terms(question):
        return GroundingVerdict(False, 0.0, "question echo", ())
    shares = [len(terms & _passage_terms(passage)) / len(terms) for passage in passages]
    overlap = max(shares, default=0.0)
    indexes = tuple(i for i, share in enumerate(shares) if share == overlap and share > 0)
    if overlap < min_overlap:
        return GroundingVerdict(False, overlap, "low overlap", indexes)
    if answer_document and all(passages[i].document_id != answer_document for i in indexes):
        return GroundingVerdict(False, overlap, "off topic", indexes)
    stated = set(_NUMBER.findall(text))
    if stated and not any(stated <= set(_NUMBER.findall(_passage_text(passages[i]))) for i in indexes):
        return GroundingVerdict(False, overlap, "unsupported number", indexes)
    return GroundingVerdict(True, overlap, "", indexes)


@dataclass(frozen=True)
class ExtractiveAnswer:
    """Sentences taken verbatim (markup removed) from one passage, in document order."""

    sentences: list[str]
    passage: knowledge_pb2.Passage


def extractive_answer(
    question: str, passages: Sequence[knowledge_pb2.Passage], max_sentences: int, language: str = "en"
) -> ExtractiveAnswer | None:
    """The 1-2 sentences of the top passage that share the most content words with the question.

    Shared words are weighted by rarity across the retrieved passages' sentences, so a word found
    everywhere ("card" in a card passage) counts less than the one that singles out the answer
    ("replacement"). A second sentence is added only when it scores at least half as well as the best.
    Passages are tried in rank order; None when no sentence of any passage shares a content word with
    the question (the question is not in the knowledge base).
    """
    wanted = content_terms(question)
    count = max(1, min(max_sentences, 2))
    candidates_by_passage = [
        [
            (position, sentence, content_terms(sentence) & wanted)
            for position, sentence in enumerate(passage_sentences(passage.text, language))
            # Fragments and lead-ins to a list ("Follow these steps:") make no sense spoken alone.
            if len(sentence.split()) >= MIN_EXTRACT_WORDS and not sentence.endswith(":")
        ]
        for passage in passages
    ]
    sentence_count = sum(len(candidates) for candidates in candidates_by_passage)
    document_frequency = Counter(term for candidates in candidates_by_passage for *_, shared in candidates
                                 for term in shared)
    weight = {term: math.log(1 + sentence_count / frequency) for term, frequency in document_frequency.items()}
    for passage, candidates in zip(passages, candidates_by_passage):
        scored = [(sum(weight[term] for term in shared), position, sentence)
                  for position, sentence, shared in candidates if shared]
        if not scored:
            continue
        # Best first; among equals the shorter, then the earlier (documents lead with the gist).
        scored.sort(key=lambda item: (-item[0], len(item[2]), item[1]))
        best = scored[0][0]
        chosen = [item for item in scored[:count] if item[0] >= best / 2]
        return ExtractiveAnswer([sentence for _, _, sentence in sorted(chosen, key=lambda item: item[1])], passage)
    return None


def build_prompt(question: str, passages: Sequence[knowledge_pb2.Passage], passage_words: int = 120) -> list[dict]:
    """The chat messages for one answer: fixed instructions first, then numbered passages, then the question.

    Each passage is cut to `passage_words` words: prefill time grows with the prompt, and on CPU it is
    most of the time to the first token.
    """
    blocks = []
    for passage in passages:
        heading = _passage_heading(passage)
        words = " ".join(strip_markup(passage.text)).split()[:passage_words]
        blocks.append(f"{heading}\n{' '.join(words)}")
    return assemble_messages(ANSWER_PREFIX, question, blocks)


def route_event(route: str, reason: str) -> dialog_pb2.TurnEvent:
    return dialog_pb2.TurnEvent(route=dialog_pb2.RouteDecision(route=route, reason=reason))


def say_event(text: str, citations: Iterable[common_pb2.Citation] = (), *, cached: bool = False,
         end_of_turn: bool = False) -> dialog_pb2.TurnEvent:
    return dialog_pb2.TurnEvent(
        say=dialog_pb2.Say(text=text, citations=list(citations), cached_prompt=cached), end_of_turn=end_of_turn
    )


def _language(request: dialog_pb2.TurnRequest) -> str:
    # BCP-47 "en-GB" -> "en": the sentence splitter works per language.
    return (request.context.language or "en").split("-")[0].lower() or "en"


class _TurnClock:
    """The turn's remaining time: the RPC deadline (if any) less a margin for sending the last events."""

    def __init__(self, budget_s: float | None) -> None:
        self.started = time.perf_counter()
        self.deadline = None if budget_s is None else self.started + budget_s - SEND_MARGIN_S

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self, cap: float) -> float:
        if self.deadline is None:
            return cap
        return max(0.0, min(cap, self.deadline - time.perf_counter()))


@dataclass
class _TurnRecord:
    """What the turn log line carries: ids, route, reason code, timings. No caller text."""

    route: str = ""
    reason: str = ""
    search_s: float | None = None
    llm_s: float | None = None
    first_say_s: float | None = None
    sentences: int = 0


# Words that make a turn a comparison or a several-part request, which the small model handles worst.
COMPLEX_CUES = re.compile(r"\b(?:compare|comparison|difference between|differences|versus|vs|which (?:one )?is better|"
                          r"pros and cons|as well as|and also|both)\b", re.IGNORECASE)


@dataclass(frozen=True)
class TierChoice:
    """The LLM tier a turn is answered with, and why (recorded in the turn's route reason)."""

    tier: str
    why: str


def choose_tier(question: str, budget_s: float, default_tier: str, dialog: DialogSettings) -> TierChoice:
    """The default (small, fast) tier, unless the turn is complex and the budget left allows the complex tier."""
    if not dialog.complex_tier:
        return TierChoice(default_tier, "one tier")
    words = len(question.split())
    complex_turn = (words >= dialog.complex_turn_words or question.count("?") >= 2
                    or bool(COMPLEX_CUES.search(question)))
    if not complex_turn:
        return TierChoice(default_tier, "simple turn")
    if budget_s < dialog.complex_tier_min_budget_s:
        return TierChoice(default_tier, "complex turn, no time for the complex tier")
    return TierChoice(dialog.complex_tier, "complex turn")


class TurnAnswerer:
    """Answers caller turns with the knowledge service and the LLM; one instance serves all calls."""

    def __init__(self, settings: QuietLineSettings, knowledge: knowledge_pb2_grpc.KnowledgeStub,
                 llm: LlmClient, tiers: dict[str, LlmClient] | None = None) -> None:
        """`llm` serves the default tier; `tiers` the further ones by name (dialog.complex_tier among them)."""
        self.settings = settings
        self.knowledge = knowledge
        self.llm = llm
        self.tiers = {settings.llm.tier: llm, **(tiers or {})}
        complex_tier = settings.dialog.complex_tier
        if complex_tier and complex_tier not in self.tiers:
            raise ConfigError(f"dialog.complex_tier '{complex_tier}' is not an LLM tier: use one of "
                              f"{', '.join(self.tiers)}, or add it under llm.tiers")

    async def answer(self, request: dialog_pb2.TurnRequest, budget_s: float | None = None,
                     collections: list[str] | None = None) -> AsyncIterator[dialog_pb2.TurnEvent]:
        """The events of one turn; `budget_s` is the time left before the caller's deadline (None: none),
        `collections` the knowledge collections this call may be answered from (None: dialog.knowledge_collections).

        Closing the iterator (or cancelling the task consuming it) stops the turn and closes the LLM stream.
        """
        clock = _TurnClock(budget_s)
        record = _TurnRecord()
        completed = False
        try:
            async for event in self._events(request, clock, record, collections):
                if event.HasField("say"):
                    record.sentences += 1
                    if record.first_say_s is None:
                        record.first_say_s = clock.elapsed()
                yield event
            completed = True
        finally:
            turn_s = clock.elapsed()
            log.info(
                "turn" if completed else "turn stopped",
                extra={
                    "call_id": request.call.call_id, "turn": request.call.turn, "route": record.route,
                    "reason": record.reason, "sentences": record.sentences,
                    "search_ms": _ms(record.search_s), "llm_ms": _ms(record.llm_s),
                    "first_say_ms": _ms(record.first_say_s), "turn_ms": _ms(turn_s),
                },
            )

    async def _events(self, request: dialog_pb2.TurnRequest, clock: _TurnClock, record: _TurnRecord,
                      collections: list[str] | None) -> AsyncIterator[dialog_pb2.TurnEvent]:
        question = " ".join(request.transcript.split())
        dialog = self.settings.dialog
        if not question:
            record.route, record.reason = "control", "no speech"
            yield route_event(record.route, record.reason)
            yield say_event(NO_SPEECH_PROMPT, cached=True, end_of_turn=True)
            return

        started = time.perf_counter()
        passages, failure = await self._search(request, question, clock, collections)
        record.search_s = time.perf_counter() - started
        if failure:
            record.route, record.reason = "fallback", failure
            for event in self._handover(request, question, CANNOT_LOOK_UP_PROMPT, failure):
                yield event
            return
        language = _language(request)
        extract = extractive_answer(question, passages, dialog.max_answer_sentences, language)
        if extract is None:
            # Nothing retrieved, or nothing that shares a word with the question: do not guess.
            record.route, record.reason = "fallback", "no matching passage" if passages else "no passages"
            for event in self._handover(request, question, NO_INFORMATION_PROMPT, record.reason):
                yield event
            return

        llm_budget = clock.remaining(dialog.llm_deadline_s)
        if llm_budget < MIN_LLM_BUDGET_S:
            reason = "no time for llm"
        else:
            started = time.perf_counter()
            spoken = 0
            choice = choose_tier(question, llm_budget, self.settings.llm.tier, dialog)
            reason = "llm gave no answer"
            sentences = self._generated_sentences(question, passages, llm_budget, language, choice.tier)
            try:
                async for sentence, is_last in sentences:
                    verdict = check_grounding(sentence, passages, question, dialog.grounding_min_overlap,
                                              answer_document=extract.passage.document_id)
                    if not verdict.grounded:
                        reason = f"llm output not grounded ({verdict.reason})"
                        break
                    if spoken == 0:
                        record.route, record.reason = "llm", f"grounded answer (tier {choice.tier}: {choice.why})"
                        yield route_event(record.route, record.reason)
                    spoken += 1
                    final = is_last or spoken >= dialog.max_answer_sentences
                    citations = [citation_for(passages[i]) for i in verdict.passage_indexes]
                    yield say_event(clean_generated(sentence), citations, end_of_turn=final)
                    if final:
                        return
            except LlmFailure as err:
                # The client has counted it in ERRORS already.
                reason = f"llm {err.kind.replace('_', ' ')}"
            except Exception as err:  # noqa: BLE001 - a client bug must not cost the caller the answer
                ERRORS.labels("dialog", "llm_error").inc()
                reason = f"llm error ({type(err).__name__})"
            finally:
                await sentences.aclose()
                record.llm_s = time.perf_counter() - started
            if spoken:
                # The answer stopped after a spoken sentence: close the turn without saying more.
                record.reason = f"grounded answer, then {reason}"
                yield dialog_pb2.TurnEvent(end_of_turn=True)
                return

        record.route, record.reason = "faq", reason
        yield route_event(record.route, record.reason)
        citation = citation_for(extract.passage)
        for index, sentence in enumerate(extract.sentences):
            yield say_event(sentence, [citation], end_of_turn=index == len(extract.sentences) - 1)

    async def _search(self, request: dialog_pb2.TurnRequest, question: str, clock: _TurnClock,
                      collections: list[str] | None = None
                      ) -> tuple[list[knowledge_pb2.Passage], str]:
        """The passages for the question, or ([], a reason code) when the search failed."""
        timeout = clock.remaining(self.settings.dialog.search_timeout_s)
        if timeout <= 0:
            return [], "no time for knowledge search"
        search = knowledge_pb2.SearchRequest(
            call=request.call, query=question, top_k=self.settings.knowledge.top_k,
            collections=self.settings.dialog.knowledge_collections if collections is None else collections,
        )
        try:
            reply = await self.knowledge.Search(search, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            ERRORS.labels("dialog", f"knowledge_{err.code().name.lower()}").inc()
            return [], f"knowledge search failed: {err.code().name}"
        return list(reply.passages), ""

    async def _generated_sentences(self, question: str, passages: Sequence[knowledge_pb2.Passage],
                                   deadline_s: float, language: str, tier: str) -> AsyncIterator[tuple[str, bool]]:
        """Complete sentences of the LLM's answer (as generated) as they form, each with an "is the last" flag.

        A sentence is complete when the next one starts or the stream ends. Raises LlmFailure (kind
        "timeout" when the whole answer is not done within `deadline_s`). Closing this iterator closes
        the LLM stream, so the server stops generating.
        """
        llm, dialog = self.settings.llm, self.settings.dialog
        prompt = build_prompt(question, passages[:dialog.prompt_passages], dialog.prompt_passage_words)
        deltas = self.tiers[tier].stream_chat(
            prompt, max_tokens=llm.max_tokens, temperature=llm.temperature,
            deadline_s=deadline_s, stop=PROMPT_STOP_SEQUENCES,
        )
        pending = ""
        async with contextlib.aclosing(deltas):
            async for delta in deltas:
                pending += delta
                parts = split_sentences(pending, language)
                if len(parts) < 2:
                    continue
                for part in parts[:-1]:
                    yield part, False
                # The segmenter returns substrings, so the unfinished sentence is the buffer's tail.
                tail = parts[-1]
                pending = pending[pending.rindex(tail):] if tail in pending else tail
        parts = split_sentences(pending, language)
        if parts and not _SENTENCE_END.search(parts[-1]):
            parts.pop()  # cut off by max_tokens: never speak half a sentence
        for index, part in enumerate(parts):
            yield part, index == len(parts) - 1

    def _handover(self, request: dialog_pb2.TurnRequest, question: str, apology: str, why: str
                  ) -> list[dialog_pb2.TurnEvent]:
        """Route "fallback": the spoken apology and the transfer to a colleague, with a briefing."""
        # The briefing goes to the human who takes the call, so it may carry the caller's words; it is
        # never logged.
        briefing = (
            f'Caller asked: "{question}". The assistant could not answer ({why}). '
            f"Call {request.call.call_id}, turn {request.call.turn}."
        )
        action = dialog_pb2.Action(
            kind=dialog_pb2.Action.KIND_TRANSFER, target=self.settings.dialog.transfer_target, briefing=briefing
        )
        return [
            route_event("fallback", why),
            say_event(apology, cached=True),
            dialog_pb2.TurnEvent(action=action, end_of_turn=True),
        ]


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)
