"""One small registry, used for strategies, orderings and metrics.

Plug-ins register where they are defined (`@STRATEGIES.register("kcenter", ...)`); a lookup miss
lists the valid names and suggests the nearest one. A registry made with `home="llm_al.x"` imports
that module on its first lookup, so the plug-ins defined there are registered before any name is
checked, and a low layer (config) can validate names without importing the layer that defines them.

Parameter values are checked when a spec is parsed (`STRATEGIES.check(name, params)`), from the
plug-in's own signature: every parameter with a default is settable; the value must fit its type
annotation (int, float, bool, str, None, Literal[...], Mapping[str, float], Sequence[int]) and the
constraints attached with `typing.Annotated` (`between`, `at_least`, `one_of`, `matches`). A new
plug-in gets the check by annotating its parameters; nothing else to register.
"""

from __future__ import annotations

import collections.abc
import difflib
import importlib
import inspect
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

import numpy as np

from llm_al.errors import ConfigError, UnknownNameError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str
    fn: F
    description: str
    meta: dict[str, Any] = field(default_factory=dict)


def did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


class Registry(Generic[F]):
    def __init__(self, kind: str, plural: str | None = None, home: str | None = None,
                 check_meta: Callable[[str, dict[str, Any]], str | None] | None = None):
        """`check_meta(name, meta)` returns what is wrong with a registration's meta (None: nothing);
        a registration it refuses raises at import time, so a plug-in cannot leave out a choice the
        registry requires (the strategies' `labelled=`, registries.check_strategy_meta)."""
        self.kind = kind
        self.plural = plural or kind + "s"
        self.home = home
        self.check_meta = check_meta
        self._entries: dict[str, Entry[F]] = {}
        self._resolvers: list[Callable[[str], "Entry[F] | None"]] = []

    def add_resolver(self, resolve: Callable[[str], "Entry[F] | None"]) -> None:
        """`resolve(name)` is asked for a name no plug-in registered (after the home module is
        imported); it may load, register and return an entry, or return None. The metrics use it so
        that an `evaluate` spec resolves in any process, not only the one that read the config."""
        self._resolvers.append(resolve)

    def _load(self) -> None:
        """Import the module whose import registers the entries (once; a no-op while it is importing)."""
        if self.home is not None:
            home, self.home = self.home, None
            importlib.import_module(home)

    def register(self, name: str, description: str, **meta: Any) -> Callable[[F], F]:
        def wrap(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            problem = self.check_meta(name, meta) if self.check_meta is not None else None
            if problem:
                raise ValueError(problem)
            self._entries[name] = Entry(name, fn, description, dict(meta))
            return fn

        return wrap

    def get(self, name: str) -> Entry[F]:
        self._load()
        if name not in self._entries:
            for resolve in self._resolvers:
                entry = resolve(name)
                if entry is not None:
                    return entry
            names = sorted(self._entries)
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, names)} "
                f"Valid {self.plural}: {', '.join(names)}"
            )
        return self._entries[name]

    def check(self, name: str, params: dict[str, Any] | None = None) -> Entry[F]:
        """The entry for `name`, with `params` checked against its signature (see the module
        docstring): an unknown name or parameter, or a value of the wrong type or out of range, is
        a ConfigError naming the value and what would be valid. Runs in microseconds, before any
        features exist."""
        entry = self.get(name)
        settable = settable_params(entry.fn)
        params = params or {}
        defaults = {p.name: p.default for p in inspect.signature(entry.fn).parameters.values()}
        for key, hint in settable.items():       # a default its own annotation refuses: the user must set it
            if key not in params and value_problem(defaults[key], hint):
                raise ConfigError(f"{self.kind} {name!r} needs {key}=...: it {value_problem(defaults[key], hint)}")
        for key, value in params.items():
            if key not in settable:
                valid = ", ".join(settable) or "none"
                raise ConfigError(f"{self.kind} {name!r} has no parameter {key!r}.{did_you_mean(key, list(settable))} "
                                  f"Its parameters: {valid}")
            problem = value_problem(value, settable[key])
            if problem:
                raise ConfigError(f"{self.kind} {name!r}: {key}={value!r} is invalid; {problem}")
        return entry

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[F]]:
        return iter(self._entries[n] for n in self.names())


# ---------------------------------------------------------------------------- parameter checks
@dataclass(frozen=True, eq=False)            # hashed by identity: typing hashes Annotated's metadata
class Constraint:
    """A check on a parameter value, attached with `Annotated[type, constraint]`. `message()` says
    in words what passes; `counterexamples` are values it must refuse (the contract suite feeds
    them to every registered plug-in)."""

    test: Callable[[Any], bool]
    valid: str | Callable[[], str] = ""
    counterexamples: tuple = ()
    options: Callable[[], Sequence] | None = None       # one_of: the valid values, read at check time

    def message(self) -> str:
        if self.options is not None:
            return f"must be one of {', '.join(map(str, self.options()))}"
        return self.valid() if callable(self.valid) else self.valid


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Constraint:
    """A finite number in [lo, hi] (open ends with lo_open / hi_open)."""
    def test(v: Any) -> bool:
        return math.isfinite(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    bad = (lo if lo_open else lo - 1, hi if hi_open else hi + 1, float("nan"))
    return Constraint(test, f"must be a number in {left}{lo:g}, {hi:g}{right}", bad)


def at_least(lo: float) -> Constraint:
    """A finite number >= lo."""
    return Constraint(lambda v: math.isfinite(v) and v >= lo, f"must be a number >= {lo:g}", (lo - 1, -(10 ** 9)))


def above(lo: float) -> Constraint:
    """A finite number > lo."""
    return Constraint(lambda v: math.isfinite(v) and v > lo, f"must be a number > {lo:g}", (lo, lo - 1))


def one_of(values: Sequence | Callable[[], Sequence]) -> Constraint:
    """One of `values`, or of what the callable returns when the check runs (for vocabularies that
    grow as plug-ins register, such as the per-example score names)."""
    get = values if callable(values) else (lambda: tuple(values))
    return Constraint(lambda v: v in list(get()), counterexamples=("not-an-option",), options=get)


def matches(pattern: str, valid: str) -> Constraint:
    """Text that matches the regular expression `pattern` in full."""
    return Constraint(lambda v: re.fullmatch(pattern, v) is not None, valid, ("not-a-match",))


def settable_params(fn: Callable) -> dict[str, Any]:
    """name -> type annotation (with extras) of each parameter of `fn` that has a default."""
    hints = typing.get_type_hints(fn, include_extras=True)
    return {p.name: hints.get(p.name, Any) for p in inspect.signature(fn).parameters.values()
            if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD}


def value_problem(value: Any, hint: Any) -> str | None:
    """None if `value` fits the annotation `hint`, else what a valid value looks like."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        problems = [value_problem(value, m) for m in members]
        if None in problems:
            return None
        fitting = [p for m, p in zip(members, problems) if _fits(value, base_type(m))]
        return fitting[0] if fitting else f"must be {_describe(hint)}"
    constraints: list[Constraint] = []
    while typing.get_origin(hint) is typing.Annotated:
        hint, *extra = typing.get_args(hint)
        constraints += [c for c in extra if isinstance(c, Constraint)]
    if not _fits(value, hint):
        return f"must be {_describe(hint)}"
    if value is None:
        return None
    for c in constraints:
        try:
            ok = bool(c.test(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            return c.message()
    return None


def base_type(hint: Any) -> Any:
    """The type under any Annotated layers."""
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _number(value: Any) -> bool:
    """A real number, numpy's included; not a bool (numpy registers its scalars with `numbers`)."""
    return isinstance(value, numbers.Real) and not _is_bool(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Annotated:
        return value_problem(value, hint) is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return _is_bool(value)
    if hint is int:
        return isinstance(value, numbers.Integral) and not _is_bool(value)
    if hint is float:
        return _number(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (collections.abc.Mapping, dict):
        return isinstance(value, collections.abc.Mapping) and all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()) if args else isinstance(value, dict)
    if origin in (collections.abc.Sequence, list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _describe(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return ("one of " if len(args) > 1 else "") + ", ".join(map(str, args))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "null"}
    if hint in names:
        return names[hint]
    if origin in (collections.abc.Mapping, dict):
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}" if args else "a mapping"
    if origin in (collections.abc.Sequence, list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    return getattr(hint, "__name__", str(hint))
