"""Which runs a poller claims, and how many of each, this cycle: a pure policy object.

Types with a per-handler concurrency cap get a claim of their own, sized by the
room under their cap; everything else shares one claim sized by the free
threads. A type found to have no handler here is left out of later claims. The
type filters themselves are built by the store (``LeaseStore.route_filter``);
``Routing`` only decides which filter objects exist and keeps each alive, so the
store builds each claim statement once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: (exact types, prefixes without their %, excluded types) -> a filter object
Key = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


@dataclass
class Routing:
    """The claims of one cycle, from the registered types, prefixes and caps."""

    types: list[str]
    prefixes: list[str] | None  # ``with_type_prefixes``; None: exactly the registered types
    caps: Mapping[str, int]  # per-type concurrency caps
    make_filter: Callable[..., Any] = field(repr=False, default=lambda *key: key)
    unhandled: set[str] = field(default_factory=set)
    _filters: dict[Key, Any] = field(default_factory=dict, repr=False)

    def patterns(self) -> list[str]:
        """What the registry shows this worker claims."""
        return list(self.prefixes) if self.prefixes is not None else sorted(self.types)

    def claims(self, free: int, running: Mapping[str, int]) -> list[tuple[Any, int]]:
        """(type filter, how many) for each claim of this cycle."""
        if free <= 0:
            return []
        exact = [t for t in self.types if t not in self.caps] if self.prefixes is None else []
        prefixes = [p[:-1] for p in self.prefixes or () if p.endswith("%")]
        exact += [p for p in self.prefixes or () if not p.endswith("%") and p not in self.caps]
        out: list[tuple[Any, int]] = []
        for type_, cap in self.caps.items():
            room = min(free, cap - running.get(type_, 0))
            if room > 0 and self.routed(type_) and type_ not in self.unhandled:
                out.append((self.filter((type_,), (), ()), room))
        if exact or prefixes:
            excluded = tuple(set(self.caps) | self.unhandled)
            out.append((self.filter(tuple(exact), tuple(prefixes), excluded), free))
        return out

    def all_filters(self) -> list[Any]:
        """One filter per claim this poller can make (for "is anything due?" checks)."""
        return [f for f, _ in self.claims(1 << 30, {})]

    def routed(self, type_: str) -> bool:
        if self.prefixes is None:
            return True
        return any(type_ == p or (p.endswith("%") and type_.startswith(p[:-1])) for p in self.prefixes)

    def filter(self, exact: tuple[str, ...], prefixes: tuple[str, ...], exclude: tuple[str, ...]) -> Any:
        key: Key = (tuple(sorted(exact)), tuple(sorted(prefixes)), tuple(sorted(exclude)))
        made = self._filters.get(key)
        if made is None:
            made = self._filters[key] = self.make_filter(*key)
        return made
