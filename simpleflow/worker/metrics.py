"""Observability hooks: the ``MetricsCollector`` protocol and a Prometheus implementation.

A Poller calls these from its threads; implementations must be thread-safe and
cheap. ``PrometheusMetrics`` needs the ``prometheus`` extra
(``pip install 'simpleflow-db[prometheus]'``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from simpleflow.core.errors import ConfigurationError


@runtime_checkable
class MetricsCollector(Protocol):
    """What a Poller reports (the seed's collector, in Python names)."""

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


class PrometheusMetrics:
    """``MetricsCollector`` backed by prometheus_client counters, a histogram and a gauge."""

    def __init__(self, registry: Any = None, namespace: str = "simpleflow") -> None:
        try:
            import prometheus_client as prom
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "PrometheusMetrics needs prometheus-client: pip install 'simpleflow-db[prometheus]'"
            ) from error
        kw: dict[str, Any] = {"namespace": namespace}
        if registry is not None:
            kw["registry"] = registry
        self.claimed = prom.Counter("runs_claimed_total", "Runs leased by a worker", ["type", "worker"], **kw)
        self.completed = prom.Counter(
            "runs_completed_total", "Attempts finished, by outcome", ["type", "worker", "status"], **kw
        )
        self.duration = prom.Histogram("run_duration_seconds", "Handler duration per attempt", ["type", "status"], **kw)
        self.dead = prom.Counter("runs_dead_lettered_total", "Runs failed for good", ["type", "worker"], **kw)
        self.failed_attempts = prom.Counter(
            "run_failed_attempts_total", "Attempts that raised", ["type", "worker"], **kw
        )
        self.polls = prom.Counter("poll_cycles_total", "Claim cycles", ["worker"], **kw)
        self.poll_errors = prom.Counter("poll_errors_total", "Claim cycles that failed", ["worker", "error"], **kw)
        self.depth = prom.Gauge("queue_depth", "Unfinished runs", ["type", "status"], **kw)
        self.limits_paused = prom.Counter(
            "limits_paused_total", "Type patterns a circuit breaker paused", ["pattern", "worker"], **kw
        )

    def record_claimed(self, run_type: str, worker_id: str) -> None:
        self.claimed.labels(run_type, worker_id).inc()

    def record_completed(self, run_type: str, worker_id: str, status: str, duration: float) -> None:
        self.completed.labels(run_type, worker_id, status).inc()
        self.duration.labels(run_type, status).observe(duration)

    def record_dead_letter(self, run_type: str, worker_id: str) -> None:
        self.dead.labels(run_type, worker_id).inc()

    def record_failed_attempt(self, run_type: str, worker_id: str, attempt: int) -> None:
        self.failed_attempts.labels(run_type, worker_id).inc()

    def record_poll_cycle(self, worker_id: str) -> None:
        self.polls.labels(worker_id).inc()

    def record_poll_error(self, worker_id: str, error_type: str) -> None:
        self.poll_errors.labels(worker_id, error_type).inc()

    def record_queue_depth(self, run_type: str, status: str, depth: int) -> None:
        self.depth.labels(run_type, status).set(depth)

    def record_limit_paused(self, pattern: str, worker_id: str) -> None:
        """A circuit breaker paused ``pattern`` (optional: collectors without it are not called)."""
        self.limits_paused.labels(pattern, worker_id).inc()
