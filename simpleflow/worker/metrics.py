"""Observability hooks: the ``MetricsCollector`` protocol and a Prometheus implementation.

A Poller calls these from its threads; implementations must be thread-safe and
cheap. ``PrometheusMetrics`` needs the ``prometheus`` extra
(``pip install 'simpleflow-db[prometheus]'``).

The run's tenant: the per-run methods (``PER_RUN``) of a collector are called with
``tenant=<the run's tenant>`` when their signature has a ``tenant`` parameter, unless
the collector has a ``tenant_label`` attribute that is false; otherwise exactly as the
protocol says. The poller decides once per collector when it starts (``RunMetrics``),
so collectors written before tenants keep working unchanged.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

from simpleflow.core.errors import ConfigurationError
from simpleflow.db.schema import DEFAULT_TENANT

#: the methods about one run, which may take the run's ``tenant``
PER_RUN = ("record_claimed", "record_completed", "record_dead_letter", "record_failed_attempt", "record_queue_depth")


@runtime_checkable
class MetricsCollector(Protocol):
    """What a Poller reports (the seed's collector, in Python names).

    A per-run method (``PER_RUN``) may add a ``tenant`` parameter to receive the run's tenant
    (for ``record_queue_depth``: depths are then per tenant, type and status).
    """

    def record_claimed(self, run_type: str, worker_id: str) -> None:
        """A run was leased by this worker."""

    def record_completed(self, run_type: str, worker_id: str, status: str, duration: float) -> None:
        """An attempt ended: ``succeeded``, ``failed`` (for good), ``retried`` or ``cancelled``; seconds."""

    def record_dead_letter(self, run_type: str, worker_id: str) -> None:
        """A run failed for good (no attempts left)."""

    def record_failed_attempt(self, run_type: str, worker_id: str, attempt: int) -> None:
        """One attempt raised."""

    def record_poll_cycle(self, worker_id: str) -> None:
        """The poller looked for work."""

    def record_poll_error(self, worker_id: str, error_type: str) -> None:
        """Looking for work failed (database down, connection dropped, ...)."""

    def record_queue_depth(self, run_type: str, status: str, depth: int) -> None:
        """Unfinished runs of a type in a status, sampled periodically."""


class NullMetrics:
    """Collects nothing; the default."""

    def record_claimed(self, run_type: str, worker_id: str) -> None: ...
    def record_completed(self, run_type: str, worker_id: str, status: str, duration: float) -> None: ...
    def record_dead_letter(self, run_type: str, worker_id: str) -> None: ...
    def record_failed_attempt(self, run_type: str, worker_id: str, attempt: int) -> None: ...
    def record_poll_cycle(self, worker_id: str) -> None: ...
    def record_poll_error(self, worker_id: str, error_type: str) -> None: ...
    def record_queue_depth(self, run_type: str, status: str, depth: int) -> None: ...
    def record_limit_paused(self, pattern: str, worker_id: str) -> None: ...


def takes_tenant(collector: object, method: str) -> bool:
    """Is ``collector.method`` called with ``tenant=`` (see the module's docstring)?"""
    if not getattr(collector, "tenant_label", True):
        return False
    try:
        parameter = inspect.signature(getattr(collector, method)).parameters.get("tenant")
    except (AttributeError, TypeError, ValueError):  # no such method, or no signature to read
        return False
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


class RunMetrics:
    """A collector as the poller calls it: the run's tenant goes to the methods that take it."""

    def __init__(self, collector: MetricsCollector) -> None:
        self.collector = collector
        self._c: Any = collector
        self.by_tenant = frozenset(m for m in PER_RUN if takes_tenant(collector, m))
        self.null = isinstance(collector, NullMetrics)

    def record_claimed(self, run_type: str, worker_id: str, tenant: str) -> None:
        if "record_claimed" in self.by_tenant:
            self._c.record_claimed(run_type, worker_id, tenant=tenant)
        else:
            self._c.record_claimed(run_type, worker_id)

    def record_completed(self, run_type: str, worker_id: str, status: str, duration: float, tenant: str) -> None:
        if "record_completed" in self.by_tenant:
            self._c.record_completed(run_type, worker_id, status, duration, tenant=tenant)
        else:
            self._c.record_completed(run_type, worker_id, status, duration)

    def record_dead_letter(self, run_type: str, worker_id: str, tenant: str) -> None:
        if "record_dead_letter" in self.by_tenant:
            self._c.record_dead_letter(run_type, worker_id, tenant=tenant)
        else:
            self._c.record_dead_letter(run_type, worker_id)

    def record_failed_attempt(self, run_type: str, worker_id: str, attempt: int, tenant: str) -> None:
        if "record_failed_attempt" in self.by_tenant:
            self._c.record_failed_attempt(run_type, worker_id, attempt, tenant=tenant)
        else:
            self._c.record_failed_attempt(run_type, worker_id, attempt)

    def record_queue_depth(self, run_type: str, status: str, depth: int, tenant: str) -> None:
        """``tenant`` is ignored unless the depths are sampled per tenant (``depth_by_tenant``)."""
        if "record_queue_depth" in self.by_tenant:
            self._c.record_queue_depth(run_type, status, depth, tenant=tenant)
        else:
            self._c.record_queue_depth(run_type, status, depth)

    @property
    def depth_by_tenant(self) -> bool:
        return "record_queue_depth" in self.by_tenant


class PrometheusMetrics:
    """``MetricsCollector`` backed by prometheus_client counters, a histogram and a gauge.

    ``tenant_label=True``: the per-run metrics (claimed, completed, duration, dead-lettered,
    failed attempts, queue depth) carry a ``tenant`` label, the run's tenant.
    """

    def __init__(self, registry: Any = None, namespace: str = "simpleflow", tenant_label: bool = False) -> None:
        try:
            import prometheus_client as prom
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "PrometheusMetrics needs prometheus-client: pip install 'simpleflow-db[prometheus]'"
            ) from error
        #: do the per-run metrics carry a ``tenant`` label (fixed here: Prometheus label sets are)
        self.tenant_label = bool(tenant_label)
        kw: dict[str, Any] = {"namespace": namespace}
        if registry is not None:
            kw["registry"] = registry
        t = ["tenant"] if self.tenant_label else []
        self.claimed = prom.Counter("runs_claimed_total", "Runs leased by a worker", [*t, "type", "worker"], **kw)
        self.completed = prom.Counter(
            "runs_completed_total", "Attempts finished, by outcome", [*t, "type", "worker", "status"], **kw
        )
        self.duration = prom.Histogram(
            "run_duration_seconds", "Handler duration per attempt", [*t, "type", "status"], **kw
        )
        self.dead = prom.Counter("runs_dead_lettered_total", "Runs failed for good", [*t, "type", "worker"], **kw)
        self.failed_attempts = prom.Counter(
            "run_failed_attempts_total", "Attempts that raised", [*t, "type", "worker"], **kw
        )
        self.polls = prom.Counter("poll_cycles_total", "Claim cycles", ["worker"], **kw)
        self.poll_errors = prom.Counter("poll_errors_total", "Claim cycles that failed", ["worker", "error"], **kw)
        self.depth = prom.Gauge("queue_depth", "Unfinished runs", [*t, "type", "status"], **kw)
        self.limits_paused = prom.Counter(
            "limits_paused_total", "Type patterns a circuit breaker paused", ["pattern", "worker"], **kw
        )

    def _t(self, tenant: str) -> tuple[str, ...]:
        return (tenant,) if self.tenant_label else ()

    def record_claimed(self, run_type: str, worker_id: str, tenant: str = DEFAULT_TENANT) -> None:
        self.claimed.labels(*self._t(tenant), run_type, worker_id).inc()

    def record_completed(
        self, run_type: str, worker_id: str, status: str, duration: float, tenant: str = DEFAULT_TENANT
    ) -> None:
        self.completed.labels(*self._t(tenant), run_type, worker_id, status).inc()
        self.duration.labels(*self._t(tenant), run_type, status).observe(duration)

    def record_dead_letter(self, run_type: str, worker_id: str, tenant: str = DEFAULT_TENANT) -> None:
        self.dead.labels(*self._t(tenant), run_type, worker_id).inc()

    def record_failed_attempt(self, run_type: str, worker_id: str, attempt: int, tenant: str = DEFAULT_TENANT) -> None:
        self.failed_attempts.labels(*self._t(tenant), run_type, worker_id).inc()

    def record_poll_cycle(self, worker_id: str) -> None:
        self.polls.labels(worker_id).inc()

    def record_poll_error(self, worker_id: str, error_type: str) -> None:
        self.poll_errors.labels(worker_id, error_type).inc()

    def record_queue_depth(self, run_type: str, status: str, depth: int, tenant: str = DEFAULT_TENANT) -> None:
        self.depth.labels(*self._t(tenant), run_type, status).set(depth)

    def record_limit_paused(self, pattern: str, worker_id: str) -> None:
        """A circuit breaker paused ``pattern`` (optional: collectors without it are not called)."""
        self.limits_paused.labels(pattern, worker_id).inc()
