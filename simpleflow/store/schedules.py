"""The schedule store: every SQL statement about ``workflow_schedule``.

One named method per statement, built with SQLAlchemy Core for both dialects.
Every change to a schedule writes its audit event (``workflow_event.schedule_id``)
in the same transaction. Methods take an open ``Connection``: the caller owns
the transaction. Runs a schedule fires go through ``RunStore.insert_runs``, so the
live-idempotency-key unique index makes a second run for the same slot impossible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, literal, select, text, update
from sqlalchemy.engine import Row

from simpleflow.core.errors import NotFound
from simpleflow.core.models import RunEvent, Schedule
from simpleflow.db.dialect_sql import UTCDateTime, at_or_before, db_now, same_time
from simpleflow.db.schema import workflow_event, workflow_schedule
from simpleflow.store.base import StoreBase

sch = workflow_schedule.c
ev = workflow_event.c

# Literal SQL (not bound parameters) so both planners match the partial index.
_LIVE = text("enabled AND deleted_at IS NULL")

SCHEDULE_COLUMNS = (
    sch.id,
    sch.type,
    sch.payload,
    sch.cron_expr,
    sch.timezone,
    sch.priority,
    sch.max_attempts,
    sch.missed,
    sch.enabled,
    sch.next_run_at,
    sch.last_run_at,
    sch.created_at,
    sch.updated_at,
    sch.deleted_at,
    sch.tenant,
)


@dataclass(frozen=True)
class ScheduleRow:
    """A schedule's settings as the ticker needs them: one to insert, or a due one
    locked by this ticker's transaction."""

    id: str
    type: str
    payload: Any
    cron_expr: str
    timezone: str
    priority: int
    max_attempts: int
    missed: str
    next_run_at: datetime
    tenant: str | None = None  # None: the inserting store's tenant


def _schedule(row: Row[Any]) -> Schedule:
    return Schedule.model_validate(dict(row._mapping))


class ScheduleStore(StoreBase):
    """All SQL about schedules; the runs they fire are inserted by ``RunStore``."""

    def _event(self, conn: Connection, schedule_id: str, event_type: str, detail: Any = None) -> None:
        self.add_events(conn, [{"schedule_id": schedule_id, "event_type": event_type, "detail": detail}])

    # -- clock ----------------------------------------------------------------------

    def db_time(self, conn: Connection) -> datetime:
        """The database's current time: the clock every ticker agrees on."""
        value: datetime = self.x(conn, select(db_now())).scalar_one()
        return value

    # -- management -------------------------------------------------------------------

    def insert_schedule(self, conn: Connection, new: ScheduleRow) -> None:
        """Insert an enabled schedule and its ``schedule_created`` event."""
        self.x(
            conn,
            workflow_schedule.insert().values(
                id=new.id,
                type=new.type,
                payload=new.payload,
                cron_expr=new.cron_expr,
                timezone=new.timezone,
                priority=new.priority,
                max_attempts=new.max_attempts,
                missed=new.missed,
                enabled=True,
                next_run_at=new.next_run_at,
                tenant=new.tenant or self.write_tenant,
                created_at=db_now(),
                updated_at=db_now(),
            ),
        )
        self._event(
            conn,
            new.id,
            "schedule_created",
            {
                "type": new.type,
                "cron": new.cron_expr,
                "timezone": new.timezone,
                "missed": new.missed,
                "next_run_at": new.next_run_at.isoformat(),
            },
        )

    def get_schedule(self, conn: Connection, schedule_id: str, *, lock: bool = False) -> Schedule:
        """One live (not deleted) schedule, or ``NotFound``; ``lock`` holds its row until commit."""
        stmt = select(*SCHEDULE_COLUMNS).where(
            sch.id == schedule_id, sch.deleted_at.is_(None), self.scope(workflow_schedule)
        )
        if lock:
            stmt = stmt.with_for_update()
        row = self.x(conn, stmt).first()
        if row is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return _schedule(row)

    def list_schedules(self, conn: Connection, *, include_deleted: bool) -> list[Schedule]:
        """Schedules, oldest first; soft-deleted ones only when asked."""
        stmt = select(*SCHEDULE_COLUMNS).where(self.scope(workflow_schedule)).order_by(sch.id)
        if not include_deleted:
            stmt = stmt.where(sch.deleted_at.is_(None))
        return [_schedule(r) for r in self.x(conn, stmt)]

    def set_enabled(self, conn: Connection, schedule_id: str, enabled: bool, next_run_at: datetime | None) -> bool:
        """Pause or resume (with a new ``next_run_at``); False, nothing written, if already so."""
        values: dict[str, Any] = {"enabled": enabled, "updated_at": db_now()}
        if next_run_at is not None:
            values["next_run_at"] = next_run_at
        row = self.x(
            conn,
            update(workflow_schedule)
            .where(
                sch.id == schedule_id,
                sch.deleted_at.is_(None),
                sch.enabled == (not enabled),
                self.scope(workflow_schedule),
            )
            .values(**values)
            .returning(sch.id),
        ).first()
        if row is None:
            self.get_schedule(conn, schedule_id)  # NotFound if it does not exist
            return False
        detail = {"next_run_at": next_run_at.isoformat()} if next_run_at is not None else None
        self._event(conn, schedule_id, "schedule_resumed" if enabled else "schedule_paused", detail)
        return True

    def soft_delete(self, conn: Connection, schedule_id: str) -> None:
        """Mark a schedule deleted (and disabled); ``NotFound`` if absent or already deleted."""
        row = self.x(
            conn,
            update(workflow_schedule)
            .where(sch.id == schedule_id, sch.deleted_at.is_(None), self.scope(workflow_schedule))
            .values(deleted_at=db_now(), enabled=False, updated_at=db_now())
            .returning(sch.id),
        ).first()
        if row is None:
            raise NotFound(f"schedule {schedule_id} not found (or already deleted)")
        self._event(conn, schedule_id, "schedule_deleted")

    def schedule_events(self, conn: Connection, schedule_id: str) -> list[RunEvent]:
        """A schedule's audit trail, oldest first."""
        rows = self.x(
            conn,
            select(workflow_event).where(ev.schedule_id == schedule_id, self.scope(workflow_event)).order_by(ev.id),
        )
        return [RunEvent.model_validate(dict(r._mapping)) for r in rows]

    # -- ticking ----------------------------------------------------------------------

    def claim_due(self, conn: Connection, now: datetime, limit: int) -> list[ScheduleRow]:
        """Lock up to ``limit`` enabled schedules due at ``now``, earliest first.

        PostgreSQL skips rows another ticker holds (FOR UPDATE SKIP LOCKED) and
        re-checks ``next_run_at`` on rows committed meanwhile; SQLite holds the
        write lock from BEGIN, so tickers take turns.
        """
        rows = self.x(
            conn,
            select(
                sch.id,
                sch.type,
                sch.payload,
                sch.cron_expr,
                sch.timezone,
                sch.priority,
                sch.max_attempts,
                sch.missed,
                sch.next_run_at,
                sch.tenant,
            )
            .where(_LIVE, at_or_before(sch.next_run_at, literal(now, UTCDateTime())), self.scope(workflow_schedule))
            .order_by(sch.next_run_at)
            .limit(limit)
            .with_for_update(skip_locked=True),
        )
        return [ScheduleRow(**dict(r._mapping)) for r in rows]

    def advance(
        self, conn: Connection, schedule_id: str, expected: datetime, next_run_at: datetime, fired: datetime | None
    ) -> bool:
        """Move ``next_run_at`` from ``expected`` on (compare-and-set); False if another ticker did.

        ``fired`` is the latest slot fired, if any, recorded as ``last_run_at``.
        """
        values: dict[str, Any] = {"next_run_at": next_run_at, "updated_at": db_now()}
        if fired is not None:
            values["last_run_at"] = fired
        row = self.x(
            conn,
            update(workflow_schedule)
            .where(sch.id == schedule_id, same_time(sch.next_run_at, literal(expected, UTCDateTime())), _LIVE)
            .values(**values)
            .returning(sch.id),
        ).first()
        return row is not None

    def record_fired(self, conn: Connection, schedule_id: str, fires: list[tuple[datetime, str]]) -> None:
        """One ``schedule_fired`` event per run created: (slot, run id)."""
        self.add_events(
            conn,
            [
                {
                    "schedule_id": schedule_id,
                    "event_type": "schedule_fired",
                    "detail": {"slot": slot.isoformat(), "run_id": run_id},
                }
                for slot, run_id in fires
            ],
        )

    def record_skipped(self, conn: Connection, schedule_id: str, since: datetime, until: datetime, policy: str) -> None:
        """A ``schedule_skipped`` event: slots in ``[since, until)`` were missed and not fired."""
        self._event(
            conn,
            schedule_id,
            "schedule_skipped",
            {"from": since.isoformat(), "before": until.isoformat(), "missed": policy},
        )
