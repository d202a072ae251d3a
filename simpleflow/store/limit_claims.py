"""Flow control's claim: the claim of runs a limit governs, and what its limits have in use.

A claim of runs a limit governs is one transaction (``claim``):

1. lock the limit rows this poller could be governed by, in pattern order
   (``FOR UPDATE`` on PostgreSQL, so two workers never both see the same free slot;
   SQLite's write lock, taken at BEGIN, already serializes every claim);
2. read, in a later statement (a fresh snapshot under READ COMMITTED, so the leases
   the previous holder of the lock committed are counted), each limit's usage: runs
   of matching types leased now, and starts within its rate window; a per-tenant
   limit's usage per tenant (only tenants with leased runs or starts have a row);
3. take due runs whose every governing limit has room (``FOR UPDATE SKIP LOCKED``),
   oldest first by priority then due time, and lease them; the statement already
   leaves out runs of a tenant whose per-tenant limit is full, so a tenant at its
   limit cannot fill the claim with runs that are dropped;
4. record one start (with the run's tenant) per rate limit per leased run, and drop
   starts out of the window.

A slot is counted from leased rows, so it frees when the run settles or when the
reaper takes back an expired lease. Runs no limit governs never pay for any of
this: ``LeaseStore.claim`` leaves governed types out in its one statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Integer,
    String,
    and_,
    bindparam,
    delete,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
)

from simpleflow.core.limits import matches
from simpleflow.db.dialect_sql import db_now, db_now_plus
from simpleflow.db.schema import workflow_limit, workflow_limit_start, workflow_run
from simpleflow.store.base import StoreBase
from simpleflow.store.claimed import ClaimedRun
from simpleflow.store.fairness import fair_due
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
    per_tenant: bool
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


#: a per-tenant limit's key for one tenant: ``pattern || ' ' || tenant`` (tenant names
#: have no space, so the key splits at its last space)
_SEP = " "


def usage_columns(runs: ColumnElement[bool] = true(), starts: ColumnElement[bool] = true()) -> list[Any]:
    """A limit's numbers and usage; ``runs``/``starts`` narrow what is counted (a tenant)."""
    leased = (
        select(func.count()).select_from(workflow_run).where(_LEASED, governed_by(workflow_limit, run.type), runs)
    ).scalar_subquery()
    in_window = (start.pattern == lim.pattern, start.started_at > db_now_plus(-lim.rate_seconds), starts)
    started = select(func.count()).select_from(workflow_limit_start).where(*in_window).scalar_subquery()
    oldest = select(func.min(start.started_at)).where(*in_window).scalar_subquery()
    return [
        lim.pattern,
        lim.concurrency,
        lim.rate_count,
        lim.rate_seconds,
        lim.paused,
        lim.per_tenant,
        leased.label("leased"),
        started.label("started"),
        oldest.label("oldest_start"),
        db_now().label("now"),
    ]


def fair_order(rows: Sequence[Any], after: str) -> list[Any]:
    """The fair claim's order of candidate rows (``tenant``, ``priority``, ``run_at``): every
    tenant's first run before any tenant's second, tenants in turn after ``after``."""
    ranked: dict[str, int] = {}
    keyed = []
    for row in sorted(rows, key=lambda r: (r.priority, r.run_at)):
        rank = ranked[row.tenant] = ranked.get(row.tenant, 0) + 1
        keyed.append(((rank, row.tenant <= after, row.tenant), row))
    return [row for _, row in sorted(keyed, key=lambda kr: kr[0])]


class LimitClaims(StoreBase):
    """The claim of governed runs (``LimitStore`` is this plus the limits' own rows)."""

    def next_due_in(
        self, conn: Connection, route: Any, open_: Sequence[str], horizon: float, full: Sequence[str] = ()
    ) -> float | None:
        """Seconds until the next run of ``route`` that only limits in ``open_`` govern is due,
        within ``horizon`` (whether or not those limits have room now), leaving out runs of
        tenants whose per-tenant limit is full (``full``, as ``claim`` computes it)."""
        row = self.x(conn, self._next_due(route), self._params(open_, full, 1, horizon)).first()
        return None if row is None or row[0] is None else max(0.0, (row[0] - row[1]).total_seconds())

    # -- the claim ----------------------------------------------------------------------

    def usage(self, conn: Connection, patterns: Sequence[str]) -> list[Usage]:
        """Lock these limits (pattern order) and read their usage in a later statement."""
        listed = sorted(set(patterns))
        self.x(conn, select(lim.pattern).where(lim.pattern.in_(listed)).order_by(lim.pattern).with_for_update())
        shared = lim.per_tenant == false()  # a per-tenant limit's usage is read per tenant instead
        rows = self.x(conn, select(*usage_columns(shared, shared)).where(lim.pattern.in_(listed)).order_by(lim.pattern))
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
        *,
        fair: bool = False,
        after: str = "",
    ) -> LimitedClaim:
        """Lease up to ``limit`` due runs of ``route`` governed by some of ``patterns``, each
        only if every limit governing it has room (the module docstring gives the steps).
        ``fair``: the candidates are the fair claim's (``store.fairness``), taken tenant by
        tenant in turn after ``after``, so one tenant's backlog does not take every slot."""
        usage = self.usage(conn, patterns)
        limits = {u.pattern: u for u in usage}
        shared = [u for u in usage if not u.per_tenant]
        tenants = self.tenant_usage(conn, [u for u in usage if u.per_tenant and not u.paused])
        room: dict[Any, int | None] = {u.pattern: u.room for u in shared}
        room.update((key, u.room) for key, u in tenants.items())
        open_ = [u.pattern for u in usage if not u.paused and (u.per_tenant or room[u.pattern] != 0)]
        full = [p + _SEP + t for (p, t), u in tenants.items() if u.room == 0]
        waits = [w for u in (*shared, *tenants.values()) if (w := u.window_frees_in()) is not None]
        window_in = min(waits) if waits else None
        if not open_:
            return LimitedClaim([], window_in)
        params = {**self._params(open_, full, limit, 0.0), "after": after}
        candidates = self.x(conn, self._candidates(route, fair), params).all()
        if fair:
            candidates = fair_order(candidates, after)
        chosen: list[str] = []
        starts: list[dict[str, str]] = []
        for c in candidates:
            governing = [(p, (p, c.tenant) if limits[p].per_tenant else p) for p in open_ if matches(p, c.type)]
            for p, key in governing:
                if key not in room:  # a tenant with nothing leased or started under p yet
                    room[key] = replace(limits[p], leased=0, started=0, oldest_start=None).room
            if any(room[key] == 0 for _, key in governing):
                continue
            for _, key in governing:
                if room[key] is not None:
                    room[key] = (room[key] or 0) - 1
            chosen.append(c.id)
            starts.extend({"pattern": p, "tenant": c.tenant} for p, _ in governing if limits[p].rate_count is not None)
        runs = leases.lease_ids(conn, worker_id, chosen, lease_seconds)
        if starts:
            self.x(conn, workflow_limit_start.insert().values(started_at=db_now()), starts)
        rated = sorted(u.pattern for u in usage if u.rate_count is not None)
        if rated:
            self._forget_old_starts(conn, rated)
        if runs:
            return LimitedClaim(runs, 0.0, 0.0)
        return LimitedClaim([], window_in, self.next_due_in(conn, route, open_, 3600.0, full))

    def tenant_usage(self, conn: Connection, limits: Sequence[Usage]) -> dict[tuple[str, str], Usage]:
        """The usage of these per-tenant limits by (pattern, tenant), for the tenants with runs
        of matching types leased or starts in the window (``usage`` locked the limits)."""
        if not limits:
            return {}
        numbers = {u.pattern: replace(u, leased=0, started=0, oldest_start=None) for u in limits}
        params = {"patterns": self.dialect.bind_list(sorted(numbers))}
        found: dict[tuple[str, str], Usage] = {}
        for r in self.x(conn, self._tenant_leased(), params):
            found[(r.pattern, r.tenant)] = replace(numbers[r.pattern], leased=r.n)
        for r in self.x(conn, self._tenant_started(), params):
            base = found.get((r.pattern, r.tenant), numbers[r.pattern])
            found[(r.pattern, r.tenant)] = replace(base, started=r.n, oldest_start=r.oldest)
        return found

    def _tenant_leased(self) -> Any:
        def build() -> Any:
            governed = and_(_LEASED, governed_by(workflow_limit, run.type))
            return (
                select(lim.pattern, run.tenant, func.count().label("n"))
                .select_from(workflow_limit.join(workflow_run, governed))
                .where(self.dialect.in_list(lim.pattern, "patterns", String()))
                .group_by(lim.pattern, run.tenant)
            )

        return self.statements.get("limit_tenant_leased", build)

    def _tenant_started(self) -> Any:
        def build() -> Any:
            return (
                select(start.pattern, start.tenant, func.count().label("n"), func.min(start.started_at).label("oldest"))
                .select_from(workflow_limit_start.join(workflow_limit, lim.pattern == start.pattern))
                .where(
                    self.dialect.in_list(lim.pattern, "patterns", String()),
                    start.started_at > db_now_plus(-lim.rate_seconds),
                )
                .group_by(start.pattern, start.tenant)
            )

        return self.statements.get("limit_tenant_started", build)

    def _params(self, open_: Sequence[str], full: Sequence[str], n: int, horizon: float) -> dict[str, Any]:
        bind = self.dialect.bind_list
        return {"open": bind(list(open_)), "full": bind(list(full)), "n": n, "horizon": horizon}

    def _governed_by_open(self) -> Any:
        """Some limit governs the run, and every limit governing it is in ``:open`` and, when
        it is per tenant, not full for the run's tenant (``:full``: ``pattern || ' ' || tenant``)."""
        other = workflow_limit.alias("l")
        some = select(other.c.pattern).where(governed_by(other, run.type)).exists()
        key = other.c.pattern + literal(_SEP, String()) + run.tenant
        closed = (
            select(other.c.pattern)
            .where(
                governed_by(other, run.type),
                or_(
                    ~self.dialect.in_list(other.c.pattern, "open", String()),
                    and_(other.c.per_tenant == true(), self.dialect.in_list(key, "full", String())),
                ),
            )
            .exists()
        )
        return some & ~closed

    def _candidates(self, route: Any, fair: bool) -> Any:
        def build() -> Any:
            claimable = and_(route, self._governed_by_open(), key_free())
            if fair:
                due = fair_due(self.dialect, claimable)
                return select(run.id, run.type, run.tenant, run.priority, run.run_at).join(due, run.id == due.c.id)
            return (
                select(run.id, run.type, run.tenant)
                .where(DUE, run.run_at <= db_now(), claimable)
                .order_by(run.priority, run.run_at)
                .limit(bindparam("n", type_=Integer()))
                .with_for_update(skip_locked=True)
            )

        return self.statements.get(("limited_candidates", id(route), fair), build)

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
