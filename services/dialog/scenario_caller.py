"""Scripted phone caller for text evaluations on tau2-bench banking scenarios (`quietline eval banking`).

A tau2 task's `user_scenario.instructions` describes, in the second person and in free prose, who
the customer is, what they know ("Your phone number is 206-555-0293"), what they want, the lines
they open with, and twists (details they deflect, a bypass code, a demand for a person).
`parse_scenario` reads it with explicit rules (no LLM) into `ScenarioFacts`, and `ScenarioCaller`
answers the bot from those facts like a phone caller: the opening line, then short answers to what
is asked, "yes" to a read-back, the scenario's further lines when the bot has nothing to ask.

The caller knows only the scenario text: never the gold actions, the database, or ids the text
does not contain (a user id in the text is withheld unless the bot asks for exactly that, which our
bot never does). Whatever a scenario needs that these rules do not cover makes the caller say the
next line the scenario gives it, or end the call; the evaluation then scores what happened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PHONE = re.compile(r"\(?\b\d{3}\)?[-. ]\d{3}[-. ]\d{4}\b")
DATE = re.compile(r"\b\d{2}/\d{2}/\d{4}\b")
# "2500 Woodward Avenue, Suite 300, Detroit, MI 48201"
ADDRESS = re.compile(r"\b\d{1,6} [A-Z][\w'.]*(?: [\w'.]+){0,5},(?: (?:Suite|Apt|Unit|#)[^,]*,)? [A-Z][\w .'-]+, [A-Z]{2} \d{5}\b")
CARD = re.compile(r"\b((?:[A-Z][a-z]+ ){1,3}(?:Card))\b")
NAME_PATTERNS = [
    re.compile(r"\*\*Your character:\*\*\s*(?:You are\s+)?([A-Z][\w'-]+(?: [A-Z][\w'-]+){1,2}),"),
    re.compile(r"\bnamed ([A-Z][\w'-]+(?: [A-Z][\w'-]+){1,2})"),
    re.compile(r"\bYour (?:full )?name(?: is|:)\s*\**\s*([A-Z][\w'-]+(?: [A-Z][\w'-]+){1,2})"),
    re.compile(r"\bYour character is ([A-Z][\w'-]+(?: [A-Z][\w'-]+){1,2}),"),
    re.compile(r"\bYou are ([A-Z][\w'-]+(?: [A-Z][\w'-]+){1,2}), a\b"),
]
# A line the caller is scripted to say: a quotation of five words or more (shorter ones are names).
QUOTED_LINE = re.compile(r"[\"“]((?:[^\"”\s]+\s+){4,}[^\"”]*)[\"”]")
# The scripted opening: the quotation that follows "Opening" or "Start naturally".
OPENING_LINE = re.compile(r"(?:Opening|Start naturally)[^\n\"“]*[\"“]([^\"”]+)[\"”]")
URGENT = ("right away", "as soon as possible", "immediately", "urgent", "expedite", "quickly", "asap", "fast")
# Scenario words that mark a card as compromised rather than merely lost.
COMPROMISED = ("stole my card information", "card information", "fraud", "don't recognize", "never shopped",
               "unauthorized", "not my charges", "aren't my charges")
SHIPPING_CONTEXT = ("ship", "send", "deliver", "mail", "replacement", "work address")
GOODBYE = "No, that's all. Thank you, goodbye."
UNKNOWN = "I don't have that information on hand right now."


@dataclass
class ScenarioFacts:
    """What one scenario lets the caller say."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None
    date_of_birth: str | None = None
    cards: list[str] = field(default_factory=list)
    shipping_address: str | None = None  # an address the scenario wants a card sent to
    urgent: bool = False
    compromised: bool = False
    lines: list[str] = field(default_factory=list)  # the caller's scripted lines, opening first
    opening: str = ""
    demands_person: bool = False


def parse_scenario(text: str) -> ScenarioFacts:
    """The facts a tau2 banking scenario gives its caller, by explicit rules."""
    facts = ScenarioFacts()
    for pattern in NAME_PATTERNS:
        match = pattern.search(text)
        if match:
            facts.name = match.group(1).strip()
            break
    facts.email = _first(EMAIL, text)
    facts.phone = _first(PHONE, text)
    dob = re.search(r"(?:date of birth|born)[^0-9\n]{0,20}(\d{2}/\d{2}/\d{4})", text, re.IGNORECASE)
    facts.date_of_birth = dob.group(1) if dob else None
    facts.cards = list(dict.fromkeys(card.strip() for card in CARD.findall(text) if card.split()[0] not in {"Your", "The", "A"}))
    for sentence in re.split(r"(?<=[.!?\n])\s+", text):
        address = ADDRESS.search(sentence)
        if address and any(word in sentence.lower() for word in SHIPPING_CONTEXT):
            facts.shipping_address = address.group(0)
            break
    low = text.lower()
    facts.urgent = any(word in low for word in URGENT)
    facts.compromised = any(word in low for word in COMPROMISED)
    facts.demands_person = bool(re.search(r"(demand|ask) to (?:be transferred|speak)|transfer(?:red)? to a human", low))
    facts.lines = [match.group(1).strip() for match in QUOTED_LINE.finditer(text)
                   if not _forbidden(text, match.start())
                   and not match.group(1).strip().lower().startswith("okay, i'll hold")]
    opening = OPENING_LINE.search(text)
    start = re.search(r"[Ss]tart by (?:saying|mentioning|telling the agent)(?: that)? (?:you )?([^\n.]+)", text)
    seeking = re.search(r"You(?:'re| are) ((?:looking|seeking|calling|trying) (?:for|to) [^.\n]+)", text)
    if opening:
        facts.opening = opening.group(1).strip()
        facts.lines = [line for line in facts.lines if line != facts.opening]
    elif start:
        facts.opening = "Hi, I " + _first_person(start.group(1)).rstrip(".") + "."
    elif seeking:
        facts.opening = "Hi, I'm " + _first_person(seeking.group(1)).rstrip(".") + "."
    elif facts.lines:
        facts.opening = facts.lines.pop(0)
    else:
        facts.opening = "Hi, I need some help with my account."
    return facts


class ScenarioCaller:
    """Answers the bot from a tau2 banking scenario; `reply` returns None when the caller hangs up."""

    def __init__(self, scenario: str, patience: int = 5) -> None:
        self.facts = parse_scenario(scenario)
        self.pending = list(self.facts.lines)
        self.patience = patience  # turns without progress before a caller who demands a person does so
        self.idle_turns = 0
        self.said_goodbye = False

    def opening(self) -> str:
        return self.facts.opening

    def reply(self, bot: str) -> str | None:
        """The caller's answer to what the bot just said."""
        text = bot.lower()
        if self.said_goodbye or "goodbye" in text:
            return None
        if "shall i" in text or "shall we go ahead" in text or "please say yes or no" in text:
            return "Yes, please go ahead."
        answer = (self._identity(text) or self._card_question(text))
        if answer:
            self.idle_turns = 0
            return answer
        self.idle_turns += 1
        if self.facts.demands_person and self.idle_turns >= self.patience:
            return "This isn't getting anywhere. Please transfer me to a human agent."
        if "anything else" in text or not self.pending:
            if self.pending and "anything else" in text:
                return self.pending.pop(0)
            self.said_goodbye = True
            return GOODBYE
        return self.pending.pop(0)

    def _identity(self, text: str) -> str | None:
        asks = {"name": "name" in text, "phone": "phone" in text, "email": "e-mail" in text or "email" in text,
                "dob": "date of birth" in text, "address": "your address" in text or "address on your" in text}
        if not any(asks.values()) or "address on file" in text:
            return None
        facts, parts = self.facts, []
        if asks["name"] and facts.name:
            parts.append(f"My name is {facts.name}")
        wanted_all = "two of" in text or "one more" in text or "do not match" in text
        if (asks["phone"] or wanted_all) and facts.phone:
            parts.append(f"my phone number is {facts.phone}")
        if (asks["email"] or wanted_all) and facts.email:
            parts.append(f"my email is {facts.email}")
        if (asks["dob"] or wanted_all) and facts.date_of_birth:
            parts.append(f"my date of birth is {facts.date_of_birth}")
        if not parts:
            return UNKNOWN
        return ", ".join(parts) + "."

    def _card_question(self, text: str) -> str | None:
        facts = self.facts
        if "which card" in text:
            named = [card for card in facts.cards if card.lower() in text]
            return f"My {named[0] if named else (facts.cards[0] if facts.cards else 'credit card')}."
        if "lost, stolen, damaged" in text:
            if facts.compromised:
                return "I think someone stole my card information: there are charges I don't recognize."
            return "It was stolen." if "stolen" in " ".join(facts.lines).lower() else "I lost it."
        if "address on file" in text:
            if facts.shipping_address:
                return f"Please send it to {facts.shipping_address}."
            return "The address on file is fine."
        if "expedited shipping?" in text:
            return "Yes, expedited please." if facts.urgent else "No, standard is fine."
        return None


def _forbidden(text: str, quote_start: int) -> bool:
    """True when the quotation is an example of what the caller must not say ('Do NOT say things like "..."')."""
    sentence = re.split(r"[.!?\n]", text[max(0, quote_start - 120):quote_start])[-1].lower()
    return bool(re.search(r"\b(?:not|never|don't|avoid)\b", sentence))


def _first(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    return match.group(0) if match else None


def _first_person(phrase: str) -> str:
    """ "you want to change your email" -> "want to change my email" (the scenario's second person)."""
    words = []
    for word in phrase.split():
        low = word.lower()
        words.append({"you": "I", "your": "my", "yours": "mine", "you're": "I'm", "you've": "I've",
                      "yourself": "myself"}.get(low, word))
    text = " ".join(words)
    return re.sub(r"^I ", "", text)
