"""The retail tools (tau-bench's retail tool set) over the PostgreSQL back office, with the shop's policy.

Each tool acts for the session's verified customer only: the LLM-facing schemas have no user id
(get_user_details and modify_user_address take none, unlike tau-bench's), and an order or payment
method of another customer is refused as `forbidden`. The identification tools
(find_user_id_by_email, find_user_id_by_name_zip) are what the verification flow calls to establish
the session; the catalogue tools need no verification.

State changes follow tau-bench's retail environment (status values, cancel_reason, return_* and
exchange_* keys, payment_history entries, gift card balances), so a task's end state can be compared
with its gold end state through backoffice.fingerprint_retail. Two deliberate differences:
- Cancelling refunds what each payment method has paid net of earlier refunds. tau-bench refunds every
  payment_history entry, which after a payment-method change refunds the old method twice; for an
  order with a single payment (every gold task) both give the same result.
- Order lines are matched to the requested item ids by position: the n-th occurrence of an item id
  in the request changes the n-th line holding it.

The rules enforced, from the shop's policy (../shared/data/retail/policy.md), each named in the
ToolFailure's `rule`: only 'pending' orders are cancelled or modified; the cancel reason is 'no
longer needed' or 'ordered by mistake' (schema); only 'delivered' orders are returned or exchanged;
a new item is an available variant of the same product; the payment method belongs to the customer;
a gift card covers what it pays; a refund for a return goes to the original payment method or a gift
card; a new payment method differs from the current one. The policy also asks for a "different
product option" when an item is modified or exchanged; like tau-bench, a line whose new item is the
same item is accepted as left unchanged (47 gold actions of the retail tasks hold such lines).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from purgatory import AsyncCircuitBreakerFactory

from services.dialog.tools.adapter import (
    BuildContext,
    FailureKind,
    FunctionTool,
    ToolAdapter,
    ToolFailure,
    ToolRegistry,
    ToolSpec,
    VerificationLevel,
    VerifiedSession,
)
from services.dialog.tools.backoffice import (
    BackofficeStore,
    BackofficeTool,
    Operation,
    cents,
    money,
    order_json,
    user_json,
    configured_store,
)

KIND = "retail_backoffice"
NONE, VERIFIED = VerificationLevel.NONE, VerificationLevel.VERIFIED
# Timeouts: a lookup is one indexed query; a change locks and rewrites a few rows.
READ_TIMEOUT_S = 2.0
WRITE_TIMEOUT_S = 4.0
CANCEL_REASONS = ("no longer needed", "ordered by mistake")
GIFT_CARD = "gift_card"


# --- LLM-facing schemas -------------------------------------------------------------------------

def _arguments(properties: dict[str, Any], optional: Iterable[str] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": [name for name in properties if name not in set(optional)], "additionalProperties": False}


ORDER_ID = {"type": "string", "pattern": "^#W[0-9]+$",
            "description": "The order id, such as '#W0000000'. Be careful there is a '#' symbol at the beginning of the order id."}
PAYMENT_METHOD_ID = {"type": "string", "minLength": 1,
                     "description": "The payment method id to pay or receive refund for the item price difference, "
                                    "such as 'gift_card_0000000' or 'credit_card_0000000'. These can be looked up "
                                    "from the user or order details."}
ITEM_IDS = {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^[0-9]+$"}}
ADDRESS = {
    "address1": {"type": "string", "minLength": 1, "description": "The first line of the address, such as '123 Main St'."},
    "address2": {"type": "string", "description": "The second line of the address, such as 'Apt 1' or ''."},
    "city": {"type": "string", "minLength": 1, "description": "The city, such as 'San Francisco'."},
    "state": {"type": "string", "minLength": 1, "description": "The state, such as 'CA'."},
    "country": {"type": "string", "minLength": 1, "description": "The country, such as 'USA'."},
    "zip": {"type": "string", "minLength": 1, "description": "The zip code, such as '12345'."},
}
CONFIRM = " The agent needs to explain the detail and ask for explicit user confirmation (yes/no) to proceed."

SPECS: dict[str, ToolSpec] = {spec.name: spec for spec in (
    ToolSpec("find_user_id_by_email",
             "Find user id by email. If the user is not found, the function will return an error message.",
             _arguments({"email": {"type": "string", "minLength": 1, "description": "The email of the user, such as 'something@example.com'."}}),
             requires=NONE, identifies_caller=True, timeout_s=READ_TIMEOUT_S),
    ToolSpec("find_user_id_by_name_zip",
             "Find user id by first name, last name, and zip code. If the user is not found, the function will return "
             "an error message. By default, find user id by email, and only call this function if the user is not "
             "found by email or cannot remember email.",
             _arguments({"first_name": {"type": "string", "minLength": 1, "description": "The first name of the customer, such as 'John'."},
                         "last_name": {"type": "string", "minLength": 1, "description": "The last name of the customer, such as 'Doe'."},
                         "zip": {"type": "string", "minLength": 1, "description": "The zip code of the customer, such as '12345'."}}),
             requires=NONE, identifies_caller=True, timeout_s=READ_TIMEOUT_S),
    ToolSpec("get_user_details",
             "Get the details of the verified customer: name, default address, email, payment methods (with gift "
             "card balances) and order ids.",
             _arguments({}), timeout_s=READ_TIMEOUT_S),
    ToolSpec("get_order_details", "Get the status and details of an order.",
             _arguments({"order_id": ORDER_ID}), timeout_s=READ_TIMEOUT_S),
    ToolSpec("get_product_details", "Get the inventory details of a product.",
             _arguments({"product_id": {"type": "string", "pattern": "^[0-9]+$",
                                        "description": "The product id, such as '6086499569'. Be careful the product id is different from the item id."}}),
             requires=NONE, timeout_s=READ_TIMEOUT_S),
    ToolSpec("list_all_product_types",
             "List the name and product id of all product types. Each product type has a variety of different items "
             "with unique item ids and options.",
             _arguments({}), requires=NONE, timeout_s=READ_TIMEOUT_S),
    ToolSpec("cancel_pending_order",
             "Cancel a pending order. If the order is already processed or delivered, it cannot be cancelled. If the "
             "user confirms, the order status will be changed to 'cancelled' and the payment will be refunded: "
             "immediately to a gift card, otherwise in 5-7 business days. Returns the order after the cancellation." + CONFIRM,
             _arguments({"order_id": ORDER_ID,
                         "reason": {"type": "string", "enum": list(CANCEL_REASONS),
                                    "description": "The reason for cancellation, which should be either 'no longer needed' or 'ordered by mistake'."}}),
             mutates=True, timeout_s=WRITE_TIMEOUT_S),
    ToolSpec("modify_pending_order_address", "Modify the shipping address of a pending order." + CONFIRM,
             _arguments({"order_id": ORDER_ID, **ADDRESS}), mutates=True, timeout_s=WRITE_TIMEOUT_S),
    ToolSpec("modify_pending_order_payment", "Modify the payment method of a pending order." + CONFIRM,
             _arguments({"order_id": ORDER_ID, "payment_method_id": PAYMENT_METHOD_ID}), mutates=True, timeout_s=WRITE_TIMEOUT_S),
    ToolSpec("modify_pending_order_items",
             "Modify items in a pending order to new items of the same product type. For a pending order, this "
             "function can only be called once." + CONFIRM,
             _arguments({"order_id": ORDER_ID,
                         "item_ids": {**ITEM_IDS, "description": "The item ids to be modified, each such as '1008292230'. There could be duplicate items in the list."},
                         "new_item_ids": {**ITEM_IDS, "description": "The item ids to be modified for, each such as '1008292230'. There could be duplicate items in the list. Each new item id should match the item id in the same position and be of the same product."},
                         "payment_method_id": PAYMENT_METHOD_ID}),
             mutates=True, timeout_s=WRITE_TIMEOUT_S),
    ToolSpec("return_delivered_order_items",
             "Return some items of a delivered order. The order status will be changed to 'return requested'. The "
             "user will receive follow-up email for how and where to return the item." + CONFIRM,
             _arguments({"order_id": ORDER_ID,
                         "item_ids": {**ITEM_IDS, "description": "The item ids to be returned, each such as '1008292230'. There could be duplicate items in the list."},
                         "payment_method_id": {**PAYMENT_METHOD_ID, "description": "The payment method id to receive the refund: the original payment method or a gift card, such as 'gift_card_0000000'."}}),
             mutates=True, timeout_s=WRITE_TIMEOUT_S),
    ToolSpec("exchange_delivered_order_items",
             "Exchange items in a delivered order to new items of the same product type. For a delivered order, "
             "return or exchange can be only done once by the agent." + CONFIRM,
             _arguments({"order_id": ORDER_ID,
                         "item_ids": {**ITEM_IDS, "description": "The item ids to be exchanged, each such as '1008292230'. There could be duplicate items in the list."},
                         "new_item_ids": {**ITEM_IDS, "description": "The item ids to be exchanged for, each such as '1008292230'. There could be duplicate items in the list. Each new item id should match the item id in the same position and be of the same product."},
                         "payment_method_id": PAYMENT_METHOD_ID}),
             mutates=True, timeout_s=WRITE_TIMEOUT_S),
    ToolSpec("modify_user_address", "Modify the default address of the verified customer." + CONFIRM,
             _arguments(dict(ADDRESS)), mutates=True, timeout_s=WRITE_TIMEOUT_S),
    ToolSpec("calculate", "Calculate the result of a mathematical expression.",
             _arguments({"expression": {"type": "string", "pattern": r"^[0-9+\-*/(). ]+$",
                                        "description": "The mathematical expression to calculate, such as '2 + 2'. The expression can contain numbers, operators (+, -, *, /), parentheses, and spaces."}}),
             requires=NONE, timeout_s=1.0),
    ToolSpec("think",
             "Use the tool to think about something. It will not obtain new information or change the database, but "
             "just append the thought to the log. Use it when complex reasoning or some cache memory is needed.",
             _arguments({"thought": {"type": "string", "description": "A thought to think about."}}),
             requires=NONE, timeout_s=1.0),
    ToolSpec("transfer_to_human_agents",
             "Transfer the user to a human agent, with a summary of the user's issue. Only transfer if the user "
             "explicitly asks for a human agent, or if the user's issue cannot be resolved by the agent with the "
             "available tools.",
             _arguments({"summary": {"type": "string", "minLength": 1, "description": "A summary of the user's issue."}}),
             requires=NONE, timeout_s=1.0),
)}
KNOWN_TOOLS = tuple(SPECS)


# --- shared lookups and rules -------------------------------------------------------------------

def _refuse(tool: str, rule: str, message: str) -> ToolFailure:
    return ToolFailure(FailureKind.POLICY_REFUSED, tool, f"{message} (policy rule: {rule})", rule=rule)


async def _owned_order(conn: psycopg.AsyncConnection, tool: str, session: VerifiedSession, order_id: str,
                       lock: bool = False) -> dict[str, Any]:
    """The session customer's order `order_id`; not_found or forbidden otherwise. `lock` holds it FOR UPDATE."""
    cursor = await conn.execute(
        "SELECT * FROM backoffice.orders WHERE order_id = %s" + (" FOR UPDATE" if lock else ""), [order_id])
    row = await cursor.fetchone()
    if row is None:
        raise ToolFailure(FailureKind.NOT_FOUND, tool, f"there is no order {order_id}: ask the caller to read the order id "
                                                       "again (it starts with '#W'), or look it up in the customer's details")
    if row["user_id"] != session.customer_id:
        raise ToolFailure(FailureKind.FORBIDDEN, tool, f"order {order_id} is not the verified caller's: only the caller's own "
                                                       "orders can be discussed or changed")
    return row


def _require_status(tool: str, order: dict[str, Any], status: str, rule: str, action: str) -> None:
    if order["status"] != status:
        raise _refuse(tool, rule, f"only {status} orders can be {action}, and order {order['order_id']} is '{order['status']}'")


async def _owned_payment_method(conn: psycopg.AsyncConnection, tool: str, session: VerifiedSession,
                                payment_method_id: str) -> dict[str, Any]:
    """The session customer's payment method, locked FOR UPDATE; not_found or forbidden otherwise."""
    cursor = await conn.execute("SELECT * FROM backoffice.payment_methods WHERE payment_method_id = %s FOR UPDATE",
                                [payment_method_id])
    row = await cursor.fetchone()
    if row is not None and row["user_id"] == session.customer_id:
        return row
    if row is not None:
        raise ToolFailure(FailureKind.FORBIDDEN, tool, f"payment method {payment_method_id} is not the verified caller's: "
                                                       "use one of the caller's own payment methods")
    cursor = await conn.execute("SELECT payment_method_id FROM backoffice.payment_methods WHERE user_id = %s ORDER BY ordinal",
                                [session.customer_id])
    own = [method["payment_method_id"] for method in await cursor.fetchall()]
    raise ToolFailure(FailureKind.NOT_FOUND, tool, f"there is no payment method {payment_method_id}: the caller's are "
                                                   f"{', '.join(own) or 'none'}", field="payment_method_id")


async def _adjust_gift_card(conn: psycopg.AsyncConnection, payment_method_id: str, delta: Any) -> None:
    """Add `delta` (negative: a charge) to a gift card's balance."""
    await conn.execute("UPDATE backoffice.payment_methods SET balance = balance + %s WHERE payment_method_id = %s",
                       [cents(delta), payment_method_id])


def _require_gift_card_covers(tool: str, method: dict[str, Any], amount: Any, purpose: str) -> None:
    if method["source"] == GIFT_CARD and method["balance"] < cents(amount):
        raise _refuse(tool, "gift_card_balance_sufficient",
                      f"gift card {method['payment_method_id']} has {money(method['balance']):.2f} left, not enough to "
                      f"pay {money(cents(amount)):.2f} for {purpose}: choose another payment method")


def _net_paid(payment_history: list[dict[str, Any]]) -> dict[str, Any]:
    """What each payment method has paid for the order, net of refunds, in order of first use."""
    net: dict[str, Any] = {}
    for entry in payment_history:
        sign = 1 if entry["transaction_type"] == "payment" else -1
        net[entry["payment_method_id"]] = net.get(entry["payment_method_id"], cents(0)) + sign * cents(entry["amount"])
    return net


async def _save_order(conn: psycopg.AsyncConnection, order: dict[str, Any]) -> dict[str, Any]:
    await conn.execute(
        "UPDATE backoffice.orders SET status = %s, address = %s, items = %s, payment_history = %s, extra = %s "
        "WHERE order_id = %s",
        [order["status"], Jsonb(order["address"]), Jsonb(order["items"]),
         Jsonb(order["payment_history"]), Jsonb(order["extra"]), order["order_id"]])
    return order_json(order)


def _match_lines(tool: str, order: dict[str, Any], item_ids: list[str]) -> list[int]:
    """The order line for each requested item id: the n-th request of an id takes the n-th line holding it."""
    taken: set[int] = set()
    lines = []
    for item_id in item_ids:
        index = next((index for index, line in enumerate(order["items"]) if line["item_id"] == item_id and index not in taken), None)
        if index is None:
            held = sum(1 for line in order["items"] if line["item_id"] == item_id)
            raise ToolFailure(FailureKind.NOT_FOUND, tool,
                              f"order {order['order_id']} holds item {item_id} {held} time(s), fewer than requested: "
                              "use the item ids listed in the order's details", field="item_ids")
        taken.add(index)
        lines.append(index)
    return lines


async def _new_variants(conn: psycopg.AsyncConnection, tool: str, order: dict[str, Any], lines: list[int],
                        new_item_ids: list[str]) -> list[dict[str, Any]]:
    """Each requested new item, checked to be an available variant of the same product as its line."""
    if len(new_item_ids) != len(lines):
        raise ToolFailure(FailureKind.INVALID_ARGUMENTS, tool,
                          f"{len(lines)} item(s) to change but {len(new_item_ids)} new item(s): give one new item id per item id, in the same order",
                          field="new_item_ids")
    cursor = await conn.execute("SELECT * FROM backoffice.items WHERE item_id = ANY(%s)", [list(set(new_item_ids))])
    variants = {row["item_id"]: row for row in await cursor.fetchall()}
    chosen = []
    for index, new_item_id in zip(lines, new_item_ids):
        line = order["items"][index]
        variant = variants.get(new_item_id)
        if variant is None:
            raise ToolFailure(FailureKind.NOT_FOUND, tool, f"there is no item {new_item_id}: look up the product's items "
                                                           f"with get_product_details({line['product_id']})", field="new_item_ids")
        if variant["product_id"] != line["product_id"]:
            raise _refuse(tool, "same_product", f"item {new_item_id} is not a {line['name']} (product {line['product_id']}): "
                                                "an item can only be changed to another option of the same product")
        if not variant["available"]:
            raise _refuse(tool, "new_item_available", f"item {new_item_id} ({line['name']}) is not available: choose an available option")
        chosen.append(variant)
    return chosen


# --- operations ---------------------------------------------------------------------------------

async def find_user_id_by_email(conn, session, args) -> str:
    """The id of the customer with this email (case-insensitive)."""
    cursor = await conn.execute("SELECT user_id FROM backoffice.users WHERE lower(email) = lower(%s) ORDER BY ordinal LIMIT 1",
                                [args["email"]])
    row = await cursor.fetchone()
    if row is None:
        raise ToolFailure(FailureKind.NOT_FOUND, "find_user_id_by_email", "no customer has that email address: ask the "
                                                                          "caller to spell it, or identify them by name and zip code")
    return row["user_id"]


async def find_user_id_by_name_zip(conn, session, args) -> str:
    """The id of the customer with this first and last name (case-insensitive) and zip code."""
    cursor = await conn.execute(
        "SELECT user_id FROM backoffice.users WHERE lower(first_name) = lower(%s) AND lower(last_name) = lower(%s) "
        "AND zip = %s ORDER BY ordinal LIMIT 1", [args["first_name"], args["last_name"], args["zip"]])
    row = await cursor.fetchone()
    if row is None:
        raise ToolFailure(FailureKind.NOT_FOUND, "find_user_id_by_name_zip", "no customer has that name and zip code: ask "
                                                                             "the caller to spell their name and repeat the zip code, or to give their email")
    return row["user_id"]


async def _user_details(conn, customer_id: str, tool: str) -> dict[str, Any]:
    row = await (await conn.execute("SELECT * FROM backoffice.users WHERE user_id = %s", [customer_id])).fetchone()
    if row is None:
        raise ToolFailure(FailureKind.NOT_FOUND, tool, "the verified customer's record no longer exists in the back "
                                                       "office: hand the call to a colleague")
    methods = await (await conn.execute("SELECT * FROM backoffice.payment_methods WHERE user_id = %s ORDER BY ordinal",
                                        [customer_id])).fetchall()
    orders = await (await conn.execute("SELECT order_id FROM backoffice.orders WHERE user_id = %s ORDER BY user_ordinal",
                                       [customer_id])).fetchall()
    return user_json(row, methods, [order["order_id"] for order in orders])


async def get_user_details(conn, session, args) -> dict[str, Any]:
    """The verified customer's profile, payment methods and order ids."""
    return await _user_details(conn, session.customer_id, "get_user_details")


async def get_order_details(conn, session, args) -> dict[str, Any]:
    """One of the verified customer's orders."""
    return order_json(await _owned_order(conn, "get_order_details", session, args["order_id"]))


async def get_product_details(conn, session, args) -> dict[str, Any]:
    """A product with its variants (options, availability, price)."""
    cursor = await conn.execute(
        "SELECT p.product_id, p.name, i.item_id, i.options, i.available, i.price FROM backoffice.products AS p "
        "LEFT JOIN backoffice.items AS i USING (product_id) WHERE p.product_id = %s ORDER BY i.ordinal", [args["product_id"]])
    rows = await cursor.fetchall()
    if not rows:
        raise ToolFailure(FailureKind.NOT_FOUND, "get_product_details", f"there is no product {args['product_id']}: "
                                                                        "list_all_product_types gives the product ids (item ids are different)")
    return {"name": rows[0]["name"], "product_id": rows[0]["product_id"],
            "variants": {row["item_id"]: {"item_id": row["item_id"], "options": row["options"], "available": row["available"],
                                          "price": money(row["price"])} for row in rows if row["item_id"] is not None}}


async def list_all_product_types(conn, session, args) -> dict[str, str]:
    """Product name -> product id, sorted by name."""
    rows = await (await conn.execute("SELECT name, product_id FROM backoffice.products ORDER BY name, product_id")).fetchall()
    return {row["name"]: row["product_id"] for row in rows}


async def cancel_pending_order(conn, session, args) -> dict[str, Any]:
    """Cancel a pending order and refund it (gift cards at once)."""
    tool = "cancel_pending_order"
    order = await _owned_order(conn, tool, session, args["order_id"], lock=True)
    _require_status(tool, order, "pending", "cancel_only_pending", "cancelled")
    refunds = []
    for method_id, paid in _net_paid(order["payment_history"]).items():
        if paid <= 0:
            continue
        refunds.append({"transaction_type": "refund", "amount": money(paid), "payment_method_id": method_id})
        method = await _owned_payment_method(conn, tool, session, method_id)
        if method["source"] == GIFT_CARD:
            await _adjust_gift_card(conn, method_id, paid)
    order["status"] = "cancelled"
    order["extra"] = {**order["extra"], "cancel_reason": args["reason"]}
    order["payment_history"] = order["payment_history"] + refunds
    return await _save_order(conn, order)


async def modify_pending_order_address(conn, session, args) -> dict[str, Any]:
    """Change a pending order's shipping address."""
    tool = "modify_pending_order_address"
    order = await _owned_order(conn, tool, session, args["order_id"], lock=True)
    _require_status(tool, order, "pending", "modify_only_pending", "modified")
    order["address"] = {key: args[key] for key in ADDRESS}
    return await _save_order(conn, order)


async def modify_pending_order_payment(conn, session, args) -> dict[str, Any]:
    """Pay a pending order with another of the customer's methods; refund the current one."""
    tool = "modify_pending_order_payment"
    order = await _owned_order(conn, tool, session, args["order_id"], lock=True)
    _require_status(tool, order, "pending", "modify_only_pending", "modified")
    paying = [(method_id, amount) for method_id, amount in _net_paid(order["payment_history"]).items() if amount > 0]
    if len(paying) != 1:
        raise _refuse(tool, "single_payment_method", f"order {order['order_id']} is paid by {len(paying)} payment methods; "
                                                     "only an order paid by one can change its payment method")
    old_method_id, amount = paying[0]
    new_method_id = args["payment_method_id"]
    if new_method_id == old_method_id:
        raise _refuse(tool, "payment_method_differs", f"order {order['order_id']} is already paid with {new_method_id}: "
                                                      "choose a different payment method")
    new_method = await _owned_payment_method(conn, tool, session, new_method_id)
    _require_gift_card_covers(tool, new_method, amount, f"order {order['order_id']}")
    old_method = await _owned_payment_method(conn, tool, session, old_method_id)
    order["payment_history"] = order["payment_history"] + [
        {"transaction_type": "payment", "amount": money(amount), "payment_method_id": new_method_id},
        {"transaction_type": "refund", "amount": money(amount), "payment_method_id": old_method_id},
    ]
    if new_method["source"] == GIFT_CARD:
        await _adjust_gift_card(conn, new_method_id, -amount)
    if old_method["source"] == GIFT_CARD:
        await _adjust_gift_card(conn, old_method_id, amount)
    return await _save_order(conn, order)


async def _priced_item_change(conn, tool: str, session: VerifiedSession, order: dict[str, Any], args: dict[str, Any]):
    """The order lines to change, their new variants, the price difference and the (checked) payment method."""
    lines = _match_lines(tool, order, args["item_ids"])
    variants = await _new_variants(conn, tool, order, lines, args["new_item_ids"])
    difference = sum((variant["price"] - cents(order["items"][index]["price"]) for index, variant in zip(lines, variants)), cents(0))
    method = await _owned_payment_method(conn, tool, session, args["payment_method_id"])
    _require_gift_card_covers(tool, method, difference, "the price difference")
    return lines, variants, difference, method


async def modify_pending_order_items(conn, session, args) -> dict[str, Any]:
    """Change lines of a pending order to other options of the same products; settle the difference."""
    tool = "modify_pending_order_items"
    order = await _owned_order(conn, tool, session, args["order_id"], lock=True)
    _require_status(tool, order, "pending", "modify_only_pending", "modified")
    lines, variants, difference, method = await _priced_item_change(conn, tool, session, order, args)
    order["payment_history"] = order["payment_history"] + [{
        "transaction_type": "payment" if difference > 0 else "refund", "amount": money(abs(difference)),
        "payment_method_id": method["payment_method_id"]}]
    if method["source"] == GIFT_CARD:
        await _adjust_gift_card(conn, method["payment_method_id"], -difference)
    items = [dict(line) for line in order["items"]]
    for index, variant in zip(lines, variants):
        items[index].update(item_id=variant["item_id"], price=money(variant["price"]), options=variant["options"])
    order["items"] = items
    order["status"] = "pending (item modified)"
    return await _save_order(conn, order)


async def return_delivered_order_items(conn, session, args) -> dict[str, Any]:
    """Request the return of lines of a delivered order, refunded to the original method or a gift card."""
    tool = "return_delivered_order_items"
    order = await _owned_order(conn, tool, session, args["order_id"], lock=True)
    _require_status(tool, order, "delivered", "return_only_delivered", "returned")
    method = await _owned_payment_method(conn, tool, session, args["payment_method_id"])
    original = order["payment_history"][0]["payment_method_id"] if order["payment_history"] else None
    if method["source"] != GIFT_CARD and method["payment_method_id"] != original:
        raise _refuse(tool, "refund_to_original_or_gift_card",
                      f"a refund goes to the original payment method ({original}) or a gift card, not {method['payment_method_id']}")
    _match_lines(tool, order, args["item_ids"])
    order["status"] = "return requested"
    order["extra"] = {**order["extra"], "return_items": sorted(args["item_ids"]),
                      "return_payment_method_id": method["payment_method_id"]}
    return await _save_order(conn, order)


async def exchange_delivered_order_items(conn, session, args) -> dict[str, Any]:
    """Request the exchange of lines of a delivered order for other options of the same products."""
    tool = "exchange_delivered_order_items"
    order = await _owned_order(conn, tool, session, args["order_id"], lock=True)
    _require_status(tool, order, "delivered", "exchange_only_delivered", "exchanged")
    _, _, difference, method = await _priced_item_change(conn, tool, session, order, args)
    order["status"] = "exchange requested"
    order["extra"] = {**order["extra"], "exchange_items": sorted(args["item_ids"]),
                      "exchange_new_items": sorted(args["new_item_ids"]),
                      "exchange_payment_method_id": method["payment_method_id"],
                      "exchange_price_difference": money(difference)}
    return await _save_order(conn, order)


async def modify_user_address(conn, session, args) -> dict[str, Any]:
    """Change the verified customer's default address."""
    address = {key: args[key] for key in ADDRESS}
    await conn.execute("UPDATE backoffice.users SET address = %s WHERE user_id = %s",
                       [Jsonb(address), session.customer_id])
    return await _user_details(conn, session.customer_id, "modify_user_address")


OPERATIONS: dict[str, Operation] = {operation.__name__: operation for operation in (
    find_user_id_by_email, find_user_id_by_name_zip, get_user_details, get_order_details, get_product_details,
    list_all_product_types, cancel_pending_order, modify_pending_order_address, modify_pending_order_payment,
    modify_pending_order_items, return_delivered_order_items, exchange_delivered_order_items, modify_user_address,
)}


# --- in-process tools ---------------------------------------------------------------------------

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.USub: operator.neg, ast.UAdd: operator.pos}


def _evaluate(node: ast.AST) -> float:
    """Arithmetic on numbers only (no names, calls or attributes): the calculator never runs code."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError("only numbers, + - * / and parentheses are allowed")


def calculate(session: VerifiedSession, args: dict[str, Any]) -> float:
    """The expression's value rounded to cents."""
    try:
        return round(float(_evaluate(ast.parse(args["expression"], mode="eval"))), 2)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as err:
        raise ToolFailure(FailureKind.INVALID_ARGUMENTS, "calculate", f"argument expression: cannot calculate it ({err}): "
                                                                      "write it with numbers, + - * / and parentheses", field="expression") from None


LOCAL_FUNCTIONS = {
    "calculate": calculate,
    # Nothing to do: the thought is in the conversation already.
    "think": lambda session, args: "",
    # The dialog acts on the transfer (briefing, REFER); the tool only acknowledges it, as tau-bench's does.
    "transfer_to_human_agents": lambda session, args: "Transfer successful",
}


# --- building ------------------------------------------------------------------------------------

def make_tool(name: str, store: BackofficeStore, breakers: AsyncCircuitBreakerFactory | None = None) -> ToolAdapter:
    """The retail tool `name` on `store` (in-process tools ignore the store)."""
    if name in LOCAL_FUNCTIONS:
        return FunctionTool(SPECS[name], LOCAL_FUNCTIONS[name], breakers)
    return BackofficeTool(SPECS[name], store, OPERATIONS[name], breakers)


def retail_registry(store: BackofficeStore, breakers: AsyncCircuitBreakerFactory | None = None,
                    names: Iterable[str] = KNOWN_TOOLS) -> ToolRegistry:
    """A registry with the retail tools `names` (all by default) on an open store, sharing one breaker factory."""
    breakers = breakers or AsyncCircuitBreakerFactory()
    return ToolRegistry(make_tool(name, store, breakers) for name in names)


def retail_tools_config(**per_tool: Any) -> dict[str, Any]:
    """A tools configuration (the YAML shape) offering every retail tool, each with `per_tool` settings."""
    return {"tools": {name: {"kind": KIND, **per_tool} for name in KNOWN_TOOLS}}


async def build_tool(name: str, options: dict[str, Any], context: BuildContext) -> ToolAdapter:
    """Build tool `name` of kind retail_backoffice; options: dsn (default: the appliance's), max_connections."""
    store = await configured_store(KIND, name, options, context)
    return make_tool(name, store, context.breakers)
