"""The per-turn router: which route answers a caller's turn, chosen in cost order, within policy.

For every turn, the first route that applies answers it:

1. **control**: nothing said (or noise), or a control intent recognised without any model: a person
   asked for, goodbye, repeat, a language change, and yes/no to a read-back waiting for one;
2. **policy**: a high-risk topic, frustration or abuse (to a colleague), or a topic never answered;
3. **flow**: the call's active flow, or a new flow the task classifier recognises on the call's service
   line (retail: orders; bank: cards); a flow that needs a verified caller runs verification first. On
   a line with `account_handover`, a request about the caller's own account that no flow serves is
   verified, then answered from a read-only tool the LLM chooses under a JSON-schema constraint
   (services.dialog.tool_route), else handed to a colleague with the verified identity in the briefing;
4. **knowledge**: everything else the classifier places in scope goes to `TurnAnswerer` (retrieval,
   a grounded LLM answer or the extractive one, with citations);
5. **clarify**: out of scope: ask what the caller needs; after `max_no_match_turns` such turns in a
   row, hand over.

The first turn of a call starts with the policy's disclosure (a cached prompt, at once); a later turn
whose route has said nothing by `dialog.first_words_deadline_s` starts with the policy's cached
acknowledgement, and the answer follows. Every turn is stored,
redacted, in the call records with its route and reason, and so is every tool call and escalation,
each with its audit row. Call state lives in this process, keyed by call id (bounded; the oldest
calls are forgotten first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from quietline.v1 import dialog_pb2
from services.dialog.answering import NO_SPEECH_PROMPT, TurnAnswerer, route_event, say_event
from services.dialog.flows import CallState, FlowStep, LineFlows
from services.dialog.intents import IntentClassifier, match_control, mentions_own_account
from services.dialog.policy import PolicyRules
from services.dialog.records import CallRecords
from services.dialog.slots import parse_dtmf
from services.dialog.tool_route import AccountRequestFlow, LlmToolRoute
from services.dialog.tools.adapter import ToolRegistry, VerificationLevel
from services.kit.config import QuietLineSettings
from services.kit.metrics import ERRORS, STAGE_LATENCY

log = logging.getLogger("quietline.dialog.router")

# Calls whose state is kept; a longer-idle call's state is dropped first.
MAX_CALLS_REMEMBERED = 10_000
GOODBYE_PROMPT = "Thank you for calling. Goodbye."
TRANSFER_PROMPT = "Please hold while I transfer you to a colleague."
CLARIFY_PROMPT = ("Sorry, I am not sure I can help with that. I can help with your orders, cancellations "
                  "and questions about our services. What would you like to do?")
ONLY_ENGLISH_PROMPT = ("I can only speak English on this line. If you would like to speak another language, "
                       "say agent and I will put you through to a colleague.")
ANYTHING_ELSE = " Is there anything else I can help with?"
# The acknowledgement leaves this long before the deadline: its way to the caller (the gRPC hop, the
# gateway, the cached audio's first frame) must fit inside the deadline too.
ACKNOWLEDGEMENT_LEAD_S = 0.05
BAD_KEYS_PROMPT = "Sorry, I did not get those keys. Please key them again, then the hash key."
# "I don't want to cancel it": the task classifier reads embeddings, which ignore negation, so a
# negated flow verb must not start that flow.
NEGATED_REQUEST = re.compile(
    r"\b(?:don't|do not|dont|doesn't|does not|didn't|did not|not|never|no need to)\b(?:\s+\w+){0,3}?\s+"
    r"(?:cancel|cancell\w*|return|exchange|change|check)\b", re.IGNORECASE)
# The routes TurnAnswerer decides (it ends its own turns).
ANSWERER_ROUTES = ("llm", "faq", "fallback")
# TurnAnswerer's reasons for finding nothing to say (as opposed to failing to look).
NO_MATCH_REASONS = ("no matching passage", "no passages")


@dataclass(frozen=True)
class ServiceLine:
    """One phone line's business: the flows it offers and the tools they may call."""

    flows: LineFlows
    tools: ToolRegistry
    # The knowledge collections this line's callers are answered from (None: dialog.knowledge_collections).
    collections: list[str] | None = None


@dataclass
class CallMemory:
    """One call's state between turns."""

    state: CallState
    line: ServiceLine
    flow: object | None = None  # the active flow
    resume_after_verification: tuple[object, str] | None = None  # (flow, the request that started it)
    last_said: str = ""
    last_heard: str = ""  # the caller's last words: for the colleague's briefing only (never logged)
    request: str = ""  # the words that started the current task: for the briefing only (never logged)
    empty_turns: int = 0
    no_match_turns: int = 0
    disclosed: bool = False
    routes: list[str] = field(default_factory=list)
    intent: str = ""


@dataclass
class _Turn:
    """What one turn said and did, for its record."""

    route: str = ""
    reason: str = ""
    says: list[str] = field(default_factory=list)
    tool_calls: list = field(default_factory=list)
    escalation: dict | None = None
    hang_up: bool = False
    acknowledged: bool = False  # the cached acknowledgement went first: the route missed the deadline
    answer_say_s: float | None = None  # when the route's own first words were ready


class TurnRouter:
    """Routes every caller turn; one instance serves all calls of a dialog process."""

    def __init__(self, settings: QuietLineSettings, answerer: TurnAnswerer, policy: PolicyRules,
                 classifier: IntentClassifier, lines: dict[str, ServiceLine], records: CallRecords,
                 tool_route: LlmToolRoute | None = None) -> None:
        if settings.dialog.line not in lines:
            raise ValueError(f"dialog.line {settings.dialog.line!r} is not a line this dialog offers "
                             f"({', '.join(sorted(lines))}): set dialog.line to one of them")
        self.settings = settings
        self.answerer = answerer
        self.policy = policy
        self.classifier = classifier
        self.lines = lines
        self.records = records
        self.tool_route = tool_route
        self.calls: OrderedDict[str, CallMemory] = OrderedDict()

    def _memory(self, call_id: str, service_line: str) -> CallMemory:
        memory = self.calls.get(call_id)
        if memory is None:
            # The gateway names the number's line; an unknown or empty name gets the default line.
            line = self.lines.get(service_line) or self.lines[self.settings.dialog.line]
            memory = self.calls[call_id] = CallMemory(CallState.new(call_id), line)
            while len(self.calls) > MAX_CALLS_REMEMBERED:
                self.calls.popitem(last=False)
        self.calls.move_to_end(call_id)
        return memory

    async def turn(self, request: dialog_pb2.TurnRequest, budget_s: float | None = None
                   ) -> AsyncIterator[dialog_pb2.TurnEvent]:
        """The events of one turn: a RouteDecision, Say events, at most one Action; end_of_turn last.

        The caller never waits in silence past `dialog.first_words_deadline_s`: a call's first turn
        starts with the disclosure at once, and a later turn whose route has said nothing by the
        deadline gets the policy's cached acknowledgement first.
        """
        started = time.perf_counter()
        call_id = request.call.call_id
        memory = self._memory(call_id, request.context.service_line)
        record = _Turn()
        first_turn = not memory.disclosed
        deadline_s = max(self.settings.dialog.first_words_deadline_s - ACKNOWLEDGEMENT_LEAD_S, 0.0)
        first_say_s: float | None = None
        if first_turn:
            memory.disclosed = True
            first_say_s = time.perf_counter() - started
            yield say_event(self.policy.policy.disclosure, cached=True)
        events = self._route(request, memory, record, budget_s)
        pending: dialog_pb2.TurnEvent | None = None
        # The route runs ahead in its own task so the deadline can pass while it works.
        next_event = asyncio.ensure_future(anext(events, None))
        try:
            while True:
                if first_say_s is None:
                    left_s = deadline_s - (time.perf_counter() - started)
                    done, _ = await asyncio.wait({next_event}, timeout=max(left_s, 0.0))
                    if not done:
                        record.acknowledged = True
                        first_say_s = time.perf_counter() - started
                        yield say_event(self.policy.policy.acknowledgement, cached=True)
                event = await next_event
                if event is None:
                    break
                next_event = asyncio.ensure_future(anext(events, None))
                if event.HasField("route"):
                    record.route, record.reason = event.route.route, event.route.reason
                    memory.routes.append(record.route)
                    yield event
                    continue
                if event.HasField("say"):
                    record.says.append(event.say.text)
                    if record.answer_say_s is None:
                        record.answer_say_s = time.perf_counter() - started
                    if first_say_s is None:
                        first_say_s = record.answer_say_s
                if record.route in ANSWERER_ROUTES:
                    # TurnAnswerer marks its own last event; passing its sentences on at once keeps the
                    # first words as early as the LLM streams them.
                    yield event
                    continue
                # The router's own routes are instant: hold each event back by one so the last one
                # carries end_of_turn.
                if pending is not None:
                    yield pending
                pending = event
            if pending is not None:
                pending.end_of_turn = True
                yield pending
        finally:
            if not next_event.done():
                next_event.cancel()
                await asyncio.gather(next_event, return_exceptions=True)
            await events.aclose()
        if first_say_s is not None:
            STAGE_LATENCY.labels("dialog", "first_say").observe(first_say_s)
        if record.acknowledged:
            STAGE_LATENCY.labels("dialog", "acknowledged_answer").observe(record.answer_say_s or 0.0)
        if record.says:
            memory.last_said = " ".join(record.says)
        turn_s = time.perf_counter() - started
        STAGE_LATENCY.labels("dialog", "turn").observe(turn_s)
        STAGE_LATENCY.labels("dialog", f"turn_{record.route or 'none'}").observe(turn_s)
        # Recorded after the last event went out: storage (redaction, two writes) never delays the caller.
        await self._store(request, record, turn_s, first_say_s, first_turn)

    async def _route(self, request: dialog_pb2.TurnRequest, memory: CallMemory, record: _Turn,
                     budget_s: float | None) -> AsyncIterator[dialog_pb2.TurnEvent]:
        text = " ".join(request.transcript.split())
        keyed = request.context.dtmf.strip()
        if keyed:
            try:
                keyed = parse_dtmf(keyed).digits
            except ValueError:
                yield route_event("control", "keypad input not understood")
                yield say_event(BAD_KEYS_PROMPT)
                return
        if not text and not keyed:
            memory.empty_turns += 1
            if memory.empty_turns >= self.policy.policy.escalation.max_empty_turns:
                async for event in self._escalate(memory, record, "no speech", "Sorry, I cannot hear you."):
                    yield event
                return
            yield route_event("control", "no speech")
            yield say_event(NO_SPEECH_PROMPT, cached=True)
            return
        memory.empty_turns = 0
        utterance = text or keyed
        memory.last_heard = utterance

        match = self.policy.screen(text)
        if match and match.escalate:
            async for event in self._escalate(memory, record, f"{match.rule} {match.topic}".strip(), match.say):
                yield event
            return

        control = match_control(text) if text else None
        intent = control.intent if control else "none"
        awaiting_yes_no = getattr(memory.flow, "confirming", False)
        if intent == "agent" and self.policy.policy.escalation.on_explicit_request:
            async for event in self._escalate(memory, record, "caller asked for a person", ""):
                yield event
            return
        if intent == "goodbye" and not awaiting_yes_no:
            record.hang_up = True
            yield route_event("control", "goodbye")
            yield say_event(GOODBYE_PROMPT, cached=True)
            yield dialog_pb2.TurnEvent(action=dialog_pb2.Action(kind=dialog_pb2.Action.KIND_HANG_UP))
            return
        if intent == "repeat" and memory.last_said:
            yield route_event("control", "repeat")
            yield say_event(memory.last_said)
            return
        if intent == "language" and control.language not in (None, "en"):
            yield route_event("control", f"language change to {control.language}")
            yield say_event(ONLY_ENGLISH_PROMPT)
            return
        if match:  # a topic never answered: say so, offer more help, stay on the line
            yield route_event("policy", f"never answer {match.topic}")
            yield say_event(match.say + ANYTHING_ELSE)
            return

        if memory.flow is not None:
            async for event in self._continue_flow(memory, record, utterance, intent):
                yield event
            return

        decision = await asyncio.to_thread(self.classifier.classify, text) if text else None
        task = decision.intent if decision else "out_of_scope"
        memory.intent = task if task != "out_of_scope" else memory.intent
        flows, tools = memory.line.flows, memory.line.tools
        if task in flows.tasks and NEGATED_REQUEST.search(text):
            task = "account_question"  # talked about, not asked for: let the knowledge base answer
        handover = (flows.account_handover and task not in flows.tasks and task != "out_of_scope"
                    and mentions_own_account(text))
        if task in flows.tasks or handover:
            label = f"{task}, no flow: account request" if handover else task
            memory.no_match_turns = 0
            memory.request = utterance
            flow = AccountRequestFlow(tools, self.tool_route) if handover else flows.tasks[task](tools)
            if memory.state.session.level < VerificationLevel.VERIFIED:
                memory.resume_after_verification = (flow, utterance)
                memory.flow = flows.verification(tools)
                yield route_event("flow", f"{label}: verification first")
                step = await memory.flow.step(memory.state, utterance)
                async for event in self._flow_events(memory, record, step, opening=memory.flow.opening()):
                    yield event
                return
            memory.flow = flow
            async for event in self._continue_flow(memory, record, utterance, intent, announce=label):
                yield event
            return
        # Everything else, in scope or not, may be in the knowledge base; a miss is a no-match turn.
        answer = self.answerer.answer(request, budget_s, memory.line.collections)
        try:
            first = await anext(answer, None)
            if first is not None and first.route.route == "fallback" and first.route.reason in NO_MATCH_REASONS:
                memory.no_match_turns += 1
                if memory.no_match_turns >= self.policy.policy.escalation.max_no_match_turns:
                    async for event in self._escalate(memory, record, "repeated no-match",
                                                      "Sorry, I cannot help with that myself."):
                        yield event
                    return
                yield route_event("clarify", f"{first.route.reason}; intent {task}")
                yield say_event(CLARIFY_PROMPT)
                return
            memory.no_match_turns = 0
            if first is not None:
                yield first
            async for event in answer:
                if event.HasField("action") and event.action.kind == dialog_pb2.Action.KIND_TRANSFER:
                    briefing = self._briefing(memory, record.reason or "knowledge could not answer")
                    record.escalation = {"reason": record.reason or "knowledge could not answer", "briefing": briefing}
                    event.action.briefing = json.dumps(briefing)
                yield event
        finally:
            await answer.aclose()

    async def _continue_flow(self, memory: CallMemory, record: _Turn, utterance: str, intent: str,
                             announce: str = "") -> AsyncIterator[dialog_pb2.TurnEvent]:
        flow = memory.flow
        yield route_event("flow", announce or getattr(flow, "name", "flow"))
        if isinstance(flow, memory.line.flows.verification):
            step = await flow.step(memory.state, utterance)
        else:
            step = await flow.step(memory.state, utterance, intent)
        async for event in self._flow_events(memory, record, step):
            yield event

    async def _flow_events(self, memory: CallMemory, record: _Turn, step: FlowStep, opening: str = ""
                           ) -> AsyncIterator[dialog_pb2.TurnEvent]:
        record.tool_calls += step.tool_calls
        if step.escalate:
            memory.flow = memory.resume_after_verification = None
            async for event in self._escalate(memory, record, step.escalate, step.say, announce=False):
                yield event
            return
        say = step.say if step.say or not opening else opening
        if step.done:
            memory.flow = None
            resume = memory.resume_after_verification
            if resume and memory.state.session.level >= VerificationLevel.VERIFIED:
                memory.resume_after_verification = None
                memory.flow, request_text = resume
                follow = await memory.flow.step(memory.state, request_text, "none")
                yield say_event(say)
                async for event in self._flow_events(memory, record, follow):
                    yield event
                return
            say += "" if step.awaiting_confirmation else ANYTHING_ELSE
        yield say_event(say)

    async def _escalate(self, memory: CallMemory, record: _Turn, reason: str, say: str, announce: bool = True
                        ) -> AsyncIterator[dialog_pb2.TurnEvent]:
        """Hand the caller to a colleague with a briefing (stored and retrievable by call id)."""
        briefing = self._briefing(memory, reason)
        record.escalation = {"reason": reason, "briefing": briefing}
        memory.flow = memory.resume_after_verification = None
        if announce:
            yield route_event("human", reason)
        if say:
            yield say_event(say)
        yield say_event(TRANSFER_PROMPT, cached=True)
        yield dialog_pb2.TurnEvent(action=dialog_pb2.Action(
            kind=dialog_pb2.Action.KIND_TRANSFER, target=self.settings.dialog.transfer_target,
            briefing=json.dumps(briefing)))

    def _briefing(self, memory: CallMemory, reason: str) -> dict:
        """What the colleague needs: who (if verified), what the caller wanted, what was tried, why."""
        session = memory.state.session
        return {
            "call_id": memory.state.call_id,
            "verified_customer": session.customer_id if session.level >= VerificationLevel.VERIFIED else None,
            "verification_method": session.method or None,
            "intent": memory.intent or None,
            "reason": reason,
            "routes_tried": memory.routes[-6:],
            "caller_request": memory.request or None,
            "caller_said_last": memory.last_heard or None,
            "last_said_by_assistant": memory.last_said or None,
            "suggested_next_step": _next_step(reason, memory.intent),
        }

    async def _store(self, request: dialog_pb2.TurnRequest, record: _Turn, turn_s: float,
                     first_say_s: float | None, first_turn: bool) -> None:
        """The call's start (on its first turn), the turn, its tool calls and any escalation, in the call
        records (redacted there)."""
        call_id, number = request.call.call_id, request.call.turn
        if first_turn:
            try:
                await self.records.start_call(call_id, service_line=request.context.service_line,
                                              language=request.context.language)
            except Exception as err:  # noqa: BLE001 - e.g. the call began before a restart; keep answering
                ERRORS.labels("dialog", "records_failed").inc()
                log.warning("call start not recorded", extra={"call_id": call_id, "error": type(err).__name__})
        try:
            await self.records.record_turn(
                call_id, number, caller_text=request.transcript, bot_text=" ".join(record.says),
                route=record.route or "none", reason=record.reason,
                timings={"turn_ms": round(turn_s * 1000, 1),
                         "first_say_ms": None if first_say_s is None else round(first_say_s * 1000, 1),
                         "answer_say_ms": None if record.answer_say_s is None else round(record.answer_say_s * 1000, 1),
                         "acknowledged": record.acknowledged})
            for call in record.tool_calls:
                await self.records.record_tool_call(call_id, number, tool=call.tool, arguments=call.arguments,
                                                    outcome=call.outcome, error=call.error,
                                                    latency_ms=round(call.latency_ms, 1))
            if record.escalation:
                await self.records.record_escalation(call_id, number, reason=record.escalation["reason"],
                                                     briefing=record.escalation["briefing"],
                                                     target=self.settings.dialog.transfer_target)
            if record.hang_up:
                await self.records.end_call(call_id, end_reason="caller said goodbye")
        except Exception as err:  # noqa: BLE001 - a storage fault must not end the call; it is counted
            ERRORS.labels("dialog", "records_failed").inc()
            log.error("turn not recorded", extra={"call_id": call_id, "turn": number, "error": type(err).__name__})


def _next_step(reason: str, intent: str) -> str:
    if reason.startswith("high_risk fraud"):
        return "check recent transactions with the caller and block the card if needed"
    if reason.startswith("verification failed"):
        return "verify the caller by your own procedure before discussing any account"
    if intent:
        return f"help the caller with: {intent.replace('_', ' ')}"
    return "ask the caller what they need"
