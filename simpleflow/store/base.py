"""What every part of the store shares: the database, prebuilt statements, audit events.

Each store class holds one group of named statements (runs, leases, steps,
schedules, admin, workers). A method runs one statement, or the statements of
one atomic change, on a connection its caller opened, so the caller decides the
transaction (the Client's own, a worker's batch, or the user's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, Table, bindparam, func, select, true

from simpleflow.core.models import RunInfo
from simpleflow.db.database import Database
from simpleflow.db.dialect_sql import db_now
from simpleflow.db.notify import notify_channel
from simpleflow.db.schema import DEFAULT_TENANT, workflow_event, workflow_run, workflow_schedule

run = workflow_run.c

#: an event belongs to the tenant of its run (or of its schedule): no caller passes it
_INSERT_EVENT = workflow_event.insert().values(
    created_at=db_now(),
    tenant=func.coalesce(
        select(run.tenant).where(run.id == bindparam("of_run", type_=run.id.type)).scalar_subquery(),
        select(workflow_schedule.c.tenant)
        .where(workflow_schedule.c.id == bindparam("of_schedule", type_=workflow_schedule.c.id.type))
        .scalar_subquery(),
        DEFAULT_TENANT,
    ),
)

RUN_COLUMNS = (
    run.id,
    run.type,
    run.payload,
    run.status,
    run.priority,
    run.run_at,
    run.idempotency_key,
    run.attempt,
    run.max_attempts,
    run.leased_by,
    run.lease_until,
    run.last_error,
    run.result,
    run.created_at,
    run.updated_at,
    run.parent_id,
    run.tenant,
)


def run_info(row: Row[Any]) -> RunInfo:
    return RunInfo.model_validate(dict(row._mapping))


class Statements:
    """Statements built once per database object (SQLAlchemy then skips building and
    cache-key work on the hot paths)."""

    def __init__(self) -> None:
        self._built: dict[Any, Any] = {}

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        stmt = self._built.get(key)
        if stmt is None:
            stmt = self._built[key] = build()
        return stmt


class StoreBase:
    """The database, its dialect, the wake-up channel, the shared statement cache and the
    tenant whose rows this store reads and writes (None: every tenant's, for workers)."""

    def __init__(self, db: Database, statements: Statements | None = None, tenant: str | None = None) -> None:
        self.db = db
        self.dialect = db.dialect
        self.opts = db.exec_options
        self.channel = notify_channel(db.schema)
        self.statements = statements or Statements()
        self.tenant = tenant

    def scope(self, table: Table) -> ColumnElement[bool]:
        """The one tenancy filter: ``table.tenant = <this store's tenant>`` (a bound value, so
        cached statements stay per store), or nothing for an unscoped store. Every statement
        a client runs adds ``self.scope(table)`` to its WHERE."""
        if self.tenant is None:
            return true()
        return table.c.tenant == bindparam("scope_tenant", self.tenant)

    @property
    def write_tenant(self) -> str:
        """The tenant of rows this store creates without a parent to inherit from."""
        return self.tenant if self.tenant is not None else DEFAULT_TENANT

    def x(self, conn: Connection, stmt: Any, params: Any = None) -> Any:
        """Execute on ``conn`` with the schema translation of this database."""
        return conn.execute(stmt, params, execution_options=self.opts)

    def add_events(self, conn: Connection, events: Sequence[dict[str, Any]]) -> None:
        """Append audit events (run_id/schedule_id, event_type, worker_id, attempt, detail)."""
        if not events:
            return
        rows = [
            {"run_id": None, "schedule_id": None, "worker_id": None, "attempt": None, "detail": None} | e
            for e in events
        ]
        rows = [r | {"of_run": r["run_id"], "of_schedule": r["schedule_id"]} for r in rows]
        self.x(conn, _INSERT_EVENT, rows)

    def notify(self, conn: Connection) -> None:
        """Wake the pollers of this database (other processes via the dialect; this one via
        ``local_bus``, which the caller publishes to after commit)."""
        self.dialect.notify(conn, self.channel, self.opts)
