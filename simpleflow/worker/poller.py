"""The worker side: a thread-pool ``Poller`` that claims due runs and executes handlers.

Flow of one run: ``claim`` (one statement for as many runs as there are free
threads) → a worker thread runs the handler → ``complete`` / ``fail`` /
``suspend`` (one transaction with its audit event, fenced by this worker's
lease). A background thread renews the leases of every in-flight run in one
statement per round, notices cancellations and takes back expired leases.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from simpleflow.core.errors import DatabaseError, SimpleflowError, ValidationError
from simpleflow.core.retry import DEFAULT_RETRY, RetryPolicy
from simpleflow.core.validation import check_duration, check_int, check_prefix, check_type, encode_json
from simpleflow.db.database import Database, is_transient
from simpleflow.db.migrate import migrate
from simpleflow.db.notify import PgListener, local_bus
from simpleflow.store.runs import ClaimedRun, Store
from simpleflow.worker.committer import Committer, Outcome
from simpleflow.worker.metrics import MetricsCollector, NullMetrics
from simpleflow.worker.run import Executor, WorkflowRun
from simpleflow.worker.shutdown import stop_on_signals

log = logging.getLogger("simpleflow.poller")

P = TypeVar("P", bound="Poller")


@dataclass(frozen=True)
class Suspend:
    """A handler's answer that parks the run instead of finishing it (used by workflows)."""

    status: str  # "sleeping", "waiting" or "pending"
    wake_in: float | None  # seconds from now on the database clock; None: until a signal
    #: the handler already wrote the run's new state in its own lease-fenced transaction
    #: (a wait for a signal must park the run atomically with its check); write nothing
    recorded: bool = False


@dataclass
class Handler:
    """A registered handler: ``invoke(run)`` returns the result (or a ``Suspend``)."""

    type: str
    invoke: Callable[[WorkflowRun], Any]
    concurrency: int | None = None
    retry: RetryPolicy | None = None


@dataclass
class _InFlight:
    run: WorkflowRun
    handler: Handler
    started: float = field(default_factory=time.monotonic)


class _RunLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts run id and type on every record (as ``extra`` and in the message)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"run {extra.get('run_id')} ({extra.get('run_type')}): {msg}", kwargs


_poller_numbers = itertools.count(1)


def default_worker_id() -> str:
    """``hostname-pid`` for a process's first poller, ``hostname-pid-N`` for the N-th.

    Worker ids fence late writes, so two pollers in one process must never share one.
    """
    n = next(_poller_numbers)
    base = f"{socket.gethostname()}-{os.getpid()}"
    return base if n == 1 else f"{base}-{n}"


class Poller:
    """Claims due runs of the types it handles and runs them on a thread pool."""

    def __init__(self, database: str | Engine, *, schema: str | None = None, _db: Database | None = None) -> None:
        self.db = _db or Database.open(database, schema=schema)
        self.store = Store(self.db)
        self.handlers: dict[str, Handler] = {}
        self.worker_id = default_worker_id()
        self.lease_seconds = 30.0
        self.poll_seconds = 2.0
        self.prefixes: list[str] | None = None
        self.concurrency = 8
        self.retry_policy = DEFAULT_RETRY
        self.metrics: MetricsCollector = NullMetrics()
        self._auto_migrate = False
        self.schedule_ticker = False
        self.schedule_tick_seconds = 15.0
        self.retention: Any = None
        self.result_limit: int | None = None
        self._in_flight: dict[str, _InFlight] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._drain_abandoned = threading.Event()
        self._running = False
        self._drain_timeout = 30.0
        self._done = threading.Event()
        self._done.set()
        self._loop_thread: threading.Thread | None = None
        self._unhandled: set[str] = set()
        self._route_cache: dict[tuple[tuple[str, ...], ...], Any] = {}
        self._work: queue.SimpleQueue[_InFlight | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._background: list[threading.Thread] = []
        self._listener: PgListener | None = None
        self._processed = 0
        self._busy: Counter[str] = Counter()
        self._busy_total = 0
        self._committer = Committer(self._write_outcomes)

    # -- registration -------------------------------------------------------------------

    def handle_func(
        self: P, type: str, fn: Callable[[WorkflowRun], Any], *, concurrency: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> P:
        """Run ``fn(run)`` for runs of ``type``; its return value is the run's result."""
        if not callable(fn):
            raise ValidationError(f"handler for {type!r} must be callable, got {fn!r}")
        return self._register(Handler(check_type(type), fn, concurrency, retry))

    def handle(
        self: P, type: str, executor: Executor, *, concurrency: int | None = None, retry: RetryPolicy | None = None
    ) -> P:
        """Run ``executor.execute(run)`` for runs of ``type``."""
        if not callable(getattr(executor, "execute", None)):
            raise ValidationError(f"executor for {type!r} must have an execute(run) method")
        return self._register(Handler(check_type(type), executor.execute, concurrency, retry))

    def handle_workflow(
        self: P, type: str, fn: Callable[..., Any], *, concurrency: int | None = None, retry: RetryPolicy | None = None
    ) -> P:
        """Run ``fn(ctx, input)`` as a durable workflow (see ``WorkflowContext``)."""
        from simpleflow.workflow.context import workflow_handler

        return self._register(Handler(check_type(type), workflow_handler(self, type, fn), concurrency, retry))

    def _register(self: P, handler: Handler) -> P:
        if self._running:
            raise ValidationError("register handlers before starting the poller")
        if handler.concurrency is not None:
            check_int(handler.concurrency, "concurrency", 1, 10_000)
        if handler.retry is not None and not isinstance(handler.retry, RetryPolicy):
            raise ValidationError("retry must be a RetryPolicy")
        if handler.type in self.handlers:
            raise ValidationError(f"a handler for {handler.type!r} is already registered")
        self.handlers[handler.type] = handler
        return self

    # -- configuration (each returns the poller) ----------------------------------------

    def with_worker_id(self: P, worker_id: str) -> P:
        if not isinstance(worker_id, str) or not worker_id or len(worker_id) > 255 or not worker_id.isprintable():
            raise ValidationError("worker id must be a non-empty printable string of at most 255 characters")
        self.worker_id = worker_id
        return self

    def with_lease_duration(self: P, duration: timedelta | float) -> P:
        self.lease_seconds = check_duration(duration, "lease duration", allow_zero=False).total_seconds()
        if self.lease_seconds < 0.5:
            raise ValidationError("lease duration must be at least 0.5 seconds")
        return self

    def with_poll_interval(self: P, interval: timedelta | float) -> P:
        self.poll_seconds = check_duration(interval, "poll interval", allow_zero=False).total_seconds()
        return self

    def with_type_prefixes(self: P, *prefixes: str) -> P:
        """Claim runs whose type matches these LIKE prefixes (``billing.%``) or exact types."""
        if not prefixes:
            raise ValidationError("with_type_prefixes needs at least one prefix, e.g. 'billing.%'")
        self.prefixes = [check_prefix(p) for p in prefixes]
        return self

    def with_concurrency(self: P, threads: int) -> P:
        self.concurrency = check_int(threads, "concurrency", 1, 1000)
        return self

    def with_retry_policy(self: P, policy: RetryPolicy) -> P:
        if not isinstance(policy, RetryPolicy):
            raise ValidationError("with_retry_policy needs a RetryPolicy")
        self.retry_policy = policy
        return self

    def with_metrics(self: P, metrics: MetricsCollector) -> P:
        if not isinstance(metrics, MetricsCollector):
            raise ValidationError("metrics must implement MetricsCollector")
        self.metrics = metrics
        return self

    def with_auto_migrate(self: P) -> P:
        self._auto_migrate = True
        return self

    def with_schedule_ticker(self: P) -> P:
        """Also turn due schedules into runs (exactly one run per slot, however many tickers)."""
        self.schedule_ticker = True
        return self

    def with_schedule_tick_interval(self: P, interval: timedelta | float) -> P:
        self.schedule_tick_seconds = check_duration(interval, "schedule tick interval", allow_zero=False).total_seconds()
        return self

    def with_retention(
        self: P,
        older_than: timedelta | float,
        statuses: tuple[str, ...] = ("succeeded", "cancelled"),
        interval: timedelta | float = timedelta(hours=1),
    ) -> P:
        """Also prune finished runs older than ``older_than`` every ``interval``."""
        from simpleflow.admin import Retention

        self.retention = Retention(older_than, statuses, interval)
        return self

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Run until ``stop()``, SIGINT or SIGTERM (then drain gracefully). Blocks."""
        self._begin()
        restore = stop_on_signals(
            self._request_stop, log, f"draining (up to {self._drain_timeout:.0f}s)",
            second=self._abandon_drain, second_what="releasing in-flight runs (attempts not spent) and stopping now",
        )
        try:
            self._loop(until_idle=False, deadline=None)
        finally:
            try:
                self._finish(timeout=30.0)
            finally:
                restore()  # after the drain: a second signal during it must reach _abandon_drain

    def stop(self, timeout: timedelta | float = timedelta(seconds=30)) -> None:
        """Stop claiming, wait up to ``timeout`` for in-flight handlers, then release the rest.

        Released runs go back to pending without spending an attempt, so another
        worker takes them at once. Safe to call from any thread, more than once; a
        ``stop()`` that lands while ``start()`` is still starting makes it return at once.
        """
        self._drain_timeout = check_duration(timeout, "stop timeout").total_seconds()
        self._stopping.set()
        self._wake.set()
        if threading.current_thread() is not self._loop_thread:
            self._done.wait(self._drain_timeout + 10)

    def run_until_idle(self, timeout: timedelta | float = timedelta(seconds=10)) -> int:
        """Process every due run, then return how many attempts were processed (for tests and scripts)."""
        deadline = time.monotonic() + check_duration(timeout, "timeout").total_seconds()
        self._begin()
        try:
            self._loop(until_idle=True, deadline=deadline)
        finally:
            self._finish(timeout=max(0.0, deadline - time.monotonic()))
        return self._processed

    def close(self) -> None:
        """Stop (if running) and dispose of the engine if this poller created it."""
        if self._running:
            self.stop()
        self.db.close()

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals: start and finish --------------------------------------------------------

    def _begin(self) -> None:
        if self._running:
            raise SimpleflowError("this poller is already running")
        if not self.handlers:
            raise ValidationError("register at least one handler (handle_func, handle or handle_workflow) first")
        if self._auto_migrate:
            migrate(self.db)
        self._running = True
        self._processed = 0
        self._done.clear()
        self._loop_thread = threading.current_thread()
        self._unhandled.clear()
        local_bus.subscribe(self.db.key, self._wake)
        if self.db.is_postgres:
            self._listener = PgListener(self.db, self.store.channel, self._wake.set)
            self._listener.start()
        self._work = queue.SimpleQueue()  # per start: a previous start's stop sentinels never reach these threads
        self._threads = [
            threading.Thread(target=self._worker, args=(self._work,), name=f"simpleflow-worker-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        self._background = [threading.Thread(target=self._maintain, name="simpleflow-lease", daemon=True)]
        if self.schedule_ticker:
            from simpleflow.schedules import ScheduleTicker

            ticker = ScheduleTicker(self.db, tick_interval=timedelta(seconds=self.schedule_tick_seconds))
            self._background.append(
                threading.Thread(target=ticker.run_until, args=(self._stopping,), name="simpleflow-ticker", daemon=True)
            )
        if self.retention is not None:
            self._background.append(
                threading.Thread(target=self.retention.run_until, args=(self.db, self._stopping), name="simpleflow-retention", daemon=True)
            )
        self._committer = Committer(self._write_outcomes)
        self._committer.start()
        for t in self._threads + self._background:
            t.start()
        self._persist(lambda c: self.store.register_worker(
            c, self.worker_id, socket.gethostname(), os.getpid(), sorted(self.handlers), self._prefix_list(),
            self.concurrency,
        ), what="register worker", forever=False)

    def _finish(self, timeout: float) -> None:
        self._stopping.set()
        timeout = min(timeout, self._drain_timeout)
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline and not self._drain_abandoned.is_set():
            time.sleep(0.01)
        self._committer.stop()  # write every outcome already handed over
        with self._lock:
            leftovers = list(self._in_flight.values())
            self._in_flight.clear()  # their handlers end on their own; whatever they write is fenced off
        for item in leftovers:
            item.run.mark_lost()
            released = self._persist(
                partial(self.store.release, worker_id=self.worker_id, run_id=item.run.id, attempt=item.run.attempt,
                        reason="worker stopping"),
                what="release", forever=False,
            )
            if released:
                _RunLogger(log, {"run_id": item.run.id, "run_type": item.run.type}).info(
                    "released unfinished at shutdown (attempt not spent)"
                )
        for _ in self._threads:
            self._work.put(None)
        for t in self._background:
            t.join(timeout=5)
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        local_bus.unsubscribe(self.db.key, self._wake)
        self._persist(lambda c: self.store.unregister_worker(c, self.worker_id), what="unregister worker", forever=False)
        self._running = False
        self._loop_thread = None
        self._drain_timeout = 30.0
        self._stopping.clear()
        self._drain_abandoned.clear()
        self._done.set()

    # -- internals: the claim loop -------------------------------------------------------------

    def _prefix_list(self) -> list[str]:
        return list(self.prefixes) if self.prefixes is not None else sorted(self.handlers)

    def _request_stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _abandon_drain(self) -> None:
        """Stop now: like ``_request_stop``, and a drain under way (or the next one) stops
        waiting for in-flight handlers at once; they are released as at the end of the
        stop timeout (attempts not spent). Only sets flags: safe in a signal handler."""
        self._drain_abandoned.set()
        self._request_stop()

    def _routes(self) -> list[tuple[Any, int]]:
        """(type filter, limit) for each claim this cycle; capped types get their own claim."""
        with self._lock:
            free = self.concurrency - self._busy_total
            running = dict(self._busy)
        if free <= 0:
            return []
        capped = {t: h.concurrency for t, h in self.handlers.items() if h.concurrency is not None}
        exact = [t for t in self.handlers if t not in capped] if self.prefixes is None else []
        prefixes = [p[:-1] for p in self.prefixes if p.endswith("%")] if self.prefixes is not None else []
        exact += [p for p in (self.prefixes or []) if not p.endswith("%") and p not in capped]
        routes: list[tuple[Any, int]] = []
        for t, cap in capped.items():
            room = min(free, (cap or 0) - running.get(t, 0))
            if room > 0 and self._routed(t):
                routes.append((self._route((t,), (), ()), room))
        if exact or prefixes:
            routes.append((self._route(tuple(exact), tuple(prefixes), tuple(set(capped) | self._unhandled)), free))
        return routes

    def _route(self, exact: tuple[str, ...], prefixes: tuple[str, ...], exclude: tuple[str, ...]) -> Any:
        """The type filter for a claim, one object per distinct routing: the store caches
        the claim statement per filter, so it is built and compiled once, not per cycle."""
        key = (tuple(sorted(exact)), tuple(sorted(prefixes)), tuple(sorted(exclude)))
        route = self._route_cache.get(key)
        if route is None:
            route = self._route_cache[key] = Store.route_filter(*key)
        return route

    def _routed(self, type_: str) -> bool:
        if self.prefixes is None:
            return True
        return any(type_ == p or (p.endswith("%") and type_.startswith(p[:-1])) for p in self.prefixes)

    def _loop(self, *, until_idle: bool, deadline: float | None) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return
            self._wake.clear()
            claimed = 0
            try:
                for route, limit in self._routes():
                    with self._lock:
                        limit = min(limit, self.concurrency - self._busy_total)
                    if limit <= 0:
                        break
                    got = self.db.run(partial(self.store.claim, worker_id=self.worker_id, route=route, limit=limit,
                                              lease_seconds=self.lease_seconds), autocommit=True)
                    claimed += len(got)
                    self._dispatch(got)
                self.metrics.record_poll_cycle(self.worker_id)
                backoff = 0.1
            except (SimpleflowError, sa_exc.SQLAlchemyError) as error:
                self.metrics.record_poll_error(self.worker_id, type(error.__cause__ or error).__name__)
                log.warning("claiming failed (%s); retrying in %.1fs", error, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if claimed:
                continue  # there may be more: claim again as soon as threads are free
            if until_idle:
                with self._lock:
                    busy = bool(self._in_flight)
                if not busy:
                    if self._idle_confirmed():
                        return
                    continue
                self._wake.wait(0.05)
                continue
            self._wake.wait(self.poll_seconds)

    def _idle_confirmed(self) -> bool:
        """run_until_idle: nothing in flight, no expired lease to take back, nothing due."""
        with self._lock:
            if self._in_flight:
                return False
        if self.db.run(self.store.reap_expired):
            return False
        return not self._has_due()

    def _has_due(self) -> bool:
        return any(self.db.run(partial(self.store.has_due, route=route)) for route, _ in self._routes())

    def _dispatch(self, claimed: list[ClaimedRun]) -> None:
        for c in claimed:
            self.metrics.record_claimed(c.type, self.worker_id)
            handler = self.handlers.get(c.type)
            if handler is None:
                self._unhandled.add(c.type)
                self._persist(
                    partial(self.store.release, worker_id=self.worker_id, run_id=c.id, attempt=c.attempt,
                            reason="no handler on this worker"),
                    what="release", forever=False,
                )
                _RunLogger(log, {"run_id": c.id, "run_type": c.type}).info("no handler on this worker; released untouched")
                continue
            run = WorkflowRun(
                c.id, c.type, c.payload, c.attempt, c.max_attempts,
                heartbeat=self._heartbeat, lease_seconds=self.lease_seconds,
            )
            item = _InFlight(run, handler)
            with self._lock:
                self._in_flight[c.id] = item
                self._busy[c.type] += 1
                self._busy_total += 1
            self._work.put(item)

    # -- internals: executing -------------------------------------------------------------

    def _worker(self, work: queue.SimpleQueue[_InFlight | None]) -> None:
        while True:
            item = work.get()
            if item is None:
                return
            handed_over = False
            try:
                handed_over = self._execute(item)
            except Exception:  # never let a bookkeeping failure kill a worker thread
                log.exception("run %s: unexpected error while handling its outcome", item.run.id)
            finally:
                with self._lock:
                    self._busy[item.run.type] -= 1
                    self._busy_total -= 1
                if not handed_over:
                    self._settle(item)
                self._wake.set()

    def _settle(self, item: _InFlight) -> None:
        """The run's outcome is written (or given up on): it no longer needs its lease."""
        with self._lock:
            if self._in_flight.get(item.run.id) is item:
                del self._in_flight[item.run.id]
            self._processed += 1
        self._wake.set()

    def _execute(self, item: _InFlight) -> bool:
        """Run the handler and queue its outcome for the committer; True once queued."""
        run, handler = item.run, item.handler
        started = time.monotonic()
        try:
            outcome = handler.invoke(run)
        except Exception as error:  # the handler failed this attempt
            return self._queue_failure(item, error, started)
        elapsed = time.monotonic() - started
        if isinstance(outcome, Suspend) and outcome.recorded:
            return False
        if isinstance(outcome, Suspend):
            self._committer.put(Outcome(
                run, "suspend", partial(self._suspended, item), status=outcome.status, wake_in=outcome.wake_in,
            ))
            return True
        try:
            result, _ = encode_json(outcome, "result", self.result_limit)
        except ValidationError as error:
            return self._queue_failure(item, error, started)
        self._committer.put(Outcome(run, "complete", partial(self._completed, item, elapsed), result=result))
        return True

    def _queue_failure(self, item: _InFlight, error: BaseException, started: float) -> bool:
        run, handler = item.run, item.handler
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        final = run.attempt >= run.max_attempts
        policy = handler.retry or self.retry_policy
        retry_in = None if final else policy.delay(run.attempt).total_seconds()
        self.metrics.record_failed_attempt(run.type, self.worker_id, run.attempt)
        on_done = partial(self._failed, item, error, retry_in, time.monotonic() - started)
        self._committer.put(Outcome(run, "fail", on_done, error=text, retry_in=retry_in))
        return True

    def _write_outcomes(self, batch: list[Outcome]) -> list[Any]:
        """One transaction for a batch of outcomes; answers in batch order."""

        def write(conn: Connection) -> list[Any]:
            done = [(o.run.id, o.run.attempt, o.result) for o in batch if o.kind == "complete"]
            written = self.store.complete_many(conn, self.worker_id, done)
            answers: list[Any] = []
            for o in batch:
                if o.kind == "complete":
                    answers.append((o.run.id, o.run.attempt) in written)
                elif o.kind == "fail":
                    answers.append(self.store.fail(conn, self.worker_id, o.run.id, o.run.attempt, o.error, o.retry_in))
                else:
                    answers.append(
                        self.store.suspend(conn, self.worker_id, o.run.id, o.run.attempt, o.status, o.wake_in)
                    )
            return answers

        single_statement = all(o.kind == "complete" for o in batch)
        answers: list[Any] = self._persist(
            write, what=f"record {len(batch)} outcome(s)", autocommit=single_statement
        )
        return answers

    def _completed(self, item: _InFlight, elapsed: float, written: Any) -> None:
        run = item.run
        if written:
            self.metrics.record_completed(run.type, self.worker_id, "succeeded", elapsed)
        else:
            self.metrics.record_completed(run.type, self.worker_id, "cancelled", elapsed)
            _RunLogger(log, {"run_id": run.id, "run_type": run.type}).warning(
                "finished, but the run was cancelled or its lease lost: the result was discarded"
            )
        self._settle(item)

    def _suspended(self, item: _InFlight, written: Any) -> None:
        if not written:
            _RunLogger(log, {"run_id": item.run.id, "run_type": item.run.type}).warning(
                "lease lost before the run could be suspended; nothing written"
            )
        self._settle(item)

    def _failed(self, item: _InFlight, error: BaseException, retry_in: float | None, elapsed: float, status: Any) -> None:
        run = item.run
        rlog = _RunLogger(log, {"run_id": run.id, "run_type": run.type})
        if status is None:
            rlog.warning("attempt %d failed, but the lease was lost: nothing written (%s)", run.attempt, error)
            self.metrics.record_completed(run.type, self.worker_id, "cancelled", elapsed)
        elif status == "failed":
            rlog.error("failed for good after %d attempts: %s: %s", run.attempt, type(error).__name__, error)
            self.metrics.record_completed(run.type, self.worker_id, "failed", elapsed)
            self.metrics.record_dead_letter(run.type, self.worker_id)
        else:
            rlog.warning(
                "attempt %d failed (%s: %s); retrying in %.1fs", run.attempt, type(error).__name__, error, retry_in or 0.0
            )
            self.metrics.record_completed(run.type, self.worker_id, "retried", elapsed)
        self._settle(item)

    def _heartbeat(self, run: WorkflowRun, seconds: float) -> bool:
        return bool(self._persist(
            lambda c: self.store.heartbeat(c, self.worker_id, run.id, run.attempt, seconds), what="heartbeat",
            forever=False,
        ))

    def _persist(
        self, fn: Callable[[Connection], Any], *, what: str, forever: bool = True, autocommit: bool = False
    ) -> Any:
        """Run one transaction, retrying transient database failures.

        Outcomes of handlers (``forever=True``) keep retrying for as long as the lease
        could still be ours, so a database restart does not lose a finished result.
        """
        limit = time.monotonic() + (self.lease_seconds * 2 if forever else 5.0)
        delay = 0.05
        while True:
            try:
                with self.db.connect(autocommit=autocommit) as conn:
                    return fn(conn)
            except sa_exc.DBAPIError as error:
                if not is_transient(error) or time.monotonic() > limit:
                    log.error("%s failed: %s", what, error)
                    if not forever:
                        return None
                    raise DatabaseError(f"{what} failed: {error}") from error
                log.warning("%s failed (%s); retrying", what, str(error).splitlines()[0])
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- internals: lease renewal, reaping, registry ------------------------------------------------

    def _maintain(self) -> None:
        interval = max(0.2, self.lease_seconds / 3)
        last_depth = 0.0
        reported: set[tuple[str, str]] = set()
        while not self._stopping.wait(interval):
            try:
                self.renew_now()
                if not isinstance(self.metrics, NullMetrics) and time.monotonic() - last_depth > 15:
                    last_depth = time.monotonic()
                    depths = {(t, s): n for t, s, n in self.db.run(self.store.count_by_type_status)}
                    for t, s in reported - depths.keys():  # emptied since the last sample
                        self.metrics.record_queue_depth(t, s, 0)
                    for (t, s), n in depths.items():
                        self.metrics.record_queue_depth(t, s, n)
                    reported = set(depths)
            except Exception as error:  # leases must keep being renewed whatever went wrong
                log.warning("maintenance round failed (%s); will retry", error)

    def renew_now(self) -> None:
        """One maintenance round: renew leases, flag lost runs, reap expired leases, heartbeat."""
        with self._lock:
            items = list(self._in_flight.values())
        try:
            held = self.db.run(
                lambda c: self.store.renew_leases(c, self.worker_id, [i.run.id for i in items], self.lease_seconds)
            )
            for item in items:
                if item.run.id not in held:
                    item.run.mark_lost()
            reaped = self.db.run(self.store.reap_expired)
            if reaped:
                log.warning("took back %d run(s) whose worker stopped renewing its lease", len(reaped))
                self._wake.set()
            self.db.run(lambda c: self.store.heartbeat_worker(c, self.worker_id))
        except SimpleflowError as error:
            log.warning("lease renewal failed (%s); will retry", error)


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
