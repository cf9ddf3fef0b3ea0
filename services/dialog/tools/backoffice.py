"""The back office in PostgreSQL (schema `backoffice`): loading exports, reading state back, and the
adapter base class for tools that run as one transaction on it.

The retail export shape is tau-bench's (users.json, orders.json, products.json: objects keyed by id,
see ../shared/data/retail/data). `load_retail(dsn, folder)` validates an export and replaces the
back office's content with it in one transaction, so re-running is idempotent and a failed load
leaves the previous content in place. The loaded export is kept, and `reset` returns to it (undoing
what the tools changed); `clear` empties everything. `state_fingerprint(dsn)` hashes the canonical content of the
customers and orders, so two runs (or a run and a reference model) can be compared.
`load_bank(dsn, db_json)` loads a bank's customer records (tau2-bench banking db.json shape).

    python -m services.dialog.tools.backoffice load-retail FOLDER [--config FILE] [--dsn DSN]
    python -m services.dialog.tools.backoffice load-demo [--config FILE] [--dsn DSN]
    python -m services.dialog.tools.backoffice load-bank DB_JSON [--config FILE] [--dsn DSN]
    python -m services.dialog.tools.backoffice reset | clear | fingerprint [--config FILE] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout
from purgatory import AsyncCircuitBreakerFactory

from services.dialog.tools.adapter import (
    FailureKind,
    ToolAdapter,
    ToolConfigError,
    ToolSpec,
    VerifiedSession,
)
from services.kit.config import ConfigError
from services.kit.database import (
    CONNECT_TIMEOUT_S,
    DatabaseError,
    describe_dsn,
    migrate,
)

SCHEMA = "backoffice"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
RETAIL_FILES = ("users.json", "orders.json", "products.json")
CENT = Decimal("0.01")
# Tables in the order a load fills them (parents first).
RETAIL_TABLES = ("users", "payment_methods", "products", "items", "orders")


class ExportError(ConfigError):
    """An export cannot be loaded; the message names the file, the place in it and the fix."""


def cents(value: Any) -> Decimal:
    """A money amount (JSON number, float, Decimal) as an exact Decimal of whole cents."""
    return Decimal(str(value)).quantize(CENT)


def money(value: Decimal) -> float:
    """A Decimal amount as the JSON number tools return (two decimals, as in the export)."""
    return float(value.quantize(CENT))


# --- export shape -------------------------------------------------------------------------------

_TEXT = {"type": "string"}
_NAME = {"type": "string", "minLength": 1}
_MONEY = {"type": "number", "minimum": 0}
_ADDRESS = {
    "type": "object",
    "properties": {key: _TEXT for key in ("address1", "address2", "city", "state", "country", "zip")},
    "required": ["address1", "address2", "city", "state", "country", "zip"],
}
_PAYMENT_METHOD = {
    "type": "object",
    "properties": {"id": _NAME, "source": _NAME, "balance": _MONEY},
    "required": ["id", "source"],
    # A gift card's balance is what the tools check payments against: it must be there.
    "if": {"properties": {"source": {"const": "gift_card"}}},
    "then": {"required": ["balance"]},
}
EXPORT_SCHEMAS: dict[str, dict[str, Any]] = {
    "users.json": {
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "properties": {
                "name": {"type": "object", "properties": {"first_name": _NAME, "last_name": _NAME},
                         "required": ["first_name", "last_name"]},
                "address": _ADDRESS,
                "email": _NAME,
                "payment_methods": {"type": "object", "additionalProperties": _PAYMENT_METHOD},
                "orders": {"type": "array", "items": _NAME},
            },
            "required": ["name", "address", "email", "payment_methods", "orders"],
        },
    },
    "orders.json": {
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "properties": {
                "order_id": _NAME,
                "user_id": _NAME,
                "address": _ADDRESS,
                "items": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"name": _TEXT, "product_id": _NAME, "item_id": _NAME, "price": _MONEY,
                                   "options": {"type": "object"}},
                    "required": ["name", "product_id", "item_id", "price", "options"],
                }},
                "fulfillments": {"type": "array", "items": {"type": "object"}},
                "status": _NAME,
                "payment_history": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"transaction_type": {"enum": ["payment", "refund"]}, "amount": _MONEY,
                                   "payment_method_id": _NAME},
                    "required": ["transaction_type", "amount", "payment_method_id"],
                }},
            },
            "required": ["order_id", "user_id", "address", "items", "fulfillments", "status", "payment_history"],
        },
    },
    "products.json": {
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "properties": {
                "name": _NAME,
                "product_id": _NAME,
                "variants": {"type": "object", "additionalProperties": {
                    "type": "object",
                    "properties": {"item_id": _NAME, "options": {"type": "object"}, "available": {"type": "boolean"},
                                   "price": _MONEY},
                    "required": ["item_id", "options", "available", "price"],
                }},
            },
            "required": ["name", "product_id", "variants"],
        },
    },
}
USER_KEYS = ("name", "address", "email", "payment_methods", "orders")
ORDER_KEYS = ("order_id", "user_id", "address", "items", "fulfillments", "status", "payment_history")


@dataclass
class RetailExport:
    """A retail back office as plain data: users, orders and products keyed by their ids."""

    users: dict[str, Any]
    orders: dict[str, Any]
    products: dict[str, Any]

    def validate(self, source: str = "export") -> None:
        """ExportError naming the first problem: a shape error, an id mismatch or a dangling reference."""
        for file_name, data in zip(RETAIL_FILES, (self.users, self.orders, self.products)):
            error = best_match(Draft202012Validator(EXPORT_SCHEMAS[file_name]).iter_errors(data))
            if error is not None:
                where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
                raise ExportError(f"{source}/{file_name}: at {where}: {error.message}: "
                                  "fix the export (it must have the tau-bench retail shape)")
        problem = _reference_problem(self)
        if problem:
            raise ExportError(f"{source}: {problem}")


def _reference_problem(export: RetailExport) -> str:
    """The first inconsistency between the three files, as a sentence naming the fix; '' if none."""
    method_owner: dict[str, str] = {}
    for user_id, user in export.users.items():
        for key, method in user["payment_methods"].items():
            if method["id"] != key:
                return f"users.json: {user_id}'s payment method {key} says its id is {method['id']}: make them equal"
            if key in method_owner:
                return f"users.json: payment method {key} belongs to both {method_owner[key]} and {user_id}: ids must be unique"
            method_owner[key] = user_id
    item_product: dict[str, str] = {}
    for product_id, product in export.products.items():
        if product["product_id"] != product_id:
            return f"products.json: product {product_id} says its id is {product['product_id']}: make them equal"
        for item_id, variant in product["variants"].items():
            if variant["item_id"] != item_id:
                return f"products.json: {product_id}'s variant {item_id} says its id is {variant['item_id']}: make them equal"
            if item_id in item_product:
                return f"products.json: item {item_id} is a variant of both {item_product[item_id]} and {product_id}: ids must be unique"
            item_product[item_id] = product_id
    listed: dict[str, str] = {}
    for user_id, user in export.users.items():
        for order_id in user["orders"]:
            if order_id in listed:
                return f"users.json: order {order_id} is listed twice ({listed[order_id]}, {user_id}): list it once, under its owner"
            listed[order_id] = user_id
    for order_id, order in export.orders.items():
        if order["order_id"] != order_id:
            return f"orders.json: order {order_id} says its id is {order['order_id']}: make them equal"
        owner = order["user_id"]
        if owner not in export.users:
            return f"orders.json: order {order_id} belongs to user {owner}, who is not in users.json: add the user or drop the order"
        if listed.get(order_id) != owner:
            return (f"users.json: order {order_id} of {owner} is not in {owner}'s order list"
                    f"{' (it is under ' + listed[order_id] + ')' if order_id in listed else ''}: list it under its owner")
        for line in order["items"]:
            if line["product_id"] not in export.products:
                return f"orders.json: order {order_id} has an item of product {line['product_id']}, which is not in products.json: add the product"
        for payment in order["payment_history"]:
            if method_owner.get(payment["payment_method_id"]) != owner:
                return (f"orders.json: order {order_id} was paid with {payment['payment_method_id']}, which is not one of "
                        f"{owner}'s payment methods: fix the payment history or the user's methods")
    for order_id, user_id in listed.items():
        if order_id not in export.orders:
            return f"users.json: {user_id} lists order {order_id}, which is not in orders.json: add the order or unlist it"
    return ""


def read_retail_export(folder: Path | str) -> RetailExport:
    """Read and validate the retail export in `folder` (users.json, orders.json, products.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"retail export folder {folder} does not exist: pass the folder holding {', '.join(RETAIL_FILES)}")
    parts = []
    for file_name in RETAIL_FILES:
        path = folder / file_name
        try:
            parts.append(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ExportError(f"{path} is missing: a retail export holds {', '.join(RETAIL_FILES)}") from None
        except UnicodeDecodeError as err:
            raise ExportError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): re-export it as UTF-8") from None
        except json.JSONDecodeError as err:
            raise ExportError(f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): "
                              "fix or re-export the file") from None
    export = RetailExport(*parts)
    export.validate(str(folder))
    return export


# --- connections --------------------------------------------------------------------------------

async def _connect(dsn: str) -> psycopg.AsyncConnection:
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                                     row_factory=dict_row)
    except psycopg.OperationalError as err:
        raise DatabaseError(f"backoffice: cannot connect to PostgreSQL at {describe_dsn(dsn)} ({str(err).strip()}): "
                            "start the database or correct the DSN") from None


class BackofficeStore:
    """A connection pool on the back office database, its migrations applied."""

    def __init__(self, pool: AsyncConnectionPool, dsn: str) -> None:
        self.pool = pool
        self.dsn = dsn

    @classmethod
    async def open(cls, dsn: str, max_connections: int = 4) -> BackofficeStore:
        """Apply pending `backoffice` migrations and open a pool of up to `max_connections`."""
        await migrate(dsn, SCHEMA, MIGRATIONS_DIR)
        pool = AsyncConnectionPool(
            dsn, min_size=1, max_size=max_connections, open=False,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT_S},
            check=AsyncConnectionPool.check_connection,
        )
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        return cls(pool, dsn)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.pool.close()


Operation = Callable[[psycopg.AsyncConnection, VerifiedSession, dict[str, Any]], Awaitable[Any]]


class BackofficeTool(ToolAdapter):
    """A tool that runs `operation(conn, session, arguments)` as one transaction on the back office.

    The transaction is read-only for a tool that does not mutate (unless `writes_audit` says it
    records an audit entry, such as a verification log, that is not a change of the caller's data),
    and carries a server-side statement_timeout equal to the tool's timeout, so a query abandoned by
    a timed-out caller stops on the server too. A mutating tool's preview runs the same operation, or
    `preview_operation` when what is read back differs from the result, and rolls it back: every
    rule is checked and the would-be outcome shown before the caller is asked to confirm.
    """

    def __init__(self, spec: ToolSpec, store: BackofficeStore, operation: Operation,
                 breakers: AsyncCircuitBreakerFactory | None = None, *,
                 preview_operation: Operation | None = None, writes_audit: bool = False) -> None:
        super().__init__(spec, breakers)
        self.store = store
        self.operation = operation
        self.preview_operation = preview_operation
        self.writes_audit = writes_audit

    async def run(self, session: VerifiedSession, arguments: dict[str, Any]) -> Any:
        """Run the operation and commit."""
        return await self._transaction(session, arguments, self.operation, commit=True)

    async def preview(self, session: VerifiedSession, arguments: dict[str, Any]) -> Any:
        """Run a mutating operation (or its preview operation) and roll it back: what confirming would do."""
        if not self.spec.mutates:
            return None
        return await self._transaction(session, arguments, self.preview_operation or self.operation, commit=False)

    async def _transaction(self, session: VerifiedSession, arguments: dict[str, Any], operation: Operation,
                           commit: bool) -> Any:
        timeout_ms = math.ceil(self.spec.timeout_s * 1000)
        try:
            async with self.store.pool.connection(timeout=self.spec.timeout_s) as conn:
                async with conn.transaction():
                    if not (self.spec.mutates or self.writes_audit):
                        await conn.execute("SET TRANSACTION READ ONLY")
                    await conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{timeout_ms}ms")))
                    result = await operation(conn, session, arguments)
                    if not commit:
                        raise psycopg.Rollback()
                return result
        except psycopg.errors.QueryCanceled:
            raise self.failure(FailureKind.TIMEOUT, f"{self.name}: the back office database did not answer within "
                                                    f"{self.spec.timeout_s:g} s (statement_timeout): tell the caller and offer to retry") from None
        except PoolTimeout:
            raise self.failure(FailureKind.UNAVAILABLE, f"{self.name}: no back office connection came free within "
                                                        f"{self.spec.timeout_s:g} s: the database is overloaded or down") from None
        except PoolClosed:
            raise self.failure(FailureKind.UNAVAILABLE, f"{self.name}: the back office connection pool is closed "
                                                        "(the service is shutting down)") from None
        except psycopg.OperationalError as err:
            raise self.failure(FailureKind.UNAVAILABLE, f"{self.name}: the back office database failed "
                                                        f"({str(err).strip()}): check PostgreSQL") from None
        except psycopg.Error as err:
            raise self.failure(FailureKind.UNAVAILABLE, f"{self.name}: the back office database refused the "
                                                        f"statement (SQLSTATE {err.sqlstate}: {str(err).strip()})") from None


# --- loading and reading back -------------------------------------------------------------------

# The stored export materialised into the tables, all in the server: one round trip however large
# the export. Each stored array is expanded once per statement (jsonb_array_elements), never looked
# up by key per row, which would de-TOAST the whole document again for every row.
_MATERIALISE = """
INSERT INTO backoffice.users (user_id, first_name, last_name, email, address, extra, ordinal)
SELECT u.value ->> 'user_id', u.value -> 'name' ->> 'first_name', u.value -> 'name' ->> 'last_name',
       u.value ->> 'email', u.value -> 'address', u.value - %(user_keys)s::text[] - 'user_id', u.ordinal
FROM backoffice.retail_export AS e, jsonb_array_elements(e.users) WITH ORDINALITY AS u (value, ordinal);

INSERT INTO backoffice.payment_methods (payment_method_id, user_id, source, balance, details, ordinal)
SELECT m.value ->> 'id', u.value ->> 'user_id', m.value ->> 'source', (m.value ->> 'balance')::numeric(12, 2),
       m.value - '{id,source,balance}'::text[], m.ordinal
FROM backoffice.retail_export AS e, jsonb_array_elements(e.users) AS u (value),
     jsonb_array_elements(u.value -> 'payment_methods') WITH ORDINALITY AS m (value, ordinal);

INSERT INTO backoffice.products (product_id, name, ordinal)
SELECT p.value ->> 'product_id', p.value ->> 'name', p.ordinal
FROM backoffice.retail_export AS e, jsonb_array_elements(e.products) WITH ORDINALITY AS p (value, ordinal);

INSERT INTO backoffice.items (item_id, product_id, options, available, price, ordinal)
SELECT v.value ->> 'item_id', p.value ->> 'product_id', v.value -> 'options', (v.value ->> 'available')::boolean,
       (v.value ->> 'price')::numeric(12, 2), v.ordinal
FROM backoffice.retail_export AS e, jsonb_array_elements(e.products) AS p (value),
     jsonb_array_elements(p.value -> 'variants') WITH ORDINALITY AS v (value, ordinal);

INSERT INTO backoffice.orders (order_id, user_id, status, address, items, fulfillments, payment_history, extra, user_ordinal)
SELECT o.value ->> 'order_id', o.value ->> 'user_id', o.value ->> 'status', o.value -> 'address', o.value -> 'items',
       o.value -> 'fulfillments', o.value -> 'payment_history', o.value - %(order_keys)s::text[], listed.position
FROM backoffice.retail_export AS e, jsonb_array_elements(e.orders) AS o (value)
JOIN (SELECT l.order_id, l.position
      FROM backoffice.retail_export AS e, jsonb_array_elements(e.users) AS u (value),
           jsonb_array_elements_text(u.value -> 'orders') WITH ORDINALITY AS l (order_id, position)) AS listed
  ON listed.order_id = o.value ->> 'order_id';
"""


def _as_arrays(export: RetailExport) -> tuple[list, list, list]:
    """The export's files as arrays of records in file order (ids inside each record), for storing."""
    users = [{**user, "user_id": user_id, "payment_methods": list(user["payment_methods"].values())}
             for user_id, user in export.users.items()]
    products = [{**product, "variants": list(product["variants"].values())} for product in export.products.values()]
    return users, list(export.orders.values()), products


async def _truncate(conn: psycopg.AsyncConnection) -> None:
    await conn.execute(sql.SQL("TRUNCATE {}").format(
        sql.SQL(", ").join(sql.Identifier(SCHEMA, table) for table in reversed(RETAIL_TABLES))))


async def _materialise(conn: psycopg.AsyncConnection) -> None:
    """Replace the tables' content with the stored export (in the caller's transaction)."""
    await _truncate(conn)
    keys = {"user_keys": list(USER_KEYS), "order_keys": list(ORDER_KEYS)}
    for statement in _MATERIALISE.split(";"):
        if statement.strip():
            await conn.execute(statement, {name: value for name, value in keys.items() if f"%({name})s" in statement})


async def load_retail_export(dsn: str, export: RetailExport, source: str = "export") -> dict[str, int]:
    """Validate `export` and make it the back office's whole retail content, in one transaction.

    The export is stored too, so `reset` can return to it. Returns how many users, orders, products
    and items were loaded.
    """
    export.validate(source)
    await migrate(dsn, SCHEMA, MIGRATIONS_DIR)
    async with await _connect(dsn) as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO backoffice.retail_export (source, users, orders, products) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (singleton) DO UPDATE SET source = excluded.source, users = excluded.users, "
            "orders = excluded.orders, products = excluded.products, loaded_at = now()",
            [source, *(Jsonb(records) for records in _as_arrays(export))])
        await _materialise(conn)
    return {"users": len(export.users), "orders": len(export.orders), "products": len(export.products),
            "items": sum(len(product["variants"]) for product in export.products.values())}


async def load_retail(dsn: str, folder: Path | str) -> dict[str, int]:
    """Load the retail export in `folder` into the back office, replacing what was there."""
    return await load_retail_export(dsn, read_retail_export(folder), str(folder))


async def load_demo_if_empty(dsn: str) -> bool:
    """Load the project's demo shop when no retail export was ever loaded; True when it was loaded now."""
    from services.dialog.tools.demo_backoffice import demo_export

    await migrate(dsn, SCHEMA, MIGRATIONS_DIR)
    async with await _connect(dsn) as conn:
        loaded = await (await conn.execute("SELECT 1 FROM backoffice.retail_export")).fetchone()
    if loaded:
        return False
    await load_retail_export(dsn, demo_export(), "demo")
    return True


async def reset(dsn: str) -> str | None:
    """Put the back office back to the export last loaded, undoing every tool's changes.

    Returns that export's source, or None (and leaves the back office empty) when none was loaded.
    """
    await migrate(dsn, SCHEMA, MIGRATIONS_DIR)
    async with await _connect(dsn) as conn, conn.transaction():
        row = await (await conn.execute("SELECT source FROM backoffice.retail_export")).fetchone()
        await _materialise(conn)
    return row["source"] if row else None


async def clear(dsn: str) -> None:
    """Empty the back office (retail and bank records, the appointment calendar) and forget the loaded export."""
    await migrate(dsn, SCHEMA, MIGRATIONS_DIR)
    async with await _connect(dsn) as conn, conn.transaction():
        await _truncate(conn)
        await conn.execute("DELETE FROM backoffice.retail_export")
        await conn.execute("TRUNCATE backoffice.bank_records, backoffice.bank_collections")
        await conn.execute("TRUNCATE backoffice.appointment_bookings, backoffice.appointment_slots")


# --- the bank's customer records (tau2-bench banking db.json) -------------------------------------

# Record keys naming the customer a record belongs to, first found wins.
BANK_OWNER_KEYS = ("user_id", "referrer_id")
BANK_SCHEMA = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": {
        "type": "object",
        "properties": {"data": {"type": "object", "additionalProperties": {"type": "object"}},
                       "notes": {"type": ["string", "null"]}},
        "required": ["data"],
    },
}


def read_bank_export(path: Path | str) -> dict[str, Any]:
    """Read and validate a bank export (db.json: {collection: {data: {record id: record}, notes}})."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"bank export {path} does not exist: pass the path of db.json") from None
    except UnicodeDecodeError as err:
        raise ExportError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): re-export it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise ExportError(f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): "
                          "fix or re-export the file") from None
    error = best_match(Draft202012Validator(BANK_SCHEMA).iter_errors(data))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ExportError(f"{path}: at {where}: {error.message}: a bank export maps each collection to "
                          "{\"data\": {record id: record}, \"notes\": text}")
    return data


async def load_bank(dsn: str, db_json: Path | str) -> dict[str, int]:
    """Replace the bank's customer records with the export at `db_json`, in one transaction.

    Returns the number of records loaded per collection.
    """
    export = read_bank_export(db_json)
    await migrate(dsn, SCHEMA, MIGRATIONS_DIR)
    async with await _connect(dsn) as conn, conn.transaction():
        await conn.execute("TRUNCATE backoffice.bank_records, backoffice.bank_collections")
        cursor = conn.cursor()
        async with cursor.copy("COPY backoffice.bank_collections (collection, notes, ordinal) FROM STDIN") as copy:
            for ordinal, (collection, content) in enumerate(export.items()):
                await copy.write_row((collection, content.get("notes") or "", ordinal))
        async with cursor.copy("COPY backoffice.bank_records (collection, record_id, user_id, account_id, data, ordinal) "
                               "FROM STDIN") as copy:
            for collection, content in export.items():
                for ordinal, (record_id, record) in enumerate(content["data"].items()):
                    owner = next((str(record[key]) for key in BANK_OWNER_KEYS if record.get(key)), None)
                    account = record.get("account_id")
                    await copy.write_row((collection, record_id, owner, str(account) if account else None,
                                          Jsonb(record), ordinal))
    return {collection: len(content["data"]) for collection, content in export.items()}


def payment_method_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A payment_methods row in the export's shape."""
    method = {"source": row["source"], **row["details"], "id": row["payment_method_id"]}
    if row["balance"] is not None:
        method["balance"] = money(row["balance"])
    return method


def user_json(row: Mapping[str, Any], methods: list[Mapping[str, Any]], order_ids: list[str]) -> dict[str, Any]:
    """A users row (with its payment method rows and order ids) in the export's shape."""
    return {
        "name": {"first_name": row["first_name"], "last_name": row["last_name"]},
        "address": row["address"],
        "email": row["email"],
        "payment_methods": {method["payment_method_id"]: payment_method_json(method) for method in methods},
        "orders": order_ids,
        **row["extra"],
    }


def order_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """An orders row in the export's shape (the tools' extra keys after the standard ones)."""
    return {"order_id": row["order_id"], "user_id": row["user_id"], "address": row["address"], "items": row["items"],
            "fulfillments": row["fulfillments"], "status": row["status"], "payment_history": row["payment_history"],
            **row["extra"]}


async def export_retail_state(conn: psycopg.AsyncConnection) -> tuple[dict[str, Any], dict[str, Any]]:
    """The back office's users and orders in the export's shape (for fingerprints and dumps)."""
    methods: dict[str, list] = {}
    for row in await (await conn.execute("SELECT * FROM backoffice.payment_methods ORDER BY user_id, ordinal")).fetchall():
        methods.setdefault(row["user_id"], []).append(row)
    orders: dict[str, Any] = {}
    order_ids: dict[str, list[str]] = {}
    for row in await (await conn.execute("SELECT * FROM backoffice.orders ORDER BY user_id, user_ordinal")).fetchall():
        orders[row["order_id"]] = order_json(row)
        order_ids.setdefault(row["user_id"], []).append(row["order_id"])
    users = {row["user_id"]: user_json(row, methods.get(row["user_id"], []), order_ids.get(row["user_id"], []))
             for row in await (await conn.execute("SELECT * FROM backoffice.users ORDER BY ordinal")).fetchall()}
    return users, orders


def _canonical(value: Any) -> Any:
    """`value` with every number written as a string of whole cents (so 60, 60.0 and 59.999999999 agree)."""
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    # format() rounds int, float and Decimal alike (half to even on the exact value).
    return format(value, ".2f")


def fingerprint_retail(users: Mapping[str, Any], orders: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of users and orders in the export's shape.

    Key order does not count; list order does (order lines, payment history). Numbers are compared
    in whole cents, as money is: tau-bench's float arithmetic and PostgreSQL's numeric then agree.
    """
    text = json.dumps({"users": _canonical(users), "orders": _canonical(orders)}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


async def state_fingerprint(dsn: str) -> str:
    """The fingerprint (fingerprint_retail) of the back office's current users and orders."""
    async with await _connect(dsn) as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return fingerprint_retail(*await export_retail_state(conn))


# --- command line -------------------------------------------------------------------------------

def _resolve_dsn(args: argparse.Namespace) -> str:
    """--dsn, else database.dsn of the configuration, else the running appliance's embedded PostgreSQL."""
    from services.appliance.supervisor import appliance_dsn  # the command line's need only
    from services.kit.config import load_settings

    return appliance_dsn(load_settings(args.config), args.dsn, "load into")


def main(argv: list[str] | None = None) -> int:
    """The back office command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m services.dialog.tools.backoffice",
                                     description="Load, reset and fingerprint the dialog tools' back office.")
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load-retail", help="replace the retail back office with the export in FOLDER")
    load.add_argument("folder", type=Path)
    commands.add_parser("load-demo", help="replace the retail back office with the built-in demo shop")
    bank = commands.add_parser("load-bank", help="replace the bank's customer records with the export DB_JSON")
    bank.add_argument("db_json", type=Path)
    commands.add_parser("reset", help="put the back office back to the export last loaded")
    commands.add_parser("clear", help="empty the back office and forget the loaded export")
    commands.add_parser("fingerprint", help="print the sha256 of the users' and orders' canonical content")
    for command in commands.choices.values():
        command.add_argument("--config", type=Path, help="QuietLine config file (for database.dsn)")
        command.add_argument("--dsn", help="PostgreSQL connection string (overrides the config)")
    args = parser.parse_args(argv)
    try:
        dsn = _resolve_dsn(args)
        if args.command == "load-retail":
            counts = asyncio.run(load_retail(dsn, args.folder))
            print(json.dumps(counts))
        elif args.command == "load-demo":
            from services.dialog.tools.demo_backoffice import demo_export

            counts = asyncio.run(load_retail_export(dsn, demo_export(), "demo back office"))
            print(json.dumps(counts))
        elif args.command == "load-bank":
            print(json.dumps(asyncio.run(load_bank(dsn, args.db_json))))
        elif args.command == "reset":
            source = asyncio.run(reset(dsn))
            print(f"back office reset to {source}" if source else "no export loaded: the back office is empty")
        elif args.command == "clear":
            asyncio.run(clear(dsn))
        else:
            print(asyncio.run(state_fingerprint(dsn)))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


# Options every back-office tool kind takes in a tools YAML file.
STORE_OPTION_KEYS = frozenset({"dsn", "max_connections"})


async def configured_store(kind: str, name: str, options: dict[str, Any], context: Any,
                           extra_keys: frozenset[str] = frozenset()) -> BackofficeStore:
    """The back-office store tool `name` of `kind` names in its options (dsn, default the appliance's;
    max_connections), checked with the fix named; tools naming the same database and pool size share one pool.
    `extra_keys` are the kind's own further options."""
    allowed = STORE_OPTION_KEYS | extra_keys
    unknown = set(options) - allowed
    if unknown:
        raise ToolConfigError(f"tools config, tool {name}: unknown option(s) {', '.join(sorted(unknown))} for kind {kind}: "
                              f"it takes {', '.join(sorted(allowed))}")
    dsn = options.get("dsn") or context.default_dsn
    if not dsn:
        raise ToolConfigError(f"tools config, tool {name}: kind {kind} needs a database: set options.dsn or database.dsn")
    max_connections = options.get("max_connections", 4)
    if not isinstance(max_connections, int) or max_connections < 1:
        raise ToolConfigError(f"tools config, tool {name}: options.max_connections must be a whole number >= 1")
    return await context.resource((kind, dsn, max_connections), lambda: BackofficeStore.open(dsn, max_connections),
                                  BackofficeStore.close)
