"""One start of a poller: the claim loop and the services around it.

Services, in the order they stop: the claimer (this loop) stops claiming; in-flight
runs drain (up to the stop timeout), then what is still running is released; the
committer writes every outcome handed to it; the lease keeper, which renewed
every in-flight lease until the last one settled, stops; then the reaper, the
registry heartbeat, the schedule ticker, retention and the wake-up listener;
then the executor's threads; last the worker leaves the registry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

from simpleflow.admin import Retention
from simpleflow.core import tracing
from simpleflow.core.attempt import Attempt
from simpleflow.core.errors import AttemptTimeout, SimpleflowError
from simpleflow.core.retry import RetryPolicy
from simpleflow.core.states import Kind, Transition, after_failure, error_summary, release
from simpleflow.db.database import Database
from simpleflow.schedules import ScheduleTicker
from simpleflow.store import Store
from simpleflow.store.fairness import next_tenant
from simpleflow.worker.committer import Committer, Pending
from simpleflow.worker.executor import ExecutorPool, Handler, InFlight
from simpleflow.worker.flow import FlowControl
from simpleflow.worker.metrics import MetricsCollector, RunMetrics
from simpleflow.worker.routing import Routing
from simpleflow.worker.services import Service, health
from simpleflow.worker.wakeup import WakeUp


class Host(Protocol):
    """What a runtime needs of its poller: the configuration, and the service rounds that
    tests override to simulate a stuck worker."""

    db: Database
    store: Store
    handlers: dict[str, Handler]
    worker_id: str
    prefixes: list[str] | None
    concurrency: int
    lease_seconds: float
    poll_seconds: float
    retry_policy: RetryPolicy
    timeout_seconds: float | None
    metrics: MetricsCollector
    schedule_ticker: bool
    schedule_tick_seconds: float
    retention: Retention | None
    tenants: tuple[str, ...] | None
    fair: bool
    drain_deadline: float

    def renew_now(self) -> None: ...

    def reap_now(self) -> None: ...

    def heartbeat_run(self, run: Attempt, seconds: float) -> bool: ...


log = logging.getLogger("simpleflow.poller")

#: run_until_idle waits for runs due within this many seconds before calling the queue idle
IDLE_HORIZON = 0.25
#: after a large claim, how long the claimer waits for threads to free up (see Runtime._gather)
GATHER_SECONDS = 0.005


class _RunLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts run id and type on every record (as ``extra`` and in the message)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"run {extra.get('run_id')} ({extra.get('run_type')}): {msg}", kwargs


def run_log(run: Attempt) -> _RunLogger:
    return _RunLogger(log, {"run_id": run.id, "run_type": run.type})


class Runtime:
    """The moving parts of a started poller; built by ``start()``/``run_until_idle()``."""

    def __init__(self, poller: Host) -> None:
        self.p = poller
        self.db, self.store = poller.db, poller.store
        self.in_flight: dict[str, InFlight] = {}
        self.lock = threading.Condition()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.processed = 0
        self.running_by_type: Counter[str] = Counter()
        #: the tenant the last fair claim served last: the next starts after it
        self.tenant_cursor = ""
        self.routing = Routing(
            sorted(poller.handlers),
            poller.prefixes,
            {t: h.concurrency for t, h in poller.handlers.items() if h.concurrency is not None},
            partial(self.store.leases.route_filter, tenants=poller.tenants),
        )
        self.flow = FlowControl(self.db, self.store, self.routing, poller.metrics)
        #: the collector, told each run's tenant if it takes one (decided once, here)
        self.metrics = RunMetrics(poller.metrics)
        self.limited_first = False
        self.pool = ExecutorPool(poller.concurrency, self._execute, self._timed_out)
        self.committer = Committer(self.db, self.store.leases, lambda: poller.worker_id, poller.lease_seconds * 2)
        keep = max(0.2, poller.lease_seconds / 3)
        self.keeper = Service("lease keeper", poller.renew_now, keep)
        self.background = [
            Service("reaper", poller.reap_now, keep),
            Service("registry", self._heartbeat, keep),
        ]
        if poller.schedule_ticker:
            ticker = ScheduleTicker(self.db, tick_interval=timedelta(seconds=poller.schedule_tick_seconds))
            self.background.append(Service("schedule ticker", ticker.tick, poller.schedule_tick_seconds))
        if poller.retention is not None:
            retention = poller.retention
            self.background.append(
                Service(
                    "retention",
                    lambda: retention.prune_once(self.db, self.stopping),
                    retention.interval.total_seconds(),
                )
            )
        self.wakeup = WakeUp(self.db, self.store.leases.channel, self.wake)

    # -- start and finish ---------------------------------------------------------------

    def begin(self) -> None:
        self.pool.start()
        self.committer.start()
        self.keeper.start()
        for service in self.background:
            service.start()
        self.wakeup.start()
        for service in self.background[:1]:
            service.wake()  # reap at once: a restarted worker takes back what its last life held
        self.db.run(
            lambda c: self.store.workers.register(
                c,
                self.p.worker_id,
                socket.gethostname(),
                os.getpid(),
                sorted(self.p.handlers),
                self.routing.patterns(),
                self.p.concurrency,
            ),
            what="registering the worker",
        )

    def finish(self, drain_until: float) -> None:
        """Stop claiming, drain until ``drain_until`` (monotonic), release the rest, stop services."""
        self.stopping.set()
        with self.lock:
            while self.in_flight and time.monotonic() < min(drain_until, self.p.drain_deadline):
                self.lock.wait(0.05)
            leftovers = list(self.in_flight.values())
        for item in leftovers:
            if self.pool.abandon(item):  # still queued or running: give it back, attempt not spent
                self.committer.put(Pending(item, release("worker stopping"), partial(self._released, item)))
        self.committer.stop()
        self.keeper.stop()
        for service in self.background:
            service.stop()
        self.wakeup.stop()
        self.pool.stop()
        try:
            self.db.run(lambda c: self.store.workers.unregister(c, self.p.worker_id), what="unregistering the worker")
        except SimpleflowError as error:
            log.warning("%s", error)

    def _released(self, item: InFlight, written: bool) -> None:
        if written:
            run_log(item.run).info("released unfinished at shutdown (attempt not spent)")
        self._settle(item)

    # -- the claim loop -----------------------------------------------------------------

    def loop(self, *, until_idle: bool, deadline: float | None) -> None:
        backoff = 0.1
        while not self.stopping.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return
            self.wake.clear()
            try:
                self.flow.refresh()
                claimed = self._claim_cycle()
                self.p.metrics.record_poll_cycle(self.p.worker_id)
                backoff = 0.1
            except SimpleflowError as error:
                self.p.metrics.record_poll_error(self.p.worker_id, type(error.__cause__ or error).__name__)
                log.warning("claiming failed (%s); retrying in %.1fs", error, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if claimed:
                self._gather(claimed)
                continue  # there may be more: claim again as soon as threads are free
            if until_idle and self._idle():
                return
            self.wake.wait(self._sleep_for(until_idle))

    def _free(self) -> int:
        """Threads free to take a run, as long as the runs awaiting their commit stay within
        one more pool's worth: when the committer falls behind, claiming waits for it instead
        of piling up runs in memory whose leases the keeper must keep renewing."""
        capacity = self.pool.capacity()
        with self.lock:
            awaiting = len(self.in_flight)
        return min(capacity - self.pool.busy(), 2 * capacity - awaiting)

    def _gather(self, claimed: int) -> None:
        """After a large claim (the queue is deep), wait up to ``GATHER_SECONDS`` for a quarter
        of the threads to be free, so the next claim takes a batch rather than one run per
        round trip. A small claim (light load) claims again at once: no added latency."""
        want = max(1, self.pool.capacity() // 4)
        if claimed < want:
            return
        deadline = time.monotonic() + GATHER_SECONDS
        while self._free() < want and not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.wake.wait(remaining)
            self.wake.clear()

    def _claim_cycle(self) -> int:
        """One claim per route of types no limit governs (one statement each) and, where limits
        can govern this poller's types, one limited claim per route; which of the two goes
        first alternates, so neither kind starves the other."""
        claimed = 0
        self.limited_first = not self.limited_first and bool(self.flow.relevant)
        for route, limit in self.routing.claims(self._free(), dict(self.running_by_type)):
            for limited in (True, False) if self.limited_first else (False, True):
                limit_now = min(limit, self._free())
                if limit_now <= 0:
                    break
                got = self._claim(route, limit_now, limited)
                claimed += len(got)
                limit -= len(got)
                self.tenant_cursor = next_tenant([r.tenant for r in got], self.tenant_cursor)
                for run in got:
                    self._dispatch(run)
        return claimed

    def _claim(self, route: Any, limit: int, limited: bool) -> list[Any]:
        if limited:
            return self.flow.claim(
                route, limit, self.p.worker_id, self.p.lease_seconds, fair=self.p.fair, after=self.tenant_cursor
            )
        return self.db.run(
            partial(
                self.store.leases.claim,
                worker_id=self.p.worker_id,
                route=route,
                limit=limit,
                lease_seconds=self.p.lease_seconds,
                fair=self.p.fair,
                after=self.tenant_cursor,
            ),
            autocommit=True,
            what="claiming",
        )

    def _sleep_for(self, until_idle: bool) -> float:
        """Until the next poll, or the earliest due time this poller knows of, if sooner."""
        limit = 0.05 if until_idle else self.p.poll_seconds
        if self._free() <= 0:
            return limit
        try:
            soonest = [
                self.db.run(partial(self.store.leases.next_due_in, route=route, horizon=limit), read=True)
                for route in self.routing.all_filters()
            ]
        except SimpleflowError:
            return limit
        due = [s for s in [*soonest, self.flow.sleep_hint()] if s is not None]
        return min([limit, *due]) if due else limit

    def _idle(self) -> bool:
        """run_until_idle: nothing in flight, no expired lease to take back, nothing due now or
        within ``IDLE_HORIZON`` (a retry a few milliseconds away is still part of the work)."""
        with self.lock:
            if self.in_flight:
                return False
        if self.db.run(self.store.leases.expire, what="reaping"):
            return False
        if self.flow.busy_soon(IDLE_HORIZON):
            return False
        return all(
            self.db.run(partial(self.store.leases.next_due_in, route=route, horizon=IDLE_HORIZON), read=True) is None
            for route in self.routing.all_filters()
        )

    def _dispatch(self, claimed: Any) -> None:
        self.metrics.record_claimed(claimed.type, self.p.worker_id, claimed.tenant)
        handler = self.p.handlers.get(claimed.type)
        run = Attempt(
            claimed.id,
            claimed.type,
            claimed.payload,
            claimed.attempt,
            claimed.max_attempts,
            heartbeat=self.p.heartbeat_run,
            lease_seconds=self.p.lease_seconds,
            token=claimed.token,
            worker_id=self.p.worker_id,
            trace_context=claimed.trace_context,
            tenant=claimed.tenant,
        )
        if handler is None:  # routed here by a prefix, but nothing handles it: give it back
            self.routing.unhandled.add(claimed.type)
            self.db.run(
                lambda c: self.store.leases.apply(
                    c, self.p.worker_id, [(run.lease, release("no handler on this worker"))]
                ),
                what="releasing",
            )
            run_log(run).info("no handler on this worker; released untouched")
            return
        timeout = handler.timeout if handler.timeout is not None else self.p.timeout_seconds
        item = InFlight(run, handler, timeout)
        with self.lock:
            self.in_flight[run.id] = item
            self.running_by_type[run.type] += 1
        self.pool.reserve(item)
        self.pool.submit(item)

    # -- outcomes -----------------------------------------------------------------------

    def _execute(self, item: InFlight) -> None:
        """On a worker thread: run the handler, hand its transition to the committer."""
        run, handler = item.run, item.handler
        error: BaseException | None = None
        try:
            transition = tracing.attempt(handler.invoke, run)
        except BaseException as raised:  # SystemExit, KeyboardInterrupt, CancelledError too: the attempt fails
            error = raised
            transition = after_failure(raised, run.attempt, run.max_attempts, self._policy(handler))
            self.metrics.record_failed_attempt(run.type, self.p.worker_id, run.attempt, run.tenant)
        elapsed = time.monotonic() - item.started
        if transition is not None and transition.kind in (Kind.COMPLETE, Kind.RETRY, Kind.FAIL):
            self.flow.record(run.type, transition.kind is not Kind.COMPLETE, self.p.worker_id)  # before the
            # thread is free again: a breaker that trips stops this poller's very next claim
        if not self.pool.finish(item):
            run_log(run).warning("finished after it was abandoned (timed out or released): its outcome is dropped")
            return
        with self.lock:
            self.running_by_type[run.type] -= 1
        self.wake.set()
        if transition is None:  # nothing to write (a workflow that lost its lease or was cancelled)
            self._settle(item)
            return
        self.committer.put(
            Pending(item, transition, lambda written: self._written(item, transition, written, error, elapsed))
        )

    def _timed_out(self, item: InFlight) -> None:
        """The watchdog abandoned an attempt past its timeout: record its failure now."""
        run = item.run
        error = AttemptTimeout(f"run {run.id} attempt {run.attempt} did not finish within {item.timeout:g}s")
        transition = after_failure(error, run.attempt, run.max_attempts, self._policy(item.handler))
        self.metrics.record_failed_attempt(run.type, self.p.worker_id, run.attempt, run.tenant)
        self.flow.record(run.type, True, self.p.worker_id)
        with self.lock:
            self.running_by_type[run.type] -= 1
        self.committer.put(
            Pending(
                item, transition, lambda written: self._written(item, transition, written, error, item.timeout or 0.0)
            )
        )

    def _policy(self, handler: Handler) -> Any:
        return handler.retry or self.p.retry_policy

    def _written(
        self, item: InFlight, t: Transition, written: bool, error: BaseException | None, elapsed: float
    ) -> None:
        run, metrics, worker = item.run, self.metrics, self.p.worker_id
        rlog = run_log(run)
        if not written:
            rlog.warning(
                "finished, but the run was cancelled or its lease lost: the result was discarded"
                if t.kind is Kind.COMPLETE
                else f"attempt {run.attempt} ended ({t.kind.name.lower()}), but the lease was lost: nothing written"
            )
            metrics.record_completed(run.type, worker, "cancelled", elapsed, run.tenant)
        elif t.kind is Kind.COMPLETE:
            metrics.record_completed(run.type, worker, "succeeded", elapsed, run.tenant)
        elif t.kind is Kind.FAIL:
            what = f"{type(error).__name__}: {error}" if error is not None else error_summary(t.error or "")
            rlog.error("failed for good after %d attempts: %s", run.attempt, what)
            metrics.record_completed(run.type, worker, "failed", elapsed, run.tenant)
            metrics.record_dead_letter(run.type, worker, run.tenant)
        elif t.kind is Kind.RETRY:
            rlog.warning(
                "attempt %d failed (%s: %s); retrying in %.1fs",
                run.attempt,
                type(error).__name__,
                error,
                t.delay or 0.0,
            )
            metrics.record_completed(run.type, worker, "retried", elapsed, run.tenant)
        self._settle(item)

    def _settle(self, item: InFlight) -> None:
        """The run's outcome is written (or given up on): it no longer needs its lease."""
        with self.lock:
            if self.in_flight.get(item.run.id) is item:
                del self.in_flight[item.run.id]
            self.processed += 1
            self.lock.notify_all()
        self.wake.set()

    # -- services -----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        report = health([self.keeper, *self.background])
        self.db.run(lambda c: self.store.workers.heartbeat(c, self.p.worker_id, report), what="registry heartbeat")
