"""A small fictional shop for the product demo: four customers, their orders, six products.

Written here (nothing from ../shared), in the retail export shape the loader takes, so the demo runs
the same tools and rules as a site's back office:

    python -m services.dialog.tools.backoffice load-demo [--config FILE]
    python -m services.dialog.tools.demo_backoffice FOLDER     # write users/orders/products.json

Every order status the tools treat differently is here: pending (cancel, change address, payment or
items), processed (nothing to change), delivered (return, exchange) and cancelled.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from services.dialog.tools.backoffice import RetailExport

# product id -> (name, [(item id, options, available, price)])
_CATALOGUE: dict[str, tuple[str, list[tuple[str, dict[str, str], bool, float]]]] = {
    "7100000001": ("Desk Lamp", [
        ("7200000011", {"color": "white", "bulb": "LED"}, True, 39.90),
        ("7200000012", {"color": "black", "bulb": "LED"}, True, 39.90),
        ("7200000013", {"color": "brass", "bulb": "halogen"}, False, 54.00),
    ]),
    "7100000002": ("Wireless Headset", [
        ("7200000021", {"color": "graphite", "noise cancelling": "yes"}, True, 129.00),
        ("7200000022", {"color": "sand", "noise cancelling": "no"}, True, 89.50),
    ]),
    "7100000003": ("Electric Kettle", [
        ("7200000031", {"capacity": "1.0L", "material": "steel"}, True, 34.99),
        ("7200000032", {"capacity": "1.7L", "material": "glass"}, True, 44.99),
        ("7200000033", {"capacity": "1.7L", "material": "steel"}, False, 41.50),
    ]),
    "7100000004": ("Rain Jacket", [
        ("7200000041", {"size": "M", "color": "navy"}, True, 79.00),
        ("7200000042", {"size": "L", "color": "navy"}, True, 79.00),
        ("7200000043", {"size": "L", "color": "olive"}, True, 84.00),
    ]),
    "7100000005": ("Notebook Set", [
        ("7200000051", {"paper": "dotted", "count": "3"}, True, 14.50),
        ("7200000052", {"paper": "lined", "count": "3"}, True, 14.50),
    ]),
    "7100000006": ("Plant Pot", [
        ("7200000061", {"diameter": "20cm", "finish": "matte"}, True, 22.00),
        ("7200000062", {"diameter": "30cm", "finish": "glazed"}, True, 31.00),
    ]),
}

# user id -> (first, last, email, (address1, address2, city, state, zip), {method id: extra fields})
_CUSTOMERS: dict[str, tuple[str, str, str, tuple[str, str, str, str, str], dict[str, dict[str, Any]]]] = {
    "ada_quill_1001": ("Ada", "Quill", "ada.quill@example.com", ("14 Lantern Row", "Apt 3", "Portland", "OR", "97205"), {
        "credit_card_1000011": {"source": "credit_card", "brand": "visa", "last_four": "4417"},
        "gift_card_1000012": {"source": "gift_card", "balance": 60.00},
    }),
    "bruno_falk_1002": ("Bruno", "Falk", "bruno.falk@example.com", ("902 Orchard Lane", "", "Madison", "WI", "53703"), {
        "paypal_1000021": {"source": "paypal"},
    }),
    "chiara_wendt_1003": ("Chiara", "Wendt", "chiara.wendt@example.com", ("5 Harbor View", "Suite 12", "Savannah", "GA", "31401"), {
        "credit_card_1000031": {"source": "credit_card", "brand": "mastercard", "last_four": "2290"},
        "gift_card_1000032": {"source": "gift_card", "balance": 15.25},
    }),
    "dev_okafor_1004": ("Dev", "Okafor", "dev.okafor@example.com", ("77 Mill Street", "", "Burlington", "VT", "05401"), {
        "gift_card_1000041": {"source": "gift_card", "balance": 250.00},
    }),
}

# order id -> (user id, status, [item ids], payment method id)
_ORDERS: dict[str, tuple[str, str, list[str], str]] = {
    "#W1000101": ("ada_quill_1001", "pending", ["7200000011", "7200000051"], "credit_card_1000011"),
    "#W1000102": ("ada_quill_1001", "delivered", ["7200000021"], "credit_card_1000011"),
    "#W1000103": ("ada_quill_1001", "cancelled", ["7200000061"], "gift_card_1000012"),
    "#W1000201": ("bruno_falk_1002", "processed", ["7200000031"], "paypal_1000021"),
    "#W1000202": ("bruno_falk_1002", "delivered", ["7200000041", "7200000052"], "paypal_1000021"),
    "#W1000301": ("chiara_wendt_1003", "pending", ["7200000042"], "credit_card_1000031"),
    "#W1000302": ("chiara_wendt_1003", "delivered", ["7200000032", "7200000062"], "gift_card_1000032"),
    "#W1000401": ("dev_okafor_1004", "pending", ["7200000022", "7200000012"], "gift_card_1000041"),
}


def demo_export() -> RetailExport:
    """The demo shop as a validated RetailExport."""
    variants = {item_id: (product_id, name, options, available, price)
                for product_id, (name, items) in _CATALOGUE.items()
                for item_id, options, available, price in items}
    products = {
        product_id: {"name": name, "product_id": product_id, "variants": {
            item_id: {"item_id": item_id, "options": dict(options), "available": available, "price": price}
            for item_id, options, available, price in items}}
        for product_id, (name, items) in _CATALOGUE.items()
    }
    users: dict[str, Any] = {}
    for user_id, (first, last, email, (address1, address2, city, state, zip_code), methods) in _CUSTOMERS.items():
        users[user_id] = {
            "name": {"first_name": first, "last_name": last},
            "address": {"address1": address1, "address2": address2, "city": city, "country": "USA", "state": state, "zip": zip_code},
            "email": email,
            "payment_methods": {method_id: {**fields, "id": method_id} for method_id, fields in methods.items()},
            "orders": [order_id for order_id, order in _ORDERS.items() if order[0] == user_id],
        }
    orders: dict[str, Any] = {}
    for number, (order_id, (user_id, status, item_ids, method_id)) in enumerate(_ORDERS.items()):
        lines = [{"name": variants[item_id][1], "product_id": variants[item_id][0], "item_id": item_id,
                  "price": variants[item_id][4], "options": dict(variants[item_id][2])} for item_id in item_ids]
        total = round(sum(line["price"] for line in lines), 2)
        history = [{"transaction_type": "payment", "amount": total, "payment_method_id": method_id}]
        if status == "cancelled":
            history.append({"transaction_type": "refund", "amount": total, "payment_method_id": method_id})
        shipped = status in ("processed", "delivered")
        orders[order_id] = {
            "order_id": order_id, "user_id": user_id, "address": dict(users[user_id]["address"]), "items": lines,
            "fulfillments": [{"tracking_id": [f"{880000000000 + number}"], "item_ids": list(item_ids)}] if shipped else [],
            "status": status, "payment_history": history,
        }
        if status == "cancelled":
            orders[order_id]["cancel_reason"] = "no longer needed"
    export = RetailExport(users, orders, products)
    export.validate("demo back office")
    return export


def write_demo_export(folder: Path | str) -> Path:
    """Write the demo shop as users.json, orders.json and products.json into `folder`; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    export = demo_export()
    for file_name, data in (("users.json", export.users), ("orders.json", export.orders), ("products.json", export.products)):
        (folder / file_name).write_text(json.dumps(data, indent=2) + "\n")
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m services.dialog.tools.demo_backoffice FOLDER", file=sys.stderr)
        sys.exit(2)
    print(write_demo_export(sys.argv[1]))
