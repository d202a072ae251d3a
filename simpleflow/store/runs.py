"""Runs as producers and operators see them: insert, read, cancel, requeue.

Every change writes its audit event in the same transaction. A worker's own
writes (claim, outcomes, renewals, expiry) are in ``store.leases``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import (
    CTE,
    Connection,
    Float,
    Select,
    String,
    Text,
    case,
    delete,
    exists,
    func,
    literal,
    literal_column,
    null,
    select,
    text,
    update,
)

from simpleflow.core.errors import AlreadyComplete, InvalidState, NotFound
from simpleflow.core.models import RunEvent, RunInfo
from simpleflow.core.states import REQUEUE_STATUSES, TERMINAL_STATUSES, Kind, Status
from simpleflow.db.database import Database
from simpleflow.db.dialect_sql import UTCDateTime, db_now, db_now_plus
from simpleflow.db.schema import workflow_event, workflow_run, workflow_step
from simpleflow.store.base import RUN_COLUMNS, Statements, StoreBase, run_info
from simpleflow.store.composition import CompositionStore
from simpleflow.store.new_runs import NEW_RUNS, NewRun

run = workflow_run.c
ev = workflow_event.c

#: how often an idempotent insert is retried when the run holding its key vanished meanwhile
_INSERT_ROUNDS = 5


class RunStore(StoreBase):
    """All SQL about runs outside a worker's lease."""

    def __init__(self, db: Database, statements: Statements | None = None, tenant: str | None = None) -> None:
        super().__init__(db, statements, tenant)
        self.composition = CompositionStore(db, self.statements)  # waking parents: unscoped, as the worker is

    # -- insert ---------------------------------------------------------------------

    def insert_runs(self, conn: Connection, runs: Sequence[NewRun]) -> list[str]:
        """Insert runs in one statement; a live idempotency key keeps its existing run.

        Returns each submission's run id, in order: the new id, or the id of the run
        that already holds the key. If that run disappears between the two (pruned),
        the insert is tried again, so a submission always ends with a live id.
        """
        ids: dict[str, str] = {}  # submission id -> run id
        for r in runs:
            if r.debounce_key is not None:
                ids[r.id] = self._debounce(conn, r)
        pending = [r for r in runs if r.debounce_key is None]
        retry: list[NewRun] = []
        for _ in range(_INSERT_ROUNDS if pending else 0):
            stmt = self.statements.get("insert_runs", self._build_insert)
            batch = [self._row(r) for r in pending]
            params = self.dialect.bind_batch("b", NEW_RUNS, batch)
            rows = self.dialect.execute_with_events(conn, stmt, params, self.opts, _created_events)
            inserted = {r.id for r in rows}
            ids.update({i: i for i in inserted})
            missing = {r.idempotency_key for r in pending if r.id not in inserted and r.idempotency_key}
            holders: dict[tuple[str, str], str] = {}
            if missing:
                found = self.x(
                    conn,
                    select(run.tenant, run.idempotency_key, run.id).where(
                        run.idempotency_key.in_(missing), run.deleted_at.is_(None)
                    ),
                )
                holders = {(t, k): i for t, k, i in found}
            retry = []
            for r in pending:
                if r.id in inserted:
                    continue
                holder = holders.get((r.tenant or self.write_tenant, r.idempotency_key or ""))
                if holder is not None:
                    ids[r.id] = holder
                else:
                    retry.append(r)
            if not retry:
                break
            pending = retry
        if pending and retry:
            raise InvalidState("an idempotent submission kept racing the deletion of the run holding its key")
        if len(ids) < len({r.id for r in runs}):  # pragma: no cover - the loop above guarantees it
            raise InvalidState("some submissions could not be stored")
        return [ids[r.id] for r in runs]

    def insert_child(self, conn: Connection, parent_id: str, child: NewRun, name: str) -> str:
        """Insert ``child`` as a child of ``parent_id`` (``ctx.start_child``), with its
        ``created`` event and a ``child_started`` event on the parent. Call inside the
        parent's fenced transaction that also records the start."""
        child_id = self.insert_runs(conn, [child])[0]
        self.x(conn, update(workflow_run).where(run.id == child_id).values(parent_id=parent_id))
        self.add_events(
            conn,
            [
                {
                    "run_id": parent_id,
                    "event_type": "child_started",
                    "detail": {"child": child_id, "name": name, "type": child.type},
                }
            ],
        )
        return child_id

    def _debounce(self, conn: Connection, new: NewRun) -> str:
        """A debounced submission: the pending, not-yet-started run holding the key takes the
        new payload and due time (and a ``debounced`` event) and keeps its id; with none, a
        new run is inserted. The two race safely: the insert yields to a concurrent one
        (unique index on pending debounce keys) and the update finds that run next round."""
        b = NEW_RUNS
        params = self.dialect.bind_batch("b", b, [self._row(new)])
        tenant = new.tenant or self.write_tenant
        for _ in range(_INSERT_ROUNDS):
            row = self.x(
                conn,
                update(workflow_run)
                .where(
                    run.tenant == tenant,
                    run.debounce_key == new.debounce_key,
                    run.status == literal_column("'pending'"),
                )
                .values(
                    payload=self.dialect.json_from_text(literal(new.payload_json, Text())),
                    run_at=func.coalesce(literal(new.run_at, UTCDateTime()), db_now_plus(literal(new.delay, Float()))),
                    updated_at=db_now(),
                )
                .returning(run.id, run.attempt),
            ).first()
            if row is not None:
                self.add_events(conn, [{"run_id": row.id, "event_type": "debounced", "attempt": row.attempt}])
                self.notify(conn)
                return str(row.id)
            stmt = self.statements.get("insert_debounced", lambda: self._build_insert(debounce=True))
            inserted = self.dialect.execute_with_events(conn, stmt, params, self.opts, _created_events)
            if inserted:
                return str(inserted[0].id)
        raise InvalidState(f"a debounced submission kept racing others on key {new.debounce_key!r}")

    def _row(self, new: NewRun) -> tuple[Any, ...]:
        """The batch row of ``new``, in this store's tenant unless it names its own."""
        return new.row() if new.tenant is not None else replace(new, tenant=self.write_tenant).row()

    def _build_insert(self, debounce: bool = False) -> Any:
        b = self.dialect.batch("b", NEW_RUNS)
        source = select(
            b.c.id,
            b.c.type,
            self.dialect.json_from_text(b.c.payload),
            b.c.priority,
            b.c.max_attempts,
            b.c.key,
            func.coalesce(b.c.run_at, db_now_plus(b.c.delay)),
            case((b.c.deadline_in.is_(None), b.c.deadline_at), else_=db_now_plus(b.c.deadline_in)),
            b.c.tenant,
            b.c.ckey,
            b.c.dkey,
            literal(Status.PENDING.value),
            literal(0),
            db_now(),
            db_now(),
            b.c.trace,
        ).where(text("true"))  # SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT
        dml = (
            self.dialect.insert(workflow_run)
            .from_select(
                [
                    "id",
                    "type",
                    "payload",
                    "priority",
                    "max_attempts",
                    "idempotency_key",
                    "run_at",
                    "deadline_at",
                    "tenant",
                    "concurrency_key",
                    "debounce_key",
                    "status",
                    "attempt",
                    "created_at",
                    "updated_at",
                    "trace_context",
                ],
                source,
            )
            .on_conflict_do_nothing(
                index_elements=[run.tenant, run.debounce_key if debounce else run.idempotency_key],
                index_where=text(
                    "debounce_key IS NOT NULL AND status = 'pending'"
                    if debounce
                    else "idempotency_key IS NOT NULL AND deleted_at IS NULL"
                ),
            )
            .returning(run.id, run.attempt, run.tenant)
        )
        return self.dialect.with_events(dml, _created_events_select, notify=self.channel)

    # -- read -----------------------------------------------------------------------

    def get_run(self, conn: Connection, run_id: str) -> RunInfo:
        row = self.x(
            conn, select(*RUN_COLUMNS).where(run.id == run_id, run.deleted_at.is_(None), self.scope(workflow_run))
        ).first()
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return run_info(row)

    def list_runs(
        self,
        conn: Connection,
        *,
        type: str | None,
        status: str | None,
        idempotency_key: str | None,
        limit: int,
        offset: int,
        parent_id: str | None = None,
    ) -> list[RunInfo]:
        stmt = select(*RUN_COLUMNS).where(run.deleted_at.is_(None), self.scope(workflow_run))
        if parent_id is not None:
            stmt = stmt.where(run.parent_id == parent_id)
        if type is not None:
            stmt = stmt.where(run.type == type)
        if status is not None:
            stmt = stmt.where(run.status == status)
        if idempotency_key is not None:
            stmt = stmt.where(run.idempotency_key == idempotency_key)
        stmt = stmt.order_by(run.id.desc()).limit(limit).offset(offset)
        return [run_info(r) for r in self.x(conn, stmt)]

    def status_of(self, conn: Connection, run_id: str) -> str:
        row = self.x(
            conn, select(run.status).where(run.id == run_id, run.deleted_at.is_(None), self.scope(workflow_run))
        ).first()
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return str(row[0])

    def get_events(self, conn: Connection, run_id: str) -> list[RunEvent]:
        rows = self.x(
            conn, select(workflow_event).where(ev.run_id == run_id, self.scope(workflow_event)).order_by(ev.id)
        )
        return [RunEvent.model_validate(dict(r._mapping)) for r in rows]

    def count_by_type_status(self, conn: Connection) -> list[tuple[str, str, int]]:
        """Queue depth: unfinished runs per (type, status)."""
        rows = self.x(
            conn,
            select(run.type, run.status, func.count())
            .where(run.status.not_in(TERMINAL_STATUSES), run.deleted_at.is_(None), self.scope(workflow_run))
            .group_by(run.type, run.status),
        )
        return [(t, s, int(n)) for t, s, n in rows]

    def count_by_tenant_type_status(self, conn: Connection) -> list[tuple[str, str, str, int]]:
        """Queue depth per tenant: unfinished runs per (tenant, type, status)."""
        rows = self.x(
            conn,
            select(run.tenant, run.type, run.status, func.count())
            .where(run.status.not_in(TERMINAL_STATUSES), run.deleted_at.is_(None), self.scope(workflow_run))
            .group_by(run.tenant, run.type, run.status),
        )
        return [(tn, t, s, int(n)) for tn, t, s, n in rows]

    def count_by_tenant_status(self, conn: Connection) -> list[tuple[str, str, int]]:
        """Queue depth per tenant: unfinished runs per (tenant, status)."""
        rows = self.x(
            conn,
            select(run.tenant, run.status, func.count())
            .where(run.status.not_in(TERMINAL_STATUSES), run.deleted_at.is_(None), self.scope(workflow_run))
            .group_by(run.tenant, run.status),
        )
        return [(t, s, int(n)) for t, s, n in rows]

    # -- operator transitions ---------------------------------------------------------

    def cancel(self, conn: Connection, run_id: str) -> list[str]:
        """The ``cancel`` transition: any unfinished run ends ``cancelled``; a worker running
        it is fenced off at once (its token no longer matches a leased run). Its unfinished
        descendants are cancelled with it, and a waiting parent is woken; returns the ids
        of the descendants cancelled."""
        row = self.x(
            conn,
            update(workflow_run)
            .where(
                run.id == run_id,
                run.deleted_at.is_(None),
                run.status.not_in(TERMINAL_STATUSES),
                self.scope(workflow_run),
            )
            .values(status=Status.CANCELLED.value, lease_until=None, updated_at=db_now())
            .returning(run.attempt, run.parent_id),
        ).first()
        if row is None:
            status = self.status_of(conn, run_id)
            raise AlreadyComplete(f"run {run_id} is already {status}; only unfinished runs can be cancelled")
        self.add_events(conn, [{"run_id": run_id, "event_type": Kind.CANCEL.value, "attempt": row[0]}])
        self.composition.wake_parents(conn, [row.parent_id])
        return self.composition.cancel_descendants(conn, run_id)

    def requeue(
        self,
        conn: Connection,
        run_ids: Sequence[str],
        statuses: Sequence[str] = REQUEUE_STATUSES,
        *,
        bulk: bool = False,
    ) -> list[str]:
        """The ``requeue`` transition, for ``client.retry`` and bulk requeue alike: runs still in
        ``statuses`` (failed/cancelled) go back to pending, due now, with a fresh set of
        attempts. Their lease token is kept (and keeps counting), so an execution still
        running from before can never write again. A run whose data was deleted is skipped
        (nothing is left to run). Failed workflow steps are forgotten so
        they run again; completed ones stay. Returns the ids requeued."""
        if not run_ids:
            return []
        allowed = [s for s in statuses if s in REQUEUE_STATUSES]
        scrubbed = exists(select(ev.id).where(ev.run_id == run.id, ev.event_type == "data_deleted"))
        rows = self.x(
            conn,
            update(workflow_run)
            .where(
                run.id.in_(list(run_ids)),
                run.status.in_(allowed),
                run.deleted_at.is_(None),
                ~scrubbed,
                self.scope(workflow_run),
            )
            .values(
                status=Status.PENDING.value,
                attempt=0,
                run_at=db_now(),
                leased_by=None,
                lease_until=None,
                result=None,
                debounce_key=None,  # a requeued run is not the one a debounce key replaces
                updated_at=db_now(),
            )
            .returning(run.id),
        )
        done = sorted(str(r[0]) for r in rows)
        if not done:
            return []
        self.x(conn, delete(workflow_step).where(workflow_step.c.run_id.in_(done), workflow_step.c.status == "failed"))
        self.add_events(
            conn,
            [
                {
                    "run_id": i,
                    "event_type": Kind.REQUEUE.value,
                    "attempt": 0,
                    "detail": {"bulk": True} if bulk else None,
                }
                for i in done
            ],
        )
        self.notify(conn)
        return done

    def requeue_one(self, conn: Connection, run_id: str) -> None:
        """``client.retry``: requeue one run, or say why it cannot be."""
        if not self.requeue(conn, [run_id]):
            status = self.status_of(conn, run_id)
            if status in REQUEUE_STATUSES:  # the one other reason: ``delete_data`` left nothing to run
                raise InvalidState(f"run {run_id} cannot be retried: its data was deleted")
            raise InvalidState(f"run {run_id} is {status}; only failed or cancelled runs can be retried")


def _created_events_select(changed: CTE) -> Select[Any]:
    return select(
        changed.c.id,
        literal("created", String()),
        null(),
        changed.c.attempt,
        null(),
        db_now(),
    )


def _created_events(rows: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "run_id": r.id,
            "schedule_id": None,
            "event_type": "created",
            "worker_id": None,
            "attempt": r.attempt,
            "detail": None,
        }
        for r in rows
    ]
