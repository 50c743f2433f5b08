"""The program's world under the policy, built inside the sandbox child: the builtins a program gets, its
imports (read-only views of allowed modules, with guarded stand-ins for the library functions that take
attribute names or build code from names), and the guards RestrictedPython's transformed code calls
(`_getattr_`, `_write_`, ...). They re-check at run time what `policy.py` checked in the host, now knowing
whose object an attribute belongs to.

Standard library only, never lmstack: the child (`python -I -S`) runs this file's code, sent compiled by the
host (`policy.world_code`), and `policy.py` imports its name lists, so host and child share one definition.
"""

import builtins
import sys

#: Special methods a class body may define and any code may read (`super().__init__(...)`, `x.__len__()`).
#: Left out on purpose: the hooks that library code calls reflectively, with names or data the program would
#: then control (`__getattr__`, `__getattribute__`, `__setattr__`, `__set_name__`, `__init_subclass__`,
#: `__class_getitem__`, `__reduce__`, `__annotations__`, `__del__`, `__new__`, descriptors, metaclass hooks).
OPERATORS = "add sub mul matmul truediv floordiv mod divmod pow lshift rshift and xor or".split()
SPECIAL_METHODS = frozenset(
    [f"__{kind}{op}__" for kind in ("", "r", "i") for op in OPERATORS]
    + [
        f"__{name}__"
        for name in (
            "init repr str format bool len hash call iter next reversed contains getitem setitem delitem "
            "missing enter exit post_init eq ne lt le gt ge neg pos abs invert complex int float index round "
            "trunc floor ceil"
        ).split()
    ]
)
#: Dunder attributes a program may read: the special methods plus plain metadata. `x.__class__` is `type(x)`
#: (a metaclass comes back as the guarded `type`). Never `__dict__`, `__globals__`, `__bases__`, `__mro__`,
#: `__subclasses__`, `__code__`, `__closure__`, `__func__`, `__self__`, `__wrapped__`, `__builtins__`.
READABLE_DUNDERS = SPECIAL_METHODS | {"__name__", "__qualname__", "__doc__", "__class__", "__module__"}
#: namedtuple's public API, `_`-prefixed so as not to clash with field names.
NAMEDTUPLE_API = frozenset({"_asdict", "_replace", "_fields", "_field_defaults", "_make"})
#: What module views leave out: typing's string evaluators and introspection, dataclasses' class factory.
HIDDEN = {
    "typing": {"get_type_hints", "get_origin", "get_args", "ForwardRef", "no_type_check", "no_type_check_decorator"},
    "dataclasses": {"make_dataclass"},
}
#: Library objects whose public attributes a program may set (`getcontext().prec = 50`).
WRITABLE = (("decimal", "Context"), ("textwrap", "TextWrapper"), ("calendar", "Calendar"))


def no_forward_refs() -> None:
    """typing.get_type_hints (which functools.singledispatch's register calls) evaluates string annotations
    with `eval`, outside RestrictedPython: make ForwardRef._evaluate refuse, in this process, whoever imports
    typing and whenever (a meta-path hook patches it as it loads, so nothing is imported ahead of need)."""

    def refuse(*args, **kwargs):
        raise TypeError("string annotations (forward references) are not evaluated in sandboxed programs")

    class Loader:
        def __init__(self, real):
            self.real = real

        def create_module(self, spec):
            return self.real.create_module(spec)

        def exec_module(self, module):
            self.real.exec_module(module)
            module.ForwardRef._evaluate = refuse

    class Hook:
        def find_spec(self, name, path=None, target=None):
            if name != "typing":
                return None
            for finder in sys.meta_path:
                spec = None if finder is self else finder.find_spec(name, path, target)
                if spec is not None:
                    spec.loader = Loader(spec.loader)
                    return spec
            return None

    if "typing" in sys.modules:
        sys.modules["typing"].ForwardRef._evaluate = refuse
    else:
        sys.meta_path.insert(0, Hook())


def restricted_globals(req: dict) -> dict:
    """Globals for a policy-checked program: the allowed builtins (getattr, hasattr and type guarded), imports
    as read-only views of the allowed modules, and the guards, which re-check at run time what the policy
    checked in the host, now knowing whose object an attribute belongs to."""
    import _operator as operator
    import _string

    Module, Namespace, Function = type(sys), type(sys.implementation), type(no_forward_refs)
    allowed_modules = frozenset(req["modules"])
    denied_attrs = frozenset(req["denied_attributes"])
    denied_prefixes = tuple(req["denied_prefixes"])
    trusted = globals()  # this file's functions: the safe Formatter's methods
    views, user_types, g = {}, set(), {}

    def own(obj):
        """A class the program defined, or an instance of one."""
        return obj in user_types if isinstance(obj, type) else type(obj) in user_types

    def private_ok(obj, name):
        """`_name` on the program's own object, not inherited from a library class."""
        if not own(obj):
            return False
        if not isinstance(obj, type) and name in (getattr(obj, "__dict__", None) or ()):
            return True
        for cls in (obj if isinstance(obj, type) else type(obj)).__mro__:
            if name in cls.__dict__:
                return cls in user_types
        return True

    def refuse(name):
        raise AttributeError(f"attribute {name!r} is not allowed")

    def _getattr_(obj, name, *default):
        if type(name) is not str:
            refuse(name)
        if name[:1] == "_" and name not in READABLE_DUNDERS:
            if len(name) > 4 and name[:2] == "__" == name[-2:]:
                refuse(name)
            tuple_api = name in NAMEDTUPLE_API and issubclass(obj if isinstance(obj, type) else type(obj), tuple)
            if not (tuple_api or private_ok(obj, name)):
                refuse(name)
        elif name in denied_attrs or name.startswith(denied_prefixes):
            refuse(name)
        elif name == "format" or name == "format_map":
            return format_attr(obj, name)
        value = getattr(obj, name, *default)
        if type(value) is Module:
            refuse(name)
        if isinstance(value, type) and issubclass(value, type):
            return SafeType  # a metaclass would create classes from a dict of any names
        return value

    def safe_getattr(obj, name, *default):
        try:
            return _getattr_(obj, name)
        except AttributeError:
            if len(default) == 1:
                return default[0]
            raise

    def safe_hasattr(obj, name):
        try:
            _getattr_(obj, name)
        except AttributeError:
            return False
        return True

    safe_getattr.__name__, safe_hasattr.__name__ = "getattr", "hasattr"

    class TypeMeta(type):
        def __instancecheck__(cls, obj):
            return isinstance(obj, type)

        def __subclasscheck__(cls, sub):
            return issubclass(sub, type)

        def __call__(cls, *args):
            if len(args) != 1:
                raise TypeError("type() takes one argument in sandboxed programs (define classes with class)")
            t = type(args[0])
            return SafeType if issubclass(t, type) else t

    class SafeType(metaclass=TypeMeta):
        """`type` for programs: the type of a value; a metaclass comes back as this class."""

    SafeType.__name__ = SafeType.__qualname__ = "type"

    # --- str.format / format_map and string.Formatter: fields read attributes through _getattr_, never `_`

    class Formatter:
        """string.Formatter's interface with guarded field lookups. It inherits nothing from string.Formatter,
        so `super()` cannot reach that class's unguarded get_field."""

        def format(self, format_string, /, *args, **kwargs):
            return self.vformat(format_string, args, kwargs)

        def vformat(self, format_string, args, kwargs):
            used = set()
            result = self._expand(format_string, args, kwargs, used, [0, None], 2)
            self.check_unused_args(used, args, kwargs)
            return result

        def _expand(self, text, args, kwargs, used, auto, depth):
            if depth < 0:
                raise ValueError("Max string recursion exceeded")
            out = []
            for literal, field, spec, conversion in self.parse(text):
                out.append(literal)
                if field is None:
                    continue
                first = _string.formatter_field_name_split(field)[0]
                mode = "auto" if first == "" else "manual" if type(first) is int else auto[1]
                if auto[1] not in (None, mode):
                    raise ValueError("cannot switch between automatic and manual field numbering")
                auto[1] = mode
                if first == "":
                    field, auto[0] = f"{auto[0]}{field}", auto[0] + 1
                obj, key = self.get_field(field, args, kwargs)
                used.add(key)
                spec = self._expand(spec, args, kwargs, used, auto, depth - 1) if spec else ""
                out.append(self.format_field(self.convert_field(obj, conversion), spec))
            return "".join(out)

        def parse(self, format_string):
            return _string.formatter_parser(format_string)

        def get_field(self, field_name, args, kwargs):
            first, rest = _string.formatter_field_name_split(field_name)
            obj = self.get_value(first, args, kwargs)
            for is_attr, key in rest:
                if is_attr and key[:1] == "_":
                    raise AttributeError(f"format field attribute {key!r} is not allowed")
                obj = _getattr_(obj, key) if is_attr else obj[key]
            return obj, first

        def get_value(self, key, args, kwargs):
            if type(key) is not int:
                return kwargs[key]
            if args is None:
                raise ValueError("Format string contains positional fields")
            if key >= len(args):
                raise IndexError(f"Replacement index {key} out of range for positional args tuple")
            return args[key]

        def check_unused_args(self, used_args, args, kwargs):
            pass

        def format_field(self, value, format_spec):
            return format(value, format_spec)

        def convert_field(self, value, conversion):
            if conversion is None:
                return value
            convert = {"s": str, "r": repr, "a": ascii}.get(conversion)
            if convert is None:
                raise ValueError(f"Unknown conversion specifier {conversion}")
            return convert(value)

    formatter = Formatter()

    def bound_format(text, mapping):
        text = str.__str__(text)  # an exact str (TypeError for anything else)
        if mapping:
            return lambda values: formatter._expand(text, None, values, set(), [0, None], 2)
        return lambda *args, **kwargs: formatter._expand(text, args, kwargs, set(), [0, None], 2)

    def format_attr(obj, name):
        value = getattr(obj, name)
        fn = getattr(value, "__func__", value)
        if type(fn) is Function and (fn.__globals__ is g or fn.__globals__ is trusted):
            return value  # the program's own method, or the safe Formatter's
        user_string = getattr(sys.modules.get("collections"), "UserString", str)  # its .format calls str's
        texts = (str, user_string)
        text_of = lambda s: s if isinstance(s, str) else s.data  # noqa: E731
        if isinstance(obj, texts):
            return bound_format(text_of(obj), name == "format_map")
        if isinstance(obj, type) and issubclass(obj, texts):
            return lambda self, *a, **k: bound_format(text_of(self), name == "format_map")(*a, **k)
        refuse(name)

    # --- imports: views for `import` statements; C code's own imports (date.strftime needs `time`,
    # datetime.strptime `_strptime`) come through here too while a program frame is current

    def _import(name, globals=None, locals=None, fromlist=(), level=0):
        if type(fromlist) is list:
            # PyImport_Import (C code) passes a list, an `import` statement None or a tuple. C code gets the
            # real import; it reads sys.modules itself, so nothing is handed back to anyone.
            __import__(name)
            return None
        if level or name not in allowed_modules:
            raise ImportError(f"import of {name!r} is not allowed")
        if name not in views:
            mod = __import__(name)
            public = {}
            for n in getattr(mod, "__all__", None) or list(vars(mod)):
                if n[:1] != "_" and n not in HIDDEN.get(name, ()) and hasattr(mod, n):
                    if type(getattr(mod, n)) is not Module:
                        public[n] = getattr(mod, n)
            public.update(replacements(name, mod))
            views[name] = Namespace(**public)
        return views[name]

    def replacements(name, mod):
        """Guarded stand-ins for the library functions that take attribute names or build code from names."""
        if name == "operator":
            return {
                "attrgetter": attrgetter,
                "methodcaller": methodcaller,
                "setitem": lambda a, b, c: mod.setitem(_write_(a), b, c),
                "delitem": lambda a, b: mod.delitem(_write_(a), b),
            }
        if name == "string":
            return {"Formatter": Formatter}
        if name == "functools":
            standard = (mod.WRAPPER_ASSIGNMENTS, mod.WRAPPER_UPDATES)

            def update_wrapper(wrapper, wrapped, assigned=standard[0], updated=standard[1]):
                names = (tuple(assigned), tuple(updated))
                if any(type(n) is not str or n not in ok for part, ok in zip(names, standard) for n in part):
                    raise TypeError("update_wrapper() and wraps() copy only the standard attributes here")
                if isinstance(wrapper, type):  # it would copy __annotations__ or __module__ onto a class
                    raise TypeError("update_wrapper() and wraps() wrap functions")
                return mod.update_wrapper(_write_attr_(wrapper), wrapped, *names)

            def wraps(wrapped, assigned=standard[0], updated=standard[1]):
                return lambda wrapper: update_wrapper(wrapper, wrapped, assigned, updated)

            return {"update_wrapper": update_wrapper, "wraps": wraps}
        if name == "dataclasses":

            def dataclass(cls=None, /, **kwargs):
                """dataclasses builds code from field names: only the program's classes, exact Field objects."""
                if cls is None:
                    return lambda c: dataclass(c, **kwargs)
                if not (isinstance(cls, type) and cls in user_types):
                    raise TypeError("dataclass() applies to the program's own classes only")
                if not all(type(k) is str and k.isidentifier() for k in cls.__dict__.get("__annotations__", {})):
                    raise TypeError("dataclass() field names must be identifiers")
                for c in cls.__mro__:
                    fields = c.__dict__.get("__dataclass_fields__") or {}
                    for v in [*c.__dict__.values(), *fields.values()]:
                        if isinstance(v, mod.Field) and type(v) is not mod.Field:
                            raise TypeError("dataclass() accepts only dataclasses.field() objects")
                    if not all(type(f.name) is str and f.name.isidentifier() for f in fields.values()):
                        raise TypeError("dataclass() field names must be identifiers")
                out = mod.dataclass(cls, **kwargs)
                user_types.add(out)
                return out

            return {"dataclass": dataclass}
        return {}

    def attrgetter(attr, *attrs):
        paths = []
        for a in (attr, *attrs):
            if type(a) is not str:
                raise TypeError("attribute name must be a string")
            paths.append(a.split("."))

        def get(obj):
            found = []
            for path in paths:
                value = obj
                for part in path:
                    value = _getattr_(value, part)
                found.append(value)
            return found[0] if len(found) == 1 else tuple(found)

        return get

    def methodcaller(name, /, *args, **kwargs):
        if type(name) is not str:
            raise TypeError("method name must be a string")
        return lambda obj: _getattr_(obj, name)(*args, **kwargs)

    # --- writes: items of any container; attributes of the program's own objects and functions and of a few
    # library objects meant to be configured; never of module views or classes the program did not define

    def what(obj):
        if type(obj) is Namespace:
            return "imported modules"
        return "classes" if isinstance(obj, type) else f"{type(obj).__name__} objects"

    def _write_(obj):
        if type(obj) is Namespace or (isinstance(obj, type) and obj not in user_types):
            raise TypeError(f"cannot modify {what(obj)}")
        return obj

    def _write_attr_(obj):
        if own(obj) or (type(obj) is Function and obj.__globals__ is g):
            return obj
        for module, cls in WRITABLE:
            cls = getattr(sys.modules.get(module), cls, None)
            if cls is not None and isinstance(obj, cls) and not isinstance(obj, type):
                return obj
        raise TypeError(f"cannot modify {what(obj)}")

    def _write_private_(obj):
        if own(obj):
            return obj
        raise TypeError(f"cannot set private attributes of {what(obj)}")

    def _metaclass(name, bases, ns):
        if any(isinstance(b, type) and issubclass(b, type) for b in bases):
            raise TypeError("sandboxed programs cannot define metaclasses")
        cls = type(name, bases, ns)
        user_types.add(cls)
        return cls

    def _unpack(it, spec, getiter):
        items = list(getiter(it))
        if len(items) >= spec["min_len"]:
            for index, child in spec["childs"]:
                items[index] = _unpack(items[index], child, getiter)
        return items

    def _iter_unpack(it, spec, getiter):
        for item in getiter(it):
            yield _unpack(item, spec, getiter)

    inplace = {
        "+=": operator.iadd,
        "-=": operator.isub,
        "*=": operator.imul,
        "/=": operator.itruediv,
        "//=": operator.ifloordiv,
        "%=": operator.imod,
        "**=": operator.ipow,
        "<<=": operator.ilshift,
        ">>=": operator.irshift,
        "|=": operator.ior,
        "^=": operator.ixor,
        "&=": operator.iand,
        "@=": operator.imatmul,
    }

    class _Print:
        def __init__(self, getattr_=None):
            pass

        def _call_print(self, *objects, **kwargs):
            kwargs.pop("file", None)  # output always goes to the captured stdout
            print(*objects, **kwargs)

        def __call__(self):
            return ""

    safe = {n: getattr(builtins, n) for n in req["builtins"] if hasattr(builtins, n)}
    for n, guarded in (("getattr", safe_getattr), ("hasattr", safe_hasattr), ("type", SafeType)):
        if n in safe:
            safe[n] = guarded
    safe["__import__"] = _import
    safe["__build_class__"] = builtins.__build_class__
    g.update(
        {
            "__builtins__": safe,
            "__name__": "__main__",
            "__metaclass__": _metaclass,
            "_getattr_": _getattr_,
            "_getitem_": operator.getitem,
            "_getiter_": iter,
            "_write_": _write_,
            "_write_attr_": _write_attr_,
            "_write_private_": _write_private_,
            "_unpack_sequence_": _unpack,
            "_iter_unpack_sequence_": _iter_unpack,
            "_print_": _Print,
            "_inplacevar_": lambda op, x, y: inplace[op](x, y),
            "_apply_": lambda f, *a, **k: f(*a, **k),
        }
    )
    return g
