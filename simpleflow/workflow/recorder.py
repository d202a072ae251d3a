"""The replay layer's bookkeeping: the run's history, and writes fenced by its lease.

Every record is written in a short transaction fenced by the lease token (the
run is still ``leased`` under the token this execution claimed it with): an
execution that lost its run writes nothing. The hot path, one completed step, is
one statement on a connection kept for the execution (autocommit on PostgreSQL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from simpleflow.core.attempt import Attempt
from simpleflow.core.errors import NonDeterminismError, WorkflowCancelled, WorkflowError
from simpleflow.core.states import Transition
from simpleflow.db.database import is_transient
from simpleflow.store import Store
from simpleflow.store.steps import Hold, StepRecord
from simpleflow.workflow.gather import GatherPool

log = logging.getLogger("simpleflow.workflow")

T = TypeVar("T")


class Unwind(BaseException):
    """Leaves the workflow function; not an ``Exception``, so ``except Exception`` lets it pass."""


class Fenced(Unwind):
    """A fenced write found the lease gone; rolls its transaction back."""

    def __init__(self, hold: Hold) -> None:
        super().__init__(hold.status)
        self.hold = hold


class Suspended(Unwind):
    """Park the run: the workflow cannot go on before a time or a signal."""

    def __init__(self, transition: Transition) -> None:
        super().__init__(transition.status)
        self.transition = transition


class LeaseLost(Unwind):
    """This execution no longer holds the run (taken back, or finished elsewhere): stop, write nothing."""


class SignalMismatch(WorkflowError):
    """A signal's payload does not fit the model its wait expects; it is left unconsumed."""


@dataclass
class Sticky:
    """Outcomes of an execution that, once reached, every later ``ctx`` call raises again."""

    run_id: str
    suspended: Transition | None = None  # the park it unwound with
    fatal: str | None = None  # non-determinism: fail for good
    cancelled: bool = False
    lost: bool = False  # the lease is gone: write nothing

    def raise_if_set(self) -> None:
        if self.fatal is not None:
            raise NonDeterminismError(self.fatal)
        if self.lost:
            raise LeaseLost()
        if self.cancelled:
            raise WorkflowCancelled(f"run {self.run_id} was cancelled")
        if self.suspended is not None:
            raise Suspended(self.suspended)

    def suspend(self, transition: Transition) -> Suspended:
        self.suspended = transition
        return Suspended(transition)


class Recorder:
    """Reads and writes one execution's records, fenced by its lease."""

    def __init__(
        self, store: Store, run: Attempt, history: dict[str, StepRecord], pool: GatherPool | None = None
    ) -> None:
        self.store = store
        self.db = store.db
        self.run = run
        self.history = history
        #: the poller's threads for ``ctx.gather`` (None: each gather starts its own)
        self.pool = pool
        self._conn: Connection | None = None
        self._next_seq = max((r.seq for r in history.values()), default=0) + 1

    def take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def status(self) -> str | None:
        """The run's status (a lock-free primary-key read)."""
        return self.single(lambda conn: self.store.steps.run_status(conn, self.run.id), read=True)

    def write(self, fn: Callable[[Connection, Hold], T]) -> T:
        """One short transaction that runs ``fn`` only while this execution holds the run;
        ``Fenced`` otherwise."""

        def tx(conn: Connection) -> T:
            hold = self.store.steps.hold(conn, self.run.lease)
            if not hold.held:
                raise Fenced(hold)
            return fn(conn, hold)

        return self.db.run(tx, what="recording a workflow step")

    def save(
        self,
        name: str,
        *,
        seq: int,
        kind: str,
        status: str,
        attempts: int = 0,
        result: Any = None,
        error: Any = None,
        wake_in: float | None = None,
    ) -> None:
        """Insert or update a record, fenced; ``Fenced`` if the lease is gone."""
        if wake_in is None:  # the hot path: one fenced statement, no database time needed
            saved = self.single(
                lambda conn: self.store.steps.save_if_held(
                    conn,
                    self.run.lease,
                    name,
                    seq=seq,
                    kind=kind,
                    status=status,
                    attempts=attempts,
                    result=result,
                    error=error,
                )
            )
            if saved:
                return
            self.write(lambda conn, hold: None)  # not held: find out why, and raise accordingly
            raise AssertionError("a write fenced out by the lease must raise")  # pragma: no cover

        def save(conn: Connection, hold: Hold) -> None:
            wake_at: datetime | None = hold.now + timedelta(seconds=wake_in)
            self.store.steps.save(
                conn,
                self.run.id,
                name,
                seq=seq,
                kind=kind,
                status=status,
                attempts=attempts,
                result=result,
                error=error,
                wake_at=wake_at,
            )

        self.write(save)

    def single(self, fn: Callable[[Connection], T], *, read: bool = False) -> T:
        """A self-contained statement on one connection kept for this execution (no pool
        checkout per record): autocommit on PostgreSQL, its own short transaction on SQLite.
        A failure (a dropped connection, a busy database) falls back to the retrying path.
        A database of one shared connection (in-memory SQLite) keeps none."""
        if not self.db.keeps_connections:
            return self.db.run(fn, read=read)
        try:
            if self._conn is None:
                self._conn = self.db.engine.connect()
                self.db.dialect.keep(self._conn)
            with self.db.dialect.on_kept(self._conn, read=read) as conn:
                return fn(conn)
        except DBAPIError as error:
            self.close()
            if not is_transient(error):
                raise
            return self.db.run(fn, autocommit=True, read=read)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except DBAPIError:  # a broken connection: the pool discards it
                log.debug("closing a broken connection of run %s", self.run.id)
