"""Numeric comparison: which of two close numbers is larger (or smaller)?

Pairs are made to be confusable: swapped digits, decimals of different lengths (3.9 vs 3.11), negatives.
The two choices state the two possible answers; the wrong one names the other number.
"""

from __future__ import annotations

import random

from nexus_eval.tasks.synthetic.common import Worked, make_item


def _swapped_digits(rng: random.Random) -> tuple[str, str]:
    while True:
        digits = [str(rng.randint(1, 9))] + [str(rng.randint(0, 9)) for _ in range(rng.randint(2, 4))]
        i = rng.randrange(len(digits) - 1)
        swapped = digits[:i] + [digits[i + 1], digits[i]] + digits[i + 2 :]
        if swapped != digits and swapped[0] != "0":
            return "".join(digits), "".join(swapped)


def _decimals(rng: random.Random) -> tuple[str, str]:
    whole = rng.randint(0, 20)
    while True:
        short, long = rng.randint(1, 9), rng.randint(10, 99)
        if short * 10 != long:  # 0.5 vs 0.50 would be equal
            return f"{whole}.{short}", f"{whole}.{long}"


def _negatives(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(1, 100), 2)
    return str(-a), str(-b) if rng.random() < 0.7 else str(b)


def problem(rng: random.Random) -> dict:
    first, second = rng.choice([_swapped_digits, _decimals, _negatives])(rng)
    if rng.random() < 0.5:
        first, second = second, first
    want_larger = rng.random() < 0.5
    word = "larger" if want_larger else "smaller"
    values = {first: float(first), second: float(second)}
    right = max(values, key=values.__getitem__) if want_larger else min(values, key=values.__getitem__)
    wrong = second if right == first else first
    question = f"Which number is {word}: {first} or {second}?"
    gold = Worked((f"{right} is {word} than {wrong}.",), right)
    distractor = Worked((f"{wrong} is {word} than {right}.",), wrong)
    return make_item(question, gold, [distractor], rng)
