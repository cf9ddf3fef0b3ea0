"""What a retail caller says, matched against what the back office holds: an order's items, a product's
variants, the caller's payment methods.

The retail flows (services.dialog.retail_flows) always know what can be meant (the lines of the
caller's order, the variants get_product_details lists, the payment methods get_user_details lists),
so matching here is choosing among those, never turning free text into ids: "the blue t-shirt" picks
the T-Shirt line whose options include blue, "size L in black" the variant with those option values,
"my PayPal" the caller's PayPal account. Spoken and written forms are normalised the same way on
both sides first ("5-feet" and "5 ft", "1.5 liters" and "1.5L", "full-size" and "full size"). Each
function returns what it recognised and nothing else: the flows ask again rather than guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Units said as words: a number and its unit are written together on both sides ("5ft", "1.5l").
_UNITS = {
    "ml": ("ml", "milliliter", "milliliters", "millilitre", "millilitres"),
    "l": ("l", "liter", "liters", "litre", "litres"),
    "ft": ("ft", "feet", "foot"),
    "inch": ("inch", "inches"),
    "bar": ("bar", "bars"),
    "mp": ("mp", "megapixel", "megapixels"),
    "gb": ("gb", "gigabyte", "gigabytes"),
    "tb": ("tb", "terabyte", "terabytes"),
    "mah": ("mah",),
    "w": ("w", "watt", "watts"),
    "cups": ("cup", "cups"),
    "%": ("%", "percent", "per cent"),
}
_UNIT_WORDS = re.compile(
    r"(\d)\s*(" + "|".join(sorted((re.escape(word) for words in _UNITS.values() for word in words), key=len, reverse=True))
    + r")(?![\w])")
_UNIT_OF = {word: unit for unit, words in _UNITS.items() for word in words}
# Head nouns too vague to name a product alone ("the set"): the word before them does.
_VAGUE_HEADS = {"set", "kit"}
# Other words callers use for a product (besides its name and its head noun).
_PRODUCT_ALIASES = {"bicycle": ("bike",), "smartphone": ("phone",), "wireless earbuds": ("earphones",),
                    "dumbbell set": ("dumbbells",), "led light bulb": ("light bulb", "bulb"), "t shirt": ("tshirt",)}
# Option values that are ordinary words or bare numbers ("no", "8", "M"): they count only next to their
# option's name ("size 8", "waterproof no"), never alone.
_PLAIN_WORDS = {"yes", "no", "none"}
EVERYTHING = re.compile(r"\b(?:all (?:of )?(?:them|it|the items|items|the products)|everything(?! else)|the (?:whole|entire) order)\b")
# Words that introduce what an item is to become: "the black mouse [for] a white one".
TARGET_MARKER = re.compile(r"\b(?:to|for|into|instead|with|but)\b")
CHEAPEST = re.compile(r"\b(?:cheap(?:er|est)?|less expensive|least expensive|lowest price|lower price)\b")
SAME_OPTIONS = re.compile(r"\bsame (?:options?|item|one|variant)\b|\bsame as before\b")
ORDINALS = {"first": 0, "second": 1, "third": 2, "fourth": 3, "last": -1}
ORDINAL = re.compile(r"\b(first|second|third|fourth|last)\b(?: one)?")
# Payment method kinds as callers name them; "card" alone is a credit card once gift cards are taken out.
_PAYMENT_KINDS = [
    ("gift_card", re.compile(r"\bgift ?cards?\b|\bgift certificate\b|\b(?:store|website|shop) credit\b|\bgc\b")),
    ("paypal", re.compile(r"\bpay ?pal\b")),
    # "card" alone only as a payment card ("my card"), not an option value ("SD card", "CF card").
    ("credit_card", re.compile(r"\b(?:credit|debit) ?cards?\b|\b(?:my|the|that|your) card\b|\bvisa\b|\bmastercard\b|\bamex\b")),
    ("original", re.compile(r"\boriginal (?:payment|method|card|account|one)\b|\bsame (?:card|account|payment|method)\b")),
]
_PAYMENT_ID = re.compile(r"\b(?:paypal|credit_card|gift_card)_\d+\b")


def normalise(text: str) -> str:
    """Lower case, hyphens and brackets as spaces, a number joined to its unit ("5 feet" -> "5ft")."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[-()\"{}\[\]]", " ", text)
    text = re.sub(r"'(?!\w)|(?<!\w)'", " ", text)  # quotes, not the apostrophe of "I'd"
    text = _UNIT_WORDS.sub(lambda match: match.group(1) + _UNIT_OF[match.group(2)], text)
    return " ".join(text.split())


def _phrase(words: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.#]){re.escape(words)}(?![\w%])")


# --- products and order lines ----------------------------------------------------------------------

def _product_forms(name: str) -> set[str]:
    """The ways a caller names product `name`: the name, its head noun, aliases, singular and plural."""
    words = normalise(name).split()
    head = words[-2] if words[-1] in _VAGUE_HEADS and len(words) > 1 else words[-1]
    forms = {" ".join(words), head, *_PRODUCT_ALIASES.get(" ".join(words), ())}
    for form in list(forms):
        forms |= {form + "s", form[:-1] if form.endswith("s") else form + "es"}
    return forms


def products_said(text: str, names: Iterable[str]) -> list[tuple[int, int, set[str]]]:
    """Where `text` names one of the products `names`: (start, end, the names it can mean) in order.

    Longer forms win ("tea kettle" is not also a "kettle"); a head noun shared by two products ("the
    kettle" with a Tea Kettle and an Electric Kettle) means either.
    """
    table: dict[str, set[str]] = {}
    for name in set(names):
        for form in _product_forms(name):
            table.setdefault(form, set()).add(name)
    said = normalise(text)
    found = []
    for form in sorted(table, key=len, reverse=True):
        for match in _phrase(form).finditer(said):
            found.append((match.start(), match.end(), table[form]))
            said = said[:match.start()] + "#" * len(form) + said[match.end():]  # not matched again by a shorter form
    return sorted(found, key=lambda hit: hit[0])


def option_values_said(text: str, values_by_key: dict[str, Iterable[str]]) -> list[tuple[int, str, str]]:
    """The option values `text` says, as (position, option, value) in order of position.

    A value said inside a longer one or inside an option's name counts once or not at all ("warm
    white" is not also "white", "bagged/bagless" is no value); a bare number, a one- or two-letter size
    or a yes/no counts only next to its option's name ("size 8", "size M"), and so does a value two
    options share ("frame color black" is not "lens color black").
    """
    said = normalise(text)
    found: list[tuple[int, int, str, str, bool]] = []  # start, end, option, value, named (its option said beside it)
    for key, values in values_by_key.items():
        key_words = re.escape(normalise(key))
        for value in values:
            words = re.escape(normalise(value))
            named = re.compile(rf"\b{key_words}\s+(?:of\s+|is\s+)?({words})(?![\w%])|(?<![\w.])({words})\s+{key_words}\b")
            for match in named.finditer(said):
                group = 1 if match.group(1) is not None else 2
                found.append((match.start(group), match.end(group), key, value, True))
            if not _needs_option_name(normalise(value)):
                for match in re.finditer(rf"(?<![\w.#])({words})(?![\w%])", said):
                    found.append((match.start(), match.end(), key, value, False))
    names = [(match.start(), match.end()) for key in values_by_key for match in _phrase(normalise(key)).finditer(said)]
    shared = {(start, end) for start, end, key, _, _ in found
              if len({other_key for s, e, other_key, _, _ in found if (s, e) == (start, end)}) > 1}
    kept: dict[tuple[int, str, str], int] = {}
    for start, end, key, value, named in found:
        if (start, end) in shared and not named:
            continue  # two options have this value and neither was named: not said which
        if any(s <= start and end <= e and e - s > end - start for s, e, *_ in found) or \
                any(s <= start and end <= e and e - s > end - start for s, e in names):
            continue
        kept[(start, key, value)] = end
    return sorted(kept)


def _needs_option_name(words: str) -> bool:
    return words.isdigit() or len(words) <= 2 or words in _PLAIN_WORDS


def option_values(variants: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """Option name -> the values the variants (or order lines) have."""
    values: dict[str, set[str]] = {}
    for variant in variants:
        for key, value in variant["options"].items():
            values.setdefault(key, set()).add(value)
    return values


_SENTENCE_END = re.compile(r"[.;!?](?=\s|$)")
_CLAUSE_END = re.compile(r"[.;!?](?=\s|$)|\band\b|\bas well as\b|\bplus\b")


@dataclass
class Mention:
    """A product named: the names it can mean, the words that say which one (the options around the
    name, up to "to" / "for": not the new ones), and everything said after it up to the next product."""

    names: set[str]
    identifying: str
    after: str


def mentions(text: str, names: Iterable[str]) -> list[Mention]:
    """The products of `names` that `text` names, in order, each with what was said about it.

    A product named again after "to" / "for" in the same sentence ("the mouse to a white mouse") is the
    new option of the one before, not another item.
    """
    said = normalise(text)
    found: list[tuple[int, int, set[str]]] = []
    for start, end, meant in products_said(said, names):
        between = said[found[-1][1]:start] if found else ""
        if found and found[-1][2] == meant and TARGET_MARKER.search(between) and not _SENTENCE_END.search(between):
            continue
        found.append((start, end, meant))
    stops = [(match.start(), match.end()) for match in _CLAUSE_END.finditer(said)]
    result = []
    for index, (start, end, meant) in enumerate(found):
        previous_end = found[index - 1][1] if index else 0
        next_start = found[index + 1][0] if index + 1 < len(found) else len(said)
        clause_start = max((stop_end for stop_start, stop_end in stops if stop_end <= start), default=0)
        clause_end = min((stop_start for stop_start, _ in stops if stop_start >= end), default=len(said))
        tail = said[end:min(clause_end, next_start)]
        marker = TARGET_MARKER.search(tail)
        tail = tail[:marker.start()] if marker else tail
        result.append(Mention(meant, said[max(clause_start, previous_end):end] + tail, said[end:next_start]))
    return result


@dataclass
class ItemsSaid:
    """The order lines a caller named: those clearly meant, and for each unclear mention its candidates."""

    lines: list[int] = field(default_factory=list)
    unsure: list[list[int]] = field(default_factory=list)
    about: dict[int, str] = field(default_factory=dict)  # what was said after each chosen line's name


def items_said(text: str, items: list[dict[str, Any]]) -> ItemsSaid:
    """Which lines of an order (`items`, the order's "items") the caller names in `text`.

    "all of them" / "everything" is every line. Otherwise each product named picks its line; when the
    order holds the product in several variants, the option values said beside the name ("the blue
    one", "currently size 80%") choose, and a tie leaves the candidates to ask about. Lines holding the
    same item are one choice.
    """
    said = ItemsSaid()
    if EVERYTHING.search(normalise(text)):
        said.lines = list(range(len(items)))
        return said
    values = option_values(items)
    for mention in mentions(text, (item["name"] for item in items)):
        candidates = [index for index, item in enumerate(items) if item["name"] in mention.names and index not in said.lines]
        chosen = _closest(mention.identifying, items, candidates, values)
        if len(chosen) == 1:
            said.lines.append(chosen[0])
            said.about[chosen[0]] = mention.after
        elif chosen and chosen not in said.unsure:
            said.unsure.append(chosen)
    return said


def _closest(text: str, items: list[dict[str, Any]], candidates: list[int], values: dict[str, set[str]]) -> list[int]:
    """The candidates with the most of their option values said; one per distinct item."""
    said = {(key, value) for _, key, value in option_values_said(text, values)}
    scores = {index: sum((key, value) in said for key, value in items[index]["options"].items()) for index in candidates}
    best = max(scores.values(), default=0)
    distinct: dict[str, int] = {}
    for index in candidates:
        if scores[index] == best:
            distinct.setdefault(items[index]["item_id"], index)
    return list(distinct.values())


def item_among(text: str, items: list[dict[str, Any]], candidates: list[int]) -> int | None:
    """The one of `candidates` (read out to the caller in this order) that `text` picks, or None.

    By position ("the second one"), by name when the candidates are different products, or by the
    option values said ("the blue one").
    """
    said = normalise(text)
    ordinal = ORDINAL.search(said)
    if ordinal and ORDINALS[ordinal.group(1)] < len(candidates):
        return candidates[ORDINALS[ordinal.group(1)]]
    values = option_values(items[index] for index in candidates)
    named = mentions(said, {items[index]["name"] for index in candidates})
    picks = set()
    for mention in named or [Mention(set(), said, "")]:
        among = [index for index in candidates if not named or items[index]["name"] in mention.names]
        chosen = _closest(mention.identifying, items, among, values)
        if len(chosen) == 1 and (len(among) == 1 or option_values_said(mention.identifying, values)):
            picks.add(chosen[0])
    return picks.pop() if len(picks) == 1 else None


# --- variants ------------------------------------------------------------------------------------

def wanted_options(current: dict[str, str], variants: list[dict[str, Any]], text: str, after_name: bool) -> dict[str, str]:
    """The options the caller wants changed on an item with options `current`, from what they said.

    `text` is what was said about the item: after its name when `after_name` ("the mouse *to a white
    one*"), where the words after "to" / "for" / "instead" are the new options; otherwise any option
    value said that differs from the item's own. A value the item already has changes nothing.
    """
    said = normalise(text)
    if after_name and (marker := TARGET_MARKER.search(said)):
        said = said[marker.end():]
    wanted: dict[str, str] = {}
    for _, key, value in option_values_said(said, option_values(variants)):
        if key not in wanted and value != current.get(key):
            wanted[key] = value
    return wanted


def matching_variants(current_item: dict[str, Any], variants: list[dict[str, Any]], wanted: dict[str, str]
                      ) -> list[dict[str, Any]]:
    """The available variants the caller could mean: the item's options with `wanted` applied, exactly,
    if there is one; else every available variant with the wanted options. Never the item itself."""
    others = [variant for variant in variants if variant["available"] and variant["item_id"] != current_item["item_id"]]
    target = {**current_item["options"], **wanted}
    exact = [variant for variant in others if variant["options"] == target]
    if exact or not wanted:
        return exact
    return [variant for variant in others if all(variant["options"].get(key) == value for key, value in wanted.items())]


def varying_options(variants: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Option name -> its values, for the options on which `variants` differ (in the catalogue's order)."""
    values: dict[str, list[str]] = {}
    for variant in variants:
        for key, value in variant["options"].items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return {key: found for key, found in values.items() if len(found) > 1}


# --- payment methods -----------------------------------------------------------------------------

def payment_said(text: str, methods: dict[str, dict[str, Any]], original: str | None) -> str | None:
    """The id of the caller's payment method that `text` names, or None.

    Named by its id, or by kind ("PayPal", "gift card" / "store credit", "credit card", "the original
    one"), the first kind said winning ("PayPal rather than the gift card"); among several cards of a
    kind, the last four digits or the brand said choose.
    """
    lowered = text.lower()
    for method_id in _PAYMENT_ID.findall(lowered):
        if method_id in methods:
            return method_id
    kinds: list[tuple[int, str]] = []
    masked = lowered
    for kind, pattern in _PAYMENT_KINDS:
        for match in pattern.finditer(masked):
            kinds.append((match.start(), kind))
            masked = masked[:match.start()] + "#" * (match.end() - match.start()) + masked[match.end():]
    if not kinds:
        return None
    kind = min(kinds)[1]
    if kind == "original":
        return original if original in methods else None
    mine = [method_id for method_id, method in methods.items() if method.get("source") == kind]
    if len(mine) > 1:
        digits = re.sub(r"\D", " ", lowered).split()
        mine = [method_id for method_id in mine if methods[method_id].get("last_four") in digits
                or str(methods[method_id].get("brand", "")).lower() in lowered.split()] or mine
    return mine[0] if len(mine) == 1 else None


def describe_method(method: dict[str, Any]) -> str:
    """A payment method as said to its owner: "your PayPal account", "your Visa card ending in 9182"."""
    source = method.get("source")
    if source == "paypal":
        return "your PayPal account"
    if source == "gift_card":
        return f"your gift card (balance {money(method.get('balance', 0))})"
    if source == "credit_card":
        return f"your {str(method.get('brand', 'credit')).title()} card ending in {method.get('last_four', '')}".rstrip()
    return f"your {str(source).replace('_', ' ')}"


def money(amount: float) -> str:
    """An amount as said: "$1,234.50"."""
    return f"${amount:,.2f}"


def describe_options(options: dict[str, str], keys: Iterable[str] | None = None) -> str:
    """Option values as said ("size 6 ft, color blue"); only `keys` when given."""
    return ", ".join(f"{key} {value}" for key, value in options.items() if keys is None or key in keys)


def describe_item(item: dict[str, Any]) -> str:
    """An order line as read out: "the T-Shirt (blue, M, cotton)"."""
    values = ", ".join(item.get("options", {}).values())
    return f"the {item['name']}" + (f" ({values})" if values else "")


def join_words(parts: list[str], last: str = "and") -> str:
    """"a", "a and b", "a, b and c"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" {last} " + parts[-1] if parts else ""
