"""Day-two operations: retention (``prune``), bulk requeue and queue statistics.

``Client.prune`` and ``Client.stats`` delegate here; ``Poller.with_retention``
runs a ``Retention`` on a background thread. Every batch is its own short
transaction, so pruning and requeuing are safe while workers run.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine

from simpleflow.core.errors import ValidationError
from simpleflow.core.states import REQUEUE_STATUSES, TERMINAL_STATUSES
from simpleflow.core.validation import check_duration, check_int, check_type
from simpleflow.db.database import Database
from simpleflow.db.notify import local_bus
from simpleflow.store import HasStore, Store, store_of

log = logging.getLogger("simpleflow.admin")

DEFAULT_PRUNE_STATUSES = ("succeeded", "cancelled")
MAX_BATCH = 10_000
#: a worker whose heartbeat is older than this is not counted as live
LIVE_WORKER_WINDOW = timedelta(seconds=60)


def check_statuses(statuses: object, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """A non-empty list of status names, each one of ``allowed``."""
    if isinstance(statuses, str):
        statuses = (statuses,)
    if not isinstance(statuses, Sequence) or not statuses:
        raise ValidationError(f"{what} must be a non-empty list of statuses from: {', '.join(allowed)}")
    for s in statuses:
        if s not in allowed:
            raise ValidationError(f"{what}: {s!r} is not allowed; use one or more of: {', '.join(allowed)}")
    return tuple(dict.fromkeys(statuses))


# -- retention ---------------------------------------------------------------------------


def prune(
    target: Store | HasStore,
    older_than: timedelta | float,
    statuses: Sequence[str] = DEFAULT_PRUNE_STATUSES,
    batch_size: int = 1000,
) -> int:
    """Delete finished runs older than ``older_than`` with their events, steps and signals.

    A workflow tree goes together, from its root, once settled: a child run
    (``ctx.start_child``) is never pruned while its parent exists, a run with an
    unfinished child is kept, and a pruned run takes its finished descendants in the
    same transaction, whatever their age or status."""
    store = store_of(target)
    return prune_database(store.db, older_than, statuses, batch_size, tenant=store.tenant)


def prune_database(
    db: Database,
    older_than: timedelta | float,
    statuses: Sequence[str] = DEFAULT_PRUNE_STATUSES,
    batch_size: int = 1000,
    stop: threading.Event | None = None,
    *,
    tenant: str | None = None,
) -> int:
    """``prune`` on a ``Database``: batches of ``batch_size``, one transaction each; only
    ``tenant``'s runs if given (None: every tenant's, for ``Poller.with_retention``).

    The cut-off is fixed once on the database clock, so the loop ends even while
    workers keep finishing runs; ``stop`` ends it early between batches.
    """
    older = check_duration(older_than, "older_than")
    chosen = check_statuses(statuses, TERMINAL_STATUSES, "prune statuses")
    size = check_int(batch_size, "batch_size", 1, MAX_BATCH)
    store = Store(db, tenant).admin
    cutoff = db.run(store.now) - older
    total = 0

    def one_batch(conn: Connection) -> tuple[int, int]:
        ids = store.delete_finished_runs(conn, store.select_finished_runs(conn, chosen, cutoff, size), chosen, cutoff)
        below = store.delete_finished_descendants(conn, ids)  # a tree goes together, children with the parent
        store.delete_children(conn, [*ids, *below])
        return len(ids), len(ids) + len(below)

    while stop is None or not stop.is_set():
        roots, deleted = db.run(one_batch)
        total += deleted
        if roots < size:
            break
    if total:
        log.info("pruned %d finished run(s) older than %s", total, older)
    return total


class Retention:
    """Prune finished runs older than ``older_than`` every ``interval`` (``Poller.with_retention``)."""

    def __init__(
        self,
        older_than: timedelta | float,
        statuses: Sequence[str] = DEFAULT_PRUNE_STATUSES,
        interval: timedelta | float = timedelta(hours=1),
        batch_size: int = 1000,
    ) -> None:
        self.older_than = check_duration(older_than, "retention older_than")
        self.statuses = check_statuses(statuses, TERMINAL_STATUSES, "retention statuses")
        self.interval = check_duration(interval, "retention interval", allow_zero=False)
        self.batch_size = check_int(batch_size, "batch_size", 1, MAX_BATCH)

    def prune_once(self, db: Database, stop: threading.Event | None = None) -> int:
        """One retention pass; returns how many runs it removed."""
        return prune_database(db, self.older_than, self.statuses, self.batch_size, stop)


# -- tenants -------------------------------------------------------------------------------

_ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def grant_tenant_role(target: str | Engine | Database, role: str) -> list[str]:
    """PostgreSQL: let ``role`` (an application's restricted login role, not the owner) use
    simpleflow as a tenant-bound ``Client``: read and write the tenant tables, read the
    worker registry. Row-level security then shows its sessions only the rows of the tenant
    in ``simpleflow.tenant`` (which ``Client(url, tenant=...)`` sets), and none without
    one. Returns the statements run. SQLite: ``ConfigurationError`` (no roles)."""
    if not isinstance(role, str) or not _ROLE.fullmatch(role):
        raise ValidationError(f"invalid role name {role!r}: letters, digits, '_' and '$', starting with a letter")
    db = Database.open(target)
    try:
        with db.engine.begin() as conn:
            return db.dialect.grant_tenant_role(conn, db.schema, role)
    finally:
        if not isinstance(target, Database):
            db.close()


# -- bulk requeue --------------------------------------------------------------------------


def requeue(
    target: Store | HasStore,
    statuses: Sequence[str] = ("failed",),
    type: str | None = None,
    batch_size: int = 1000,
) -> list[str]:
    """Run every failed (or cancelled) run of ``type`` again, in batches; their ids.

    The same ``requeue`` transition as ``Client.retry``, a batch per transaction.
    Walks the runs in id order, so a run that fails again while this is running is
    not requeued a second time.
    """
    chosen = check_statuses(statuses, REQUEUE_STATUSES, "requeue statuses")
    if type is not None:
        check_type(type)
    size = check_int(batch_size, "batch_size", 1, MAX_BATCH)
    store = store_of(target)
    done: list[str] = []
    after: str | None = None

    def one_batch(conn: Connection, after: str | None) -> tuple[list[str], str | None]:
        found = store.admin.select_requeueable(conn, chosen, type, after, size)
        return store.runs.requeue(conn, found, chosen, bulk=True), (found[-1] if found else None)

    while True:
        ids, last = store.db.run(partial(one_batch, after=after), what="requeueing")
        done.extend(ids)
        if last is None:
            break
        after = last
    if done:
        local_bus.publish(store.db.key)
    return done


# -- statistics ------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class QueueDepth(_Model):
    """Unfinished runs of one type in one status."""

    type: str
    status: str
    count: int


class WorkerInfo(_Model):
    """A worker in ``workflow_registry`` whose heartbeat is recent."""

    worker_id: str
    host: str
    pid: int
    concurrency: int
    types: list[str]
    prefixes: list[str]
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_seconds: float
    health: dict[str, Any] | None = None  # background services failing repeatedly


class Stats(_Model):
    """A snapshot of the queue, taken on the database clock."""

    now: datetime
    queue: list[QueueDepth]
    oldest_due_age_seconds: float | None
    finished_last_hour: int
    succeeded_last_hour: int
    failed_last_hour: int
    cancelled_last_hour: int
    workers: list[WorkerInfo]
    stale_workers: int
    #: type patterns paused by ``pause`` or a circuit breaker (claims of them wait)
    paused: list[str] = []


class FinishedCount(_Model):
    """Runs of one type that reached one terminal status within one minute (UTC)."""

    minute: datetime
    type: str
    status: str
    count: int


def finished_by_minute(target: Store | HasStore, within: timedelta | float = timedelta(hours=1)) -> list[FinishedCount]:
    """How many runs of each type finished in each status, per minute, over the last ``within``;
    oldest minute first (minutes with nothing finished are absent)."""
    window = check_duration(within, "within", allow_zero=False).total_seconds()
    store = store_of(target)
    rows = store.db.run(lambda conn: store.admin.finished_by_minute(conn, window), read=True)
    return sorted(
        (
            FinishedCount(
                minute=datetime.strptime(m, "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc), type=t, status=s, count=n
            )
            for m, t, s, n in rows
        ),
        key=lambda c: (c.minute, c.type, c.status),
    )


def ping(target: Store | HasStore) -> datetime:
    """The database's clock, read once without retries: proves the database answers."""
    store = store_of(target)
    return store.db.run(store.admin.now, patience=0.0, read=True, what="pinging the database")


def list_workers(target: Store | HasStore) -> list[WorkerInfo]:
    """Every worker in the registry, live or stale, with its heartbeat age (database clock)."""
    store = store_of(target)
    return [WorkerInfo.model_validate(w) for w in store.db.run(store.workers.list, read=True)]


class TenantDepth(_Model):
    """Unfinished runs of one tenant in one status."""

    tenant: str
    status: str
    count: int


def queue_by_tenant(target: Store | HasStore) -> list[TenantDepth]:
    """Unfinished runs per tenant and status: every tenant's for an unscoped ``Store``, the
    client's own for a tenant-bound client."""
    store = store_of(target)
    rows = store.db.run(store.runs.count_by_tenant_status, read=True)
    return [TenantDepth(tenant=t, status=s, count=n) for t, s, n in sorted(rows)]


def stats(target: Store | HasStore, live_within: timedelta | float = LIVE_WORKER_WINDOW) -> Stats:
    """Queue depth by type and status, oldest due run's age, last hour's throughput, live workers."""
    window = check_duration(live_within, "live_within", allow_zero=False).total_seconds()
    store = store_of(target)

    def read(conn: Connection) -> Stats:
        depth = store.runs.count_by_type_status(conn)
        oldest, now = store.admin.oldest_due(conn)
        finished = store.admin.finished_since(conn, 3600.0)
        workers = store.workers.list(conn)
        live = [WorkerInfo.model_validate(w) for w in workers if w["heartbeat_age_seconds"] <= window]
        return Stats(
            now=now,
            queue=[QueueDepth(type=t, status=s, count=n) for t, s, n in sorted(depth)],
            oldest_due_age_seconds=None if oldest is None else max(0.0, (now - oldest).total_seconds()),
            finished_last_hour=sum(finished.values()),
            succeeded_last_hour=finished.get("succeeded", 0),
            failed_last_hour=finished.get("failed", 0),
            cancelled_last_hour=finished.get("cancelled", 0),
            workers=live,
            stale_workers=len(workers) - len(live),
            paused=store.limits.paused(conn),
        )

    return store.db.run(read, read=True)


class TenantQueueDepth(_Model):
    """Unfinished runs of one tenant, of one type, in one status."""

    tenant: str
    type: str
    status: str
    count: int


class TenantStats(_Model):
    """``Stats`` per tenant (what ``GET /metrics`` shows), taken on the database clock."""

    now: datetime
    queue: list[TenantQueueDepth]
    #: per tenant with a due run: how long its longest-waiting due run has waited
    oldest_due_age_seconds: dict[str, float]
    #: runs that reached each terminal status in the last hour, per tenant
    finished_last_hour: list[TenantDepth]
    live_workers: int
    stale_workers: int

    @property
    def tenants(self) -> list[str]:
        """Every tenant with an unfinished run or a run finished in the last hour."""
        return sorted({q.tenant for q in self.queue} | {f.tenant for f in self.finished_last_hour})


def tenant_stats(target: Store | HasStore, live_within: timedelta | float = LIVE_WORKER_WINDOW) -> TenantStats:
    """Queue depth by tenant, type and status, each tenant's oldest due run's age and last
    hour's finished runs, and the worker count, in one read: every tenant's for an unscoped
    ``Store``, the client's own for a tenant-bound client."""
    window = check_duration(live_within, "live_within", allow_zero=False).total_seconds()
    store = store_of(target)

    def read(conn: Connection) -> TenantStats:
        depth = store.runs.count_by_tenant_type_status(conn)
        now = store.admin.now(conn)
        oldest = store.admin.oldest_due_by_tenant(conn)
        finished = store.admin.finished_since_by_tenant(conn, 3600.0)
        workers = store.workers.list(conn)
        live = sum(1 for w in workers if w["heartbeat_age_seconds"] <= window)
        return TenantStats(
            now=now,
            queue=[TenantQueueDepth(tenant=tn, type=t, status=s, count=n) for tn, t, s, n in sorted(depth)],
            oldest_due_age_seconds={t: max(0.0, (now - at).total_seconds()) for t, at in sorted(oldest)},
            finished_last_hour=[TenantDepth(tenant=t, status=s, count=n) for t, s, n in sorted(finished)],
            live_workers=live,
            stale_workers=len(workers) - live,
        )

    return store.db.run(read, read=True)
