"""A poller's configuration: handlers and settings, each ``with_*`` validating and returning the poller."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from simpleflow.admin import Retention
from simpleflow.core.attempt import Attempt, Executor
from simpleflow.core.errors import ValidationError
from simpleflow.core.retry import DEFAULT_RETRY, RetryPolicy
from simpleflow.core.states import Transition, complete
from simpleflow.core.validation import (
    check_duration,
    check_int,
    check_prefix,
    check_tenant,
    check_type,
    encode_json,
)
from simpleflow.db.database import Database
from simpleflow.store import Store
from simpleflow.worker.executor import Handler
from simpleflow.worker.metrics import MetricsCollector, NullMetrics
from simpleflow.workflow.gather import GatherPool
from simpleflow.workflow.handler import workflow_handler

C = TypeVar("C", bound="PollerConfig")

_poller_numbers = itertools.count(1)


def default_worker_id() -> str:
    """``hostname-pid`` for a process's first poller, ``hostname-pid-N`` for the N-th."""
    n = next(_poller_numbers)
    base = f"{socket.gethostname()}-{os.getpid()}"
    return base if n == 1 else f"{base}-{n}"


def plain_handler(fn: Callable[[Attempt], Any]) -> Callable[[Attempt], Transition]:
    """A handler's return value, checked as JSON, is the run's result."""

    def invoke(run: Attempt) -> Transition:
        result, _ = encode_json(fn(run), "result", None)
        return complete(result)

    return invoke


class PollerConfig:
    """Handlers and settings of a ``Poller``; nothing here touches the database."""

    db: Database
    store: Store
    _running: bool

    def _configure(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.worker_id = default_worker_id()
        self.lease_seconds = 30.0
        self.poll_seconds = 2.0
        self.prefixes: list[str] | None = None
        self.concurrency = 8
        self.retry_policy = DEFAULT_RETRY
        self.timeout_seconds: float | None = None
        self.metrics: MetricsCollector = NullMetrics()
        self._auto_migrate = False
        self.schedule_ticker = False
        self.schedule_tick_seconds = 15.0
        self.retention: Retention | None = None
        #: the step threads of ``ctx.gather``, shared by this poller's workflows (2 per worker thread)
        self.gather_pool = GatherPool(lambda: 2 * self.concurrency)
        #: the tenants whose runs this poller claims (None: every tenant)
        self.tenants: tuple[str, ...] | None = None
        #: share free threads among the tenants with due work in each claim
        self.fair = True

    # -- handlers ------------------------------------------------------------------------

    def handle_func(
        self: C,
        type: str,
        fn: Callable[[Attempt], Any],
        *,
        concurrency: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | float | None = None,
    ) -> C:
        """Run ``fn(run)`` for runs of ``type``; its return value is the run's result.
        ``timeout``: an attempt running longer fails with ``AttemptTimeout``."""
        if not callable(fn):
            raise ValidationError(f"handler for {type!r} must be callable, got {fn!r}")
        return self._register(type, plain_handler(fn), concurrency, retry, timeout)

    def handle(
        self: C,
        type: str,
        executor: Executor,
        *,
        concurrency: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | float | None = None,
    ) -> C:
        """Run ``executor.execute(run)`` for runs of ``type``."""
        if not callable(getattr(executor, "execute", None)):
            raise ValidationError(f"executor for {type!r} must have an execute(run) method")
        return self._register(type, plain_handler(executor.execute), concurrency, retry, timeout)

    def handle_workflow(
        self: C,
        type: str,
        fn: Callable[..., Any],
        *,
        concurrency: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | float | None = None,
    ) -> C:
        """Run ``fn(ctx, input)`` as a durable workflow (see ``WorkflowContext``); ``timeout``
        bounds each execution (between two suspensions), not the whole workflow."""
        return self._register(
            type, workflow_handler(self.store, type, fn, self.gather_pool), concurrency, retry, timeout
        )

    def _register(
        self: C,
        type: str,
        invoke: Callable[[Attempt], Transition | None],
        concurrency: int | None,
        retry: RetryPolicy | None,
        timeout: timedelta | float | None,
    ) -> C:
        type = check_type(type)
        if self._running:
            raise ValidationError("register handlers before starting the poller")
        if concurrency is not None:
            check_int(concurrency, "concurrency", 1, 10_000)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValidationError("retry must be a RetryPolicy")
        seconds = None if timeout is None else check_duration(timeout, "timeout", allow_zero=False).total_seconds()
        if type in self.handlers:
            raise ValidationError(f"a handler for {type!r} is already registered")
        self.handlers[type] = Handler(type, invoke, concurrency, retry, seconds)
        return self

    # -- settings ------------------------------------------------------------------------

    def with_worker_id(self: C, worker_id: str) -> C:
        if not isinstance(worker_id, str) or not worker_id or len(worker_id) > 255 or not worker_id.isprintable():
            raise ValidationError("worker id must be a non-empty printable string of at most 255 characters")
        self.worker_id = worker_id
        return self

    def with_lease_duration(self: C, duration: timedelta | float) -> C:
        seconds = check_duration(duration, "lease duration", allow_zero=False).total_seconds()
        if seconds < 0.5:
            raise ValidationError("lease duration must be at least 0.5 seconds")
        self.lease_seconds = seconds
        return self

    def with_poll_interval(self: C, interval: timedelta | float) -> C:
        self.poll_seconds = check_duration(interval, "poll interval", allow_zero=False).total_seconds()
        return self

    def with_type_prefixes(self: C, *prefixes: str) -> C:
        """Claim runs whose type matches these LIKE prefixes (``billing.%``) or exact types."""
        if not prefixes:
            raise ValidationError("with_type_prefixes needs at least one prefix, e.g. 'billing.%'")
        self.prefixes = [check_prefix(p) for p in prefixes]
        return self

    def with_concurrency(self: C, threads: int) -> C:
        self.concurrency = check_int(threads, "concurrency", 1, 1000)
        return self

    def with_retry_policy(self: C, policy: RetryPolicy) -> C:
        if not isinstance(policy, RetryPolicy):
            raise ValidationError("with_retry_policy needs a RetryPolicy")
        self.retry_policy = policy
        return self

    def with_timeout(self: C, timeout: timedelta | float) -> C:
        """The default timeout of an attempt, for handlers registered without their own."""
        self.timeout_seconds = check_duration(timeout, "timeout", allow_zero=False).total_seconds()
        return self

    def with_metrics(self: C, metrics: MetricsCollector) -> C:
        if not isinstance(metrics, MetricsCollector):
            raise ValidationError("metrics must implement MetricsCollector")
        self.metrics = metrics
        return self

    def with_auto_migrate(self: C) -> C:
        self._auto_migrate = True
        return self

    def with_schedule_ticker(self: C) -> C:
        """Also turn due schedules into runs (exactly one run per slot, however many tickers)."""
        self.schedule_ticker = True
        return self

    def with_schedule_tick_interval(self: C, interval: timedelta | float) -> C:
        self.schedule_tick_seconds = check_duration(
            interval, "schedule tick interval", allow_zero=False
        ).total_seconds()
        return self

    def with_tenants(self: C, *tenants: str) -> C:
        """Claim only these tenants' runs (fairly shared among them); default: every tenant's."""
        if not tenants:
            raise ValidationError("with_tenants needs at least one tenant, e.g. with_tenants('acme')")
        self.tenants = tuple(sorted({check_tenant(t) for t in tenants}))
        return self

    def with_retention(
        self: C,
        older_than: timedelta | float,
        statuses: tuple[str, ...] = ("succeeded", "cancelled"),
        interval: timedelta | float = timedelta(hours=1),
    ) -> C:
        """Also prune finished runs older than ``older_than`` every ``interval``."""
        self.retention = Retention(older_than, statuses, interval)
        return self
