"""The scripted tau-bench retail caller (services/dialog/caller_simulator.py), over all 520 tasks.

No services: the caller is pure text. The gold actions are read here only to measure the parser and to
drive a stand-in bot; the simulator itself never sees them (it gets the instruction string only).
Measured on tasks_dev.json + tasks_train.json (520 instructions):
- request kinds of the 351 single-action tasks: 351/351 agree with the gold action's kind, and the
  kind sequence agrees with the gold sequence on 520/520 (read-backs the caller backs out of and
  'other' requests left out); floors below leave a little room for parser edits;
- a stand-in bot that asks the usual questions and reads back every gold action: the caller says
  yes to each (after its scripted twists) and hangs up, on 520/520 tasks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.dialog import caller_simulator as sim

REPO_ROOT = Path(__file__).resolve().parents[1]
RETAIL = REPO_ROOT.parent / "shared" / "data" / "retail"

GOLD_KIND = {"cancel_pending_order": "cancel", "return_delivered_order_items": "return",
             "exchange_delivered_order_items": "exchange", "modify_pending_order_items": "modify_items",
             "modify_pending_order_address": "modify_address", "modify_pending_order_payment": "modify_payment",
             "modify_user_address": "modify_user_address"}
SINGLE_FLOOR = 0.98      # measured 351/351
SEQUENCE_FLOOR = 0.97    # measured 520/520
COMPLETE_FLOOR = 0.98    # measured 520/520 in test_stand_in_bot_dialogs
SCRIPT = ["Can I have your email address?", "What is your zip code and full name?", "What's the order number?",
          "Which items would you like to return?", "What is the reason for cancellation?",
          "To confirm: cancel order #W5442520 because no longer needed. Shall I go ahead?",
          "Is there anything else I can help with?"]


def _tasks() -> list[dict]:
    if not (RETAIL / "tasks_train.json").exists():
        pytest.skip(f"tau-bench retail tasks not in {RETAIL}")
    return json.loads((RETAIL / "tasks_dev.json").read_text()) + json.loads((RETAIL / "tasks_train.json").read_text())


def _ids(text: str) -> set[str]:
    return {sim._norm_id(t) for t in sim.ID_TOKEN.findall(text)}


def _committed(facts) -> list[str]:
    return [r.kind for r in facts.requests if r.abandon is None and r.kind != "other"]


def test_parse_all_and_kind_agreement():
    tasks = _tasks()
    assert len(tasks) == 520
    single = agree = seq = 0
    misses = []
    for i, t in enumerate(tasks):
        facts = sim.parse_instruction(t["instruction"])
        assert facts.first_name and facts.last_name and (facts.zip_code or facts.emails), i
        assert all(r.kind in sim.KINDS for r in facts.requests)
        for r in facts.requests:  # what the parser keeps is from the instruction, never invented
            assert r.order_id is None or r.order_id.lstrip("#") in t["instruction"], (i, r.order_id)
            assert r.payment is None or r.payment.lower() in t["instruction"].lower(), (i, r.payment)
        gold = [GOLD_KIND[a["name"]] for a in t["actions"]]
        kinds = _committed(facts)
        seq += kinds == gold
        if len(gold) == 1:
            single += 1
            agree += set(kinds) == {gold[0]}
            if set(kinds) != {gold[0]}:
                misses.append((i, kinds, gold))
    print(f"single-action kind agreement {agree}/{single}, sequence agreement {seq}/{len(tasks)}")
    assert agree / single >= SINGLE_FLOOR, misses[:10]
    assert seq / len(tasks) >= SEQUENCE_FLOOR


def test_first_person_and_twists():
    assert sim.first_person("You want to cancel your order because you don't need it") == \
        "I want to cancel my order because I don't need it"
    assert sim.first_person("they ask you to reset it, tell that you've tried") == "They ask me to reset it, tell that I've tried"
    f = sim.parse_instruction("Your name is Aarav Sanchez and your email is aarav.sanchez5467@example.com. You are patient, shy. "
                              "Return the Portable Charger of your order. But before confirming, decide to return the Bookshelf "
                              "and the Cycling Helmet as well. You wanna get website credit for the return.")
    (r,) = f.requests
    assert (r.kind, r.items, r.payment) == ("return", ["Portable Charger"], "website credit")
    assert [(tw.trigger, tw.add_items) for tw in f.twists] == [("confirm", ["Bookshelf", "Cycling Helmet"])]
    c = sim.ScriptedCaller(
        "Your name is Aarav Sanchez and your email is aarav.sanchez5467@example.com. You are patient, shy. "
        "Return the Portable Charger of your order. But before confirming, decide to return the Bookshelf "
        "and the Cycling Helmet as well. You wanna get website credit for the return.")
    assert c.opening() == "Hi, I'd like to return some items from an order."
    rb = "To confirm: return the Portable Charger from order #W9552705, refund to gift_card_8922351. Shall I proceed?"
    assert "Bookshelf" in c.reply(rb)  # the twist, instead of yes
    assert c.reply(rb.replace("Portable Charger", "Portable Charger, Bookshelf and Cycling Helmet")).startswith("Yes")


@pytest.mark.parametrize("part", [0, 1, 2, 3])
def test_fixed_script_all_tasks(part):
    tasks = _tasks()
    for i, t in list(enumerate(tasks))[part::4]:
        text = t["instruction"]
        c = sim.ScriptedCaller(text)
        facts, first = c.facts, c.facts.requests[0]
        opening = c.opening()
        assert not re.search(r"#W\d|@|\d{5}", opening) or facts.volunteer_identity or first.kind == "other", (i, opening)
        replies = [c.reply(q) for q in SCRIPT]
        email, namezip, order, items, reason, confirm, more = replies
        for said in [opening] + [x for x in replies if x]:
            assert _ids(said) <= _ids(text), (i, said)  # the guard would have raised; belt and braces
        if facts.emails:
            assert facts.emails[0] in email, (i, email)
        else:
            assert facts.zip_code in email and facts.last_name in email, (i, email)
        assert facts.first_name in namezip and facts.last_name in namezip, (i, namezip)
        if facts.zip_code:
            assert facts.zip_code in namezip, (i, namezip)
        if first.order_id:
            assert first.order_id in order, (i, order)
        if first.kind == "return":
            assert all(it.lower() in items.lower() for it in first.items), (i, items)
        if first.kind == "cancel" and first.reason:
            assert ("longer need" if first.reason == "no longer needed" else "mistake") in reason, (i, reason)
        says_yes = confirm.startswith("Yes")
        # A caller who does not know its order number cannot tell this read-back's order apart from its own.
        unknown_order = first.order_id is None and not facts.order_hint
        wants_it = first.kind == "cancel" and first.order_id in ("#W5442520", None if unknown_order else "-") \
            and first.reason in (None, "no longer needed")
        assert says_yes == wants_it, (i, confirm)
        if not says_yes:
            assert confirm.startswith(("No", "Actually")), (i, confirm)
        assert more, i  # "anything else?": the next request (the first is not done), never silence


def test_readback_checks():
    text = "Your name is Omar Anderson and your zip code is 19031. You are logical. Return #W6067464 via credit_card_4190576: Electric Kettle; Wall Clock; "
    ok = "Returning Electric Kettle and Wall Clock from order #W6067464 with the refund to credit_card_4190576. Shall I proceed (yes/no)?"
    assert sim.ScriptedCaller(text).reply(ok).startswith("Yes")
    for wrong in (ok.replace("#W6067464", "#W1234567"), ok.replace("Wall Clock", "Desk Lamp"),
                  ok.replace("credit_card_4190576", "gift_card_1234567"), ok.replace("Returning", "Cancelling")):
        answer = sim.ScriptedCaller(text).reply(wrong)
        assert answer.startswith("No"), (wrong, answer)
        assert "1234567" not in answer  # the correction uses the caller's own facts
    # The guard: an id that is not in the instruction is a bug, raised, not silently dropped.
    with pytest.raises(sim.IdLeakError):
        sim.ScriptedCaller(text)._say("It's order #W1234567.")


def _dialog(task: dict) -> tuple[bool, list[str]]:
    """A stand-in bot that asks what the policy needs and reads back each gold action (test-only use of gold)."""
    c = sim.ScriptedCaller(task["instruction"])
    log = [c.opening()]

    def ask(text: str) -> str | None:
        log.append("BOT: " + text)
        answer = c.reply(text)
        log.append(f"CALLER: {answer}")
        return answer

    ask("I can help with that. First, can I have your email address, or your name and zip code?")
    for a in task["actions"]:
        kind, kw = GOLD_KIND[a["name"]], a["kwargs"]
        ask("Thanks. What's the order number?")
        pm = f" using {kw['payment_method_id']}" if "payment_method_id" in kw else ""
        if kind == "cancel":
            ask("What is the reason for the cancellation: no longer needed or ordered by mistake?")
            readback = f"cancel order {kw['order_id']} because {kw['reason']}"
        elif kind == "return":
            ask("Which items would you like to return, and where should the refund go?")
            readback = f"return {len(kw['item_ids'])} item(s) from order {kw['order_id']}{pm}"
        elif kind in ("exchange", "modify_items"):
            ask("Which items would you like to exchange, and to which options?")
            ask("Which payment method should cover the price difference?")
            readback = f"{'exchange' if kind == 'exchange' else 'modify'} {len(kw['item_ids'])} item(s) in order {kw['order_id']}{pm}"
        elif kind == "modify_payment":
            ask("Which payment method would you like to switch to?")
            readback = f"change the payment method of order {kw['order_id']}{pm}"
        else:
            ask("What is the new shipping address?")
            readback = f"change the shipping address of order {kw['order_id']} to {kw['address1']}, {kw['city']}"
        for _ in range(3):
            answer = ask(f"To confirm: I will {readback}. Shall I proceed (yes/no)?")
            if answer and answer.startswith("Yes"):
                break
        else:
            return False, log
        ask("Done, the request has been processed. Is there anything else I can help with?")
    for _ in range(6):  # requests the gold does not do (backed out of, or out of scope): the bot can't
        if c.finished:
            break
        ask("I'm sorry, I can't help with that. Is there anything else I can help with?")
    return c.reply("Goodbye!") is None and c.finished, log


def test_stand_in_bot_dialogs():
    tasks = _tasks()
    done, failed = 0, []
    for i, t in enumerate(tasks):
        ok, log = _dialog(t)
        done += ok
        if not ok:
            failed.append((i, log[-6:]))
    print(f"stand-in bot dialogs completed {done}/{len(tasks)}")
    for i, tail in failed[:10]:
        print(i, *tail, sep="\n  ")
    assert done / len(tasks) >= COMPLETE_FLOOR, failed[:5]


def _talk(task: int, bot: list[str]) -> tuple[sim.ScriptedCaller, list[str | None]]:
    c = sim.ScriptedCaller(_tasks()[task]["instruction"])
    c.opening()
    return c, [c.reply(b) for b in bot]


def test_realistic_bot_turns():
    # Dev task 0 (narrative cancel): LLM-style wording, a multi-line read-back, then the bot's goodbye.
    c, said = _talk(0, [
        "Hello! To get started, could you please provide your email address, or your first name, last name, and zip code?",
        "Thank you, Olivia. Could you please tell me the order ID of the order you'd like to cancel?",
        "I see order #W5442520 is pending. Could you let me know the reason: 'no longer needed' or 'ordered by mistake'?",
        "Here are the details:\n- Order ID: #W5442520\n- Reason: no longer needed\nWould you like me to proceed? Please confirm (yes/no).",
        "Your order has been successfully cancelled. The refund goes to your original payment method. Is there anything else I can help you with?",
        "You're welcome! Have a great day!"])
    assert said[0] == "My name is Olivia Ito. My zip code is 80218."
    assert said[1] == "It's order #W5442520." and said[2] == "I no longer need it."
    assert said[3] == sim.CONFIRMED and said[4].endswith("goodbye!") and said[5] is None and c.finished
    # Dev task 6: several emails, tried in turn when the bot can't find the account.
    _, said = _talk(6, ["Could you please provide your email address?", "Sorry, I couldn't find an account with that email. Another one?"])
    assert said == ["It's raj89@example.com.", "It's rajlee@example.com."]
    # Dev task 11: knows only that the order number ends in 66, and never says the bot's full ids back.
    c, said = _talk(11, ["Email please?", "Which order?", "I see two orders: #W7430166 and #W1234567. Which one?",
                         "Cancel #W1234567 because ordered by mistake. Confirm (yes/no)?",
                         "Cancel #W7430166 because ordered by mistake. Confirm (yes/no)?"])
    assert "66" in said[1] and "66" in said[2] and "7430166" not in " ".join(said)
    assert said[3].startswith("No") and said[4] == sim.CONFIRMED
    # Dev task 5: "If the agent asks for confirmation, mention you also want to return the desk lamp."
    _, said = _talk(5, ["Name and zip code?", "Which items would you like to return?",
                        "Return Skateboard from order #W4887592 to paypal_1249653. Shall I proceed?",
                        "Return Skateboard and Desk Lamp from order #W4887592 to paypal_1249653. Shall I proceed?"])
    assert "skateboard" in said[1].lower() and "desk lamp" in said[2] and said[3] == sim.CONFIRMED
    # Dev task 16: the second exchange is backed out of at the read-back.
    c, said = _talk(16, ["Exchange the Mechanical Keyboard in order #W8969494 to full size. Shall I proceed?",
                         "Done, the exchange has been requested. Anything else?",
                         "Exchange the Electric Kettle in order #W3135192 to the green one. Shall I proceed?",
                         "Anything else?"])
    assert said[0] == sim.CONFIRMED and "#W3135192" in said[1] and "changed my mind" in said[2]
    assert said[3].endswith("goodbye!") and c.finished
    # Dev task 18: switches to the 1.5L glass kettle once the bot says the 1L black one is available.
    _, said = _talk(18, ["Which order and item?", "The 1L black Electric Kettle is available. Which payment method?"])
    assert "#W1630030" in said[0] and "1L black" in said[0] and "1.5L glass" in said[1]
    # A question the caller has no answer for: it restates its request (and some context), never silence.
    _, said = _talk(20, ["Do you like turtles?"])
    assert "Electric Kettle" in said[0] and "#W6067464" in said[0]


def test_option_choices_are_answered_from_the_instructions_own_sentences():
    # Dev task 1: the bot offers variants; the caller answers with what its instruction says about them
    # ("whichever is cheaper", then the bookshelf's colour), each sentence once, never an invented choice.
    mouse = ("The Gaming Mouse with color white comes with connectivity wireless ($12.00) or connectivity wired ($10.00). "
             "Which option would you like?")
    shelf = ("The Bookshelf with material glass, height 5 ft comes with color white ($20.00), color brown ($21.00) or "
             "color black ($22.00). Which option would you like?")
    _, said = _talk(1, [mouse, shelf, shelf])
    assert said[0] == "I don't care about wired or not though, whichever is cheaper."
    assert "color" in said[1] and "color" in said[2] and said[1] != said[2]
    assert "brown" in said[1] + said[2]
    # Without choices offered, the request itself is the answer.
    _, said = _talk(1, ["What would you like instead?"])
    assert "white mouse" in said[0]


def test_a_question_naming_the_order_does_not_ask_for_it_and_own_option_values_are_not_items():
    # Train task 0: "Which items ... from order #W6067464?" asks for items only.
    _, said = _talk(20, ["Which items would you like to return from order #W6067464?"])
    assert "Electric Kettle" in said[0] and "#W6067464" not in said[0]
    # Train task 496: "compartment camera" is the caller's own option value, not a camera in the read-back.
    _, said = _talk(516, ["To confirm: in order #W7584328 I will change the Backpack (small, navy, nylon, laptop) for one "
                          "with color green, material leather, compartment camera ($30.00). Shall I go ahead?"])
    assert said[0] == sim.CONFIRMED
