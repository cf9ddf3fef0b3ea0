"""The dialog's flows against the real back office (PostgreSQL, the retail export in ../shared/data)."""

from __future__ import annotations

import json

import pytest

from services.dialog.flows import MAX_SLOT_ATTEMPTS, CallState
from services.dialog.intents import match_control
from services.dialog.retail_flows import (
    CancelOrderFlow,
    ChangeAddressFlow,
    ExchangeItemsFlow,
    OrderStatusFlow,
    ReturnItemsFlow,
    VerificationFlow,
)
from services.dialog.retail_matching import items_said, option_values_said, payment_said
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


# --- returns, exchanges and item changes, address changes -------------------------------------------
# The orders and variants these tests use are looked up in the export (never hard-coded), so they
# follow the data in ../shared/data/retail.

def yes(text: str = "yes please") -> tuple[str, str]:
    return text, match_control(text).intent


def no(text: str = "no, leave it") -> tuple[str, str]:
    return text, match_control(text).intent


def verified_as(user_id: str) -> CallState:
    state = CallState.new("flow-test")
    state.session = VerifiedSession.verified("flow-test", user_id, "test")
    return state


@pytest.fixture(scope="module")
def variants(retail: dict) -> dict[str, list[dict]]:
    """Product id -> its variants, from the export's products.json."""
    products = json.loads((retail["folder"] / "products.json").read_text())
    return {product_id: list(product["variants"].values()) for product_id, product in products.items()}


def one_option_change(line: dict, variants: dict[str, list[dict]]) -> tuple[str, str, dict] | None:
    """An option of `line` whose change (alone) gives one available variant: (option, new value, variant)."""
    for key, value in line["options"].items():
        others = [v for v in variants[line["product_id"]] if v["available"] and v["options"][key] != value
                  and all(v["options"][k] == line["options"][k] for k in line["options"] if k != key)]
        said_alone = [v for v in variants[line["product_id"]] if v["options"][key] == (others[0]["options"][key] if others else None)]
        if len(others) == 1 and len(value) > 2 and len(others[0]["options"][key]) > 2 and not others[0]["options"][key].isdigit() \
                and len({v["options"][key] for v in said_alone}) == 1:
            return key, others[0]["options"][key], others[0]
    return None


def first_change(retail: dict, variants: dict, order_ids: list[str]) -> tuple[str, dict, str, str, dict]:
    """The first line of the orders `order_ids` with a one-option change: (order, line, option, new value, variant)."""
    for order_id in order_ids:
        order = retail["orders"][order_id]
        for line in order["items"]:
            if sum(other["name"] == line["name"] for other in order["items"]) == 1 and (change := one_option_change(line, variants)):
                return (order_id, line, *change)
    pytest.skip(f"no line of {', '.join(order_ids)} has a one-option change in the export")


def own_orders(retail: dict, customer: dict, status: str) -> list[str]:
    return [order_id for order_id in retail["users"][customer["id"]]["orders"] if retail["orders"][order_id]["status"] == status]


async def test_return_reads_back_items_and_refund_and_returns_only_after_yes(registry, customer: dict, retail: dict,
                                                                                database_dsn: str) -> None:
    state, flow = verified(customer), ReturnItemsFlow(registry)
    order = retail["orders"][customer["delivered"]]
    line = order["items"][0]
    step = await flow.step(state, "I'd like to return something")
    assert "order number" in step.say
    step = await flow.step(state, f"it's {spoken(customer['delivered'])}")
    assert "Which items" in step.say and all(item["name"] in step.say for item in order["items"])
    before = await state_fingerprint(database_dsn)
    step = await flow.step(state, f"just the {line['name'].lower()}")
    assert step.awaiting_confirmation and "Shall I go ahead?" in step.say
    assert line["name"] in step.say and f"${line['price']:,.2f}" in step.say and customer["delivered"] in step.say
    assert await state_fingerprint(database_dsn) == before  # the preview changed nothing
    step = await flow.step(state, *yes())
    assert step.done and not step.escalate and "return" in step.say
    changed = await registry.invoke(state.session, "get_order_details", {"order_id": customer["delivered"]})
    assert changed["status"] == "return requested" and changed["return_items"] == [line["item_id"]]
    assert changed["return_payment_method_id"] == order["payment_history"][0]["payment_method_id"]


async def test_return_finds_the_order_by_the_item_named(registry, customer: dict, retail: dict) -> None:
    state, flow = verified(customer), ReturnItemsFlow(registry)
    line = retail["orders"][customer["delivered"]]["items"][0]
    step = await flow.step(state, f"I don't have the order number, it's the one with the {line['name']}")
    assert step.awaiting_confirmation and customer["delivered"] in step.say and line["name"] in step.say


async def test_return_of_a_pending_order_is_refused_plainly(registry, customer: dict, database_dsn: str) -> None:
    state, flow = verified(customer), ReturnItemsFlow(registry)
    before = await state_fingerprint(database_dsn)
    step = await flow.step(state, f"I want to return order {customer['pending']}")
    assert step.done and not step.escalate
    assert "only delivered orders can be returned" in step.say and "pending" in step.say
    assert not any(call.tool == "return_delivered_order_items" for call in step.tool_calls)
    assert await state_fingerprint(database_dsn) == before


@pytest.fixture(scope="module")
def twin_lines(retail: dict) -> tuple[str, str, dict, dict, str]:
    """A delivered order holding one product in two variants: (user, order, line a, line b, a value only b has)."""
    for order_id, order in retail["orders"].items():
        if order["status"] != "delivered":
            continue
        for a in order["items"]:
            for b in order["items"]:
                if a["name"] == b["name"] and a["item_id"] != b["item_id"]:
                    only_b = [v for k, v in b["options"].items() if v != a["options"].get(k) and len(v) > 2 and not v.isdigit()
                              and v not in a["options"].values()]
                    if only_b:
                        return order["user_id"], order_id, a, b, only_b[0]
    pytest.skip("no delivered order holds one product in two variants")


async def test_an_ambiguous_item_is_asked_about_and_answered_on_the_second_turn(registry, twin_lines) -> None:
    user_id, order_id, a, b, b_value = twin_lines
    state, flow = verified_as(user_id), ReturnItemsFlow(registry)
    step = await flow.step(state, f"I'd like to return the {a['name']} from order {order_id}")
    assert "Which one do you mean" in step.say and step.say.count(a["name"]) == 2 and not step.done
    step = await flow.step(state, f"the {b_value} one")
    if "refund go" in step.say:  # the caller has a gift card too
        step = await flow.step(state, "to the original payment method please")
    assert step.awaiting_confirmation and b_value in step.say
    step = await flow.step(state, *yes())
    assert step.done
    changed = await registry.invoke(state.session, "get_order_details", {"order_id": order_id})
    assert changed["return_items"] == [b["item_id"]]


async def test_return_answered_no_changes_nothing(registry, customer: dict, database_dsn: str) -> None:
    state, flow = verified(customer), ReturnItemsFlow(registry)
    before = await state_fingerprint(database_dsn)
    step = await flow.step(state, f"return everything from order {customer['delivered']}")
    assert step.awaiting_confirmation
    step = await flow.step(state, *no())
    assert step.done and "not returned anything" in step.say
    assert await state_fingerprint(database_dsn) == before


async def test_the_items_question_is_asked_a_bounded_number_of_times(registry, customer: dict) -> None:
    state, flow = verified(customer), ReturnItemsFlow(registry)
    step = await flow.step(state, f"I want to return something from {customer['delivered']}")
    for _ in range(MAX_SLOT_ATTEMPTS):
        assert "Which items" in step.say and not step.done
        step = await flow.step(state, "hmm, the thing, you know")
    assert step.done and step.escalate == "return_items: items not understood" and "colleague" in step.say


@pytest.mark.parametrize("flow_class", [ReturnItemsFlow, ExchangeItemsFlow, ChangeAddressFlow])
async def test_another_customers_order_is_not_found_by_the_changing_flows(registry, customer: dict, someone_elses_order: str,
                                                                          flow_class, database_dsn: str) -> None:
    state, flow = verified(customer), flow_class(registry)
    before = await state_fingerprint(database_dsn)
    step = await flow.step(state, f"for the shipping of order {someone_elses_order}")
    assert not step.done and "could not find that order on your account" in step.say
    assert step.tool_calls[-1].outcome == "forbidden"
    assert await state_fingerprint(database_dsn) == before


async def test_exchange_matches_the_option_said_and_exchanges_only_after_yes(registry, customer: dict, retail: dict,
                                                                             variants, database_dsn: str) -> None:
    order_id, line, key, value, new = first_change(retail, variants, own_orders(retail, customer, "delivered"))
    state, flow = verified(customer), ExchangeItemsFlow(registry)
    before = await state_fingerprint(database_dsn)
    step = await flow.step(state, f"I'd like to exchange the {line['name']} from order {order_id} for one with {key} {value}")
    assert step.awaiting_confirmation and "exchange" in step.say and f"{key} {value}" in step.say
    assert "is that everything" in step.say  # the policy's reminder: an order is exchanged once
    assert await state_fingerprint(database_dsn) == before
    step = await flow.step(state, *yes())
    assert step.done and "exchange" in step.say
    changed = await registry.invoke(state.session, "get_order_details", {"order_id": order_id})
    assert changed["status"] == "exchange requested" and changed["exchange_new_items"] == [new["item_id"]]
    assert changed["exchange_price_difference"] == pytest.approx(new["price"] - line["price"], abs=0.01)


async def test_exchange_answered_no_changes_nothing(registry, customer: dict, retail: dict, variants, database_dsn: str) -> None:
    order_id, line, key, value, _ = first_change(retail, variants, own_orders(retail, customer, "delivered"))
    state, flow = verified(customer), ExchangeItemsFlow(registry)
    before = await state_fingerprint(database_dsn)
    step = await flow.step(state, f"exchange the {line['name']} in {order_id} to {key} {value}")
    assert step.awaiting_confirmation
    step = await flow.step(state, *no("no, I'll keep it"))
    assert step.done and "not changed anything" in step.say
    assert await state_fingerprint(database_dsn) == before


@pytest.fixture(scope="module")
def open_choice(retail: dict, variants) -> tuple[str, str, dict, str, str, str]:
    """A delivered order line of a one-payment-method customer, an option value that several available
    variants share, and the option that tells them apart: (user, order, line, option, value, other option)."""
    for order_id, order in retail["orders"].items():
        if order["status"] != "delivered" or len(retail["users"][order["user_id"]]["payment_methods"]) != 1:
            continue
        for line in order["items"]:
            if sum(other["name"] == line["name"] for other in order["items"]) > 1:
                continue
            for key in line["options"]:
                for value in {v["options"][key] for v in variants[line["product_id"]]} - {line["options"][key]}:
                    fits = [v for v in variants[line["product_id"]] if v["available"] and v["options"][key] == value]
                    exact = [v for v in fits if all(v["options"][k] == line["options"][k] for k in line["options"] if k != key)]
                    other_keys = [k for k in line["options"] if k != key and len({v["options"][k] for v in fits}) == len(fits)]
                    if len(value) > 2 and not value.isdigit() and 1 < len(fits) <= 4 and not exact and other_keys:
                        return order["user_id"], order_id, line, key, value, other_keys[0]
    pytest.skip("no line with an option value several available variants share")


async def test_exchange_asks_for_the_missing_option_and_takes_the_answer(registry, open_choice, variants) -> None:
    user_id, order_id, line, key, value, other_key = open_choice
    state, flow = verified_as(user_id), ExchangeItemsFlow(registry)
    step = await flow.step(state, f"please exchange the {line['name']} of order {order_id} to {key} {value}")
    assert "Which option would you like?" in step.say and not step.done
    fits = [v for v in variants[line["product_id"]] if v["available"] and v["options"][key] == value]
    chosen = fits[-1]
    assert all(v["options"][other_key] in step.say for v in fits)  # the candidates are read out
    step = await flow.step(state, f"the {other_key} {chosen['options'][other_key]} one")
    assert step.awaiting_confirmation and f"${chosen['price']:,.2f}" in step.say
    step = await flow.step(state, *yes())
    changed = await registry.invoke(state.session, "get_order_details", {"order_id": order_id})
    assert step.done and changed["exchange_new_items"] == [chosen["item_id"]]


async def test_items_of_a_pending_order_are_changed_through_the_same_flow(registry, customer: dict, retail: dict,
                                                                          variants) -> None:
    order_id, line, key, value, new = first_change(retail, variants, own_orders(retail, customer, "pending"))
    state, flow = verified(customer), ExchangeItemsFlow(registry)
    step = await flow.step(state, f"on order {order_id} I'd like the {line['name']} changed to {key} {value}")
    assert step.awaiting_confirmation and "cannot be cancelled or changed after that" in step.say
    step = await flow.step(state, *yes())
    assert step.done
    changed = await registry.invoke(state.session, "get_order_details", {"order_id": order_id})
    assert changed["status"] == "pending (item modified)"
    assert new["item_id"] in [item["item_id"] for item in changed["items"]]


NEW_ADDRESS = "2500 Woodward Avenue, Suite 300, Detroit, MI 48201"
NEW_ADDRESS_PARTS = {"address1": "2500 Woodward Avenue", "address2": "Suite 300", "city": "Detroit", "state": "MI",
                     "zip": "48201", "country": "USA"}


async def test_shipping_address_of_a_pending_order_is_changed_after_yes(registry, customer: dict, database_dsn: str) -> None:
    state, flow = verified(customer), ChangeAddressFlow(registry)
    step = await flow.step(state, "I need to change the shipping address on an order")
    assert "order number" in step.say
    step = await flow.step(state, f"it's {spoken(customer['pending'])}")
    assert "new shipping address" in step.say
    before = await state_fingerprint(database_dsn)
    step = await flow.step(state, f"please send it to {NEW_ADDRESS}")
    assert step.awaiting_confirmation and NEW_ADDRESS in step.say and "USA" in step.say
    assert await state_fingerprint(database_dsn) == before
    step = await flow.step(state, *yes())
    assert step.done
    changed = await registry.invoke(state.session, "get_order_details", {"order_id": customer["pending"]})
    assert changed["address"] == NEW_ADDRESS_PARTS


async def test_default_address_is_asked_which_then_changed(registry, customer: dict) -> None:
    state, flow = verified(customer), ChangeAddressFlow(registry)
    step = await flow.step(state, "I moved, can you update my address")
    assert "shipping address of an order" in step.say and "default address" in step.say
    step = await flow.step(state, "the default one on my account")
    assert "new default address" in step.say
    step = await flow.step(state, NEW_ADDRESS)
    assert step.awaiting_confirmation and "default address" in step.say
    step = await flow.step(state, *yes())
    user = await registry.invoke(state.session, "get_user_details", {})
    assert step.done and user["address"] == NEW_ADDRESS_PARTS


async def test_address_of_a_delivered_order_is_refused_and_a_no_changes_nothing(registry, customer: dict,
                                                                                database_dsn: str) -> None:
    before = await state_fingerprint(database_dsn)
    step = await ChangeAddressFlow(registry).step(verified(customer), f"change the address of order {customer['delivered']}")
    assert step.done and "only pending orders can be changed" in step.say and "delivered" in step.say
    state, flow = verified(customer), ChangeAddressFlow(registry)
    step = await flow.step(state, f"ship order {customer['pending']} to {NEW_ADDRESS} instead")
    assert step.awaiting_confirmation
    step = await flow.step(state, *no())
    assert step.done and "not changed the address" in step.say
    assert await state_fingerprint(database_dsn) == before


async def test_cancel_finds_the_order_by_the_end_of_its_number(registry, customer: dict, retail: dict) -> None:
    own = retail["users"][customer["id"]]["orders"]
    ending = next(customer["pending"][-n:] for n in range(2, 8) if sum(o.endswith(customer["pending"][-n:]) for o in own) == 1)
    state, flow = verified(customer), CancelOrderFlow(registry)
    step = await flow.step(state, f"I want to cancel an order, I don't know the number but it ends in {ending}, "
                                  "I ordered it by mistake")
    assert step.awaiting_confirmation and customer["pending"] in step.say


# --- matching what callers say against the shop's data (no database) ----------------------------------

TSHIRTS = [{"name": "T-Shirt", "item_id": "1", "options": {"color": "blue", "size": "M"}},
           {"name": "T-Shirt", "item_id": "2", "options": {"color": "red", "size": "L"}},
           {"name": "Electric Kettle", "item_id": "3", "options": {"capacity": "1.5L", "color": "white"}}]


@pytest.mark.parametrize(("said", "lines", "unsure"), [
    ("the blue t-shirt", [0], []),
    ("the t shirt in size L", [1], []),
    ("the t-shirt", [], [[0, 1]]),
    ("the kettle and the red t-shirt", [2, 1], []),
    ("all of them", [0, 1, 2], []),
    ("the kettle, everything else the same", [2], []),
    ("nothing from there", [], []),
])
def test_items_said_against_an_order(said: str, lines: list[int], unsure: list[list[int]]) -> None:
    found = items_said(said, TSHIRTS)
    assert (found.lines, found.unsure) == (lines, unsure)


def test_option_values_said_in_spoken_forms() -> None:
    values = {"capacity": {"1L", "1.5L", "2L"}, "height": {"5 ft", "6 ft"}, "size": {"M", "L", "full size"},
              "frame color": {"black", "brown"}, "lens color": {"black", "green"}}
    assert [(k, v) for _, k, v in option_values_said("one point five liters", values)] == []  # words stay words
    assert [(k, v) for _, k, v in option_values_said("the 1.5 liter one, 5-feet tall", values)] == [("capacity", "1.5L"), ("height", "5 ft")]
    assert [(k, v) for _, k, v in option_values_said("size L, I'm fine", values)] == [("size", "L")]  # not the "m" of "I'm"
    assert [(k, v) for _, k, v in option_values_said("full-size please", values)] == [("size", "full size")]
    assert [(k, v) for _, k, v in option_values_said("frame color black", values)] == [("frame color", "black")]
    assert option_values_said("in black", values) == []  # two options have black: not said which


def test_payment_method_said() -> None:
    methods = {"credit_card_1": {"source": "credit_card", "brand": "visa", "last_four": "1234"},
               "paypal_2": {"source": "paypal"}, "gift_card_3": {"source": "gift_card", "balance": 10}}
    assert payment_said("I prefer PayPal rather than the gift card", methods, "credit_card_1") == "paypal_2"
    assert payment_said("the original payment method is fine", methods, "credit_card_1") == "credit_card_1"
    assert payment_said("put it on my Visa", methods, None) == "credit_card_1"
    assert payment_said("store credit please", methods, None) == "gift_card_3"
    assert payment_said("the camera with storage SD card", methods, None) is None


def test_a_product_named_again_is_the_new_option_in_its_sentence_and_another_item_after_it() -> None:
    speakers = [{"name": "Bluetooth Speaker", "item_id": "1", "options": {"color": "green"}},
                {"name": "Bluetooth Speaker", "item_id": "2", "options": {"color": "black"}}]
    assert items_said("the green speaker to a red speaker", speakers).lines == [0]
    found = items_said("I'd like the speaker (currently color green) changed to color red. I'd like the speaker "
                       "(currently color black) changed to color blue.", speakers)
    assert found.lines == [0, 1] and "blue" not in found.about[0]
