"""Code-output prediction: what does a short Python program print?

Programs: variable chains, a counting loop, an if/else on a remainder, list indexing, string length. The worked
solution traces the values; distractors make one slip (an arithmetic error, an off-by-one index or loop count, the
wrong branch) and then continue correctly. Every gold answer is checked by running the program.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Callable

from nexus_eval.tasks.synthetic.common import Worked, make_item, nonzero_delta, pick_distractors

VARIABLES = ["a", "b", "c", "d", "n", "m", "p", "q", "x", "y", "z", "k"]
WORDS = ["harbor", "lantern", "quartz", "meadow", "cobalt", "saffron", "glacier", "walnut", "ember", "tundra"]
OPERATORS: dict[str, Callable[[int, int], int]] = {
    "+": lambda u, v: u + v,
    "-": lambda u, v: u - v,
    "*": lambda u, v: u * v,
    "//": lambda u, v: u // v,
    "%": lambda u, v: u % v,
}

Program = tuple[str, Worked, Callable[[random.Random], Worked | None]]  # code, gold solution, distractor proposer


def _chain(rng: random.Random) -> Program:
    names = rng.sample(VARIABLES, rng.randint(2, 4))
    start = rng.randint(2, 30)
    ops = []
    for _ in names[1:]:
        op = rng.choice(list(OPERATORS))
        ops.append((op, rng.randint(2, 9) if op in ("*", "//", "%") else rng.randint(1, 40)))
    code = [f"{names[0]} = {start}"] + [
        f"{new} = {old} {op} {k}" for (op, k), old, new in zip(ops, names, names[1:], strict=False)
    ]
    code.append(f"print({names[-1]})")

    def solve(slip_at: int | None = None, slip: int = 0) -> Worked:
        value, lines = start, []
        for i, ((op, k), new) in enumerate(zip(ops, names[1:], strict=True)):
            after = OPERATORS[op](value, k) + (slip if i == slip_at else 0)
            lines.append(f"{new} = {value} {op} {k} = {after}.")
            value = after
        return Worked(tuple(lines), str(value))

    return "\n".join(code), solve(), lambda r: solve(r.randrange(len(ops)), nonzero_delta(r, 5))


def _loop(rng: random.Random) -> Program:
    total, lo, hi, step = rng.randint(0, 20), rng.randint(0, 5), rng.randint(6, 12), rng.randint(2, 9)
    code = f"total = {total}\nfor i in range({lo}, {hi}):\n    total += {step}\nprint(total)"

    def solve(runs: int, slip: int = 0) -> Worked:
        added = runs * step + slip
        first = f"The loop runs {hi} - {lo} = {runs} times." if lo else f"The loop runs {runs} times."
        lines = (first, f"It adds {runs} * {step} = {added}.", f"total = {total} + {added} = {total + added}.")
        return Worked(lines, str(total + added))

    runs = hi - lo
    return (
        code,
        solve(runs),
        lambda r: solve(runs + r.choice([-1, 1])) if r.random() < 0.5 else solve(runs, r.randint(1, 5)),
    )


def _branch(rng: random.Random) -> Program:
    x, divisor, add, factor = rng.randint(10, 60), rng.choice([2, 3, 4, 5]), rng.randint(1, 9), rng.randint(2, 4)
    code = f"x = {x}\nif x % {divisor} == 0:\n    y = x // {divisor}\nelse:\n    y = x + {add}\nprint(y * {factor})"
    remainder = x % divisor

    def solve(take_if: bool, slip: int = 0) -> Worked:
        said = "is 0" if remainder == 0 else "is not 0"
        if take_if:
            y, branch = x // divisor + slip, f"y = {x} // {divisor} = {x // divisor + slip}."
        else:
            y, branch = x + add + slip, f"y = {x} + {add} = {x + add + slip}."
        lines = (f"{x} % {divisor} = {remainder}, which {said}.", branch, f"y * {factor} = {y * factor}.")
        return Worked(lines, str(y * factor))

    right = remainder == 0
    return code, solve(right), lambda r: solve(not right) if r.random() < 0.4 else solve(right, nonzero_delta(r, 4))


def _index(rng: random.Random) -> Program:
    xs = [rng.randint(1, 30) for _ in range(rng.randint(4, 6))]
    i, j = rng.sample(range(len(xs)), 2)
    code = f"xs = {xs}\nprint(xs[{i}] + xs[{j}])"

    def solve(read_i: int, read_j: int, slip: int = 0) -> Worked:
        u, v = xs[read_i], xs[read_j]
        return Worked((f"xs[{i}] = {u} and xs[{j}] = {v}.", f"{u} + {v} = {u + v + slip}."), str(u + v + slip))

    def propose(r: random.Random) -> Worked | None:
        if r.random() < 0.5:  # off by one: counting from 1
            return solve(i + 1, j) if i + 1 < len(xs) else solve(i, j + 1) if j + 1 < len(xs) else None
        return solve(i, j, nonzero_delta(r, 5))

    return code, solve(i, j), propose


def _length(rng: random.Random) -> Program:
    word, factor, extra = rng.choice(WORDS), rng.randint(2, 5), rng.randint(1, 9)
    code = f's = "{word}"\nprint(len(s) * {factor} + {extra})'

    def solve(length: int, slip: int = 0) -> Worked:
        product = length * factor + slip
        lines = (
            f'len("{word}") = {length}.',
            f"{length} * {factor} = {product}.",
            f"{product} + {extra} = {product + extra}.",
        )
        return Worked(lines, str(product + extra))

    n = len(word)
    return code, solve(n), lambda r: solve(n + r.choice([-1, 1])) if r.random() < 0.5 else solve(n, nonzero_delta(r, 4))


TEMPLATES = [_chain, _loop, _branch, _index, _length]


def run(code: str) -> str:
    """What the program really prints: the gold answer is checked against it, not trusted."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})  # our own generated code, never user input
    return out.getvalue().strip()


def problem(rng: random.Random) -> dict:
    code, gold, propose = rng.choice(TEMPLATES)(rng)
    if run(code) != gold.answer:
        raise AssertionError(f"generator bug: {code!r} prints {run(code)}, solution says {gold.answer}")
    question = "What does this Python program print?\n" + code
    return make_item(question, gold, pick_distractors(gold, propose, rng, count=3), rng)
