"""How every LLM prompt is laid out: the unchanging front first, so the servers' prefix caches pay off.

Both servers reuse the KV cache of a prompt's front that matches an earlier prompt token for token
(vLLM's automatic prefix caching across all requests; llama.cpp's reuse of the previous prompt and its
RAM state cache). A deployment's system instructions, policy text and tool schemas are the same for
every turn of every call, and they are the largest part of a support prompt, so they go first, in
byte-identical form (tool schemas serialised with sorted keys). The call's history follows, then what
changes every turn: the retrieved passages and the caller's question.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StablePrefix:
    """The front shared by every prompt of a deployment: instructions, policy text, tool schemas."""

    instructions: str
    policy: str = ""
    tools: Sequence[dict] = field(default_factory=tuple)

    def text(self) -> str:
        """The front as one text, identical for identical inputs (tool schemas with sorted keys)."""
        parts = [self.instructions.strip()]
        if self.policy.strip():
            parts.append("Policy:\n" + self.policy.strip())
        if self.tools:
            schemas = "\n".join(json.dumps(tool, sort_keys=True, separators=(",", ":")) for tool in self.tools)
            parts.append("Tools:\n" + schemas)
        return "\n\n".join(parts)


@dataclass(frozen=True)
class Exchange:
    """One earlier turn of the call: what the caller said and what the assistant answered."""

    caller: str
    assistant: str


def assemble_messages(
    prefix: StablePrefix,
    question: str,
    passages: Sequence[str] = (),
    history: Sequence[Exchange] = (),
) -> list[dict]:
    """The chat messages for one turn: the stable front, the call's history, then passages and question.

    Passages are numbered [1], [2], ... in the order given. Earlier turns keep only their words, not
    the passages they were answered from (those would crowd the context window).
    """
    messages: list[dict] = [{"role": "system", "content": prefix.text()}]
    for exchange in history:
        messages.append({"role": "user", "content": exchange.caller})
        messages.append({"role": "assistant", "content": exchange.assistant})
    blocks = [f"[{number}] {text}" for number, text in enumerate(passages, start=1)]
    turn = ("Passages:\n" + "\n\n".join(blocks) + "\n\n" if blocks else "") + f"Question: {question}\nAnswer:"
    messages.append({"role": "user", "content": turn})
    return messages
