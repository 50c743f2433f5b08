"""Routes around the policy layer found by a red-team pass (issue 14), each written fresh: library functions
that take attribute names as strings (functools.update_wrapper/wraps, operator.attrgetter/methodcaller,
format strings), code that evaluates strings outside RestrictedPython (typing.get_type_hints via
functools.singledispatch, dataclasses' generated code), and ways to create classes from a dict of any names
(a metaclass). Each must be refused by the policy: at check time where the program spells the name, else by
the child's guards at run time. As in test_attacks.py, every run must also leave the host unchanged and keep
the planted secret out of every output; the main routes run a second time without the policy, where the
route does work, to show that the process and kernel layers contain what it reaches."""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmstack.augment.sandbox import Limits, SandboxResult, available_layers, run_program
from testutil import live_children, sandbox_dirs

LIMITS = Limits(cpu_s=2, wall_s=10.0, memory_mb=192)
SECRET = f"lmstack-bypass-secret-{uuid.uuid4().hex}"
MARKER = uuid.uuid4().hex[:12]

#: Given an expression for the `os` module's globals (what every route below tries to reach), the payload:
#: write a marker file into the test's canary directory, then read the host's environment.
WALK = "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0].__init__.__globals__"


def payload_via(module: str) -> str:
    """The same payload through attributes of an `os` module object."""
    m = module
    return (
        f"[{m}.close({m}.open('{{CANARY}}/pwned-{MARKER}', 65)), "
        f"{m}.read({m}.open('/proc/' + str({m}.getppid()) + '/environ', 0), 100000)]"
    )


def payload(g: str) -> str:
    return (
        f"[{g}['close']({g}['open']('{{CANARY}}/pwned-{MARKER}', 65)), "
        f"{g}['read']({g}['open']('/proc/' + str({g}['getppid']()) + '/environ', 0), 100000)]"
    )


@dataclass(frozen=True)
class Bypass:
    """`policy`: the outcome with the policy on ("policy" at check time, "exception" from a run-time guard)
    and a fragment of its message. `raw`: the acceptable outcomes without the policy (None: not run raw)."""

    name: str
    code: str
    policy: str
    says: str
    raw: tuple[str, ...] | None = None


PY = "policy"
EX = "exception"
GUARD = "not allowed"

BYPASSES = [
    # --- functools.update_wrapper / wraps merging a library module's globals or builtins into the program
    Bypass(
        "update_wrapper_globals_literal",
        "import functools, statistics\ndef f():\n    pass\n"
        "functools.update_wrapper(f, statistics.mean, assigned=(), updated=('__globals__',))\n"
        "answer = str(sys.modules['os'].getppid())\n",
        PY,
        '"__globals__" names a hidden attribute',
    ),
    Bypass(
        "update_wrapper_globals_built",
        "import functools, statistics\ndef f():\n    pass\n"
        "functools.update_wrapper(f, statistics.mean, assigned=(), updated=('__glo' + 'bals__',))\n"
        "os = sys.modules['os']\nanswer = " + payload_via("os") + "\n",
        EX,
        "copy only the standard attributes",
        raw=(EX,),
    ),
    Bypass(
        "wraps_builtins_built",
        "import functools, statistics\n"
        "@functools.wraps(statistics.mean, assigned=(), updated=('__built' + 'ins__',))\ndef f():\n    pass\n"
        "answer = str(f)\n",
        EX,
        "copy only the standard attributes",
    ),
    Bypass(
        "wraps_assigned_code_built",
        "import functools, statistics\n"
        "@functools.wraps(statistics.mean, assigned=('__co' + 'de__',))\ndef f():\n    pass\nanswer = str(f)\n",
        EX,
        "copy only the standard attributes",
    ),
    Bypass(
        "update_wrapper_str_subclass_spoof",
        "import functools, statistics\n"
        "class Name(str):\n    def __eq__(self, other):\n        return True\n"
        "    def __hash__(self):\n        return hash('__di' + 'ct__')\n"
        "def f():\n    pass\n"
        "functools.update_wrapper(f, statistics.mean, assigned=(), updated=(Name('__glo' + 'bals__'),))\n"
        "answer = str(sys)\n",
        EX,
        "copy only the standard attributes",
    ),
    Bypass(
        "update_wrapper_onto_a_library_class",
        "import functools, fractions\ndef f():\n    pass\nfunctools.update_wrapper(fractions.Fraction, f)\n",
        EX,
        "wrap functions",
    ),
    Bypass(
        "update_wrapper_onto_a_library_object",
        "import functools, fractions\ndef f():\n    pass\nfunctools.update_wrapper(fractions.Fraction(1, 2), f)\n",
        EX,
        "cannot modify Fraction objects",
    ),
    Bypass(
        "partial_getattr_built",
        "import functools, statistics\nget = functools.partial(getattr, statistics.mean)\n"
        "answer = str(get('__glo' + 'bals__')['sys'])\n",
        EX,
        GUARD,
    ),
    # --- string annotations evaluated by typing.get_type_hints (functools.singledispatch's register)
    Bypass(
        "singledispatch_string_annotation_literal",
        f"import functools\n@functools.singledispatch\ndef f(x):\n    return 0\ndef g(x: {WALK!r}):\n    return 1\n"
        "f.register(g)\nanswer = 1\n",
        PY,
        "may only name a type",
    ),
    Bypass(  # a type-like string passes the check, but evaluating any forward reference is refused
        "singledispatch_plain_string_annotation",
        "import functools\n@functools.singledispatch\ndef f(x):\n    return 0\n"
        "@f.register\ndef _(x: 'int'):\n    return 1\nanswer = f(3)\n",
        EX,
        "forward references",
    ),
    Bypass(
        "singledispatch_annotation_from_a_variable",
        f"import functools\nT = {payload(WALK)!r}\n"
        "@functools.singledispatch\ndef f(x):\n    return 0\ndef g(x: T):\n    return 1\nf.register(g)\nanswer = 1\n",
        EX,
        "forward references",
        raw=(EX,),
    ),
    Bypass(
        "singledispatch_forward_ref_inside_a_generic",
        f"import functools, typing\nT = typing.List[{payload(WALK)!r}]\n"
        "@functools.singledispatch\ndef f(x):\n    return 0\ndef g(x: T):\n    return 1\nf.register(g)\nanswer = 1\n",
        EX,
        "forward references",
    ),
    Bypass(
        "singledispatchmethod_annotation_from_a_variable",
        f"import functools\nT = {payload(WALK)!r}\n"
        "class A:\n    @functools.singledispatchmethod\n    def f(self, x):\n        return 0\n"
        "    @f.register\n    def _(self, x: T):\n        return 1\nanswer = A().f(1)\n",
        EX,
        "forward references",
        raw=(EX,),
    ),
    Bypass("future_annotations", "from __future__ import annotations\nanswer = 1\n", PY, "__future__"),
    Bypass("typing_get_type_hints_hidden", "import typing\nanswer = str(typing.get_type_hints)\n", EX, "no attribute"),
    Bypass("typing_forward_ref_hidden", "from typing import ForwardRef\nanswer = 1\n", EX, "cannot import name"),
    Bypass("typing_get_origin_hidden", "import typing\nanswer = str(typing.get_origin(typing.Type[int]))\n", EX, "no"),
    # --- operator: names as strings, checked at call time with the attribute rules
    Bypass(
        "attrgetter_dotted_walk",
        "import operator\nanswer = str(operator.attrgetter('__class__.__base__.__subclasses__')(())())\n",
        EX,
        GUARD,
    ),
    Bypass(
        "attrgetter_globals_built",
        "import operator, statistics\n"
        "os = operator.attrgetter('__glo' + 'bals__')(statistics.mean)['sys'].modules['os']\n"
        "answer = " + payload_via("os") + "\n",
        EX,
        GUARD,
        raw=(EX,),
    ),
    Bypass(
        "methodcaller_reduce_built",
        "import operator\nclass A:\n    pass\nanswer = str(operator.methodcaller('__reduce' + '_ex__', 2)(A()))\n",
        EX,
        GUARD,
    ),
    Bypass(
        "methodcaller_format_reads_attributes",
        "import operator\nanswer = operator.methodcaller('format', 1)('{0.__class__.__base__}')\n",
        EX,
        "format field attribute",
    ),
    # --- format strings read attributes named inside the (data) string
    Bypass(
        "format_globals", "import statistics\nanswer = '{0.__globals__}'.format(statistics.mean)\n", EX, "format field"
    ),
    Bypass("format_unbound", "f = str.format\nanswer = f('{0.__class__.__base__}', 1)\n", EX, "format field"),
    Bypass("format_map_walk", "answer = '{x.__init__.__globals__}'.format_map({'x': 1})\n", EX, "format field"),
    Bypass(
        "string_formatter_walk",
        "import string\nanswer = string.Formatter().format('{0.__init__.__globals__}', 1)\n",
        EX,
        "format field",
    ),
    Bypass(
        "string_formatter_base_via_super",
        "import string\nclass F(string.Formatter):\n    pass\n"
        "answer = str(super(string.Formatter, F()).get_field('0.__class__', [1], {}))\n",
        EX,
        "get_field",
    ),
    Bypass(
        "userstring_format",
        "import collections\nanswer = collections.UserString('{0.__class__.__base__}').format(1)\n",
        EX,
        "format field",
    ),
    Bypass(
        "str_subclass_format_via_super",
        "class S(str):\n    pass\nanswer = super(S, S('{0.__class__}')).format(1)\n",
        EX,
        GUARD,
    ),
    # --- classes from a dict of any names: 3-argument type and metaclasses
    Bypass("type_three_args_literal", "answer = str(type('X', (), {'a': 1}))\n", PY, "one argument"),
    Bypass("type_three_args_alias", "t = type\nanswer = str(t('X', (), {'a': 1}))\n", EX, "one argument"),
    Bypass("type_of_a_class", "answer = str(type(type(1))('X', (), {}))\n", EX, "one argument"),
    Bypass("class_of_a_class", "answer = str((1).__class__.__class__('X', (), {}))\n", EX, "one argument"),
    Bypass(
        "metaclass_via_typing_type", "import typing\nclass M(typing.Type):\n    pass\nanswer = 1\n", EX, "metaclass"
    ),
    Bypass("metaclass_keyword", "class A(metaclass=type):\n    pass\n", PY, "metaclass"),
    # --- dataclasses build __init__ from field names with exec
    Bypass(
        "dataclass_field_subclass_name",
        "import dataclasses\nclass Evil(type(dataclasses.field())):\n    @property\n    def name(self):\n"
        f"        return 'x,(' + {payload(WALK)!r} + ')'\n    @name.setter\n    def name(self, value):\n"
        "        pass\n@dataclasses.dataclass(init=False, repr=False, frozen=True)\nclass P:\n"
        "    x: int = Evil(dataclasses.MISSING, dataclasses.MISSING, True, True, None, True, None, False)\n"
        "answer = hash(P())\n",  # the generated __hash__ is `hash((self.<name>,))`
        EX,
        "field() objects",
        raw=(EX,),
    ),
    Bypass(
        "dataclass_field_name_tampered",
        "import dataclasses\n@dataclasses.dataclass\nclass Base:\n    x: int\n"
        "dataclasses.fields(Base)[0].name = 'x=1'\nanswer = 1\n",
        EX,
        "cannot modify Field objects",
    ),
    Bypass(
        "dataclass_annotations_copied_from_a_typeddict",
        f"import dataclasses, functools, typing\nTD = typing.TypedDict('TD', {{'x=' + {payload(WALK)!r}: int}})\n"
        "class P:\n    pass\nfunctools.update_wrapper(P, TD)\ndataclasses.dataclass(P)\nanswer = 1\n",
        EX,
        "wrap functions",
    ),
    Bypass(
        "dataclass_annotations_inherited_from_a_typeddict",
        f"import dataclasses, typing\nTD = typing.TypedDict('TD', {{'x=' + {payload(WALK)!r}: int}})\n"
        "class P(TD):\n    pass\ndataclasses.dataclass(P)\nanswer = 1\n",
        EX,
        "identifiers",
    ),
    Bypass(
        "dataclass_on_a_library_class",
        "import dataclasses, fractions\ndataclasses.dataclass(fractions.Fraction)\n",
        EX,
        "own classes only",
    ),
    Bypass("make_dataclass_hidden", "import dataclasses\nanswer = str(dataclasses.make_dataclass)\n", EX, "no attr"),
    # --- getattr / hasattr / private attributes / dunders
    Bypass(
        "getattr_literal_dunder", "def f():\n    pass\nanswer = str(getattr(f, '__globals__'))\n", PY, "__globals__"
    ),
    Bypass("getattr_built_dunder", "def f():\n    pass\nanswer = str(getattr(f, '__glo' + 'bals__'))\n", EX, GUARD),
    Bypass(
        "getattr_built_default_and_hasattr",
        "def f():\n    pass\nname = '__glo' + 'bals__'\n"
        "answer = str(getattr(f, name, None)) + str(hasattr(f, name))\nassert answer == 'NoneFalse'\n"
        "answer = getattr(f, name)\n",
        EX,
        GUARD,
    ),
    Bypass("library_private_read", "import fractions\nanswer = fractions.Fraction(1, 2)._numerator\n", EX, GUARD),
    Bypass(
        "library_private_write",
        "import fractions\nf = fractions.Fraction(1, 2)\nf._numerator = 5\n",
        EX,
        "cannot set private attributes",
    ),
    Bypass(
        "inherited_library_private",
        "import random\nclass R(random.Random):\n    pass\nanswer = R(1)._randbelow(10)\n",
        EX,
        GUARD,
    ),
    Bypass("module_private", "import random\nanswer = str(random._inst)\n", EX, GUARD),
    Bypass("dunder_write", "class A:\n    pass\na = A()\na.__class__ = int\n", PY, "cannot be assigned"),
    Bypass("class_body_annotations", "class A:\n    __annotations__ = {'x=1': int}\n", PY, "__annotations__"),
    Bypass(
        "hook_dunder_definition",
        "class A:\n    def __getattr__(self, name):\n        return {}\n",
        PY,
        "__getattr__",
    ),
    Bypass("init_subclass_definition", "class A:\n    def __init_subclass__(cls):\n        pass\n", PY, "__init_sub"),
    Bypass("name_store", "__name__ = 'os'\n", PY, "__name__"),
    Bypass(
        "match_private_keyword",
        "class P:\n    pass\nmatch P():\n    case P(_x=1):\n        pass\n",
        PY,
        "not allowed in a pattern",
    ),
    Bypass("match_dunder_value", "match 1:\n    case int.__class__:\n        pass\n", PY, "not allowed"),
    Bypass(
        "module_view_submodule",
        "import collections, operator\nanswer = operator.attrgetter('abc')(collections)\n",
        EX,
        "abc",
    ),
    Bypass("copy_of_a_module_view", "import copy, math\nm = copy.copy(math)\nm.pi = 3\n", EX, "cannot modify"),
    # --- the C-level import route stays C's: programs still cannot import what C code imports
    Bypass("import_time", "import time\nanswer = time.time()\n", PY, '"time"'),
    Bypass("import_strptime", "import _strptime\n", PY, "_strptime"),
    Bypass("import_copyreg", "import copyreg\n", PY, "copyreg"),
    # --- parser bombs stay clean policy errors after the deep-stack retry
    Bypass("deep_sum", "answer = " + "+".join(["1"] * 4000) + "\n", PY, "Recursion"),
]


# --------------------------------------------------------------------------------------------------------
# Host-state checks, as in test_attacks.py


@pytest.fixture(scope="module", autouse=True)
def planted_secret() -> Iterator[str]:
    old = os.environ.get("LMSTACK_BYPASS_SECRET")
    os.environ["LMSTACK_BYPASS_SECRET"] = SECRET
    yield SECRET
    if old is None:
        os.environ.pop("LMSTACK_BYPASS_SECRET", None)
    else:
        os.environ["LMSTACK_BYPASS_SECRET"] = old


@pytest.fixture(scope="module", autouse=True)
def private_tempdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The runs' working directories go to a directory of this module's own, so that the leftover check
    sees only them (other test processes on the machine make sandbox directories in /tmp too)."""
    old, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("bypass-tmp"))
    yield Path(tempfile.tempdir)
    tempfile.tempdir = old


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bypass-canary")
    (root / "keep.txt").write_text("keep\n")
    return root


def _snapshot(canary: Path) -> dict:
    return {
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "canary": sorted((p.name, p.read_bytes()) for p in canary.iterdir()),
        "dirs": sandbox_dirs(),
        "children": live_children(),
    }


def _run(bypass: Bypass, canary: Path, policy_on: bool) -> SandboxResult:
    code = bypass.code.replace("{CANARY}", str(canary))
    before = _snapshot(canary)
    start = time.monotonic()
    result = run_program(code, limits=LIMITS) if policy_on else run_program(code, limits=LIMITS, policy=None)
    assert time.monotonic() - start < LIMITS.wall_s + 2.5
    blob = f"{result.stdout}{result.stderr}{result.message}{result.value}"
    assert SECRET not in blob
    after = _snapshot(canary)
    assert after["canary"] == before["canary"], "a write reached the canary directory"
    assert after["env"] == before["env"] and after["cwd"] == before["cwd"]
    assert after["dirs"] <= before["dirs"] and after["children"] <= before["children"]
    assert after["threads"] == before["threads"] and after["fds"] == before["fds"]
    return result


def test_the_suite_covers_every_route_and_names_are_unique() -> None:
    names = [b.name for b in BYPASSES]
    assert len(names) == len(set(names)) and len(names) >= 40
    assert sum(b.raw is not None for b in BYPASSES) >= 5


@pytest.mark.parametrize("bypass", BYPASSES, ids=lambda b: b.name)
def test_refused_by_the_policy(bypass: Bypass, canary: Path) -> None:
    result = _run(bypass, canary, policy_on=True)
    outcome = "ok" if result.ok else result.error
    assert outcome == bypass.policy, (outcome, result.message, result.stderr[-500:])
    assert bypass.says in result.message, result.message
    if bypass.policy == PY:
        assert result.wall_s < 1.0  # refused in the host, no process started


@pytest.mark.parametrize("bypass", [b for b in BYPASSES if b.raw is not None], ids=lambda b: b.name)
def test_without_the_policy_the_lower_layers_contain_it(bypass: Bypass, canary: Path) -> None:
    """The route works in plain Python, so the payload runs; Landlock stops its write and its read."""
    if not any(layer.startswith("landlock") for layer in available_layers()):
        pytest.skip("needs Landlock")
    result = _run(bypass, canary, policy_on=False)
    outcome = "ok" if result.ok else result.error
    assert outcome in bypass.raw, (outcome, result.message)
    # the error is the payload's own: the route worked, and the write or the read was stopped
    assert f"pwned-{MARKER}" in result.message or "environ" in result.message, result.message
