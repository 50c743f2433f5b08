"""The builder a family draws a problem into: question sentences, program lines, rationale lines and
exact values are recorded together, so the question, the PAL program and the CoT always agree.
"""

from __future__ import annotations

import ast
import math
import random
from dataclasses import dataclass
from fractions import Fraction

from lmstack.data.tasks.answers import format_number
from lmstack.data.tasks.common import fill, pool_split
from lmstack.data.tasks.math_word.pools import NAMES, POOLS, PRONOUNS
from lmstack.data.tasks.math_word.templates import TEMPLATES


class Retry(Exception):
    """The random draw cannot make a clean problem (e.g. a non-terminating decimal); draw again."""


@dataclass
class Person:
    name: str
    pron: str
    obj: str
    poss: str

    def fields(self) -> dict[str, str]:
        return {"name": self.name, "pron": self.pron, "obj": self.obj, "poss": self.poss}


def _exact(node: ast.AST, env: dict[str, Fraction]) -> Fraction:
    """Evaluate a step expression exactly (constants read as decimals, so 2.75 is 11/4, not a float)."""
    if isinstance(node, ast.Expression):
        return _exact(node.body, env)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(repr(node.value))
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_exact(node.operand, env)
    if isinstance(node, ast.BinOp):
        a, b = _exact(node.left, env), _exact(node.right, env)
        ops = {ast.Add: a.__add__, ast.Sub: a.__sub__, ast.Mult: a.__mul__, ast.Div: a.__truediv__}
        return ops[type(node.op)](b)
    if isinstance(node, ast.Call) and ast.unparse(node.func) in ("math.ceil", "math.floor"):
        inner = _exact(node.args[0], env)
        return Fraction(math.ceil(inner) if ast.unparse(node.func) == "math.ceil" else math.floor(inner))
    raise ValueError(f"unsupported expression: {ast.unparse(node)}")


def _show(expr: str, env: dict[str, Fraction]) -> str:
    """The expression with every variable replaced by its value, for the rationale: 'a + b' -> '45 + 12'."""
    tree = ast.parse(expr, mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            node.id = format_number(env[node.id])
    return ast.unparse(tree)


def _decimals_ok(x: Fraction, places: int) -> bool:
    return (x * 10**places).denominator == 1


def money(x: Fraction | int) -> str:
    """'$12' or '$12.50'."""
    x = Fraction(x)
    return f"${x.numerator}" if x.denominator == 1 else f"${float(x):.2f}"


class Builder:
    """One problem being drawn: its random source, its split's pools and templates, and what is recorded."""

    def __init__(self, rng: random.Random, split: str, large: bool):
        self.rng, self.split, self.large = rng, split, large
        self.sentences: list[str] = []
        self.template_ids: list[str] = []
        self.entities: list[str] = []
        self.lines: list[tuple[str, str]] = []
        self.rationale: list[str] = []
        self.env: dict[str, Fraction] = {}

    # -- random draws ------------------------------------------------------------------------------------
    def qty(self, lo: int, hi: int) -> int:
        """A main quantity: small in the normal task, 5-9 digits in the hard one."""
        if self.large:
            digits = self.rng.randint(5, 9)
            return self.rng.randint(10 ** (digits - 1), 10**digits - 1)
        return self.rng.randint(lo, hi)

    def count(self, lo: int, hi: int) -> int:
        """A small multiplier (packs, days, people): the same in both variants."""
        return self.rng.randint(lo, hi)

    def price(self, lo: int, hi: int) -> Fraction:
        if self.large:
            return Fraction(self.qty(lo, hi))
        return Fraction(self.rng.randint(lo, hi)) + Fraction(self.rng.choice([0, 0, 25, 50, 75]), 100)

    def pick(self, pool: str) -> str:
        choices = [x for x in pool_split(POOLS[pool], self.split) if x not in self.entities]
        value = self.rng.choice(choices)
        self.entities.append(value)
        return value

    def person(self) -> Person:
        genders = dict(NAMES)
        name = self.pick("name")
        pron, obj, poss = PRONOUNS[genders[name]]
        return Person(name, pron, obj, poss)

    # -- recording ---------------------------------------------------------------------------------------
    def say(self, slot: str, **fields: object) -> None:
        tid, template = TEMPLATES.pick(self.rng, slot, self.split)
        self.template_ids.append(tid)
        self.sentences.append(fill(template, **fields))

    def _var(self, name: str) -> str:
        var, k = name, 2
        while var in self.env:
            var, k = f"{name}_{k}", k + 1
        return var

    def given(self, name: str, value: int | Fraction) -> str:
        var = self._var(name)
        self.env[var] = Fraction(value)
        self.lines.append((var, format_number(Fraction(value))))
        return var

    def compute(self, name: str, expr: str, text: str = "{calc} = {val}.", places: int = 3) -> str:
        """Add `name = expr`; `text` is its rationale line, with {calc} (the expression with values) and {val}."""
        var = self._var(name)
        tree = ast.parse(expr, mode="eval")
        value = _exact(tree, self.env)
        if value < 0 or not _decimals_ok(value, places):
            raise Retry
        if isinstance(tree.body, ast.Call):  # a rounding step: show the division, then the rounding
            inner = tree.body.args[0]
            q = _exact(inner, self.env)
            shown = format_number(q) if _decimals_ok(q, 3) else f"about {format_number(q, 2)}"
            calc = f"{_show(ast.unparse(inner), self.env)} = {shown}"
        else:
            calc = _show(expr, self.env)
        val = money(value)[1:] if places == 2 else format_number(value)
        self.rationale.append(text.replace("{calc}", calc).replace("{val}", val))
        self.env[var] = value
        self.lines.append((var, expr))
        return var

    def value(self, var: str) -> Fraction:
        return self.env[var]
