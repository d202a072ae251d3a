"""Flow control's SQL: the limits table, the claim of governed runs, the circuit breaker.

A claim of runs a limit governs is one transaction (``claim``):

1. lock the limit rows this poller could be governed by, in pattern order
   (``FOR UPDATE`` on PostgreSQL, so two workers never both see the same free slot;
   SQLite's write lock, taken at BEGIN, already serializes every claim);
2. read, in a later statement (a fresh snapshot under READ COMMITTED, so the leases
   the previous holder of the lock committed are counted), each limit's usage: runs
   of matching types leased now, and starts within its rate window;
3. take due runs whose every governing limit has room (``FOR UPDATE SKIP LOCKED``),
   oldest first by priority then due time, and lease them;
4. record one start per rate limit per leased run, and drop starts out of the window.

A slot is counted from leased rows, so it frees when the run settles or when the
reaper takes back an expired lease. Runs no limit governs never pay for any of
this: ``LeaseStore.claim`` leaves governed types out in its one statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Float, Integer, String, bindparam, delete, func, literal_column, select, true, update

from simpleflow.core.errors import NotFound
from simpleflow.core.limits import Limit, LimitSpec, matches
from simpleflow.db.dialect_sql import db_now, db_now_plus
from simpleflow.db.schema import workflow_limit, workflow_limit_start, workflow_run
from simpleflow.store.base import StoreBase
from simpleflow.store.claimed import ClaimedRun
from simpleflow.store.flow import governed_by, key_free
from simpleflow.store.leases import DUE, LeaseStore

run = workflow_run.c
lim = workflow_limit.c
start = workflow_limit_start.c

_LEASED = run.status == literal_column("'leased'")  # literal: the planner matches the partial index


@dataclass(frozen=True)
class Usage:
    """A limit's numbers and what is in use, read under its lock."""

    pattern: str
    concurrency: int | None
    rate_count: int | None
    rate_seconds: float | None
    paused: bool
    leased: int
    started: int
    oldest_start: datetime | None
    now: datetime

    @property
    def room(self) -> int | None:
        """How many more runs may start now (None: no bound)."""
        if self.paused:
            return 0
        rooms = []
        if self.concurrency is not None:
            rooms.append(self.concurrency - self.leased)
        if self.rate_count is not None:
            rooms.append(self.rate_count - self.started)
        return max(0, min(rooms)) if rooms else None

    def window_frees_in(self) -> float | None:
        """Seconds until the oldest start leaves a full rate window (None: not rate-bound)."""
        if self.paused or self.rate_count is None or self.rate_seconds is None or self.started < self.rate_count:
            return None
        if self.concurrency is not None and self.leased >= self.concurrency:
            return None  # a settling run frees it first, and wakes this poller
        if self.oldest_start is None:
            return 0.0
        return max(0.0, (self.oldest_start - self.now).total_seconds() + self.rate_seconds)


@dataclass(frozen=True)
class LimitedClaim:
    """What a claim of governed runs got, and when trying again could get more."""

    runs: list[ClaimedRun]
    #: seconds until a full rate window frees a start (None: no rate limit is what blocks)
    window_in: float | None = None
    #: seconds until the next governed run is due, within an hour (None: none)
    due_in: float | None = None


def _usage_columns() -> list[Any]:
    leased = (
        select(func.count()).select_from(workflow_run).where(_LEASED, governed_by(workflow_limit, run.type))
    ).scalar_subquery()
    in_window = (start.pattern == lim.pattern, start.started_at > db_now_plus(-lim.rate_seconds))
    started = select(func.count()).select_from(workflow_limit_start).where(*in_window).scalar_subquery()
    oldest = select(func.min(start.started_at)).where(*in_window).scalar_subquery()
    return [
        lim.pattern,
        lim.concurrency,
        lim.rate_count,
        lim.rate_seconds,
        lim.paused,
        leased.label("leased"),
        started.label("started"),
        oldest.label("oldest_start"),
        db_now().label("now"),
    ]


class LimitStore(StoreBase):
    """All SQL about ``workflow_limit`` and ``workflow_limit_start``."""

    # -- what limits exist --------------------------------------------------------------

    def patterns(self, conn: Connection) -> list[tuple[str, int | None, bool]]:
        """Every limit's pattern, circuit-breaker threshold and paused flag (the pollers' cheap
        refresh)."""
        stmt = self.statements.get(
            "limit_patterns", lambda: select(lim.pattern, lim.pause_after_failures, lim.paused).order_by(lim.pattern)
        )
        return [(str(p), n, bool(paused)) for p, n, paused in self.x(conn, stmt)]

    def next_due_in(self, conn: Connection, route: Any, open_: Sequence[str], horizon: float) -> float | None:
        """Seconds until the next run of ``route`` that only limits in ``open_`` govern is due,
        within ``horizon`` (whether or not those limits have room now)."""
        row = self.x(conn, self._next_due(route), self._params(open_, 1, horizon)).first()
        return None if row is None or row[0] is None else max(0.0, (row[0] - row[1]).total_seconds())

    def paused(self, conn: Connection) -> list[str]:
        """The paused patterns."""
        return [str(p) for (p,) in self.x(conn, select(lim.pattern).where(lim.paused == true()).order_by(lim.pattern))]

    def list_all(self, conn: Connection) -> list[Limit]:
        """Every limit with its state and current usage."""
        rows = self.x(
            conn,
            select(
                *_usage_columns(),
                lim.pause_after_failures,
                lim.paused_reason,
                lim.consecutive_failures,
                lim.created_at,
                lim.updated_at,
            ).order_by(lim.pattern),
        )
        return [
            Limit(
                pattern=r.pattern,
                concurrency=r.concurrency,
                rate_count=r.rate_count,
                rate_period=None if r.rate_seconds is None else _seconds(r.rate_seconds),
                pause_after_failures=r.pause_after_failures,
                paused=bool(r.paused),
                paused_reason=r.paused_reason,
                consecutive_failures=r.consecutive_failures,
                leased=r.leased,
                started_in_window=r.started if r.rate_seconds is not None else 0,
                created_at=r.created_at,
                updated_at=r.updated_at,
            )
            for r in rows
        ]

    # -- changes (each with its audit event, run_id NULL, detail.pattern) -----------------

    def set(self, conn: Connection, spec: LimitSpec) -> None:
        """Create or replace the numbers of a limit; its paused state and failure count stay."""
        values = {
            "prefix": spec.pattern[:-1] if spec.pattern.endswith("%") else None,
            "concurrency": spec.concurrency,
            "rate_count": spec.rate_count,
            "rate_seconds": spec.rate_seconds,
            "pause_after_failures": spec.pause_after_failures,
        }
        stmt = self.dialect.insert(workflow_limit).values(
            pattern=spec.pattern, **values, paused=False, created_at=db_now(), updated_at=db_now()
        )
        stmt = stmt.on_conflict_do_update(index_elements=[lim.pattern], set_={**values, "updated_at": db_now()})
        self.x(conn, stmt)
        self.add_events(conn, [_event("limit_set", spec.pattern, None, _spec_detail(spec))])
        self.notify(conn)

    def clear(self, conn: Connection, pattern: str) -> None:
        """Remove a limit (and its rate window); ``NotFound`` if there is none."""
        if self.x(conn, delete(workflow_limit).where(lim.pattern == pattern)).rowcount == 0:
            raise NotFound(f"no limit on {pattern!r}; list them with client.list_limits()")
        self.x(conn, delete(workflow_limit_start).where(start.pattern == pattern))
        self.add_events(conn, [_event("limit_cleared", pattern, None, {})])
        self.notify(conn)

    def pause(self, conn: Connection, pattern: str, reason: str, worker_id: str | None = None) -> None:
        """Stop claims of matching types (a limit row with no numbers if none exists)."""
        stmt = self.dialect.insert(workflow_limit).values(
            pattern=pattern,
            prefix=pattern[:-1] if pattern.endswith("%") else None,
            paused=True,
            paused_reason=reason,
            created_at=db_now(),
            updated_at=db_now(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[lim.pattern], set_={"paused": True, "paused_reason": reason, "updated_at": db_now()}
        )
        self.x(conn, stmt)
        self.add_events(conn, [_event("paused", pattern, worker_id, {"reason": reason})])

    def resume(self, conn: Connection, pattern: str) -> None:
        """Claims of matching types start again; the failure count restarts at 0. A row that
        only existed to pause goes away. ``NotFound`` if nothing is paused under ``pattern``."""
        done = self.x(
            conn,
            update(workflow_limit)
            .where(lim.pattern == pattern, lim.paused == true())
            .values(paused=False, paused_reason=None, consecutive_failures=0, updated_at=db_now()),
        ).rowcount
        if not done:
            raise NotFound(f"{pattern!r} is not paused; list limits with client.list_limits()")
        self.x(
            conn,
            delete(workflow_limit).where(
                lim.pattern == pattern,
                lim.concurrency.is_(None),
                lim.rate_count.is_(None),
                lim.pause_after_failures.is_(None),
            ),
        )
        self.add_events(conn, [_event("resumed", pattern, None, {})])
        self.notify(conn)

    def record_attempts(self, conn: Connection, worker_id: str, failed: bool, patterns: Sequence[str]) -> list[str]:
        """The circuit breaker: count a failed attempt (or reset the count after a success) on
        these limits; the ones that reach ``pause_after_failures`` pause. Returns those."""
        if not patterns:
            return []
        listed = sorted(set(patterns))
        if not failed:
            self.x(
                conn,
                update(workflow_limit)
                .where(lim.pattern.in_(listed), lim.consecutive_failures != 0)
                .values(consecutive_failures=0),
            )
            return []
        rows = self.x(
            conn,
            update(workflow_limit)
            .where(lim.pattern.in_(listed), lim.pause_after_failures.is_not(None))
            .values(consecutive_failures=lim.consecutive_failures + 1)
            .returning(lim.pattern, lim.consecutive_failures, lim.pause_after_failures, lim.paused),
        ).all()
        tripped = sorted(r.pattern for r in rows if not r.paused and r.consecutive_failures >= r.pause_after_failures)
        for pattern in tripped:
            self.pause(conn, pattern, "circuit breaker", worker_id)
        return tripped

    # -- the claim ----------------------------------------------------------------------

    def usage(self, conn: Connection, patterns: Sequence[str]) -> list[Usage]:
        """Lock these limits (pattern order) and read their usage in a later statement."""
        listed = sorted(set(patterns))
        self.x(conn, select(lim.pattern).where(lim.pattern.in_(listed)).order_by(lim.pattern).with_for_update())
        rows = self.x(conn, select(*_usage_columns()).where(lim.pattern.in_(listed)).order_by(lim.pattern))
        return [Usage(**r._mapping) for r in rows]

    def claim(
        self,
        conn: Connection,
        leases: LeaseStore,
        worker_id: str,
        route: Any,
        patterns: Sequence[str],
        limit: int,
        lease_seconds: float,
    ) -> LimitedClaim:
        """Lease up to ``limit`` due runs of ``route`` governed by some of ``patterns``, each
        only if every limit governing it has room (the module docstring gives the steps)."""
        usage = self.usage(conn, patterns)
        room = {u.pattern: u.room for u in usage}
        open_ = [p for p, r in room.items() if r is None or r > 0]
        waits = [w for u in usage if (w := u.window_frees_in()) is not None]
        window_in = min(waits) if waits else None
        if not open_:
            return LimitedClaim([], window_in)
        candidates = self.x(conn, self._candidates(route), self._params(open_, limit, 0.0)).all()
        chosen: list[str] = []
        starts: list[str] = []
        rated = {u.pattern for u in usage if u.rate_count is not None}
        for c in candidates:
            governing = [p for p in open_ if matches(p, c.type)]
            if any(room[p] == 0 for p in governing):
                continue
            for p in governing:
                if room[p] is not None:
                    room[p] = (room[p] or 0) - 1
            chosen.append(c.id)
            starts.extend(p for p in governing if p in rated)
        runs = leases.lease_ids(conn, worker_id, chosen, lease_seconds)
        if starts:
            self.x(conn, workflow_limit_start.insert().values(started_at=db_now()), [{"pattern": p} for p in starts])
        if rated:
            self._forget_old_starts(conn, sorted(rated))
        if runs:
            return LimitedClaim(runs, 0.0, 0.0)
        return LimitedClaim([], window_in, self.next_due_in(conn, route, open_, 3600.0))

    def _params(self, open_: Sequence[str], n: int, horizon: float) -> dict[str, Any]:
        return {"open": self.dialect.bind_list(list(open_)), "n": n, "horizon": horizon}

    def _governed_by_open(self) -> Any:
        """Some limit governs the run, and every limit governing it is in ``:open``."""
        other = workflow_limit.alias("l")
        some = select(other.c.pattern).where(governed_by(other, run.type)).exists()
        closed = (
            select(other.c.pattern)
            .where(governed_by(other, run.type), ~self.dialect.in_list(other.c.pattern, "open", String()))
            .exists()
        )
        return some & ~closed

    def _candidates(self, route: Any) -> Any:
        def build() -> Any:
            return (
                select(run.id, run.type)
                .where(DUE, run.run_at <= db_now(), route, self._governed_by_open(), key_free())
                .order_by(run.priority, run.run_at)
                .limit(bindparam("n", type_=Integer()))
                .with_for_update(skip_locked=True)
            )

        return self.statements.get(("limited_candidates", id(route)), build)

    def _next_due(self, route: Any) -> Any:
        def build() -> Any:
            return select(func.min(run.run_at), db_now()).where(
                DUE,
                run.run_at <= db_now_plus(bindparam("horizon", type_=Float())),
                route,
                self._governed_by_open(),
                key_free(),
            )

        return self.statements.get(("limited_next_due", id(route)), build)

    def _forget_old_starts(self, conn: Connection, patterns: Sequence[str]) -> None:
        """Starts older than their limit's window count for nothing any more."""
        window_start = select(db_now_plus(-lim.rate_seconds)).where(lim.pattern == start.pattern).scalar_subquery()
        self.x(
            conn,
            delete(workflow_limit_start).where(start.pattern.in_(list(patterns)), start.started_at <= window_start),
        )


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _spec_detail(spec: LimitSpec) -> dict[str, Any]:
    return {
        "concurrency": spec.concurrency,
        "rate_count": spec.rate_count,
        "rate_seconds": spec.rate_seconds,
        "pause_after_failures": spec.pause_after_failures,
    }


def _event(kind: str, pattern: str, worker_id: str | None, detail: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": None, "event_type": kind, "worker_id": worker_id, "detail": {"pattern": pattern, **detail}}
