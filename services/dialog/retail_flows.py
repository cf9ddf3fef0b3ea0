"""The retail line's flows: caller verification (e-mail, or name and zip code) and the order tasks.

`VerificationFlow` checks what the caller says against the shop's back office. The order flows work
on the verified caller's own orders (another customer's order is "not found on your account"):
`OrderStatusFlow` reads an order out; `CancelOrderFlow`, `ReturnItemsFlow`, `ExchangeItemsFlow`
(which also changes the items of a pending order) and `ChangeAddressFlow` change something, each
through `OrderChangeFlow`: bounded questions for what is missing, a read-back through the tool's
preview (so a policy refusal comes before the question), an explicit yes, then the change. What the
caller says about items, options and payment methods is matched against the back office's own data
(services.dialog.retail_matching). `RETAIL_FLOWS` is what the router offers on a retail line, by the
task classifier's intent names.
"""

from __future__ import annotations

import re
from collections import Counter

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
from services.dialog.retail_matching import (
    CHEAPEST,
    ORDINAL,
    ORDINALS,
    SAME_OPTIONS,
    describe_item,
    describe_method,
    describe_options,
    item_among,
    items_said,
    join_words,
    matching_variants,
    money,
    normalise,
    option_values_said,
    payment_said,
    products_said,
    varying_options,
    wanted_options,
)
from services.dialog.slots import (
    PostalAddress,
    extract_email,
    extract_order_id,
    extract_person_name,
    extract_postal_address,
    extract_zip_code,
    spoken_digits,
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
# "The order number ends in 66": enough to find it among the caller's own orders.
ORDER_ENDING = re.compile(r"\b(?:ends?|ending) (?:in|with) ((?:\d[\s-]*){2,7})")
ORDER_ID_WORDS = re.compile(r"#?\bW\s*\d{5,}\b", re.IGNORECASE)
# At a read-back, words that take the request back although they are not a plain "no".
DECLINED = re.compile(r"\b(?:changed? my mind|never ?mind|forget (?:it|about it)|rather not|leave (?:it|them)"
                      r"|keep (?:it|them|the|all|my)|(?:don't|do not|not) (?:want|need|go ahead|proceed|do it|"
                      r"exchange|return|change|cancel))\b", re.IGNORECASE)
# A new wish that replaces the one before rather than adding to it.
CHANGED_MIND = re.compile(r"\b(?:instead|changed? my mind|actually|rather)\b", re.IGNORECASE)
# What the caller hears when the shop's policy forbids a change (by the tools' rule names).
POLICY_SAYS = {
    "cancel_only_pending": "I cannot cancel that order: only pending orders can be cancelled, and this one is {status}.",
    "modify_only_pending": "I cannot change order {order_id}: only pending orders can be changed, and this one is {status}.",
    "return_only_delivered": ("I cannot return items from order {order_id}: only delivered orders can be returned, "
                              "and this one is {status}."),
    "exchange_only_delivered": ("I cannot change the items of order {order_id}: only delivered orders can be exchanged, "
                                "and only pending ones changed, and this one is {status}."),
    "refund_to_original_or_gift_card": "I cannot do that: a refund can only go to the original payment method or to a gift card.",
    "gift_card_balance_sufficient": "I cannot do that: the gift card's balance does not cover the amount.",
    "new_item_available": "I cannot do that: the new item is no longer available.",
    "same_product": "I cannot do that: an item can only be changed to another option of the same product.",
}


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
    """Shared by the order flows: a verified caller, and the order they mean.

    The order is named by its number, or found among the caller's own orders by what the caller says
    about it ("the order with the tea kettle", "it ends in 66"); among several, those in a status the
    flow acts on (`acts_on`) are the likely ones.
    """

    name = "order"
    needs_verification = True
    acts_on: tuple[str, ...] = ()

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry
        self.order_id: str | None = None
        self.order: dict | None = None
        self.asked_order = 0
        self._user: dict | None = None
        self._orders: dict[str, dict] = {}  # the caller's orders loaded so far, by id
        self._product_names: list[str] | None = None

    def opening(self) -> str:
        return "What is the order number? It starts with the letter W."

    async def _find_order(self, state: CallState, utterance: str, step: FlowStep) -> FlowStep | None:
        """Load the order the caller names (asking again when needed); None when it is loaded."""
        said = extract_order_id(utterance)
        if said and said != self.order_id:
            self.order_id, self.order = said, None
            self._new_order()
        if self.order is not None:
            return None
        candidates: list[str] = []
        if not self.order_id:
            try:
                candidates = await self._orders_described(state, utterance, step)
            except ToolFailure as failure:
                return merged_steps(step, tool_trouble(failure))
            if len(candidates) == 1:
                self.order_id = candidates[0]
        if not self.order_id:
            self.asked_order += 1
            if self.asked_order > MAX_SLOT_ATTEMPTS:
                step.say, step.done, step.escalate = ("Let me put you through to a colleague who can find the order.",
                                                      True, "order number not understood")
                return step
            if candidates:
                step.say = self._which_order(candidates)
            else:
                step.say = await self._orders_hint(state, step) if self.asked_order > 1 else self.opening()
            return step
        if self.order_id in self._orders:
            self.order = self._orders[self.order_id]
            return None
        try:
            self.order = await call_tool(self.registry, state, step, "get_order_details", {"order_id": self.order_id})
        except ToolFailure as failure:
            if failure.kind in (FailureKind.NOT_FOUND, FailureKind.FORBIDDEN, FailureKind.INVALID_ARGUMENTS):
                # Another customer's order and a missing one sound the same: nothing about others leaks.
                self.order_id = None
                self.asked_order += 1
                if self.asked_order > MAX_SLOT_ATTEMPTS:
                    step.say, step.done, step.escalate = (
                        "I could not find that order on your account. Let me put you through to a colleague.",
                        True, "order not found on the caller's account")
                else:
                    step.say = "I could not find that order on your account. Could you read me the order number again?"
                return step
            return merged_steps(step, tool_trouble(failure))
        return None

    def _new_order(self) -> None:
        """The caller named another order: what was chosen in the previous one no longer applies."""

    async def _orders_described(self, state: CallState, utterance: str, step: FlowStep) -> list[str]:
        """The caller's orders that fit what they say about one: the end of its number, or a product in it."""
        ending = ORDER_ENDING.search(spoken_digits(utterance))
        if ending:
            digits = re.sub(r"\D", "", ending.group(1))
            user = await self._user_details(state, step)
            return [order_id for order_id in user.get("orders", []) if order_id.endswith(digits)]
        if self._product_names is None:
            self._product_names = list(await call_tool(self.registry, state, step, "list_all_product_types", {}))
        named = set().union(*(names for _, _, names in products_said(utterance, self._product_names)))
        if not named:
            return []
        orders = await self._own_orders(state, step)
        holding = [order_id for order_id, order in orders.items() if any(item["name"] in named for item in order["items"])]
        return [order_id for order_id in holding if orders[order_id]["status"] in self.acts_on] or holding

    def _which_order(self, candidates: list[str]) -> str:
        described = [f"{order_id} ({self._orders[order_id]['status']}: "
                     f"{join_words([item['name'] for item in self._orders[order_id]['items']])})"
                     if order_id in self._orders else order_id for order_id in candidates[:5]]
        return f"I can see {len(candidates)} orders that could be it: {join_words(described, 'and')}. Which one do you mean?"

    async def _user_details(self, state: CallState, step: FlowStep) -> dict:
        if self._user is None:
            self._user = await call_tool(self.registry, state, step, "get_user_details", {})
        return self._user

    async def _own_orders(self, state: CallState, step: FlowStep) -> dict[str, dict]:
        """Every order of the caller, loaded once."""
        for order_id in (await self._user_details(state, step)).get("orders", []):
            if order_id not in self._orders:
                self._orders[order_id] = await call_tool(self.registry, state, step, "get_order_details", {"order_id": order_id})
        return self._orders

    async def _orders_hint(self, state: CallState, step: FlowStep) -> str:
        """The caller's own order numbers, read out to help them choose."""
        try:
            user = await self._user_details(state, step)
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


class OrderChangeFlow(OrderFlow):
    """Shared by the flows that change something: each slot asked a bounded number of times, the change
    read back through the tool's preview (which checks the policy first), an explicit yes, then the change.

    A subclass fills its slots in `_next` and ends with `_propose`; `_corrected` takes a correction said
    at the read-back ("no, the desk lamp as well"), after which the change is read back again.
    """

    tool = ""
    nothing_done = "All right, I have not changed anything."

    def __init__(self, registry: ToolRegistry) -> None:
        super().__init__(registry)
        self.asks: Counter[str] = Counter()
        self.confirming = False
        self.arguments: dict | None = None  # the change read back
        self.heard: list[str] = []  # the caller's turns in this flow

    async def step(self, state: CallState, utterance: str, control: str = "none") -> FlowStep:
        step = FlowStep("")
        try:
            if self.confirming:
                return await self._read_back_answered(state, utterance, control, step)
            self.heard.append(utterance)
            return await self._next(state, utterance, step)
        except ToolFailure as failure:  # a lookup the flow cannot go on without
            return merged_steps(step, tool_trouble(failure))

    async def _next(self, state: CallState, utterance: str, step: FlowStep) -> FlowStep:
        raise NotImplementedError

    def _corrected(self, utterance: str, replace: bool) -> bool:
        """Apply a correction said at the read-back; True when it changed anything."""
        return False

    def _ask(self, step: FlowStep, slot: str, question: str) -> FlowStep:
        """Ask for `slot`; after MAX_SLOT_ATTEMPTS asks, hand the caller to a colleague instead."""
        self.asks[slot] += 1
        if self.asks[slot] > MAX_SLOT_ATTEMPTS:
            step.say, step.done = "Let me put you through to a colleague who can help with this.", True
            step.escalate = f"{self.name}: {slot} not understood"
        else:
            step.say = question
        return step

    async def _propose(self, state: CallState, step: FlowStep, arguments: dict, read_back: str) -> FlowStep:
        """Check the change with the tool (its preview) and read it back, or say why it cannot be done."""
        try:
            await call_tool(self.registry, state, step, self.tool, arguments)
        except ToolFailure as failure:
            if failure.kind is FailureKind.NEEDS_CONFIRMATION:
                self.arguments, self.confirming = arguments, True
                step.say, step.awaiting_confirmation = f"{read_back} Shall I go ahead?", True
                return step
            if failure.kind is FailureKind.POLICY_REFUSED:
                return self._refused(failure, step)
            return merged_steps(step, tool_trouble(failure))
        raise AssertionError(f"{self.tool} ran without a confirmation")  # the adapter never allows it

    async def _read_back_answered(self, state: CallState, utterance: str, control: str, step: FlowStep) -> FlowStep:
        if control == "yes":
            return await self._commit(state, step)
        if self._corrected(utterance, replace=control == "no"):
            self.confirming = False
            self.heard.append(utterance)
            return await self._next(state, "", step)
        if control == "no" or DECLINED.search(utterance):
            step.say, step.done = self.nothing_done, True
            return step
        step.awaiting_confirmation = True
        return self._ask(step, "confirmation", "Shall I go ahead? Please say yes or no.")

    async def _commit(self, state: CallState, step: FlowStep) -> FlowStep:
        try:
            result = await call_tool(self.registry, state, step, self.tool, self.arguments, confirmed=True)
        except ToolFailure as failure:
            if failure.kind is FailureKind.POLICY_REFUSED:  # something changed since the read-back
                return self._refused(failure, step)
            return merged_steps(step, tool_trouble(failure))
        step.say, step.done = self._done(result), True
        return step

    def _done(self, result: dict) -> str:
        raise NotImplementedError

    def _refused(self, failure: ToolFailure, step: FlowStep) -> FlowStep:
        """Say plainly which rule forbids the change; the flow ends."""
        step.say, step.done = self._policy_says(failure.rule), True
        return step

    def _policy_says(self, rule: str | None) -> str:
        order = self.order or {}
        return POLICY_SAYS.get(rule or "", "I cannot do that: our policy does not allow it.").format(
            order_id=self.order_id, status=order.get("status", ""))

    def _refuse_unless_status(self, step: FlowStep, statuses: tuple[str, ...], rule: str) -> FlowStep | None:
        """The policy's plain refusal when the order is not in one of `statuses` (checked before asking more)."""
        if self.order.get("status") in statuses:
            return None
        step.say, step.done = self._policy_says(rule), True
        return step


class CancelOrderFlow(OrderChangeFlow):
    """Cancel a pending order: order number, reason, read-back, explicit yes, then the cancellation."""

    name = "cancel_order"
    tool = "cancel_pending_order"
    acts_on = ("pending",)
    nothing_done = "All right, I have not cancelled anything."

    def __init__(self, registry: ToolRegistry) -> None:
        super().__init__(registry)
        self.reason: str | None = None

    async def _next(self, state: CallState, utterance: str, step: FlowStep) -> FlowStep:
        self.reason = self.reason or cancel_reason(utterance)
        asked = await self._find_order(state, utterance, step)
        if asked:
            return asked
        if not self.reason:
            return self._ask(step, "reason", "Why would you like to cancel it: is it no longer needed, or was it ordered by mistake?")
        items = ", ".join(item.get("name", "item") for item in self.order.get("items", []))
        return await self._propose(state, step, {"order_id": self.order_id, "reason": self.reason},
                                   f"To confirm: I will cancel order {self.order_id} ({items}) because it is {self.reason}, "
                                   "and refund it to the original payment method.")

    def _corrected(self, utterance: str, replace: bool) -> bool:
        reason = cancel_reason(utterance)
        if reason and reason != self.reason:
            self.reason = reason
            return True
        return False

    def _done(self, result: dict) -> str:
        return f"Done: order {self.order_id} is cancelled, and the refund is on its way to the original payment method."


class ItemsFlow(OrderChangeFlow):
    """Shared by the flows that act on some items of an order (return, exchange): which items, and the
    caller's payment method."""

    verb = ""  # what is done to the items: "return", "exchange"

    def __init__(self, registry: ToolRegistry) -> None:
        super().__init__(registry)
        self.lines: list[int] = []  # the order lines chosen, by index, in the order the caller named them
        self.unsure: list[list[int]] = []  # candidate lines of each unclear mention, asked about in turn
        self.about: dict[int, str] = {}  # what was said after each chosen line was named
        self.payment_id: str | None = None
        self.payment_heard_from = 0  # turns before this one named a payment method already refused
        self.refused_payment: str | None = None  # refused once: named again, the flow ends with the refusal

    def _new_order(self) -> None:
        self.lines, self.unsure, self.about = [], [], {}

    def _choose_items(self, utterance: str, step: FlowStep) -> FlowStep | None:
        """The lines the caller means (asking which when unclear); None when they are chosen."""
        items = self.order["items"]
        if self.unsure:
            picked = item_among(utterance, items, self.unsure[0])
            if picked is not None:
                self.unsure.pop(0)
                if picked not in self.lines:
                    self.lines.append(picked)
        elif not self.lines:
            # Everything said so far may name the items ("the puzzle" said before the order was found).
            said = items_said(" . ".join(self.heard), items)
            self.lines, self.unsure, self.about = said.lines, said.unsure, said.about
            if not said.lines and not said.unsure and len({item["item_id"] for item in items}) == 1:
                self.lines = [0]  # a one-item order: the read-back names it
        if self.unsure:
            candidates = [describe_item(items[index]) for index in self.unsure[0]]
            return self._ask(step, "which item", f"Which one do you mean: {join_words(candidates, 'or')}?")
        if not self.lines:
            return self._ask(step, "items", f"Which items would you like to {self.verb}? In that order I can see "
                                            f"{join_words([describe_item(item) for item in items])}.")
        return None

    def _items_corrected(self, utterance: str, replace: bool) -> bool:
        """Items named at the read-back: instead of the chosen ones after a "no", otherwise as well."""
        said = items_said(utterance, self.order["items"])
        unsure = [group for group in said.unsure if not set(group) & set(self.lines)]
        lines = said.lines if replace else self.lines + [index for index in said.lines if index not in self.lines]
        if (not said.lines or lines == self.lines) and not unsure:
            return False
        self.lines, self.unsure = lines, self.unsure + unsure
        self.about.update(said.about)
        return True

    def _payment_heard(self, methods: dict, original: str | None) -> str | None:
        """The payment method the caller named last (not counting one already refused)."""
        for text in reversed(self.heard[self.payment_heard_from:]):
            method_id = payment_said(text, methods, original)
            if method_id:
                return method_id
        return None

    def _original_payment(self) -> str | None:
        history = self.order.get("payment_history") or []
        return history[0]["payment_method_id"] if history else None

    def _items_read_out(self) -> str:
        return join_words([describe_item(self.order["items"][index]) for index in self.lines])


class ReturnItemsFlow(ItemsFlow):
    """Return items of a delivered order: the order, which items, where the refund goes (the original
    payment method or a gift card), a read-back with the amount, explicit yes, then the return request."""

    name = "return_items"
    tool = "return_delivered_order_items"
    acts_on = ("delivered",)
    verb = "return"
    nothing_done = "All right, I have not returned anything."

    async def _next(self, state: CallState, utterance: str, step: FlowStep) -> FlowStep:
        asked = (await self._find_order(state, utterance, step)
                 or self._refuse_unless_status(step, ("delivered",), "return_only_delivered")
                 or self._choose_items(utterance, step)
                 or await self._choose_refund(state, step))
        if asked:
            return asked
        items = self.order["items"]
        total = sum(items[index]["price"] for index in self.lines)
        method = (await self._user_details(state, step))["payment_methods"][self.payment_id]
        return await self._propose(
            state, step,
            {"order_id": self.order_id, "item_ids": [items[index]["item_id"] for index in self.lines],
             "payment_method_id": self.payment_id},
            f"To confirm: I will return {self._items_read_out()} from order {self.order_id}, and refund "
            f"{money(total)} to {describe_method(method)}. You will get an e-mail about how and where to send the items back.")

    async def _choose_refund(self, state: CallState, step: FlowStep) -> FlowStep | None:
        """Where the refund goes: the original payment method or one of the caller's gift cards."""
        methods = (await self._user_details(state, step)).get("payment_methods", {})
        original = self._original_payment()
        allowed = [original] * (original in methods) + [
            method_id for method_id, method in methods.items() if method.get("source") == "gift_card" and method_id != original]
        said = self._payment_heard(methods, original)
        if said and said not in allowed:
            if said == self.refused_payment:
                step.say, step.done = self._policy_says("refund_to_original_or_gift_card"), True
                return step
            self.payment_heard_from, self.payment_id, self.refused_payment = len(self.heard), None, said
            return self._ask(step, "refund method", "A refund can only go to the original payment method or to a gift card. "
                                                    + self._refund_question(methods, allowed))
        self.payment_id = said or (allowed[0] if len(allowed) == 1 else None)
        if self.payment_id:
            return None
        if not allowed:
            step.say = "I cannot find the payment method this order was paid with. Let me put you through to a colleague."
            step.done, step.escalate = True, "return: no refund method"
            return step
        return self._ask(step, "refund method", self._refund_question(methods, allowed))

    def _refund_question(self, methods: dict, allowed: list[str]) -> str:
        original = self._original_payment()
        choices = [describe_method(methods[method_id]) + (" (the original payment method)" if method_id == original else "")
                   for method_id in allowed]
        return f"Where should the refund go: {join_words(choices, 'or')}?"

    def _corrected(self, utterance: str, replace: bool) -> bool:
        changed = self._items_corrected(utterance, replace)
        methods = (self._user or {}).get("payment_methods", {})
        method_id = payment_said(utterance, methods, self._original_payment())
        if method_id and method_id != self.payment_id:
            self.payment_heard_from, self.payment_id, changed = len(self.heard), None, True
        return changed

    def _done(self, result: dict) -> str:
        return (f"Done: the return of {self._items_read_out()} from order {self.order_id} is requested. "
                "You will get an e-mail about how and where to send the items back.")


class ExchangeItemsFlow(ItemsFlow):
    """Exchange items of a delivered order for other options of the same products, or change the items
    of a pending order (the policy's "modify items"): the order, which items, the new option of each
    (matched against the product's available variants, asking for what is missing), the payment method
    for the price difference, a read-back with the difference, explicit yes, then the change."""

    name = "exchange_items"
    acts_on = ("delivered", "pending")
    nothing_done = "All right, I have not changed anything."

    def __init__(self, registry: ToolRegistry) -> None:
        super().__init__(registry)
        self.wanted: dict[int, dict[str, str]] = {}  # line -> the options the caller wants changed
        self.new_items: dict[int, dict] = {}  # line -> the variant chosen for it
        self.asking: int | None = None  # the line whose new options were asked for last
        self.offered: list[dict] = []  # the variants read out then, for "the cheaper one" / "the first one"
        self._products: dict[str, dict] = {}

    @property
    def pending(self) -> bool:
        return (self.order or {}).get("status") == "pending"

    @property
    def tool(self) -> str:  # a pending order's items are modified; a delivered order's are exchanged
        return "modify_pending_order_items" if self.pending else "exchange_delivered_order_items"

    @property
    def verb(self) -> str:
        return "change" if self.pending else "exchange"

    def _new_order(self) -> None:
        super()._new_order()
        self.wanted, self.new_items, self.asking, self.offered = {}, {}, None, []

    async def _next(self, state: CallState, utterance: str, step: FlowStep) -> FlowStep:
        asked = await self._find_order(state, utterance, step)
        if asked:
            return asked
        asked = (self._refuse_unless_status(step, ("delivered", "pending"), "exchange_only_delivered")
                 or self._choose_items(utterance, step))
        for line in self.lines:
            asked = asked or await self._choose_variant(state, line, utterance, step)
        asked = asked or await self._choose_payment(state, step)
        if asked:
            return asked
        items = self.order["items"]
        difference = sum(self.new_items[line]["price"] - items[line]["price"] for line in self.lines)
        method = (await self._user_details(state, step))["payment_methods"][self.payment_id]
        changes = [f"{describe_item(items[line])} for {_new_options_said(items[line], self.new_items[line])}"
                   for line in self.lines]
        once = ("An order's items can be changed only once, and it cannot be cancelled or changed after that"
                if self.pending else "An order can be exchanged only once")
        return await self._propose(
            state, step,
            {"order_id": self.order_id, "item_ids": [items[line]["item_id"] for line in self.lines],
             "new_item_ids": [self.new_items[line]["item_id"] for line in self.lines], "payment_method_id": self.payment_id},
            f"To confirm: in order {self.order_id} I will {self.verb} {join_words(changes)}; "
            f"{'they are' if len(self.lines) > 1 else 'it is'} available. {_difference_said(difference, describe_method(method))} "
            f"{once}: is that everything you want to {self.verb}?")

    async def _choose_variant(self, state: CallState, line: int, utterance: str, step: FlowStep) -> FlowStep | None:
        """The new variant for order line `line`, from the options the caller said (asking for what is missing)."""
        if line in self.new_items:
            return None
        item = self.order["items"][line]
        variants = list((await self._product(state, step, item["product_id"]))["variants"].values())
        if line not in self.wanted:
            # What was said after the item was named ("the mouse to a white one"), or else all of it.
            after = self.about.get(line)
            self._wish(line, variants, after if after is not None else " . ".join(self.heard), after is not None, replace=True)
        elif self.asking == line:  # the answer to the option question
            picked = self._picked_from_offer(utterance)
            if picked:
                self.new_items[line] = picked
            else:
                after = items_said(utterance, self.order["items"]).about.get(line)
                # "... instead" / "changed my mind": the new options replace the ones wanted so far.
                self._wish(line, variants, after if after is not None else utterance, after is not None,
                           replace=bool(CHANGED_MIND.search(utterance)))
        if line in self.new_items:
            self.asking = None
            return None
        matching = matching_variants(item, variants, self.wanted[line])
        if len(matching) == 1:
            self.new_items[line], self.asking = matching[0], None
            return None
        self.asking = line
        return self._ask_options(step, line, item, variants, matching)

    def _wish(self, line: int, variants: list[dict], text: str, after_name: bool, replace: bool) -> bool:
        """Take the options the caller wants for `line` from `text`; True when that changed anything.

        "The same options as before" with no option named is the same item again (a line may be
        changed to itself, and is then left as it is).
        """
        item = self.order["items"][line]
        said = wanted_options(item["options"], variants, text, after_name)
        if not said and SAME_OPTIONS.search(normalise(text)):
            same = next((variant for variant in variants if variant["item_id"] == item["item_id"]), None)
            if same and self.new_items.get(line) is not same:
                self.wanted[line], self.new_items[line] = {}, same
                return True
            return False
        wanted = said if replace or line not in self.wanted else {**self.wanted[line], **said}
        if not said or wanted == self.wanted.get(line):
            self.wanted.setdefault(line, wanted)
            return False
        self.wanted[line] = wanted
        self.new_items.pop(line, None)
        return True

    def _ask_options(self, step: FlowStep, line: int, item: dict, variants: list[dict], matching: list[dict]) -> FlowStep:
        """Read out the options that fit what the caller wants (or what there is), and ask which."""
        wanted = self.wanted[line]
        self.offered = matching
        available = [variant for variant in variants if variant["available"] and variant["item_id"] != item["item_id"]]
        if not available:
            step.say, step.done = f"Sorry, there is no other option of the {item['name']} available.", True
            return step
        if matching:
            varying = varying_options(matching)
            if len(matching) <= 4:
                choices = [f"{describe_options(variant['options'], varying)} ({money(variant['price'])})" for variant in matching]
            else:
                key = next(iter(varying))
                choices = [f"{key} {value}" for value in varying[key]]
            question = f"The {item['name']} with {describe_options(wanted)} comes with {join_words(choices, 'or')}."
            return self._ask(step, f"options {line}", question + " Which option would you like?")
        choices = ("; ".join(f"{key}: {', '.join(values)}" for key, values in varying_options(available).items())
                   or describe_options(available[0]["options"]))  # one variant left: all of its options
        lead = (f"Sorry, the {item['name']} is not available with {describe_options(wanted)}. " if wanted else
                f"What would you like instead of {describe_item(item)}? ")
        return self._ask(step, f"options {line}", f"{lead}It is available with {choices}. Which options would you like?")

    def _picked_from_offer(self, utterance: str) -> dict | None:
        """The offered variant the caller picks: "the cheaper one", "the first one", or by its options."""
        offered = self.offered
        if not offered:
            return None
        said = normalise(utterance)
        if CHEAPEST.search(said):
            return min(offered, key=lambda variant: variant["price"])
        ordinal = ORDINAL.search(said)
        if ordinal and ORDINALS[ordinal.group(1)] < len(offered):
            return offered[ORDINALS[ordinal.group(1)]]
        picked = {(key, value) for _, key, value in option_values_said(said, varying_options(offered))}
        fits = [variant for variant in offered if picked and all(variant["options"].get(key) == value for key, value in picked)]
        return fits[0] if len(fits) == 1 else None

    async def _product(self, state: CallState, step: FlowStep, product_id: str) -> dict:
        if product_id not in self._products:
            self._products[product_id] = await call_tool(self.registry, state, step, "get_product_details",
                                                         {"product_id": product_id})
        return self._products[product_id]

    async def _choose_payment(self, state: CallState, step: FlowStep) -> FlowStep | None:
        """The caller's payment method for the price difference (theirs alone when they have one)."""
        methods = (await self._user_details(state, step)).get("payment_methods", {})
        self.payment_id = self._payment_heard(methods, self._original_payment()) or (
            next(iter(methods)) if len(methods) == 1 else None)
        if self.payment_id and self.payment_id == self.refused_payment:
            step.say, step.done = self._policy_says("gift_card_balance_sufficient"), True
            return step
        if self.payment_id:
            return None
        if not methods:
            step.say = "I cannot find a payment method on your account. Let me put you through to a colleague."
            step.done, step.escalate = True, "exchange: no payment method"
            return step
        items = self.order["items"]
        difference = sum(self.new_items[line]["price"] - items[line]["price"] for line in self.lines)
        choices = [describe_method(method) for method in methods.values()]
        return self._ask(step, "payment method", f"{_difference_said(difference, '')} Which payment method would you like to "
                                                 f"use for it: {join_words(choices, 'or')}?")

    def _refused(self, failure: ToolFailure, step: FlowStep) -> FlowStep:
        if failure.rule == "gift_card_balance_sufficient" and self.payment_id != self.refused_payment:
            # Another of the caller's methods may do; the same one again ends the flow with the refusal.
            self.payment_heard_from, self.refused_payment, self.payment_id = len(self.heard), self.payment_id, None
            return self._ask(step, "payment method", "Your gift card's balance does not cover the price difference. "
                                                     "Which other payment method would you like to use?")
        return super()._refused(failure, step)

    def _corrected(self, utterance: str, replace: bool) -> bool:
        changed = self._items_corrected(utterance, replace)
        items, about = self.order["items"], items_said(utterance, self.order["items"]).about
        for line in self.lines:
            if line in self.wanted:
                variants = list(self._products[items[line]["product_id"]]["variants"].values())
                # A new wish replaces the old one ("I'd like the 1.5L glass one instead").
                text = about.get(line, utterance)
                changed = self._wish(line, variants, text, line in about, replace=True) or changed
        methods = (self._user or {}).get("payment_methods", {})
        method_id = payment_said(utterance, methods, self._original_payment())
        if method_id and method_id != self.payment_id:
            self.payment_heard_from, self.payment_id, changed = len(self.heard), None, True
        return changed

    def _done(self, result: dict) -> str:
        if self.pending:
            return f"Done: the items of order {self.order_id} are changed."
        return (f"Done: the exchange for order {self.order_id} is requested. You will get an e-mail about how "
                "to send the items back.")


def _new_options_said(item: dict, new_item: dict) -> str:
    """The new item by what changes: "one with color white, size L ($54.20)", or "the same one again"."""
    changed = [key for key, value in new_item["options"].items() if item["options"].get(key) != value]
    if not changed:
        return f"the same one again ({money(new_item['price'])})"
    return f"one with {describe_options(new_item['options'], changed)} ({money(new_item['price'])})"


def _difference_said(difference: float, method: str) -> str:
    """The price difference and who pays it: "You pay the difference of $12.00 with your PayPal account."."""
    if abs(difference) < 0.005:
        return "There is no price difference."
    with_method = f" with {method}" if method else ""
    if difference > 0:
        return f"You pay the difference of {money(difference)}{with_method}."
    to_method = f" to {method}" if method else ""
    return f"We refund the difference of {money(-difference)}{to_method}."


class ChangeAddressFlow(OrderChangeFlow):
    """Change the shipping address of a pending order, or the caller's default address: which one, the
    new US address (street, apartment or suite, city, state, zip), a read-back, explicit yes, the change."""

    name = "change_address"
    acts_on = ("pending",)
    nothing_done = "All right, I have not changed the address."

    def __init__(self, registry: ToolRegistry) -> None:
        super().__init__(registry)
        self.target: str | None = None  # "order" (a pending order's shipping address) or "default"
        self.address: PostalAddress | None = None

    @property
    def tool(self) -> str:
        return "modify_pending_order_address" if self.target == "order" else "modify_user_address"

    async def _next(self, state: CallState, utterance: str, step: FlowStep) -> FlowStep:
        self.target = self.target or address_target(utterance)
        self.address = postal_address(utterance) or self.address
        if not self.target:
            return self._ask(step, "which address", "Is it the shipping address of an order you would like to change, "
                                                    "or the default address on your account?")
        if self.target == "order":
            asked = (await self._find_order(state, utterance, step)
                     or self._refuse_unless_status(step, ("pending",), "modify_only_pending"))
            if asked:
                return asked
        which = f"shipping address of order {self.order_id}" if self.target == "order" else "default address"
        if not self.address:
            return self._ask(step, "address", f"What is the new {which}? Please tell me the street and number, any "
                                              "apartment or suite, the city, the state and the zip code.")
        address = self.address
        arguments = {"address1": address.address1, "address2": address.address2, "city": address.city,
                     "state": address.state, "country": address.country, "zip": address.zip}
        if self.target == "order":
            arguments["order_id"] = self.order_id
        return await self._propose(state, step, arguments,
                                   f"To confirm: I will change the {which} to {address.one_line()}, {address.country}.")

    def _corrected(self, utterance: str, replace: bool) -> bool:
        address = postal_address(utterance)
        if address and address != self.address:
            self.address = address
            return True
        return False

    def _done(self, result: dict) -> str:
        which = f"the shipping address of order {self.order_id}" if self.target == "order" else "your default address"
        return f"Done: {which} is now {self.address.one_line()}."


def address_target(utterance: str) -> str | None:
    """Which address the caller means: "order" (an order's shipping address), "default", or None."""
    text = utterance.lower()
    if extract_order_id(utterance):
        return "order"
    if re.search(r"\b(?:default|profile|account|home|billing|mailing|on file|user)\b", text):
        return "default"
    if re.search(r"\b(?:shipping|delivery|deliver|ship|package|parcel|order)\b", text):
        return "order"
    return None


def postal_address(utterance: str) -> PostalAddress | None:
    """The new address in what the caller said (order numbers left out, which a parser takes for house numbers)."""
    return extract_postal_address(ORDER_ID_WORDS.sub(" ", utterance))


def cancel_reason(utterance: str) -> str | None:
    """The policy's cancellation reason the caller gave ("no longer needed" / "ordered by mistake"), or None."""
    text = utterance.lower()
    for reason, phrases in CANCEL_REASONS.items():
        if any(phrase in text for phrase in phrases):
            return reason
    return None


RETAIL_FLOWS = LineFlows(VerificationFlow, {flow.name: flow for flow in (
    OrderStatusFlow, CancelOrderFlow, ReturnItemsFlow, ExchangeItemsFlow, ChangeAddressFlow)})
