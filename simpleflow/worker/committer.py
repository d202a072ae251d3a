"""Group commit: the transitions of every worker thread written in few transactions.

A worker thread hands its attempt's transition over and takes the next run at
once; one committer thread writes whatever has queued up through
``LeaseStore.apply`` (the time a commit takes forms the next batch, so a lone
run waits for nobody). The run stays in flight, its lease renewed, until its
transition is written. Every write is fenced by the attempt's lease token, so
one run's batch-mate can never be affected by another's fate: a fenced-off row
is simply not written, and text the database could not store was cleaned when
the transition was made.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

from simpleflow.core.errors import SimpleflowError
from simpleflow.core.states import Transition
from simpleflow.db.database import Database
from simpleflow.store.leases import LeaseStore
from simpleflow.worker.executor import InFlight

log = logging.getLogger("simpleflow.poller")

MAX_BATCH = 500


@dataclass
class Pending:
    """A transition waiting to be written, and who to tell when it was (or was not)."""

    item: InFlight
    transition: Transition
    on_done: Callable[[bool], None]


class Committer:
    """One thread that writes queued transitions in batches, each batch one transaction."""

    def __init__(self, db: Database, leases: LeaseStore, worker_id: Callable[[], str], patience: float) -> None:
        self._db = db
        self._leases = leases
        self._worker_id = worker_id
        self._patience = patience
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, args=(self._queue,), name="simpleflow-commit", daemon=True)
        self._thread.start()

    def put(self, pending: Pending) -> None:
        self._queue.put(pending)

    def stop(self, timeout: float = 60.0) -> None:
        """Write everything queued so far, then end the thread."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def _loop(self, work: queue.SimpleQueue[Pending | None]) -> None:
        stopping = False
        while not stopping:
            first = work.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = work.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            written = self._write(batch)
            for pending in batch:
                try:
                    pending.on_done(pending.item.run.id in written)
                except Exception:
                    log.exception("run %s: outcome callback failed", pending.item.run.id)

    def _write(self, batch: list[Pending]) -> set[str]:
        """One transaction for the batch, retried while the database is briefly away (a
        restart): the leases stay ours as long as the keeper renews them."""
        outcomes = [(p.item.run.lease, p.transition) for p in batch]
        guarded = [lease for lease, t in outcomes if t.guarded]

        def write(conn: Connection) -> set[str]:
            if guarded:
                self._leases.lock(conn, guarded)
            return self._leases.apply(conn, self._worker_id(), outcomes)

        try:
            return self._db.run(
                write,
                autocommit=not guarded and self._db.dialect.autocommit_writes,
                patience=self._patience,
                what=f"recording {len(batch)} outcome(s)",
            )
        except SimpleflowError as error:
            if len(batch) > 1:  # one bad outcome must not cost the others theirs: write them one by one
                log.warning("%s; writing the batch's outcomes one by one", error)
                return set().union(*(self._write([p]) for p in batch))
            log.error("%s; the run will be taken back when its lease expires", error)
            return set()
