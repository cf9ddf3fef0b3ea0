"""Scripted phone caller for text evaluations of the dialog router on tau-bench retail tasks
(`quietline eval retail`, services/dialog/evaluation.py).

A task's `instruction` says, in the second person, what the customer knows and wants ("Your name is
Olivia Ito and your zip code is 80218. ... Cancel order #W7602708 because no longer needed.").
`parse_instruction` turns it into `CallerFacts` with explicit rules (no LLM) and `ScriptedCaller`
answers the bot from those facts the way a phone caller would: short answers, one request at a
time, "yes" only to a read-back that matches the request, "no" with a correction otherwise.

Rules the caller keeps, because the evaluation means nothing otherwise:
- It knows only the instruction text: never the task's gold actions, user_id or the database. Its
  one piece of outside knowledge is `PRODUCTS`, the 50 product type names as the instructions
  themselves spell them, used to spot items in free text and in the bot's read-backs.
- It never says an id-like token (order ids, 5+ digit numbers, gift_card_123-style ids, emails)
  that its instruction does not contain: `_say` checks every utterance and raises `IdLeakError`.
  A leak is a simulator bug to fix, not something to patch over silently.
- What the rules cannot parse is kept in `CallerFacts.unparsed` (in first person) and read out when
  the bot asks something the caller has no scripted answer for; nothing is dropped silently. When the
  bot offers a choice among options ("wired ($137.22) or wireless ($143.15)?"), the leftover sentence
  that speaks to it is the answer ("I don't care about wired or not, whichever is cheaper").

Measured on all 520 dev+train instructions (tests/test_caller_simulator.py): the parsed request
kinds agree with the gold action kinds on 351/351 single-action tasks and on the whole sequence for
520/520. The 500 train instructions are templated ("Return #W... via ...: A; B;"); the 20 dev ones
are narrative and rely on the verb and twist rules in `_parse_narrative`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

PRODUCTS = [
    "Action Camera", "Air Purifier", "Backpack", "Bicycle", "Bluetooth Speaker", "Bookshelf", "Coffee Maker",
    "Cycling Helmet", "Desk Lamp", "Digital Camera", "Dumbbell Set", "E-Reader", "Electric Kettle", "Electric Toothbrush",
    "Espresso Machine", "Fleece Jacket", "Gaming Mouse", "Garden Hose", "Grill", "Headphones", "Hiking Boots",
    "Indoor Security Camera", "Jigsaw Puzzle", "LED Light Bulb", "Laptop", "Luggage Set", "Makeup Kit",
    "Mechanical Keyboard", "Notebook", "Office Chair", "Patio Umbrella", "Perfume", "Pet Bed", "Portable Charger",
    "Running Shoes", "Skateboard", "Smart Thermostat", "Smart Watch", "Smartphone", "Sneakers", "Sunglasses", "T-Shirt",
    "Tablet", "Tea Kettle", "Vacuum Cleaner", "Wall Clock", "Water Bottle", "Wireless Earbuds", "Wristwatch", "Yoga Mat",
]
KINDS = ("cancel", "return", "exchange", "modify_items", "modify_address", "modify_user_address",
         "modify_payment", "order_status", "other")
# Tokens that identify records: the caller may say one only if its instruction contains it.
ID_TOKEN = re.compile(r"#?\bW\d{5,}\b|\b\d{5,}\b|\b[a-z]+(?:_[a-z]+)*_\d+\b|[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
ORDER_ID = re.compile(r"#?\bW\d{5,}\b", re.IGNORECASE)
PAYMENT_ID = re.compile(r"\b(?:paypal|credit_card|gift_card)_\d+\b")
PAYMENT_WORDS = re.compile(r"\b(paypal|credit card|gift card|website credit|store credit)\b", re.IGNORECASE)
CONFIRMED = "Yes, please go ahead."


class IdLeakError(AssertionError):
    """The caller was about to say an id that its instruction does not contain (a simulator bug)."""


def _norm_id(token: str) -> str:
    return token.lstrip("#").lower()


def _aliases() -> list[tuple[str, str]]:
    """(words, product) pairs, longest first: full names, and head nouns that only one product uses."""
    heads: dict[str, list[str]] = {}
    for p in PRODUCTS:
        heads.setdefault(p.split()[-1].lower(), []).append(p)
    pairs = [(p.lower(), p) for p in PRODUCTS]
    pairs += [(h, ps[0]) for h, ps in heads.items() if len(ps) == 1 and h not in {"set", "kit", "bulb"}]
    pairs += [("kettle", "Electric Kettle|Tea Kettle"), ("camera", "Action Camera|Digital Camera|Indoor Security Camera"),
              ("bike", "Bicycle"), ("phone", "Smartphone"), ("lamp", "Desk Lamp"), ("dumbbells", "Dumbbell Set")]
    pairs += [(a + "s", p) for a, p in list(pairs) if not a.endswith("s")]
    return sorted(pairs, key=lambda x: -len(x[0]))


ALIASES = _aliases()


def find_items(text: str) -> list[tuple[str, str]]:
    """Product mentions as (the words used, product names joined by '|'), in order, each product once."""
    low, found = text.lower(), []
    for alias, product in ALIASES:
        for m in re.finditer(rf"(?<![\w-]){re.escape(alias)}(?![\w-])", low):
            found.append((m.start(), text[m.start():m.end()], product))
            low = low[:m.start()] + "#" * len(alias) + low[m.end():]  # "tea kettle" wins over "kettle"
    out: dict[str, tuple[str, str]] = {}
    for _, words, product in sorted(found):
        out.setdefault(product, (words, product))
    return list(out.values())


def _products(words: str) -> set[str]:
    hits = find_items(words)
    return set(hits[0][1].split("|")) if hits else set()


_PRONOUNS = [("you're", "I'm"), ("you've", "I've"), ("you'd", "I'd"), ("you'll", "I'll"), ("you are", "I am"),
             ("you were", "I was"), ("yours", "mine"), ("yourself", "myself"), ("your", "my"),
             ("(to|for|with|asks?|tells?|gives?|helps?|lets?|than|from|about|at|confirms?|offers?) you", r"\1 me"),
             ("you(?= (?:from|with|a|an|the|up|back)\\b)", "me"), ("you", "I")]
_DIRECTIVES = [(r"^(?:but |first )?try (?:your best )?to ", "I'd like to "), (r"^tell the (?:customer service )?agent that ", ""),
               (r"^(?:emphasize|mention|say|complain|insist) (?:that )?", ""),
               (r"^express disappointment in (.*?) and that ", r"I'm disappointed in \1, and ")]


def first_person(text: str, capital: bool = True) -> str:
    """'You want to cancel your order' -> 'I want to cancel my order': an instruction as the caller says it."""
    s = text.strip()
    for pat, rep in _DIRECTIVES:  # stage directions ("Complain that ...") become what is said
        s = re.sub(pat, rep, s, flags=re.IGNORECASE)
    for pat, rep in _PRONOUNS:
        s = re.sub(rf"\b{pat}\b", rep, s, flags=re.IGNORECASE)
    s = re.sub(r"\bi\b", "I", re.sub(r"\bMy\b", "my", s))
    return (s[:1].upper() if capital else s[:1].lower()) + s[1:]


@dataclass
class ItemChange:
    item: str                                  # the product words, e.g. "Electric Kettle"
    old: dict[str, str] = field(default_factory=dict)
    new: dict[str, str] | None = None          # options when stated; {} means "the same options"
    new_text: str = ""                         # a target in words ("a white mouse") when there is no dict


@dataclass
class Request:
    kind: str                                  # one of KINDS
    order_id: str | None = None
    items: list[str] = field(default_factory=list)
    all_items: bool = False
    changes: list[ItemChange] = field(default_factory=list)
    reason: str | None = None                  # 'no longer needed' / 'ordered by mistake'
    payment: str | None = None                 # an id from the instruction, or words such as "paypal"
    address: dict[str, str] | None = None
    text: str = ""                             # the source sentence(s), in first person
    abandon: str | None = None                 # said at the read-back when the caller backs out
    done: bool = False


@dataclass
class Twist:
    trigger: str                               # 'confirm' | 'payment' | 'available' | 'ask'
    request: Request
    say: str
    add_items: list[str] = field(default_factory=list)
    new_text: str = ""                         # the target the caller switches to
    fired: bool = False


@dataclass
class CallerFacts:
    first_name: str | None = None
    last_name: str | None = None
    zip_code: str | None = None
    emails: list[str] = field(default_factory=list)
    order_ids: list[str] = field(default_factory=list)
    order_hint: str | None = None              # "the order number ends in 66"
    requests: list[Request] = field(default_factory=list)
    twists: list[Twist] = field(default_factory=list)
    persona: list[str] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    volunteer_identity: bool = False

    @property
    def email(self) -> str | None:
        return self.emails[0] if self.emails else None


_STRUCTURED = re.compile(
    r"Cancel order (?P<c_oid>#W\d+) because (?P<c_reason>no longer needed|ordered by mistake)\.?"
    r"|Return (?P<r_oid>#W\d+) via (?P<r_pm>\w+): (?P<r_items>(?:[^;{}.#:]+(?: \{[^}]*\})?; ?)+)"
    r"|For (?P<p_oid>#W\d+), change payment to (?P<p_pm>\w+)\.?"
    r"|For (?P<a_oid>#W\d+), change address to (?P<a_addr>\{[^}]*\})(?: \(same as #W\d+\))?\.?"
    r"|For (?P<x_oid>#W\d+), (?P<x_verb>exchange|modify) (?P<x_body>(?:[A-Z][^{};.#]*? \{[^}]*\} to \{[^}]*\}(?:, but [^;]*)?; ?)+)"
    r"(?:via (?P<x_pm>\w+)\.?)?")
_CHANGE = re.compile(r"([A-Z][^{};.#]*?) (\{[^}]*\}) to (\{[^}]*\})(?:, but ([^;]*))?;")
_PENDING = re.compile(r"not receive|won't be able to receive|after placing an order|just placed|you've placed", re.IGNORECASE)
_TARGET = re.compile(r"\b(?:to|for) (an? [^,;]+?|'[^;]+?)(?=,| instead\b|;|$)")
_ABANDON = re.compile(r"decide to ((?:not|just keep|keep) [^.]+)")


def _dict(text: str | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in ast.literal_eval(text).items()} if text else {}


def _unquote(text: str) -> str:
    return re.sub(r"'([^']*)'", r"\1", text).strip()


def _narrative_kind(low: str, pending: bool) -> str | None:
    """The request a free-text sentence makes, from its verbs; None when it makes none."""
    if re.search(r"\bcancel\b|not receive", low):
        return "cancel"
    if re.search(r"\bexchange\b|\bchange it to\b|\bmodify\b", low):
        # A swap on an order that was only placed (not received) is a pending-order modification.
        return "modify_items" if re.search(r"you've placed|just placed", low) else "exchange"
    if re.search(r"\breturn (?:the|all|it|them|items?|#w|your|an?|this)\b", low):  # not "when you return."
        return "return"
    if re.search(r"\b(?:default|user|profile) address\b", low):
        return "modify_user_address"
    if re.search(r"change (?:the |your )?(?:shipping )?address", low):
        return "modify_address"
    if re.search(r"change (?:the |your )?payment method", low):
        return "modify_payment"
    if re.search(r"\b(?:get|want|receive|wanna get|need) a (?:full )?refund\b", low):
        return "cancel" if pending else "return"  # a refund for something not yet received is a cancellation
    if re.search(r"unsubscribe|unhappy with the order", low):
        return "other"
    if re.search(r"\b(?:status|track|where is) (?:of )?(?:the |your )?order", low):
        return "order_status"
    return None


def _reason(low: str) -> str | None:
    if re.search(r"mistake|accidental|by accident|wrong", low):
        return "ordered by mistake"
    if re.search(r"no longer need|don't need|not need|other store|not receive", low):
        return "no longer needed"
    return None


def parse_instruction(text: str) -> CallerFacts:
    """Identity, order ids, requests (in the order stated), twists and leftovers of one instruction."""
    f = CallerFacts()
    if m := re.search(r"Your name is ([A-Z][\w'-]+) ([A-Z][\w'-]+)", text):
        f.first_name, f.last_name = m.groups()
    if m := re.search(r"zip code is (\d{5})", text):
        f.zip_code = m.group(1)
    f.emails = list(dict.fromkeys(re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", text)))
    f.order_ids = list(dict.fromkeys("#" + t.lstrip("#") for t in ORDER_ID.findall(text)))
    if m := re.search(r"order (?:number|id) ends (?:in|with) (\d+)", text):
        f.order_hint = m.group(1)
    f.volunteer_identity = bool(re.search(r"(?:give|tell|provide) [^.]*your (?:name|email|zip)[^.]*"
                                          r"(?:up ?front|right away|at the (?:start|beginning))", text, re.IGNORECASE))
    found: list[tuple[int, Request]] = []
    for m in _STRUCTURED.finditer(text):
        g = m.groupdict()
        if g["c_oid"]:
            req = Request("cancel", g["c_oid"], reason=g["c_reason"])
        elif g["r_oid"]:
            req = Request("return", g["r_oid"], payment=g["r_pm"])
            for im in re.finditer(r"([^;{}]+?)(?: (\{[^}]*\}))?;", g["r_items"]):
                req.items.append(im.group(1).strip())  # with its variant, to tell two alike items apart
                req.changes.append(ItemChange(im.group(1).strip(), _dict(im.group(2))))
        elif g["p_oid"]:
            req = Request("modify_payment", g["p_oid"], payment=g["p_pm"])
        elif g["a_oid"]:
            req = Request("modify_address", g["a_oid"], address={k: v for k, v in _dict(g["a_addr"]).items() if k != "order_id"})
        else:
            req = Request("exchange" if g["x_verb"] == "exchange" else "modify_items", g["x_oid"], payment=g["x_pm"])
            for c in _CHANGE.finditer(g["x_body"]):
                req.changes.append(ItemChange(c.group(1).strip(), _dict(c.group(2)), _dict(c.group(3))))
                req.items.append(c.group(1).strip())
                if c.group(4) and (pm := PAYMENT_WORDS.search(c.group(4))):  # ", but you want to use credit card"
                    req.payment = req.payment or pm.group(1).lower()
        req.text = first_person(m.group(0))
        found.append((m.start(), req))
    # Address and payment changes apply only to pending orders, so an "exchange" on such an order is a
    # pending-order modification, paid for with the payment method the caller has just switched to.
    for _, r in found:
        same = [o for _, o in found if o.order_id == r.order_id and o.kind in ("modify_payment", "modify_address")]
        if r.kind == "exchange" and same:
            r.kind = "modify_items"
        if r.kind == "modify_items" and r.payment is None:
            r.payment = next((o.payment for o in same if o.payment), None)
    _parse_narrative(text, _STRUCTURED.sub(lambda m: " " * len(m.group(0)), text), f, found)
    f.requests = [r for _, r in sorted(found, key=lambda x: x[0])]
    return f


def _parse_narrative(text: str, rest: str, f: CallerFacts, found: list[tuple[int, Request]]) -> None:
    """Free text, a sentence at a time: twists by phrase, requests by verb, anything else kept as unparsed."""
    pending = bool(_PENDING.search(text))
    context: list[tuple[str, str]] = []        # items named since the last request sentence
    last: Request | None = found[-1][1] if found else None
    narrative: list[Request] = []              # only free-text requests absorb a following sentence
    for m in re.finditer(r"\S.*?(?:[.!?](?=\s+[A-Z#(']|\s*$)|$)", rest):
        s, low = m.group(0).strip(), m.group(0).strip().lower()
        if s in ".;" or re.match(r"via \w+\.?$|Your name is |.*don't remember which email", s):
            continue                           # identity is parsed above; the caller tries each email in turn
        if pm := re.match(r"You are ([a-z]+(?:, [a-z]+)*)\.$|You're very ([a-z]+)\.$", s):
            f.persona += [p.strip() for p in (pm.group(1) or pm.group(2)).split(",")]
            continue
        if last and (bm := re.search(r"before confirming, (?:you )?(?:decide to |also want to |want to )(.*)", s, re.IGNORECASE)):
            say = "Actually, before you go ahead, I'd like to " + first_person(bm.group(1).rstrip("."), False) + "."
            f.twists.append(Twist("confirm", last, say, [w for w, _ in find_items(bm.group(1))]))
            continue
        if last and (im := re.search(r"if the (?:customer service )?agent asks (?:you )?(?:for |about )?(.+?), (.*)", s, re.IGNORECASE)):
            cond, act = im.group(1).lower(), im.group(2).rstrip(".")
            trigger = "confirm" if "confirm" in cond else "payment" if re.search(r"pay|refund", cond) else "ask"
            adds = [w for w, _ in find_items(act)] if re.search(r"\b(?:return|exchange|cancel)\b", act) else []
            f.twists.append(Twist(trigger, last, first_person(act) + ".", adds))
            if trigger == "payment" and (pw := PAYMENT_WORDS.search(act)):
                last.payment = last.payment or pw.group(1).lower()
            continue
        if last and "initially unsure which payment method" in low:
            f.twists.append(Twist("payment", last, "I'm not sure yet. What are my options for the refund?"))
            continue
        kind, am = _narrative_kind(low, pending), _ABANDON.search(s)
        abandon = f"Actually, I've changed my mind. I've decided {first_person('to ' + am.group(1), False)}." if am else None
        if kind is None and last and (abandon or PAYMENT_WORDS.search(s)):
            if abandon:                        # "In the end decide to just keep all the items anyway."
                last.abandon = abandon
            else:                              # "You eventually decide to get a gift card for the refund."
                last.payment = PAYMENT_WORDS.search(s).group(1).lower()
            continue
        if kind is None:
            f.unparsed.append(first_person(s.rstrip(".")))
            context += find_items(s)
            continue
        items, oids = find_items(s) or context, ORDER_ID.findall(s)
        req = Request(kind, "#" + oids[0].lstrip("#") if oids else None, [w for w, _ in items],
                      bool(re.search(r"\b(?:all )?the items\b", low)), reason=_reason(text.lower()) if kind == "cancel" else None,
                      text=first_person(s.rstrip(".")), abandon=abandon)
        if pw := PAYMENT_WORDS.search(s):
            req.payment = pw.group(1).lower()
        targets = [_unquote(t) for t in _TARGET.findall(s.rstrip("."))] if kind in ("exchange", "modify_items") else []
        if kind in ("exchange", "modify_items") and (items or targets):  # "change it to 'bamboo'" may name no item
            dm = re.search(r"\{[^}]*\}", s)
            req.changes.append(ItemChange(items[0][0] if items else "", _dict(dm and dm.group(0)), None, targets[0] if targets else ""))
        if len(targets) > 1 and "initially" in low and "change your mind" in low:
            f.twists.append(Twist("available", req, f"Actually, I've changed my mind: I'd like {targets[-1]} instead.", new_text=targets[-1]))
        context = []
        if narrative and narrative[-1] is last and last.kind == kind and not last.abandon and req.order_id in (None, last.order_id):
            # Another sentence about the same request ("... so you want to return the item via mail").
            have = set().union(*[_products(x) for x in last.items])
            last.items += [i for i in req.items if not _products(i) & have]
            last.changes += [c for c in req.changes if c.item not in [x.item for x in last.changes]]
            last.payment, last.reason, last.all_items = last.payment or req.payment, last.reason or req.reason, last.all_items or req.all_items
            last.text += " " + req.text
            continue
        found.append((m.start(), req))
        narrative.append(req)
        last = req
    for _, r in found:  # the instruction names one order only: a free-text request is about that order
        if r.order_id is None and r.kind not in ("other", "modify_user_address") and len(f.order_ids) == 1:
            r.order_id = f.order_ids[0]


# --- the caller ----------------------------------------------------------------------------------
# Topics are matched in the bot's question sentences only: a statement such as "refunded to your
# original payment method" must not make the caller talk about payment.
_ASKS = {
    "email": r"e-?mail",
    "name": r"(?<!item )(?<!product )(?<!user )\bname\b",
    "zip": r"\bzip\b|zipcode|postal code",
    "identity": r"verify|authenticat|identify you|(?:locate|look up) your (?:account|profile)|confirm your identity",
    "order": r"order (?:id|number|#(?!w\d))|which order|what order",  # "order #W123...?" names it, asks nothing
    "items": r"which (?:items?|products?|ones?)\b|what (?:items?|products?)\b|items? (?:would|do) you|items? you(?:'d| would)"
             r"|\band (?:the )?items?\b",
    "options": r"\b(?:new|which|what|preferred) (?:options?|colou?r|size|variant|version|model|capacity|material|type)\b"
               r"|(?:exchange|change|modify|swap) (?:it|them|the \w+(?: \w+)?) (?:to|for|into)\b|would you like instead",
    "reason": r"\breason\b|\bwhy\b",
    "payment": r"payment method|refund (?:to|method|go|be)|which (?:card|method)|how would you like to (?:pay|receive|be refunded)"
               r"|(?:pay|refund)\b.*(?:difference|price)|gift card|paypal|credit card|original payment",
    "address": r"(?<!e-mail )(?<!email )\baddress\b",
    "all_items": r"\b(?:all|any other|any more) (?:the )?items?\b|is that all\b|are those all|other items"
                 r"|anything else (?:that )?you(?:'d| would)? (?:like|want) to (?:return|exchange|modify|change)",
    "else": r"anything else|something else|else (?:i|we) can|any other (?:questions?|requests?|way)|what else|further assistance",
}
_ASK_CUE = re.compile(r"\?|^(?:please|kindly|can you|could you|may i have|let me know|tell me|provide|share)\b"
                      r"|please (?:provide|tell|share|confirm|let me know|give)")
_READBACK = re.compile(r"shall i|should i|do you want me to|would you like me to|go ahead|proceed|yes or no|yes/no|\(yes\)"
                       r"|is (?:that|this|everything) (?:correct|right)")
_ACTION = re.compile(r"cancel|return|exchang|modif|chang|updat|switch|swap")
_SWAP = r"exchang|modif|chang|swap|replac|updat"
_KIND_CUE = {"cancel": r"cancel", "return": r"\breturn", "exchange": _SWAP, "modify_items": _SWAP,
             "modify_payment": r"payment|paypal|card", "modify_address": r"address", "modify_user_address": r"address"}
_DONE = re.compile(r"\b(?:has|have) been (?:successfully )?(?:cancel|return|exchang|modif|updat|chang|submit|process|request|placed)"
                   r"|successfully|is now (?:cancel|pending|updated)|return request|exchange request|all set|\bdone\b|completed")
_REFUSAL = re.compile(r"\b(?:cannot|can't|can not|unable to|not able to|not possible|isn't possible|not eligible)\b")
_NOT_FOUND = re.compile(r"(?:couldn't|could not|can't|cannot|unable to) (?:find|locate)|no (?:user|account|record)|not found|does(?:n't| not) match")
_BYE = re.compile(r"\bgood ?bye\b|\bbye\b|have a (?:great|good|nice|wonderful) (?:day|one)|transfer(?:ring)? you|human agent")
_PAY_PREFIX = {"paypal": "paypal_", "credit card": "credit_card_", "gift card": "gift_card_", "website credit": "gift_card_",
               "store credit": "gift_card_"}
_REASONS = {"no longer needed": "I no longer need it.", "ordered by mistake": "I ordered it by mistake."}
# Words of a bot's question that say nothing about the choices it offers.
_COMMON_WORDS = {"the", "with", "comes", "come", "which", "what", "option", "options", "would", "you", "like", "or", "and",
                 "your", "for", "one", "is", "it", "in", "of", "a", "an", "to", "do", "i", "we", "have", "available",
                 "please", "that", "this", "these", "are", "can", "new", "order", "item", "items"}


def _options(opts: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in opts.items())


def _join(words: list[str]) -> str:
    words = [f"the {w}" for w in words]
    return (words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]) if words else "the items"


class ScriptedCaller:
    """Follows one instruction: `opening()`, then `reply(bot_text)` for each bot turn (None once hung up)."""

    MAX_TURNS = 40  # a bot stuck in a loop must not keep the simulation going forever

    def __init__(self, instruction: str) -> None:
        self.facts = parse_instruction(instruction)
        self._allowed = {_norm_id(t) for t in ID_TOKEN.findall(instruction)}
        self._i = 0                    # the request in hand: the earliest not done, unless the bot took a later one first
        self._email_i = 0              # which of several emails to offer
        self._awaiting_done = False    # said yes to a read-back: the next completion message finishes the request
        self._stalls = 0               # turns on the request in hand that the caller had no answer for
        self._last_asked: list[str] = []
        self._context = list(self.facts.unparsed)
        self.finished = False          # said goodbye, or the bot ended the call
        self.transcript: list[tuple[str, str]] = []

    def opening(self) -> str:
        r = self._req()
        intro = self._describe(r, brief=True) if r else "I have a question about my account."
        return self._say("Hi, " + intro + (" " + self._identity() if self.facts.volunteer_identity else ""))

    def reply(self, bot_text: str) -> str | None:
        if self.finished:
            return None
        self.transcript.append(("bot", bot_text))
        t = bot_text.lower()
        q = " ".join(s for s in re.split(r"(?<=[.?!])\s+", t) if _ASK_CUE.search(s.strip()))  # the asking part
        if _BYE.search(t) and "?" not in t:
            self.finished = True       # the bot closed or transferred the call
            return None
        if self._awaiting_done and (_DONE.search(t) or _REFUSAL.search(t)):
            self._finish()             # done, or refused after all: that request is over either way
        asked = [k for k, p in _ASKS.items() if re.search(p, q)]
        if "which one" in q and ORDER_ID.search(t):  # "I see orders #W1 and #W2. Which one?"
            asked = ["order" if k == "items" else k for k in asked]
        if _NOT_FOUND.search(t) and "email" in self._last_asked and "email" not in asked:
            asked.insert(0, "email")   # "Sorry, no account with that one. Another?"
        self._last_asked = asked
        if "else" in asked and (self._awaiting_done or _REFUSAL.search(t)):
            self._finish()             # offering more help: the confirmed request went through, or can't be done
        r = self._req()
        if r is None or len(self.transcript) > 2 * self.MAX_TURNS:
            return self._bye()
        if "available" in t and (tw := self._twist(r, "available")):
            return self._say(self._fire(tw, r))
        if self._is_readback(q, t, asked):
            return self._say(self._confirm(t))
        if "email" in asked:           # "your email, or your name and zip code": one way of identifying is enough
            asked = [k for k in asked if k not in (("name", "zip", "identity") if self.facts.emails else ("email",))] or asked
        if "else" in asked and set(asked) <= {"else", "payment"}:
            return self._next_or_bye()
        parts = list(dict.fromkeys(a for k in asked if k != "else" and (a := self._answer(k, r, t))))
        if parts:
            self._stalls = 0
            return self._say(" ".join(parts))
        if not q and (_REFUSAL.search(t) or _DONE.search(t)):
            if _REFUSAL.search(t):
                self._finish()         # the bot can't do it: a real caller moves on
            return self._next_or_bye(lead="I see. " if _REFUSAL.search(t) else "Thanks. ")
        self._stalls += 1
        if self._stalls > 3:
            self._finish()
            return self._next_or_bye(lead="Never mind that one. ")
        if tw := self._twist(r, "ask"):
            return self._say(self._fire(tw, r))
        more = (" " + self._context.pop(0) + ".") if self._context else ""
        return self._say(self._describe(r) + more)  # a question it has no answer for: restate the request

    # -- answers ------------------------------------------------------------------------------------
    def _answer(self, topic: str, r: Request, t: str) -> str | None:
        f = self.facts
        if topic == "email" or (topic == "identity" and f.emails):
            if f.emails and _NOT_FOUND.search(t):
                if self._email_i + 1 >= len(f.emails) and f.zip_code:
                    return "Can you use my name and zip code instead? " + self._identity(name_zip=True)
                self._email_i = min(self._email_i + 1, len(f.emails) - 1)  # "I don't remember which email I used"
            return f"It's {f.emails[self._email_i]}." if f.emails else "Can you use my name and zip code instead? " + self._identity(True)
        if topic == "identity":
            return self._identity(name_zip=True)
        if topic == "name":
            return f"My name is {f.first_name} {f.last_name}."
        if topic == "zip":
            return f"My zip code is {f.zip_code}." if f.zip_code else f"I don't know that offhand, but my email is {f.email}."
        if topic == "order":
            if r.order_id:
                return f"It's order {r.order_id}."
            if f.order_hint:
                return f"I don't remember the full number, but it ends in {f.order_hint}."
            return "I don't have the order number handy." + (f" It's the order with {_join(r.items)}." if r.items else "")
        if topic == "items":
            return self._items(r) if r.kind in ("cancel", "return", "exchange", "modify_items") else None
        if topic == "options":
            if r.kind not in ("exchange", "modify_items"):
                return None
            return self._option_choice(t) or self._targets(r)
        if topic == "reason":
            if r.reason:
                return _REASONS[r.reason]
            return (self._context.pop(0) + ".") if self._context else ("I'd just like it cancelled." if r.kind == "cancel" else None)
        if topic == "payment":
            if tw := self._twist(r, "payment"):
                return self._fire(tw, r)
            if not r.payment:
                return "The original payment method is fine."
            return f"Please use {r.payment}." if PAYMENT_ID.fullmatch(r.payment) else f"I'd like to use {r.payment}, please."
        if topic == "address":
            return f"Please change it to {self._address(r.address)}." if r.address else None
        if topic == "all_items":
            return self._fire(tw, r) if (tw := self._twist(r, "confirm")) else "Yes, that's all."
        return None

    def _option_choice(self, t: str) -> str | None:
        """When the bot offers choices ("... wired ($137.22) or wireless ($143.15). Which option?"), the
        instruction's own sentence about them ("I don't care about wired or not, whichever is cheaper"),
        said once; None when no leftover sentence speaks to the choices offered."""
        if " or " not in t:
            return None
        product_words = {w for _, p in find_items(t) for name in p.split("|") for w in name.lower().split()}
        offered = set(re.findall(r"[a-z][a-z-]+", t)) - _COMMON_WORDS - product_words
        best, best_score = None, 0
        for sentence in self._context:
            words = set(re.findall(r"[a-z][a-z-]+", sentence.lower())) - product_words
            score = len(words & offered) + (1 if "$" in t and re.search(r"\bcheap(?:er|est)\b", sentence, re.IGNORECASE) else 0)
            if score > best_score:
                best, best_score = sentence, score
        if best is None:
            return None
        self._context.remove(best)
        return best + "."

    @staticmethod
    def _is_readback(q: str, t: str, asked: list[str]) -> bool:
        """A request for the go-ahead, as opposed to "could you confirm your email / the order id?"."""
        if any(k in asked for k in ("email", "name", "zip", "identity")) or ("order" in asked and not ORDER_ID.search(t)):
            return False
        return bool(_READBACK.search(q) or ("confirm" in q and _ACTION.search(q)))

    def _confirm(self, t: str) -> str:
        r = self._req()
        assert r is not None
        if problem := self._mismatch(r, t):  # the bot may be reading back a later request: fine, do that one now
            later = [j for j, o in enumerate(self.facts.requests) if j != self._i and not o.done and o.order_id]
            j = next((j for j in later if not self._mismatch(self.facts.requests[j], t)), None)
            if j is None:
                return f"No, that's not right: {problem}. " + self._describe(r)
            self._i, r = j, self.facts.requests[j]
        if tw := self._twist(r, "confirm") or self._twist(r, "available"):
            return self._fire(tw, r)
        if r.abandon:
            self._finish()
            return r.abandon
        self._awaiting_done = True
        return CONFIRMED

    def _mismatch(self, r: Request, t: str) -> str | None:
        """Why a read-back is not the caller's request (None when it is). Corrections use the caller's facts only."""
        ids = {_norm_id(x) for x in ORDER_ID.findall(t)}
        if r.order_id and ids and _norm_id(r.order_id) not in ids:
            return f"it's order {r.order_id}"
        if not r.order_id and self.facts.order_hint and ids and not any(i.endswith(self.facts.order_hint) for i in ids):
            return f"my order number ends in {self.facts.order_hint}"
        if _ACTION.search(t) and not re.search(_KIND_CUE.get(r.kind, r"(?!)"), t):  # 'other' wants no order action
            return "that's not the request I made"
        if r.reason and re.search(r"no longer needed|ordered by mistake", t) and r.reason not in t:
            return f"the reason is {r.reason}"
        wanted = [_products(i) for i in r.items]
        # Product names inside brackets, or among the caller's own option values ("compartment camera"),
        # are options, not items.
        own_values = {v.lower() for c in r.changes for opts in (c.old, c.new or {}) for v in opts.values()}
        items_text = re.sub(r"\([^)]*\)", " ", t)
        for value in sorted(own_values, key=len, reverse=True):
            items_text = re.sub(rf"(?<![\w-]){re.escape(value)}(?![\w-])", " ", items_text)
        found = set().union(*[set(p.split("|")) for _, p in find_items(items_text)])
        if r.kind in ("return", "exchange", "modify_items") and found and wanted and all(wanted) and \
                (any(not w & found for w in wanted) or found - set().union(*wanted)):
            return f"the items are {_join(r.items)}"
        pids = set(PAYMENT_ID.findall(t))
        if r.payment and pids and not (r.payment in pids if PAYMENT_ID.fullmatch(r.payment)
                                       else any(p.startswith(_PAY_PREFIX[r.payment]) for p in pids)):
            return f"I wanted {r.payment}"
        if r.address and "address" in t and r.address.get("address1", "").lower() not in t:
            return f"the new address is {self._address(r.address)}"
        return None

    # -- phrasing -----------------------------------------------------------------------------------
    def _describe(self, r: Request, brief: bool = False) -> str:
        """The request in the caller's words; `brief` (the opening) leaves out the order and the details."""
        hint = f"the order ending in {self.facts.order_hint}" if self.facts.order_hint else "my order"
        order = f"order {r.order_id}" if r.order_id else hint
        if r.kind == "cancel":
            because = {"no longer needed": " because I no longer need it", "ordered by mistake": " because I ordered it by mistake"}
            return "I'd like to cancel an order." if brief else f"I'd like to cancel {order}{because.get(r.reason or '', '')}."
        if r.kind == "return":
            return "I'd like to return some items from an order." if brief else f"I'd like to return {self._items(r, False)} from {order}."
        if r.kind in ("exchange", "modify_items"):
            if brief:
                return "I'd like to exchange an item I received." if r.kind == "exchange" else "I'd like to change an item on an order I placed."
            return f"I'd like to {'exchange' if r.kind == 'exchange' else 'change'} something on {order}. {self._targets(r)}"
        if r.kind == "modify_address":
            return "I need to change the shipping address on an order." if brief else \
                f"I'd like to change the shipping address of {order} to {self._address(r.address)}."
        if r.kind == "modify_payment":
            return "I'd like to change the payment method on an order." if brief else \
                f"I'd like to change the payment method of {order} to {r.payment}."
        return r.text + "."

    def _items(self, r: Request, sentence: bool = True) -> str:
        if r.kind == "cancel":
            return "The whole order, please." if sentence else "the whole order"
        if r.kind in ("exchange", "modify_items"):
            return self._targets(r)
        names = [f"{c.item} ({_options(c.old)})" if c.old else c.item for c in r.changes] if len(r.changes) == len(r.items) else r.items
        text = _join(names) if names else ("all the items in the order" if r.all_items else "the item I mentioned")
        text = f"all the items: {text}" if r.all_items and names else text
        return text[:1].upper() + text[1:] + "." if sentence else text

    def _targets(self, r: Request) -> str:
        parts = []
        for c in r.changes:
            what = f"the {c.item}" if c.item else "it"
            if c.new is None:
                parts.append(f"I'd like to change {what} to {c.new_text}." if c.new_text else f"I'd like to exchange {what}.")
            elif not c.new:
                parts.append(f"The {c.item} is {_options(c.old)}; I'd like the same options as before.")
            else:
                have = f" (currently {_options(c.old)})" if c.old else ""
                parts.append(f"I'd like {what}{have} changed to {_options(c.new)}, everything else the same.")
        return " ".join(parts) or r.text + "."

    @staticmethod
    def _address(a: dict[str, str] | None) -> str:
        a = a or {}
        street = ", ".join(x for x in (a.get("address1"), a.get("address2")) if x)
        return f"{street}, {a.get('city', '')}, {a.get('state', '')} {a.get('zip', '')}, {a.get('country', '')}".strip(", ")

    def _identity(self, name_zip: bool = False) -> str:
        f = self.facts
        if f.email and not name_zip:
            return f"My email is {f.email}."
        return f"I'm {f.first_name} {f.last_name}" + (f", zip code {f.zip_code}." if f.zip_code else ".")

    # -- state --------------------------------------------------------------------------------------
    def _req(self) -> Request | None:
        reqs = self.facts.requests
        if not (self._i < len(reqs) and not reqs[self._i].done):
            self._i = next((j for j, r in enumerate(reqs) if not r.done), len(reqs))
        return reqs[self._i] if self._i < len(reqs) else None

    def _twist(self, r: Request, trigger: str) -> Twist | None:
        return next((tw for tw in self.facts.twists if tw.request is r and tw.trigger == trigger and not tw.fired), None)

    @staticmethod
    def _fire(tw: Twist, r: Request) -> str:
        tw.fired = True
        r.items += [i for i in tw.add_items if i not in r.items]
        if tw.new_text and r.changes:
            r.changes[0].new_text = tw.new_text
        return tw.say

    def _finish(self) -> None:
        if (r := self._req()) is not None:
            r.done = True
        self._awaiting_done, self._stalls = False, 0

    def _next_or_bye(self, lead: str = "Yes, ") -> str:
        """The next request, or goodbye; `lead` answers "anything else?" or acknowledges the bot's statement."""
        if (r := self._req()) is None:
            return self._bye("No, that's all." if lead == "Yes, " else "That's all I needed.")
        self._stalls = 0
        text = self._describe(r)
        text = text.replace("I'd like to", "I'd also like to", 1) if text.startswith("I'd") else text
        return self._say(lead + (text if text.startswith("I") or lead != "Yes, " else text[:1].lower() + text[1:]))

    def _bye(self, lead: str = "No, that's all.") -> str:
        self.finished = True
        return self._say(lead + " Thank you, goodbye!")

    def _say(self, text: str) -> str:
        """Every utterance passes here: an id that the instruction does not contain is a bug, raised."""
        for token in ID_TOKEN.findall(text):
            if _norm_id(token) not in self._allowed:
                raise IdLeakError(f"caller would say {token!r}, which is not in its instruction: {text!r}")
        self.transcript.append(("caller", text))
        return text
