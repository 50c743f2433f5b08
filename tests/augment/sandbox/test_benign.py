"""Ordinary PAL programs run under the policy and give the value plain Python gives (issue 14). A policy that
refuses ordinary Python costs right answers: a model that writes `"{:.2f}".format(x)`, `super().__init__()`,
a dataclass, a `match` or a 300-branch elif must not fail. All programs run through one warm pool; each is
also run in-process as plain Python, which checks the expected value itself."""

from __future__ import annotations

import ast
import contextlib
import decimal
import io
import random
import re

import pytest

from lmstack.augment.sandbox import Limits, check_program, run_many

LIMITS = Limits(cpu_s=2, wall_s=15.0)

# Each program follows a `### name = expected` line (the expected value as a Python literal).
SOURCES = r"""
### str_format_positional = '1 + 2 = 3.00'
def solution():
    return "{} + {} = {:.2f}".format(1, 2, 3)
### str_format_fields = "3,4 8   'ab'|   7"
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
def solution():
    pt = Point(3, 4)
    return "{p.x},{p.y} {0[1]} {name!r:>6}|{1:{w}d}".format([9, 8], 7, p=pt, name="ab", w=4)
### str_format_map_and_unbound = 'penx3<5>1,234,567'
def solution():
    row = {"item": "pen", "qty": 3}
    return "{item}x{qty}".format_map(row) + str.format("<{}>", 5) + "{:,}".format(1234567)
### string_formatter_and_template = '1-2 Ann owes $5 abc'
import string
def solution():
    t = string.Template("$who owes $$$amount").substitute(who="Ann", amount=5)
    return string.Formatter().format("{0}-{x}", 1, x=2) + " " + t + " " + string.ascii_lowercase[:3]
### type_of_values = 'int,float,str,list,NoneTypeTrue'
def solution():
    kinds = [type(v).__name__ for v in (1, 2.0, "s", [1], None)]
    same = type(3) is int and type(True) == bool and isinstance(int, type)
    return ",".join(kinds) + str(same)
### getattr_hasattr = 8.0
class Account:
    rate = 0.05
def solution():
    a = Account()
    names = [n for n in ("rate", "owner") if hasattr(a, n)]
    return getattr(a, "rate") * 100 + getattr(a, "owner", 1) + len(names) + hasattr([], "__len__")
### dunder_name_main = 42
def solution():
    return 42
if __name__ == "__main__":
    print("answer", solution())
### super_init_and_private = 'square:16'
class Shape:
    def __init__(self, name):
        self._name = name
class Square(Shape):
    def __init__(self, side):
        super().__init__("square")
        self._side = side
    def area(self):
        return self._side ** 2
def solution():
    s = Square(4)
    return f"{s._name}:{s.area()}"
### dunder_methods_vector = 'Vector(8, 12)2610True'
class Vector:
    def __init__(self, *xs):
        self.xs = list(xs)
    def __add__(self, other):
        return Vector(*[a + b for a, b in zip(self.xs, other.xs)])
    def __mul__(self, k):
        return Vector(*[a * k for a in self.xs])
    __rmul__ = __mul__
    def __len__(self):
        return len(self.xs)
    def __getitem__(self, i):
        return self.xs[i]
    def __iter__(self):
        return iter(self.xs)
    def __eq__(self, other):
        return self.xs == other.xs
    def __repr__(self):
        return f"{self.__class__.__name__}({', '.join(map(str, self.xs))})"
def solution():
    v = Vector(1, 2) + Vector(3, 4)
    return repr(2 * v) + str(len(v)) + str(v[1]) + str(sum(v)) + str(v == Vector(4, 6))
### dunder_protocols = None
class Box:
    def __init__(self, items):
        self.items = items
    def __contains__(self, x):
        return x in self.items
    def __bool__(self):
        return bool(self.items)
    def __hash__(self):
        return hash(tuple(self.items))
    def __lt__(self, other):
        return len(self.items) < len(other.items)
    def __call__(self, k):
        return self.items[k]
    def __str__(self):
        return "Box" + str(len(self.items))
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def __format__(self, spec):
        return "box:" + spec
def solution():
    a, b = Box([1, 2]), Box([3])
    with a as inside:
        got = inside(1)
    return [3 in a, bool(Box([])), min(a, b).items[0], got, str(a), f"{a:wide}", hash(a) == hash((1, 2))]
### name_mangled_private = 125
class BankAccount:
    def __init__(self, balance):
        self.__balance = balance
    def deposit(self, amount):
        self.__balance += amount
        return self.__balance
def solution():
    return BankAccount(100).deposit(25)
### property_classmethod_staticmethod = '212F'
class Temp:
    def __init__(self, c):
        self._c = c
    @property
    def f(self):
        return self._c * 9 / 5 + 32
    @f.setter
    def f(self, value):
        self._c = (value - 32) * 5 / 9
    @classmethod
    def boiling(cls):
        return cls(100)
    @staticmethod
    def unit():
        return "F"
def solution():
    t = Temp.boiling()
    t.f = 212.0
    return f"{t.f:.0f}{Temp.unit()}"
### forward_reference_annotations = '3>2>1|Vector(4, 6)'
from typing import Optional
class Node:
    def __init__(self, value: int, next: Optional["Node"] = None) -> None:
        self.value = value
        self.next: Optional["Node"] = next
class Vector:
    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y
    def __add__(self, other: "Vector") -> "Vector":
        return Vector(self.x + other.x, self.y + other.y)
def solution() -> str:
    head = Node(3, Node(2, Node(1)))
    values = []
    while head is not None:
        values.append(str(head.value))
        head = head.next
    v = Vector(1, 2) + Vector(3, 4)
    return ">".join(values) + f"|Vector({v.x}, {v.y})"
### exception_subclass = 'need 5/5/InsufficientFunds'
class InsufficientFunds(Exception):
    def __init__(self, need):
        super().__init__(f"need {need}")
        self.need = need
def solution():
    try:
        raise InsufficientFunds(5)
    except InsufficientFunds as e:
        return str(e) + "/" + str(e.need) + "/" + type(e).__name__
### super_repr_and_eq = 'Child<Base>Child'
class Base:
    def __repr__(self):
        return "Base"
class Child(Base):
    def __repr__(self):
        return "Child<" + super().__repr__() + ">"
def solution():
    return repr(Child()) + str(Child().__class__.__qualname__)
### nonlocal_counter = 3
def make_counter():
    count = 0
    def step():
        nonlocal count
        count += 1
        return count
    return step
def solution():
    c = make_counter()
    c()
    c()
    return c()
### match_statement = 'small,seq3+2,circle2,yaxis5,diag,str:hi,other'
from dataclasses import dataclass
@dataclass
class Point:
    x: int
    y: int
def describe(v):
    match v:
        case 0 | 1:
            return "small"
        case [a, b, *rest]:
            return f"seq{a + b}+{len(rest)}"
        case {"kind": "circle", "r": r}:
            return f"circle{r}"
        case Point(x=0, y=y):
            return f"yaxis{y}"
        case Point(x, y) if x == y:
            return "diag"
        case str() as s:
            return "str:" + s
        case _:
            return "other"
def solution():
    cases = [1, [1, 2, 3, 4], {"kind": "circle", "r": 2}, Point(0, 5), Point(3, 3), "hi", 2.5]
    return ",".join(describe(c) for c in cases)
### walrus_unpack_comprehension = 225
def solution():
    first, *middle, last = [n * n for n in range(6) if (m := n % 2) == 0 or n > 3]
    return first + sum(middle) * 10 + last
### annotated_locals_and_typing = 5.5
from typing import Dict, List, Optional
def total(prices: Dict[str, float], skip: Optional[List[str]] = None) -> float:
    skip = skip or []
    result: float = 0.0
    for name, price in prices.items():
        if name not in skip:
            result += price
    return result
def solution() -> float:
    return total({"a": 1.5, "b": 2.0, "c": 4.0}, ["b"])
### typing_namedtuple_and_generic = 13
import typing
T = typing.TypeVar("T")
class Stack(typing.Generic[T]):
    def __init__(self) -> None:
        self.items: typing.List[T] = []
    def push(self, x: T) -> None:
        self.items.append(x)
class Pair(typing.NamedTuple):
    a: int
    b: int = 2
def solution():
    s: Stack[int] = Stack()
    s.push(3)
    pair = Pair(1)._replace(b=5)
    return sum(s.items) + pair.a + pair.b + len(Pair._fields) + len(pair._asdict())
### dataclass_features = "a2.03Item(price=1.5, name='a', tags=())"
from dataclasses import dataclass, field, asdict, replace, fields
@dataclass(order=True, frozen=True)
class Item:
    price: float
    name: str = "x"
    tags: tuple = field(default_factory=tuple)
def solution():
    items = sorted([Item(3.0, "b"), Item(1.5, "a")])
    cheaper = replace(items[1], price=2.0)
    return f"{items[0].name}{asdict(cheaper)['price']}{len(fields(Item))}{repr(items[0])}"
### dataclass_post_init_and_methods = 24
import dataclasses
@dataclasses.dataclass
class Rect:
    w: float
    h: float
    area: float = dataclasses.field(init=False)
    def __post_init__(self):
        self.area = self.w * self.h
    def scale(self, k):
        self.w *= k
        self.h *= k
        self.area = self.w * self.h
        return self
def solution():
    return Rect(2, 3).scale(2).area
### functools_wraps_cache_reduce = 'add:Add two numbers.:4:10:102334155:15'
import functools
def counted(fn):
    @functools.wraps(fn)
    def inner(*args):
        inner.calls += 1
        return fn(*args)
    inner.calls = 0
    return inner
@counted
def add(a, b):
    "Add two numbers."
    return a + b
@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
def solution():
    total = functools.reduce(add, range(5))
    return f"{add.__name__}:{add.__doc__}:{add.calls}:{total}:{fib(40)}:{functools.partial(add, 10)(5)}"
### functools_singledispatch_total_ordering = 24
import functools
@functools.singledispatch
def size(x):
    return 0
@size.register
def _(x: list):
    return len(x)
@size.register(str)
def _(x):
    return len(x) * 10
@functools.total_ordering
class Version:
    def __init__(self, n):
        self.n = n
    def __eq__(self, other):
        return self.n == other.n
    def __lt__(self, other):
        return self.n < other.n
def solution():
    return size([1, 2, 3]) + size("ab") + size(1.0) + (Version(2) >= Version(1))
### operator_module = 'abcX120(3, 0)'
import operator
from collections import namedtuple
Emp = namedtuple("Emp", "name age")
def solution():
    staff = [Emp("b", 30), Emp("a", 25), Emp("c", 35)]
    by_age = sorted(staff, key=operator.attrgetter("age"))
    names = list(map(operator.itemgetter(0), by_age))
    upper = operator.methodcaller("upper")
    product = 1
    for k in range(1, 6):
        product = operator.mul(product, k)
    return "".join(names) + upper("x") + str(product) + str(operator.attrgetter("real", "imag")(3))
### date_strftime_and_strptime = '05/03 Tuesday March 10.30 295 65'
import datetime
def solution():
    d = datetime.date(2024, 3, 5)
    parsed = datetime.datetime.strptime("2024-12-25 10:30", "%Y-%m-%d %H:%M")
    delta = (parsed.date() - d).days
    return f"{d:%d/%m} {d.strftime('%A %B')} {parsed:%H.%M} {delta} {d.timetuple().tm_yday}"
### calendar_and_timedelta = '29True2024-03-01Friday'
import calendar, datetime
def solution():
    days = calendar.monthrange(2024, 2)[1]
    start = datetime.date(2024, 1, 31) + datetime.timedelta(days=30)
    return f"{days}{calendar.isleap(2024)}{start.isoformat()}{calendar.day_name[start.weekday()]}"
### decimal_precision_and_fractions = '0.333333|0.667|11/12|11'
from decimal import Decimal, getcontext, localcontext
from fractions import Fraction
def solution():
    getcontext().prec = 6
    third = Decimal(1) / Decimal(3)
    with localcontext() as ctx:
        ctx.prec = 3
        short = Decimal(2) / Decimal(3)
    f = Fraction(3, 4) + Fraction(1, 6)
    return f"{third}|{short}|{f}|{f.numerator}"
### collections_counter_defaultdict_deque = "('the', 3)8[2, 3, 4]['b', 'a']"
from collections import Counter, defaultdict, deque, OrderedDict
def solution():
    words = "the cat and the hat and the bat".split()
    top = Counter(words).most_common(1)[0]
    groups = defaultdict(list)
    for w in words:
        groups[len(w)].append(w)
    q = deque([1, 2, 3], maxlen=3)
    q.append(4)
    od = OrderedDict(a=1)
    od["b"] = 2
    od.move_to_end("a")
    return f"{top}{len(groups[3])}{list(q)}{list(od)}"
### heapq_bisect_statistics_itertools = 19
import heapq, bisect, statistics, itertools
def solution():
    h = [5, 1, 4]
    heapq.heapify(h)
    smallest = heapq.heappop(h)
    pos = bisect.bisect_left([1, 3, 5, 7], 4)
    med = statistics.median([3, 1, 4, 1, 5])
    pairs = len(list(itertools.combinations(range(5), 2)))
    run = [k for k, g in itertools.groupby("aaabbc")]
    return smallest + pos + med + pairs + len(run)
### math_cmath_random = 129.0
import math, cmath, random
def solution():
    random.seed(7)
    rolls = [random.randint(1, 6) for _ in range(3)]
    return round(math.comb(10, 3) + math.sqrt(16) + abs(cmath.sqrt(-4)) + len(rolls), 6)
### re_with_callback = '6 apples and 24 pears|apple,pear'
import re
def solution():
    text = "3 apples and 12 pears"
    doubled = re.sub(r"\d+", lambda m: str(int(m.group()) * 2), text)
    found = re.findall(r"(\w+)s\b", text)
    return doubled + "|" + ",".join(found)
### copy_numbers_textwrap = '09[True, False, True]2a\nb'
import copy, numbers, textwrap
def solution():
    grid = [[0, 0], [0, 0]]
    clone = copy.deepcopy(grid)
    clone[0][0] = 9
    kinds = [isinstance(v, numbers.Integral) for v in (1, 2.5, True)]
    wrapped = textwrap.fill("one two three four", width=9)
    body = textwrap.dedent("    a\n    b")
    return f"{grid[0][0]}{clone[0][0]}{kinds}{wrapped.count(chr(10))}{body}"
### pal_rolls = 95.0
def solution():
    rolls_made = 240
    sold_morning = rolls_made * 3 / 8
    sold_afternoon = 55
    return rolls_made - sold_morning - sold_afternoon
### pal_savings_loop = 75
def solution():
    total = 0
    weekly = 5
    for week in range(6):
        total += weekly + 3 * week
    return total
### pal_generator_and_while = 129
def primes():
    n = 2
    while True:
        if all(n % d for d in range(2, int(n ** 0.5) + 1)):
            yield n
        n += 1
def solution():
    gen = primes()
    return sum(next(gen) for _ in range(10))
### pal_recursion_memo_dict = 1346269
def solution():
    memo = {}
    def ways(n):
        if n <= 1:
            return 1
        if n not in memo:
            memo[n] = ways(n - 1) + ways(n - 2)
        return memo[n]
    return ways(30)
### pal_try_finally_global = 8
LOG = []
def risky(x):
    global LOG
    try:
        return 10 // x
    except ZeroDivisionError:
        LOG.append("div0")
        return 0
    finally:
        LOG.append("done")
def solution():
    return risky(2) + risky(0) + len(LOG)
### pal_percent_and_fstring_formats = '1234.6|   ab|1,234.57|0xff|25%|007'
def solution():
    price = 1234.5678
    return "%.1f|%5s|" % (price, "ab") + f"{price:,.2f}|{255:#x}|{0.25:.0%}|{7:03d}"
### pal_sorting_lambda_dict = 'ann=91 cid=91 dee=85'
def solution():
    scores = {"ann": 91, "bob": 78, "cid": 91, "dee": 85}
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return " ".join(f"{name}={score}" for name, score in ranked[:3])
### answer_variable_entry = 18.0
numbers = [4, 8, 15, 16, 23, 42]
result = sum(numbers) / len(numbers)
"""


def _programs(text: str) -> dict[str, tuple[str, object]]:
    parts = re.split(r"^### (\w+) = (.*)$", text, flags=re.MULTILINE)[1:]
    return {parts[i]: (parts[i + 2].strip() + "\n", ast.literal_eval(parts[i + 1])) for i in range(0, len(parts), 3)}


PROGRAMS = _programs(SOURCES)
PROGRAMS["long_sum"] = (  # RestrictedPython's transformer recursed once per `+`: a RecursionError before
    "def solution():\n    a, b = 1, 2\n    return " + " + ".join("ab"[i % 3 == 0] for i in range(1000)) + "\n",
    334 * 2 + 666,
)
PROGRAMS["elif_chain"] = (
    "def solution():\n    n = 299\n    if n == 0:\n        return 0\n"
    + "".join(f"    elif n == {i}:\n        return {i * 2}\n" for i in range(1, 300))
    + "    else:\n        return -1\n",
    598,
)
#: Programs whose value is a list: they must run and report it as a bad_result naming the type.
NOT_SCALAR = {"dunder_protocols"}


def _plain_python(source: str) -> object:
    """The value plain CPython gives (the sandbox's entry rule: solution(), else `answer`/`result`), with the
    process-wide state the programs change (decimal's context, random's state) put back afterwards."""
    g: dict = {"__name__": "__main__"}
    state = random.getstate()
    try:
        with contextlib.redirect_stdout(io.StringIO()), decimal.localcontext():
            exec(compile(source, "<plain>", "exec", dont_inherit=True), g)
            return g["solution"]() if "solution" in g else g.get("answer", g.get("result"))
    finally:
        random.setstate(state)


def test_the_suite_is_large_and_its_expectations_are_plain_pythons() -> None:
    assert len(PROGRAMS) >= 40
    for name, (source, expected) in PROGRAMS.items():
        if name not in NOT_SCALAR:
            assert _plain_python(source) == expected, name


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_the_policy_accepts_it(name: str) -> None:
    assert check_program(PROGRAMS[name][0]) == []


def test_every_program_runs_in_the_sandbox_with_the_right_value() -> None:
    names = sorted(PROGRAMS)
    results = run_many([PROGRAMS[n][0] for n in names], workers=2, limits=LIMITS)
    wrong = {}
    for name, result in zip(names, results, strict=True):
        expected = PROGRAMS[name][1]
        if name in NOT_SCALAR:
            if not (result.error == "bad_result" and "list" in result.message):
                wrong[name] = (result.error, result.message)
        elif not (result.ok and result.value == expected and type(result.value) is type(expected)):
            wrong[name] = (result.error, result.message, result.value)
    assert wrong == {}
    assert results[names.index("dunder_name_main")].stdout == "answer 42\n"


def test_the_list_valued_program_computes_what_plain_python_does() -> None:
    source = PROGRAMS["dunder_protocols"][0]
    as_text = source.replace("    return [", "    return repr([").rstrip() + ")\n"
    result = run_many([as_text], limits=LIMITS)[0]
    assert result.ok and result.value == repr(_plain_python(source))
