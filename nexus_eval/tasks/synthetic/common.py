"""What every synthetic item is made of: a question, a worked solution ending `#### answer`, and scored choices.

One record serves both task forms: generate_until reads `question`/`answer` (exact match on the final answer, as
GSM8k), multiple_choice reads `choices`/`gold` (loglikelihood of each complete worked solution, of which all but one
carry a wrong computation).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Worked:
    """A worked solution: one line per step, then the final answer."""

    steps: tuple[str, ...]
    answer: str

    def text(self) -> str:
        return "\n".join(self.steps) + f"\n#### {self.answer}"


def make_item(question: str, gold: Worked, distractors: list[Worked], rng: random.Random) -> dict:
    """A JSONL record; the gold solution sits at a random position among the choices."""
    choices = [d.text() for d in distractors]
    position = rng.randint(0, len(choices))
    choices.insert(position, gold.text())
    return {"question": question, "answer": gold.text(), "target": gold.answer, "choices": choices, "gold": position}


def pick_distractors(
    gold: Worked, propose: Callable[[random.Random], Worked | None], rng: random.Random, count: int
) -> list[Worked]:
    """`count` wrong solutions with pairwise different final answers, all different from the gold one."""
    seen, picked = {gold.answer}, []
    for _ in range(200):
        candidate = propose(rng)
        if candidate is not None and candidate.answer not in seen:
            seen.add(candidate.answer)
            picked.append(candidate)
            if len(picked) == count:
                return picked
    raise RuntimeError(f"could not find {count} distractors for {gold}")  # a template bug, not user input


def nonzero_delta(rng: random.Random, largest: int = 9) -> int:
    """A small arithmetic slip, never zero."""
    return rng.choice([d for d in range(-largest, largest + 1) if d != 0])


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
