"""The policy layer (policy.py, and world.py's run-time guards): what `check_program` rejects, how a rejection
reads, that a rejected program never reaches a process, and the pieces issue 14 added (the world's imports,
the guarded `type` and formatter, deep programs)."""

from __future__ import annotations

import ast
import datetime
import functools
import marshal
import operator
import string
import sys
import threading
from pathlib import Path

import pytest

from lmstack.augment.sandbox import DEFAULT_POLICY, Limits, Policy, check_program, child, host, run_program, world
from lmstack.augment.sandbox.policy import READABLE_DUNDERS, compile_program, world_code

FAST = Limits(cpu_s=1, wall_s=5.0)


def test_policy_errors_name_the_line_and_rule() -> None:
    errors = check_program("x = 1\nimport os\n")
    assert len(errors) == 1 and errors[0].startswith("Line 2:") and '"os"' in errors[0]
    result = run_program("x = 1\nimport os\n")
    assert result.error == "policy" and "Line 2" in result.message
    assert result.wall_s < 1.0  # rejected in the host, no process started


def test_syntax_errors_are_policy_results() -> None:
    result = run_program("def solution(:\n    return 1\n")
    assert not result.ok and result.error == "policy" and "SyntaxError" in result.message


def test_non_string_program_is_a_structured_error() -> None:
    result = run_program(b"answer = 1")  # type: ignore[arg-type]
    assert not result.ok and result.error == "policy"


def test_custom_policy_can_widen_modules_and_limit_size() -> None:
    program = "import json\nanswer = json.dumps([1, 2])\n"
    assert check_program(program) != []
    wide = Policy(modules=DEFAULT_POLICY.modules | {"json"})
    assert check_program(program, wide) == []
    result = run_program(program, policy=wide, limits=FAST)
    assert result.ok and result.value == "[1, 2]"
    assert "limit is 10" in check_program("answer = 12345\n", Policy(max_chars=10))[0]


# --- the world the child builds (world.py), in-process from a real set-up message


def setup_message() -> dict:
    return marshal.loads(host._setup(True, FAST, DEFAULT_POLICY, True, 99)[8:])


def run_here(source: str) -> dict:
    """`source` checked by the policy and run in this process's copy of the world; its globals."""
    code, errors = compile_program(source, DEFAULT_POLICY)
    assert errors == []
    g = child.restricted_globals(setup_message())
    exec(code, g)
    return g


def test_world_py_is_standard_library_only_and_reads_only_setup_keys() -> None:
    tree = ast.parse(Path(world.__file__).read_text(encoding="utf-8"))
    imported = {a.name.partition(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    read = {
        n.slice.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id == "req"
    }
    assert read and read <= set(setup_message())


def test_the_host_sends_the_world_compiled() -> None:
    req = setup_message()
    assert req["world_code"] == world_code()
    assert child.restricted_globals(req)["__name__"] == "__main__"


def test_imports_from_c_code_get_the_real_importer_and_nothing_back() -> None:
    imp = child.restricted_globals(setup_message())["__builtins__"]["__import__"]
    assert imp("os", None, None, [], 0) is None  # PyImport_Import's call: a list fromlist, nothing handed back
    view = imp("math", None, None, None, 0)  # `import math`
    assert view is imp("math", None, None, ("pi",), 0) and view.pi == 3.141592653589793
    for name in ("os", "time", "_strptime"):
        with pytest.raises(ImportError):
            imp(name, None, None, None, 0)


def test_views_hide_evaluators_and_guard_name_taking_functions() -> None:
    imp = child.restricted_globals(setup_message())["__builtins__"]["__import__"]
    typing_view, dataclasses_view = imp("typing"), imp("dataclasses")
    assert not {"get_type_hints", "ForwardRef", "get_origin", "get_args"} & set(vars(typing_view))
    assert not hasattr(dataclasses_view, "make_dataclass")
    assert imp("operator").attrgetter is not operator.attrgetter
    assert imp("functools").wraps is not functools.wraps and imp("functools").reduce is functools.reduce
    assert imp("string").Formatter is not string.Formatter and string.Formatter not in imp("string").Formatter.__mro__


def test_annotations_are_objects_not_strings() -> None:
    """RestrictedPython's compile() would inherit `from __future__ import annotations` from its own module."""
    g = run_here("def f(x: int) -> list:\n    return [x]\nanswer = f\n")
    assert g["answer"].__annotations__ == {"x": int, "return": list}


def test_type_has_one_argument_and_never_hands_out_a_metaclass() -> None:
    g = run_here(
        "a = type(3) is int\nb = type(int)\nc = (1).__class__.__class__\nd = isinstance(int, type)\n"
        "e = isinstance(3, type)\nf = type(type)\n"
    )
    safe = g["__builtins__"]["type"]
    assert g["a"] and g["b"] is safe and g["c"] is safe and g["f"] is safe and g["d"] and not g["e"]
    assert safe.__name__ == "type"
    with pytest.raises(TypeError, match="one argument"):
        safe("X", (), {})


@pytest.mark.parametrize(
    "fmt, args, kwargs",
    [
        ("{} and {}", (1, "b"), {}),
        ("{0}{1}{0}", ("a", "b"), {}),
        ("{name:>8}|{n:08.3f}|{n:+.1e}|{k:,}|{k:_x}", (), {"name": "ab", "n": 3.14159, "k": 1234567}),
        ("{0[1]}{0[2][0]}{d[key]}", ([1, 2, [3]],), {"d": {"key": "v"}}),
        ("{0.real}{0.imag}", (3 + 4j,), {}),
        ("{!r}{!s}{!a}", ("x", "y", "\u00e9"), {}),
        ("{:{w}.{p}f}", (2.71828,), {"w": 9, "p": 2}),
        ("{{literal}} {}", (5,), {}),
        ("{:%Y-%m-%d}", (datetime.date(2024, 3, 5),), {}),
        ("{0:^{1}}", ("mid", 9), {}),
    ],
)
def test_the_safe_format_matches_str_format(fmt: str, args: tuple, kwargs: dict) -> None:
    g = child.restricted_globals(setup_message())
    bound = g["_getattr_"](fmt, "format")
    assert bound(*args, **kwargs) == fmt.format(*args, **kwargs)
    assert g["_getattr_"](str, "format")(fmt, *args, **kwargs) == fmt.format(*args, **kwargs)


@pytest.mark.parametrize("fmt", ["{", "}", "{0!x}", "{}{0}", "{0}{}", "{:{:{:{}}}}"])
def test_the_safe_format_fails_where_str_format_fails(fmt: str) -> None:
    bound = child.restricted_globals(setup_message())["_getattr_"](fmt, "format")
    with pytest.raises((ValueError, IndexError)):
        fmt.format(1, 2, 3, 4)
    with pytest.raises((ValueError, IndexError)):
        bound(1, 2, 3, 4)


def test_the_readable_dunders_leave_out_the_introspection_ones() -> None:
    hidden = {"__dict__", "__globals__", "__builtins__", "__bases__", "__base__", "__mro__", "__subclasses__"}
    hidden |= {"__code__", "__closure__", "__func__", "__self__", "__wrapped__", "__getattribute__", "__getattr__"}
    hidden |= {"__setattr__", "__init_subclass__", "__set_name__", "__class_getitem__", "__reduce_ex__", "__new__"}
    hidden |= {"__annotations__", "__loader__", "__spec__", "__import__", "__del__"}
    assert not hidden & READABLE_DUNDERS


@pytest.mark.parametrize("terms", [1000, 2500])
def test_deep_programs_check_on_a_deep_stack_and_restore_the_limits(terms: int) -> None:
    limit, stack = sys.getrecursionlimit(), threading.stack_size()
    source = "def solution():\n    a = 1\n    return " + " + ".join(["a"] * terms) + "\n"
    assert check_program(source) == []
    assert (sys.getrecursionlimit(), threading.stack_size()) == (limit, stack)
    result = run_program(source, limits=FAST)
    assert result.ok and result.value == terms


def test_deep_checks_from_several_threads_at_once() -> None:
    sources = ["answer = " + " + ".join([str(i)] * 1500) + "\n" for i in range(4)]
    found: list[list[str]] = []
    threads = [threading.Thread(target=lambda s=s: found.append(check_program(s))) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == [[]] * 4


def test_too_deep_programs_are_clean_policy_errors() -> None:
    errors = check_program("answer = " + "+".join(["1"] * 4000) + "\n")
    assert len(errors) == 1 and "RecursionError" in errors[0]
