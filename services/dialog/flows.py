"""Flows: explicit state machines for the frequent tasks, completed without the LLM. The kit they share.

A flow fills its slots from what the caller says (services.dialog.slots) turn by turn, calls tools
through the registry for the caller's verified session, reads a change back and waits for an explicit
yes before making it, and says plainly when a tool refuses or fails, never inventing a result. Each
turn it returns a `FlowStep`: what to say, whether the flow is finished, whether to hand the caller
to a colleague (and why), and the tool calls it made (for the call records).

Each service line offers its own flows (`LineFlows`: how its callers are verified, and a flow per task
intent): `retail_flows` (a shop's orders) and `bank_flows` (a bank's cards). A flow that needs a
verified caller starts the line's verification first and resumes when it succeeds; the customer id
verification establishes comes from a tool's answer, never from the caller's words or model output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from services.dialog.tools.adapter import (
    FailureKind,
    ToolFailure,
    ToolRegistry,
    VerifiedSession,
)

# Wrong answers allowed before verification gives up and hands over (guessing identities is an attack).
MAX_VERIFICATION_ATTEMPTS = 3
# Turns a flow may ask for the same slot before handing over.
MAX_SLOT_ATTEMPTS = 3


@dataclass
class ToolCallRecord:
    """One tool call a flow made: for the call records and the audit (redacted there)."""

    tool: str
    arguments: dict
    outcome: str  # "ok", or the ToolFailure kind
    error: str = ""
    latency_ms: float = 0.0


@dataclass
class FlowStep:
    """What one caller turn led to inside a flow."""

    say: str
    done: bool = False
    escalate: str = ""  # a reason when the caller goes to a colleague
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    awaiting_confirmation: bool = False


@dataclass
class CallState:
    """What the dialog knows about one call between turns."""

    call_id: str
    session: VerifiedSession
    facts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, call_id: str) -> CallState:
        return cls(call_id, VerifiedSession.anonymous(call_id))


async def call_tool(registry: ToolRegistry, state: CallState, step: FlowStep, name: str, arguments: dict,
                    confirmed: bool = False) -> Any:
    """Invoke a tool for the call's session, recording the call in `step`; re-raises ToolFailure."""
    started = time.perf_counter()
    try:
        result = await registry.invoke(state.session, name, arguments, confirmed=confirmed)
    except ToolFailure as failure:
        step.tool_calls.append(ToolCallRecord(name, arguments, failure.kind.value, failure.message,
                                              (time.perf_counter() - started) * 1000))
        raise
    step.tool_calls.append(ToolCallRecord(name, arguments, "ok", "", (time.perf_counter() - started) * 1000))
    return result


def tool_trouble(failure: ToolFailure) -> FlowStep:
    """What to say when a tool cannot answer: plainly, with a colleague offered, never a made-up result."""
    if failure.kind in (FailureKind.TIMEOUT, FailureKind.UNAVAILABLE, FailureKind.BAD_RESULT):
        return FlowStep("Sorry, I cannot reach our systems right now. Let me put you through to a colleague.",
                        done=True, escalate=f"tool {failure.tool} {failure.kind.value}")
    return FlowStep("Sorry, something went wrong on my side. Let me put you through to a colleague.",
                    done=True, escalate=f"tool {failure.tool} {failure.kind.value}")


def merged_steps(step: FlowStep, other: FlowStep) -> FlowStep:
    """`other`, carrying the tool calls `step` made before it."""
    other.tool_calls = step.tool_calls + other.tool_calls
    return other


@dataclass(frozen=True)
class LineFlows:
    """The flows one service line offers: how its callers are verified, a flow class per task intent,
    and whether requests about the caller's own account that no flow serves are verified and handed
    to a colleague (services.dialog.tool_route.AccountRequestFlow: a read-only tool the LLM chooses,
    else a colleague) rather than answered from the knowledge base."""

    verification: type
    tasks: dict[str, type]
    account_handover: bool = False
