"""One small registry, used for strategies, orderings and metrics.

Plug-ins register where they are defined (`@STRATEGIES.register("kcenter", ...)`); a lookup miss
lists the valid names and suggests the nearest one. A registry made with `home="llm_al.x"` imports
that module on its first lookup, so the plug-ins defined there are registered before any name is
checked, and a low layer (config) can validate names without importing the layer that defines them.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from llm_al.errors import UnknownNameError

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
    def __init__(self, kind: str, plural: str | None = None, home: str | None = None):
        self.kind = kind
        self.plural = plural or kind + "s"
        self.home = home
        self._entries: dict[str, Entry[F]] = {}

    def _load(self) -> None:
        """Import the module whose import registers the entries (once; a no-op while it is importing)."""
        if self.home is not None:
            home, self.home = self.home, None
            importlib.import_module(home)

    def register(self, name: str, description: str, **meta: Any) -> Callable[[F], F]:
        def wrap(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, fn, description, dict(meta))
            return fn

        return wrap

    def get(self, name: str) -> Entry[F]:
        self._load()
        if name not in self._entries:
            names = sorted(self._entries)
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, names)} "
                f"Valid {self.plural}: {', '.join(names)}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[F]]:
        return iter(self._entries[n] for n in self.names())
