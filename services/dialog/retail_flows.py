"""The retail line's flows: caller verification (e-mail, or name and zip code) and the order tasks.

`VerificationFlow` checks what the caller says against the shop's back office; `OrderStatusFlow` and
`CancelOrderFlow` work on the verified caller's own orders (another customer's order is "not found on
your account"). `RETAIL_FLOWS` is what the router offers on a retail line.
"""

from __future__ import annotations

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
    extract_email,
    extract_order_id,
    extract_person_name,
    extract_zip_code,
)
from services.dialog.tools.adapter import (
    FailureKind,
    ToolFailure,
    ToolRegistry,
    VerifiedSession,
)

CANCEL_REASONS = {"no longer needed": ("no longer need", "don't need", "do not need", "not needed", "changed my mind",
                                       "no longer needed", "won't need", "will not need", "travel", "away"),
                  "ordered by mistake": ("by mistake", "mistake", "accident", "wrong", "didn't mean", "did not mean")}


class VerificationFlow:
    """Establishes who is calling: e-mail address, or full name and zip code, checked by the back office."""

    name = "verification"

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry
        self.attempts = 0
        self.name_given: tuple[str, str] | None = None
        self.zip_given: str | None = None

    def opening(self) -> str:
        return "First I need to confirm who you are. Could you tell me the e-mail address on your account, or your full name and zip code?"

    async def step(self, state: CallState, utterance: str) -> FlowStep:
        step = FlowStep("")
        email = extract_email(utterance)
        self.name_given = extract_person_name(utterance) or self._bare_name(utterance) or self.name_given
        self.zip_given = extract_zip_code(utterance) or self.zip_given
        try:
            if email:
                customer = await call_tool(self.registry, state, step, "find_user_id_by_email", {"email": email})
                method = "email"
            elif self.name_given and self.name_given[1] and self.zip_given:
                first, last = self.name_given
                customer = await call_tool(self.registry, state, step, "find_user_id_by_name_zip",
                                           {"first_name": first, "last_name": last, "zip": self.zip_given})
                method = "name_zip"
            else:
                return self._ask_for_missing(step)
        except ToolFailure as failure:
            if failure.kind not in (FailureKind.NOT_FOUND, FailureKind.INVALID_ARGUMENTS):
                return merged_steps(step, tool_trouble(failure))
            self.attempts += 1
            self.name_given = self.zip_given = None
            if self.attempts >= MAX_VERIFICATION_ATTEMPTS:
                return merged_steps(step, FlowStep(
                    "I could not find an account with those details. Let me put you through to a colleague.",
                    done=True, escalate="verification failed"))
            step.say = ("I could not find an account with those details. Could you give me the e-mail address, "
                        "or your full name and zip code, once more?")
            return step
        state.session = VerifiedSession.verified(state.call_id, str(customer), method)
        step.say = "Thank you, you are verified."
        step.done = True
        return step

    def _ask_for_missing(self, step: FlowStep) -> FlowStep:
        if self.name_given and not self.zip_given:
            step.say = "Thank you. And your zip code?"
        elif self.zip_given and not (self.name_given and self.name_given[1]):
            step.say = "Thank you. And your first and last name?"
        else:
            step.say = "Could you tell me the e-mail address on your account, or your full name and zip code?"
        return step

    @staticmethod
    def _bare_name(utterance: str) -> tuple[str, str] | None:
        # An answer to "your first and last name?" is often just the two words.
        words = utterance.strip().rstrip(".").split()
        if len(words) == 2 and all(word.isalpha() for word in words):
            return words[0].capitalize(), words[1].capitalize()
        return None


class OrderFlow:
    """Shared by the order flows: a verified caller, and the order they mean."""

    name = "order"
    needs_verification = True

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry
        self.order_id: str | None = None
        self.order: dict | None = None
        self.asked_order = 0

    def opening(self) -> str:
        return "What is the order number? It starts with the letter W."

    async def _find_order(self, state: CallState, utterance: str, step: FlowStep) -> FlowStep | None:
        """Load the order the caller names (asking again when needed); None when it is loaded."""
        said = extract_order_id(utterance)
        if said:
            self.order_id = said
        if not self.order_id:
            self.asked_order += 1
            if self.asked_order > MAX_SLOT_ATTEMPTS:
                step.say, step.done, step.escalate = ("Let me put you through to a colleague who can find the order.",
                                                      True, "order number not understood")
                return step
            step.say = await self._orders_hint(state, step) if self.asked_order > 1 else self.opening()
            return step
        try:
            self.order = await call_tool(self.registry, state, step, "get_order_details", {"order_id": self.order_id})
        except ToolFailure as failure:
            if failure.kind in (FailureKind.NOT_FOUND, FailureKind.FORBIDDEN, FailureKind.INVALID_ARGUMENTS):
                # Another customer's order and a missing one sound the same: nothing about others leaks.
                self.order_id = None
                self.asked_order += 1
                step.say = "I could not find that order on your account. Could you read me the order number again?"
                return step
            return merged_steps(step, tool_trouble(failure))
        return None

    async def _orders_hint(self, state: CallState, step: FlowStep) -> str:
        """The caller's own order numbers, read out to help them choose."""
        try:
            user = await call_tool(self.registry, state, step, "get_user_details", {})
        except ToolFailure:
            return self.opening()
        orders = user.get("orders") or []
        if not orders:
            return "I cannot see any orders on your account. What is the order number?"
        return "I can see these orders on your account: " + ", ".join(orders[:5]) + ". Which one do you mean?"


class OrderStatusFlow(OrderFlow):
    """Where an order is: its status and what is in it."""

    name = "order_status"

    async def step(self, state: CallState, utterance: str, control: str = "none") -> FlowStep:
        step = FlowStep("")
        asked = await self._find_order(state, utterance, step)
        if asked:
            return asked
        items = [item.get("name", "item") for item in self.order.get("items", [])]
        status = str(self.order.get("status", "unknown"))
        step.say = f"Order {self.order_id} is {status}. It has {len(items)} item{'s' if len(items) != 1 else ''}: {', '.join(items)}."
        step.done = True
        return step


class CancelOrderFlow(OrderFlow):
    """Cancel a pending order: order number, reason, read-back, explicit yes, then the cancellation."""

    name = "cancel_order"

    def __init__(self, registry: ToolRegistry) -> None:
        super().__init__(registry)
        self.reason: str | None = None
        self.confirming = False

    async def step(self, state: CallState, utterance: str, control: str = "none") -> FlowStep:
        step = FlowStep("")
        if self.confirming:
            return await self._confirmed(state, step, control)
        self.reason = self.reason or cancel_reason(utterance)
        asked = await self._find_order(state, utterance, step)
        if asked:
            return asked
        if not self.reason:
            step.say = "Why would you like to cancel it: is it no longer needed, or was it ordered by mistake?"
            return step
        arguments = {"order_id": self.order_id, "reason": self.reason}
        try:
            await call_tool(self.registry, state, step, "cancel_pending_order", arguments)
        except ToolFailure as failure:
            if failure.kind is FailureKind.NEEDS_CONFIRMATION:
                items = ", ".join(item.get("name", "item") for item in self.order.get("items", []))
                step.say = (f"To confirm: I will cancel order {self.order_id} ({items}) because it is {self.reason}, "
                            "and refund it to the original payment method. Shall I go ahead?")
                step.awaiting_confirmation = self.confirming = True
                return step
            if failure.kind is FailureKind.POLICY_REFUSED:
                status = self.order.get("status", "")
                step.say = f"I cannot cancel that order: only pending orders can be cancelled, and this one is {status}."
                step.done = True
                return step
            return merged_steps(step, tool_trouble(failure))
        raise AssertionError("cancel_pending_order ran without a confirmation")  # the adapter never allows it

    async def _confirmed(self, state: CallState, step: FlowStep, control: str) -> FlowStep:
        if control == "no":
            step.say, step.done = "All right, I have not cancelled anything.", True
            return step
        if control != "yes":
            step.say = f"Shall I cancel order {self.order_id}? Please say yes or no."
            step.awaiting_confirmation = True
            return step
        try:
            await call_tool(self.registry, state, step, "cancel_pending_order",
                            {"order_id": self.order_id, "reason": self.reason}, confirmed=True)
        except ToolFailure as failure:
            return merged_steps(step, tool_trouble(failure))
        step.say = f"Done: order {self.order_id} is cancelled, and the refund is on its way to the original payment method."
        step.done = True
        return step


def cancel_reason(utterance: str) -> str | None:
    """The policy's cancellation reason the caller gave ("no longer needed" / "ordered by mistake"), or None."""
    text = utterance.lower()
    for reason, phrases in CANCEL_REASONS.items():
        if any(phrase in text for phrase in phrases):
            return reason
    return None


RETAIL_FLOWS = LineFlows(VerificationFlow, {flow.name: flow for flow in (OrderStatusFlow, CancelOrderFlow)})
