"""The worker side: a thread-pool ``Poller`` that claims due runs and executes handlers.

Flow of one run: ``store.leases.claim`` (one statement for as many runs as there
are free threads; a new lease token each) → a worker thread runs the handler
(``worker.executor``) → its transition (``core.states``) → the committer writes
it with ``store.leases.apply``, fenced by the lease token. The services around
the loop (lease keeper, reaper, registry, ticker, retention, wake-ups) are in
``worker.runtime``; configuration and registration in ``worker.config``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine

from simpleflow.core.attempt import Attempt
from simpleflow.core.errors import SimpleflowError, ValidationError
from simpleflow.core.shutdown import stop_on_signals
from simpleflow.core.validation import check_duration
from simpleflow.db.database import Database
from simpleflow.db.migrate import migrate
from simpleflow.db.schema import DEFAULT_TENANT
from simpleflow.store import Store
from simpleflow.worker.config import PollerConfig
from simpleflow.worker.metrics import RunMetrics
from simpleflow.worker.runtime import Runtime

log = logging.getLogger("simpleflow.poller")

P = TypeVar("P", bound="Poller")

#: connections a poller's services may hold besides one per worker thread (claim loop,
#: committer, lease keeper, reaper, registry, ticker, retention, heartbeats)
SERVICE_CONNECTIONS = 8


class Poller(PollerConfig):
    """Claims due runs of the types it handles and runs them on a thread pool."""

    def __init__(self, database: str | Engine, *, schema: str | None = None, _db: Database | None = None) -> None:
        self.db = _db or Database.open(database, schema=schema)
        self.store = Store(self.db)
        self._configure()
        self._running = False
        self._runtime: Runtime | None = None
        self._done = threading.Event()
        self._done.set()
        self._loop_thread: threading.Thread | None = None
        #: monotonic time after which a draining stop releases what is still running
        self.drain_deadline = float("inf")
        self._stop_requested = threading.Event()  # a stop() that lands while start() is starting
        self._depth_sampled = 0.0
        self._depth_reported: set[tuple[str, str, str]] = set()  # (tenant, type, status)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Run until ``stop()``, SIGINT or SIGTERM (then drain gracefully). Blocks."""
        runtime = self._begin()
        restore = stop_on_signals(
            lambda: self._request_stop(30.0),
            log,
            "draining (up to 30s)",
            second=lambda: self._request_stop(0.0),
            second_what="releasing in-flight runs (attempts not spent) and stopping now",
        )
        try:
            runtime.loop(until_idle=False, deadline=None)
        finally:
            try:
                self._finish(runtime, drain_until=float("inf"))
            finally:
                restore()  # after the drain: a second signal during it must end it

    def stop(self, timeout: timedelta | float = timedelta(seconds=30)) -> None:
        """Stop claiming, wait up to ``timeout`` for in-flight handlers, then release the rest.

        Released runs go back to pending without spending an attempt, so another
        worker takes them at once. Leases are renewed until every in-flight run has
        settled. Safe to call from any thread, more than once: a second call with a
        shorter timeout shortens the drain (a second Ctrl-C ends it at once).
        """
        seconds = check_duration(timeout, "stop timeout").total_seconds()
        self._request_stop(seconds)
        if threading.current_thread() is not self._loop_thread:
            self._done.wait(seconds + 30)

    def run_until_idle(self, timeout: timedelta | float = timedelta(seconds=10)) -> int:
        """Process every due run, then return how many attempts were processed (for tests and
        scripts). At ``timeout`` what is still running is released, as by ``stop``."""
        deadline = time.monotonic() + check_duration(timeout, "timeout").total_seconds()
        runtime = self._begin()
        try:
            runtime.loop(until_idle=True, deadline=deadline)
        finally:
            self._finish(runtime, drain_until=deadline)
        return runtime.processed

    def close(self) -> None:
        """Stop (if running) and dispose of the engine if this poller created it."""
        if self._running:
            self.stop()
        self.db.close()

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the services call (tests override them to simulate a stuck worker) -------

    def renew_now(self) -> None:
        """Renew the leases of every in-flight run in one statement; tell lost ones to stop."""
        runtime = self._runtime
        if runtime is None:
            return
        with runtime.lock:
            items = list(runtime.in_flight.values())
        if not items:
            return
        held = self.db.run(
            lambda c: self.store.leases.renew(c, [i.run.lease for i in items], self.lease_seconds),
            what="renewing leases",
        )
        for item in items:
            if item.run.id not in held:
                item.run.mark_lost()

    def reap_now(self) -> None:
        """Take back runs whose worker stopped renewing, fail runs past their deadline, and
        sample the queue depth for metrics."""
        runtime = self._runtime
        reaped = self.db.run(self.store.leases.expire, what="reaping expired leases")
        overdue = self.db.run(self.store.leases.fail_overdue, what="failing runs past their deadline")
        if reaped:
            log.warning("took back %d run(s) whose worker stopped renewing its lease", len(reaped))
        if overdue:
            log.warning("%d run(s) passed their deadline and failed", len(overdue))
        if (reaped or overdue) and runtime is not None:
            runtime.wake.set()
        self._sample_depth(runtime.metrics if runtime is not None else RunMetrics(self.metrics))

    def _sample_depth(self, metrics: RunMetrics) -> None:
        """Queue depth per (type, status), or per (tenant, type, status) for a collector that
        takes the tenant, for the metrics, at most every 15 s."""
        if metrics.null or time.monotonic() - self._depth_sampled < 15:
            return
        self._depth_sampled = time.monotonic()
        if metrics.depth_by_tenant:
            rows = self.db.run(self.store.runs.count_by_tenant_type_status, read=True)
        else:
            rows = [
                (DEFAULT_TENANT, t, s, n) for t, s, n in self.db.run(self.store.runs.count_by_type_status, read=True)
            ]
        depths = {(tenant, t, s): n for tenant, t, s, n in rows}
        for (tenant, t, s), n in depths.items():
            metrics.record_queue_depth(t, s, n, tenant)
        for tenant, t, s in self._depth_reported - depths.keys():  # emptied since the last sample
            metrics.record_queue_depth(t, s, 0, tenant)
        self._depth_reported = set(depths)

    def heartbeat_run(self, run: Attempt, seconds: float) -> bool:
        """``run.heartbeat()``: extend one lease, with its audit event; False if fenced."""
        try:
            return bool(
                self.db.run(
                    lambda c: self.store.leases.heartbeat(c, self.worker_id, run.lease, run.attempt, seconds),
                    what="heartbeat",
                )
            )
        except SimpleflowError as error:
            log.warning("%s", error)
            return True  # unknown: the keeper's next renewal decides

    @property
    def _in_flight(self) -> dict[str, Any]:
        return self._runtime.in_flight if self._runtime is not None else {}

    @property
    def _listener(self) -> Any:
        return self._runtime.wakeup.watcher if self._runtime is not None else None

    # -- internals ------------------------------------------------------------------------

    def _begin(self) -> Runtime:
        if self._running or self._runtime is not None:
            raise SimpleflowError("this poller is already running")
        if not self.handlers:
            raise ValidationError("register at least one handler (handle_func, handle or handle_workflow) first")
        if self._auto_migrate:
            migrate(self.db)
        self.db.ensure_connections(self.concurrency + SERVICE_CONNECTIONS)
        self._done.clear()
        if not self._stop_requested.is_set():
            self.drain_deadline = float("inf")
        runtime = self._runtime = Runtime(self)
        if self._stop_requested.is_set():
            runtime.stopping.set()
        self._loop_thread = threading.current_thread()
        try:
            runtime.begin()
        except BaseException:
            self._finish(runtime, drain_until=0.0)
            raise
        self._running = True  # once every service runs (tests wait for it)
        return runtime

    def _request_stop(self, seconds: float) -> None:
        self._stop_requested.set()
        self.drain_deadline = min(self.drain_deadline, time.monotonic() + seconds)
        runtime = self._runtime
        if runtime is not None:
            runtime.stopping.set()
            runtime.wake.set()
            with runtime.lock:
                runtime.lock.notify_all()

    def _finish(self, runtime: Runtime, drain_until: float) -> None:
        try:
            runtime.finish(drain_until)
        finally:
            self.gather_pool.shutdown()
            self._runtime = None
            self._stop_requested.clear()
            self.drain_deadline = float("inf")
            self._running = False
            self._loop_thread = None
            self._done.set()


@contextmanager
def running(poller: Poller) -> Iterator[Poller]:
    """Run ``poller.start()`` in a background thread for the duration of a ``with`` block."""
    thread = threading.Thread(target=poller.start, name="simpleflow-poller", daemon=True)
    thread.start()
    try:
        yield poller
    finally:
        poller.stop()
        thread.join(timeout=60)
