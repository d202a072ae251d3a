"""SQL of the replay layer: the step records and signals of workflow runs.

One named method per statement, like ``Store``. Writes made on behalf of a
running workflow go through ``hold``, which locks the run's row only if this
worker still holds its lease (same worker, same attempt): a worker that lost
its lease writes nothing, and a concurrent ``cancel`` or ``signal`` waits for
the record's transaction instead of interleaving with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Connection, Integer, String, Text, bindparam, exists, literal_column, select, update

from simpleflow.core.errors import AlreadyComplete, NotFound
from simpleflow.core.models import StepInfo
from simpleflow.core.states import TERMINAL_STATUSES, Lease
from simpleflow.db.dialect_sql import db_now
from simpleflow.db.schema import workflow_run, workflow_signal, workflow_step
from simpleflow.store.base import StoreBase

run = workflow_run.c
step = workflow_step.c
sig = workflow_signal.c


_HOLD = (
    select(run.status, run.lease_token, db_now().label("now"))
    .where(run.id == bindparam("rid"), run.deleted_at.is_(None))
    .with_for_update()
)
_RUN_STATUS = select(run.status).where(run.id == bindparam("rid"), run.deleted_at.is_(None))


def _tenant_of(run_id: Any) -> Any:
    """A step's or signal's tenant: its run's."""
    return select(run.tenant).where(run.id == run_id).scalar_subquery()


@dataclass(frozen=True)
class StepRecord:
    """One recorded step, timer, signal wait, value or version marker, as replay reads it."""

    name: str
    seq: int
    kind: str
    status: str
    attempts: int
    result: Any
    error: Any
    wake_at: datetime | None


@dataclass(frozen=True)
class Hold:
    """The run's row as seen (and locked) by a fenced write: who holds it, and the database time."""

    held: bool
    status: str | None  # None: the run no longer exists
    now: datetime


class StepStore(StoreBase):
    """All SQL about ``workflow_step`` and ``workflow_signal`` rows."""

    # -- replay -----------------------------------------------------------------

    def load(self, conn: Connection, run_id: str) -> dict[str, StepRecord]:
        """Every record of a run, by name: the history one execution replays from."""
        rows = self.x(
            conn,
            select(step.name, step.seq, step.kind, step.status, step.attempts, step.result, step.error, step.wake_at)
            .where(step.run_id == run_id)
            .order_by(step.seq),
        )
        return {r.name: StepRecord(**r._mapping) for r in rows}

    def hold(self, conn: Connection, lease: Lease) -> Hold:
        """Lock the run's row and say whether ``lease`` still holds it (same run, same token).

        PostgreSQL: ``FOR UPDATE`` keeps cancel, signal and reaping out until commit;
        SQLite: the write lock taken at BEGIN already does.
        """
        row = self.x(conn, _HOLD, {"rid": lease.run_id}).first()
        if row is None:
            now = self.x(conn, select(db_now())).scalar_one()
            return Hold(False, None, now)
        held = row.status == "leased" and int(row.lease_token) == lease.token
        return Hold(held, str(row.status), row.now)

    def save_if_held(
        self,
        conn: Connection,
        lease: Lease,
        name: str,
        *,
        seq: int,
        kind: str,
        status: str,
        attempts: int = 0,
        result: Any = None,
        error: Any = None,
    ) -> bool:
        """``save`` fenced by the lease in one statement (the hot path of a durable step:
        one round trip, no explicit transaction on PostgreSQL); False if not held.

        The run's row is locked (``FOR UPDATE`` inside the EXISTS, PostgreSQL) so a
        concurrent cancel or takeover either commits first and fences this write out, or waits.
        """
        stmt = self.statements.get("save_step", self._build_save_step)
        params = {
            "rid": lease.run_id,
            "token": lease.token,
            "name": name,
            "seq": seq,
            "kind": kind,
            "status": status,
            "attempts": attempts,
            "result": None if result is None else json.dumps(result, separators=(",", ":"), ensure_ascii=False),
            "error": None if error is None else json.dumps(error, separators=(",", ":"), ensure_ascii=False),
        }
        return bool(self.dialect.execute_hot(conn, stmt, params, self.opts))

    def _build_save_step(self) -> Any:
        """INSERT … SELECT … WHERE EXISTS (the lease, locked) ON CONFLICT DO UPDATE RETURNING."""
        held = (
            select(run.id)
            .where(
                run.id == bindparam("rid", type_=run.id.type),
                run.status == literal_column("'leased'"),
                run.lease_token == bindparam("token", type_=BigInteger()),
            )
            .with_for_update()
        )
        source = select(
            bindparam("rid", type_=run.id.type),
            bindparam("name", type_=String()),
            bindparam("seq", type_=Integer()),
            bindparam("kind", type_=String()),
            bindparam("status", type_=String()),
            bindparam("attempts", type_=Integer()),
            self.dialect.json_from_text(bindparam("result", type_=Text())),
            self.dialect.json_from_text(bindparam("error", type_=Text())),
            db_now(),
            db_now(),
            _tenant_of(bindparam("rid", type_=run.id.type)),
        ).where(exists(held))
        stmt = self.dialect.insert(workflow_step).from_select(
            [
                "run_id",
                "name",
                "seq",
                "kind",
                "status",
                "attempts",
                "result",
                "error",
                "created_at",
                "updated_at",
                "tenant",
            ],
            source,
        )
        return stmt.on_conflict_do_update(
            index_elements=[step.run_id, step.name],
            set_={
                "status": stmt.excluded.status,
                "attempts": stmt.excluded.attempts,
                "result": stmt.excluded.result,
                "error": stmt.excluded.error,
                "wake_at": None,
                "updated_at": db_now(),
            },
        ).returning(step.run_id)

    def run_status(self, conn: Connection, run_id: str) -> str | None:
        """The run's status (a primary-key read), None if it no longer exists."""
        rows = self.dialect.execute_hot(conn, _RUN_STATUS, {"rid": run_id}, self.opts)
        return str(rows[0][0]) if rows else None

    def save(
        self,
        conn: Connection,
        run_id: str,
        name: str,
        *,
        seq: int,
        kind: str,
        status: str,
        attempts: int = 0,
        result: Any = None,
        error: Any = None,
        wake_at: datetime | None = None,
    ) -> None:
        """Insert a record, or update its outcome (status, attempts, result, error, wake time).

        Call only after ``hold`` said the lease is held, in the same transaction.
        The first insert fixes ``seq`` and ``kind``; updates keep them.
        """

        def build() -> Any:
            ins = self.dialect.insert(workflow_step).values(
                created_at=db_now(), updated_at=db_now(), tenant=_tenant_of(bindparam("of_run", type_=run.id.type))
            )
            return ins.on_conflict_do_update(
                index_elements=[step.run_id, step.name],
                set_={
                    "status": ins.excluded.status,
                    "attempts": ins.excluded.attempts,
                    "result": ins.excluded.result,
                    "error": ins.excluded.error,
                    "wake_at": ins.excluded.wake_at,
                    "updated_at": db_now(),
                },
            )

        stmt = self.statements.get("save_step_any", build)
        self.x(
            conn,
            stmt,
            {
                "run_id": run_id,
                "name": name,
                "seq": seq,
                "kind": kind,
                "status": status,
                "attempts": attempts,
                "result": result,
                "error": error,
                "wake_at": wake_at,
                "of_run": run_id,
            },
        )

    def list_steps(self, conn: Connection, run_id: str) -> list[StepInfo]:
        """A run's records in the order they were first written (``Client.get_steps``)."""
        rows = self.x(
            conn, select(workflow_step).where(step.run_id == run_id, self.scope(workflow_step)).order_by(step.seq)
        )
        return [StepInfo.model_validate(dict(r._mapping)) for r in rows]

    # -- signals ----------------------------------------------------------------

    def lock_run(self, conn: Connection, run_id: str) -> str | None:
        """Lock a run's row for a signal delivery; its status, or None if it does not exist."""
        row = self.x(
            conn,
            select(run.status)
            .where(run.id == run_id, run.deleted_at.is_(None), self.scope(workflow_run))
            .with_for_update(),
        ).first()
        return None if row is None else str(row[0])

    def add_signal(self, conn: Connection, run_id: str, name: str, payload: Any) -> int:
        """Store a signal until a ``wait_for_signal`` of that name consumes it; returns its id."""
        row = self.x(
            conn,
            workflow_signal.insert()
            .values(run_id=run_id, name=name, payload=payload, created_at=db_now(), tenant=_tenant_of(run_id))
            .returning(sig.id),
        ).first()
        return int(row[0])

    def wake_waiting(self, conn: Connection, run_id: str) -> bool:
        """A run parked in ``waiting`` becomes due now (and pollers are notified).

        The caller writes the audit event (``send_signal`` writes one per delivery).
        """
        row = self.x(
            conn,
            update(workflow_run)
            .where(run.id == run_id, run.status == "waiting")
            .values(status="pending", run_at=db_now(), updated_at=db_now())
            .returning(run.id),
        ).first()
        if row is None:
            return False
        self.notify(conn)
        return True

    def peek_signal(self, conn: Connection, run_id: str, name: str) -> tuple[int, Any] | None:
        """The oldest unconsumed signal ``name`` of a run: (id, payload), or None."""
        row = self.x(
            conn,
            select(sig.id, sig.payload)
            .where(sig.run_id == run_id, sig.name == name, sig.consumed_by.is_(None))
            .order_by(sig.id)
            .limit(1),
        ).first()
        return None if row is None else (int(row.id), row.payload)

    def consume_signal(self, conn: Connection, signal_id: int, consumer: str) -> None:
        """Mark a signal consumed by the wait recorded as step ``consumer``. Call inside a
        fenced transaction (after ``hold``)."""
        self.x(conn, update(workflow_signal).where(sig.id == signal_id).values(consumed_by=consumer))

    def deliver(self, conn: Connection, run_id: str, name: str, payload: Any) -> bool:
        """Store a signal for an unfinished run and wake it if it waits; True if it woke.
        ``NotFound`` / ``AlreadyComplete`` otherwise."""
        status = self.lock_run(conn, run_id)
        if status is None:
            raise NotFound(f"run {run_id} not found")
        if status in TERMINAL_STATUSES:
            raise AlreadyComplete(f"run {run_id} is already {status}; signals can only go to unfinished runs")
        signal_id = self.add_signal(conn, run_id, name, payload)
        woke = self.wake_waiting(conn, run_id)
        self.add_events(
            conn,
            [
                {
                    "run_id": run_id,
                    "event_type": "signalled",
                    "detail": {"signal": name, "signal_id": signal_id, "woke": woke},
                }
            ],
        )
        return woke
