"""Metrics move on both databases: a recording ``MetricsCollector`` and ``PrometheusMetrics``."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from poller_helpers import make_poller, started, wait_for

from simpleflow import Client, MetricsCollector, PrometheusMetrics, WorkflowRun
from simpleflow.core.errors import ValidationError


class Recorder:
    """Keeps every call, thread-safely."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[Any, ...]] = []

    def _add(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    def of(self, name: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [c[1:] for c in self.calls if c[0] == name]

    def record_claimed(self, run_type: str, worker_id: str) -> None:
        self._add("claimed", run_type, worker_id)

    def record_completed(self, run_type: str, worker_id: str, status: str, duration: float) -> None:
        self._add("completed", run_type, worker_id, status, duration)

    def record_dead_letter(self, run_type: str, worker_id: str) -> None:
        self._add("dead_letter", run_type, worker_id)

    def record_failed_attempt(self, run_type: str, worker_id: str, attempt: int) -> None:
        self._add("failed_attempt", run_type, worker_id, attempt)

    def record_poll_cycle(self, worker_id: str) -> None:
        self._add("poll_cycle", worker_id)

    def record_poll_error(self, worker_id: str, error_type: str) -> None:
        self._add("poll_error", worker_id, error_type)

    def record_queue_depth(self, run_type: str, status: str, depth: int) -> None:
        self._add("queue_depth", run_type, status, depth)


def _flaky(run: WorkflowRun) -> str:
    """``ok`` succeeds; ``once`` fails its first attempt; ``never`` always fails."""
    kind = run.payload_value["kind"]
    if kind == "never" or (kind == "once" and run.attempt == 1):
        raise RuntimeError(f"{kind} fails attempt {run.attempt}")
    time.sleep(0.01)
    return kind


def test_a_recording_collector_sees_every_kind_of_event(client: Client, db_url: str) -> None:
    assert isinstance(Recorder(), MetricsCollector)
    ok = client.submit("demo.m.v1", {"kind": "ok"}).execute()
    once = client.submit("demo.m.v1", {"kind": "once"}).execute()
    never = client.submit("demo.m.v1", {"kind": "never"}).with_max_attempts(2).execute()
    client.submit("other.queued.v1", {}).execute()  # nobody handles it: it shows up in the queue depth
    rec = Recorder()
    with make_poller(db_url, "m1") as poller:
        poller.handle_func("demo.m.v1", _flaky).with_metrics(rec)
        with started(poller):
            for run_id in (ok, once, never):
                client.wait(run_id, timeout=timedelta(seconds=10))
            wait_for(lambda: rec.of("queue_depth"), what="a queue depth sample")
            wait_for(lambda: len(rec.of("completed")) == 5, what="every outcome to be recorded")

    assert Counter(rec.of("claimed")) == {("demo.m.v1", "m1"): 5}  # ok 1 + once 2 + never 2
    statuses = Counter(c[2] for c in rec.of("completed"))
    assert statuses == {"succeeded": 2, "retried": 2, "failed": 1}
    assert all(c[:2] == ("demo.m.v1", "m1") and c[3] >= 0 for c in rec.of("completed"))
    assert max(c[3] for c in rec.of("completed") if c[2] == "succeeded") >= 0.01
    assert rec.of("dead_letter") == [("demo.m.v1", "m1")]
    assert sorted(rec.of("failed_attempt")) == [("demo.m.v1", "m1", 1), ("demo.m.v1", "m1", 1), ("demo.m.v1", "m1", 2)]
    assert len(rec.of("poll_cycle")) >= 1 and set(rec.of("poll_cycle")) == {("m1",)}
    assert ("other.queued.v1", "pending", 1) in rec.of("queue_depth")
    assert rec.of("poll_error") == []


def test_poll_errors_are_counted_and_the_loop_goes_on(client: Client, db_url: str, db_kind: str) -> None:
    from sqlalchemy import text

    schema = f'"{client.db.schema}".' if db_kind == "postgresql" else ""
    rec = Recorder()
    with make_poller(db_url, "m1") as poller:
        poller.handle_func("demo.m.v1", _flaky).with_metrics(rec)
        with started(poller):
            with client.db.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {schema}workflow_run RENAME TO workflow_run_gone"))
            try:
                wait_for(lambda: len(rec.of("poll_error")) >= 2, what="failing claim cycles")
            finally:
                with client.db.engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {schema}workflow_run_gone RENAME TO workflow_run"))
            run_id = client.submit("demo.m.v1", {"kind": "ok"}).execute()
            assert client.wait(run_id, timeout=timedelta(seconds=15)).status == "succeeded"
    assert {c[0] for c in rec.of("poll_error")} == {"m1"}
    assert all(c[1] for c in rec.of("poll_error"))  # an error type name


def test_metrics_must_implement_the_protocol(db_url: str) -> None:
    with make_poller(db_url, "m1") as poller, pytest.raises(ValidationError, match="MetricsCollector"):
        poller.with_metrics(object())  # type: ignore[arg-type]


def test_prometheus_metrics_move(client: Client, db_url: str) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    ok = client.submit("demo.m.v1", {"kind": "ok"}).execute()
    never = client.submit("demo.m.v1", {"kind": "never"}).with_max_attempts(1).execute()
    client.submit("other.queued.v1", {}).execute()
    with make_poller(db_url, "p1") as poller:
        poller.handle_func("demo.m.v1", _flaky).with_metrics(metrics)
        with started(poller):
            client.wait(ok, timeout=timedelta(seconds=10))
            client.wait(never, timeout=timedelta(seconds=10))
            wait_for(
                lambda: registry.get_sample_value(
                    "simpleflow_queue_depth", {"type": "other.queued.v1", "status": "pending"}
                ),
                what="a queue depth sample",
            )

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)  # type: ignore[no-any-return]

    wait_for(
        lambda: value("simpleflow_runs_completed_total", type="demo.m.v1", worker="p1", status="failed"),
        what="outcomes",
    )
    assert value("simpleflow_runs_claimed_total", type="demo.m.v1", worker="p1") == 2
    assert value("simpleflow_runs_completed_total", type="demo.m.v1", worker="p1", status="succeeded") == 1
    assert value("simpleflow_runs_completed_total", type="demo.m.v1", worker="p1", status="failed") == 1
    assert value("simpleflow_runs_dead_lettered_total", type="demo.m.v1", worker="p1") == 1
    assert value("simpleflow_run_failed_attempts_total", type="demo.m.v1", worker="p1") == 1
    assert value("simpleflow_run_duration_seconds_count", type="demo.m.v1", status="succeeded") == 1
    assert (value("simpleflow_run_duration_seconds_sum", type="demo.m.v1", status="succeeded") or 0) >= 0.01
    assert (value("simpleflow_poll_cycles_total", worker="p1") or 0) >= 1
    assert value("simpleflow_queue_depth", type="other.queued.v1", status="pending") == 1


def test_two_prometheus_collectors_need_two_registries() -> None:
    from prometheus_client import CollectorRegistry

    a, b = CollectorRegistry(), CollectorRegistry()
    PrometheusMetrics(registry=a)
    PrometheusMetrics(registry=b)  # a fresh registry each: no duplicate-timeseries error
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusMetrics(registry=a)
