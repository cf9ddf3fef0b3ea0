"""Task evaluations of the running dialog: `quietline eval retail TASKS.json` and
`quietline eval banking TASKS_DIR` (each with `--json`).

Each tau-bench retail task (a customer instruction plus the gold tool actions) is played as a text
conversation against the real Dialog service over gRPC: a `ScriptedCaller` built from the instruction
alone talks to the bot until one of them ends the call. Before each task the back office is reset to
its loaded export. The task succeeds when the back office's end state equals the state the gold
actions produce (computed first, by replaying them through the same tool adapters, then undone).

Tool precision and recall compare the tool calls the dialog made successfully that change data (from
the call records) with the gold actions, by tool name and order id: arguments are stored redacted,
and item ids (long digit runs) do not survive redaction.

Each tau2-bench banking task (a scenario in prose plus gold actions) is played on the dialog's bank
line by a `ScenarioCaller`, against the bank's records freshly loaded before each task. What the
dialog did is read from the records' changes (a verification logged, a replacement ordered, an
e-mail changed, anything else changed) and from how the call ended (a transfer, with its reason), and
compared with the gold actions that are the bank's to take: the customer's own actions (tau2's user
tools) and the agent unlocking its own tools (tau2's discovery step) are not the agent's actions on a
phone line, so a task whose gold is only those is reported as unscored; giving the customer a tool
(so they can act themselves) is the agent's action and is kept. A task succeeds when every gold action was
taken (compared on the gold's `compare_args`, else on all its arguments), nothing else in the records
changed, and no other customer's details (e-mail, phone number, date of birth, street address) were
said to the caller.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg

from quietline.v1 import common_pb2, dialog_pb2, dialog_pb2_grpc
from services.dialog.caller_simulator import ScriptedCaller
from services.dialog.scenario_caller import ScenarioCaller
from services.dialog.tools.adapter import ToolFailure, VerifiedSession
from services.dialog.tools.backoffice import BackofficeStore, load_bank, read_bank_export, reset, state_fingerprint
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


async def converse(stub, call_id: str, caller: ScriptedCaller | ScenarioCaller, service_line: str = "") -> dict:
    """Play one conversation on `service_line` (the dialog's default line when empty); returns the
    turns, how it ended (and the transfer's briefing), the bot's routes and the transcript."""
    text, turns, routes, ended, briefing = caller.opening(), 0, [], "turn limit", None
    transcript: list[tuple[str, str]] = []
    while text is not None and turns < MAX_TURNS:
        turns += 1
        request = dialog_pb2.TurnRequest(call=common_pb2.CallRef(call_id=call_id, turn=turns), transcript=text,
                                         asr_confidence=1.0,
                                         context=dialog_pb2.CallContext(language="en", service_line=service_line))
        started = time.perf_counter()
        events, first_say_ms = [], None
        async for event in stub.Turn(request, timeout=TURN_TIMEOUT_S):
            if first_say_ms is None and event.WhichOneof("event") == "say":
                # The first words the caller would hear (the disclosure or an acknowledgement included).
                first_say_ms = (time.perf_counter() - started) * 1000
            events.append(event)
        latency_ms = (time.perf_counter() - started) * 1000
        bot = " ".join(event.say.text for event in events if event.WhichOneof("event") == "say")
        route = next((event.route for event in events if event.WhichOneof("event") == "route"), None)
        routes.append({"route": route.route if route else "", "reason": route.reason if route else "",
                       "turn_ms": round(latency_ms, 1),
                       "first_say_ms": None if first_say_ms is None else round(first_say_ms, 1)})
        transcript += [("caller", text), ("bot", bot)]
        actions = [event.action for event in events if event.WhichOneof("event") == "action"]
        transfer = next((action for action in actions if action.kind == dialog_pb2.Action.KIND_TRANSFER), None)
        if transfer is not None:
            ended, briefing = "transferred", json.loads(transfer.briefing or "{}")
            break
        actions = [action.kind for action in actions]
        if dialog_pb2.Action.KIND_HANG_UP in actions:
            ended = "bot hung up"
            break
        text = caller.reply(bot)
        if text is None:
            ended = "caller hung up"
    return {"turns": turns, "ended": ended, "routes": routes, "transcript": transcript, "briefing": briefing}


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
                   "first_say_ms": [route["first_say_ms"] for route in conversation["routes"]],
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


# --- tau2-bench banking -------------------------------------------------------------------------------

# Gold actions that are tau2's tool discovery (the agent unlocking its own tool before calling it),
# not something done for the customer. Giving the customer a tool to act themselves is kept: it is
# the agent's help, and a dialog that did not give it missed it.
DISCOVERY_ACTIONS = {"unlock_discoverable_agent_tool"}
# Arguments never compared: free text and the moment of an action.
UNCOMPARED_ARGUMENTS = {"summary", "time_verified"}
# The customer details a leak check looks for in what the bot said.
PII_FIELDS = ("email", "phone_number", "date_of_birth", "address")


def load_banking_tasks(folder: Path | str) -> list[dict]:
    """The tau2-bench banking tasks (task_*.json) in `folder`, in name order; ValueError names the problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"task folder {folder} does not exist: pass the tau2-bench banking tasks folder "
                         "(e.g. ../shared/data/kb/banking/tasks)")
    tasks = []
    for path in sorted(folder.glob("*.json")):
        try:
            task = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"task file {path} is not JSON ({err.msg} at line {err.lineno}): fix or remove it") from None
        if not (isinstance(task, dict) and isinstance(task.get("user_scenario"), dict)
                and "instructions" in task["user_scenario"] and isinstance(task.get("evaluation_criteria"), dict)):
            raise ValueError(f"task file {path} is not a tau2-bench task: it needs user_scenario.instructions and "
                             "evaluation_criteria.actions")
        task.setdefault("id", path.stem)
        tasks.append(task)
    if not tasks:
        raise ValueError(f"task folder {folder} holds no task files (*.json)")
    return tasks


def gold_bank_actions(task: dict) -> list[dict]:
    """The task's gold actions that are the bank's agent's to take, as {name, arguments, compare}."""
    gold = []
    for action in task["evaluation_criteria"].get("actions") or []:
        if action.get("requestor") == "user" or action["name"] in DISCOVERY_ACTIONS:
            continue
        name, arguments = action["name"], dict(action.get("arguments") or {})
        if name == "call_discoverable_agent_tool":
            # tau2 names discoverable tools with a number ("order_replacement_credit_card_7291").
            name = re.sub(r"_\d+$", "", arguments.get("agent_tool_name", ""))
            arguments = json.loads(arguments.get("arguments") or "{}")
        elif name == "give_discoverable_user_tool":
            name = "give the customer " + re.sub(r"_\d+$", "", arguments.get("discoverable_tool_name", ""))
            arguments = {}
        compare = action.get("compare_args")
        keys = [key for key in (compare if compare is not None else arguments) if key not in UNCOMPARED_ARGUMENTS]
        gold.append({"name": name, "arguments": {key: arguments.get(key) for key in keys}})
    return gold


async def bank_snapshot(dsn: str) -> dict[tuple[str, str], dict]:
    """Every bank record, keyed by (collection, record id)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = await (await conn.execute("SELECT collection, record_id, data FROM backoffice.bank_records")).fetchall()
    return {(collection, record_id): data for collection, record_id, data in rows}


def bank_actions(before: dict, after: dict, briefing: dict | None) -> list[dict]:
    """What the dialog did to the bank's records (and a transfer), as actions comparable with the gold."""
    actions = []
    for key in sorted(set(after) - set(before)):
        collection, data = key[0], after[key]
        if collection == "verification_history":
            actions.append({"name": "log_verification", "changes_data": True,
                            "arguments": {k: v for k, v in data.items() if k != "time_verified"}})
        elif collection == "credit_card_orders":
            actions.append({"name": "order_replacement_credit_card", "changes_data": True,
                            "arguments": {k: data.get(k) for k in ("credit_card_account_id", "user_id",
                                                                   "shipping_address", "reason", "expedited_shipping")}})
        else:
            actions.append({"name": f"new {collection} record", "changes_data": True, "arguments": {}})
    for key in sorted(set(after) & set(before)):
        if after[key] == before[key]:
            continue
        collection, old, new = key[0], before[key], after[key]
        if collection == "users" and old.get("email") != new.get("email"):
            actions.append({"name": "change_user_email", "changes_data": True,
                            "arguments": {"user_id": new.get("user_id"), "new_email": new.get("email")}})
        elif collection == "credit_card_accounts" and any(
                a["name"] == "order_replacement_credit_card" and a["arguments"]["credit_card_account_id"] == key[1]
                for a in actions):
            continue  # the replaced card closing is part of the replacement order
        else:
            actions.append({"name": f"changed {collection} record", "changes_data": True, "arguments": {}})
    if briefing is not None:
        actions.append({"name": "transfer_to_human_agents", "changes_data": False,
                        "arguments": {"reason": briefing.get("reason", "")}})
    return actions


def _same(gold_value: Any, value: Any) -> bool:
    return str(gold_value).strip().lower() == str(value).strip().lower()


def match_bank_actions(predicted: list[dict], gold: list[dict]) -> tuple[int, list[dict], list[dict]]:
    """(matches, gold actions not taken, predicted actions no gold action asked for)."""
    unmatched_gold, extra = list(gold), []
    for action in predicted:
        hit = next((g for g in unmatched_gold if g["name"] == action["name"]
                    and all(_same(value, action["arguments"].get(key)) for key, value in g["arguments"].items())), None)
        if hit is None:
            extra.append(action)
        else:
            unmatched_gold.remove(hit)
    return len(predicted) - len(extra), unmatched_gold, extra


def leaked_details(transcript: list[tuple[str, str]], users: dict[str, dict], verified: set[str]) -> list[str]:
    """Which customers' details the bot said that the caller had not said first, other than the details
    of the customer it verified: "user_id:field" for each."""
    caller_said = " ".join(text for speaker, text in transcript if speaker == "caller").lower()
    leaks = []
    for speaker, text in transcript:
        if speaker != "bot":
            continue
        low = text.lower()
        for user_id, user in users.items():
            if user_id in verified:
                continue
            for field_name in PII_FIELDS:
                value = str(user.get(field_name) or "").lower()
                if value and value in low and value not in caller_said:
                    leaks.append(f"{user_id}:{field_name}")
    return sorted(set(leaks))


async def evaluate_banking(tasks: list[dict], dialog_target: str, dsn: str, db_json: Path | str,
                           progress: Callable[[dict], None] | None = None) -> dict:
    """Run every task on the bank line of the dialog at `dialog_target`, reloading `db_json` before each."""
    users = read_bank_export(db_json)["users"]["data"]
    channel = open_channel(dialog_target, TURN_TIMEOUT_S)
    stub = dialog_pb2_grpc.DialogStub(channel)
    run = uuid.uuid4().hex[:8]
    rows: list[dict] = []
    try:
        for index, task in enumerate(tasks):
            await load_bank(dsn, db_json)
            before = await bank_snapshot(dsn)
            call_id = f"eval-bank-{run}-{index}"
            try:
                conversation = await converse(stub, call_id, ScenarioCaller(task["user_scenario"]["instructions"]),
                                              service_line="bank")
                error = ""
            except grpc.aio.AioRpcError as err:
                conversation = {"turns": 0, "ended": "error", "routes": [], "transcript": [], "briefing": None}
                error = err.code().name
            predicted = bank_actions(before, await bank_snapshot(dsn), conversation["briefing"])
            gold = gold_bank_actions(task)
            hits, missed, extra = match_bank_actions(predicted, gold)
            verified = {a["arguments"].get("user_id") for a in predicted if a["name"] == "log_verification"}
            leaks = leaked_details(conversation["transcript"], users, verified)
            scored = bool(gold)
            success = (scored and not missed and not leaks and not any(a["changes_data"] for a in extra))
            row = {"task": task["id"], "scored": scored, "success": success if scored else None,
                   "turns": conversation["turns"], "ended": conversation["ended"],
                   "tool_precision": round(hits / len(predicted), 3) if predicted else None,
                   "tool_recall": round(hits / len(gold), 3) if gold else None,
                   "gold_actions": [g["name"] for g in gold], "dialog_actions": [a["name"] for a in predicted],
                   "missed": [g["name"] for g in missed], "leaks": leaks,
                   "routes": [route["route"] for route in conversation["routes"]],
                   "turn_ms": [route["turn_ms"] for route in conversation["routes"]],
                   "first_say_ms": [route["first_say_ms"] for route in conversation["routes"]], "error": error,
                   "transcript": [f"{speaker}: {text}" for speaker, text in conversation["transcript"]]}
            rows.append(row)
            if progress:
                progress(row)
    finally:
        await channel.close()
    return {"summary": summarise_banking(rows), "tasks": rows}


def summarise_banking(rows: list[dict]) -> dict[str, Any]:
    """The retail summary's figures over the scored tasks, plus unscored tasks and calls that leaked."""
    scored = [row for row in rows if row["scored"]]
    summary = summarise(scored) if scored else {"tasks": 0, "success_rate": None}
    summary.update({"tasks": len(rows), "scored_tasks": len(scored), "unscored_tasks": len(rows) - len(scored),
                    "calls_with_leaks": sum(1 for row in rows if row["leaks"]),
                    "ended": {reason: sum(1 for row in rows if row["ended"] == reason)
                              for reason in {row["ended"] for row in rows}}})
    return summary
