"""Multi-step arithmetic word problems with exact answers, PAL programs and CoT rationales (GSM8K-like).

A problem is built as a small straight-line program: *givens* (numbers stated in the question) and
*steps* (one arithmetic expression each, over earlier variables). The same steps produce, at once, the
reference PAL program (`def solution(): ... return result`), the chain-of-thought rationale (one line per
step, then "The answer is X."), and the exact answer (evaluated with fractions, so it is never a float
artefact). The number of operations (2-6) is counted from the program itself.

Eight families cover the skills of grade-school math: inventories (how many are left), shopping
(prices, discounts, change), travel and filling rates with unit conversion, schedules (time
differences), comparisons, savings (how many are needed, rounding up), wages with percentages, and
recipe scaling. `math_word_hard` is the same task with 5-9 digit numbers (like GSM-Hard), where mental
arithmetic fails but a program does not.

Splits share no template (each is owned by one split), no name or object (position-partitioned pools)
and no number pattern (the sorted numbers of a question hash to exactly one split).

The parts: `pools` and `templates` hold the words (data only), `builder` records a problem's sentences,
program and rationale together, `families` draws the eight kinds of problem; this module turns draws
into rows.
"""

from __future__ import annotations

import ast
import random

from lmstack.data.tasks.answers import FINAL_ANSWER_PREFIX, answer_value, format_number
from lmstack.data.tasks.common import check_split, draw_distinct, hash_split, number_signature, numbers_in, split_rng
from lmstack.data.tasks.math_word.builder import Builder, Retry, money
from lmstack.data.tasks.math_word.families import FAMILIES, LARGE_FAMILIES
from lmstack.data.tasks.math_word.pools import (
    ACTIVITIES,
    DISHES,
    GOALS,
    GOODS,
    INGREDIENTS,
    ITEMS,
    NAMES,
    PLACES,
    POOLS,
    VEHICLES,
)
from lmstack.data.tasks.math_word.templates import TEMPLATES

__all__ = [
    "ACTIVITIES",
    "DISHES",
    "FAMILIES",
    "GOALS",
    "GOODS",
    "INGREDIENTS",
    "ITEMS",
    "LARGE_FAMILIES",
    "NAMES",
    "PLACES",
    "POOLS",
    "TEMPLATES",
    "VEHICLES",
    "count_ops",
    "generate",
    "math_word",
    "math_word_hard",
    "money",
]


def _program(lines: list[tuple[str, str]]) -> str:
    """`def solution(): ... return result`, the last computed variable renamed to `result`."""
    body = [f"{var} = {expr}" for var, expr in lines[:-1]]
    body.append(f"result = {lines[-1][1]}")
    if any("math." in expr for _, expr in lines):
        body.insert(0, "import math")
    return "def solution():\n" + "".join(f"    {line}\n" for line in body) + "    return result\n"


def count_ops(program: str) -> int:
    """Arithmetic operations in a program: binary operators plus rounding calls."""
    tree = ast.parse(program)
    return sum(isinstance(node, ast.BinOp | ast.Call) for node in ast.walk(tree))


def _difficulty(n_ops: int) -> str:
    return "easy" if n_ops <= 3 else "medium" if n_ops == 4 else "hard"


def _draw(rng: random.Random, split: str, large: bool) -> dict | None:
    family = rng.choice(LARGE_FAMILIES if large else list(FAMILIES))
    b = Builder(rng, split, large)
    try:
        FAMILIES[family](b)
    except Retry:
        return None
    program = _program(b.lines)
    n_ops = count_ops(program)
    if not 2 <= n_ops <= 6:
        return None
    answer = b.env[b.lines[-1][0]]
    question = " ".join(b.sentences)
    digits = [len(x.split(".")[0]) for x in numbers_in(question)]
    if large and not (max(digits) >= 5 and max(digits) <= 9):  # the hard variant: 5-9 digit numbers
        return None
    rationale = "\n".join(b.rationale + [f"{FINAL_ANSWER_PREFIX} {format_number(answer)}."])
    return {
        "question": question,
        "answer": answer_value(answer),
        "program": program,
        "rationale": rationale,
        "n_ops": n_ops,
        "difficulty": _difficulty(n_ops),
        "numbers": "large" if large else "small",
        "family": family,
        "template_ids": b.template_ids,
        "entities": b.entities,
    }


def generate(n: int, seed: int, split: str, large: bool = False) -> dict[str, list[dict]]:
    """Draw `n` distinct problems of one split. A problem is kept only if its number pattern belongs to
    this split (so splits never share one); duplicates of a question are dropped."""
    check_split(split)
    task = "math_word_hard" if large else "math_word"
    rng = split_rng(seed, task, split)
    drawn = draw_distinct(
        task,
        n,
        split,
        lambda: _draw(rng, split, large),
        key=lambda item: item["question"],
        belongs=lambda item: hash_split(number_signature(item["question"])) == split,
    )
    items: list[dict] = []
    for i, item in enumerate(drawn):
        record = {"id": f"{task}-{split}-{i:06d}", "task": task, "split": split}
        record.update(item)
        record["prompt"] = item["question"]
        record["completion"] = item["rationale"]
        record["messages"] = [
            {"role": "user", "content": item["question"]},
            {"role": "assistant", "content": item["rationale"]},
        ]
        items.append(record)
    return {"items": items}


def math_word(n: int, seed: int, split: str) -> dict[str, list[dict]]:
    """Multi-step arithmetic word problems (2-6 operations) with PAL programs and CoT rationales."""
    return generate(n, seed, split, large=False)


def math_word_hard(n: int, seed: int, split: str) -> dict[str, list[dict]]:
    """The same problems with 5-9 digit numbers (GSM-Hard style): programs succeed where mental math fails."""
    return generate(n, seed, split, large=True)
