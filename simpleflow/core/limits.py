"""Flow control, the pure part: what a limit is, which types it governs, how rates are written.

A limit is stored in the database under a *pattern*: an exact type
(``email.send.v1``) or the start of one followed by ``%`` (``billing.%``), the
rule of ``with_type_prefixes``. A run is governed by every limit whose pattern
matches its type. The store enforces limits at claim time; this module only
validates and matches, so it is tested without a database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from simpleflow.core.errors import ValidationError
from simpleflow.core.validation import INT32, check_duration, check_int, check_prefix

_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: the longest rate window (a window longer than this is a schedule, not a rate)
MAX_RATE_PERIOD = timedelta(days=1)


class Limit(BaseModel):
    """One limit as ``client.list_limits()`` shows it, with its current usage."""

    model_config = ConfigDict(frozen=True)

    pattern: str
    concurrency: int | None = None
    rate_count: int | None = None
    rate_period: timedelta | None = None
    pause_after_failures: int | None = None
    #: the numbers hold for each tenant on its own (``set_limit(..., per_tenant=True)``)
    per_tenant: bool = False
    paused: bool = False
    #: why the pattern is paused: ``"manual"`` or ``"circuit breaker"``
    paused_reason: str | None = None
    #: consecutive failed attempts of matching types (the circuit breaker's count)
    consecutive_failures: int = 0
    #: runs of matching types leased right now (the concurrency in use); of every tenant
    #: together, or of the client's tenant for a tenant-bound client
    leased: int = 0
    #: attempts of matching types started in the current rate window (counted as ``leased``)
    started_in_window: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def rate(self) -> tuple[int, timedelta] | None:
        """``(n, per)`` as given to ``set_limit``, or None."""
        if self.rate_count is None or self.rate_period is None:
            return None
        return self.rate_count, self.rate_period


@dataclass(frozen=True)
class LimitSpec:
    """A validated ``set_limit`` call."""

    pattern: str
    concurrency: int | None
    rate_count: int | None
    rate_seconds: float | None
    pause_after_failures: int | None
    per_tenant: bool = False


def check_pattern(value: object) -> str:
    """An exact type or ``prefix%`` (the ``with_type_prefixes`` rule); a bare ``%`` matches every type."""
    try:
        return check_prefix(value)
    except ValidationError:
        raise ValidationError(
            f"invalid limit pattern {value!r}: use a type name ('billing.invoice.v1') "
            "or the start of one followed by % ('billing.%'); % may appear only at the end"
        ) from None


def check_rate(value: object) -> tuple[int, float]:
    """``(n, per)`` with ``n`` >= 1 and ``per`` a positive duration (or ``"100/1m"`` text)."""
    if isinstance(value, str):
        return parse_rate(value)
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValidationError(f"rate must be a pair (count, period) such as (100, timedelta(minutes=1)), got {value!r}")
    count = check_int(value[0], "rate count", 1, INT32)
    period = check_duration(value[1], "rate period", allow_zero=False)
    if period > MAX_RATE_PERIOD:
        raise ValidationError(f"rate period must be at most {MAX_RATE_PERIOD}, got {period}")
    if period < timedelta(milliseconds=1):
        raise ValidationError(f"rate period must be at least 1 ms, got {period}")
    return count, period.total_seconds()


def parse_rate(text: str) -> tuple[int, float]:
    """``"100/1m"``, ``"5/s"``, ``"10/500ms"``, ``"3/2h"`` -> (count, seconds). A bare number
    after the slash is seconds; a rate without a period (``"100"``) is rejected."""
    match = _RATE_RE.fullmatch(text)
    if match is None or (not match.group(2) and not match.group(3)):
        raise ValidationError(
            f"invalid rate {text!r}: write COUNT/PERIOD such as 100/1m, 5/s, 10/500ms or 3/2h (units ms, s, m, h, d)"
        )
    number = float(match.group(2)) if match.group(2) else 1.0
    return check_rate((int(match.group(1)), timedelta(seconds=number * _UNITS[match.group(3) or "s"])))


def limit_spec(
    pattern: object,
    concurrency: object = None,
    rate: object = None,
    pause_after_failures: object = None,
    per_tenant: object = False,
) -> LimitSpec:
    """Validate a ``set_limit`` call; at least one of the three limits must be given.
    ``per_tenant`` makes the concurrency and the rate hold for each tenant on its own (the
    circuit breaker counts the failures of every tenant together: it guards the type)."""
    if not isinstance(per_tenant, bool):
        raise ValidationError(f"per_tenant must be True or False, got {per_tenant!r}")
    pattern = check_pattern(pattern)
    if concurrency is None and rate is None and pause_after_failures is None:
        raise ValidationError(
            f"set_limit({pattern!r}) needs at least one of concurrency=, rate=, pause_after_failures= "
            "(use clear_limit to remove a limit, pause to stop claims)"
        )
    conc = None if concurrency is None else check_int(concurrency, "concurrency", 1, INT32)
    count, seconds = (None, None) if rate is None else check_rate(rate)
    breaker = (
        None if pause_after_failures is None else check_int(pause_after_failures, "pause_after_failures", 1, INT32)
    )
    if per_tenant and conc is None and count is None:
        raise ValidationError(
            f"set_limit({pattern!r}, per_tenant=True) needs concurrency= or rate= (the numbers each tenant gets)"
        )
    return LimitSpec(pattern, conc, count, seconds, breaker, per_tenant)


def matches(pattern: str, type_: str) -> bool:
    """Does the limit under ``pattern`` govern runs of ``type_``?"""
    if pattern.endswith("%"):
        return type_.startswith(pattern[:-1])
    return type_ == pattern


def governs_any(pattern: str, types: Iterable[str], prefixes: Iterable[str] | None) -> bool:
    """Could the limit under ``pattern`` govern a run a poller claims (its exact ``types``, or,
    with ``with_type_prefixes``, its ``prefixes``)?"""
    if prefixes is None:
        return any(matches(pattern, t) for t in types)
    for p in prefixes:
        if not p.endswith("%"):
            if matches(pattern, p):
                return True
            continue
        head = p[:-1]  # the poller claims every type starting with head
        if pattern.endswith("%"):
            if head.startswith(pattern[:-1]) or pattern[:-1].startswith(head):
                return True
        elif pattern.startswith(head):
            return True
    return False


def check_concurrency_key(value: object) -> str:
    return _check_key(value, "concurrency key")


def check_debounce_key(value: object) -> str:
    return _check_key(value, "debounce key")


def _check_key(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 255 or "\x00" in value:
        raise ValidationError(f"{what} must be a non-empty string of at most 255 characters, got {value!r}")
    return value
