"""The store: every SQL statement simpleflow runs against its runs, events and workers.

One named method per statement (or per transaction that must be atomic), built
with SQLAlchemy Core for both dialects. Every state change of a run writes its
audit event in the same transaction. Methods take an open ``Connection`` so the
caller decides the transaction (the Client's own, or the user's).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Integer,
    String,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    column,
    delete,
    false,
    func,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row

from simpleflow.core.errors import AlreadyComplete, InvalidState, NotFound
from simpleflow.core.models import RunEvent, RunInfo
from simpleflow.db.database import Database
from simpleflow.db.dialect import db_now, db_now_plus, insert, seconds
from simpleflow.db.notify import notify_channel
from simpleflow.db.schema import (
    TERMINAL_STATUSES,
    WAITING_STATUSES,
    workflow_event,
    workflow_registry,
    workflow_run,
    workflow_step,
)

run = workflow_run.c
ev = workflow_event.c

# Literal SQL (not bound parameters) so both planners match the partial indexes.
_DUE_STATUS = text("status IN (" + ", ".join(f"'{s}'" for s in WAITING_STATUSES) + ")")
_TERMINAL_STATUS = text("status IN (" + ", ".join(f"'{s}'" for s in TERMINAL_STATUSES) + ")")
_LEASED = text("status = 'leased'")

#: run_at of a run that waits for a signal with no timeout
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=timezone.utc)

RUN_COLUMNS = (
    run.id, run.type, run.payload, run.status, run.priority, run.run_at, run.idempotency_key,
    run.attempt, run.max_attempts, run.leased_by, run.lease_until, run.last_error, run.result,
    run.created_at, run.updated_at,
)


def _field(i: int) -> Any:
    return func.json_extract(column("value"), f"$[{i}]")


def _sqlite_time(value: datetime) -> str:
    """An aware datetime in the text form the SQLite schema stores and compares."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


_INSERT_RUNS_SQLITE = (
    sqlite.insert(workflow_run)
    .from_select(
        ["id", "type", "payload", "priority", "max_attempts", "idempotency_key", "run_at", "status", "attempt",
         "created_at", "updated_at"],
        select(
            _field(0), _field(1), _field(2), _field(3), _field(4), _field(5),
            func.coalesce(_field(6), db_now_plus(_field(7))),
            literal("pending"), literal(0), db_now(), db_now(),
        )
        .select_from(func.json_each(bindparam("batch", type_=Text())))
        .where(true()),  # SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT
    )
    .on_conflict_do_nothing(
        index_elements=[run.idempotency_key],
        index_where=text("idempotency_key IS NOT NULL AND deleted_at IS NULL"),
    )
    .returning(run.id)
)

_INSERT_CREATED_SQLITE = workflow_event.insert().from_select(
    ["run_id", "event_type", "attempt", "created_at"],
    select(column("value"), literal("created"), literal(0), db_now()).select_from(
        func.json_each(bindparam("ids", type_=Text()))
    ),
)

_INSERT_EVENT = workflow_event.insert().values(created_at=db_now())

_COMPLETE_ONE = (
    update(workflow_run)
    .where(run.id == bindparam("b_id"))
    .values(status="succeeded", result=bindparam("b_result", type_=run.result.type), lease_until=None,
            last_error=None, updated_at=db_now())
)


@dataclass(frozen=True)
class NewRun:
    """A validated submission, ready to insert."""

    id: str
    type: str
    payload: Any
    priority: int
    max_attempts: int
    idempotency_key: str | None
    run_at: datetime | None  # absolute time, or None for "now + delay" on the database clock
    delay: float
    payload_text: str | None = None  # the payload's JSON text, when the caller already has it

    @property
    def payload_json(self) -> str:
        if self.payload_text is not None:
            return self.payload_text
        return json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ClaimedRun:
    """A run this worker now holds a lease on."""

    id: str
    type: str
    payload: Any
    attempt: int
    max_attempts: int
    status_before: str


def run_info(row: Row[Any]) -> RunInfo:
    return RunInfo.model_validate(dict(row._mapping))


class Store:
    """All SQL about runs, their events and the worker registry."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.opts = db.exec_options
        self.channel = notify_channel(db.schema)
        #: hot-path statements, built once: SQLAlchemy then skips building and cache-key work
        self._statements: dict[Any, Any] = {}
        self._routes_alive: dict[int, Any] = {}

    def _x(self, conn: Connection, stmt: Any, params: Any = None) -> Any:
        return conn.execute(stmt, params, execution_options=self.opts)

    # -- events -----------------------------------------------------------------

    def add_events(self, conn: Connection, events: Sequence[dict[str, Any]]) -> None:
        """Append audit events (run_id/schedule_id, event_type, worker_id, attempt, detail)."""
        if not events:
            return
        rows = [
            {"run_id": None, "schedule_id": None, "worker_id": None, "attempt": None, "detail": None} | e
            for e in events
        ]
        self._x(conn, _INSERT_EVENT, rows)

    def _with_events(self, key: Any, build: Callable[[], Any], event_type: str, *, notify: bool = False) -> Any:
        """The statement for an INSERT/UPDATE … RETURNING (``id`` and ``attempt`` among its
        columns) that also writes one audit event per returned row; built once per key.

        PostgreSQL: one statement (a data-modifying CTE), so a hot-path write is one
        round trip and needs no explicit transaction; ``notify`` adds the ``pg_notify``
        wake-up to it. SQLite: the DML alone; ``_execute_with_events`` adds the events
        in the same transaction (there are no round trips to save). The events'
        worker id is the bound parameter ``ev_worker``.
        """
        stmt = self._statements.get(key)
        if stmt is not None:
            return stmt
        dml = build()
        if self.db.is_postgres:
            changed = dml.cte("changed")
            events = insert(self.db.dialect, workflow_event).from_select(
                ["run_id", "event_type", "worker_id", "attempt", "created_at"],
                select(
                    changed.c.id,
                    literal(event_type, String()),
                    bindparam("ev_worker", type_=String()),
                    changed.c.attempt,
                    db_now(),
                ),
            )
            columns: list[Any] = [*changed.c]
            if notify:
                columns.append(func.pg_notify(self.channel, "").label("notified"))
            stmt = select(*columns).add_cte(events.cte("events"))
        else:
            stmt = dml
        self._statements[key] = stmt
        return stmt

    def _execute_with_events(
        self, conn: Connection, stmt: Any, params: dict[str, Any], event_type: str, worker_id: str | None
    ) -> list[Row[Any]]:
        """Execute a statement from ``_with_events``: the change and its events, atomically."""
        rows = list(self._x(conn, stmt, {**params, "ev_worker": worker_id}).all())
        if not self.db.is_postgres:
            self.add_events(
                conn,
                [{"run_id": r.id, "event_type": event_type, "worker_id": worker_id, "attempt": r.attempt} for r in rows],
            )
        return rows

    def get_events(self, conn: Connection, run_id: str) -> list[RunEvent]:
        rows = self._x(conn, select(workflow_event).where(ev.run_id == run_id).order_by(ev.id))
        return [RunEvent.model_validate(dict(r._mapping)) for r in rows]

    # -- producer -----------------------------------------------------------------

    def insert_runs(self, conn: Connection, runs: Sequence[NewRun]) -> list[str]:
        """Insert runs in one statement; a live idempotency key keeps its existing run.

        PostgreSQL: one statement for any batch (rows as arrays through ``unnest``,
        with their ``created`` events and the wake-up notification). SQLite: one
        executemany plus the events. Returns each submission's run id, in order:
        the new id, or the id of the run that already holds the key.
        """
        if self.db.is_postgres:
            stmt = self._with_events("insert_runs", self._build_insert_pg, "created", notify=True)
            params = {
                "ids": [r.id for r in runs],
                "types": [r.type for r in runs],
                "payloads": [r.payload_json for r in runs],
                "priorities": [r.priority for r in runs],
                "max_attempts": [r.max_attempts for r in runs],
                "keys": [r.idempotency_key for r in runs],
                "run_ats": [r.run_at for r in runs],
                "delays": [r.delay for r in runs],
            }
            inserted = {row.id for row in self._execute_with_events(conn, stmt, params, "created", None)}
        else:
            # The whole batch as one JSON parameter that SQLite's json_each unpacks in C:
            # one statement for any batch, no per-row parameter processing.
            batch = json.dumps(
                [
                    [r.id, r.type, r.payload_json, r.priority, r.max_attempts, r.idempotency_key,
                     None if r.run_at is None else _sqlite_time(r.run_at), r.delay]
                    for r in runs
                ],
                ensure_ascii=False,
            )
            inserted_ids = [row[0] for row in self._x(conn, _INSERT_RUNS_SQLITE, {"batch": batch})]
            inserted = set(inserted_ids)
            if inserted_ids:
                self._x(conn, _INSERT_CREATED_SQLITE, {"ids": json.dumps(inserted_ids)})
        missing = {r.idempotency_key for r in runs if r.id not in inserted and r.idempotency_key}
        holders: dict[str, str] = {}
        if missing:
            rows = self._x(
                conn,
                select(run.idempotency_key, run.id).where(run.idempotency_key.in_(missing), run.deleted_at.is_(None)),
            )
            holders = {k: i for k, i in rows}
        ids = []
        for r in runs:
            if r.id in inserted:
                ids.append(r.id)
            else:
                assert r.idempotency_key is not None and r.idempotency_key in holders, "lost idempotent insert"
                ids.append(holders[r.idempotency_key])
        return ids

    def _build_insert_pg(self) -> Any:
        """INSERT … SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING RETURNING id, attempt."""
        rows = func.unnest(
            bindparam("ids", type_=postgresql.ARRAY(postgresql.UUID(as_uuid=False))),
            bindparam("types", type_=postgresql.ARRAY(String())),
            bindparam("payloads", type_=postgresql.ARRAY(Text())),
            bindparam("priorities", type_=postgresql.ARRAY(Integer())),
            bindparam("max_attempts", type_=postgresql.ARRAY(Integer())),
            bindparam("keys", type_=postgresql.ARRAY(String())),
            bindparam("run_ats", type_=postgresql.ARRAY(postgresql.TIMESTAMP(timezone=True))),
            bindparam("delays", type_=postgresql.ARRAY(Float())),
        ).table_valued("id", "type", "payload", "priority", "max_attempts", "key", "run_at", "delay").render_derived(
            name="u"
        )
        source = select(
            rows.c.id, rows.c.type, cast(rows.c.payload, postgresql.JSONB), rows.c.priority, rows.c.max_attempts,
            rows.c.key, func.coalesce(rows.c.run_at, db_now_plus(rows.c.delay)), literal("pending"), literal(0),
            db_now(), db_now(),
        )
        return (
            postgresql.insert(workflow_run)
            .from_select(
                ["id", "type", "payload", "priority", "max_attempts", "idempotency_key", "run_at", "status",
                 "attempt", "created_at", "updated_at"],
                source,
            )
            .on_conflict_do_nothing(
                index_elements=[run.idempotency_key],
                index_where=text("idempotency_key IS NOT NULL AND deleted_at IS NULL"),
            )
            .returning(run.id, run.attempt)
        )

    def get_run(self, conn: Connection, run_id: str) -> RunInfo:
        row = self._x(conn, select(*RUN_COLUMNS).where(run.id == run_id, run.deleted_at.is_(None))).first()
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
    ) -> list[RunInfo]:
        stmt = select(*RUN_COLUMNS).where(run.deleted_at.is_(None))
        if type is not None:
            stmt = stmt.where(run.type == type)
        if status is not None:
            stmt = stmt.where(run.status == status)
        if idempotency_key is not None:
            stmt = stmt.where(run.idempotency_key == idempotency_key)
        stmt = stmt.order_by(run.id.desc()).limit(limit).offset(offset)
        return [run_info(r) for r in self._x(conn, stmt)]

    def _status_of(self, conn: Connection, run_id: str) -> str:
        row = self._x(conn, select(run.status).where(run.id == run_id, run.deleted_at.is_(None))).first()
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return str(row[0])

    def cancel(self, conn: Connection, run_id: str) -> None:
        """Cancel a run that has not finished; a worker running it loses its lease at once."""
        result = self._x(
            conn,
            update(workflow_run)
            .where(run.id == run_id, run.deleted_at.is_(None), run.status.not_in(TERMINAL_STATUSES))
            .values(status="cancelled", lease_until=None, updated_at=db_now())
            .returning(run.attempt),
        ).first()
        if result is None:
            status = self._status_of(conn, run_id)
            raise AlreadyComplete(f"run {run_id} is already {status}; only unfinished runs can be cancelled")
        self.add_events(conn, [{"run_id": run_id, "event_type": "cancelled", "attempt": result[0]}])

    def retry(self, conn: Connection, run_id: str) -> None:
        """Put a failed or cancelled run back to pending with a fresh set of attempts
        (``max_attempts`` grows by the attempts already used)."""
        result = self._x(
            conn,
            update(workflow_run)
            .where(run.id == run_id, run.deleted_at.is_(None), run.status.in_(("failed", "cancelled")))
            .values(
                # Attempt numbers keep counting (they fence late writes of earlier
                # executions); the run gets a fresh allowance on top of what it used.
                status="pending", max_attempts=run.max_attempts + run.attempt, run_at=db_now(),
                leased_by=None, lease_until=None, result=None, updated_at=db_now(),
            )
            .returning(run.id),
        ).first()
        if result is None:
            status = self._status_of(conn, run_id)
            raise InvalidState(f"run {run_id} is {status}; only failed or cancelled runs can be retried")
        # A workflow's failed steps run again; its completed steps stay recorded.
        self._x(conn, delete(workflow_step).where(workflow_step.c.run_id == run_id, workflow_step.c.status == "failed"))
        self.add_events(conn, [{"run_id": run_id, "event_type": "requeued", "attempt": 0}])
        if self.db.is_postgres:
            self._x(conn, select(func.pg_notify(self.channel, "")))

    # -- worker -----------------------------------------------------------------

    @staticmethod
    def route_filter(exact: Iterable[str], prefixes: Iterable[str], exclude: Iterable[str] = ()) -> ColumnElement[bool]:
        """Which types a poller claims: exact names, or LIKE prefixes with % and _ escaped."""
        terms: list[ColumnElement[bool]] = []
        exact = sorted(set(exact))
        if exact:
            terms.append(run.type.in_(exact))
        terms.extend(run.type.startswith(p, autoescape=True) for p in sorted(set(prefixes)))
        clause = or_(*terms) if terms else false()
        excluded = sorted(set(exclude))
        if excluded:
            clause = and_(clause, run.type.not_in(excluded))
        return clause

    def claim(
        self, conn: Connection, worker_id: str, route: ColumnElement[bool], limit: int, lease_seconds: float
    ) -> list[ClaimedRun]:
        """Lease up to ``limit`` due runs, highest priority (lowest number) first, in one statement.

        PostgreSQL skips rows other workers are claiming (FOR UPDATE SKIP LOCKED);
        SQLite holds the write lock from BEGIN, so claims never overlap. The
        statement is built once per route (the caller keeps its route objects).
        """

        def build() -> Any:
            # A MATERIALIZED CTE, not "id IN (subquery)": PostgreSQL may re-run a LIMITed
            # subquery per row of a semi-join and so lease more rows than asked for.
            due = (
                select(run.id)
                .where(_DUE_STATUS, run.run_at <= db_now(), route)
                .order_by(run.priority, run.run_at)
                .limit(bindparam("n", type_=Integer()))
                .with_for_update(skip_locked=True)
                .cte("due")
                .prefix_with("MATERIALIZED")
            )
            return (
                update(workflow_run)
                .where(run.id == due.c.id)
                .values(
                    status="leased", leased_by=bindparam("w", type_=String()),
                    lease_until=db_now_plus(bindparam("lease", type_=Float())),
                    attempt=run.attempt + 1, updated_at=db_now(),
                )
                .returning(run.id, run.type, run.payload, run.attempt, run.max_attempts, run.priority, run.run_at)
            )

        stmt = self._with_events(("claim", id(route)), build, "leased")
        self._routes_alive[id(route)] = route  # the cache key is the route's identity: keep it alive
        rows = self._execute_with_events(
            conn, stmt, {"n": limit, "w": worker_id, "lease": float(lease_seconds)}, "leased", worker_id
        )
        rows.sort(key=lambda r: (r.priority, r.run_at))
        return [ClaimedRun(r.id, r.type, r.payload, r.attempt, r.max_attempts, "pending") for r in rows]

    def has_due(self, conn: Connection, route: ColumnElement[bool]) -> bool:
        """Is any run of these types due now? (``run_until_idle`` uses it to confirm idleness.)"""
        stmt = select(run.id).where(_DUE_STATUS, run.run_at <= db_now(), route).limit(1)
        return self._x(conn, stmt).first() is not None

    def renew_leases(self, conn: Connection, worker_id: str, run_ids: Sequence[str], lease_seconds: float) -> set[str]:
        """Extend the leases this worker still holds; returns the ids it still holds.

        A run missing from the answer was cancelled or taken over: its handler is told
        through ``run.is_cancelled()`` and its late writes will be fenced off.
        """
        if not run_ids:
            return set()
        stmt = self._statements.get("renew")
        if stmt is None:
            stmt = self._statements["renew"] = (
                update(workflow_run)
                .where(self._id_in("ids"), _LEASED, run.leased_by == bindparam("w", type_=String()))
                .values(lease_until=db_now_plus(bindparam("lease", type_=Float())))
                .returning(run.id)
            )
        rows = self._x(conn, stmt, {"ids": self._ids_param(run_ids), "w": worker_id, "lease": float(lease_seconds)})
        return {r[0] for r in rows}

    def _id_in(self, name: str) -> ColumnElement[bool]:
        """``id`` among a list of run ids bound as ONE parameter, so the SQL text is the
        same for any list length (PostgreSQL: ``= ANY(array)``; SQLite: ``json_each``).
        Varying ``IN (?, ?, …)`` lists would fill the drivers' prepared-statement caches
        with a statement per length."""
        if self.db.is_postgres:
            return run.id == any_(bindparam(name, type_=postgresql.ARRAY(postgresql.UUID(as_uuid=False))))
        return run.id.in_(select(column("value")).select_from(func.json_each(bindparam(name, type_=Text()))))

    def _ids_param(self, ids: Sequence[str]) -> Any:
        return list(ids) if self.db.is_postgres else json.dumps(list(ids))

    def heartbeat(self, conn: Connection, worker_id: str, run_id: str, attempt: int, lease_seconds: float) -> bool:
        """Extend one lease on the handler's request, with its audit event; False if fenced."""
        row = self._x(
            conn,
            update(workflow_run)
            .where(run.id == run_id, _LEASED, run.leased_by == worker_id, run.attempt == attempt)
            .values(lease_until=db_now_plus(seconds(lease_seconds)), updated_at=db_now())
            .returning(run.id),
        ).first()
        if row is None:
            return False
        self.add_events(
            conn, [{"run_id": run_id, "event_type": "heartbeat", "worker_id": worker_id, "attempt": attempt,
                    "detail": {"lease_seconds": lease_seconds}}]
        )
        return True

    def is_held(self, conn: Connection, worker_id: str, run_id: str, attempt: int) -> bool:
        row = self._x(
            conn,
            select(run.id).where(run.id == run_id, _LEASED, run.leased_by == worker_id, run.attempt == attempt),
        ).first()
        return row is not None

    def _fenced(self, run_id: str, worker_id: str, attempt: int) -> ColumnElement[bool]:
        return and_(run.id == run_id, _LEASED, run.leased_by == worker_id, run.attempt == attempt)

    def complete(self, conn: Connection, worker_id: str, run_id: str, attempt: int, result: Any) -> bool:
        """Mark a held run succeeded with its result; False (nothing written) if the lease was lost."""
        row = self._x(
            conn,
            update(workflow_run)
            .where(self._fenced(run_id, worker_id, attempt))
            .values(status="succeeded", result=result, lease_until=None, last_error=None, updated_at=db_now())
            .returning(run.id),
        ).first()
        if row is None:
            return False
        self.add_events(conn, [{"run_id": run_id, "event_type": "succeeded", "worker_id": worker_id, "attempt": attempt}])
        return True

    def complete_many(
        self, conn: Connection, worker_id: str, done: Sequence[tuple[str, int, Any]]
    ) -> set[tuple[str, int]]:
        """Mark many held runs succeeded, fenced like ``complete``; returns the (id, attempt)
        pairs written. PostgreSQL: one UPDATE … FROM (VALUES …); SQLite, which has no
        round trips to save, one UPDATE per run in the same transaction."""
        if not done:
            return set()
        if self.db.is_postgres:
            stmt = self._with_events("complete_many", self._build_complete_pg, "succeeded")
            arrays = {
                "ids": [d[0] for d in done],
                "attempts": [d[1] for d in done],
                "results": [json.dumps(d[2], separators=(",", ":"), ensure_ascii=False) for d in done],
                "w": worker_id,
            }
            return {(r.id, r.attempt) for r in self._execute_with_events(conn, stmt, arrays, "succeeded", worker_id)}
        else:
            # SQLite holds the write lock for the whole transaction: read which leases are
            # still ours, then write those with one executemany.
            stmt = self._statements.get("held")
            if stmt is None:
                stmt = self._statements["held"] = select(run.id, run.attempt).where(
                    self._id_in("ids"), _LEASED, run.leased_by == bindparam("w", type_=String())
                )
            held = {
                (r[0], r[1])
                for r in self._x(conn, stmt, {"ids": self._ids_param([d[0] for d in done]), "w": worker_id})
            }
            params = [{"b_id": i, "b_result": r} for i, a, r in done if (i, a) in held]
            if params:
                self._x(conn, _COMPLETE_ONE, params)
            written = {(i, a) for i, a, _ in done if (i, a) in held}
        self.add_events(
            conn,
            [{"run_id": i, "event_type": "succeeded", "worker_id": worker_id, "attempt": a} for i, a in sorted(written)],
        )
        return written

    def _build_complete_pg(self) -> Any:
        """UPDATE … FROM unnest(ids, attempts, results): one cached statement for any batch."""
        v = func.unnest(
            bindparam("ids", type_=postgresql.ARRAY(postgresql.UUID(as_uuid=False))),
            bindparam("attempts", type_=postgresql.ARRAY(Integer())),
            bindparam("results", type_=postgresql.ARRAY(Text())),
        ).table_valued("vid", "vattempt", "vresult").render_derived(name="v")
        return (
            update(workflow_run)
            .where(run.id == v.c.vid, run.attempt == v.c.vattempt, _LEASED, run.leased_by == bindparam("w", type_=String()))
            .values(status="succeeded", result=cast(v.c.vresult, postgresql.JSONB), lease_until=None, last_error=None,
                    updated_at=db_now())
            .returning(run.id, run.attempt)
        )

    def fail(
        self, conn: Connection, worker_id: str, run_id: str, attempt: int, error: str, retry_in: float | None
    ) -> str | None:
        """Record a failed attempt: back to pending after ``retry_in`` seconds, or ``failed``
        when ``retry_in`` is None. Returns the new status, or None if the lease was lost."""
        final = retry_in is None
        values: dict[str, Any] = {"last_error": error, "lease_until": None, "updated_at": db_now()}
        if final:
            values["status"] = "failed"
        else:
            values.update(status="pending", leased_by=None, run_at=db_now_plus(seconds(retry_in or 0.0)))
        row = self._x(
            conn, update(workflow_run).where(self._fenced(run_id, worker_id, attempt)).values(**values).returning(run.id)
        ).first()
        if row is None:
            return None
        # The event keeps the traceback's last line ("ValueError: boom"); last_error keeps it all.
        summary = next((line for line in reversed(error.splitlines()) if line.strip()), "")
        detail: dict[str, Any] = {"error": summary[:500]}
        if not final:
            detail["retry_in_seconds"] = round(retry_in or 0.0, 3)
        self.add_events(
            conn,
            [{"run_id": run_id, "event_type": "failed" if final else "retried", "worker_id": worker_id,
              "attempt": attempt, "detail": detail}],
        )
        return "failed" if final else "pending"

    def release(self, conn: Connection, worker_id: str, run_id: str, attempt: int, reason: str) -> bool:
        """Give a held run back untouched: pending, due now, its attempt not spent."""
        row = self._x(
            conn,
            update(workflow_run)
            .where(self._fenced(run_id, worker_id, attempt))
            .values(status="pending", attempt=run.attempt - 1, leased_by=None, lease_until=None, updated_at=db_now())
            .returning(run.id),
        ).first()
        if row is None:
            return False
        self.add_events(
            conn, [{"run_id": run_id, "event_type": "released", "worker_id": worker_id, "attempt": attempt,
                    "detail": {"reason": reason}}]
        )
        if self.db.is_postgres:
            self._x(conn, select(func.pg_notify(self.channel, "")))
        return True

    def suspend(
        self, conn: Connection, worker_id: str, run_id: str, attempt: int, status: str, wake_in: float | None
    ) -> bool:
        """Park a held workflow run (``sleeping``, ``waiting`` or ``pending``) until ``wake_in``
        seconds from now (None: until a signal), refunding the attempt it did not spend."""
        wake = db_now_plus(seconds(wake_in)) if wake_in is not None else literal(FAR_FUTURE, run.run_at.type)
        row = self._x(
            conn,
            update(workflow_run)
            .where(self._fenced(run_id, worker_id, attempt))
            .values(status=status, run_at=wake, attempt=run.attempt - 1, leased_by=None, lease_until=None,
                    updated_at=db_now())
            .returning(run.id),
        ).first()
        if row is None:
            return False
        self.add_events(
            conn, [{"run_id": run_id, "event_type": status, "worker_id": worker_id, "attempt": attempt,
                    "detail": {"wake_in_seconds": wake_in}}]
        )
        return True

    def reap_expired(self, conn: Connection, limit: int = 100) -> list[tuple[str, str]]:
        """Take back runs whose lease expired (their worker died): pending again, due now,
        or ``failed`` if that was their last attempt. Returns (run id, new status)."""
        expired = self._x(
            conn,
            select(run.id, run.leased_by, run.attempt, run.max_attempts)
            .where(_LEASED, run.lease_until < db_now())
            .order_by(run.lease_until)
            .limit(limit)
            .with_for_update(skip_locked=True),
        ).all()
        out: list[tuple[str, str]] = []
        events = []
        for r in expired:
            final = r.attempt >= r.max_attempts
            status = "failed" if final else "pending"
            values: dict[str, Any] = {"status": status, "lease_until": None, "updated_at": db_now()}
            if final:
                values["last_error"] = f"lease expired: worker {r.leased_by} stopped renewing during the last attempt"
            else:
                values.update(leased_by=None, run_at=db_now())
            self._x(conn, update(workflow_run).where(run.id == r.id, _LEASED, run.attempt == r.attempt).values(**values))
            events.append({"run_id": r.id, "event_type": "lease_expired", "worker_id": r.leased_by,
                           "attempt": r.attempt, "detail": {"now": status}})
            out.append((r.id, status))
        self.add_events(conn, events)
        if out and self.db.is_postgres:
            self._x(conn, select(func.pg_notify(self.channel, "")))
        return out

    def count_by_type_status(self, conn: Connection) -> list[tuple[str, str, int]]:
        """Queue depth: unfinished runs per (type, status)."""
        rows = self._x(
            conn,
            select(run.type, run.status, func.count())
            .where(run.status.not_in(TERMINAL_STATUSES), run.deleted_at.is_(None))
            .group_by(run.type, run.status),
        )
        return [(t, s, int(n)) for t, s, n in rows]

    # -- registry -----------------------------------------------------------------

    def register_worker(
        self, conn: Connection, worker_id: str, host: str, pid: int, types: list[str], prefixes: list[str],
        concurrency: int,
    ) -> None:
        values = {"worker_id": worker_id, "host": host, "pid": pid, "types": types, "prefixes": prefixes,
                  "concurrency": concurrency}
        stmt = insert(self.db.dialect, workflow_registry).values(**values, started_at=db_now(), heartbeat_at=db_now())
        stmt = stmt.on_conflict_do_update(
            index_elements=[workflow_registry.c.worker_id],
            set_={**{k: v for k, v in values.items() if k != "worker_id"}, "started_at": db_now(), "heartbeat_at": db_now()},
        )
        self._x(conn, stmt)

    def heartbeat_worker(self, conn: Connection, worker_id: str) -> None:
        self._x(conn, update(workflow_registry).where(workflow_registry.c.worker_id == worker_id).values(heartbeat_at=db_now()))

    def unregister_worker(self, conn: Connection, worker_id: str) -> None:
        self._x(conn, delete(workflow_registry).where(workflow_registry.c.worker_id == worker_id))

    def list_workers(self, conn: Connection) -> list[dict[str, Any]]:
        rows = self._x(conn, select(workflow_registry, db_now().label("now")).order_by(workflow_registry.c.worker_id))
        return [dict(r._mapping) for r in rows]
