"""The bank line's flows: caller verification (full name and two more details) and card replacement.

`BankVerificationFlow` checks the caller's full name and two of phone number, e-mail address and date
of birth against the bank's records (the tool logs each verification, as the bank's procedure asks).
`RecentTransactionsFlow` reads out a card's latest transactions; appointments with an adviser are
booked by services.dialog.appointment_flows. `CardReplacementFlow` blocks a lost, stolen, damaged or compromised credit card and orders its
replacement, following the bank's replacement procedure: which card, the reason, where to ship it,
standard or expedited shipping (with its fee by card tier), a read-back, an explicit yes. The old
card stops working when the order is placed. `BANK_FLOWS` is what the router offers on a bank line.
"""

from __future__ import annotations

import re

from services.dialog.appointment_flows import APPOINTMENT_FLOWS
from services.dialog.flows import (
    MAX_SLOT_ATTEMPTS,
    MAX_VERIFICATION_ATTEMPTS,
    CallState,
    FlowStep,
    LineFlows,
    call_tool,
    merged_steps,
    tool_trouble,
)
from services.dialog.slots import (
    extract_date,
    extract_email,
    extract_person_name,
    extract_phone_number,
    extract_postal_address,
)
from services.dialog.tools.adapter import FailureKind, ToolFailure, ToolRegistry, VerifiedSession

# The details that may prove who is calling besides the full name, as the bank's tool names them.
VERIFICATION_DETAILS = {"phone_number": "your phone number", "email": "your e-mail address",
                        "date_of_birth": "your date of birth"}
# Details needed besides the full name.
DETAILS_NEEDED = 2
# Replacement reasons (the bank's codes), each with phrases that mark it; checked in this order, so
# "someone stole my card details" is a compromised card, not a stolen one.
REPLACEMENT_REASONS = {
    "fraud_suspected": ("card information", "card info", "card details", "card number", "don't recognize", "do not recognize",
                        "don't recognise", "not my charges", "aren't my charges", "didn't make", "compromised",
                        "suspicious", "skimmed", "cloned"),
    "stolen": ("stolen", "stole", "theft", "pickpocket", "robbed", "mugged"),
    "lost": ("lost", "lose", "can't find", "cannot find", "misplaced", "left it"),
    "damaged": ("damaged", "broken", "broke", "cracked", "bent", "snapped", "chip", "doesn't work", "does not work",
                "not working", "demagnetized", "demagnetised", "worn"),
    "expired": ("expired", "expiring", "expires"),
}
EXPEDITED_WORDS = ("expedited", "express", "fast", "faster", "quick", "rush", "as soon as possible", "asap",
                   "right away", "urgent", "overnight")
STANDARD_WORDS = ("standard", "regular", "normal", "free", "no rush", "no hurry", "slow")
ON_FILE_WORDS = ("on file", "home", "same address", "that address", "that one", "usual", "current address")
# Reasons for which the bank recommends expedited shipping (the card may be in someone else's hands).
URGENT_REASONS = ("fraud_suspected", "stolen")


class BankVerificationFlow:
    """Establishes who is calling: full name and two of phone number, e-mail address, date of birth."""

    name = "verification"

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry
        self.attempts = 0
        self.asked = 0
        self.full_name: str | None = None
        self.details: dict[str, str] = {}

    def opening(self) -> str:
        return ("First I need to confirm who you are. Please tell me your full name, and two of these: "
                "your phone number, your e-mail address or your date of birth.")

    async def step(self, state: CallState, utterance: str) -> FlowStep:
        step = FlowStep("")
        self._collect(utterance)
        if not self.full_name or len(self.details) < DETAILS_NEEDED:
            self.asked += 1
            if self.asked > MAX_SLOT_ATTEMPTS + 1:
                return FlowStep("I could not take down your details. Let me put you through to a colleague.",
                                done=True, escalate="verification details not given")
            step.say = self._ask_for_missing()
            return step
        arguments = {"full_name": self.full_name, **self.details}
        try:
            customer = await call_tool(self.registry, state, step, "verify_bank_customer", arguments)
        except ToolFailure as failure:
            if failure.kind not in (FailureKind.NOT_FOUND, FailureKind.INVALID_ARGUMENTS):
                return merged_steps(step, tool_trouble(failure))
            self.attempts += 1
            self.full_name, self.details, self.asked = None, {}, 0
            if self.attempts >= MAX_VERIFICATION_ATTEMPTS:
                return merged_steps(step, FlowStep(
                    "I could not confirm your identity with those details. Let me put you through to a colleague.",
                    done=True, escalate="verification failed"))
            step.say = ("Those details do not match our records. Could you give me your full name, and two of: "
                        "your phone number, e-mail address or date of birth, once more?")
            return step
        method = "name+" + "+".join(customer.get("matched") or sorted(self.details))
        state.session = VerifiedSession.verified(state.call_id, str(customer["customer_id"]), method)
        step.say = "Thank you, you are verified."
        step.done = True
        return step

    def _collect(self, utterance: str) -> None:
        name = extract_person_name(utterance) or _bare_full_name(utterance)
        if name:
            self.full_name = " ".join(part for part in name if part)
        found = {"phone_number": extract_phone_number(utterance), "email": extract_email(utterance),
                 "date_of_birth": extract_date(utterance)}
        self.details.update({key: value for key, value in found.items() if value})

    def _ask_for_missing(self) -> str:
        if not self.full_name and not self.details:
            return self.opening()
        if not self.full_name:
            return "Thank you. And your full name, please?"
        missing = [VERIFICATION_DETAILS[key] for key in VERIFICATION_DETAILS if key not in self.details]
        if len(self.details) == DETAILS_NEEDED - 1:
            return f"Thank you. I need one more: {_either(missing)}."
        return f"Thank you. I need two of these: {_either(missing)}."


class CardFlow:
    """Shared by the card flows: a verified caller, their active credit cards, and the card they mean."""

    name = "card"
    needs_verification = True

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry
        self.cards: list[dict] | None = None
        self.card: dict | None = None
        self.asking = ""  # the slot the last question asked for: how to read a yes or a no
        self.asked: dict[str, int] = {}

    async def _load_cards(self, state: CallState, step: FlowStep) -> None:
        if self.cards is None:
            cards = await call_tool(self.registry, state, step, "list_credit_card_accounts", {})
            self.cards = [card for card in cards if str(card.get("status", "")).upper() == "ACTIVE"]

    def _pick_card(self, text: str, state: CallState) -> None:
        """The card named now, else the only one, else the one this call last talked about."""
        if self.card is None and self.cards:
            earlier = [card for card in self.cards
                       if card["credit_card_account_id"] == state.facts.get("credit_card_account_id")]
            self.card = (_card_named(text.lower(), self.cards) or (self.cards[0] if len(self.cards) == 1 else None)
                         or (earlier[0] if earlier else None))
        if self.card is not None:
            state.facts["credit_card_account_id"] = self.card["credit_card_account_id"]

    def _card_question(self, step: FlowStep) -> FlowStep | None:
        """Asks which card (or says there is none); None once the card is known."""
        if not self.cards:
            step.say, step.done = ("I cannot see an active credit card on your account. A colleague can help if "
                                   "you think that is wrong."), True
            return step
        if self.card is None:
            names = [card["card_type"] for card in self.cards]
            return self._ask(step, "card", f"Which card is it: your {_either(names)}?")
        return None

    def _ask(self, step: FlowStep, slot: str, question: str) -> FlowStep:
        self.asking = slot
        self.asked[slot] = self.asked.get(slot, 0) + 1
        if self.asked[slot] > MAX_SLOT_ATTEMPTS:
            step.say, step.done, step.escalate = ("Let me put you through to a colleague who can finish this with you.",
                                                  True, f"{self.name}: {slot} not understood")
            return step
        step.say = question
        return step


class RecentTransactionsFlow(CardFlow):
    """Read out the latest transactions of one of the caller's cards."""

    name = "card_transactions"
    READ_OUT = 5  # transactions said on the phone at once

    async def step(self, state: CallState, utterance: str, control: str = "none") -> FlowStep:
        step = FlowStep("")
        try:
            await self._load_cards(state, step)
            self._pick_card(utterance, state)
            question = self._card_question(step)
            if question is not None:
                return question
            transactions = await call_tool(self.registry, state, step, "get_credit_card_transactions",
                                           {"credit_card_account_id": self.card["credit_card_account_id"],
                                            "limit": self.READ_OUT})
        except ToolFailure as failure:
            return merged_steps(step, tool_trouble(failure))
        if not transactions:
            step.say = f"There are no transactions on your {self.card['card_type']} yet."
        else:
            said = "; ".join(f"{t['transaction_amount']} at {t['merchant_name']} on {t['transaction_date']}"
                             for t in transactions)
            step.say = f"The latest {len(transactions)} transactions on your {self.card['card_type']}: {said}."
        step.done = True
        return step


class CardReplacementFlow(CardFlow):
    """Block a credit card and order its replacement: card, reason, address, shipping speed, read-back, yes."""

    name = "card_replacement"

    def __init__(self, registry: ToolRegistry) -> None:
        super().__init__(registry)
        self.reason: str | None = None
        self.address: str | None = None
        self.address_on_file: str | None = None
        self.expedited: bool | None = None
        self.confirming = False

    def opening(self) -> str:
        return "Which card is it?"

    async def step(self, state: CallState, utterance: str, control: str = "none") -> FlowStep:
        step = FlowStep("")
        if self.confirming:
            return await self._confirmed(state, step, control)
        try:
            await self._load_cards(state, step)
            self._fill(state, utterance, control)
            question = await self._next_question(state, step)
        except ToolFailure as failure:
            return merged_steps(step, tool_trouble(failure))
        if question is not None:
            return question
        arguments = {"credit_card_account_id": self.card["credit_card_account_id"], "reason": self.reason,
                     "shipping_address": self.address, "expedited_shipping": self.expedited}
        try:
            await call_tool(self.registry, state, step, "order_replacement_credit_card", arguments)
        except ToolFailure as failure:
            if failure.kind is FailureKind.NEEDS_CONFIRMATION:
                step.say = self._read_back(failure.preview or {})
                step.awaiting_confirmation = self.confirming = True
                return step
            if failure.kind is FailureKind.POLICY_REFUSED:
                return merged_steps(step, _refusal(failure))
            return merged_steps(step, tool_trouble(failure))
        raise AssertionError("order_replacement_credit_card ran without a confirmation")  # the adapter never allows it

    def _fill(self, state: CallState, utterance: str, control: str) -> None:
        """Take what this utterance says about any slot; a yes or no answers the last question asked."""
        text = utterance.lower()
        self._pick_card(text, state)
        self.reason = self.reason or replacement_reason(text)
        if self.address is None and self.asking == "address":
            said = extract_postal_address(utterance)
            if said:
                self.address = said.one_line()
            elif control == "yes" or any(word in text for word in ON_FILE_WORDS):
                self.address = self.address_on_file
        if self.expedited is None and self.asking in ("speed", "address"):
            if any(word in text for word in EXPEDITED_WORDS) or (self.asking == "speed" and control == "yes"):
                self.expedited = True
            elif any(word in text for word in STANDARD_WORDS) or (self.asking == "speed" and control == "no"):
                self.expedited = False

    async def _next_question(self, state: CallState, step: FlowStep) -> FlowStep | None:
        """The question for the first slot still empty (None when all are filled), with bounded re-asks."""
        question = self._card_question(step)
        if question is not None:
            return question
        if self.reason is None:
            return self._ask(step, "reason", f"I can block your {self.card['card_type']} and send you a new one. "
                                             "Was the card lost, stolen, damaged, or do you think its details were "
                                             "used by someone else?")
        if self.address is None:
            if self.address_on_file is None:
                profile = await call_tool(self.registry, state, step, "get_customer_profile", {})
                self.address_on_file = str(profile.get("address") or "")
            return self._ask(step, "address", f"Shall we send the new card to your address on file, "
                                              f"{self.address_on_file}, or to a different address?")
        if self.expedited is None:
            advice = (" Because someone else may have your card details, I recommend expedited shipping."
                      if self.reason in URGENT_REASONS else "")
            return self._ask(step, "speed", "Standard delivery takes 7 to 10 business days at no cost; expedited "
                                            f"takes 2 to 3 business days.{advice} Would you like expedited shipping?")
        return None

    def _read_back(self, preview: dict) -> str:
        fee = float(preview.get("fee") or 0)
        speed = ("expedited shipping, 2 to 3 business days" if self.expedited
                 else "standard delivery, 7 to 10 business days")
        cost = ("" if not self.expedited else f", for a fee of ${fee:.2f}" if fee else ", at no cost")
        return (f"To confirm: I will cancel your {self.card['card_type']} now and send a replacement to "
                f"{self.address} by {speed}{cost}. Shall I go ahead?")

    async def _confirmed(self, state: CallState, step: FlowStep, control: str) -> FlowStep:
        if control == "no":
            step.say, step.done = "All right, I have not changed anything, and your card is still active.", True
            return step
        if control != "yes":
            step.say = f"Shall I cancel your {self.card['card_type']} and order the replacement? Please say yes or no."
            step.awaiting_confirmation = True
            return step
        arguments = {"credit_card_account_id": self.card["credit_card_account_id"], "reason": self.reason,
                     "shipping_address": self.address, "expedited_shipping": self.expedited}
        try:
            order = await call_tool(self.registry, state, step, "order_replacement_credit_card", arguments,
                                    confirmed=True)
        except ToolFailure as failure:
            if failure.kind is FailureKind.POLICY_REFUSED:
                return merged_steps(step, _refusal(failure))
            return merged_steps(step, tool_trouble(failure))
        window = "2 to 3" if self.expedited else "7 to 10"
        step.say = (f"Done: your old {self.card['card_type']} is cancelled, and the new card should arrive within "
                    f"{window} business days; expected by {order.get('expected_delivery', 'then')}.")
        if self.reason in URGENT_REASONS:
            step.say += " Please look over your recent transactions and tell us about any you do not recognise."
        step.done = True
        return step


# What the caller hears when the bank's policy refuses a replacement (by the tool's rule name).
REFUSALS = {
    "one_pending_replacement": "a replacement for that card is already on its way",
    "replace_only_active": "that card is no longer active",
}


def _refusal(failure: ToolFailure) -> FlowStep:
    why = REFUSALS.get(failure.rule or "", "our policy does not allow it")
    return FlowStep(f"I cannot order a replacement for that card: {why}. A colleague can look at it with you "
                    "if you need more help.", done=True)


def replacement_reason(text: str) -> str | None:
    """The bank's replacement reason code the caller's words give, or None."""
    text = text.lower()
    for reason, phrases in REPLACEMENT_REASONS.items():
        if any(phrase in text for phrase in phrases):
            return reason
    return None


def _card_named(text: str, cards: list[dict]) -> dict | None:
    """The one card whose type the caller named ("the silver one", "my Gold Rewards card"), or None."""
    named = [card for card in cards
             if any(word in text.split() or word in text
                    for word in _card_words(card["card_type"]))]
    return named[0] if len(named) == 1 else None


def _card_words(card_type: str) -> list[str]:
    # "Silver Rewards Card" is named by "silver"; the generic words name no card in particular.
    generic = {"card", "rewards", "credit", "business"}
    return [word for word in re.findall(r"[a-z]+", card_type.lower()) if word not in generic]


# An answer that starts with just a name: "Fatima Al-Hassan." / "Fatima Al-Hassan, 313 555 0246, ...".
LEADING_NAME = re.compile(r"^\s*([A-Z][a-zA-Z'-]+)((?:\s+[A-Z][a-zA-Z'-]+){1,2})\s*(?:[,.!]|$)")


def _bare_full_name(utterance: str) -> tuple[str, str] | None:
    """(first name, the rest) when the answer starts with two or three capitalised words and a pause."""
    match = LEADING_NAME.match(utterance)
    return (match.group(1), match.group(2).strip()) if match else None


def _either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


# A bank verifies a caller before discussing their account; what no flow here serves goes to a
# colleague with the verified identity in the briefing.
BANK_FLOWS = LineFlows(BankVerificationFlow, {"card_lost_stolen": CardReplacementFlow,
                                              "card_transactions": RecentTransactionsFlow,
                                              **APPOINTMENT_FLOWS},
                       account_handover=True)
