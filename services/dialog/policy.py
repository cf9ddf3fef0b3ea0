"""The dialog's policy: an operator-readable YAML file, checked at start, applied without the LLM.

The file (default `services/dialog/policy.yaml`, or `dialog.policy_file`) says what the assistant
discloses, its brand style, when the caller goes to a person (explicit request, repeated no-match or
empty turns, frustration or abuse, high-risk topics such as fraud, complaints or medical emergencies)
and which topics it never answers. `PolicyRules.screen(utterance)` finds the rule a caller's words
trigger by phrase matching on normalised text: fast (well under a millisecond), predictable, and
readable by the operator who wrote the phrases. Nothing here can be changed by what a caller says or
by a document's text: the rules come only from the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.kit.config import ConfigError, explain_validation_error, read_yaml_mapping

DEFAULT_POLICY_FILE = Path(__file__).resolve().parent / "policy.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _phrase_list(phrases: list[str]) -> list[str]:
    cleaned = [normalise_utterance(phrase) for phrase in phrases]
    if any(not phrase for phrase in cleaned):
        raise ValueError("a phrase is empty: remove it or write the words it should match")
    return cleaned


class Brand(_Strict):
    name: str = Field(min_length=1)
    style: str = ""


class Topic(_Strict):
    """A topic marked by phrases, and what the assistant says when a caller raises it."""

    phrases: list[str] = Field(min_length=1)
    say: str = Field(min_length=1)

    @field_validator("phrases")
    @classmethod
    def _normalise(cls, phrases: list[str]) -> list[str]:
        return _phrase_list(phrases)


class Escalation(_Strict):
    on_explicit_request: bool = True
    max_no_match_turns: int = Field(default=3, ge=1, le=20)
    max_empty_turns: int = Field(default=3, ge=1, le=20)
    frustration_phrases: list[str] = []
    abuse_phrases: list[str] = []
    high_risk_topics: dict[str, Topic] = {}

    @field_validator("frustration_phrases", "abuse_phrases")
    @classmethod
    def _normalise(cls, phrases: list[str]) -> list[str]:
        return _phrase_list(phrases)


class Policy(_Strict):
    """The whole policy file."""

    disclosure: str = Field(min_length=1)
    # Said when a turn's answer will not be ready by dialog.first_words_deadline_s (a cached prompt).
    acknowledgement: str = Field(default="One moment, let me check that for you.", min_length=1)
    brand: Brand
    escalation: Escalation = Escalation()
    never_answer: dict[str, Topic] = {}
    confirmation_required: list[str] = []


@dataclass(frozen=True)
class PolicyMatch:
    """What a caller's words triggered: `rule` ("high_risk", "never_answer", "frustration", "abuse"),
    the topic name (for the two topic rules), the phrase that matched, what to say, and whether the
    caller goes to a person."""

    rule: str
    topic: str
    phrase: str
    say: str
    escalate: bool


FRUSTRATION_SAY = "I am sorry this is taking long. Let me put you through to a colleague."
ABUSE_SAY = "I will put you through to a colleague now."


def normalise_utterance(text: str) -> str:
    """Lower case, apostrophes kept, every other run of non-letters and non-digits one space."""
    return " ".join(re.sub(r"[^\w']+", " ", text.lower().replace("’", "'")).split())


class PolicyRules:
    """A loaded policy with its phrase matchers; one per dialog process."""

    def __init__(self, policy: Policy, source: Path) -> None:
        self.policy = policy
        self.source = source
        # (rule, topic, phrase, say, escalate) in the order they are checked: safety first.
        self._checks: list[tuple[str, str, str, str, bool]] = []
        for topic, spec in policy.escalation.high_risk_topics.items():
            self._checks += [("high_risk", topic, phrase, spec.say, True) for phrase in spec.phrases]
        for phrase in policy.escalation.abuse_phrases:
            self._checks.append(("abuse", "", phrase, ABUSE_SAY, True))
        for phrase in policy.escalation.frustration_phrases:
            self._checks.append(("frustration", "", phrase, FRUSTRATION_SAY, True))
        for topic, spec in policy.never_answer.items():
            self._checks += [("never_answer", topic, phrase, spec.say, False) for phrase in spec.phrases]
        self._patterns = [re.compile(rf"(?<!\w){re.escape(check[2])}(?!\w)") for check in self._checks]

    @classmethod
    def load(cls, path: Path | str | None = None) -> PolicyRules:  # "" or None: the default policy
        """Read and check the policy file (default: the one beside this module); ConfigError names the fix."""
        source = Path(path) if path else DEFAULT_POLICY_FILE
        data = read_yaml_mapping(source, "policy file", "set dialog.policy_file to an existing file",
                                 "sections (disclosure, brand, escalation, ...)")
        try:
            return cls(Policy(**data), source)
        except ValidationError as err:
            raise ConfigError(f"policy file {source} is invalid: {explain_validation_error(err)}") from None

    def screen(self, utterance: str) -> PolicyMatch | None:
        """The first rule the caller's words trigger (high-risk topics, abuse, frustration, never-answer
        topics, in that order), or None."""
        text = normalise_utterance(utterance)
        if not text:
            return None
        for check, pattern in zip(self._checks, self._patterns):
            if pattern.search(text):
                rule, topic, phrase, say, escalate = check
                return PolicyMatch(rule, topic, phrase, say, escalate)
        return None

    def needs_confirmation(self, action: str) -> bool:
        """Whether `action` (cancel, return, move_money, ...) needs the caller's explicit yes."""
        return action in self.policy.confirmation_required
