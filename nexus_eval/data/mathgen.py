"""Seeded arithmetic/algebra problems with worked step-by-step solutions, in GSM8k's answer format.

Each document reads "Question: ...\\nAnswer: <one step per line>\\n#### <answer>". Problem i depends only on (seed, i),
so a larger count extends a smaller one. The templates are deliberately generic arithmetic and algebra: the held-out
eval suites (multi-step word problems, numeric comparison, code-output prediction) are generated elsewhere, and no
template here produces comparison or code-output items.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from fractions import Fraction

NAMES = [
    "Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonah", "Kira", "Liam", "Maya", "Noah",
    "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf", "Zoe",
]  # fmt: skip
ITEMS = ["pencils", "apples", "notebooks", "stickers", "marbles", "cookies", "bottles", "tickets", "cards", "plants"]
THINGS = ["jacket", "bicycle", "lamp", "backpack", "chair", "kettle", "printer", "guitar", "tent", "watch"]
VEHICLES = ["car", "train", "bus", "cyclist", "boat", "truck"]

Problem = tuple[str, list[str], str]  # question, worked steps, final answer


def _shopping_change(rng: random.Random) -> Problem:
    name, (item1, item2) = rng.choice(NAMES), rng.sample(ITEMS, 2)
    a, p, b, q = rng.randint(2, 9), rng.randint(1, 12), rng.randint(2, 9), rng.randint(1, 12)
    total = a * p + b * q
    bill = next(x for x in (20, 50, 100, 200, 500) if x >= total)
    question = (
        f"{name} buys {a} {item1} at ${p} each and {b} {item2} at ${q} each. "
        f"{name} pays with a ${bill} bill. How much change does {name} get?"
    )
    steps = [
        f"The {item1} cost {a} * {p} = ${a * p}.",
        f"The {item2} cost {b} * {q} = ${b * q}.",
        f"Together they cost {a * p} + {b * q} = ${total}.",
        f"The change is {bill} - {total} = ${bill - total}.",
    ]
    return question, steps, str(bill - total)


def _linear_equation(rng: random.Random) -> Problem:
    a, x, b = rng.randint(2, 12), rng.randint(-15, 20), rng.randint(-30, 30)
    c = a * x + b
    sign = "+" if b >= 0 else "-"
    steps = [
        f"{'Subtract' if b >= 0 else 'Add'} {abs(b)} {'from' if b >= 0 else 'to'} both sides: {a}x = {c} {'-' if b >= 0 else '+'} {abs(b)} = {a * x}.",  # noqa: E501
        f"Divide both sides by {a}: x = {a * x} / {a} = {x}.",
    ]
    return f"Solve for x: {a}x {sign} {abs(b)} = {c}.", steps, str(x)


def _equation_both_sides(rng: random.Random) -> Problem:
    x = rng.randint(-10, 15)
    c, a = rng.sample(range(1, 10), 2)
    if a < c:
        a, c = c, a
    b = rng.randint(0, 40)
    d = (a - c) * x + b
    steps = [
        f"Subtract {c}x from both sides: {a - c}x + {b} = {d}.",
        f"Subtract {b} from both sides: {a - c}x = {d} - {b} = {d - b}.",
        f"Divide by {a - c}: x = {d - b} / {a - c} = {x}.",
    ]
    return f"Solve for x: {a}x + {b} = {c}x + {d}.", steps, str(x)


def _sum_and_difference(rng: random.Random) -> Problem:
    small, gap = rng.randint(3, 200), rng.randint(1, 80)
    large = small + gap
    s = small + large
    steps = [
        f"Let the numbers be a and b with a + b = {s} and a - b = {gap}.",
        f"Adding the two equations gives 2a = {s} + {gap} = {s + gap}.",
        f"So a = {s + gap} / 2 = {large}.",
        f"Then b = {s} - {large} = {small}.",
    ]
    question = f"The sum of two numbers is {s} and their difference is {gap}. What is the larger number?"
    return question, steps, str(large)


def _percent_off(rng: random.Random) -> Problem:
    thing, rate, price = (
        rng.choice(THINGS),
        rng.choice([5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 60, 75]),
        20 * rng.randint(2, 150),
    )
    discount = price * rate // 100
    steps = [
        f"The discount is {rate}% of ${price}, which is {price} * {rate} / 100 = ${discount}.",
        f"The sale price is {price} - {discount} = ${price - discount}.",
    ]
    return (
        f"A {thing} costs ${price}. It is on sale for {rate}% off. What is the sale price?",
        steps,
        str(price - discount),
    )


def _distance(rng: random.Random) -> Problem:
    vehicle, v, t, w, u = (
        rng.choice(VEHICLES),
        rng.randint(10, 90),
        rng.randint(1, 6),
        rng.randint(10, 90),
        rng.randint(1, 6),
    )
    question = (
        f"A {vehicle} travels at {v} km per hour for {t} hours, then at {w} km per hour for {u} hours. "
        "How many kilometers does it travel in total?"
    )
    steps = [
        f"First part: {v} * {t} = {v * t} km.",
        f"Second part: {w} * {u} = {w * u} km.",
        f"Total: {v * t} + {w * u} = {v * t + w * u} km.",
    ]
    return question, steps, str(v * t + w * u)


def _weeks_to_save(rng: random.Random) -> Problem:
    name, start, weekly = rng.choice(NAMES), rng.randint(0, 60), rng.randint(5, 40)
    goal = start + weekly * rng.randint(2, 20) - rng.randint(0, weekly - 1)
    weeks = math.ceil((goal - start) / weekly)
    question = (
        f"{name} has ${start} and saves ${weekly} every week. "
        f"How many weeks does it take until {name} has at least ${goal}?"
    )
    steps = [
        f"{name} still needs {goal} - {start} = ${goal - start}.",
        f"{goal - start} / {weekly} = {(goal - start) / weekly:.2f}, so it takes {weeks} full weeks.",
    ]
    return question, steps, str(weeks)


def _rectangle(rng: random.Random) -> Problem:
    length, width = rng.randint(3, 150), rng.randint(2, 100)
    if rng.random() < 0.5:
        steps = [f"The area is length times width: {length} * {width} = {length * width} square meters."]
        return (
            f"A rectangle is {length} m long and {width} m wide. What is its area in square meters?",
            steps,
            str(length * width),
        )
    perimeter = 2 * (length + width)
    steps = [
        f"The perimeter is twice the sum of length and width: {length} + {width} = {length + width}.",
        f"2 * {length + width} = {perimeter} meters.",
    ]
    return f"A rectangle is {length} m long and {width} m wide. What is its perimeter in meters?", steps, str(perimeter)


def _average(rng: random.Random) -> Problem:
    n = rng.randint(3, 6)
    values = [rng.randint(40, 100) for _ in range(n - 1)]
    mean = rng.randint(max(40, sum(values) // (n - 1) - 10), 100)
    values.append(mean * n - sum(values))  # make the mean a whole number
    listed = ", ".join(map(str, values))
    steps = [
        f"The sum is {' + '.join(map(str, values))} = {sum(values)}.",
        f"There are {n} numbers, so the average is {sum(values)} / {n} = {mean}.",
    ]
    return f"What is the average of {listed}?", steps, str(mean)


def _ratio_share(rng: random.Random) -> Problem:
    first, second = rng.sample(NAMES, 2)
    a, b, unit, item = rng.randint(1, 7), rng.randint(1, 7), rng.randint(2, 15), rng.choice(ITEMS)
    total = (a + b) * unit
    question = f"{first} and {second} share {total} {item} in the ratio {a}:{b}. How many {item} does {second} get?"
    steps = [
        f"There are {a} + {b} = {a + b} parts.",
        f"Each part is {total} / {a + b} = {unit} {item}.",
        f"{second} gets {b} * {unit} = {b * unit} {item}.",
    ]
    return question, steps, str(b * unit)


def _order_of_operations(rng: random.Random) -> Problem:
    a, b, c, d = rng.randint(1, 50), rng.randint(2, 12), rng.randint(5, 30), rng.randint(1, 20)
    inner = c - d
    steps = [
        f"Parentheses first: {c} - {d} = {inner}.",
        f"Then multiply: {b} * {inner} = {b * inner}.",
        f"Then add: {a} + {b * inner} = {a + b * inner}.",
    ]
    return f"Evaluate {a} + {b} * ({c} - {d}).", steps, str(a + b * inner)


def _fraction_sum(rng: random.Random) -> Problem:
    p, q = Fraction(rng.randint(1, 19), rng.randint(2, 24)), Fraction(rng.randint(1, 19), rng.randint(2, 24))
    common = p.denominator * q.denominator // math.gcd(p.denominator, q.denominator)
    p_num, q_num = p.numerator * common // p.denominator, q.numerator * common // q.denominator
    total = p + q
    steps = [
        f"The common denominator of {p.denominator} and {q.denominator} is {common}.",
        f"{p} = {p_num}/{common} and {q} = {q_num}/{common}.",
        f"{p_num}/{common} + {q_num}/{common} = {p_num + q_num}/{common} = {total}.",
    ]
    return f"What is {p} + {q}? Write the answer as a fraction in lowest terms.", steps, str(total)


def _groups_minus_broken(rng: random.Random) -> Problem:
    groups, per_group, item = rng.randint(2, 15), rng.randint(4, 24), rng.choice(ITEMS)
    broken = rng.randint(1, groups * per_group // 3)
    total = groups * per_group
    question = (
        f"There are {groups} boxes with {per_group} {item} in each box. {broken} of the {item} are damaged. "
        f"How many {item} are not damaged?"
    )
    steps = [f"In total there are {groups} * {per_group} = {total} {item}.", f"{total} - {broken} = {total - broken}."]
    return question, steps, str(total - broken)


def _minutes(rng: random.Random) -> Problem:
    hours, minutes = rng.randint(1, 200), rng.randint(0, 59)
    steps = [
        f"{hours} hours is {hours} * 60 = {hours * 60} minutes.",
        f"{hours * 60} + {minutes} = {hours * 60 + minutes}.",
    ]
    return f"How many minutes are there in {hours} hours and {minutes} minutes?", steps, str(hours * 60 + minutes)


def _difference_of_squares(rng: random.Random) -> Problem:
    b = rng.randint(2, 150)
    a = b + rng.randint(1, 80)
    steps = [
        "Use a^2 - b^2 = (a - b)(a + b).",
        f"a - b = {a} - {b} = {a - b} and a + b = {a} + {b} = {a + b}.",
        f"{a - b} * {a + b} = {a * a - b * b}.",
    ]
    return f"Compute {a}^2 - {b}^2.", steps, str(a * a - b * b)


def _consecutive_integers(rng: random.Random) -> Problem:
    count, first = rng.choice([2, 3, 4, 5, 6, 7]), rng.randint(-100, 900)
    numbers = [first + k for k in range(count)]
    s = sum(numbers)
    offset = count * (count - 1) // 2
    steps = [
        f"Call the smallest n. The sum is {count}n + {offset} = {s}.",
        f"{count}n = {s} - {offset} = {s - offset}, so n = {first}.",
        f"The largest is n + {count - 1} = {numbers[-1]}.",
    ]
    question = f"The sum of {count} consecutive integers is {s}. What is the largest of them?"
    return question, steps, str(numbers[-1])


TEMPLATES: list[Callable[[random.Random], Problem]] = [
    _shopping_change, _linear_equation, _equation_both_sides, _sum_and_difference, _percent_off, _distance,
    _weeks_to_save, _rectangle, _average, _ratio_share, _order_of_operations, _fraction_sum, _groups_minus_broken,
    _minutes, _difference_of_squares, _consecutive_integers,
]  # fmt: skip


def format_problem(problem: Problem) -> str:
    question, steps, answer = problem
    return f"Question: {question}\nAnswer: " + "\n".join(steps) + f"\n#### {answer}"


def generate_problems(count: int, seed: int) -> Iterator[str]:
    """`count` formatted problems; problem i is drawn from its own RNG seeded by (seed, i)."""
    for i in range(count):
        rng = random.Random(f"nexus-mathgen:{seed}:{i}")
        yield format_problem(rng.choice(TEMPLATES)(rng))
