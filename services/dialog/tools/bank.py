"""The bank's back-office tools over the PostgreSQL back office (tau2-bench's banking records), with the bank's policy.

The records are the ones `backoffice.load_bank` loads: backoffice.bank_records holds every
collection of the export (users, accounts, credit_card_accounts, credit_card_orders, ...) as jsonb,
with the owning customer in the indexed `user_id` column. Each tool acts for the session's verified
customer only: no schema names a customer, every lookup is filtered by the session's customer, and
a record of another customer is answered exactly as a missing one (not_found, the same message), so
a caller learns nothing about other customers' records.

verify_bank_customer is what the verification flow calls to establish the session: the full name
must match one customer, and every other detail given (at least two of phone number, e-mail, date
of birth, address) must match that customer's record. Spoken forms are compared after
normalisation (phone digits, e-mail case, dates in any common order, street abbreviations); a
failure never says which detail was wrong.

What the data says, and what the tools do with it (db.json's collection notes and the bank's
replacement procedure, ../shared/data/kb/banking/documents/doc_credit_cards_credit_card_replacements_001.json):
- credit_card_accounts.status is "ACTIVE" or "CLOSED" (with closed_date); most records carry no
  status at all, and no closed_date, so a missing status means ACTIVE.
- credit_card_orders.status is one of ORDERED, PROCESSING, SHIPPED, DELIVERED, CANCELLED. A new
  replacement order is ORDERED (the first state, as tau2-bench's own tool writes it). Any order not
  DELIVERED or CANCELLED is still on its way and blocks a second replacement of the same card.
- Replacing a card cancels the old one: its account becomes CLOSED with today's closed_date.
- Expedited shipping (2-3 business days) costs $15.00 for entry-tier cards, $10.00 for mid-tier and
  nothing for premium; standard shipping (7-10 business days) is free.

The rules enforced, each named in the ToolFailure's `rule`: only an active card is replaced
(replace_only_active); one replacement per card at a time (one_pending_replacement). A replacement
and an e-mail change read back a preview and wait for the caller's yes.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from purgatory import AsyncCircuitBreakerFactory

from services.dialog.slots import extract_date
from services.dialog.tools.adapter import (
    BuildContext,
    FailureKind,
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
    money,
    configured_store,
)

KIND = "bank_backoffice"
NONE, VERIFIED = VerificationLevel.NONE, VerificationLevel.VERIFIED
# Timeouts: a lookup is one indexed query; a change (or the verification log) locks and writes a few rows.
READ_TIMEOUT_S = 2.0
WRITE_TIMEOUT_S = 4.0
DATE_FORMAT = "%m/%d/%Y"  # how every date in the bank's records is written
REPLACEMENT_REASONS = ("fraud_suspected", "lost", "stolen", "damaged", "expired", "other")
ACTIVE, CLOSED = "ACTIVE", "CLOSED"
NEW_ORDER_STATUS = "ORDERED"
FINAL_ORDER_STATUSES = ("DELIVERED", "CANCELLED")
# Expedited replacement fees by tier, from the replacement procedure; a card type belongs to a tier
# when it starts with one of the tier's names. Premium (Gold, Platinum, Diamond Elite) and any card
# type the procedure does not name ship expedited for free.
EXPEDITED_FEE_TIERS = (
    (("Bronze Rewards", "EcoCard", "Business Bronze"), Decimal("15.00")),
    (("Silver Rewards", "Business Silver", "Green Rewards", "Silver Zoom"), Decimal("10.00")),
)
PREMIUM_FEE = Decimal("0.00")
# (days the order date is moved on to give expected_delivery, the window read to the caller)
EXPEDITED_DELIVERY = (3, "2-3 business days")
STANDARD_DELIVERY = (10, "7-10 business days")
# The identity details verify_bank_customer compares besides the name, and how many must match.
IDENTITY_FIELDS = ("phone_number", "email", "date_of_birth", "address")
MIN_MATCHED_DETAILS = 2


# --- LLM-facing schemas -------------------------------------------------------------------------

def _arguments(properties: dict[str, Any], optional: Iterable[str] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": [name for name in properties if name not in set(optional)], "additionalProperties": False}


CREDIT_CARD_ACCOUNT_ID = {"type": "string", "minLength": 1,
                          "description": "The credit card account id, such as 'cc_0a1b2c3d4e_gold', as listed by list_credit_card_accounts."}
CONFIRM = " The agent needs to explain the detail and ask for explicit user confirmation (yes/no) to proceed."

SPECS: dict[str, ToolSpec] = {spec.name: spec for spec in (
    ToolSpec("verify_bank_customer",
             "Verify the caller's identity; every other bank tool needs it first. Pass the full name the caller gives "
             "and at least two of: phone number, e-mail, date of birth, home address, as the caller said them "
             "(formatting does not matter). It succeeds only if the name and every detail given match one customer's "
             "record; on failure it does not say which detail was wrong, and neither may the agent. Returns the "
             "customer id, the name on file and which details matched, and logs the verification.",
             _arguments({"full_name": {"type": "string", "minLength": 1, "description": "The caller's full name, such as 'Jane Doe'."},
                         "phone_number": {"type": "string", "description": "The caller's phone number, such as '512-555-0147'."},
                         "email": {"type": "string", "description": "The caller's e-mail address, such as 'jane.doe@example.com'."},
                         "date_of_birth": {"type": "string", "description": "The caller's date of birth, such as '03/15/1992' or 'March 15, 1992'."},
                         "address": {"type": "string", "description": "The caller's home address, such as '742 Maple Street, Austin, TX 78701'."}},
                        optional=IDENTITY_FIELDS),
             requires=NONE, identifies_caller=True, timeout_s=WRITE_TIMEOUT_S),
    ToolSpec("list_credit_card_accounts",
             "List the verified customer's credit card accounts: account id, card type, status (ACTIVE or CLOSED), "
             "current balance, reward points and the date the account was opened.",
             _arguments({}), timeout_s=READ_TIMEOUT_S),
    ToolSpec("get_credit_card_transactions",
             "Get the most recent transactions of one of the verified customer's credit card accounts, newest first: "
             "transaction id, merchant, amount, date, category and status.",
             _arguments({"credit_card_account_id": CREDIT_CARD_ACCOUNT_ID,
                         "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10,
                                   "description": "How many transactions to return, 1 to 50 (default 10)."}},
                        optional=("limit",)),
             timeout_s=READ_TIMEOUT_S),
    ToolSpec("order_replacement_credit_card",
             "Order a replacement for one of the verified customer's credit cards; the old card is cancelled (its account "
             "closed) as soon as the replacement is ordered. Only an active card with no replacement already on its way "
             "can be replaced. Standard shipping takes 7-10 business days and is free; expedited takes 2-3 business days "
             "and costs $15.00 for Bronze Rewards, EcoCard and Business Bronze cards, $10.00 for Silver Rewards, Business "
             "Silver, Green Rewards and Silver Zoom cards, and nothing for Gold, Platinum, Diamond Elite and other premium "
             "cards. For fraud_suspected or stolen, recommend expedited shipping. Confirm the shipping address with the "
             "caller, including any unit or suite." + CONFIRM,
             _arguments({"credit_card_account_id": CREDIT_CARD_ACCOUNT_ID,
                         "reason": {"type": "string", "enum": list(REPLACEMENT_REASONS),
                                    "description": "Why the card is replaced: one of 'fraud_suspected', 'lost', 'stolen', 'damaged', 'expired', 'other'."},
                         "shipping_address": {"type": "string", "minLength": 1, "pattern": r"\S",
                                              "description": "The full address the new card is sent to, as confirmed by the caller, such as '742 Maple Street, Apt 4, Austin, TX 78701'."},
                         "expedited_shipping": {"type": "boolean",
                                                "description": "True for expedited shipping (2-3 business days, a fee by card tier), false for standard (7-10 business days, free)."}}),
             mutates=True, timeout_s=WRITE_TIMEOUT_S),
    ToolSpec("get_customer_profile",
             "Get the verified customer's profile: name, home address (to confirm where a card is sent), and the "
             "e-mail address and phone number on file, masked.",
             _arguments({}), timeout_s=READ_TIMEOUT_S),
    ToolSpec("list_bank_accounts",
             "List the verified customer's bank accounts (checking and savings): account id, class, level, status and "
             "current holdings.",
             _arguments({}), timeout_s=READ_TIMEOUT_S),
    ToolSpec("change_user_email",
             "Change the e-mail address on the verified customer's profile." + CONFIRM,
             _arguments({"new_email": {"type": "string", "minLength": 1,
                                       "description": "The new e-mail address, spelled out, such as 'jane.doe@example.com'."}}),
             mutates=True, timeout_s=WRITE_TIMEOUT_S),
)}
KNOWN_TOOLS = tuple(SPECS)


# --- comparing what a caller says with the record ---------------------------------------------------

# Street words and their abbreviations, compared as the abbreviation.
ADDRESS_ABBREVIATIONS = {
    "street": "st", "avenue": "ave", "av": "ave", "drive": "dr", "road": "rd", "lane": "ln", "suite": "ste",
    "apartment": "apt", "boulevard": "blvd", "court": "ct", "place": "pl", "parkway": "pkwy", "highway": "hwy",
    "terrace": "ter", "circle": "cir", "square": "sq", "north": "n", "south": "s", "east": "e", "west": "w",
    "northeast": "ne", "northwest": "nw", "southeast": "se", "southwest": "sw",
}
# An address as people write one: a local part, '@', and a domain of dot-separated labels ending in
# a top-level domain of letters. Deliberately plain: a spoken address that fails it needs re-spelling.
EMAIL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                   r"@([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}")


def _folded(text: str) -> str:
    """`text` case-folded with accents removed (a transcript writes 'Rodriguez' for 'Rodríguez')."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()


def name_key(name: str) -> str:
    """A name's letters and digits only, folded: case, spacing, hyphens and apostrophes do not count."""
    return "".join(char for char in _folded(name) if char.isalnum())


def phone_key(phone: str) -> str:
    """The last 10 digits of a phone number (a leading country code 1 or formatting do not count)."""
    return re.sub(r"\D", "", phone)[-10:]


def email_key(email: str) -> str:
    """An e-mail address trimmed and case-folded."""
    return email.strip().casefold()


def date_key(text: str) -> str | None:
    """A date written or said in any common way ('07/22/1985', '1985-07-22', 'July 22nd, 1985') as
    MM/DD/YYYY (the dialog's one date reader, services.dialog.slots.extract_date); None when it is none."""
    return extract_date(text)


def address_words(address: str) -> list[str]:
    """An address as folded words, punctuation dropped and street words abbreviated ('Ln.' and 'Lane' agree)."""
    return [ADDRESS_ABBREVIATIONS.get(word, word) for word in re.findall(r"[0-9a-z]+", _folded(address))]


def address_matches(given: str, on_file: str) -> bool:
    """True when `given` is the address on file, or the same address with its end left off or added to.

    A caller often stops after the street or the city, and some records have no zip code: one
    address may end early as long as it still holds the whole street line of the one on file.
    """
    given_words, file_words = address_words(given), address_words(on_file)
    if not given_words or not file_words:
        return False
    shorter, longer = sorted((given_words, file_words), key=len)
    street_line = address_words(on_file.split(",", 1)[0])
    return longer[:len(shorter)] == shorter and len(shorter) >= len(street_line)


def _same_date(given: str, on_file: str) -> bool:
    given_date = date_key(given)
    return given_date is not None and given_date == date_key(on_file)


# Identity detail -> whether what the caller said matches the record's value.
DETAIL_MATCHES: dict[str, Callable[[str, str], bool]] = {
    "phone_number": lambda given, on_file: len(phone_key(given)) == 10 and phone_key(given) == phone_key(on_file),
    "email": lambda given, on_file: email_key(given) == email_key(on_file),
    "date_of_birth": _same_date,
    "address": address_matches,
}


def mask_email(email: str) -> str:
    """An e-mail address with its local part hidden but its first letter: 'k***@outlook.com'."""
    local, at, domain = email.strip().partition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def expedited_fee(card_type: str) -> Decimal:
    """The expedited-shipping fee of a replacement card of `card_type` (its tier's fee; premium is free)."""
    folded = card_type.casefold()
    for names, fee in EXPEDITED_FEE_TIERS:
        if any(folded.startswith(name.casefold()) for name in names):
            return fee
    return PREMIUM_FEE


# --- records ------------------------------------------------------------------------------------

def _refuse(tool: str, rule: str, message: str) -> ToolFailure:
    return ToolFailure(FailureKind.POLICY_REFUSED, tool, f"{message} (policy rule: {rule})", rule=rule)


def _card_status(card: dict[str, Any]) -> str:
    # Most exported accounts carry no status (and no closed_date): those are open, i.e. ACTIVE.
    return str(card.get("status") or ACTIVE).upper()


async def _customer_records(conn: psycopg.AsyncConnection, collection: str, customer_id: str) -> list[dict[str, Any]]:
    """The records of `collection` that belong to `customer_id`, in export order."""
    cursor = await conn.execute("SELECT data FROM backoffice.bank_records WHERE collection = %s AND user_id = %s "
                                "ORDER BY ordinal", [collection, customer_id])
    return [row["data"] for row in await cursor.fetchall()]


async def _owned_card(conn: psycopg.AsyncConnection, tool: str, session: VerifiedSession, account_id: str,
                      lock: bool = False) -> dict[str, Any]:
    """The session customer's credit card account `account_id`; not_found otherwise. `lock` holds it FOR UPDATE."""
    cursor = await conn.execute(
        "SELECT data FROM backoffice.bank_records WHERE collection = 'credit_card_accounts' AND record_id = %s "
        "AND user_id = %s" + (" FOR UPDATE" if lock else ""), [account_id, session.customer_id])
    row = await cursor.fetchone()
    if row is None:
        # Another customer's account gets the very answer a missing one gets: nothing says it exists.
        raise ToolFailure(FailureKind.NOT_FOUND, tool, f"the caller has no credit card account {account_id}: "
                                                       "list_credit_card_accounts gives the caller's account ids",
                          field="credit_card_account_id")
    return row["data"]


async def _customer(conn: psycopg.AsyncConnection, tool: str, session: VerifiedSession, lock: bool = False) -> dict[str, Any]:
    """The session customer's users record; not_found when it has gone. `lock` holds it FOR UPDATE."""
    cursor = await conn.execute("SELECT data FROM backoffice.bank_records WHERE collection = 'users' AND user_id = %s "
                                "ORDER BY ordinal LIMIT 1" + (" FOR UPDATE" if lock else ""), [session.customer_id])
    row = await cursor.fetchone()
    if row is None:
        raise ToolFailure(FailureKind.NOT_FOUND, tool, "the verified customer's record no longer exists in the back "
                                                       "office: hand the call to a colleague")
    return row["data"]


async def _insert_record(conn: psycopg.AsyncConnection, collection: str, record_id: str, owner: str,
                         data: dict[str, Any]) -> bool:
    """Append `data` to `collection` as `record_id` (after the export's records); False when the id is taken."""
    # A bank export without this collection still gets the record: the collection is created on first use.
    await conn.execute("INSERT INTO backoffice.bank_collections (collection, ordinal) "
                       "SELECT %s, coalesce(max(ordinal) + 1, 0) FROM backoffice.bank_collections "
                       "ON CONFLICT (collection) DO NOTHING", [collection])
    cursor = await conn.execute(
        "INSERT INTO backoffice.bank_records (collection, record_id, user_id, account_id, data, ordinal) "
        "SELECT %s, %s, %s, %s, %s, coalesce(max(ordinal) + 1, 0) FROM backoffice.bank_records WHERE collection = %s "
        "ON CONFLICT (collection, record_id) DO NOTHING RETURNING record_id",
        [collection, record_id, owner, data.get("account_id"), Jsonb(data), collection])
    return await cursor.fetchone() is not None


async def _update_record(conn: psycopg.AsyncConnection, collection: str, record_id: str, changes: dict[str, Any]) -> None:
    """Set the keys of `changes` in a record's data, leaving its other keys as they are."""
    await conn.execute("UPDATE backoffice.bank_records SET data = data || %s WHERE collection = %s AND record_id = %s",
                       [Jsonb(changes), collection, record_id])


# --- operations ---------------------------------------------------------------------------------

VERIFICATION_FAILED = ("those details do not match a customer record: ask the caller to check and repeat their full "
                       "name and at least two of phone number, e-mail, date of birth and home address; do not tell "
                       "them which detail did not match")


async def verify_bank_customer(conn, session, args) -> dict[str, Any]:
    """Identify the caller by name plus at least two matching details; log the verification.

    Not a `mutates` tool: it changes none of the caller's data, so there is nothing to read back and
    confirm. It does append the bank's verification_history record (the on-file details and the
    time), the audit trail that shows the agent verified the caller before acting.
    """
    tool = "verify_bank_customer"
    given = {field: args[field].strip() for field in IDENTITY_FIELDS if isinstance(args.get(field), str) and args[field].strip()}
    # Decided on the arguments alone, so it says nothing about any record.
    if len(given) < MIN_MATCHED_DETAILS:
        raise ToolFailure(FailureKind.INVALID_ARGUMENTS, tool,
                          f"{tool} needs the full name and at least {MIN_MATCHED_DETAILS} of {', '.join(IDENTITY_FIELDS)}; "
                          f"{len(given)} given: ask the caller for another detail", field="(arguments)")
    wanted = name_key(args["full_name"])
    # A linear scan: names are compared folded (accents, punctuation), which no index of the jsonb holds.
    cursor = await conn.execute("SELECT user_id, data FROM backoffice.bank_records WHERE collection = 'users' "
                                "AND user_id IS NOT NULL ORDER BY ordinal")
    named = [row for row in await cursor.fetchall() if wanted and name_key(str(row["data"].get("name", ""))) == wanted]
    # Every way of failing (no such name, two customers of that name, a detail that differs) reads the same.
    if len(named) != 1:
        raise ToolFailure(FailureKind.NOT_FOUND, tool, VERIFICATION_FAILED)
    customer_id, user = named[0]["user_id"], named[0]["data"]
    if not all(DETAIL_MATCHES[field](value, str(user.get(field) or "")) for field, value in given.items()):
        raise ToolFailure(FailureKind.NOT_FOUND, tool, VERIFICATION_FAILED)
    now = datetime.now().astimezone()
    entry = {"name": user.get("name"), "user_id": customer_id, "address": user.get("address"), "email": user.get("email"),
             "phone_number": user.get("phone_number"), "date_of_birth": user.get("date_of_birth"),
             "time_verified": now.strftime("%Y-%m-%d %H:%M:%S %Z")}
    base_id = f"{customer_id}_{now:%Y%m%d}"
    suffix = 1
    while not await _insert_record(conn, "verification_history", base_id if suffix == 1 else f"{base_id}_{suffix}",
                                   customer_id, entry):
        suffix += 1  # verified more than once today: the n-th entry of the day is <id>_<date>_<n>
    return {"customer_id": customer_id, "name": user.get("name"), "matched": sorted(given)}


async def list_credit_card_accounts(conn, session, args) -> list[dict[str, Any]]:
    """The verified customer's credit card accounts."""
    return [{"credit_card_account_id": card.get("account_id"), "card_type": card.get("card_type"),
             "status": _card_status(card), "current_balance": card.get("current_balance"),
             "reward_points": card.get("reward_points"), "date_of_account_open": card.get("date_of_account_open")}
            for card in await _customer_records(conn, "credit_card_accounts", session.customer_id)]


def _newest_first(transactions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Transactions by date, newest first; same-day ones in record order, undated ones last."""
    def key(indexed: tuple[int, dict[str, Any]]) -> tuple[int, int]:
        index, transaction = indexed
        written = date_key(str(transaction.get("transaction_date", "")))
        day = datetime.strptime(written, DATE_FORMAT).toordinal() if written else 0
        return -day, index
    return [transaction for _, transaction in sorted(enumerate(transactions), key=key)]


async def get_credit_card_transactions(conn, session, args) -> list[dict[str, Any]]:
    """The latest transactions of one of the customer's cards."""
    card = await _owned_card(conn, "get_credit_card_transactions", session, args["credit_card_account_id"])
    # The transaction history names the card by its type, not its account id: the customer's
    # transactions on a card of this type are this account's.
    cursor = await conn.execute(
        "SELECT data FROM backoffice.bank_records WHERE collection = 'credit_card_transaction_history' AND user_id = %s "
        "AND data ->> 'credit_card_type' = %s ORDER BY ordinal", [session.customer_id, card.get("card_type")])
    limit = int(args.get("limit", 10))  # the schema lets 10.0 through as an integer
    transactions = _newest_first([row["data"] for row in await cursor.fetchall()])[:limit]
    return [{key: transaction.get(key) for key in ("transaction_id", "merchant_name", "transaction_amount",
                                                   "transaction_date", "category", "status")}
            for transaction in transactions]


async def _replacement_plan(conn, session, args) -> dict[str, Any]:
    """The replacement `args` ask for, checked against the policy (the card locked): what is read back."""
    tool = "order_replacement_credit_card"
    account_id = args["credit_card_account_id"]
    card = await _owned_card(conn, tool, session, account_id, lock=True)
    cursor = await conn.execute(
        "SELECT data FROM backoffice.bank_records WHERE collection = 'credit_card_orders' "
        "AND data ->> 'credit_card_account_id' = %s AND upper(coalesce(data ->> 'status', '')) <> ALL(%s) "
        "ORDER BY ordinal LIMIT 1", [account_id, list(FINAL_ORDER_STATUSES)])
    pending = await cursor.fetchone()
    # Checked before the card's status: a card closed by a replacement still in transit is best
    # explained by that replacement.
    if pending is not None:
        order = pending["data"]
        raise _refuse(tool, "one_pending_replacement",
                      f"a replacement for {account_id} is already on its way (order {order.get('order_id')}, "
                      f"{order.get('status') or 'status unknown'}, expected delivery {order.get('expected_delivery') or 'not known'}): "
                      "a second one cannot be ordered until it is delivered or cancelled")
    status = _card_status(card)
    if status != ACTIVE:
        raise _refuse(tool, "replace_only_active",
                      f"credit card account {account_id} is {status}: only an active card can be replaced; "
                      "offer a colleague for a closed account")
    fee = expedited_fee(str(card.get("card_type", ""))) if args["expedited_shipping"] else Decimal("0.00")
    _, window = EXPEDITED_DELIVERY if args["expedited_shipping"] else STANDARD_DELIVERY
    return {"credit_card_account_id": account_id, "card_type": card.get("card_type"), "reason": args["reason"],
            "shipping_address": args["shipping_address"].strip(), "expedited_shipping": args["expedited_shipping"],
            "fee": money(fee), "delivery_window": window}


async def preview_replacement(conn, session, args) -> dict[str, Any]:
    """What ordering the replacement would do, read back before the caller confirms."""
    return await _replacement_plan(conn, session, args)


async def order_replacement_credit_card(conn, session, args) -> dict[str, Any]:
    """Order the replacement card and close the old card's account, in one transaction."""
    plan = await _replacement_plan(conn, session, args)
    today = date.today()
    days, _ = EXPEDITED_DELIVERY if plan["expedited_shipping"] else STANDARD_DELIVERY
    order = {"order_id": "", "credit_card_account_id": plan["credit_card_account_id"], "user_id": session.customer_id,
             "shipping_address": plan["shipping_address"], "reason": plan["reason"],
             "expedited_shipping": plan["expedited_shipping"], "order_date": today.strftime(DATE_FORMAT),
             "expected_delivery": (today + timedelta(days=days)).strftime(DATE_FORMAT), "status": NEW_ORDER_STATUS}
    while True:  # 32 random bits: a clash is rare, and the insert tells
        order["order_id"] = f"ccord_{secrets.token_hex(4)}"
        if await _insert_record(conn, "credit_card_orders", order["order_id"], session.customer_id, order):
            break
    # The procedure cancels the old card as soon as the replacement is ordered.
    await _update_record(conn, "credit_card_accounts", plan["credit_card_account_id"],
                         {"status": CLOSED, "closed_date": today.strftime(DATE_FORMAT)})
    return {**order, "fee": plan["fee"]}


async def get_customer_profile(conn, session, args) -> dict[str, Any]:
    """The verified customer's name and address, with the e-mail and phone number masked."""
    user = await _customer(conn, "get_customer_profile", session)
    phone = phone_key(str(user.get("phone_number") or ""))
    return {"name": user.get("name"), "address": user.get("address"),
            "email_masked": mask_email(str(user.get("email") or "")) if user.get("email") else None,
            "phone_masked": f"***-***-{phone[-4:]}" if len(phone) == 10 else None}


async def list_bank_accounts(conn, session, args) -> list[dict[str, Any]]:
    """The verified customer's bank accounts."""
    return [{key: account.get(key) for key in ("account_id", "class", "level", "status", "current_holdings")}
            for account in await _customer_records(conn, "accounts", session.customer_id)]


async def _email_change(conn, session, args) -> dict[str, Any]:
    """The e-mail change `args` ask for, checked (the customer's record locked): what is read back."""
    tool = "change_user_email"
    new_email = args["new_email"].strip()
    if not EMAIL.fullmatch(new_email):
        raise ToolFailure(FailureKind.INVALID_ARGUMENTS, tool,
                          f"argument new_email: {new_email!r} is not an e-mail address: ask the caller to spell it "
                          "out, in the form name@example.com", field="new_email")
    user = await _customer(conn, tool, session, lock=True)
    on_file = str(user.get("email") or "")
    if email_key(on_file) == email_key(new_email):
        raise ToolFailure(FailureKind.INVALID_ARGUMENTS, tool,
                          "argument new_email: it is already the e-mail address on file, so there is nothing to "
                          "change: ask the caller for the new address", field="new_email")
    return {"old_email_on_file_masked": mask_email(on_file), "new_email": new_email}


async def preview_email_change(conn, session, args) -> dict[str, Any]:
    """What changing the e-mail address would do, read back before the caller confirms."""
    return await _email_change(conn, session, args)


async def change_user_email(conn, session, args) -> dict[str, Any]:
    """Change the e-mail address on the customer's profile."""
    change = await _email_change(conn, session, args)
    await conn.execute("UPDATE backoffice.bank_records SET data = data || %s WHERE collection = 'users' AND user_id = %s",
                       [Jsonb({"email": change["new_email"]}), session.customer_id])
    return change


OPERATIONS: dict[str, Operation] = {operation.__name__: operation for operation in (
    verify_bank_customer, list_credit_card_accounts, get_credit_card_transactions, order_replacement_credit_card,
    get_customer_profile, list_bank_accounts, change_user_email,
)}
# What a mutating tool reads back for confirmation, where that differs from its result.
PREVIEWS: dict[str, Operation] = {
    "order_replacement_credit_card": preview_replacement,
    "change_user_email": preview_email_change,
}
# Tools that are not `mutates` but append an audit record, so their transaction must be writable.
AUDIT_WRITERS = frozenset({"verify_bank_customer"})


# --- building ------------------------------------------------------------------------------------

def make_tool(name: str, store: BackofficeStore, breakers: AsyncCircuitBreakerFactory | None = None) -> ToolAdapter:
    """The bank tool `name` on `store`."""
    return BackofficeTool(SPECS[name], store, OPERATIONS[name], breakers,
                          preview_operation=PREVIEWS.get(name), writes_audit=name in AUDIT_WRITERS)


def bank_registry(store: BackofficeStore, breakers: AsyncCircuitBreakerFactory | None = None,
                  names: Iterable[str] = KNOWN_TOOLS) -> ToolRegistry:
    """A registry with the bank tools `names` (all by default) on an open store, sharing one breaker factory."""
    breakers = breakers or AsyncCircuitBreakerFactory()
    return ToolRegistry(make_tool(name, store, breakers) for name in names)


def bank_tools_config(**per_tool: Any) -> dict[str, Any]:
    """A tools configuration (the YAML shape) offering every bank tool, each with `per_tool` settings."""
    return {"tools": {name: {"kind": KIND, **per_tool} for name in KNOWN_TOOLS}}


async def build_tool(name: str, options: dict[str, Any], context: BuildContext) -> ToolAdapter:
    """Build tool `name` of kind bank_backoffice; options: dsn (default: the appliance's), max_connections."""
    store = await configured_store(KIND, name, options, context)
    return make_tool(name, store, context.breakers)
