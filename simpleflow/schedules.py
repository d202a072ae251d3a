"""Cron schedules: build them with ``client.schedule(...)``, fire them with a ``ScheduleTicker``.

Exactly one run per slot: each fire inserts a run whose idempotency key is
``schedule:{schedule id}:{slot in UTC}`` and moves ``next_run_at`` past the slot
in the same transaction. The live-key unique index makes a second run for the
slot impossible, however many tickers race, restart or disagree about the time;
claiming due schedules with ``FOR UPDATE SKIP LOCKED`` (SQLite: the write lock
taken at BEGIN) keeps tickers from even trying. No leader election.

Which slots fire and the daylight-saving rule are ``simpleflow.core.cron``'s policy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, Engine

from simpleflow.core import tracing
from simpleflow.core.cron import CronSpec, MissedPolicy, due_slots
from simpleflow.core.errors import ValidationError
from simpleflow.core.ids import new_id
from simpleflow.core.models import RunEvent, Schedule
from simpleflow.core.shutdown import stop_on_signals
from simpleflow.core.validation import (
    DEFAULT_PAYLOAD_LIMIT,
    check_duration,
    check_id,
    check_max_attempts,
    check_priority,
    check_type,
    encode_json,
)
from simpleflow.db.database import Database
from simpleflow.db.notify import local_bus
from simpleflow.store import HasStore, Store, store_of
from simpleflow.store.new_runs import NewRun
from simpleflow.store.schedules import ScheduleRow

__all__ = [
    "ScheduleBuilder",
    "ScheduleTicker",
    "delete_schedule",
    "get_schedule",
    "get_schedule_events",
    "list_schedules",
    "pause_schedule",
    "resume_schedule",
    "slot_key",
]

log = logging.getLogger("simpleflow.schedules")

#: most missed slots one schedule fires after an outage under ``missed="all"``
MAX_CATCHUP = 100
#: schedules one ticker transaction claims
BATCH = 100
#: longest pause between attempts while the database is failing
MAX_BACKOFF = 60.0


def slot_key(schedule_id: str, slot: datetime) -> str:
    """The idempotency key of the run for one slot: unique per (schedule, slot)."""
    return f"schedule:{schedule_id}:{slot.astimezone(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def _policy(value: object) -> MissedPolicy:
    try:
        return MissedPolicy(value)
    except ValueError:
        allowed = ", ".join(repr(p.value) for p in MissedPolicy)
        raise ValidationError(f"invalid missed-slot policy {value!r}: expected one of {allowed}") from None


# -- building and managing -------------------------------------------------------------


class ScheduleBuilder:
    """A schedule being built: ``client.schedule(type, payload).cron(expr)….create()``.

    Type, payload, priority, attempts and policy are checked at once; the cron
    expression and time zone together at ``create()``, before anything is stored.
    """

    def __init__(
        self, store: Store, type: str, payload: Any = None, *, payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    ) -> None:
        self._store = store
        self.type = check_type(type)
        self.payload, _ = encode_json(payload, "payload", payload_limit)
        self.expr: str | None = None
        self.timezone = "UTC"
        self.priority = 100
        self.max_attempts = 3
        self.missed = MissedPolicy.LATEST

    def cron(self, expr: str) -> ScheduleBuilder:
        """A 5-field cron expression (``"0 9 * * 1"``) or alias (``"@daily"``)."""
        self.expr = expr
        return self

    def in_timezone(self, tz: str) -> ScheduleBuilder:
        """The IANA time zone the expression is read in; default ``"UTC"``."""
        self.timezone = tz
        return self

    def with_priority(self, priority: int) -> ScheduleBuilder:
        """Priority of every run the schedule creates (lower runs first); default 100."""
        self.priority = check_priority(priority)
        return self

    def with_max_attempts(self, attempts: int) -> ScheduleBuilder:
        """max_attempts of every run the schedule creates; default 3."""
        self.max_attempts = check_max_attempts(attempts)
        return self

    def with_missed(self, policy: str | MissedPolicy) -> ScheduleBuilder:
        """Slots missed while no ticker ran: ``"latest"`` (default, one catch-up run),
        ``"all"`` (each, oldest first, at most 100) or ``"none"``."""
        self.missed = _policy(policy)
        return self

    def create(self) -> str:
        """Validate the expression and time zone, store the schedule, return its id."""
        if self.expr is None:
            raise ValidationError("a schedule needs a cron expression: call .cron('0 9 * * 1') before .create()")
        spec = CronSpec.parse(self.expr, self.timezone)
        schedules = self._store.schedules
        schedule_id = new_id()

        def insert(conn: Connection) -> None:
            first = spec.next_after(schedules.db_time(conn))
            schedules.insert_schedule(
                conn,
                ScheduleRow(
                    id=schedule_id,
                    type=self.type,
                    payload=self.payload,
                    cron_expr=spec.expr,
                    timezone=spec.timezone,
                    priority=self.priority,
                    max_attempts=self.max_attempts,
                    missed=self.missed.value,
                    next_run_at=first,
                ),
            )

        self._store.db.run(insert)
        return schedule_id


def list_schedules(target: Store | HasStore, include_deleted: bool = False) -> list[Schedule]:
    """Every schedule, oldest first; soft-deleted ones only with ``include_deleted=True``."""
    if not isinstance(include_deleted, bool):
        raise ValidationError(f"include_deleted must be True or False, got {include_deleted!r}")
    store = store_of(target)
    schedules = store.schedules
    return store.db.run(lambda conn: schedules.list_schedules(conn, include_deleted=include_deleted))


def get_schedule(target: Store | HasStore, schedule_id: str) -> Schedule:
    """The schedule, or ``NotFound`` (also once deleted)."""
    sid = check_id(schedule_id, "schedule")
    store = store_of(target)
    schedules = store.schedules
    return store.db.run(lambda conn: schedules.get_schedule(conn, sid))


def get_schedule_events(target: Store | HasStore, schedule_id: str) -> list[RunEvent]:
    """The schedule's audit trail (created, fired, skipped, paused, resumed, deleted), oldest first."""
    sid = check_id(schedule_id, "schedule")
    store = store_of(target)
    schedules = store.schedules
    return store.db.run(lambda conn: schedules.schedule_events(conn, sid))


def pause_schedule(target: Store | HasStore, schedule_id: str) -> None:
    """Stop firing until resumed (pausing a paused schedule changes nothing)."""
    sid = check_id(schedule_id, "schedule")
    store = store_of(target)
    schedules = store.schedules
    store.db.run(lambda conn: schedules.set_enabled(conn, sid, False, None))


def resume_schedule(target: Store | HasStore, schedule_id: str) -> None:
    """Fire again from the first slot after now: slots missed while paused never fire."""
    sid = check_id(schedule_id, "schedule")
    store = store_of(target)
    schedules = store.schedules

    def resume(conn: Connection) -> None:
        current = schedules.get_schedule(conn, sid, lock=True)
        if current.enabled:
            return
        spec = CronSpec.parse(current.cron_expr, current.timezone)
        schedules.set_enabled(conn, sid, True, spec.next_after(schedules.db_time(conn)))

    store.db.run(resume)


def delete_schedule(target: Store | HasStore, schedule_id: str) -> None:
    """Soft-delete: the schedule stops firing and leaves the default listing; its runs stay."""
    sid = check_id(schedule_id, "schedule")
    store = store_of(target)
    schedules = store.schedules
    store.db.run(lambda conn: schedules.soft_delete(conn, sid))


# -- the ticker -----------------------------------------------------------------------------


class ScheduleTicker:
    """Turns due schedule slots into runs; run any number of them, anywhere.

    ``tick()`` once (tests, cron jobs), ``start()`` to block until ``stop()``,
    SIGINT or SIGTERM, or ``run_until(event)`` in a thread (what the Poller does).
    "Now" is the database's clock unless ``clock`` is given (tests). A ticker
    built from a URL owns its engine; one given an Engine or Database does not.
    """

    def __init__(
        self,
        database: str | Engine | Database,
        *,
        tick_interval: timedelta | float = timedelta(seconds=15),
        clock: Callable[[], datetime] | None = None,
        schema: str | None = None,
    ) -> None:
        self.tick_seconds = check_duration(tick_interval, "tick_interval", allow_zero=False).total_seconds()
        if clock is not None and not callable(clock):
            raise ValidationError(f"clock must be a callable returning an aware datetime, got {type(clock).__name__}")
        self._owns_db = isinstance(database, str)
        self.db = Database.open(database, schema=schema)
        self.store = Store(self.db)
        self.schedules = self.store.schedules
        self._clock = clock
        self._stop = threading.Event()

    # -- one tick ---------------------------------------------------------------------------

    def tick(self) -> int:
        """Fire every due slot of every schedule; returns how many runs were created."""
        now = self._now() if self._clock is not None else None
        created = 0
        while True:
            made, claimed, advanced = self.db.run(lambda conn: self._tick_batch(conn, now))
            created += made
            if claimed < BATCH or advanced == 0:
                break
        if created:
            local_bus.publish(self.db.key)  # wake pollers in this process (SQLite has no NOTIFY)
        return created

    def _now(self) -> datetime:
        assert self._clock is not None
        value = self._clock()
        if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
            raise ValidationError(f"the ticker's clock must return an aware datetime, got {value!r}")
        return value

    def _tick_batch(self, conn: Connection, now: datetime | None) -> tuple[int, int, int]:
        """One transaction: claim due schedules, fire their slots. (created, claimed, advanced)."""
        if now is None:
            now = self.schedules.db_time(conn)
        due = self.schedules.claim_due(conn, now, BATCH)
        created = advanced = 0
        for schedule in due:
            made = self._fire(conn, schedule, now)
            if made is not None:
                created += made
                advanced += 1
        return created, len(due), advanced

    def _fire(self, conn: Connection, s: ScheduleRow, now: datetime) -> int | None:
        """Advance one schedule and insert a run per due slot; None if it could not advance."""
        try:
            spec = CronSpec.parse(s.cron_expr, s.timezone)
            slots, new_next = due_slots(spec, s.next_run_at, now, _policy(s.missed), max_catchup=MAX_CATCHUP)
        except ValidationError as error:  # a row edited by hand, or a zone that left tzdata
            log.error("schedule %s cannot fire: %s", s.id, error)
            return None
        if not self.schedules.advance(conn, s.id, s.next_run_at, new_next, slots[-1] if slots else None):
            return None  # another ticker moved it first (only without row locks)
        earliest = slots[0] if slots else new_next
        if earliest > s.next_run_at:
            self.schedules.record_skipped(conn, s.id, s.next_run_at, earliest, s.missed)
        if not slots:
            return 0
        attributes = {
            "simpleflow.schedule.id": s.id,
            "simpleflow.run.type": s.type,
            "simpleflow.run.count": len(slots),
            "simpleflow.tenant": s.tenant,
        }
        with tracing.span(f"schedule {s.type}", attributes=attributes, kind="producer") as span:
            runs = [
                NewRun(
                    id=new_id(),
                    type=s.type,
                    payload=s.payload,
                    priority=s.priority,
                    max_attempts=s.max_attempts,
                    idempotency_key=slot_key(s.id, slot),
                    run_at=None,
                    delay=0.0,
                    trace_context=span.context(),
                    tenant=s.tenant,
                )
                for slot in slots
            ]
            ids = self.store.runs.insert_runs(conn, runs)
        fires = [(slot, run.id) for slot, run, got in zip(slots, runs, ids, strict=True) if got == run.id]
        self.schedules.record_fired(conn, s.id, fires)
        return len(fires)

    # -- running ------------------------------------------------------------------------------

    def run_until(self, event: threading.Event) -> None:
        """Tick every ``tick_interval`` until ``event`` is set (or ``stop()``).

        A failing database is logged and retried with a growing pause; the loop
        never dies of it, and picks up missed slots by the schedule's policy.
        """
        failures = 0
        while not (event.is_set() or self._stop.is_set()):
            try:
                self.tick()
                failures = 0
                pause = self.tick_seconds
            except Exception as error:
                failures += 1
                pause = min(
                    max(self.tick_seconds, 0.5) * 2 ** min(failures - 1, 10), max(self.tick_seconds, MAX_BACKOFF)
                )
                log.warning(
                    "schedule tick failed (%d in a row), retrying in %.1fs: %s",
                    failures,
                    pause,
                    error,
                    exc_info=failures == 1,
                )
            self._sleep(event, pause)

    def _sleep(self, event: threading.Event, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not (event.is_set() or self._stop.is_set()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            event.wait(min(remaining, 0.25) if event is not self._stop else remaining)

    def start(self) -> None:
        """Tick until ``stop()``, SIGINT or SIGTERM. Blocks."""
        restore = stop_on_signals(self.stop, log, "stopping the schedule ticker")
        try:
            self.run_until(self._stop)
        finally:
            restore()

    def stop(self) -> None:
        """Make ``start()`` / ``run_until()`` return after the current tick. Safe to repeat."""
        self._stop.set()

    def close(self) -> None:
        """Stop, and dispose of the engine if this ticker created it."""
        self.stop()
        if self._owns_db:
            self.db.close()

    def __enter__(self) -> ScheduleTicker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
