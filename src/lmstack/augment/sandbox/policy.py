"""Layer 1 of the sandbox: the policy check in the host, before any process starts.

RestrictedPython's transformer rejects `_`-prefixed names and attributes, frame/code/generator introspection
attributes, exec/eval calls and async code, and routes every attribute read, item write, iteration and
unpacking through guard functions (the child provides them). On top of it an allow-list: a fixed set of
builtins, imports only of pure math/date modules, no `.format`/`.mro` attributes, a size cap. The child
enforces the same lists again at run time (it receives them in its set-up message).
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass
from functools import lru_cache

from RestrictedPython import compile_restricted_exec
from RestrictedPython.transformer import RestrictingNodeTransformer

#: Modules a program may import: pure computation, no I/O, no introspection.
DEFAULT_MODULES = frozenset(
    {
        "math",
        "cmath",
        "fractions",
        "decimal",
        "datetime",
        "calendar",
        "statistics",
        "itertools",
        "functools",
        "collections",
        "heapq",
        "bisect",
        "random",
        "re",
    }
)

#: Builtins a program may use. Everything else in `builtins` (open, exec, getattr, type, vars, input, ...)
#: is rejected by the policy and absent at run time.
SAFE_BUILTINS = frozenset(
    {
        "abs",
        "all",
        "any",
        "ascii",
        "bin",
        "bool",
        "bytes",
        "callable",
        "chr",
        "classmethod",
        "complex",
        "dict",
        "divmod",
        "enumerate",
        "filter",
        "float",
        "format",
        "frozenset",
        "hash",
        "hex",
        "id",
        "int",
        "isinstance",
        "issubclass",
        "iter",
        "len",
        "list",
        "map",
        "max",
        "min",
        "next",
        "object",
        "oct",
        "ord",
        "pow",
        "print",
        "property",
        "range",
        "repr",
        "reversed",
        "round",
        "set",
        "slice",
        "sorted",
        "staticmethod",
        "str",
        "sum",
        "super",
        "tuple",
        "zip",
        "True",
        "False",
        "None",
        "Ellipsis",
        "NotImplemented",
        "ArithmeticError",
        "AssertionError",
        "AttributeError",
        "Exception",
        "IndexError",
        "KeyError",
        "LookupError",
        "NameError",
        "NotImplementedError",
        "OverflowError",
        "RecursionError",
        "RuntimeError",
        "StopIteration",
        "TypeError",
        "UnboundLocalError",
        "ValueError",
        "ZeroDivisionError",
    }
)

#: Attribute names rejected on top of RestrictedPython's rules: str.format/format_map read attributes named
#: inside the format string at run time; mro() reaches `object`.
DENIED_ATTRIBUTES = frozenset({"format", "format_map", "mro"})
#: Attribute prefixes of frames, tracebacks, code, generators, coroutines and async generators.
DENIED_ATTRIBUTE_PREFIXES = ("f_", "tb_", "co_", "gi_", "cr_", "ag_")


@dataclass(frozen=True)
class Policy:
    """What a program may name and import. `max_chars` bounds the host-side parse."""

    modules: frozenset[str] = DEFAULT_MODULES
    builtins: frozenset[str] = SAFE_BUILTINS
    max_chars: int = 20_000


DEFAULT_POLICY = Policy()


class _PolicyTransformer(RestrictingNodeTransformer):
    """RestrictedPython's checks plus lmstack's allow-list. Subclassed per Policy (see `_transformer`)."""

    policy: Policy = DEFAULT_POLICY

    def _check_module(self, node: ast.AST, name: str | None, level: int = 0) -> None:
        if level or name not in self.policy.modules:
            allowed = ", ".join(sorted(self.policy.modules))
            self.error(node, f'import of "{"." * level}{name or ""}" is not allowed (allowed: {allowed})')

    def visit_Import(self, node: ast.Import) -> ast.AST:
        for alias in node.names:
            self._check_module(node, alias.name)
        return super().visit_Import(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        self._check_module(node, node.module, node.level)
        return super().visit_ImportFrom(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _denied_builtins(self.policy.builtins):
            self.error(node, f'name "{node.id}" is not available in sandboxed programs')
        return super().visit_Name(node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if node.attr in DENIED_ATTRIBUTES or node.attr.startswith(DENIED_ATTRIBUTE_PREFIXES):
            hint = " (use an f-string instead)" if node.attr.startswith("format") else ""
            self.error(node, f'attribute "{node.attr}" is not allowed{hint}')
        return super().visit_Attribute(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        # RestrictedPython refuses `d[k] += 1` and `self.n += 1`; visiting the children already routes the
        # target through `_write_` (and checks the attribute name), which is all the guard we need here.
        if isinstance(node.target, ast.Subscript | ast.Attribute):
            return self.node_contents_visit(node)
        return super().visit_AugAssign(node)


@lru_cache(maxsize=8)
def _denied_builtins(allowed: frozenset[str]) -> frozenset[str]:
    return frozenset(name for name in dir(builtins) if name not in allowed and not name.startswith("_"))


@lru_cache(maxsize=8)
def _transformer(policy: Policy) -> type[_PolicyTransformer]:
    return type("PolicyTransformer", (_PolicyTransformer,), {"policy": policy})


def check_program(source: str, policy: Policy = DEFAULT_POLICY) -> list[str]:
    """The policy violations of `source` (an empty list means it may run). Never raises on hostile input."""
    return compile_program(source, policy)[1]


def compile_program(source: str, policy: Policy | None) -> tuple[object | None, list[str]]:
    """The code object the child will run, or None and the violations. `policy=None` compiles plain Python
    (for testing the lower layers alone). Never raises on hostile input."""
    if not isinstance(source, str):
        return None, [f"a program must be a str, got {type(source).__name__}"]
    if policy is not None and len(source) > policy.max_chars:
        return None, [f"program has {len(source)} characters; the limit is {policy.max_chars}"]
    try:
        if policy is None:
            return compile(source, "<program>", "exec", dont_inherit=True), []
        result = compile_restricted_exec(source, "<program>", policy=_transformer(policy))
    except SyntaxError as exc:
        return None, [f"Line {exc.lineno}: SyntaxError: {exc.msg}"[:300]]
    except (RecursionError, MemoryError, ValueError) as exc:  # absurd nesting, NUL bytes, ...
        return None, [f"program cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}"]
    if result.errors:
        return None, [e if len(e) <= 300 else e[:297] + "..." for e in result.errors]
    return result.code, []
