"""Day-two operations: retention (``prune``), bulk requeue and queue statistics.

``Client.prune`` and ``Client.stats`` delegate here; ``Poller.with_retention``
runs a ``Retention`` on a background thread. Every batch is its own short
transaction, so pruning and requeuing are safe while workers run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc

from simpleflow.core.errors import SimpleflowError, ValidationError
from simpleflow.core.validation import check_duration, check_int, check_type
from simpleflow.db.database import Database
from simpleflow.db.schema import TERMINAL_STATUSES
from simpleflow.store.admin import REQUEUE_STATUSES, AdminStore

if TYPE_CHECKING:
    from simpleflow.client import Client

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
    client: Client,
    older_than: timedelta | float,
    statuses: Sequence[str] = DEFAULT_PRUNE_STATUSES,
    batch_size: int = 1000,
) -> int:
    """Delete finished runs older than ``older_than`` with their events, steps and signals."""
    return prune_database(client.db, older_than, statuses, batch_size)


def prune_database(
    db: Database,
    older_than: timedelta | float,
    statuses: Sequence[str] = DEFAULT_PRUNE_STATUSES,
    batch_size: int = 1000,
    stop: threading.Event | None = None,
) -> int:
    """``prune`` on a ``Database``: batches of ``batch_size``, one transaction each.

    The cut-off is fixed once on the database clock, so the loop ends even while
    workers keep finishing runs; ``stop`` ends it early between batches.
    """
    older = check_duration(older_than, "older_than")
    chosen = check_statuses(statuses, TERMINAL_STATUSES, "prune statuses")
    size = check_int(batch_size, "batch_size", 1, MAX_BATCH)
    store = AdminStore(db)
    cutoff = db.run(store.now) - older
    total = 0

    def one_batch(conn: Connection) -> int:
        ids = store.delete_finished_runs(conn, store.select_finished_runs(conn, chosen, cutoff, size), chosen, cutoff)
        store.delete_children(conn, ids)
        return len(ids)

    while stop is None or not stop.is_set():
        deleted = db.run(one_batch)
        total += deleted
        if deleted < size:
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

    def run_until(self, db: Database, stop_event: threading.Event) -> None:
        """Prune now and then every ``interval`` until ``stop_event`` is set; errors are logged
        and the next pass tries again."""
        while not stop_event.is_set():
            try:
                self.prune_once(db, stop_event)
            except (SimpleflowError, sa_exc.SQLAlchemyError) as error:
                log.warning("retention pass failed (%s); next try in %s", error, self.interval)
            except Exception:  # never let retention kill its thread
                log.exception("retention pass failed unexpectedly; next try in %s", self.interval)
            stop_event.wait(self.interval.total_seconds())


# -- bulk requeue --------------------------------------------------------------------------


def requeue(
    client: Client,
    statuses: Sequence[str] = ("failed",),
    type: str | None = None,
    batch_size: int = 1000,
) -> list[str]:
    """Run every failed (or cancelled) run of ``type`` again, in batches; their ids.

    Walks the runs in id order, so a run that fails again while this is running is
    not requeued a second time.
    """
    chosen = check_statuses(statuses, REQUEUE_STATUSES, "requeue statuses")
    if type is not None:
        check_type(type)
    size = check_int(batch_size, "batch_size", 1, MAX_BATCH)
    store = AdminStore(client.db)
    done: list[str] = []
    after: str | None = None

    def one_batch(conn: Connection, after: str | None) -> tuple[list[str], str | None]:
        found = store.select_requeueable(conn, chosen, type, after, size)
        ids = store.requeue_runs(conn, found, chosen)
        store.add_requeued_events(conn, ids)
        return ids, (found[-1] if found else None)

    while True:
        ids, last = client.db.run(partial(one_batch, after=after))
        done.extend(ids)
        if last is None:
            break
        after = last
    if done:
        from simpleflow.db.notify import local_bus

        local_bus.publish(client.db.key)
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


def stats(client: Client, live_within: timedelta | float = LIVE_WORKER_WINDOW) -> Stats:
    """Queue depth by type and status, oldest due run's age, last hour's throughput, live workers."""
    window = check_duration(live_within, "live_within", allow_zero=False).total_seconds()
    store = AdminStore(client.db)

    def read(conn: Connection) -> Stats:
        depth = client.store.count_by_type_status(conn)
        oldest, now = store.oldest_due(conn)
        finished = store.finished_since(conn, 3600.0)
        workers = store.workers(conn)
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
        )

    return client.db.run(read)
