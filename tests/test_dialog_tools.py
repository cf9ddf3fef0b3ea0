"""The dialog's tools on a real PostgreSQL back office loaded with tau-bench's retail data.

Every gold action of ../shared/data/retail's tasks is replayed through the adapters, as the task's
verified customer, on a freshly reloaded back office; none may be refused, and the end state must
equal the one tau-bench's environment reaches (a reference model of its state changes, written
below, applied to the same export). Then the refusals the dialog routes on, each from a real
condition: a delivered order, another customer's order, no confirmation, no verification, bad
arguments, a real slow query (pg_sleep) for timeouts and the circuit breaker, a closed pool.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import yaml
from conftest import REPO_ROOT

from services.dialog.tools.adapter import (
    FailureKind,
    ToolConfigError,
    ToolFailure,
    ToolSpec,
    VerificationLevel,
    VerifiedSession,
    load_tool_registry,
)
from services.dialog.tools.backoffice import (
    BackofficeStore,
    BackofficeTool,
    ExportError,
    RetailExport,
    fingerprint_retail,
    load_bank,
    load_retail,
    load_retail_export,
    read_retail_export,
    reset,
    state_fingerprint,
)
from services.dialog.tools.demo_backoffice import demo_export, write_demo_export
from services.dialog.tools.retail import (
    KNOWN_TOOLS,
    retail_registry,
    retail_tools_config,
)

# Gold actions are replayed as the caller's confirmed requests; transfer_to_human_agents is a no-op tool.
DETERMINISM_SAMPLE = 12


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def retail_folder(shared_data: Path) -> Path:
    return shared_data / "retail" / "data"


@pytest.fixture(scope="module")
def retail_export(retail_folder: Path) -> RetailExport:
    return read_retail_export(retail_folder)


@pytest.fixture(scope="module")
def retail_tasks(shared_data: Path) -> list[tuple[str, dict]]:
    tasks = []
    for file_name in ("tasks_dev.json", "tasks_train.json"):
        for index, task in enumerate(json.loads((shared_data / "retail" / file_name).read_text())):
            tasks.append((f"{file_name}[{index}]", task))
    return tasks


@pytest.fixture(scope="module")
async def store(database_dsn: str):
    opened = await BackofficeStore.open(database_dsn)
    yield opened
    await opened.close()


class Shop:
    """The back office loaded with the retail export; `reset` returns it to that export."""

    def __init__(self, export: RetailExport, dsn: str) -> None:
        self.export = export
        self.dsn = dsn

    async def reset(self) -> None:
        if await reset(self.dsn) != "retail":  # a loader test loaded another export since
            await load_retail_export(self.dsn, self.export, "retail")


@pytest.fixture(scope="module")
async def shop(database_dsn: str, store: BackofficeStore, retail_export: RetailExport):
    await load_retail_export(database_dsn, retail_export, "retail")
    return Shop(retail_export, database_dsn)


@pytest.fixture(scope="module")
def tools(store: BackofficeStore):
    return retail_registry(store)


def session_for(user_id: str, call_id: str = "test-call") -> VerifiedSession:
    return VerifiedSession.verified(call_id, user_id, "test")


def first_order(export: RetailExport, status: str, not_user: str | None = None) -> dict:
    return next(order for order in export.orders.values() if order["status"] == status and order["user_id"] != not_user)


async def expect_failure(kind: FailureKind, call) -> ToolFailure:
    with pytest.raises(ToolFailure) as caught:
        await call
    assert caught.value.kind is kind, f"expected {kind.value}, got {caught.value!r}"
    return caught.value


# --- tau-bench's state changes, as a reference model ----------------------------------------------

class TauBenchError(Exception):
    """tau-bench's environment answers this action with "Error: ..." and changes nothing."""


ADDRESS_KEYS = ("address1", "address2", "city", "state", "country", "zip")


def tau_bench_apply(users: dict, orders: dict, products: dict, name: str, kwargs: dict) -> None:
    """Apply one retail action to the data the way tau-bench's environment does (sierra-research/tau-bench,
    tau_bench/envs/retail/tools): its checks first (TauBenchError, nothing changed), then its changes."""
    if name in ("calculate", "think", "transfer_to_human_agents", "find_user_id_by_email", "find_user_id_by_name_zip",
                "get_user_details", "get_order_details", "get_product_details", "list_all_product_types"):
        return
    if name == "modify_user_address":
        users[kwargs["user_id"]]["address"] = {key: kwargs[key] for key in ADDRESS_KEYS}
        return
    order = orders[kwargs["order_id"]]
    methods = users[order["user_id"]]["payment_methods"]

    def check(condition: bool, error: str) -> None:
        if not condition:
            raise TauBenchError(error)

    def price_difference() -> float:
        held = [line["item_id"] for line in order["items"]]
        check(all(kwargs["item_ids"].count(item) <= held.count(item) for item in kwargs["item_ids"]), "item not found")
        check(len(kwargs["item_ids"]) == len(kwargs["new_item_ids"]), "the number of items should match")
        difference = 0.0
        for old_id, new_id in zip(kwargs["item_ids"], kwargs["new_item_ids"]):
            line = next(line for line in order["items"] if line["item_id"] == old_id)
            variants = products[line["product_id"]]["variants"]
            check(new_id in variants and variants[new_id]["available"], "new item not found or available")
            difference += variants[new_id]["price"] - line["price"]
        check(kwargs["payment_method_id"] in methods, "payment method not found")
        return difference

    if name == "cancel_pending_order":
        check(order["status"] == "pending", "non-pending order cannot be cancelled")
        refunds = []
        for payment in order["payment_history"]:
            refunds.append({"transaction_type": "refund", "amount": payment["amount"], "payment_method_id": payment["payment_method_id"]})
            if "gift_card" in payment["payment_method_id"]:
                card = methods[payment["payment_method_id"]]
                card["balance"] = round(card["balance"] + payment["amount"], 2)
        order.update(status="cancelled", cancel_reason=kwargs["reason"])
        order["payment_history"].extend(refunds)
    elif name == "modify_pending_order_address":
        check(order["status"] == "pending", "non-pending order cannot be modified")
        order["address"] = {key: kwargs[key] for key in ADDRESS_KEYS}
    elif name == "modify_pending_order_payment":
        check(order["status"] == "pending", "non-pending order cannot be modified")
        new = kwargs["payment_method_id"]
        check(new in methods, "payment method not found")
        check(len(order["payment_history"]) == 1 and order["payment_history"][0]["transaction_type"] == "payment",
              "there should be exactly one payment for a pending order")
        old, amount = order["payment_history"][0]["payment_method_id"], order["payment_history"][0]["amount"]
        check(new != old, "the new payment method should be different from the current one")
        check(methods[new]["source"] != "gift_card" or methods[new]["balance"] >= amount, "insufficient gift card balance")
        order["payment_history"] += [{"transaction_type": "payment", "amount": amount, "payment_method_id": new},
                                     {"transaction_type": "refund", "amount": amount, "payment_method_id": old}]
        if methods[new]["source"] == "gift_card":
            methods[new]["balance"] = round(methods[new]["balance"] - amount, 2)
        if "gift_card" in old:
            methods[old]["balance"] = round(methods[old]["balance"] + amount, 2)
    elif name == "modify_pending_order_items":
        check(order["status"] == "pending", "non-pending order cannot be modified")
        difference = price_difference()
        method = methods[kwargs["payment_method_id"]]
        check(method["source"] != "gift_card" or method["balance"] >= difference, "insufficient gift card balance")
        order["payment_history"].append({"transaction_type": "payment" if difference > 0 else "refund",
                                         "amount": abs(difference), "payment_method_id": kwargs["payment_method_id"]})
        if method["source"] == "gift_card":
            method["balance"] = round(method["balance"] - difference, 2)
        for old_id, new_id in zip(kwargs["item_ids"], kwargs["new_item_ids"]):
            line = next(line for line in order["items"] if line["item_id"] == old_id)
            variant = products[line["product_id"]]["variants"][new_id]
            line.update(item_id=new_id, price=variant["price"], options=variant["options"])
        order["status"] = "pending (item modified)"
    elif name == "exchange_delivered_order_items":
        check(order["status"] == "delivered", "non-delivered order cannot be exchanged")
        difference = round(price_difference(), 2)
        method = methods[kwargs["payment_method_id"]]
        check(method["source"] != "gift_card" or method["balance"] >= difference, "insufficient gift card balance")
        order.update(status="exchange requested", exchange_items=sorted(kwargs["item_ids"]),
                     exchange_new_items=sorted(kwargs["new_item_ids"]),
                     exchange_payment_method_id=kwargs["payment_method_id"], exchange_price_difference=difference)
    elif name == "return_delivered_order_items":
        check(order["status"] == "delivered", "non-delivered order cannot be returned")
        check(kwargs["payment_method_id"] in methods, "payment method not found")
        check("gift_card" in kwargs["payment_method_id"]
              or kwargs["payment_method_id"] == order["payment_history"][0]["payment_method_id"],
              "payment method should be either the original payment method or a gift card")
        held = [line["item_id"] for line in order["items"]]
        check(all(kwargs["item_ids"].count(item) <= held.count(item) for item in kwargs["item_ids"]), "some item not found")
        order.update(status="return requested", return_items=sorted(kwargs["item_ids"]),
                     return_payment_method_id=kwargs["payment_method_id"])
    else:
        raise AssertionError(f"no reference model for {name}")


def tau_bench_run(export: RetailExport, user_id: str, actions: list[dict]) -> tuple[dict, dict, list[str | None]]:
    """Users, orders and each action's error (None: accepted) after tau-bench's environment runs the
    actions on the export. Only the caller's records are copied: the actions touch no one else's."""
    users, orders = dict(export.users), dict(export.orders)
    users[user_id] = copy.deepcopy(users[user_id])
    for order_id in users[user_id]["orders"]:
        orders[order_id] = copy.deepcopy(orders[order_id])
    errors = []
    for action in actions:
        try:
            tau_bench_apply(users, orders, export.products, action["name"], action["kwargs"])
            errors.append(None)
        except TauBenchError as error:
            errors.append(str(error))
    return users, orders, errors


def customer_fingerprint(users: dict, orders: dict, user_id: str) -> str:
    return fingerprint_retail({user_id: users[user_id]}, {order_id: orders[order_id] for order_id in users[user_id]["orders"]})


async def customer_fingerprint_through_tools(tools, session: VerifiedSession) -> str:
    """The caller's profile and orders as the tools report them, fingerprinted."""
    user = await tools.invoke(session, "get_user_details", {})
    orders = {order_id: await tools.invoke(session, "get_order_details", {"order_id": order_id}) for order_id in user["orders"]}
    return customer_fingerprint({session.customer_id: user}, orders, session.customer_id)


def our_arguments(kwargs: dict, session: VerifiedSession) -> dict:
    """A gold action's arguments as our schemas take them: the customer comes from the session, not from
    the arguments, so a gold user_id must be the session's and is dropped."""
    arguments = dict(kwargs)
    if "user_id" in arguments:
        assert arguments.pop("user_id") == session.customer_id
    return arguments


async def replay(tools, task: dict) -> list[ToolFailure | None]:
    """Each gold action's refusal (None: accepted), replayed as the task's verified, confirming caller."""
    session = session_for(task["user_id"])
    outcomes = []
    for action in task["actions"]:
        try:
            await tools.invoke(session, action["name"], our_arguments(action["kwargs"], session), confirmed=True)
            outcomes.append(None)
        except ToolFailure as failure:
            outcomes.append(failure)
    return outcomes


# --- gold replay ------------------------------------------------------------------------------------

async def test_every_valid_gold_action_is_accepted_and_reaches_tau_benchs_end_state(shop, tools, retail_tasks, retail_export):
    """Some synthetic train tasks hold gold actions tau-bench's own environment answers with an error
    (a gift card too small for the payment): those must be refused too, with the same reason, and
    change nothing; every other gold action must be accepted."""
    replayed, problems, refused_as_tau_bench = 0, [], []
    for label, task in retail_tasks:
        await shop.reset()
        outcomes = await replay(tools, task)
        users, orders, errors = tau_bench_run(retail_export, task["user_id"], task["actions"])
        replayed += len(outcomes)
        for action, outcome, error in zip(task["actions"], outcomes, errors):
            if error is None and outcome is not None:
                problems.append(f"{label} {action['name']}: refused {outcome!r}")
            elif error is not None and outcome is None:
                problems.append(f"{label} {action['name']}: accepted, but tau-bench answers '{error}'")
            elif error is not None:
                refused_as_tau_bench.append((action["name"], error, outcome.kind, outcome.rule))
        if await customer_fingerprint_through_tools(tools, session_for(task["user_id"])) != customer_fingerprint(users, orders, task["user_id"]):
            problems.append(f"{label}: the caller's end state differs from tau-bench's")
    reasons = sorted({(error, kind.value, rule) for _, error, kind, rule in refused_as_tau_bench})
    print(f"\ngold replay: {len(retail_tasks)} tasks, {replayed} actions, {replayed - len(refused_as_tau_bench)} valid and "
          f"accepted, {len(refused_as_tau_bench)} refused as tau-bench refuses them: {reasons}")
    assert replayed == 793
    assert not problems, "\n".join(problems[:20])
    assert all(kind is FailureKind.POLICY_REFUSED for _, _, kind, _ in refused_as_tau_bench)


async def test_replaying_a_task_twice_from_a_fresh_back_office_gives_the_same_whole_state(shop, tools, retail_tasks, retail_export):
    """Determinism, and the whole back office (not only the caller's records) equal to tau-bench's."""
    sample = random.Random(7).sample([task for _, task in retail_tasks if task["actions"]], DETERMINISM_SAMPLE)
    pristine = fingerprint_retail(retail_export.users, retail_export.orders)
    await shop.reset()
    assert await state_fingerprint(shop.dsn) == pristine
    for task in sample:
        fingerprints = []
        for _ in range(2):
            await shop.reset()
            await replay(tools, task)
            fingerprints.append(await state_fingerprint(shop.dsn))
        users, orders, errors = tau_bench_run(retail_export, task["user_id"], task["actions"])
        assert fingerprints[0] == fingerprints[1] == fingerprint_retail(users, orders)
        assert fingerprints[0] != pristine or all(errors), "a task's accepted gold actions changed nothing"


# --- identification and verification ------------------------------------------------------------------

async def test_identification_tools_find_the_customer_for_an_anonymous_caller(shop, tools, retail_export):
    await shop.reset()
    anonymous = VerifiedSession.anonymous("call-1")
    for user_id, user in list(retail_export.users.items())[:40]:
        assert await tools.invoke(anonymous, "find_user_id_by_email", {"email": user["email"].upper()}) == user_id
        assert await tools.invoke(anonymous, "find_user_id_by_name_zip", {
            "first_name": user["name"]["first_name"].lower(), "last_name": user["name"]["last_name"],
            "zip": user["address"]["zip"]}) == user_id
    assert tools.get("find_user_id_by_email").spec.identifies_caller
    failure = await expect_failure(FailureKind.NOT_FOUND, tools.invoke(anonymous, "find_user_id_by_email", {"email": "nobody@example.com"}))
    assert "email" in failure.message


async def test_an_unverified_caller_gets_only_catalogue_and_identification_tools(shop, tools, retail_export):
    await shop.reset()
    order = first_order(retail_export, "pending")
    anonymous = VerifiedSession.anonymous("call-2")
    failure = await expect_failure(FailureKind.NOT_VERIFIED, tools.invoke(anonymous, "get_order_details", {"order_id": order["order_id"]}))
    assert "verification" in failure.message
    await expect_failure(FailureKind.NOT_VERIFIED, tools.invoke(anonymous, "cancel_pending_order",
                                                                {"order_id": order["order_id"], "reason": "no longer needed"}, confirmed=True))
    offered = {tool["function"]["name"] for tool in tools.openai_tools(anonymous)}
    assert offered == {"find_user_id_by_email", "find_user_id_by_name_zip", "get_product_details", "list_all_product_types",
                       "calculate", "think", "transfer_to_human_agents"}
    assert {tool["function"]["name"] for tool in tools.openai_tools(session_for(order["user_id"]))} == set(KNOWN_TOOLS)
    products = await tools.invoke(anonymous, "list_all_product_types", {})
    assert len(products) == 50 and list(products) == sorted(products)


def test_llm_facing_schemas_are_tau_benchs_without_the_customer_id(shared_data: Path, tools):
    theirs = {tool["function"]["name"]: tool["function"]["parameters"]
              for tool in json.loads((shared_data / "retail" / "tool_schemas.json").read_text())["retail"]}
    ours = {tool["function"]["name"]: tool["function"]["parameters"] for tool in tools.openai_tools(session_for("x"))}
    assert set(ours) == set(theirs)
    for name, parameters in theirs.items():
        assert set(ours[name]["properties"]) == set(parameters["properties"]) - {"user_id"}, name
        assert set(ours[name]["required"]) == set(parameters["required"]) - {"user_id"}, name
        assert ours[name]["additionalProperties"] is False
    for parameters in ours.values():
        assert not {"user_id", "customer_id"} & set(parameters["properties"])


def test_a_spec_letting_the_model_choose_the_customer_is_rejected():
    with pytest.raises(ValueError, match="user_id"):
        ToolSpec("peek", "x", {"type": "object", "properties": {"user_id": {"type": "string"}}})


# --- refusals -------------------------------------------------------------------------------------

async def test_cancelling_a_delivered_order_is_refused_by_policy(shop, tools, retail_export):
    await shop.reset()
    order = first_order(retail_export, "delivered")
    before = await state_fingerprint(shop.dsn)
    failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(
        session_for(order["user_id"]), "cancel_pending_order", {"order_id": order["order_id"], "reason": "no longer needed"}, confirmed=True))
    assert failure.rule == "cancel_only_pending" and "delivered" in failure.message
    assert await state_fingerprint(shop.dsn) == before


async def test_policy_rules_on_returns_exchanges_and_payments(shop, tools, retail_export, retail_folder):
    await shop.reset()
    products = retail_export.products
    # A return refunded to a credit card that did not pay for the order.
    order = next(o for o in retail_export.orders.values() if o["status"] == "delivered" and any(
        m["source"] == "credit_card" and m["id"] != o["payment_history"][0]["payment_method_id"]
        for m in retail_export.users[o["user_id"]]["payment_methods"].values()))
    other_card = next(m["id"] for m in retail_export.users[order["user_id"]]["payment_methods"].values()
                      if m["source"] == "credit_card" and m["id"] != order["payment_history"][0]["payment_method_id"])
    session = session_for(order["user_id"])
    line = order["items"][0]
    failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(session, "return_delivered_order_items", {
        "order_id": order["order_id"], "item_ids": [line["item_id"]], "payment_method_id": other_card}, confirmed=True))
    assert failure.rule == "refund_to_original_or_gift_card"
    # An exchange to another product's item.
    foreign_item = next(item for product_id, product in products.items() if product_id != line["product_id"]
                        for item, variant in product["variants"].items() if variant["available"])
    failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(session, "exchange_delivered_order_items", {
        "order_id": order["order_id"], "item_ids": [line["item_id"]], "new_item_ids": [foreign_item],
        "payment_method_id": order["payment_history"][0]["payment_method_id"]}, confirmed=True))
    assert failure.rule == "same_product"
    unavailable = next((item for item, variant in products[line["product_id"]]["variants"].items() if not variant["available"]), None)
    if unavailable:
        failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(session, "exchange_delivered_order_items", {
            "order_id": order["order_id"], "item_ids": [line["item_id"]], "new_item_ids": [unavailable],
            "payment_method_id": order["payment_history"][0]["payment_method_id"]}, confirmed=True))
        assert failure.rule == "new_item_available"
    # A pending order paid with a gift card too small for it.
    def small_gift_cards(order):
        paid = order["payment_history"][0]
        return [m["id"] for m in retail_export.users[order["user_id"]]["payment_methods"].values()
                if m["source"] == "gift_card" and m["balance"] < paid["amount"] and m["id"] != paid["payment_method_id"]]
    pending = next(o for o in retail_export.orders.values() if o["status"] == "pending" and small_gift_cards(o))
    card = small_gift_cards(pending)[0]
    failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(session_for(pending["user_id"]), "modify_pending_order_payment", {
        "order_id": pending["order_id"], "payment_method_id": card}, confirmed=True))
    assert failure.rule == "gift_card_balance_sufficient"
    # Modify items can only be called once: the order is no longer 'pending' afterwards.
    session = session_for(pending["user_id"])
    line = pending["items"][0]
    same_item = {"order_id": pending["order_id"], "item_ids": [line["item_id"]], "new_item_ids": [line["item_id"]],
                 "payment_method_id": pending["payment_history"][0]["payment_method_id"]}
    if products[line["product_id"]]["variants"][line["item_id"]]["available"]:
        await tools.invoke(session, "modify_pending_order_items", same_item, confirmed=True)
        failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(session, "modify_pending_order_items", same_item, confirmed=True))
        assert failure.rule == "modify_only_pending"


async def test_another_customers_order_or_payment_method_is_forbidden(shop, tools, retail_export):
    await shop.reset()
    order = first_order(retail_export, "pending")
    intruder = next(user_id for user_id in retail_export.users if user_id != order["user_id"])
    session = session_for(intruder)
    before = await state_fingerprint(shop.dsn)
    await expect_failure(FailureKind.FORBIDDEN, tools.invoke(session, "get_order_details", {"order_id": order["order_id"]}))
    failure = await expect_failure(FailureKind.FORBIDDEN, tools.invoke(
        session, "cancel_pending_order", {"order_id": order["order_id"], "reason": "ordered by mistake"}, confirmed=True))
    assert order["user_id"] not in failure.message  # the refusal does not say whose it is
    own = first_order(retail_export, "pending", not_user=None)
    someone_elses_card = next(m for user_id, user in retail_export.users.items() if user_id != own["user_id"]
                              for m in user["payment_methods"].values())
    await expect_failure(FailureKind.FORBIDDEN, tools.invoke(session_for(own["user_id"]), "modify_pending_order_payment", {
        "order_id": own["order_id"], "payment_method_id": someone_elses_card["id"]}, confirmed=True))
    await expect_failure(FailureKind.NOT_FOUND, tools.invoke(session, "get_order_details", {"order_id": "#W0000000"}))
    assert await state_fingerprint(shop.dsn) == before
    details = await tools.invoke(session, "get_user_details", {})
    assert details["email"] == retail_export.users[intruder]["email"]


async def test_a_mutating_tool_without_confirmation_changes_nothing_and_previews_the_change(shop, tools, retail_export):
    await shop.reset()
    order = first_order(retail_export, "pending")
    session = session_for(order["user_id"])
    before = await state_fingerprint(shop.dsn)
    arguments = {"order_id": order["order_id"], "reason": "no longer needed"}
    failure = await expect_failure(FailureKind.NEEDS_CONFIRMATION, tools.invoke(session, "cancel_pending_order", arguments))
    assert failure.preview["status"] == "cancelled"
    assert failure.preview["payment_history"][-1]["transaction_type"] == "refund"
    assert await state_fingerprint(shop.dsn) == before
    address = {"address1": "1 New Street", "address2": "", "city": "Boston", "state": "MA", "country": "USA", "zip": "02110"}
    await expect_failure(FailureKind.NEEDS_CONFIRMATION, tools.invoke(session, "modify_user_address", address))
    assert await state_fingerprint(shop.dsn) == before
    assert (await tools.invoke(session, "cancel_pending_order", arguments, confirmed=True))["status"] == "cancelled"
    assert (await tools.invoke(session, "modify_user_address", address, confirmed=True))["address"] == address
    assert await state_fingerprint(shop.dsn) != before


async def test_bad_arguments_name_the_field(shop, tools, retail_export):
    order = first_order(retail_export, "pending")
    session = session_for(order["user_id"])
    cases = [
        ("cancel_pending_order", {"order_id": order["order_id"]}, "reason"),
        ("cancel_pending_order", {"order_id": order["order_id"], "reason": "changed my mind"}, "reason"),
        ("get_order_details", {"order_id": "W12345"}, "order_id"),
        ("get_order_details", {"order_id": order["order_id"], "user_id": "someone_else_1"}, "user_id"),
        ("modify_pending_order_items", {"order_id": order["order_id"], "item_ids": [], "new_item_ids": ["1"],
                                        "payment_method_id": "paypal_1"}, "item_ids"),
        ("modify_pending_order_address", {"order_id": order["order_id"], "address1": "", "address2": "", "city": "X",
                                          "state": "Y", "country": "USA", "zip": "1"}, "address1"),
        ("calculate", {"expression": "2 ** 8"}, "expression"),
    ]
    for name, arguments, field in cases:
        failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(session, name, arguments, confirmed=True))
        assert failure.field == field and field in failure.message, (name, failure)
    failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(
        session, "get_order_details", {"order_id": order["order_id"], "user_id": "x"}))
    assert "verified caller" in failure.message
    await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(session, "refund_everything", {}))
    assert await tools.invoke(session, "calculate", {"expression": "(10 + 5) * 3 / 4"}) == 11.25


# --- timeouts, breaker, faults ---------------------------------------------------------------------------

async def sleeping_query(conn, session, arguments):
    """A back-end call that takes longer than its tool's timeout: a real slow query."""
    await conn.execute("SELECT pg_sleep(5)")
    return "woke up"


async def clock_query(conn, session, arguments):
    """A back-end answer that is not plain JSON (a timestamp)."""
    return (await (await conn.execute("SELECT now() AS now")).fetchone())["now"]


def make_test_only_tool(name: str, store: BackofficeStore, operation, **spec) -> BackofficeTool:
    return BackofficeTool(ToolSpec(name, "test-only back-end call", {"type": "object", "properties": {}},
                                   requires=VerificationLevel.NONE, **spec), store, operation)


async def running_sleeps(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)' AND state = 'active'")
        return (await cursor.fetchone())[0]


async def test_a_slow_back_end_times_out_and_its_query_is_cancelled(store, database_dsn):
    slow = make_test_only_tool("slow_lookup", store, sleeping_query, timeout_s=0.3, failure_threshold=10)
    started = time.monotonic()
    failure = await expect_failure(FailureKind.TIMEOUT, slow.invoke(VerifiedSession.anonymous("c"), {}))
    assert time.monotonic() - started < 1.5
    assert "0.3 s" in failure.message
    deadline = time.monotonic() + 3
    while await running_sleeps(database_dsn) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await running_sleeps(database_dsn) == 0, "the timed-out query is still running on the server"


async def test_repeated_back_end_failures_open_the_breaker_and_calls_fail_fast(store):
    slow = make_test_only_tool("flaky_lookup", store, sleeping_query, timeout_s=0.2, failure_threshold=3, recovery_s=60)
    session = VerifiedSession.anonymous("c")
    for _ in range(3):
        await expect_failure(FailureKind.TIMEOUT, slow.invoke(session, {}))
    started = time.monotonic()
    failure = await expect_failure(FailureKind.UNAVAILABLE, slow.invoke(session, {}))
    assert time.monotonic() - started < 0.05
    assert failure.retry_after_s and 50 < failure.retry_after_s <= 60
    assert "circuit" in failure.message


async def test_refusals_do_not_open_the_breaker(shop, store, retail_export):
    await shop.reset()
    tools = retail_registry(store)
    order = first_order(retail_export, "delivered")
    session = session_for(order["user_id"])
    threshold = tools.get("cancel_pending_order").spec.failure_threshold
    for _ in range(threshold + 2):
        await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(
            session, "cancel_pending_order", {"order_id": order["order_id"], "reason": "no longer needed"}, confirmed=True))


async def test_a_result_that_is_not_plain_json_is_a_bad_result(store):
    clock = make_test_only_tool("clock", store, clock_query)
    failure = await expect_failure(FailureKind.BAD_RESULT, clock.invoke(VerifiedSession.anonymous("c"), {}))
    assert "datetime" in failure.message


async def test_a_closed_back_end_is_unavailable(database_dsn):
    closed = await BackofficeStore.open(database_dsn, max_connections=1)
    await closed.close()
    tools = retail_registry(closed)
    await expect_failure(FailureKind.UNAVAILABLE, tools.invoke(VerifiedSession.anonymous("c"), "list_all_product_types", {}))


# --- loader ------------------------------------------------------------------------------------------

def export_folder(folder: Path, export: RetailExport) -> Path:
    folder.mkdir(parents=True)
    for name, data in (("users.json", export.users), ("orders.json", export.orders), ("products.json", export.products)):
        (folder / name).write_text(json.dumps(data))
    return folder


async def test_loading_is_idempotent_and_replaces_changed_state(shop, store, retail_folder, database_dsn):
    counts = await load_retail(database_dsn, retail_folder)
    assert counts == {"users": 500, "orders": 1000, "products": 50, "items": 591}
    pristine = await state_fingerprint(database_dsn)
    assert await load_retail(database_dsn, retail_folder) == counts
    assert await state_fingerprint(database_dsn) == pristine
    order = first_order(shop.export, "pending")
    await retail_registry(store).invoke(session_for(order["user_id"]), "cancel_pending_order",
                                        {"order_id": order["order_id"], "reason": "ordered by mistake"}, confirmed=True)
    assert await state_fingerprint(database_dsn) != pristine
    await load_retail(database_dsn, retail_folder)
    assert await state_fingerprint(database_dsn) == pristine
    assert pristine == fingerprint_retail(shop.export.users, shop.export.orders), "the database does not round-trip the export"


async def test_bad_export_files_are_refused_with_the_place_and_the_fix(tmp_path, database_dsn, retail_folder):
    await load_retail(database_dsn, retail_folder)
    before = await state_fingerprint(database_dsn)
    demo = demo_export()
    cases = []
    folder = export_folder(tmp_path / "bad_json", demo)
    (folder / "orders.json").write_text('{"#W1": {"order_id": ')
    cases.append((folder, r"orders\.json is not valid JSON .* line 1 column"))
    folder = export_folder(tmp_path / "missing", demo)
    (folder / "products.json").unlink()
    cases.append((folder, r"products\.json is missing"))
    broken = copy.deepcopy(demo)
    broken.orders["#W1000101"]["items"][0]["price"] = "39.90"
    folder = export_folder(tmp_path / "bad_price", broken)
    cases.append((folder, r"orders\.json: at #W1000101/items/0/price: '39\.90' is not of type 'number'"))
    broken = copy.deepcopy(demo)
    broken.orders["#W1000101"]["user_id"] = "ghost_1"
    folder = export_folder(tmp_path / "dangling", broken)
    cases.append((folder, r"order #W1000101 belongs to user ghost_1, who is not in users\.json"))
    broken = copy.deepcopy(demo)
    del broken.users["ada_quill_1001"]["payment_methods"]["gift_card_1000012"]["balance"]
    folder = export_folder(tmp_path / "no_balance", broken)
    cases.append((folder, r"users\.json: at ada_quill_1001/payment_methods/gift_card_1000012: 'balance' is a required property"))
    for folder, message in cases:
        with pytest.raises(ExportError, match=message):
            await load_retail(database_dsn, folder)
    with pytest.raises(ExportError, match="does not exist"):
        await load_retail(database_dsn, tmp_path / "nowhere")
    assert await state_fingerprint(database_dsn) == before, "a refused load changed the back office"


def test_command_line_loads_resets_and_explains_errors(tmp_path, database_dsn, retail_folder):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "services.dialog.tools.backoffice", *args, "--dsn", database_dsn],
                              check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    loaded = cli("load-retail", str(retail_folder))
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["orders"] == 1000
    (tmp_path / "users.json").write_text("[1, 2")
    refused = cli("load-retail", str(tmp_path))
    assert refused.returncode == 2 and "users.json is not valid JSON" in refused.stderr
    assert "back office reset to" in cli("reset").stdout
    assert cli("clear").returncode == 0
    assert cli("fingerprint").stdout.strip() == fingerprint_retail({}, {})
    assert "no export loaded" in cli("reset").stdout


async def test_bank_records_load_idempotently_indexed_by_customer(tmp_path, shared_data, database_dsn):
    db_json = shared_data / "kb" / "banking" / "db.json"
    counts = await load_bank(database_dsn, db_json)
    assert counts["users"] == 39 and counts["accounts"] == 33 and counts["bank_account_transaction_history"] == 266
    assert await load_bank(database_dsn, db_json) == counts
    async with await psycopg.AsyncConnection.connect(database_dsn) as conn:
        cursor = await conn.execute("SELECT collection, count(*) FROM backoffice.bank_records GROUP BY collection")
        assert dict(await cursor.fetchall()) == {name: count for name, count in counts.items() if count}
        cursor = await conn.execute("SELECT data ->> 'class' FROM backoffice.bank_records "
                                    "WHERE collection = 'accounts' AND user_id = '123' ORDER BY ordinal")
        assert [row[0] for row in await cursor.fetchall()] == ["checking", "saving"]
        cursor = await conn.execute("SELECT count(*) FROM backoffice.bank_records WHERE collection = 'referrals' AND user_id IS NULL")
        assert (await cursor.fetchone())[0] == 0, "a referral is the referrer's"
    (tmp_path / "db.json").write_text(json.dumps({"users": {"data": ["not", "records"]}}))
    with pytest.raises(ExportError, match=r"db\.json: at users/data: \['not', 'records'\] is not of type 'object'"):
        await load_bank(database_dsn, tmp_path / "db.json")
    assert await load_bank(database_dsn, db_json) == counts


# --- site configuration and the demo -------------------------------------------------------------

async def test_tools_yaml_builds_the_registry_with_site_overrides(tmp_path, shop, database_dsn, retail_export):
    await shop.reset()
    config = retail_tools_config()
    config["tools"]["cancel_pending_order"].update(timeout_s=1.5, failure_threshold=2, options={"max_connections": 2})
    path = tmp_path / "tools.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    registry = await load_tool_registry(path, default_dsn=database_dsn)
    try:
        assert registry.names() == list(KNOWN_TOOLS)
        spec = registry.get("cancel_pending_order").spec
        assert (spec.timeout_s, spec.failure_threshold) == (1.5, 2)
        order = first_order(retail_export, "pending")
        details = await registry.invoke(session_for(order["user_id"]), "get_order_details", {"order_id": order["order_id"]})
        assert details["order_id"] == order["order_id"]
    finally:
        await registry.aclose()
    bad_configs = [
        ({"tools": {"get_order_details": {"kind": "crm_http"}}}, "unknown kind 'crm_http'"),
        ({"tools": {"refund_everything": {"kind": "retail_backoffice"}}}, "kind retail_backoffice has no such tool"),
        ({"tools": {"get_order_details": {"kind": "retail_backoffice", "options": {"url": "x"}}}}, "unknown option"),
        ({"tools": {"get_order_details": {"kind": "retail_backoffice", "timeout": 3}}}, "get_order_details"),
        ({"tools": {"get_order_details": {"kind": "retail_backoffice"}}}, "needs a database"),
    ]
    for config, message in bad_configs:
        with pytest.raises(ToolConfigError, match=message):
            await load_tool_registry(config, default_dsn="" if "database" in message else database_dsn)


async def test_demo_back_office_loads_and_serves_the_tools(tmp_path, store, database_dsn, shop):
    folder = write_demo_export(tmp_path / "demo")
    assert await load_retail(database_dsn, folder) == {"users": 4, "orders": 8, "products": 6, "items": 15}
    try:
        tools = retail_registry(store)
        anonymous = VerifiedSession.anonymous("demo")
        user_id = await tools.invoke(anonymous, "find_user_id_by_name_zip", {"first_name": "Ada", "last_name": "Quill", "zip": "97205"})
        session = VerifiedSession.verified("demo", user_id, "name_zip")
        cancelled = await tools.invoke(session, "cancel_pending_order", {"order_id": "#W1000101", "reason": "ordered by mistake"}, confirmed=True)
        assert cancelled["status"] == "cancelled" and cancelled["payment_history"][-1]["amount"] == 54.40
        exchanged = await tools.invoke(session, "exchange_delivered_order_items", {
            "order_id": "#W1000102", "item_ids": ["7200000021"], "new_item_ids": ["7200000022"],
            "payment_method_id": "gift_card_1000012"}, confirmed=True)
        assert exchanged["exchange_price_difference"] == -39.5
        await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(session, "exchange_delivered_order_items", {
            "order_id": "#W1000102", "item_ids": ["7200000021"], "new_item_ids": ["7200000022"],
            "payment_method_id": "gift_card_1000012"}, confirmed=True))
        dev = VerifiedSession.verified("demo", "dev_okafor_1004", "email")
        modified = await tools.invoke(dev, "modify_pending_order_items", {
            "order_id": "#W1000401", "item_ids": ["7200000022"], "new_item_ids": ["7200000021"],
            "payment_method_id": "gift_card_1000041"}, confirmed=True)
        assert modified["payment_history"][-1] == {"transaction_type": "payment", "amount": 39.5, "payment_method_id": "gift_card_1000041"}
        assert (await tools.invoke(dev, "get_user_details", {}))["payment_methods"]["gift_card_1000041"]["balance"] == 210.5
    finally:
        await shop.reset()
