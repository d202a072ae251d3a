"""The run lifecycle: statuses, the transitions between them, and the rule for the last attempt.

Every change of a run's state is one of the named transitions below. The store
writes each one with its audit event in one transaction, and nothing else writes
a run's status: ``store.leases.apply`` a worker's outcomes (and ``expire``, through
it), ``store.runs`` cancel and requeue, ``store.leases.fail_overdue`` a deadline
(fail for good), ``store.steps.wake_waiting`` a signal that makes a waiting run
due, ``store.composition`` ``wake_parents`` a child's end that makes its waiting
parent due (in the transaction of the child's terminal transition). This module is the one place that says what each transition does::

    pending ──claim──▶ leased ──complete──▶ succeeded
       ▲                 │ ├──fail───────▶ failed        (last attempt, NonRetryable, give_up_on, deadline)
       │                 │ ├──retry──────▶ pending       (later run_at; the attempt is spent)
       │                 │ ├──park───────▶ sleeping | waiting | pending   (the attempt is refunded)
       ├──release────────┘ └──expire─────▶ pending | failed   (another worker's lease ran out)
       └──requeue──── failed | cancelled            cancel: any unfinished status ─▶ cancelled

A worker's writes are fenced by its ``Lease``: the run id and the lease token
the claim took. The token is a per-run counter incremented by every claim and
never refunded, reset or reused, so a write from any earlier execution of the
run (released, expired, cancelled and requeued, timed out) matches nothing.
``attempt`` is only the user-facing count of attempts spent.
"""

from __future__ import annotations

import enum
import traceback
from dataclasses import dataclass
from typing import Any

from simpleflow.core.errors import NonRetryable
from simpleflow.core.retry import RetryPolicy


class Status(str, enum.Enum):
    """Where a run is. ``leased``: a worker holds it. The last three are terminal."""

    PENDING = "pending"
    LEASED = "leased"
    SLEEPING = "sleeping"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


STATUSES = tuple(s.value for s in Status)
#: statuses a claim takes once ``run_at`` has passed
DUE_STATUSES = (Status.PENDING.value, Status.SLEEPING.value, Status.WAITING.value)
TERMINAL_STATUSES = (Status.SUCCEEDED.value, Status.FAILED.value, Status.CANCELLED.value)
#: statuses a requeue (``client.retry``, ``simpleflow retry --status``) takes back
REQUEUE_STATUSES = (Status.FAILED.value, Status.CANCELLED.value)
#: statuses a run may be parked in
PARK_STATUSES = (Status.SLEEPING.value, Status.WAITING.value, Status.PENDING.value)


class Kind(str, enum.Enum):
    """The named transitions. The value is the audit event each one writes."""

    COMPLETE = "succeeded"
    RETRY = "retried"
    FAIL = "failed"
    PARK = "parked"
    RELEASE = "released"
    CANCEL = "cancelled"
    REQUEUE = "requeued"
    EXPIRE = "lease_expired"


def is_last_attempt(attempt: int, max_attempts: int) -> bool:
    """The one rule for "that was the last attempt": no retry follows it."""
    return attempt >= max_attempts


@dataclass(frozen=True)
class Lease:
    """What fences a worker's writes about one run: the run and the token of this claim."""

    run_id: str
    token: int


@dataclass(frozen=True)
class Transition:
    """A worker's outcome for one leased run, as the store applies it.

    ``status``: the new status. ``delay``: seconds from now (database clock) to the
    new ``run_at``; None keeps it, and for a park None means "until a signal".
    ``refund``: give the attempt back (park, release). ``signal``: a park that waits
    for this signal name becomes due at once if such a signal is already stored.
    ``child``: a park that waits for this child run becomes due at once if the child
    has already finished (its own completion wakes the parent otherwise).
    """

    kind: Kind
    status: str
    result: Any = None
    error: str | None = None
    delay: float | None = None
    refund: bool = False
    reason: str | None = None
    signal: str | None = None
    child: str | None = None

    @property
    def guarded(self) -> bool:
        """A park that must see what arrived while it was being written (a signal, a child's end)."""
        return self.signal is not None or self.child is not None

    @property
    def event(self) -> str:
        """The audit event's type (a park records the status it parks in)."""
        return self.status if self.kind is Kind.PARK else self.kind.value

    def detail(self) -> dict[str, Any] | None:
        """The audit event's detail: the error's last line, the delay, the reason."""
        out: dict[str, Any] = {}
        if self.error is not None:
            out["error"] = error_summary(self.error)
        if self.kind is Kind.RETRY:
            out["retry_in_seconds"] = round(self.delay or 0.0, 3)
        if self.kind is Kind.PARK:
            out["wake_in_seconds"] = self.delay
        if self.kind is Kind.EXPIRE:
            out = {"now": self.status}
        elif self.reason is not None:
            out["reason"] = self.reason
        return out or None


def complete(result: Any) -> Transition:
    """The handler returned: succeeded, with its (JSON) result."""
    return Transition(Kind.COMPLETE, Status.SUCCEEDED.value, result=result)


def retry(error: str, delay: float) -> Transition:
    """The attempt failed and another follows after ``delay`` seconds."""
    return Transition(Kind.RETRY, Status.PENDING.value, error=clean_text(error), delay=max(0.0, delay))


def fail(error: str) -> Transition:
    """The run failed for good."""
    return Transition(Kind.FAIL, Status.FAILED.value, error=clean_text(error))


def park(status: str, wake_in: float | None, *, signal: str | None = None, child: str | None = None) -> Transition:
    """Suspend a workflow run until ``wake_in`` seconds from now (None: until a signal or a
    child's end wakes it)."""
    if status not in PARK_STATUSES:
        raise ValueError(f"cannot park a run as {status!r}")
    return Transition(
        Kind.PARK,
        status,
        delay=None if wake_in is None else max(0.0, wake_in),
        refund=True,
        signal=signal,
        child=child,
    )


def release(reason: str) -> Transition:
    """Give the run back untouched: pending, due now, its attempt not spent."""
    return Transition(Kind.RELEASE, Status.PENDING.value, delay=0.0, refund=True, reason=reason)


def expire(attempt: int, max_attempts: int, worker_id: str | None) -> Transition:
    """Another worker's lease ran out (it died or hung): the attempt is spent; the run is due
    again at once, or fails for good if that was its last attempt."""
    if is_last_attempt(attempt, max_attempts):
        error = f"lease expired: worker {worker_id} stopped renewing during the last attempt"
        return Transition(Kind.EXPIRE, Status.FAILED.value, error=error, reason=Status.FAILED.value)
    return Transition(Kind.EXPIRE, Status.PENDING.value, delay=0.0, reason=Status.PENDING.value)


def after_failure(
    error: BaseException, attempt: int, max_attempts: int, policy: RetryPolicy, *, text: str | None = None
) -> Transition:
    """What a failed attempt leads to: ``retry`` with the policy's backoff, or ``fail``
    for good on the last attempt, a ``NonRetryable`` error or one of the policy's
    ``give_up_on`` types."""
    text = text if text is not None else format_error(error)
    permanent = isinstance(error, NonRetryable) or getattr(error, "permanent", False) is True
    if permanent or policy.gives_up_on(error) or is_last_attempt(attempt, max_attempts):
        return fail(text)
    return retry(text, policy.delay(attempt).total_seconds())


def format_error(error: BaseException) -> str:
    """The traceback of an error, as stored in ``last_error``."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def clean_text(text: str) -> str:
    """Text every database can store: no NUL, no lone surrogates (replaced, not dropped silently)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def error_summary(text: str, limit: int = 500) -> str:
    """The last non-blank line of a traceback ("ValueError: boom"), for events and logs."""
    line = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    return line[:limit]
