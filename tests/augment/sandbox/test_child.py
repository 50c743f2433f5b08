"""The child program (child.py): it is a self-contained standard-library script run by path in isolation,
it reads exactly what the host's set-up message holds, and its pieces (result encoding, the program's
restricted world, line reporting) behave as the sandbox relies on. The pieces that lock a process down are
never called here: they would lock down the test process; the end-to-end runs and test_attacks.py cover
them."""

from __future__ import annotations

import ast
import collections
import json
import marshal
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from lmstack.augment.sandbox import DEFAULT_POLICY, Limits, child, host, run_program
from lmstack.augment.sandbox.policy import compile_program

FAST = Limits(cpu_s=1, wall_s=5.0)


def setup_message() -> dict:
    """The set-up message the host would send a policy-checked child, decoded as the child decodes it."""
    frame = host._setup(True, FAST, DEFAULT_POLICY, True, 99)
    assert int.from_bytes(frame[:8], "little") == len(frame) - 8
    return marshal.loads(frame[8:])


def test_the_child_is_the_file_next_to_the_host_and_imports_only_the_standard_library() -> None:
    assert host.CHILD_PATH.is_absolute() and host.CHILD_PATH == Path(child.__file__).resolve()
    imported = set()
    for node in ast.walk(ast.parse(host.CHILD_PATH.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module
            imported.add(node.module.partition(".")[0])
    assert imported and imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names


def test_the_child_runs_by_path_isolated_from_the_hosts_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the host's cwd plays no part in finding or running the child
    program = "import json, sys\nanswer = json.dumps([sys.flags.isolated, sys.flags.no_site, sys.argv[0], sys.path])\n"
    result = run_program(program, policy=None, kernel=False, limits=FAST)
    assert result.ok, (result.error, result.message, result.stderr)
    isolated, no_site, argv0, path = json.loads(result.value)
    assert isolated == 1 and no_site == 1
    assert argv0 == str(host.CHILD_PATH)
    assert str(host.CHILD_PATH.parent) not in path  # the package's files are not importable by the program


def test_the_setup_message_has_every_key_the_child_reads() -> None:
    read = set()
    for path in (host.CHILD_PATH, host.CHILD_PATH.with_name("jail.py")):  # the child runs jail.py's code too
        read |= {
            node.slice.value
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "req"
            and isinstance(node.slice, ast.Constant)
        }
    assert {"result_fd", "jail_code", "seccomp"} <= read and read <= set(setup_message())


@pytest.mark.parametrize(
    "value, text",
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (-7, "-7"),
        (2.5, "2.5"),
        ('say "h\u00e9"', '"say \\"h\\u00e9\\""'),
        (Fraction(7, 2), "3.5"),
        (Decimal("0.1"), "0.1"),
    ],
    ids=["none", "true", "false", "int", "float", "str", "fraction", "decimal"],
)
def test_results_encode_as_json_scalars(value: object, text: str) -> None:
    assert child.encode_value(value) == text
    assert json.loads(text) == (float(value) if isinstance(value, Fraction | Decimal) else value)


class Hostile:
    """A result whose every hook fails the test if the encoder calls it."""

    def __eq__(self, other: object) -> bool:
        raise AssertionError("__eq__ called")

    def __hash__(self) -> int:
        raise AssertionError("__hash__ called")

    def __repr__(self) -> str:
        raise AssertionError("__repr__ called")

    def __float__(self) -> float:
        raise AssertionError("__float__ called")


class Text(str):
    pass


class Number(int):
    pass


@pytest.mark.parametrize(
    "value, error",
    [
        (float("nan"), ValueError),
        (float("-inf"), ValueError),
        (Hostile(), TypeError),
        (Text("1"), TypeError),
        (Number(1), TypeError),
        ([1, 2], TypeError),
    ],
    ids=["nan", "inf", "hostile", "str_subclass", "int_subclass", "list"],
)
def test_other_results_are_refused_without_calling_their_methods(value: object, error: type) -> None:
    with pytest.raises(error):
        child.encode_value(value)


def test_non_scalar_results_are_rejected_with_a_hint() -> None:
    result = run_program("def solution():\n    return [1, 2]\n", limits=FAST)
    assert not result.ok and result.error == "bad_result" and "list" in result.message


def test_fraction_and_decimal_results_become_floats() -> None:
    result = run_program("from fractions import Fraction\nanswer = Fraction(7, 2)\n", limits=FAST)
    assert result.ok and result.value == 3.5 and type(result.value) is float


def test_program_line_is_the_programs_not_the_childs() -> None:
    code = compile("x = 1\n\nraise ValueError('boom')\n", "<program>", "exec")
    with pytest.raises(ValueError) as info:
        exec(code, {})
    assert child.program_line(info.value) == 3
    assert child.program_line(ValueError("never raised")) is None


# --- the program's world under the policy (built in-process from a real set-up message)


def test_imports_are_read_only_views_of_allowed_modules() -> None:
    world = child.restricted_globals(setup_message())
    imp = world["__builtins__"]["__import__"]
    view = imp("collections")
    assert view.Counter is collections.Counter and imp("collections") is view
    assert not hasattr(view, "abc")  # submodules are not reachable
    assert not [name for name in vars(view) if name.startswith("_")]
    for refused in (lambda: imp("os"), lambda: imp("collections.abc"), lambda: imp("math", level=1)):
        with pytest.raises(ImportError):
            refused()
    with pytest.raises(TypeError, match="imported modules"):
        world["_write_"](view)


def test_guards_refuse_hidden_attributes_and_foreign_classes() -> None:
    world = child.restricted_globals(setup_message())
    getattr_, write = world["_getattr_"], world["_write_"]
    assert getattr_(3, "real") == 3 and getattr_(3, "missing", "default") == "default"
    assert getattr_(3, "__class__") is int  # `x.__class__` is type(x) (issue 14)
    for name in ("__globals__", "__dict__", "_private", "format", "mro", "gi_frame", "f_globals", 3):
        with pytest.raises(AttributeError):
            getattr_(3, name)
    with pytest.raises(TypeError, match="classes"):
        write(int)
    own = world["__metaclass__"]("Own", (), {})
    assert write(own) is own and write([1]) == [1]


def test_only_the_allowed_builtins_exist() -> None:
    safe = child.restricted_globals(setup_message())["__builtins__"]
    assert safe["len"] is len and safe["__build_class__"] is not None
    assert not {"open", "eval", "exec", "vars", "globals", "setattr", "input"} & set(safe)
    assert safe["getattr"] is not getattr and safe["type"] is not type  # the guarded ones (issue 14)


def test_the_world_runs_a_policy_checked_program(capsys: pytest.CaptureFixture[str]) -> None:
    source = (
        "from collections import Counter\n"
        "class Box:\n    n = 1\n"
        "box = Box()\nbox.n += 2\n"
        "x, (y, z) = 1, (2, 3)\n"
        "counts = {}\ncounts['k'] = 1\ncounts['k'] += 1\n"
        "print('seen', len(counts), sep='=')\n"
        "answer = [box.n, x + y + z, counts['k'], sum(v for v in [1, 2]), Counter('aab')['a']]\n"
    )
    code, errors = compile_program(source, DEFAULT_POLICY)
    assert errors == []
    world = child.restricted_globals(setup_message())
    exec(code, world)
    assert world["answer"] == [3, 6, 2, 3, 2]
    assert capsys.readouterr().out == "seen=1\n"
