"""The bank's tools on a real PostgreSQL back office loaded with tau2-bench's banking records.

The records are ../shared/data/kb/banking/db.json, loaded afresh before every test (load_bank
replaces them whole), so each test starts from the export; the customers, cards and orders a test
uses are picked from the export by what they are (a Silver card with no replacement under way), not
hard-coded. Each refusal comes from a real condition: a detail that does not match, another
customer's card, a replacement already shipping, a closed card, no confirmation.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg.rows import dict_row

from services.dialog.tools.adapter import (
    ADAPTER_KINDS,
    CUSTOMER_ID_ARGUMENTS,
    FailureKind,
    ToolConfigError,
    ToolFailure,
    VerificationLevel,
    VerifiedSession,
    load_tool_registry,
)
from services.dialog.tools.backoffice import BackofficeStore, load_bank
from services.dialog.tools.bank import (
    KIND,
    KNOWN_TOOLS,
    VERIFICATION_FAILED,
    bank_registry,
    bank_tools_config,
)

FINAL_ORDER_STATUSES = ("DELIVERED", "CANCELLED")
# task_004: Kenji Tanaka is certain his e-mail is this one; the bank has another on file.
KENJI_CLAIMED_EMAIL = "kenji.tanaka@gmail.com"


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bank_json(shared_data: Path) -> Path:
    return shared_data / "kb" / "banking" / "db.json"


@pytest.fixture(scope="module")
def export(bank_json: Path) -> dict[str, dict[str, dict]]:
    """The export's records: collection -> record id -> record."""
    return {collection: content["data"] for collection, content in json.loads(bank_json.read_text()).items()}


@pytest.fixture(scope="module")
async def store(database_dsn: str):
    opened = await BackofficeStore.open(database_dsn)
    yield opened
    await opened.close()


@pytest.fixture(scope="module")
def tools(store: BackofficeStore):
    return bank_registry(store)


@pytest.fixture
async def bank(database_dsn: str, bank_json: Path) -> str:
    """The back office holding exactly the export's bank records (whatever earlier tests changed)."""
    await load_bank(database_dsn, bank_json)
    return database_dsn


def session_for(user_id: str) -> VerifiedSession:
    return VerifiedSession.verified("bank-test", user_id, "test")


ANONYMOUS = VerifiedSession.anonymous("bank-test")


async def expect_failure(kind: FailureKind, call) -> ToolFailure:
    with pytest.raises(ToolFailure) as caught:
        await call
    assert caught.value.kind is kind, f"expected {kind.value}, got {caught.value!r}"
    return caught.value


async def stored(dsn: str, collection: str) -> dict[str, dict]:
    """The back office's records of `collection`: record id -> data."""
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cursor = await conn.execute("SELECT record_id, data FROM backoffice.bank_records WHERE collection = %s "
                                    "ORDER BY ordinal", [collection])
        return {row["record_id"]: row["data"] for row in await cursor.fetchall()}


def user_named(export: dict, name: str) -> dict:
    return next(user for user in export["users"].values() if user["name"] == name)


def spoken_phone(phone: str) -> str:
    """The number as a caller might give it: country code, brackets, spaces."""
    digits = re.sub(r"\D", "", phone)[-10:]
    return f"+1 ({digits[:3]}) {digits[3:6]} {digits[6:]}"


def pending_orders(export: dict) -> dict[str, dict]:
    """Card account id -> its replacement order that is not delivered or cancelled."""
    return {order["credit_card_account_id"]: order for order in export["credit_card_orders"].values()
            if order["status"] not in FINAL_ORDER_STATUSES}


def replaceable_card(export: dict, card_type: str) -> dict:
    """An open card of `card_type` with no replacement under way."""
    pending = pending_orders(export)
    return next(card for card in export["credit_card_accounts"].values() if card["card_type"] == card_type
                and card.get("status", "ACTIVE") == "ACTIVE" and card["account_id"] not in pending)


def on_date(text: str) -> date:
    return datetime.strptime(text, "%m/%d/%Y").date()


# --- verification --------------------------------------------------------------------------------

IDENTITY_KEYS = ["name", "user_id", "address", "email", "phone_number", "date_of_birth", "time_verified"]


async def test_name_phone_and_email_verify_the_caller_and_log_the_on_file_record(bank, tools, export):
    kenji = user_named(export, "Kenji Tanaka")
    result = await tools.invoke(ANONYMOUS, "verify_bank_customer", {
        "full_name": "  kenji   TANAKA ", "phone_number": spoken_phone(kenji["phone_number"]),
        "email": f" {kenji['email'].upper()} "})
    assert result == {"customer_id": kenji["user_id"], "name": kenji["name"], "matched": ["email", "phone_number"]}

    history = await stored(bank, "verification_history")
    new = {record_id: entry for record_id, entry in history.items() if record_id not in export["verification_history"]}
    assert len(new) == 1 and len(history) == len(export["verification_history"]) + 1
    (record_id, entry), = new.items()
    assert set(entry) == set(IDENTITY_KEYS) == set(next(iter(export["verification_history"].values())))
    assert {key: entry[key] for key in IDENTITY_KEYS[:-1]} == {key: kenji[key] for key in IDENTITY_KEYS[:-1]}
    stamp, zone = entry["time_verified"][:19], entry["time_verified"][20:]
    assert abs(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S") - datetime.now()) < timedelta(minutes=2)
    assert zone == datetime.now().astimezone().strftime("%Z") and zone
    assert record_id == f"{kenji['user_id']}_{stamp[:10].replace('-', '')}"

    # Verified twice the same day: a second entry, under an id of its own.
    await tools.invoke(ANONYMOUS, "verify_bank_customer", {
        "full_name": "Kenji Tanaka", "phone_number": kenji["phone_number"], "email": kenji["email"]})
    history = await stored(bank, "verification_history")
    assert len(history) == len(export["verification_history"]) + 2
    assert f"{record_id}_2" in history and history[f"{record_id}_2"]["user_id"] == kenji["user_id"]


async def test_a_spoken_date_of_birth_and_an_abbreviated_address_verify_the_caller(bank, tools, export):
    user = next(user for user in export["users"].values() if "Street" in user["address"])
    born = on_date(user["date_of_birth"])
    for spoken_date in (f"{born:%B} {born.day}, {born.year}", f"{born.day} {born:%B} {born.year}", born.isoformat()):
        result = await tools.invoke(ANONYMOUS, "verify_bank_customer", {
            "full_name": user["name"].upper(), "date_of_birth": spoken_date, "phone_number": spoken_phone(user["phone_number"])})
        assert result["customer_id"] == user["user_id"] and result["matched"] == ["date_of_birth", "phone_number"]
    result = await tools.invoke(ANONYMOUS, "verify_bank_customer", {
        "full_name": user["name"], "address": user["address"].replace("Street", "St.").replace(",", "").lower(),
        "date_of_birth": f"{born:%B} {born.day}, {born.year}"})
    assert result == {"customer_id": user["user_id"], "name": user["name"], "matched": ["address", "date_of_birth"]}


async def test_a_detail_that_does_not_match_fails_with_the_same_message_as_an_unknown_name(bank, tools, export):
    kenji = user_named(export, "Kenji Tanaka")
    assert kenji["email"] != KENJI_CLAIMED_EMAIL
    born = on_date(kenji["date_of_birth"])
    someone_else = next(user for user in export["users"].values() if user["user_id"] != kenji["user_id"])
    attempts = [
        # task_004: the phone matches, the e-mail he is sure of does not.
        {"full_name": "Kenji Tanaka", "email": KENJI_CLAIMED_EMAIL, "phone_number": kenji["phone_number"]},
        # Two details match, a third does not.
        {"full_name": "Kenji Tanaka", "email": kenji["email"], "phone_number": kenji["phone_number"],
         "date_of_birth": (born + timedelta(days=1)).strftime("%m/%d/%Y")},
        # Somebody else's details under his name.
        {"full_name": "Kenji Tanaka", "email": someone_else["email"], "phone_number": someone_else["phone_number"]},
        # Nobody of that name.
        {"full_name": "Kenji Tanakaa", "email": kenji["email"], "phone_number": kenji["phone_number"]},
        {"full_name": "Nobody Atall", "email": "nobody@example.com", "phone_number": "555-000-0000"},
        # A partial phone number is not his phone number.
        {"full_name": "Kenji Tanaka", "email": kenji["email"], "phone_number": kenji["phone_number"][-8:]},
    ]
    messages = set()
    for arguments in attempts:
        failure = await expect_failure(FailureKind.NOT_FOUND, tools.invoke(ANONYMOUS, "verify_bank_customer", arguments))
        messages.add(failure.message)
        assert failure.field is None
    assert messages == {VERIFICATION_FAILED}
    assert kenji["user_id"] not in VERIFICATION_FAILED and "e-mail did" not in VERIFICATION_FAILED
    assert await stored(bank, "verification_history") == export["verification_history"], "a failed verification was logged"


async def test_fewer_than_two_details_is_an_argument_problem_whoever_is_named(bank, tools, export):
    kenji = user_named(export, "Kenji Tanaka")
    answers = []
    for name in ("Kenji Tanaka", "Nobody Atall"):
        for arguments in ({"full_name": name, "phone_number": kenji["phone_number"]},
                          {"full_name": name, "phone_number": kenji["phone_number"], "email": "  "}):
            failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(ANONYMOUS, "verify_bank_customer", arguments))
            answers.append(failure.message)
    assert len(set(answers)) == 1 and "at least 2" in answers[0]
    failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(ANONYMOUS, "verify_bank_customer", {
        "full_name": "Kenji Tanaka", "phone_number": kenji["phone_number"], "email": kenji["email"], "user_id": kenji["user_id"]}))
    assert failure.field == "user_id"


async def test_an_unverified_caller_gets_only_the_verification_tool(bank, tools, export):
    assert [tool["function"]["name"] for tool in tools.openai_tools(ANONYMOUS)] == ["verify_bank_customer"]
    identified = VerifiedSession("bank-test", VerificationLevel.IDENTIFIED, user_named(export, "Kenji Tanaka")["user_id"])
    for name, arguments in (("list_credit_card_accounts", {}), ("list_bank_accounts", {}),
                            ("change_user_email", {"new_email": "x@example.com"})):
        for session in (ANONYMOUS, identified):
            await expect_failure(FailureKind.NOT_VERIFIED, tools.invoke(session, name, arguments, confirmed=True))
    assert await stored(bank, "users") == export["users"]


# --- reading the caller's accounts ----------------------------------------------------------------------

async def test_credit_card_accounts_and_bank_accounts_are_the_callers_only(bank, tools, export):
    cards_by_user: dict[str, list[dict]] = {}
    for card in export["credit_card_accounts"].values():
        cards_by_user.setdefault(card["user_id"], []).append(card)
    user_id, cards = max(cards_by_user.items(), key=lambda item: len(item[1]))
    listed = await tools.invoke(session_for(user_id), "list_credit_card_accounts", {})
    assert listed == [{"credit_card_account_id": card["account_id"], "card_type": card["card_type"],
                       "status": card.get("status", "ACTIVE"), "current_balance": card["current_balance"],
                       "reward_points": card["reward_points"], "date_of_account_open": card["date_of_account_open"]}
                      for card in cards]
    assert len(listed) > 1
    assert await tools.invoke(session_for("no_such_customer"), "list_credit_card_accounts", {}) == []

    accounts_by_user: dict[str, list[dict]] = {}
    for account in export["accounts"].values():
        accounts_by_user.setdefault(account["user_id"], []).append(account)
    user_id, accounts = max(accounts_by_user.items(), key=lambda item: len(item[1]))
    listed = await tools.invoke(session_for(user_id), "list_bank_accounts", {})
    assert listed == [{key: account[key] for key in ("account_id", "class", "level", "status", "current_holdings")}
                      for account in accounts]
    assert len(listed) > 1


async def test_the_profile_gives_the_address_and_masks_the_contact_details(bank, tools, export):
    kenji = user_named(export, "Kenji Tanaka")
    profile = await tools.invoke(session_for(kenji["user_id"]), "get_customer_profile", {})
    assert profile["name"] == "Kenji Tanaka" and profile["address"] == kenji["address"]
    assert profile["phone_masked"] == "***-***-" + kenji["phone_number"][-4:]
    assert kenji["email"] not in json.dumps(profile) and profile["email_masked"].endswith(kenji["email"].split("@")[1])
    with pytest.raises(ToolFailure) as failure:
        await tools.invoke(session_for("no_such_customer"), "get_customer_profile", {})
    assert failure.value.kind is FailureKind.NOT_FOUND


async def test_transactions_are_the_cards_newest_first(bank, tools, export):
    def day_and_position(transaction: dict) -> tuple:
        return -on_date(transaction["transaction_date"]).toordinal(), list(export["credit_card_transaction_history"]).index(transaction["transaction_id"])

    by_card: dict[tuple[str, str], list[dict]] = {}
    for transaction in export["credit_card_transaction_history"].values():
        by_card.setdefault((transaction["user_id"], transaction["credit_card_type"]), []).append(transaction)
    card = next(card for card in export["credit_card_accounts"].values()
                if 10 < len(by_card.get((card["user_id"], card["card_type"]), [])) <= 50)
    expected = sorted(by_card[(card["user_id"], card["card_type"])], key=day_and_position)
    session = session_for(card["user_id"])
    keys = ("transaction_id", "merchant_name", "transaction_amount", "transaction_date", "category", "status")

    latest = await tools.invoke(session, "get_credit_card_transactions", {"credit_card_account_id": card["account_id"]})
    assert latest == [{key: transaction[key] for key in keys} for transaction in expected[:10]]
    everything = await tools.invoke(session, "get_credit_card_transactions", {"credit_card_account_id": card["account_id"], "limit": 50})
    assert [row["transaction_id"] for row in everything] == [transaction["transaction_id"] for transaction in expected]
    dates = [on_date(row["transaction_date"]) for row in everything]
    assert dates == sorted(dates, reverse=True) and len(set(dates)) > 1
    assert len(await tools.invoke(session, "get_credit_card_transactions", {"credit_card_account_id": card["account_id"], "limit": 3})) == 3
    for limit in (0, 51, "5"):
        failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(
            session, "get_credit_card_transactions", {"credit_card_account_id": card["account_id"], "limit": limit}))
        assert failure.field == "limit"


async def test_another_customers_card_is_answered_as_a_missing_one(bank, tools, export):
    mine = replaceable_card(export, "Silver Rewards Card")
    theirs = next(card for card in export["credit_card_accounts"].values() if card["user_id"] != mine["user_id"])
    session = session_for(mine["user_id"])
    for name, arguments in (
        ("get_credit_card_transactions", {}),
        ("order_replacement_credit_card", {"reason": "lost", "shipping_address": "1 Main Street, Austin, TX", "expedited_shipping": True}),
    ):
        answers = []
        for account_id in (theirs["account_id"], "cc_0000000000_gold"):
            failure = await expect_failure(FailureKind.NOT_FOUND, tools.invoke(
                session, name, {"credit_card_account_id": account_id, **arguments}, confirmed=True))
            assert failure.field == "credit_card_account_id"
            answers.append(failure.message.replace(account_id, "<id>"))
            # The id the caller gave embeds its owner's id; beyond it, nothing about the owner or the card.
            assert theirs["user_id"] not in answers[-1] and theirs["card_type"] not in answers[-1]
        assert answers[0] == answers[1], "another customer's card is told apart from a missing one"
    assert await stored(bank, "credit_card_orders") == export["credit_card_orders"]
    assert await stored(bank, "credit_card_accounts") == export["credit_card_accounts"]


# --- replacement cards -----------------------------------------------------------------------------

async def test_a_replacement_is_previewed_with_the_tiers_fee_and_changes_nothing_unconfirmed(bank, tools, export):
    cases = [("Silver Rewards Card", True, 10.0, "2-3 business days"), ("Gold Rewards Card", True, 0.0, "2-3 business days"),
             ("EcoCard", True, 15.0, "2-3 business days"), ("Silver Rewards Card", False, 0.0, "7-10 business days")]
    for card_type, expedited, fee, window in cases:
        card = replaceable_card(export, card_type)
        arguments = {"credit_card_account_id": card["account_id"], "reason": "stolen",
                     "shipping_address": " 2500 Woodward Avenue, Suite 300, Detroit, MI 48201 ", "expedited_shipping": expedited}
        failure = await expect_failure(FailureKind.NEEDS_CONFIRMATION, tools.invoke(
            session_for(card["user_id"]), "order_replacement_credit_card", arguments))
        assert failure.preview == {"credit_card_account_id": card["account_id"], "card_type": card_type, "reason": "stolen",
                                   "shipping_address": "2500 Woodward Avenue, Suite 300, Detroit, MI 48201",
                                   "expedited_shipping": expedited, "fee": fee, "delivery_window": window}, card_type
    assert await stored(bank, "credit_card_orders") == export["credit_card_orders"]
    assert await stored(bank, "credit_card_accounts") == export["credit_card_accounts"]


async def test_a_confirmed_replacement_writes_the_order_and_closes_the_old_card(bank, tools, export):
    card = replaceable_card(export, "Silver Rewards Card")
    session = session_for(card["user_id"])
    owner = export["users"][card["user_id"]]
    arguments = {"credit_card_account_id": card["account_id"], "reason": "fraud_suspected",
                 "shipping_address": owner["address"], "expedited_shipping": True}
    order = await tools.invoke(session, "order_replacement_credit_card", arguments, confirmed=True)
    today = date.today()
    assert re.fullmatch(r"ccord_[0-9a-f]{8}", order["order_id"])
    assert order == {"order_id": order["order_id"], "credit_card_account_id": card["account_id"], "user_id": card["user_id"],
                     "shipping_address": owner["address"], "reason": "fraud_suspected", "expedited_shipping": True,
                     "order_date": today.strftime("%m/%d/%Y"), "expected_delivery": (today + timedelta(days=3)).strftime("%m/%d/%Y"),
                     "status": "ORDERED", "fee": 10.0}

    orders = await stored(bank, "credit_card_orders")
    assert set(orders) == set(export["credit_card_orders"]) | {order["order_id"]}
    written = orders[order["order_id"]]
    assert written == {key: value for key, value in order.items() if key != "fee"}
    assert set(written) == set(next(iter(export["credit_card_orders"].values()))), "the order is not shaped like the bank's"
    old_card = (await stored(bank, "credit_card_accounts"))[card["account_id"]]
    assert old_card == {**card, "status": "CLOSED", "closed_date": today.strftime("%m/%d/%Y")}
    listed = await tools.invoke(session, "list_credit_card_accounts", {})
    assert next(row["status"] for row in listed if row["credit_card_account_id"] == card["account_id"]) == "CLOSED"

    # The replacement is on its way: a second one is refused, naming when the first arrives.
    failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(session, "order_replacement_credit_card", arguments))
    assert failure.rule == "one_pending_replacement" and order["expected_delivery"] in failure.message
    await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(session, "order_replacement_credit_card", arguments, confirmed=True))
    assert len(await stored(bank, "credit_card_orders")) == len(export["credit_card_orders"]) + 1


async def test_a_replacement_already_shipping_or_a_closed_card_is_refused(bank, tools, export):
    account_id, shipping = next(iter(pending_orders(export).items()))
    card = export["credit_card_accounts"][account_id]
    arguments = {"credit_card_account_id": account_id, "reason": "damaged", "shipping_address": "1 Main Street", "expedited_shipping": False}
    failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(
        session_for(card["user_id"]), "order_replacement_credit_card", arguments))
    assert failure.rule == "one_pending_replacement"
    assert shipping["expected_delivery"] in failure.message and shipping["order_id"] in failure.message

    # A card closed some other way (no replacement under way) cannot be replaced either.
    closed = replaceable_card(export, "Gold Rewards Card")
    async with await psycopg.AsyncConnection.connect(bank, autocommit=True) as conn:
        await conn.execute("UPDATE backoffice.bank_records SET data = data || '{\"status\": \"CLOSED\"}' "
                           "WHERE collection = 'credit_card_accounts' AND record_id = %s", [closed["account_id"]])
    for confirmed in (False, True):
        failure = await expect_failure(FailureKind.POLICY_REFUSED, tools.invoke(session_for(closed["user_id"]), "order_replacement_credit_card", {
            **arguments, "credit_card_account_id": closed["account_id"]}, confirmed=confirmed))
        assert failure.rule == "replace_only_active" and "CLOSED" in failure.message
    assert await stored(bank, "credit_card_orders") == export["credit_card_orders"]


async def test_replacement_arguments_are_checked_against_the_schema(bank, tools, export):
    card = replaceable_card(export, "Silver Rewards Card")
    session = session_for(card["user_id"])
    good = {"credit_card_account_id": card["account_id"], "reason": "lost", "shipping_address": "1 Main Street", "expedited_shipping": False}
    cases = [({**good, "reason": "broken"}, "reason"), ({**good, "shipping_address": "   "}, "shipping_address"),
             ({**good, "expedited_shipping": "yes"}, "expedited_shipping"),
             ({key: value for key, value in good.items() if key != "expedited_shipping"}, "expedited_shipping"),
             ({**good, "user_id": card["user_id"]}, "user_id")]
    for arguments, field in cases:
        failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(session, "order_replacement_credit_card", arguments, confirmed=True))
        assert failure.field == field and field in failure.message, failure
    assert await stored(bank, "credit_card_orders") == export["credit_card_orders"]


# --- e-mail change --------------------------------------------------------------------------------

async def test_an_email_change_is_previewed_masked_then_applied_on_confirmation(bank, tools, export):
    kenji = user_named(export, "Kenji Tanaka")
    session = session_for(kenji["user_id"])
    local, domain = kenji["email"].split("@")
    failure = await expect_failure(FailureKind.NEEDS_CONFIRMATION, tools.invoke(
        session, "change_user_email", {"new_email": KENJI_CLAIMED_EMAIL}))
    assert failure.preview == {"old_email_on_file_masked": f"{local[0]}***@{domain}", "new_email": KENJI_CLAIMED_EMAIL}
    assert local[1:] not in failure.preview["old_email_on_file_masked"]
    assert await stored(bank, "users") == export["users"]

    await tools.invoke(session, "change_user_email", {"new_email": f" {KENJI_CLAIMED_EMAIL} "}, confirmed=True)
    users = await stored(bank, "users")
    assert users[kenji["user_id"]] == {**kenji, "email": KENJI_CLAIMED_EMAIL}
    assert {user_id: user for user_id, user in users.items() if user_id != kenji["user_id"]} == \
        {user_id: user for user_id, user in export["users"].items() if user_id != kenji["user_id"]}
    # task_004's details verify him now.
    result = await tools.invoke(ANONYMOUS, "verify_bank_customer", {
        "full_name": "Kenji Tanaka", "email": KENJI_CLAIMED_EMAIL, "phone_number": kenji["phone_number"]})
    assert result["customer_id"] == kenji["user_id"]


async def test_an_invalid_or_unchanged_email_is_refused_before_confirmation(bank, tools, export):
    kenji = user_named(export, "Kenji Tanaka")
    session = session_for(kenji["user_id"])
    for new_email in ("kenji dot tanaka at gmail dot com", "kenji.tanaka@gmail", "kenji..tanaka@gmail.com", "@gmail.com"):
        failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(session, "change_user_email", {"new_email": new_email}))
        assert failure.field == "new_email" and "name@example.com" in failure.message, new_email
    failure = await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(
        session, "change_user_email", {"new_email": kenji["email"].upper()}, confirmed=True))
    assert failure.field == "new_email" and "already" in failure.message
    await expect_failure(FailureKind.INVALID_ARGUMENTS, tools.invoke(session, "change_user_email", {"new_email": ""}))
    assert await stored(bank, "users") == export["users"]


# --- registry and site configuration ------------------------------------------------------------------------

def test_the_bank_registry_offers_the_six_tools_none_naming_a_customer(store):
    names = ["verify_bank_customer", "list_credit_card_accounts", "get_credit_card_transactions",
             "order_replacement_credit_card", "get_customer_profile", "list_bank_accounts", "change_user_email"]
    assert list(KNOWN_TOOLS) == names
    registry = bank_registry(store)
    assert registry.names() == names
    assert bank_registry(store, names=["list_bank_accounts"]).names() == ["list_bank_accounts"]
    assert ADAPTER_KINDS[KIND] == "services.dialog.tools.bank"
    for name in names:
        spec = registry.get(name).spec
        assert spec.parameters["additionalProperties"] is False and len(spec.description) > 40
        assert not CUSTOMER_ID_ARGUMENTS & set(spec.parameters["properties"])
        assert spec.mutates == spec.needs_confirmation == (name in ("order_replacement_credit_card", "change_user_email"))
        assert spec.requires == (VerificationLevel.NONE if name == "verify_bank_customer" else VerificationLevel.VERIFIED)
    assert registry.get("verify_bank_customer").spec.identifies_caller


async def test_tools_yaml_builds_the_bank_registry_beside_retail_tools(tmp_path, bank, database_dsn, export):
    config = bank_tools_config()
    config["tools"]["order_replacement_credit_card"].update(timeout_s=6, failure_threshold=2, options={"max_connections": 2})
    config["tools"]["get_user_details"] = {"kind": "retail_backoffice"}
    path = tmp_path / "tools.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    registry = await load_tool_registry(path, default_dsn=database_dsn)
    try:
        assert registry.names() == [*KNOWN_TOOLS, "get_user_details"]
        spec = registry.get("order_replacement_credit_card").spec
        assert (spec.timeout_s, spec.failure_threshold) == (6, 2)
        kenji = user_named(export, "Kenji Tanaka")
        verified = await registry.invoke(ANONYMOUS, "verify_bank_customer", {
            "full_name": kenji["name"], "email": kenji["email"], "date_of_birth": kenji["date_of_birth"]})
        cards = await registry.invoke(session_for(verified["customer_id"]), "list_credit_card_accounts", {})
        assert [card["credit_card_account_id"] for card in cards] == \
            [card["account_id"] for card in export["credit_card_accounts"].values() if card["user_id"] == kenji["user_id"]]
    finally:
        await registry.aclose()
    bad_configs = [
        ({"tools": {"cancel_pending_order": {"kind": "bank_backoffice"}}}, "kind bank_backoffice has no such tool"),
        ({"tools": {"list_bank_accounts": {"kind": "bank_backoffice", "options": {"url": "x"}}}}, "unknown option"),
        ({"tools": {"list_bank_accounts": {"kind": "bank_backoffice", "options": {"max_connections": 0}}}}, "max_connections"),
        ({"tools": {"list_bank_accounts": {"kind": "bank_backoffice"}}}, "needs a database"),
    ]
    for config, message in bad_configs:
        with pytest.raises(ToolConfigError, match=message):
            await load_tool_registry(config, default_dsn="" if "database" in message else database_dsn)
