"""The producer side: submit intent, inspect runs, cancel, retry, signal, schedule."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar, overload

from sqlalchemy import Connection, Engine

from simpleflow import admin, schedules
from simpleflow.admin import Stats
from simpleflow.core.errors import WaitTimeout
from simpleflow.core.models import RunEvent, RunInfo, Schedule, StepInfo
from simpleflow.core.validation import (
    DEFAULT_PAYLOAD_LIMIT,
    check_duration,
    check_id,
    check_int,
    check_tenant,
)
from simpleflow.db.database import Database
from simpleflow.db.migrate import migrate
from simpleflow.db.notify import local_bus
from simpleflow.db.schema import DEFAULT_TENANT
from simpleflow.history import HistoryMethods
from simpleflow.limits import LimitMethods
from simpleflow.producer import (
    Builder,
    deliver,
    event_timeout_message,
    new_runs,
    read_event,
    read_events,
    read_steps,
    result_of,
    run_filters,
    submit_span,
    traced,
    wait_timeout_message,
)
from simpleflow.schedules import ScheduleBuilder
from simpleflow.store import Store
from simpleflow.store.new_runs import NewRun

T = TypeVar("T")


class Submission(Builder):
    """A run being built: ``client.submit(type, payload).with_…().execute()``.

    Every ``with_…`` validates its argument at once and returns the same builder.
    """

    def __init__(self, client: Client, type: str, payload: Any) -> None:
        super().__init__(type, payload, client.payload_limit)
        self._client = client

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


class CompositionMethods:
    """``Client``'s reads of what workflows publish (``ctx.set_event``)."""

    db: Database
    store: Store

    def get_event(self, run_id: str, key: str, timeout: timedelta | float = timedelta(seconds=30)) -> Any:
        """The latest value the run published under ``key`` with ``ctx.set_event``; if none yet,
        waits up to ``timeout`` for the first (``WaitTimeout``), ``NotFound`` for no such run."""
        read = read_event(self.store, run_id, key)
        timeout = check_duration(timeout, "timeout")
        deadline = time.monotonic() + timeout.total_seconds()
        pause = 0.005
        while True:
            found, value = self.db.run(read, read=True)
            if found:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(event_timeout_message(run_id, key, timeout))
            time.sleep(min(pause, left))
            pause = min(pause * 1.5, 0.25)


class Client(ScheduleMethods, CompositionMethods, HistoryMethods, LimitMethods):
    """Producer API over one database. Owns its engine when built from a URL.

    ``tenant``: every method reads and changes only that tenant's runs and schedules (another
    tenant's run is ``NotFound``), and PostgreSQL sessions act for it (row-level security).
    Without it, the client works in the default tenant.
    """

    def __init__(
        self,
        database: str | Engine,
        *,
        schema: str | None = None,
        tenant: str | None = None,
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        _db: Database | None = None,
    ) -> None:
        chosen = None if tenant is None else check_tenant(tenant)
        db = _db or Database.open(database, schema=schema)
        self.db = db if chosen is None else db.for_tenant(chosen)
        #: the tenant this client acts for
        self.tenant = DEFAULT_TENANT if chosen is None else chosen
        self.store = Store(self.db, self.tenant)
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
        runs = new_runs(submissions, self.submit)
        if not runs:
            return []
        return self._insert(runs, connection)

    def _insert(self, runs: list[NewRun], connection: Connection | None) -> list[str]:
        with submit_span(runs, self.tenant) as span:
            runs = traced(runs, span)
            if connection is not None:
                if self.db.tenant is not None:
                    self.db.dialect.set_tenant(connection, self.db.tenant)
                ids = self.store.runs.insert_runs(connection, runs)
            else:
                ids = self.db.run(
                    lambda conn: self.store.runs.insert_runs(conn, runs),
                    autocommit=len(runs) == 1 and self.db.dialect.autocommit_writes,
                )
            if len(ids) == 1:
                span.set("simpleflow.run.id", ids[0])
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
        parent_id: str | None = None,
    ) -> list[RunInfo]:
        """Runs matching every given filter, newest first (``parent_id``: the children of that run)."""
        filters = run_filters(type, status, idempotency_key, limit, offset, parent_id)
        return self.db.run(lambda conn: self.store.runs.list_runs(conn, **filters), read=True)

    def get_events(self, run_id: str) -> list[RunEvent]:
        """The run's audit trail, oldest first (``NotFound`` if the run does not exist)."""
        return self.db.run(read_events(self.store, run_id), read=True)

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
                raise WaitTimeout(wait_timeout_message(info, timeout))
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, 0.25)

    @overload
    def get_result(self, run_id: str, model: type[T]) -> T: ...
    @overload
    def get_result(self, run_id: str, model: Any) -> Any: ...
    def get_result(self, run_id: str, model: Any) -> Any:
        """The succeeded run's result validated into ``model``: a pydantic model, a dataclass,
        ``dict``, ``list[int]``, any type pydantic's ``TypeAdapter`` handles."""
        return result_of(self.get_run(run_id), model)

    # -- changing ---------------------------------------------------------------------

    def cancel(self, run_id: str) -> None:
        """Cancel an unfinished run and its unfinished descendants (``NotFound``, ``AlreadyComplete``)."""
        run_id = check_id(run_id)
        self.db.run(lambda conn: self.store.runs.cancel(conn, run_id))
        local_bus.publish(self.db.key)  # a parent waiting for this run was woken

    def retry(self, run_id: str) -> None:
        """Run a failed or cancelled run again, with a fresh set of attempts."""
        run_id = check_id(run_id)
        self.db.run(lambda conn: self.store.runs.requeue_one(conn, run_id))
        local_bus.publish(self.db.key)

    # -- workflows ----------------------------------------------------------------------

    def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Deliver a signal to a workflow run; kept until ``ctx.wait_for_signal(name)`` takes it."""
        if self.db.run(deliver(self.store, run_id, name, payload, self.payload_limit)):
            local_bus.publish(self.db.key)

    def get_steps(self, run_id: str) -> list[StepInfo]:
        """The recorded steps, timers, signals and values of a workflow run, in order."""
        return self.db.run(read_steps(self.store, run_id), read=True)

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
