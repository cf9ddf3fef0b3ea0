"""The dialog's policy file: checked at start, applied by phrase rules the operator can read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.dialog.policy import DEFAULT_POLICY_FILE, PolicyRules, normalise_utterance
from services.kit.config import ConfigError


@pytest.fixture(scope="module")
def rules() -> PolicyRules:
    return PolicyRules.load()


@pytest.mark.parametrize(("utterance", "rule", "topic"), [
    ("I think this is FRAUD, there's a payment I didn't make this payment", "high_risk", "fraud"),
    ("I was scammed by someone on the phone", "high_risk", "fraud"),
    ("I want to make a complaint about your branch", "high_risk", "complaint"),
    ("my father passed away last week", "high_risk", "bereavement"),
    ("I have chest pain and feel dizzy", "high_risk", "medical_emergency"),
    ("you stupid machine", "abuse", ""),
    ("this is useless, I already told you my number", "frustration", ""),
    ("can you give me legal advice about my landlord", "never_answer", "legal_advice"),
    ("Should I invest in shares now?", "never_answer", "investment_advice"),
])
def test_phrases_trigger_their_rule(rules: PolicyRules, utterance: str, rule: str, topic: str) -> None:
    match = rules.screen(utterance)
    assert match is not None and (match.rule, match.topic) == (rule, topic)
    assert match.say
    assert match.escalate == (rule != "never_answer")


@pytest.mark.parametrize("utterance", [
    "I lost my card and I think someone stole it",  # the card flow's job, not fraud
    "what is the fraudulent-looking fee on my statement",  # "fraud" inside a longer word does not match
    "what are your opening hours",
    "",
    "   ",
])
def test_ordinary_requests_trigger_nothing(rules: PolicyRules, utterance: str) -> None:
    assert rules.screen(utterance) is None


def test_safety_rules_win_over_never_answer_topics(rules: PolicyRules) -> None:
    # A caller in an emergency who also asks a medical question is told to call the emergency number.
    match = rules.screen("what medication should I take, I think it's a heart attack")
    assert (match.rule, match.topic) == ("high_risk", "medical_emergency")
    assert "emergency number" in match.say


def test_the_default_policy_discloses_and_lists_confirmed_actions(rules: PolicyRules) -> None:
    assert "automated assistant" in rules.policy.disclosure
    assert rules.needs_confirmation("cancel") and rules.needs_confirmation("move_money")
    assert not rules.needs_confirmation("order_status")


def test_normalisation_keeps_apostrophes_and_drops_punctuation() -> None:
    assert normalise_utterance("You’re NOT helping!!") == "you're not helping"


@pytest.mark.parametrize(("change", "message"), [
    ({"disclosur": "typo"}, "unknown key 'disclosur'"),
    ({"escalation": {"max_no_match_turns": 0}}, "'escalation.max_no_match_turns'"),
    ({"never_answer": {"legal_advice": {"phrases": ["  "], "say": "x"}}}, "a phrase is empty"),
    ({"never_answer": {"legal_advice": {"phrases": [], "say": "x"}}}, "'never_answer.legal_advice.phrases'"),
])
def test_a_bad_policy_file_names_the_key_and_the_fix(tmp_path: Path, change: dict, message: str) -> None:
    data = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) and key != "never_answer" else value
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="policy file .* is invalid") as error:
        PolicyRules.load(path)
    assert message in str(error.value)


def test_a_missing_or_broken_policy_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist: set dialog.policy_file"):
        PolicyRules.load(tmp_path / "none.yaml")
    (tmp_path / "broken.yaml").write_text("disclosure: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PolicyRules.load(tmp_path / "broken.yaml")
