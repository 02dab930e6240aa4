"""Multi-step arithmetic word problems (1-4 steps): a collection changes by one event per step.

The story template, names and objects are deliberately unlike the training math generator (nexus_eval/data/mathgen.py):
these items are held out. Distractor solutions make one arithmetic slip at a random step and then continue
correctly from the wrong value, so they read as plausible worked solutions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from nexus_eval.tasks.synthetic.common import Worked, make_item, nonzero_delta, pick_distractors

COLLECTORS = [
    "Aurelio", "Bettina", "Cosmin", "Delphine", "Emeka", "Fenna", "Gideon", "Halima", "Ignatius", "Juniper", "Kofi",
    "Leontine", "Matteo", "Nkechi", "Oswin", "Perpetua", "Radek", "Solveig", "Thandiwe", "Ulrich",
]  # fmt: skip
OBJECTS = ["seashells", "postage stamps", "glass beads", "acorns", "enamel pins", "paper cranes", "river stones"]
CONTAINERS = ["jar", "tin", "shoebox", "drawer", "basket"]
MULTIPLIER_WORDS = {2: "doubles", 3: "triples"}


@dataclass(frozen=True)
class Event:
    kind: str  # "add" | "remove" | "scale" | "hand_out"
    amount: int
    groups: int = 1  # hand_out: `amount` to each of `groups` people


def apply(event: Event, value: int) -> int:
    if event.kind == "add":
        return value + event.amount
    if event.kind == "remove":
        return value - event.amount
    if event.kind == "scale":
        return value * event.amount
    return value - event.amount * event.groups


def sentence(event: Event, name: str, objects: str) -> str:
    if event.kind == "add":
        return f"A neighbour gives {name} {event.amount} more."
    if event.kind == "remove":
        return f"{name} trades away {event.amount} of them."
    if event.kind == "scale":
        return f"After a lucky week the number of {objects} {MULTIPLIER_WORDS[event.amount]}."
    return f"{name} hands {event.amount} to each of {event.groups} cousins."


def step_line(event: Event, before: int, after: int) -> str:
    if event.kind == "add":
        return f"{before} + {event.amount} = {after}."
    if event.kind == "remove":
        return f"{before} - {event.amount} = {after}."
    if event.kind == "scale":
        return f"{before} * {event.amount} = {after}."
    given = event.amount * event.groups
    return f"{event.amount} * {event.groups} = {given}, and {before} - {given} = {after}."


def solve(start: int, events: list[Event], slip_at: int | None = None, slip: int = 0) -> Worked | None:
    """The worked solution; with `slip_at`, step `slip_at` writes a wrong result and later steps build on it."""
    value, lines = start, []
    for i, event in enumerate(events):
        after = apply(event, value) + (slip if i == slip_at else 0)
        if after < 0:
            return None
        lines.append(step_line(event, value, after))
        value = after
    return Worked(tuple(lines), str(value))


def random_event(rng: random.Random, value: int) -> Event:
    kinds = ["add", "remove", "scale", "hand_out"] if value >= 6 else ["add", "scale"]
    kind = rng.choice(kinds if value <= 300 else ["remove", "hand_out"])
    if kind == "add":
        return Event("add", rng.randint(2, 60))
    if kind == "remove":
        return Event("remove", rng.randint(1, value - 1))
    if kind == "scale":
        return Event("scale", rng.choice([2, 3]))
    groups = rng.randint(2, 5)
    return Event("hand_out", rng.randint(1, max(1, (value - 1) // groups)), groups)


def problem(rng: random.Random, steps: int) -> dict:
    name, objects, container = rng.choice(COLLECTORS), rng.choice(OBJECTS), rng.choice(CONTAINERS)
    start = rng.randint(5, 90)
    events, value = [], start
    for _ in range(steps):
        event = random_event(rng, value)
        events.append(event)
        value = apply(event, value)
    question = " ".join(
        [f"{name} keeps {start} {objects} in a {container}."]
        + [sentence(e, name, objects) for e in events]
        + [f"How many {objects} are in the {container} now?"]
    )
    gold = solve(start, events)
    assert gold is not None
    distractors = pick_distractors(
        gold, lambda r: solve(start, events, r.randrange(steps), nonzero_delta(r, 10)), rng, count=3
    )
    return make_item(question, gold, distractors, rng)
