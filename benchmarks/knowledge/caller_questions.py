"""Derives a caller's first utterance from a tau2-bench banking task's scenario text.

The question is what the simulated caller would open the call with, taken from the scenario alone
(never from `required_documents` or the gold actions):
1. the quoted opening line when the scenario scripts one ("Start naturally:" / "Opening:" followed by
   a quotation);
2. otherwise a "Start by saying/mentioning ..." guideline, turned into the first person;
3. otherwise the sentences that state the caller's goal ("You're looking for ...", "You want ...",
   "... who wants to ...", "Your situation/goal: ..."), turned into the first person, without the ones
   the scenario says to keep back until asked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

SCRIPTED_OPENING = re.compile(
    r"(?:Start naturally|Opening)[^\n]*?[:*]\s*(?:[^\"\n]*?)\"(?P<quote>[^\"]+)\"", re.IGNORECASE
)
START_BY = re.compile(r"Start by (?:saying|mentioning|telling[^,.]*?) (?:that )?(?P<rest>[^\n]+)", re.IGNORECASE)
GOAL_MARKERS = re.compile(
    r"\b(you(?:'re| are) looking|you want|you need|you'd like|wants? to|comes? in to|calling to|"
    r"you(?:'re| are) planning|you received|you(?:'ve| have) (?:noticed|been)|your goal)\b",
    re.IGNORECASE,
)
# Scenario sentences about role play, tools or what to hold back are not something a caller says.
HELD_BACK = re.compile(
    r"\b(unless (?:specifically )?asked|if asked|do not (?:mention|bring|volunteer|reveal)|don't (?:mention|need to mention)|"
    r"only mention|playing the role|customer service representative|tool|end the conversation|"
    r"transfer|never respond|on the line|your character|annual income|subscription|credit score)\b",
    re.IGNORECASE,
)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# Second person to first person, longest forms first; "you" as an object becomes "me".
PRONOUNS = [
    (r"\byou're\b", "I'm"), (r"\byou are\b", "I am"), (r"\byou've\b", "I've"), (r"\byou have\b", "I have"),
    (r"\byou'd\b", "I'd"), (r"\byou'll\b", "I'll"), (r"\byour\b", "my"), (r"\byourself\b", "myself"),
    (r"\b(to|for|with|give|gives|help|tell|send|sends) you\b", r"\1 me"), (r"\byou\b", "I"),
]


@dataclass(frozen=True)
class CallerQuestion:
    """One task's caller question and the documents the task says answer it."""

    task_id: str
    question: str
    source: str  # "scripted", "start_by" or "goal": which rule produced the question
    required_documents: tuple[str, ...]


def first_person(text: str) -> str:
    """Rewrite a scenario's second-person sentence as the caller would say it."""
    for pattern, replacement in PRONOUNS:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
    return text[:1].upper() + text[1:]


def derive_question(instructions: str) -> tuple[str, str]:
    """The caller's first utterance for a scenario, and which rule produced it."""
    scripted = SCRIPTED_OPENING.search(instructions)
    if scripted:
        return scripted.group("quote").strip(), "scripted"
    start_by = START_BY.search(instructions)
    if start_by:
        return first_person(start_by.group("rest").strip().rstrip(".") + "."), "start_by"
    # Markdown emphasis, parenthetical asides and stage directions to the role player are not spoken.
    plain = re.sub(r"\([^)]*\)", "", re.sub(r"[*#]+", " ", instructions))
    plain = re.sub(r":\s*make this[^.]*", "", plain, flags=re.IGNORECASE)
    sentences = [s.strip() for s in SENTENCE_END.split(plain) if s.strip()]
    goals = [s for s in sentences if GOAL_MARKERS.search(s) and not HELD_BACK.search(s)]
    goals = [re.sub(r"^.*?\b(?:who|situation:|goal:)\s*", "", s, flags=re.IGNORECASE) for s in goals]
    return " ".join(first_person(s) for s in goals[:3]), "goal"


def load_caller_questions(tasks_dir: Path | str) -> list[CallerQuestion]:
    """A CallerQuestion for every `task_*.json` in `tasks_dir` that names required documents."""
    questions: list[CallerQuestion] = []
    for path in sorted(Path(tasks_dir).glob("task_*.json")):
        task = json.loads(path.read_text())
        required = tuple(task.get("required_documents") or ())
        if not required:
            continue
        question, source = derive_question(task["user_scenario"]["instructions"])
        if not question:
            raise ValueError(f"{path}: no caller question could be derived from the scenario")
        questions.append(CallerQuestion(task["id"], question, source, required))
    return questions


if __name__ == "__main__":
    import sys

    for item in load_caller_questions(sys.argv[1]):
        print(f"{item.task_id} [{item.source}] {item.question}")
