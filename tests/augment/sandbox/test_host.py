"""The host side (host.py): ordinary PAL programs run correctly, every failure comes back as a structured
result, limits hold, and the pools, `run_many` and the agent tool behave as documented. Hostile programs:
see test_attacks.py."""

from __future__ import annotations

import os
import time

import pytest

from lmstack.augment.sandbox import (
    Limits,
    SandboxPool,
    check_program,
    make_tool,
    run_many,
    run_program,
    run_python,
)
from lmstack.errors import ConfigError
from testutil import live_children, sandbox_dirs

FAST = Limits(cpu_s=1, wall_s=5.0)


BENIGN = {
    "arithmetic": (
        "def solution():\n    apples = 23\n    eaten = 20\n    bought = 6\n    return apples - eaten + bought\n",
        9,
    ),
    "float_division": ("def solution():\n    total = 15.0\n    people = 4\n    return total / people\n", 3.75),
    "fractions": (
        "from fractions import Fraction\n\ndef solution():\n    share = Fraction(3, 4) * Fraction(2, 5)\n"
        "    return share\n",
        0.3,
    ),
    "decimal": (
        "from decimal import Decimal, getcontext\ngetcontext().prec = 28\n\ndef solution():\n"
        "    return Decimal('19.99') * 3\n",
        59.97,
    ),
    "datetime": (
        "import datetime\n\ndef solution():\n    start = datetime.date(2024, 1, 15)\n"
        "    end = start + datetime.timedelta(days=45)\n    return (end - start).days + end.month\n",
        47,
    ),
    "datetime_from": (
        "from datetime import datetime, timedelta\n\ndef solution():\n"
        "    t = datetime(2024, 5, 1, 9, 30) + timedelta(minutes=135)\n    return t.hour * 60 + t.minute\n",
        705,
    ),
    "loops": (
        "def solution():\n    total = 0\n    for week in range(1, 5):\n        total += week * 10\n"
        "    while total > 60:\n        total -= 7\n    return total\n",
        58,
    ),
    "helper_functions": (
        "def cost(items, price):\n    return items * price\n\ndef solution():\n"
        "    return cost(3, 4.5) + cost(2, 1.25)\n",
        16.0,
    ),
    "classes": (
        "class Account:\n    def __init__(self, balance):\n        self.balance = balance\n"
        "    def deposit(self, amount):\n        self.balance += amount\n        return self\n\n"
        "def solution():\n    return Account(100).deposit(25).deposit(5).balance\n",
        130,
    ),
    "comprehension_unpacking": (
        "def solution():\n    pairs = [(2, 3), (4, 5)]\n"
        "    first, (a, b) = pairs[0], pairs[1]\n"
        "    return sum(x * y for x, y in pairs) + a * b + first[0]\n",
        48,
    ),
    "dict_items_augassign": (
        "from collections import defaultdict\n\ndef solution():\n    counts = defaultdict(int)\n"
        "    for w in 'red blue red green red'.split():\n        counts[w] += 1\n"
        "    best = max(counts.items(), key=lambda kv: kv[1])\n    return best[1]\n",
        3,
    ),
    "math_statistics": (
        "import math\nimport statistics\n\ndef solution():\n"
        "    return math.floor(statistics.mean([3, 4, 8]) * math.sqrt(4))\n",
        10,
    ),
    "itertools_functools": (
        "import itertools\nfrom functools import reduce\n\ndef solution():\n"
        "    combos = list(itertools.combinations(range(5), 2))\n"
        "    return reduce(lambda a, b: a + b, [len(combos), 2])\n",
        12,
    ),
    "fstring": ("def solution():\n    price = 2.5\n    return f'{price * 3:.2f}'\n", "7.50"),
    "answer_variable": ("hours = 7\nrate = 12\nanswer = hours * rate\n", 84),
    "result_variable": ("result = sum(range(101))\n", 5050),
    "negative_and_rounding": ("def solution():\n    return round(-17 / 3, 2)\n", -5.67),
    "string_result": ("def solution():\n    return 'Tuesday'\n", "Tuesday"),
    "bool_result": ("def solution():\n    return 3 > 2\n", True),
}


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_programs_run_correctly(name: str) -> None:
    source, expected = BENIGN[name]
    assert check_program(source) == []
    result = run_program(source, limits=FAST)
    assert result.ok, (result.error, result.message, result.stderr)
    assert result.error is None
    if isinstance(expected, float):
        assert result.value == pytest.approx(expected, rel=1e-9)
    else:
        assert result.value == expected and type(result.value) is type(expected)


def test_benign_programs_in_a_pool_keep_input_order() -> None:
    names = sorted(BENIGN)
    results = run_many([BENIGN[n][0] for n in names], workers=2, limits=FAST)
    assert [r.ok for r in results] == [True] * len(names)
    for name, result in zip(names, results):
        expected = BENIGN[name][1]
        assert result.value == (pytest.approx(expected) if isinstance(expected, float) else expected), name


def test_print_output_is_captured_separately_from_the_value() -> None:
    result = run_program(
        "def solution():\n    print('step', 1, sep='=')\n    print('done')\n    return 5\n", limits=FAST
    )
    assert result.ok and result.value == 5
    assert result.stdout == "step=1\ndone\n"


def test_no_entry_and_no_answer_gives_none() -> None:
    result = run_program("x = 3\n", limits=FAST)
    assert result.ok and result.value is None


def test_entry_can_be_renamed_or_disabled() -> None:
    src = "def main():\n    return 11\nanswer = 3\n"
    assert run_program(src, limits=FAST, entry="main").value == 11
    assert run_program(src, limits=FAST, entry=None).value == 3


def test_exception_reports_type_and_program_line() -> None:
    result = run_program("def solution():\n    x = 1\n    return x / 0\n", limits=FAST)
    assert not result.ok
    assert result.error == "exception"
    assert result.message.startswith("line 3: ZeroDivisionError")


def test_cpu_limit_is_enforced_within_the_wall_clock_bound() -> None:
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", limits=Limits(cpu_s=1, wall_s=6.0))
    assert not result.ok and result.error in ("cpu_limit", "timeout")
    assert time.monotonic() - start < 6.0 + 2.0


def test_wall_clock_timeout_kills_a_sleeping_program() -> None:
    start = time.monotonic()
    result = run_program("import time\ntime.sleep(30)\n", policy=None, limits=Limits(cpu_s=5, wall_s=1.0))
    assert not result.ok and result.error == "timeout"
    assert time.monotonic() - start < 1.0 + 2.0


def test_memory_limit_is_a_structured_error() -> None:
    result = run_program("def solution():\n    return len([0] * (10 ** 9))\n", limits=FAST)
    assert not result.ok and result.error == "memory_limit"


def test_output_limit_kills_a_flooding_program() -> None:
    result = run_program("while True:\n    print('y' * 100)\n", limits=Limits(cpu_s=2, wall_s=5.0, output_bytes=5000))
    assert not result.ok and result.error == "output_limit"
    assert len(result.stdout.encode()) <= 5000


def test_run_python_tool_returns_text_and_never_raises() -> None:
    assert run_python("print(6 * 7)") == "42"
    assert run_python("def solution():\n    return 2 ** 10\n") == "result: 1024"
    text = run_python("import os")
    assert text.startswith("error (policy):") and "os" in text
    assert run_python("answer = 1 / 0").startswith("error (exception): line 1: ZeroDivisionError")
    tool = make_tool(Limits(cpu_s=1, wall_s=3.0))
    assert tool("print('hi')\nanswer = 2") == "hi\nresult: 2"


def test_bad_worker_count_fails_fast() -> None:
    with pytest.raises(ConfigError, match="workers"):
        run_many(["answer = 1"], workers=0)


# --- the warm pool


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc")
def test_pool_runs_programs_in_order_and_leaves_nothing_behind() -> None:
    kids, dirs = live_children(), sandbox_dirs()
    names = sorted(BENIGN)[-8:]
    with SandboxPool(2, limits=FAST) as pool:
        assert len(live_children() - kids) == 2  # two warm children waiting
        results = pool.map([BENIGN[n][0] for n in names])
        single = pool.run("answer = 5")
    assert [r.ok for r in results] == [True] * len(names) and single.value == 5
    assert results[names.index("string_result")].value == "Tuesday"
    assert live_children() <= kids and sandbox_dirs() <= dirs


def test_pool_children_share_nothing() -> None:
    with SandboxPool(1, limits=FAST, policy=None) as pool:
        first = pool.run("import os\nopen('mark', 'w').write('1')\nanswer = os.getcwd()\n")
        second = pool.run("import os\nanswer = str(os.path.exists('mark')) + ' ' + os.getcwd()\n")
    assert first.ok and second.ok
    exists, cwd = second.value.split(" ")
    assert exists == "False" and cwd != first.value


def test_pool_replaces_a_dead_idle_child_and_reports_policy_errors() -> None:
    with SandboxPool(1, limits=FAST) as pool:
        for child in list(pool._idle):
            child.proc.kill()
            child.proc.wait()
        assert pool.run("answer = 3").value == 3
        assert pool.run("import os").error == "policy"


def test_pool_survives_hostile_neighbours() -> None:
    programs = ["while True:\n    pass\n", "answer = 1", "x = [0] * 10 ** 10\n", "answer = 2"]
    with SandboxPool(2, limits=Limits(cpu_s=1, wall_s=6.0)) as pool:
        results = pool.map(programs)
    assert [r.error for r in results] == ["cpu_limit", None, "memory_limit", None] or results[0].error == "timeout"
    assert [results[1].value, results[3].value] == [1, 2]


def test_pool_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="pool size"):
        SandboxPool(0)
