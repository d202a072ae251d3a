"""What ``Client`` and ``AsyncClient`` share: the submission builder, the argument checks and
the work each call does on a connection. Only how that work is run differs (a thread's
transaction, or ``await conn.run_sync``), so both clients validate, fail and write alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection

from simpleflow.core import tracing
from simpleflow.core.errors import InvalidState, ValidationError
from simpleflow.core.ids import new_id
from simpleflow.core.limits import check_concurrency_key, check_debounce_key
from simpleflow.core.models import RunEvent, RunInfo, StepInfo
from simpleflow.core.states import STATUSES
from simpleflow.core.validation import (
    check_aware,
    check_duration,
    check_id,
    check_int,
    check_key,
    check_max_attempts,
    check_name,
    check_priority,
    check_type,
    encode_json,
    parse_as,
)
from simpleflow.store import Store
from simpleflow.store.new_runs import NewRun

B = TypeVar("B", bound="Builder")


class Builder:
    """A run being built: ``client.submit(type, payload).with_…()``, then ``execute()``.

    Every ``with_…`` validates its argument at once and returns the same builder.
    """

    def __init__(self, type: str, payload: Any, payload_limit: int) -> None:
        self.type = check_type(type)
        self.payload, self.payload_text = encode_json(payload, "payload", payload_limit)
        self.idempotency_key: str | None = None
        self.priority = 100
        self.max_attempts = 3
        self.run_at: datetime | None = None
        self.delay = 0.0
        self.deadline_at: datetime | None = None
        self.deadline_in: float | None = None
        self.concurrency_key: str | None = None
        self.debounce_key: str | None = None

    def with_idempotency(self: B, key: str) -> B:
        """A duplicate key creates nothing; ``execute()`` returns the existing run's id."""
        if self.debounce_key is not None:
            raise ValidationError("with_idempotency cannot be combined with with_debounce: choose one key")
        self.idempotency_key = check_key(key)
        return self

    def with_concurrency_key(self: B, key: str) -> B:
        """Runs sharing ``key`` are leased one at a time across all workers, in order of
        priority, then due time."""
        self.concurrency_key = check_concurrency_key(key)
        return self

    def with_debounce(self: B, key: str, delay: timedelta | float) -> B:
        """Due ``delay`` from now; while a run with ``key`` has not started, this submission
        replaces its payload, moves its due time to now + ``delay`` and returns its id."""
        if self.idempotency_key is not None:
            raise ValidationError("with_debounce cannot be combined with with_idempotency: choose one key")
        self.debounce_key = check_debounce_key(key)
        self.run_in(delay)
        return self

    def with_priority(self: B, priority: int) -> B:
        """Lower runs first; default 100."""
        self.priority = check_priority(priority)
        return self

    def with_max_attempts(self: B, attempts: int) -> B:
        """How many times the run may be tried; default 3."""
        self.max_attempts = check_max_attempts(attempts)
        return self

    def with_deadline(self: B, deadline: datetime | timedelta | float) -> B:
        """The run must finish by then (an aware datetime, or a duration from the database's
        clock at insert time), across retries and suspensions; past it, it ends ``failed``
        with ``DeadlineExceeded``."""
        if isinstance(deadline, datetime):
            self.deadline_at, self.deadline_in = check_aware(deadline, "deadline"), None
        else:
            self.deadline_in = check_duration(deadline, "deadline", allow_zero=False).total_seconds()
            self.deadline_at = None
        return self

    def run_in(self: B, delay: timedelta | float) -> B:
        """Due ``delay`` after the database's clock at insert time."""
        self.delay = check_duration(delay, "run_in delay").total_seconds()
        self.run_at = None
        return self

    def run_after(self: B, when: datetime) -> B:
        """Due at an absolute (timezone-aware) time."""
        self.run_at = check_aware(when, "run_after time")
        self.delay = 0.0
        return self

    def to_new_run(self) -> NewRun:
        return NewRun(
            id=new_id(),
            type=self.type,
            payload=self.payload,
            priority=self.priority,
            max_attempts=self.max_attempts,
            idempotency_key=self.idempotency_key,
            run_at=self.run_at,
            delay=self.delay,
            payload_text=self.payload_text,
            deadline_at=self.deadline_at,
            deadline_in=self.deadline_in,
            concurrency_key=self.concurrency_key,
            debounce_key=self.debounce_key,
        )


def new_runs(submissions: object, submit: Callable[[str, Any], Builder]) -> list[NewRun]:
    """``submit_many``'s items (builders not executed, or ``(type, payload)`` pairs) as runs."""
    if isinstance(submissions, (str, bytes)) or not isinstance(submissions, Sequence):
        raise ValidationError("submit_many takes a list of client.submit(...) builders or (type, payload) pairs")
    runs = []
    for i, item in enumerate(submissions):
        if isinstance(item, Builder):
            runs.append(item.to_new_run())
        elif isinstance(item, tuple) and len(item) == 2:
            runs.append(submit(item[0], item[1]).to_new_run())
        else:
            raise ValidationError(
                f"submit_many item {i} is {type(item).__name__}; expected a builder or a (type, payload) pair"
            )
    return runs


def submit_span(runs: Sequence[NewRun], tenant: str) -> AbstractContextManager[tracing.Span]:
    """The producer span of one submit (or one ``submit_many``) by a client of ``tenant``: its
    trace context is stored with the runs, so their attempts continue this trace."""
    if not tracing.enabled():
        return tracing.NO_SCOPE
    types = {r.type for r in runs}
    name = f"submit {runs[0].type}" if len(types) == 1 else "submit_many"
    attributes = {"simpleflow.run.count": len(runs), "simpleflow.tenant": tenant}
    return tracing.span(name, attributes=attributes, kind="producer")


def traced(runs: list[NewRun], span: tracing.Span) -> list[NewRun]:
    """The runs carrying the span's trace context (the same runs when tracing is off)."""
    context = span.context()
    if context is None:
        return runs
    return [replace(r, trace_context=context) for r in runs]


# -- the work of each call, on a connection ---------------------------------------------------


def run_filters(
    type: str | None,
    status: str | None,
    idempotency_key: str | None,
    limit: int,
    offset: int,
    parent_id: str | None = None,
) -> dict[str, Any]:
    """``list_runs``' filters, checked (``parent_id``: the children of that run)."""
    if type is not None:
        check_type(type)
    if status is not None and status not in STATUSES:
        raise ValidationError(f"unknown status {status!r}; statuses are: {', '.join(STATUSES)}")
    if idempotency_key is not None:
        check_key(idempotency_key)
    check_int(limit, "limit", 1, 10_000)
    check_int(offset, "offset", 0, 2**62)
    if parent_id is not None:
        parent_id = check_id(parent_id, "parent")
    return {
        "type": type,
        "status": status,
        "idempotency_key": idempotency_key,
        "limit": limit,
        "offset": offset,
        "parent_id": parent_id,
    }


def read_events(store: Store, run_id: str) -> Callable[[Connection], list[RunEvent]]:
    """The run's audit trail, oldest first (``NotFound`` if the run does not exist)."""
    run_id = check_id(run_id)

    def read(conn: Connection) -> list[RunEvent]:
        store.runs.get_run(conn, run_id)
        return store.runs.get_events(conn, run_id)

    return read


def read_steps(store: Store, run_id: str) -> Callable[[Connection], list[StepInfo]]:
    """The recorded steps of a workflow run, in order (``NotFound`` if the run does not exist)."""
    run_id = check_id(run_id)

    def read(conn: Connection) -> list[StepInfo]:
        store.runs.get_run(conn, run_id)
        return store.steps.list_steps(conn, run_id)

    return read


def deliver(store: Store, run_id: str, name: str, payload: Any, payload_limit: int) -> Callable[[Connection], bool]:
    """Store a signal for a workflow run; True when the run was woken."""
    run_id = check_id(run_id)
    name = check_name(name, "signal name")
    value, _ = encode_json(payload, "signal payload", payload_limit)
    return lambda conn: store.steps.deliver(conn, run_id, name, value)


def result_of(info: RunInfo, model: Any) -> Any:
    """A succeeded run's result validated into ``model``; ``InvalidState`` for any other run."""
    if info.status != "succeeded":
        raise InvalidState(f"run {info.id} is {info.status}; only a succeeded run has a result")
    return parse_as(info.result, model, f"result of run {info.id}")


def wait_timeout_message(info: RunInfo, timeout: timedelta) -> str:
    return f"run {info.id} is still {info.status} after {timeout}"


def read_event(store: Store, run_id: str, key: str) -> Callable[[Connection], tuple[bool, Any]]:
    """``get_event``'s one read: (found, latest value) of the run's ``key`` (``NotFound`` for no run)."""
    run_id = check_id(run_id)
    key = check_name(key, "event key")

    def read(conn: Connection) -> tuple[bool, Any]:
        store.runs.status_of(conn, run_id)
        return store.composition.get_event(conn, run_id, key)

    return read


def event_timeout_message(run_id: str, key: str, timeout: timedelta) -> str:
    return f"run {run_id} has not published event {key!r} within {timeout}"
