"""Cron schedule policy: when a schedule fires and which missed slots to run.

Pure functions of their arguments: nothing here reads the clock or the
database; the schedule ticker passes the database's ``now``. Every returned
datetime is timezone-aware UTC.

Syntax: five fields, ``minute hour day-of-month month day-of-week``, as read
by cronsim (Debian cron semantics): ``*``, numbers, ranges ``a-b``, steps
``*/n`` and ``a-b/n``, lists ``a,b``, names ``JAN``-``DEC`` and ``SUN``-``SAT``
(any case; day-of-week 0 and 7 are Sunday), ``L``/``LW`` in day-of-month and
``5L``/``MON#2`` in day-of-week. When both day fields are restricted (neither
starts with ``*``) a day matches either one, otherwise both. The aliases
``@yearly``/``@annually``, ``@monthly``, ``@weekly``, ``@daily``/``@midnight``
and ``@hourly`` are accepted. A seconds or year field, ``@reboot`` and
``@every`` are rejected.

Daylight saving time: a schedule is evaluated in its IANA time zone the way
Debian cron does it. *Fixed-time* schedules (neither the minute nor the hour
field starts with ``*``, e.g. ``30 2 * * *``, ``0 9,17 * * 1-5``) follow the
wall clock: a time that does not exist on the spring-forward day (02:30 in
America/New_York on 2026-03-08) fires once, at the first valid instant after
the gap (03:00 EDT = 07:00 UTC; several such times, or one that is also a slot
at 03:00, collapse into that single fire), and a time that occurs twice on the
fall-back day (01:30 on 2026-11-01) fires once, at its first occurrence (01:30
EDT = 05:30 UTC). *Periodic* schedules (minute or hour field starting with
``*``: ``* * * * *``, ``*/15 * * * *``, ``0 * * * *``, ``0 */2 * * *``,
``@hourly``) follow elapsed time: they fire at every matching instant the local
clock actually shows, so an hourly schedule fires every real hour, 23 times on
the spring-forward day (there is no 02:00) and 25 times on the fall-back day
(01:00 EDT and 01:00 EST are an hour apart); no UTC instant ever fires twice.

Missed slots (``due_slots``): the ticker stores ``next_run_at``, the first slot
not yet fired. If it is later than ``now`` nothing is due. If exactly one slot
is due it is on time and fires (under ``MissedPolicy.NONE`` only if it is at
most ``grace``, default one minute, late). If several are due the tickers were
down: ``LATEST`` fires only the most recent, ``ALL`` fires the most recent
``max_catchup`` (default 100) oldest first, dropping older ones, and ``NONE``
fires none. The new ``next_run_at`` is always the first slot strictly after
``now``, so no slot fires twice.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from enum import Enum
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from simpleflow.core.errors import ValidationError

__all__ = ["CronSpec", "MissedPolicy", "due_slots"]

_UTC = timezone.utc
_SECOND = timedelta(seconds=1)
_DAY = timedelta(days=1)
_LAYOUT = "expected 5 fields: minute hour day-of-month month day-of-week"
_MAX_EXPR_LENGTH = 255  # the width of workflow_schedule.cron_expr
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, lowest, highest, other accepted values) for each of the five fields.
_FIELDS = (
    ("minute", 0, 59, ""),
    ("hour", 0, 23, ""),
    ("day-of-month", 1, 31, ", L (last day), LW (last weekday)"),
    ("month", 1, 12, " or JAN-DEC"),
    ("day-of-week", 0, 7, " or SUN-SAT (0 and 7 are Sunday), 5L (last Friday), MON#2 (second Monday)"),
)
# An epoch for the parse-time check that an expression fires at all.
_PROBE = datetime(2000, 1, 1, tzinfo=_UTC)


class MissedPolicy(str, Enum):
    """What a schedule does with slots that passed while no ticker was running."""

    LATEST = "latest"  # one catch-up run for the most recent missed slot
    ALL = "all"  # every missed slot, oldest first, at most max_catchup (newest kept)
    NONE = "none"  # skip missed slots


@dataclass(frozen=True)
class CronSpec:
    """A validated 5-field cron expression in an IANA time zone."""

    expr: str
    timezone: str = "UTC"
    _cron: str = field(init=False, repr=False, compare=False)
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, expr: str, timezone: str = "UTC") -> CronSpec:
        """Validate ``expr`` and ``timezone``; raise ValidationError saying what to fix."""
        return cls(expr, timezone)

    def __post_init__(self) -> None:
        expr, cron = _check_expr(self.expr)
        zone = _check_zone(self.timezone)
        object.__setattr__(self, "expr", expr)
        object.__setattr__(self, "_cron", cron)
        object.__setattr__(self, "_zone", zone)
        if next(self._slots_after(_PROBE), None) is None:
            raise ValidationError(f"invalid cron expression {expr!r}: it never fires")

    def next_after(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after`` (aware), as aware UTC."""
        _check_aware("after", after)
        slot = next(self._slots_after(after), None)
        if slot is None:  # cronsim gives up after 50 years without a match
            raise ValidationError(f"cron expression {self.expr!r} does not fire within 50 years after {after}")
        return slot

    def _slots_after(self, after: datetime) -> Iterator[datetime]:
        """Fire times strictly after ``after``, ascending, in UTC; no instant twice."""
        fields = self._cron.split()
        if self._zone is not _UTC and not fields[0].startswith("*") and not fields[1].startswith("*"):
            return self._fixed_slots(after)
        return self._periodic_slots(after)

    def _fixed_slots(self, after: datetime) -> Iterator[datetime]:
        """Fixed-time schedules: cronsim walks the wall clock and moves gap times past the gap."""
        last = after.astimezone(_UTC)
        for local in CronSim(self._cron, after.astimezone(self._zone)):
            slot = local.astimezone(_UTC)
            # Fall-back times come back at their first occurrence (fold=0), so
            # starting inside a repeated hour can yield an instant before
            # ``after``: that slot already fired.
            if slot > last:
                last = slot
                yield slot

    def _periodic_slots(self, after: datetime) -> Iterator[datetime]:
        """Periodic schedules: every instant at which the local clock shows a matching time.

        Between two offset changes the local clock is UTC plus a constant, so
        cronsim runs on that naive clock one stretch at a time. (cronsim's own
        DST stepping skips slots around 30-minute shifts, e.g. Australia/Lord_Howe.)
        """
        start = known = after.astimezone(_UTC)  # the zone's offset at `known` is `offset`
        offset = _offset(self._zone, start)
        while True:
            for local in CronSim(self._cron, (start + offset).replace(tzinfo=None)):
                slot = (local - offset).replace(tzinfo=_UTC)
                change = self._offset_change(known, slot, offset)
                if change is not None:  # restart at the change, on the new clock
                    start, known, offset = change - _SECOND, change, _offset(self._zone, change)
                    break
                start = known = slot
                yield slot
            else:  # cronsim found nothing within 50 years
                return

    def _offset_change(self, start: datetime, end: datetime, offset: timedelta) -> datetime | None:
        """The first instant in ``(start, end]`` whose UTC offset is not ``offset``, if any.

        Looks a day at a time (offsets never change twice in a day), then
        bisects to the second (offsets change on whole seconds).
        """
        if self._zone is _UTC:
            return None
        low = start
        while low < end:
            high = min(low + _DAY, end)
            if _offset(self._zone, high) != offset:
                base = low.replace(microsecond=0)  # same offset as low
                lo, hi = 0, math.ceil((high - base) / _SECOND)
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if _offset(self._zone, base + mid * _SECOND) == offset:
                        lo = mid
                    else:
                        hi = mid
                return base + hi * _SECOND
            low = high
        return None


def due_slots(
    spec: CronSpec,
    next_run_at: datetime,
    now: datetime,
    policy: MissedPolicy = MissedPolicy.LATEST,
    max_catchup: int = 100,
    grace: timedelta = timedelta(minutes=1),
) -> tuple[list[datetime], datetime]:
    """The slots to fire at ``now`` (UTC, ascending) and the new ``next_run_at``.

    ``next_run_at`` is the stored first slot not yet fired; it counts as a
    slot even if the expression was edited since. See the module docstring.
    """
    _check_aware("next_run_at", next_run_at)
    _check_aware("now", now)
    try:
        policy = MissedPolicy(policy)
    except ValueError:
        allowed = ", ".join(repr(p.value) for p in MissedPolicy)
        raise ValidationError(f"invalid missed-slot policy {policy!r}: expected one of {allowed}") from None
    if isinstance(max_catchup, bool) or not isinstance(max_catchup, int) or max_catchup < 1:
        raise ValidationError(f"max_catchup must be an integer >= 1, got {max_catchup!r}")
    if not isinstance(grace, timedelta) or grace < timedelta(0):
        raise ValidationError(f"grace must be a timedelta >= 0, got {grace!r}")

    first = next_run_at.astimezone(_UTC)
    if first > now:
        return [], first
    new_next = spec.next_after(now)
    if spec.next_after(first) > now:  # exactly one slot is due: it is on time
        if policy is MissedPolicy.NONE and now - first > grace:
            return [], new_next
        return [first], new_next
    if policy is MissedPolicy.NONE:
        return [], new_next
    limit = 1 if policy is MissedPolicy.LATEST else max_catchup
    return _latest_slots(spec, first, now.astimezone(_UTC), limit), new_next


def _latest_slots(spec: CronSpec, first: datetime, now: datetime, limit: int) -> list[datetime]:
    """The last ``limit`` slots in ``[first, now]`` (``first`` is one), ascending.

    Looks back from ``now`` over a doubling window, so a long outage of a
    frequent schedule costs about ``limit`` slots of work, not every missed one.
    """
    window = timedelta(minutes=1)
    while True:
        recent: deque[datetime] = deque(maxlen=limit)
        if now - first <= window:
            start = first
            recent.append(first)
        else:
            start = now - window
        for slot in spec._slots_after(start):
            if slot > now:
                break
            recent.append(slot)
        if start == first or len(recent) == limit:
            return list(recent)
        window *= 2


def _offset(zone: tzinfo, instant: datetime) -> timedelta:
    """The zone's UTC offset at an aware instant."""
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # astimezone to a zone always gives an aware datetime
    return offset


def _check_aware(name: str, value: datetime) -> None:
    """Reject naive datetimes: a slot must be a single instant."""
    if not isinstance(value, datetime):
        raise ValidationError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{name} must be timezone-aware (e.g. tzinfo=timezone.utc), got naive {value}")


def _check_expr(expr: object) -> tuple[str, str]:
    """Return (normalized expression, 5-field expression for cronsim)."""
    if not isinstance(expr, str):
        raise ValidationError(f"cron expression must be a str, got {type(expr).__name__} ({_LAYOUT})")
    text = " ".join(expr.split())
    if len(text) > _MAX_EXPR_LENGTH:
        raise ValidationError(f"invalid cron expression: longer than {_MAX_EXPR_LENGTH} characters ({_LAYOUT})")

    def invalid(reason: str) -> ValidationError:
        return ValidationError(f"invalid cron expression {expr!r}: {reason} ({_LAYOUT})")

    if not text:
        raise invalid("it is empty")
    if text.startswith("@"):
        alias = text.lower()
        if alias not in _ALIASES:
            raise invalid(f"unsupported alias {text!r}; supported: {', '.join(_ALIASES)}")
        return alias, _ALIASES[alias]
    fields = text.split()
    if len(fields) != len(_FIELDS):
        extra = "; seconds and year fields are not supported" if len(fields) > len(_FIELDS) else ""
        raise invalid(f"got {len(fields)} field{'s' if len(fields) != 1 else ''}{extra}")
    try:
        CronSim(text, _PROBE)
    except (CronSimError, ValueError, LookupError, AssertionError) as exc:
        raise invalid(_explain(fields, str(exc))) from None
    return text, text


def _explain(fields: list[str], message: str) -> str:
    """Turn cronsim's terse 'Bad <field>' into which value is wrong and what is allowed."""
    for index, (name, low, high, others) in enumerate(_FIELDS):
        if message != f"Bad {name}":
            continue
        value = fields[index]
        for term in value.split(","):
            base = term.split("/", 1)[0].split("#", 1)[0].removesuffix("L").removesuffix("l")
            for part in base.split("-"):
                if part.isascii() and part.isdigit() and not low <= int(part) <= high:
                    return f"{name} value {int(part)} out of range {low}-{high}"
        if name == "day-of-month" and all(p.isascii() and p.isdigit() for p in value.split(",")):
            return f"day-of-month {value!r} never occurs in month {fields[3]!r}"
        return f"cannot read {name} field {value!r}; use *, {low}-{high}{others}, lists a,b, ranges a-b, steps */n"
    return message


def _check_zone(name: object) -> tzinfo:
    """Load an IANA zone; plain UTC uses datetime.timezone.utc (cronsim's fast path)."""
    if not isinstance(name, str):
        raise ValidationError(f"time zone must be an IANA name such as 'Europe/London', got {name!r}")
    if name == "UTC":
        return _UTC
    if name == "localtime":  # the host's zone, not a portable IANA name
        raise ValidationError("unknown time zone 'localtime': use an IANA name such as 'Europe/London'")
    try:
        return ZoneInfo(name)
    except (ValueError, LookupError, OSError):
        raise ValidationError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/London' or 'America/New_York'"
        ) from None
