"""A worker's SQL: claim due runs, keep leases, apply outcomes, take back expired leases.

Every write about a claimed run is fenced by its ``Lease`` (run id + lease token):
``WHERE id = :id AND lease_token = :token AND status = 'leased'``. A claim
increments the token, nothing ever lowers it, so a write from an earlier
execution of the same run matches no row. ``apply`` is the single path that
writes a worker's transitions (complete, retry, fail, park, release, expire),
each with its audit event, for any batch in one statement.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    CTE,
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    Integer,
    Select,
    String,
    Text,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    update,
)

from simpleflow.core.states import DUE_STATUSES, TERMINAL_STATUSES, Kind, Lease, Transition, expire
from simpleflow.db.database import Database
from simpleflow.db.dialect_sql import UUID_ITEM, UTCDateTime, db_now, db_now_plus
from simpleflow.db.schema import workflow_event, workflow_run, workflow_signal
from simpleflow.store.base import Statements, StoreBase
from simpleflow.store.claimed import CLAIM_RETURNING, ClaimedRun, claim_events_select, lease_values
from simpleflow.store.composition import WOKEN_DETAIL, CompositionStore, lock_parents, wake, woken_events
from simpleflow.store.fairness import fair_due
from simpleflow.store.flow import key_free, no_limit

run = workflow_run.c
sig = workflow_signal.c

# Literal SQL (not bound parameters) so both planners match the partial indexes.
DUE = text("status IN (" + ", ".join(f"'{s}'" for s in DUE_STATUSES) + ")")
LEASED = run.status == literal_column("'leased'")

#: run_at of a run that waits for a signal with no timeout
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=timezone.utc)

_LEASES = (("id", UUID_ITEM), ("token", BigInteger()))
_EVENT_COLUMNS = ["run_id", "event_type", "worker_id", "attempt", "detail", "created_at"]


_OUTCOMES = (
    ("id", UUID_ITEM),
    ("token", BigInteger()),
    ("status", String()),
    ("result", Text()),
    ("error", Text()),
    ("delay", Float()),
    ("forever", Integer()),
    ("refund", Integer()),
    ("signal", String()),
    ("child", UUID_ITEM),
    ("event", String()),
    ("detail", Text()),
)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class LeaseStore(StoreBase):
    """All SQL a worker runs about the runs it claims and holds."""

    def __init__(self, db: Database, statements: Statements | None = None, tenant: str | None = None) -> None:
        super().__init__(db, statements, tenant)
        self.composition = CompositionStore(db, self.statements)  # waking parents: unscoped, as the worker is

    @staticmethod
    def route_filter(
        exact: Iterable[str], prefixes: Iterable[str], exclude: Iterable[str] = (), tenants: Iterable[str] | None = None
    ) -> ColumnElement[bool]:
        """Which types a poller claims: exact names, or LIKE prefixes with % and _ escaped;
        with ``tenants``, only those tenants' runs (``Poller.with_tenants``)."""
        terms: list[ColumnElement[bool]] = []
        names = sorted(set(exact))
        if names:
            terms.append(run.type.in_(names))
        terms.extend(run.type.startswith(p, autoescape=True) for p in sorted(set(prefixes)))
        clause = or_(*terms) if terms else false()
        excluded = sorted(set(exclude))
        if excluded:
            clause = and_(clause, run.type.not_in(excluded))
        if tenants is not None:
            clause = and_(clause, run.tenant.in_(sorted(set(tenants))))
        return clause

    # -- claim ------------------------------------------------------------------------

    def claim(
        self,
        conn: Connection,
        worker_id: str,
        route: ColumnElement[bool],
        limit: int,
        lease_seconds: float,
        *,
        fair: bool = False,
        after: str = "",
    ) -> list[ClaimedRun]:
        """Lease up to ``limit`` due runs, highest priority (lowest number) first, in one
        statement; each claim takes a new lease token. ``fair``: the free threads are shared
        among the tenants with due work, round-robin starting with the first tenant
        ``after`` the one the previous claim served last (``_fair_due``, ``next_tenant``).

        PostgreSQL skips rows other workers are claiming (FOR UPDATE SKIP LOCKED);
        SQLite holds the write lock from BEGIN, so claims never overlap. The
        statement is built once per route (the caller keeps its route objects).

        Only types no limit governs are claimed here (``LimitStore.claim`` takes the
        others), and of runs sharing a concurrency key only the head of the key.
        """

        def build() -> Any:
            # A MATERIALIZED CTE, not "id IN (subquery)": PostgreSQL may re-run a LIMITed
            # subquery per row of a semi-join and so lease more rows than asked for.
            due = (
                fair_due(self.dialect, and_(route, no_limit(), key_free()))
                if fair
                else select(run.id)
                .where(DUE, run.run_at <= db_now(), route, no_limit(), key_free())
                .order_by(run.priority, run.run_at)
                .limit(bindparam("n", type_=Integer()))
                .with_for_update(skip_locked=True)
                .cte("due")
                .prefix_with("MATERIALIZED")
            )
            dml = update(workflow_run).where(run.id == due.c.id).values(**lease_values()).returning(*CLAIM_RETURNING)
            return self.dialect.with_events(dml, claim_events_select)

        stmt = self.statements.get(("claim", id(route), fair), build)  # the caller keeps each route alive
        return self._leased(conn, stmt, {"n": limit, "after": after}, worker_id, lease_seconds)

    def lease_ids(self, conn: Connection, worker_id: str, ids: Sequence[str], lease_seconds: float) -> list[ClaimedRun]:
        """Lease these runs, which the caller locked and chose (``LimitStore.claim``), if still due."""
        if not ids:
            return []

        def build() -> Any:
            dml = (
                update(workflow_run)
                .where(self.dialect.in_list(run.id, "ids", UUID_ITEM), DUE)
                .values(**lease_values())
                .returning(*CLAIM_RETURNING)
            )
            return self.dialect.with_events(dml, claim_events_select)

        stmt = self.statements.get("lease_ids", build)
        return self._leased(conn, stmt, {"ids": self.dialect.bind_list(list(ids))}, worker_id, lease_seconds)

    def _leased(
        self, conn: Connection, stmt: Any, params: dict[str, Any], worker_id: str, lease_seconds: float
    ) -> list[ClaimedRun]:
        rows = self.dialect.execute_with_events(
            conn,
            stmt,
            {**params, "w": worker_id, "lease": float(lease_seconds)},
            self.opts,
            lambda rows: [
                {
                    "run_id": r.id,
                    "schedule_id": None,
                    "event_type": "leased",
                    "worker_id": worker_id,
                    "attempt": r.attempt,
                    "detail": None,
                }
                for r in rows
            ],
        )
        rows.sort(key=lambda r: (r.priority, r.run_at))
        return [
            ClaimedRun(
                r.id, r.type, r.payload, r.attempt, r.max_attempts, int(r.lease_token), r.tenant, r.trace_context
            )
            for r in rows
        ]

    def next_due_in(self, conn: Connection, route: ColumnElement[bool], horizon: float) -> float | None:
        """Seconds (database clock) until the earliest ``run_at`` of these types within
        ``horizon`` seconds: a delayed submission, a retry, a timer, a signal timeout.
        Like ``claim``, it leaves out runs a limit governs or their key holds back, so
        blocked work never reads as due (no busy loop)."""
        row = self.x(
            conn,
            select(func.min(run.run_at), db_now()).where(
                DUE, run.run_at <= db_now_plus(literal(float(horizon), Float())), route, no_limit(), key_free()
            ),
        ).first()
        if row is None or row[0] is None:
            return None
        return max(0.0, float((row[0] - row[1]).total_seconds()))

    # -- leases -----------------------------------------------------------------------

    def renew(self, conn: Connection, leases: Sequence[Lease], lease_seconds: float) -> set[str]:
        """Extend these leases in one statement; the ids still held. A run missing from the
        answer was cancelled, expired or finished: its handler is told to stop."""
        if not leases:
            return set()

        def build() -> Any:
            b = self.dialect.batch("l", _LEASES)
            return (
                update(workflow_run)
                .where(run.id == b.c.id, run.lease_token == b.c.token, LEASED)
                .values(lease_until=db_now_plus(bindparam("lease", type_=Float())))
                .returning(run.id)
            )

        stmt = self.statements.get("renew", build)
        params = self.dialect.bind_batch("l", _LEASES, [(lease.run_id, lease.token) for lease in leases])
        return {str(r[0]) for r in self.x(conn, stmt, {**params, "lease": float(lease_seconds)})}

    def heartbeat(self, conn: Connection, worker_id: str, lease: Lease, attempt: int, lease_seconds: float) -> bool:
        """Extend one lease on the handler's request, with its audit event; False if fenced."""
        row = self.x(
            conn,
            update(workflow_run)
            .where(run.id == lease.run_id, run.lease_token == lease.token, LEASED)
            .values(lease_until=db_now_plus(literal(float(lease_seconds), Float())), updated_at=db_now())
            .returning(run.id),
        ).first()
        if row is None:
            return False
        self.add_events(
            conn,
            [
                {
                    "run_id": lease.run_id,
                    "event_type": "heartbeat",
                    "worker_id": worker_id,
                    "attempt": attempt,
                    "detail": {"lease_seconds": lease_seconds},
                }
            ],
        )
        return True

    # -- outcomes ---------------------------------------------------------------------

    def apply(self, conn: Connection, worker_id: str, outcomes: Sequence[tuple[Lease, Transition]]) -> set[str]:
        """Write transitions of held runs, each with its audit event, in one statement for
        any mix and size of batch; returns the run ids written (the others were fenced off).

        A park that waits for a signal (or a child run) becomes due at once if that signal
        is already stored (the child already finished). Callers with such parks run this in
        a transaction after ``lock``, so a signal (a child's end) committed meanwhile is seen
        (PostgreSQL: a later statement, a new snapshot). A run that ends here wakes its
        waiting parent in the same statement (``composition.wake``; SQLite: right after it,
        in the same transaction); runs without a parent pay nothing for it.
        """
        if not outcomes:
            return set()
        stmt = self.statements.get("apply", self._build_apply)
        rows = [
            (
                lease.run_id,
                lease.token,
                t.status,
                None if t.kind is not Kind.COMPLETE else _dumps(t.result),
                t.error,
                t.delay,
                int(t.kind is Kind.PARK and t.delay is None),
                int(t.refund),
                t.signal,
                t.child,
                t.event,
                None if (d := t.detail()) is None else _dumps(d),
            )
            for lease, t in outcomes
        ]
        params = {**self.dialect.bind_batch("o", _OUTCOMES, rows), "w": worker_id}
        by_id = {lease.run_id: t for lease, t in outcomes}

        def events(written: Sequence[Any]) -> list[dict[str, Any]]:
            return [
                {
                    "run_id": r.id,
                    "schedule_id": None,
                    "event_type": by_id[r.id].event,
                    "worker_id": worker_id,
                    "attempt": r.attempt + int(by_id[r.id].refund),
                    "detail": by_id[r.id].detail(),
                }
                for r in written
            ]

        def parents(rows: Sequence[Any]) -> None:
            self.composition.wake_parents(conn, [r.parent_id for r in rows if r.status in TERMINAL_STATUSES])

        written = self.dialect.execute_with_events(conn, stmt, params, self.opts, events, then=parents)
        ended = {str(r.id) for r in written if r.parent_id is not None and r.status in TERMINAL_STATUSES}
        if ended:
            # A parent parked in this same batch could not see its child end in the same statement.
            self.composition.wake_parents(conn, [lease.run_id for lease, t in outcomes if t.child in ended])
        if ended or any(t.kind in (Kind.RELEASE, Kind.RETRY, Kind.EXPIRE) or t.signal for _, t in outcomes):
            self.notify(conn)
        return {str(r.id) for r in written}

    def lock(self, conn: Connection, leases: Sequence[Lease]) -> None:
        """Lock the rows of these runs until the transaction ends (see ``apply``)."""
        ids = sorted(lease.run_id for lease in leases)
        self.x(conn, select(run.id).where(run.id.in_(ids)).order_by(run.id).with_for_update())

    def _build_apply(self) -> Any:
        b = self.dialect.batch("o", _OUTCOMES)
        awaited = workflow_run.alias("awaited")
        signal_waiting = or_(
            and_(
                b.c.signal.is_not(None),
                exists(select(sig.id).where(sig.run_id == run.id, sig.name == b.c.signal, sig.consumed_by.is_(None))),
            ),
            and_(
                b.c.child.is_not(None),
                exists(select(awaited.c.id).where(awaited.c.id == b.c.child, awaited.c.status.in_(TERMINAL_STATUSES))),
            ),
        )
        dml = (
            update(workflow_run)
            .where(run.id == b.c.id, run.lease_token == b.c.token, LEASED)
            .values(
                status=b.c.status,
                result=case((b.c.status == "succeeded", self.dialect.json_from_text(b.c.result)), else_=run.result),
                last_error=case(
                    (b.c.status == "succeeded", null()), (b.c.error.is_(None), run.last_error), else_=b.c.error
                ),
                run_at=case(
                    (signal_waiting, db_now()),
                    (b.c.forever == 1, literal(FAR_FUTURE, UTCDateTime())),
                    (b.c.delay.is_(None), run.run_at),
                    else_=db_now_plus(b.c.delay),
                ),
                attempt=run.attempt - b.c.refund,
                leased_by=case((b.c.status.in_(TERMINAL_STATUSES), run.leased_by), else_=null()),
                lease_until=None,
                updated_at=db_now(),
            )
            .returning(run.id, run.attempt, run.parent_id, run.status, run.tenant)
        )
        return self.dialect.with_events(dml, lambda changed: self._apply_events_select(changed), then=self._wake_ctes)

    def _wake_ctes(self, changed: CTE) -> list[CTE]:
        """PostgreSQL: the parents of runs this statement ended, locked (any status) and the
        waiting ones woken, with their events, in the statement itself."""
        ended = select(changed.c.parent_id).where(
            changed.c.parent_id.is_not(None), changed.c.status.in_(TERMINAL_STATUSES)
        )
        locked = lock_parents(ended).cte("parents")
        woken = wake(select(locked.c.id).where(locked.c.status == "waiting")).cte("woken")
        detail = self.dialect.json_from_text(literal(_dumps(WOKEN_DETAIL), Text()))
        written = self.dialect.insert(workflow_event).from_select(_EVENT_COLUMNS, woken_events(woken, detail))
        return [woken, written.cte("woken_events")]

    def _apply_events_select(self, changed: CTE) -> Select[Any]:
        b = self.dialect.batch("o", _OUTCOMES)
        return select(
            changed.c.id,
            b.c.event,
            bindparam("w", type_=String()),
            changed.c.attempt + b.c.refund,
            self.dialect.json_from_text(b.c.detail),
            db_now(),
        ).select_from(changed.join(b, b.c.id == changed.c.id))

    # -- other workers' leases --------------------------------------------------------

    def expire(self, conn: Connection, limit: int = 100) -> list[tuple[str, str]]:
        """The ``expire`` transition for runs whose lease ran out (their worker died or hung):
        through ``apply``, fenced by the token they were claimed with. (run id, new status)."""
        expired = self.x(
            conn,
            select(run.id, run.leased_by, run.attempt, run.max_attempts, run.lease_token)
            .where(LEASED, run.lease_until < db_now())
            .order_by(run.lease_until)
            .limit(limit)
            .with_for_update(skip_locked=True),
        ).all()
        outcomes = [(Lease(r.id, int(r.lease_token)), expire(r.attempt, r.max_attempts, r.leased_by)) for r in expired]
        workers = {r.id: r.leased_by for r in expired}
        out: list[tuple[str, str]] = []
        for lease, transition in outcomes:  # each in the name of the worker that lost it
            if self.apply(conn, workers[lease.run_id], [(lease, transition)]):
                out.append((lease.run_id, transition.status))
        return out

    def fail_overdue(self, conn: Connection, limit: int = 100) -> list[str]:
        """Runs past their deadline (``with_deadline``) that have not finished end ``failed``
        with ``DeadlineExceeded``; a worker still running one is fenced off at once."""
        rows = self.x(
            conn,
            select(run.id, run.attempt, run.deadline_at)
            .where(run.deadline_at.is_not(None), run.deadline_at < db_now(), run.status.not_in(TERMINAL_STATUSES))
            .order_by(run.deadline_at)
            .limit(limit)
            .with_for_update(skip_locked=True),
        ).all()
        done = []
        for r in rows:
            message = f"DeadlineExceeded: run {r.id} did not finish before its deadline {r.deadline_at.isoformat()}"
            ended = self.x(
                conn,
                update(workflow_run)
                .where(run.id == r.id, run.status.not_in(TERMINAL_STATUSES))
                .values(status="failed", last_error=message, lease_until=None, updated_at=db_now())
                .returning(run.parent_id),
            ).first()
            if ended is not None:
                self.composition.wake_parents(conn, [ended.parent_id])
            self.add_events(
                conn, [{"run_id": r.id, "event_type": "failed", "attempt": r.attempt, "detail": {"error": message}}]
            )
            done.append(str(r.id))
        return done
