"""Dialog redaction benchmark: how much personal data `services.dialog.redaction.Redactor` removes.

Runs the redactor over the 1,000 Presidio synthetic sentences in ../shared/data/pii/*.json (gold spans
with entity_type, start_position, end_position) and reports:

- per gold entity type, recall (gold DATE_TIME spans after birth words, "born on 2/8/1935", are
  counted apart as "DATE_TIME (date of birth)", by the redactor's own rule for it): the share of gold spans at least --covered (default 0.5) of whose
  non-space characters lie inside a redacted span ("mostly covered"), and full recall, the share
  with every non-space character redacted. Some gold types are not redacted on purpose (cities,
  countries, companies, ages, job titles, nationalities, and dates other than dates of birth: see
  the redaction module's docstring); their low recall is the cost of keeping them, listed apart;
- overall precision: the share of redacted non-space characters inside some gold span (of any type),
  and the same per placeholder kind;
- redaction time per sentence.

Prints the JSON summary and writes it to --out (default benchmarks/results/dialog_redaction.json).
The data set is template-generated, so its sentences are denser in personal data than calls are, and
only part of the set is here: read the figures as the redactor's behaviour, not a tuned score.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
from services.kit.offline import enforce_offline

enforce_offline()
from services.dialog.redaction import BIRTH_CONTEXT, BIRTH_CONTEXT_CHARS, Redactor

PII_DATA = REPO_ROOT.parent / "shared" / "data" / "pii"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "dialog_redaction.json"
# Gold types the redactor leaves in the text by design (see services/dialog/redaction.py). A ZIP code
# on its own is shared by thousands of people; with a US state, and UK postcodes, it is redacted.
KEPT_BY_DESIGN = {"GPE", "ORGANIZATION", "AGE", "TITLE", "NRP", "DOMAIN_NAME", "DATE_TIME", "ZIP_CODE"}


def load_sentences(folder: Path) -> list[dict]:
    """Every sentence of every *.json file in `folder` (lists of {full_text, spans})."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SystemExit(f"no *.json files in {folder}: check out ../shared beside the repo")
    sentences = []
    for path in files:
        sentences.extend(json.loads(path.read_text()))
    return sentences


def covered_share(text: str, start: int, end: int, redacted: list[bool]) -> float:
    """Share of the non-space characters of text[start:end] that were redacted (1.0 when none)."""
    positions = [i for i in range(start, end) if not text[i].isspace()]
    if not positions:
        return 1.0
    return sum(redacted[i] for i in positions) / len(positions)


def evaluate(redactor: Redactor, sentences: list[dict], covered: float, examples: int = 0) -> dict:
    """Recall per gold type, precision overall and per placeholder kind, and timing.

    With `examples` > 0, up to that many missed gold values and redactions outside any gold span per
    kind are printed to stderr (never written to the report: the data set stays in ../shared).
    """
    spans_by_type: Counter = Counter()
    mostly: Counter = Counter()
    fully: Counter = Counter()
    redacted_chars = inside_gold_chars = 0
    kind_chars: Counter = Counter()
    kind_inside: Counter = Counter()
    missed_examples: dict[str, list[str]] = defaultdict(list)
    false_examples: dict[str, list[str]] = defaultdict(list)
    elapsed = 0.0
    for item in sentences:
        text = item["full_text"]
        started = time.perf_counter()
        findings = redactor.findings(text)
        redactor.redact(text)  # timed too: what a caller of the redactor pays per text
        elapsed += time.perf_counter() - started
        redacted = [False] * len(text)
        for finding in findings:
            for i in range(finding.start, finding.end):
                redacted[i] = True
        in_gold = [False] * len(text)
        for span in item["spans"]:
            kind = span["entity_type"]
            start, end = span["start_position"], span["end_position"]
            if kind == "DATE_TIME" and BIRTH_CONTEXT.search(text[max(0, start - BIRTH_CONTEXT_CHARS):start]):
                # Scored apart: these are the dates the redactor is meant to remove.
                kind = "DATE_TIME (date of birth)"
            for i in range(start, end):
                in_gold[i] = True
            share = covered_share(text, start, end, redacted)
            spans_by_type[kind] += 1
            mostly[kind] += share >= covered
            fully[kind] += share >= 1.0
            if share < covered and len(missed_examples[kind]) < examples:
                missed_examples[kind].append(span["entity_value"])
        for finding in findings:
            chars = [i for i in range(finding.start, finding.end) if not text[i].isspace()]
            inside = sum(in_gold[i] for i in chars)
            redacted_chars += len(chars)
            inside_gold_chars += inside
            kind_chars[finding.entity_type] += len(chars)
            kind_inside[finding.entity_type] += inside
            if inside < len(chars) / 2 and len(false_examples[finding.entity_type]) < examples:
                false_examples[finding.entity_type].append(text[finding.start:finding.end])
    if examples:
        print(json.dumps({"missed": missed_examples, "outside_gold": false_examples}, indent=2, ensure_ascii=False),
              file=sys.stderr)
    per_type = {
        kind: {
            "gold_spans": count,
            "recall": round(mostly[kind] / count, 3),
            "recall_full": round(fully[kind] / count, 3),
            "redacted_by_design": kind not in KEPT_BY_DESIGN,
        }
        for kind, count in spans_by_type.most_common()
    }
    redacted_types = [kind for kind in spans_by_type if kind not in KEPT_BY_DESIGN]
    spans_redacted_types = sum(spans_by_type[k] for k in redacted_types)
    return {
        "sentences": len(sentences),
        "covered_threshold": covered,
        "recall_redacted_types": round(sum(mostly[k] for k in redacted_types) / spans_redacted_types, 3),
        "precision": round(inside_gold_chars / redacted_chars, 3) if redacted_chars else None,
        "redacted_chars": redacted_chars,
        "per_gold_type": per_type,
        "precision_per_placeholder": {
            kind: {"redacted_chars": chars, "precision": round(kind_inside[kind] / chars, 3)}
            for kind, chars in kind_chars.most_common()
        },
        "ms_per_sentence": round(1000 * elapsed / len(sentences), 2),
    }


def main() -> None:
    """Run the evaluation, print the summary and write it to --out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=PII_DATA, help="folder of Presidio-format *.json files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--covered", type=float, default=0.5,
                        help="share of a gold span's non-space characters that counts it as found")
    parser.add_argument("--examples", type=int, default=0,
                        help="print up to this many misses and false redactions per kind to stderr (not saved)")
    args = parser.parse_args()
    sentences = load_sentences(args.data)
    started = time.perf_counter()
    redactor = Redactor()
    load_s = time.perf_counter() - started
    report = evaluate(redactor, sentences, args.covered, args.examples)
    report["redactor_load_s"] = round(load_s, 2)
    report["data"] = os.path.relpath(args.data, REPO_ROOT)
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
