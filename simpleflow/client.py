"""The producer side: submit intent, inspect runs, cancel, retry, signal, schedule."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from sqlalchemy import Connection, Engine

from simpleflow import admin, schedules
from simpleflow.admin import Stats
from simpleflow.core.errors import InvalidState, ValidationError, WaitTimeout
from simpleflow.core.ids import new_id
from simpleflow.core.limits import check_concurrency_key, check_debounce_key
from simpleflow.core.models import RunEvent, RunInfo, Schedule, StepInfo
from simpleflow.core.states import STATUSES
from simpleflow.core.validation import (
    DEFAULT_PAYLOAD_LIMIT,
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
from simpleflow.db.database import Database
from simpleflow.db.migrate import migrate
from simpleflow.db.notify import local_bus
from simpleflow.limits import LimitMethods
from simpleflow.schedules import ScheduleBuilder
from simpleflow.store import Store
from simpleflow.store.runs import NewRun

T = TypeVar("T")


class Submission:
    """A run being built: ``client.submit(type, payload).with_…().execute()``.

    Every ``with_…`` validates its argument at once and returns the same builder.
    """

    def __init__(self, client: Client, type: str, payload: Any) -> None:
        self._client = client
        self.type = check_type(type)
        self.payload, self.payload_text = encode_json(payload, "payload", client.payload_limit)
        self.idempotency_key: str | None = None
        self.priority = 100
        self.max_attempts = 3
        self.run_at: datetime | None = None
        self.delay = 0.0
        self.deadline_at: datetime | None = None
        self.deadline_in: float | None = None
        self.concurrency_key: str | None = None
        self.debounce_key: str | None = None

    def with_idempotency(self, key: str) -> Submission:
        """A duplicate key creates nothing; ``execute()`` returns the existing run's id."""
        if self.debounce_key is not None:
            raise ValidationError("with_idempotency cannot be combined with with_debounce: choose one key")
        self.idempotency_key = check_key(key)
        return self

    def with_concurrency_key(self, key: str) -> Submission:
        """Runs sharing ``key`` are leased one at a time across all workers, in order of
        priority, then due time."""
        self.concurrency_key = check_concurrency_key(key)
        return self

    def with_debounce(self, key: str, delay: timedelta | float) -> Submission:
        """Due ``delay`` from now; while a run with ``key`` has not started, this submission
        replaces its payload, moves its due time to now + ``delay`` and returns its id."""
        if self.idempotency_key is not None:
            raise ValidationError("with_debounce cannot be combined with with_idempotency: choose one key")
        self.debounce_key = check_debounce_key(key)
        self.run_in(delay)
        return self

    def with_priority(self, priority: int) -> Submission:
        """Lower runs first; default 100."""
        self.priority = check_priority(priority)
        return self

    def with_max_attempts(self, attempts: int) -> Submission:
        """How many times the run may be tried; default 3."""
        self.max_attempts = check_max_attempts(attempts)
        return self

    def with_deadline(self, deadline: datetime | timedelta | float) -> Submission:
        """The run must finish by then (an aware datetime, or a duration from the database's
        clock at insert time), across retries and suspensions; past it, it ends ``failed``
        with ``DeadlineExceeded``."""
        if isinstance(deadline, datetime):
            self.deadline_at, self.deadline_in = check_aware(deadline, "deadline"), None
        else:
            self.deadline_in = check_duration(deadline, "deadline", allow_zero=False).total_seconds()
            self.deadline_at = None
        return self

    def run_in(self, delay: timedelta | float) -> Submission:
        """Due ``delay`` after the database's clock at insert time."""
        self.delay = check_duration(delay, "run_in delay").total_seconds()
        self.run_at = None
        return self

    def run_after(self, when: datetime) -> Submission:
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

    def execute(self, connection: Connection | None = None) -> str:
        """Insert the run and return its id.

        With ``connection``, the insert joins the caller's open transaction: the run
        exists only if the caller commits.
        """
        return self._client._insert([self.to_new_run()], connection)[0]

    def execute_created(self, connection: Connection | None = None) -> tuple[str, bool]:
        """Like ``execute()``, and say whether this call created the run (``False``: the
        idempotency key already held one, whose id is returned)."""
        new = self.to_new_run()
        run_id = self._client._insert([new], connection)[0]
        return run_id, run_id == new.id


class ScheduleMethods:
    """``Client``'s schedule methods: thin calls into ``simpleflow.schedules``."""

    store: Store
    payload_limit: int

    def schedule(self, type: str, payload: Any = None) -> ScheduleBuilder:
        """Start building a cron schedule: ``.cron(expr).in_timezone(tz).create()``."""
        return ScheduleBuilder(self.store, type, payload, payload_limit=self.payload_limit)

    def list_schedules(self, include_deleted: bool = False) -> list[Schedule]:
        return schedules.list_schedules(self.store, include_deleted=include_deleted)

    def get_schedule(self, schedule_id: str) -> Schedule:
        return schedules.get_schedule(self.store, schedule_id)

    def pause_schedule(self, schedule_id: str) -> None:
        schedules.pause_schedule(self.store, schedule_id)

    def resume_schedule(self, schedule_id: str) -> None:
        """Enable a paused schedule; its next slot is computed from now (no burst of missed slots)."""
        schedules.resume_schedule(self.store, schedule_id)

    def delete_schedule(self, schedule_id: str) -> None:
        schedules.delete_schedule(self.store, schedule_id)


class Client(ScheduleMethods, LimitMethods):
    """Producer API over one database. Owns its engine when built from a URL."""

    def __init__(
        self,
        database: str | Engine,
        *,
        schema: str | None = None,
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        _db: Database | None = None,
    ) -> None:
        self.db = _db or Database.open(database, schema=schema)
        self.store = Store(self.db)
        self.payload_limit = check_int(payload_limit, "payload_limit", 1, 256 * 1024 * 1024)

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Dispose of the engine if this client created it."""
        self.db.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def auto_migrate(self) -> None:
        """Apply pending migrations (the same revisions as ``alembic upgrade head``)."""
        migrate(self.db)

    # -- submitting -----------------------------------------------------------------

    def submit(self, type: str, payload: Any = None) -> Submission:
        """Start building a run of ``type`` with a JSON-serializable or pydantic ``payload``."""
        return Submission(self, type, payload)

    def submit_many(
        self, submissions: Sequence[Submission | tuple[str, Any]], connection: Connection | None = None
    ) -> list[str]:
        """Insert many runs in one statement and return their ids in order.

        Items are ``client.submit(...)`` builders (not executed) or ``(type, payload)`` pairs.
        Idempotency keys are honoured, also between items of the same batch.
        """
        if isinstance(submissions, (str, bytes)) or not isinstance(submissions, Sequence):
            raise ValidationError("submit_many takes a list of client.submit(...) builders or (type, payload) pairs")
        runs = []
        for i, item in enumerate(submissions):
            if isinstance(item, Submission):
                runs.append(item.to_new_run())
            elif isinstance(item, tuple) and len(item) == 2:
                runs.append(self.submit(item[0], item[1]).to_new_run())
            else:
                raise ValidationError(
                    f"submit_many item {i} is {type(item).__name__}; expected a builder or a (type, payload) pair"
                )
        if not runs:
            return []
        return self._insert(runs, connection)

    def _insert(self, runs: list[NewRun], connection: Connection | None) -> list[str]:
        if connection is not None:
            ids = self.store.runs.insert_runs(connection, runs)
        else:
            ids = self.db.run(
                lambda conn: self.store.runs.insert_runs(conn, runs),
                autocommit=len(runs) == 1 and self.db.dialect.autocommit_writes,
            )
        local_bus.publish(self.db.key)
        return ids

    # -- reading ----------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunInfo:
        """The run, or ``NotFound``."""
        run_id = check_id(run_id)
        return self.db.run(lambda conn: self.store.runs.get_run(conn, run_id), read=True)

    def list_runs(
        self,
        type: str | None = None,
        status: str | None = None,
        idempotency_key: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Runs matching every given filter, newest first."""
        if type is not None:
            check_type(type)
        if status is not None and status not in STATUSES:
            raise ValidationError(f"unknown status {status!r}; statuses are: {', '.join(STATUSES)}")
        if idempotency_key is not None:
            check_key(idempotency_key)
        check_int(limit, "limit", 1, 10_000)
        check_int(offset, "offset", 0, 2**62)
        return self.db.run(
            lambda conn: self.store.runs.list_runs(
                conn, type=type, status=status, idempotency_key=idempotency_key, limit=limit, offset=offset
            ),
            read=True,
        )

    def get_events(self, run_id: str) -> list[RunEvent]:
        """The run's audit trail, oldest first (``NotFound`` if the run does not exist)."""
        run_id = check_id(run_id)

        def read(conn: Connection) -> list[RunEvent]:
            self.store.runs.get_run(conn, run_id)
            return self.store.runs.get_events(conn, run_id)

        return self.db.run(read, read=True)

    def wait(self, run_id: str, timeout: timedelta | float = timedelta(seconds=30)) -> RunInfo:
        """Block until the run is finished and return it; ``WaitTimeout`` (a TimeoutError) otherwise."""
        run_id = check_id(run_id)
        timeout = check_duration(timeout, "timeout")
        deadline = time.monotonic() + timeout.total_seconds()
        pause = 0.005
        while True:
            info = self.get_run(run_id)
            if info.is_terminal:
                return info
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"run {run_id} is still {info.status} after {timeout}")
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, 0.25)

    @overload
    def get_result(self, run_id: str, model: type[T]) -> T: ...
    @overload
    def get_result(self, run_id: str, model: Any) -> Any: ...
    def get_result(self, run_id: str, model: Any) -> Any:
        """The succeeded run's result validated into ``model``: a pydantic model, a dataclass,
        ``dict``, ``list[int]``, any type pydantic's ``TypeAdapter`` handles."""
        info = self.get_run(run_id)
        if info.status != "succeeded":
            raise InvalidState(f"run {run_id} is {info.status}; only a succeeded run has a result")
        return parse_as(info.result, model, f"result of run {run_id}")

    # -- changing ---------------------------------------------------------------------

    def cancel(self, run_id: str) -> None:
        """Cancel an unfinished run (``NotFound``, ``AlreadyComplete``)."""
        run_id = check_id(run_id)
        self.db.run(lambda conn: self.store.runs.cancel(conn, run_id))

    def retry(self, run_id: str) -> None:
        """Run a failed or cancelled run again, with a fresh set of attempts."""
        run_id = check_id(run_id)
        self.db.run(lambda conn: self.store.runs.requeue_one(conn, run_id))
        local_bus.publish(self.db.key)

    # -- workflows ----------------------------------------------------------------------

    def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Deliver a signal to a workflow run; kept until ``ctx.wait_for_signal(name)`` takes it."""
        run_id = check_id(run_id)
        name = check_name(name, "signal name")
        value, _ = encode_json(payload, "signal payload", self.payload_limit)
        if self.db.run(lambda conn: self.store.steps.deliver(conn, run_id, name, value)):
            local_bus.publish(self.db.key)

    def get_steps(self, run_id: str) -> list[StepInfo]:
        """The recorded steps, timers, signals and values of a workflow run, in order."""
        run_id = check_id(run_id)

        def read(conn: Connection) -> list[StepInfo]:
            self.store.runs.get_run(conn, run_id)
            return self.store.steps.list_steps(conn, run_id)

        return self.db.run(read, read=True)

    # -- operations (simpleflow.admin) -------------------------------------------------------

    def prune(
        self,
        older_than: timedelta | float,
        statuses: Sequence[str] = ("succeeded", "cancelled"),
        batch_size: int = 1000,
    ) -> int:
        """Delete finished runs older than ``older_than`` with their events and steps, in
        bounded batches (short transactions, safe while workers run); returns how many."""
        return admin.prune(self.store, older_than, statuses, batch_size)

    def stats(self) -> Stats:
        """Queue depth, oldest due run, recent throughput, live workers and paused patterns."""
        return admin.stats(self.store)
