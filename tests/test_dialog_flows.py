"""The dialog's flows against the real back office (PostgreSQL, the retail export in ../shared/data)."""

from __future__ import annotations


import pytest

from services.dialog.flows import CallState
from services.dialog.retail_flows import CancelOrderFlow, OrderStatusFlow, VerificationFlow
from services.dialog.intents import match_control
from services.dialog.tools.adapter import VerificationLevel, VerifiedSession
from services.dialog.tools.backoffice import BackofficeStore, load_retail, state_fingerprint
from services.dialog.tools.retail import retail_registry


@pytest.fixture(scope="module")
def someone_elses_order(retail: dict, customer: dict) -> str:
    return next(order_id for order_id, order in retail["orders"].items() if order["user_id"] != customer["id"])


@pytest.fixture
async def registry(database_dsn: str, retail: dict):
    await load_retail(database_dsn, retail["folder"])  # every test starts from the export
    store = await BackofficeStore.open(database_dsn)
    yield retail_registry(store)
    await store.close()


def spoken(order_id: str) -> str:
    """An order id as a caller reads it: "W five four four ..." (digits as words)."""
    names = "zero one two three four five six seven eight nine".split()
    return "W " + " ".join(names[int(digit)] for digit in order_id.lstrip("#W"))


def verified(customer: dict) -> CallState:
    state = CallState.new("flow-test")
    state.session = VerifiedSession.verified("flow-test", customer["id"], "test")
    return state


async def test_verification_by_spoken_email(registry, customer: dict) -> None:
    state = CallState.new("call-1")
    local, domain = customer["email"].split("@")
    said = f"sure it's {local.replace('.', ' dot ')} at {domain.replace('.', ' dot ')}"
    step = await VerificationFlow(registry).step(state, said)
    assert step.done and not step.escalate
    assert state.session.level is VerificationLevel.VERIFIED and state.session.customer_id == customer["id"]
    assert [call.tool for call in step.tool_calls] == ["find_user_id_by_email"]


async def test_verification_by_name_then_zip_over_two_turns(registry, customer: dict) -> None:
    state, flow = CallState.new("call-2"), VerificationFlow(registry)
    first, last = customer["name"]["first_name"], customer["name"]["last_name"]
    step = await flow.step(state, f"my name is {first} {last}")
    assert not step.done and "zip code" in step.say
    assert state.session.level is VerificationLevel.NONE
    step = await flow.step(state, " ".join(customer["zip"]))
    assert step.done and state.session.customer_id == customer["id"]


async def test_wrong_details_three_times_hand_over_without_saying_whose(registry, customer: dict) -> None:
    state, flow = CallState.new("call-3"), VerificationFlow(registry)
    for attempt in range(3):
        step = await flow.step(state, "my email is nobody.here@example.com")
    assert step.done and step.escalate == "verification failed"
    assert state.session.level is VerificationLevel.NONE
    assert "colleague" in step.say


async def test_cancel_reads_back_and_cancels_only_after_yes(registry, customer: dict, database_dsn: str) -> None:
    state, flow = verified(customer), CancelOrderFlow(registry)
    step = await flow.step(state, "I want to cancel an order")
    assert "order number" in step.say
    step = await flow.step(state, f"it's {spoken(customer['pending'])}")
    assert "no longer needed" in step.say and "mistake" in step.say
    before = await state_fingerprint(database_dsn)
    step = await flow.step(state, "I ordered it by mistake")
    assert step.awaiting_confirmation and customer["pending"] in step.say and "Shall I go ahead?" in step.say
    assert await state_fingerprint(database_dsn) == before  # nothing changed before the yes
    step = await flow.step(state, "yes please", match_control("yes please").intent)
    assert step.done and "cancelled" in step.say
    order = await registry.invoke(state.session, "get_order_details", {"order_id": customer["pending"]})
    assert order["status"] == "cancelled"


async def test_cancel_answered_no_changes_nothing(registry, customer: dict, database_dsn: str) -> None:
    state, flow = verified(customer), CancelOrderFlow(registry)
    before = await state_fingerprint(database_dsn)
    step = await flow.step(state, f"cancel order {customer['pending']} I no longer need it")
    assert step.awaiting_confirmation
    step = await flow.step(state, "no, leave it", match_control("no, leave it").intent)
    assert step.done and "not cancelled" in step.say
    assert await state_fingerprint(database_dsn) == before


async def test_a_delivered_order_is_refused_by_policy_plainly(registry, customer: dict) -> None:
    state, flow = verified(customer), CancelOrderFlow(registry)
    step = await flow.step(state, f"please cancel {customer['delivered']}, I don't need it")
    assert step.done and "only pending orders can be cancelled" in step.say and "delivered" in step.say


async def test_another_customers_order_is_not_found_and_not_described(registry, customer: dict,
                                                                       someone_elses_order: str, retail: dict) -> None:
    state, flow = verified(customer), OrderStatusFlow(registry)
    step = await flow.step(state, f"where is order {someone_elses_order}")
    assert not step.done and "could not find that order on your account" in step.say
    owner = retail["users"][retail["orders"][someone_elses_order]["user_id"]]
    assert owner["name"]["last_name"] not in step.say and retail["orders"][someone_elses_order]["status"] not in step.say
    assert step.tool_calls[-1].outcome == "forbidden"


async def test_order_status_lists_the_callers_orders_when_no_number_is_given(registry, customer: dict) -> None:
    state, flow = verified(customer), OrderStatusFlow(registry)
    await flow.step(state, "where is my order")
    step = await flow.step(state, "I don't have the number")
    assert customer["pending"] in step.say and customer["delivered"] in step.say
    step = await flow.step(state, f"the {spoken(customer['delivered'])} one")
    assert step.done and "delivered" in step.say
