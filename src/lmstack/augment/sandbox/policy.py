"""Layer 1 of the sandbox: the policy check in the host, before any process starts.

RestrictedPython's transformer rejects `_`-prefixed names, exec/eval calls and async code, and routes every
attribute read, item write, iteration and unpacking through guard functions (the child provides them). On
top of it an allow-list: a fixed set of builtins, imports only of pure-computation modules, no frame/code/
generator attributes, no string annotations, a size cap. Ordinary Python stays allowed: dunder methods
defined in a class body, reads of the few dunders normal code uses (`self.__class__.__name__`,
`super().__init__`), `self._private` on the program's own objects, `__name__`, `nonlocal`, `match`,
`type(x)`, `getattr`/`hasattr`, `str.format`. The child enforces the same rules again at run time, where it
also knows whose object an attribute belongs to (`child.restricted_globals`).
"""

from __future__ import annotations

import ast
import builtins
import marshal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from RestrictedPython.transformer import RestrictingNodeTransformer, copy_locations

from lmstack.augment.sandbox.world import READABLE_DUNDERS, SPECIAL_METHODS

#: Modules a program may import: pure computation, no I/O, no introspection. `typing`, `operator`, `string`,
#: `dataclasses` and `copy` reach attributes by name or build code from names, so the child hands them out
#: with guarded replacements (attrgetter/methodcaller, update_wrapper/wraps, Formatter, dataclass) and
#: without the functions that evaluate strings (typing.get_type_hints, ForwardRef). `numbers` (ABCs) and
#: `textwrap` (string layout) are plain computation.
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
        "typing",
        "operator",
        "string",
        "dataclasses",
        "copy",
        "numbers",
        "textwrap",
    }
)

#: Builtins a program may use. Everything else in `builtins` (open, exec, vars, setattr, input, ...) is
#: rejected by the policy and absent at run time. `getattr`, `hasattr` and `type` are the child's guarded
#: versions: the attribute rules below, and `type(x)` with one argument only.
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
        "getattr",
        "hasattr",
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
        "type",
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

#: Attribute names rejected on top of the rules below: mro() reaches `object` and every base class.
DENIED_ATTRIBUTES = frozenset({"mro"})
#: Attribute prefixes of frames, tracebacks, code, generators, coroutines and async generators.
DENIED_ATTRIBUTE_PREFIXES = ("f_", "tb_", "co_", "gi_", "cr_", "ag_")
#: How deep the syntax tree may nest. The parser itself stops near 3,000; RestrictedPython's transformer and
#: `compile()` of a tree recurse once or more per level, so a deep tree is checked on a thread of its own with
#: a bigger stack and recursion limit (`_on_deep_stack`).
MAX_DEPTH = 3_000


@dataclass(frozen=True)
class Policy:
    """What a program may name and import. `max_chars` bounds the host-side parse."""

    modules: frozenset[str] = DEFAULT_MODULES
    builtins: frozenset[str] = SAFE_BUILTINS
    max_chars: int = 20_000


DEFAULT_POLICY = Policy()


#: Dunder-shaped strings a program may write: the readable attributes, and `"__main__"`.
_PLAIN_DUNDERS = READABLE_DUNDERS | {"__main__"}


def is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def attribute_refusal(name: str, store: bool = False) -> str | None:
    """Why a program may not read (or, with `store`, assign or delete) attribute `name`; None if it may.
    `_private` names pass here: the child allows them only on the program's own objects."""
    if is_dunder(name):
        if store:
            return f'attribute "{name}" cannot be assigned'
        return None if name in READABLE_DUNDERS else f'attribute "{name}" is not allowed'
    if name in DENIED_ATTRIBUTES or name.startswith(DENIED_ATTRIBUTE_PREFIXES) or name.endswith("__roles__"):
        return f'attribute "{name}" is not allowed'
    return None


def _is_literal(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "Literal") or (
        isinstance(node, ast.Attribute) and node.attr == "Literal"
    )


_TYPE_NODES = (ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.List, ast.Constant, ast.BinOp, ast.BitOr)


def _is_type_text(text: str) -> bool:
    """Whether `text` parses as a type expression: names, non-`_` attributes, subscripts, `|`, literals."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for item in ast.walk(tree):
        if isinstance(item, ast.expr_context):
            continue
        if not isinstance(item, _TYPE_NODES) or (isinstance(item, ast.BinOp) and not isinstance(item.op, ast.BitOr)):
            return False
        name = item.id if isinstance(item, ast.Name) else item.attr if isinstance(item, ast.Attribute) else ""
        if name.startswith("_") or attribute_refusal(name):
            return False
    return True


class _PolicyTransformer(RestrictingNodeTransformer):
    """RestrictedPython's checks plus lmstack's allow-list. Subclassed per Policy (see `_transformer`)."""

    policy: Policy = DEFAULT_POLICY

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._scopes: list[str | None] = []  # enclosing class names; None for a function
        self._def_in_class = False

    # --- names

    def check_name(self, node: ast.AST, name: str | None, allow_magic_methods: bool = False) -> None:
        if allow_magic_methods and self._def_in_class and name in SPECIAL_METHODS:
            return  # `def __add__(self, other)` directly in a class body
        super().check_name(node, name)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == "__name__" and isinstance(node.ctx, ast.Load):
            return node  # `if __name__ == "__main__":`
        if node.id in SPECIAL_METHODS and self._scopes and self._scopes[-1] is not None:
            return node  # `__rmul__ = __mul__` or `__hash__ = None` in a class body
        if node.id in _denied_builtins(self.policy.builtins):
            self.error(node, f'name "{node.id}" is not available in sandboxed programs')
        return super().visit_Name(node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        # an early, clear error for `update_wrapper(..., updated=("__globals__",))` and the like; a name built
        # at run time meets the same refusal in the child's guards
        value = node.value
        if isinstance(value, str) and is_dunder(value) and value.isidentifier() and value not in _PLAIN_DUNDERS:
            self.error(node, f'the string "{value}" names a hidden attribute')
        return super().visit_Constant(node)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> ast.AST:
        for name in node.names:
            self.check_name(node, name)
        return node

    # --- imports

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

    # --- attributes: `a.b` -> `_getattr_(a, "b")`; `a.b = c` -> `_write_attr_(a).b = c`, or
    # `_write_private_(a)._b = c` for a `_private` name (the program's own objects only)

    def _mangle(self, name: str) -> str:
        """`self.__x` inside class C reads `_C__x`, as Python's compiler mangles the matching store."""
        if not name.startswith("__") or name.endswith("__"):
            return name
        owner = next((s for s in reversed(self._scopes) if s is not None), None)
        stripped = owner.lstrip("_") if owner else ""
        return f"_{stripped}{name}" if stripped else name

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        store = not isinstance(node.ctx, ast.Load)
        refusal = attribute_refusal(node.attr, store)
        if refusal:
            self.error(node, refusal)
        node = self.node_contents_visit(node)
        if not store:
            call = ast.Call(ast.Name("_getattr_", ast.Load()), [node.value, ast.Constant(self._mangle(node.attr))], [])
            copy_locations(call, node)
            return call
        guard = "_write_private_" if node.attr.startswith("_") else "_write_attr_"
        value = ast.Call(ast.Name(guard, ast.Load()), [node.value], [])
        copy_locations(value, node.value)
        node.value = value
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func, args = node.func, node.args
        if isinstance(func, ast.Name) and func.id == "type" and (len(args) != 1 or node.keywords):
            self.error(node, "type() takes one argument here (define classes with a class statement)")
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and len(args) >= 2:
            name = args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                refusal = attribute_refusal(name.value)
                if refusal:
                    self.error(node, refusal)
        return super().visit_Call(node)

    # --- definitions: dunder methods in class bodies, annotations

    def _check_annotation(self, node: ast.AST | None) -> None:
        """A string annotation (a forward reference, `next: Optional["Node"]`) must be a plain type expression.
        typing.get_type_hints would evaluate it outside the policy; the child refuses that evaluation as well."""
        stack = [node] if node is not None else []
        while stack:
            item = stack.pop()
            if isinstance(item, ast.Subscript) and _is_literal(item.value):
                continue  # Literal["a", "b"] holds values, not forward references
            if isinstance(item, ast.Constant) and isinstance(item.value, str) and not _is_type_text(item.value):
                self.error(item, 'a string annotation may only name a type (like "Node" or "list[Node]")')
            stack.extend(ast.iter_child_nodes(item))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None:
                self._check_annotation(arg.annotation)
        self._check_annotation(node.returns)
        self._def_in_class = bool(self._scopes) and self._scopes[-1] is not None
        self._scopes.append(None)
        try:
            return super().visit_FunctionDef(node)
        finally:
            self._scopes.pop()

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self._scopes.append(None)
        try:
            return super().visit_Lambda(node)
        finally:
            self._scopes.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self._scopes.append(node.name)
        try:
            return super().visit_ClassDef(node)
        finally:
            self._scopes.pop()

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        self._check_annotation(node.annotation)
        return self.node_contents_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        # RestrictedPython refuses `d[k] += 1` and `self.n += 1`; visiting the children already routes the
        # target through `_write_`/`_write_attr_` (and checks the attribute name), which is all the guard needed.
        if isinstance(node.target, ast.Subscript | ast.Attribute):
            return self.node_contents_visit(node)
        return super().visit_AugAssign(node)

    # --- match statements. Value and class patterns must stay plain dotted names for the compiler, so they
    # are checked here and not rewritten; the names they read are never `_`-prefixed.

    def _check_pattern_expr(self, node: ast.AST) -> None:
        for item in ast.walk(node):
            if isinstance(item, ast.Name):
                if item.id in _denied_builtins(self.policy.builtins) or item.id in ("print", "printed"):
                    self.error(item, f'name "{item.id}" is not available in sandboxed programs')
                self.check_name(item, item.id)
            elif isinstance(item, ast.Attribute) and (item.attr.startswith("_") or attribute_refusal(item.attr)):
                self.error(item, f'attribute "{item.attr}" is not allowed in a pattern')

    def visit_Match(self, node: ast.AST) -> ast.AST:
        return self.node_contents_visit(node)

    def visit_match_case(self, node: ast.AST) -> ast.AST:
        return self.node_contents_visit(node)

    def visit_MatchValue(self, node: ast.MatchValue) -> ast.AST:
        self._check_pattern_expr(node.value)
        return node

    def visit_MatchSingleton(self, node: ast.AST) -> ast.AST:
        return node

    def visit_MatchSequence(self, node: ast.AST) -> ast.AST:
        return self.node_contents_visit(node)

    def visit_MatchOr(self, node: ast.AST) -> ast.AST:
        return self.node_contents_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> ast.AST:
        self.check_name(node, node.name)
        return node

    def visit_MatchAs(self, node: ast.MatchAs) -> ast.AST:
        self.check_name(node, node.name)
        if node.pattern is not None:
            node.pattern = self.visit(node.pattern)
        return node

    def visit_MatchMapping(self, node: ast.MatchMapping) -> ast.AST:
        for key in node.keys:
            self._check_pattern_expr(key)
        self.check_name(node, node.rest)
        node.patterns = [self.visit(p) for p in node.patterns]
        return node

    def visit_MatchClass(self, node: ast.MatchClass) -> ast.AST:
        self._check_pattern_expr(node.cls)
        for name in node.kwd_attrs:
            if name.startswith("_") or attribute_refusal(name):
                self.error(node, f'attribute "{name}" is not allowed in a pattern')
        node.patterns = [self.visit(p) for p in node.patterns]
        node.kwd_patterns = [self.visit(p) for p in node.kwd_patterns]
        return node


@lru_cache(maxsize=8)
def _denied_builtins(allowed: frozenset[str]) -> frozenset[str]:
    return frozenset(name for name in dir(builtins) if name not in allowed and not name.startswith("_"))


@lru_cache(maxsize=8)
def _transformer(policy: Policy) -> type[_PolicyTransformer]:
    return type("PolicyTransformer", (_PolicyTransformer,), {"policy": policy})


# Held by every policy compile, not just the deep ones: the recursion limit is process-wide, and a compile
# running in another thread while it changes fails inside CPython ("AST constructor recursion depth
# mismatch"). Re-entrant, as the deep retry takes it again from the same thread.
_DEEP_LOCK = threading.RLock()
_DEEP_STACK = 256 << 20  # virtual; only what the recursion touches is ever mapped
_DEEP_LIMIT = 8 * MAX_DEPTH + 2_000


def _on_deep_stack(fn: Callable[[], object]) -> object:
    """`fn()` on a thread with a big stack while the recursion limit is raised (both are process-wide, so
    one deep check runs at a time and the old values come back at once). Raises what `fn` raised."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller below)
            box["error"] = exc

    with _DEEP_LOCK:
        limit = sys.getrecursionlimit()
        stack = threading.stack_size(_DEEP_STACK)
        try:
            sys.setrecursionlimit(max(limit, _DEEP_LIMIT))
            thread = threading.Thread(target=target, name="lmstack-policy-deep", daemon=True)
            thread.start()
            thread.join()
        finally:
            threading.stack_size(stack)
            sys.setrecursionlimit(limit)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def _depth_at_most(tree: ast.AST, bound: int) -> bool:
    """Whether `tree` nests no deeper than `bound` (iterative: the tree may be deeper than the stack)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > bound:
            return False
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return True


def _restricted(tree: ast.Module, transformer: type[_PolicyTransformer]) -> tuple[object | None, list[str]]:
    """Transform and compile `tree`. Compiled here with `dont_inherit=True`, not by RestrictedPython: its
    compile() inherits `from __future__ import annotations` from its own module, which would turn every
    annotation of the program into a string for typing.get_type_hints to evaluate outside the policy."""
    errors: list[str] = []
    transformer(errors, [], {}).visit(tree)
    if errors:
        return None, errors
    return compile(tree, "<program>", "exec", dont_inherit=True), []


@lru_cache(maxsize=1)
def world_code() -> bytes:
    """world.py compiled for the child (marshalled code; host and child are the same interpreter), for the
    set-up message's `world_code`: the child then need not compile it on every start."""
    path = Path(__file__).with_name("world.py")
    return marshal.dumps(compile(path.read_text(encoding="utf-8"), str(path), "exec", dont_inherit=True))


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
        transformer = _transformer(policy)
        with _DEEP_LOCK:
            tree = ast.parse(source, "<program>")  # at the normal recursion limit: bounds the depth
            try:
                code, errors = _restricted(tree, transformer)
            except RecursionError:  # a long `a + b + ...` or elif chain: again, on a deep stack
                tree = ast.parse(source, "<program>")  # the first tree was partly transformed
                if not _depth_at_most(tree, MAX_DEPTH):
                    return None, [f"program is nested more than {MAX_DEPTH} levels deep"]
                code, errors = _on_deep_stack(lambda: _restricted(tree, transformer))  # type: ignore[misc]
    except SyntaxError as exc:
        return None, [f"Line {exc.lineno}: SyntaxError: {exc.msg}"[:300]]
    except (RecursionError, MemoryError, ValueError, RuntimeError, SystemError) as exc:  # absurd nesting, NUL, ...
        return None, [f"program cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}"]
    return code, [e if len(e) <= 300 else e[:297] + "..." for e in errors]
