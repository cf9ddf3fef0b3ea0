"""Task evaluations of the running dialog: `quietline eval retail TASKS.json [--json]`.

Each tau-bench retail task (a customer instruction plus the gold tool actions) is played as a text
conversation against the real Dialog service over gRPC: a `ScriptedCaller` built from the instruction
alone talks to the bot until one of them ends the call. Before each task the back office is reset to
its loaded export. The task succeeds when the back office's end state equals the state the gold
actions produce (computed first, by replaying them through the same tool adapters, then undone).

Tool precision and recall compare the tool calls the dialog made successfully that change data (from
the call records) with the gold actions, by tool name and order id: arguments are stored redacted,
and item ids (long digit runs) do not survive redaction.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg

from quietline.v1 import common_pb2, dialog_pb2, dialog_pb2_grpc
from services.dialog.caller_simulator import ScriptedCaller
from services.dialog.tools.adapter import ToolFailure, VerifiedSession
from services.dialog.tools.backoffice import BackofficeStore, reset, state_fingerprint
from services.dialog.tools.retail import retail_registry
from services.kit.channels import open_channel

# Gold actions that are not back-office changes (the dialog hands over with an Action, not a tool).
NOT_TOOLS = {"transfer_to_human_agents"}
MAX_TURNS = 30
TURN_TIMEOUT_S = 60.0


def load_retail_tasks(path: Path | str) -> list[dict]:
    """The tasks of a tau-bench retail task file; ValueError names what is wrong with it."""
    path = Path(path)
    try:
        tasks = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"task file {path} does not exist: pass a tau-bench retail task file (e.g. tasks_dev.json)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"task file {path} is not JSON ({err.msg} at line {err.lineno}): fix or replace it") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "instruction" in t and "actions" in t
                                              for t in tasks):
        raise ValueError(f"task file {path} must be a list of tasks with 'instruction' and 'actions' "
                         "(the tau-bench retail format)")
    return tasks


async def gold_fingerprint(dsn: str, registry, task: dict) -> tuple[str, list[str]]:
    """The back office's state after the task's gold actions (then reset), and the actions refused."""
    session = VerifiedSession.verified("gold", task["user_id"], "gold")
    refused = []
    for action in task["actions"]:
        if action["name"] in NOT_TOOLS:
            continue
        try:
            await registry.invoke(session, action["name"], action["kwargs"], confirmed=True)
        except ToolFailure as failure:
            refused.append(f"{action['name']}: {failure.kind.value}")
    fingerprint = await state_fingerprint(dsn)
    await reset(dsn)
    return fingerprint, refused


async def converse(stub, call_id: str, caller: ScriptedCaller) -> dict:
    """Play one conversation; returns the turns, how it ended and the bot's routes."""
    text, turns, routes, ended = caller.opening(), 0, [], "turn limit"
    transcript: list[tuple[str, str]] = []
    while text is not None and turns < MAX_TURNS:
        turns += 1
        request = dialog_pb2.TurnRequest(call=common_pb2.CallRef(call_id=call_id, turn=turns), transcript=text,
                                         asr_confidence=1.0, context=dialog_pb2.CallContext(language="en"))
        started = time.perf_counter()
        events = [event async for event in stub.Turn(request, timeout=TURN_TIMEOUT_S)]
        latency_ms = (time.perf_counter() - started) * 1000
        bot = " ".join(event.say.text for event in events if event.WhichOneof("event") == "say")
        route = next((event.route for event in events if event.WhichOneof("event") == "route"), None)
        routes.append({"route": route.route if route else "", "reason": route.reason if route else "",
                       "turn_ms": round(latency_ms, 1)})
        transcript += [("caller", text), ("bot", bot)]
        actions = [event.action.kind for event in events if event.WhichOneof("event") == "action"]
        if dialog_pb2.Action.KIND_TRANSFER in actions:
            ended = "transferred"
            break
        if dialog_pb2.Action.KIND_HANG_UP in actions:
            ended = "bot hung up"
            break
        text = caller.reply(bot)
        if text is None:
            ended = "caller hung up"
    return {"turns": turns, "ended": ended, "routes": routes, "transcript": transcript}


async def dialog_tool_calls(dsn: str, call_id: str) -> list[tuple[str, str]]:
    """(tool, order id) of the data-changing tool calls the dialog made successfully in a call."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = await (await conn.execute(
            "SELECT tool, arguments FROM dialog.tool_calls WHERE call_id = %s AND outcome = 'ok' ORDER BY id",
            [call_id])).fetchall()
    return [(tool, (arguments or {}).get("order_id", "")) for tool, arguments in rows]


def precision_recall(predicted: list[tuple[str, str]], gold: list[tuple[str, str]]) -> tuple[float | None, float | None]:
    remaining = list(gold)
    hits = 0
    for call in predicted:
        if call in remaining:
            remaining.remove(call)
            hits += 1
    precision = hits / len(predicted) if predicted else None
    recall = hits / len(gold) if gold else None
    return precision, recall


async def evaluate_retail(tasks: list[dict], dialog_target: str, dsn: str,
                          progress: Callable[[dict], None] | None = None) -> dict:
    """Run every task against the dialog at `dialog_target`; the back office must hold the task's export."""
    store = await BackofficeStore.open(dsn)
    registry = retail_registry(store)
    mutating = {name for name in registry.names() if registry.get(name).spec.mutates}
    channel = open_channel(dialog_target, TURN_TIMEOUT_S)
    stub = dialog_pb2_grpc.DialogStub(channel)
    run = uuid.uuid4().hex[:8]
    rows: list[dict] = []
    try:
        for index, task in enumerate(tasks):
            await reset(dsn)
            gold_state, gold_refused = await gold_fingerprint(dsn, registry, task)
            call_id = f"eval-{run}-{index}"
            caller = ScriptedCaller(task["instruction"])
            try:
                conversation = await converse(stub, call_id, caller)
                error = ""
            except grpc.aio.AioRpcError as err:
                conversation, error = {"turns": 0, "ended": "error", "routes": [], "transcript": []}, err.code().name
            end_state = await state_fingerprint(dsn)
            predicted = [call for call in await dialog_tool_calls(dsn, call_id) if call[0] in mutating]
            gold = [(action["name"], action["kwargs"].get("order_id", "")) for action in task["actions"]
                    if action["name"] not in NOT_TOOLS and action["name"] in mutating]
            precision, recall = precision_recall(predicted, gold)
            row = {"task": index, "success": end_state == gold_state, "turns": conversation["turns"],
                   "ended": conversation["ended"], "tool_precision": precision, "tool_recall": recall,
                   "gold_actions": [name for name, _ in gold], "dialog_tool_calls": [name for name, _ in predicted],
                   "routes": [route["route"] for route in conversation["routes"]],
                   "turn_ms": [route["turn_ms"] for route in conversation["routes"]],
                   "gold_refused": gold_refused, "error": error}
            rows.append(row)
            if progress:
                progress(row)
        await reset(dsn)
    finally:
        await channel.close()
        await store.close()
    return {"summary": summarise(rows), "tasks": rows}


def summarise(rows: list[dict]) -> dict[str, Any]:
    """tasks, success_rate, tool_precision, tool_recall (micro-averaged), turns per task."""
    def mean(values):
        values = [value for value in values if value is not None]
        return round(sum(values) / len(values), 3) if values else None

    return {
        "tasks": len(rows),
        "success_rate": mean([1.0 if row["success"] else 0.0 for row in rows]),
        "tool_precision": mean([row["tool_precision"] for row in rows]),
        "tool_recall": mean([row["tool_recall"] for row in rows]),
        "turns_per_task": mean([row["turns"] for row in rows]),
        "ended": {reason: sum(1 for row in rows if row["ended"] == reason) for reason in {row["ended"] for row in rows}},
    }
