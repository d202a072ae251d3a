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
from simpleflow.worker.metrics import PER_RUN, RunMetrics


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


# -- tenants ------------------------------------------------------------------------------------


class TenantRecorder(Recorder):
    """A collector written for tenants: its per-run methods take ``tenant``."""

    def record_claimed(self, run_type: str, worker_id: str, tenant: str = "?") -> None:
        self._add("claimed", run_type, worker_id, tenant)

    def record_completed(self, run_type: str, worker_id: str, status: str, duration: float, *, tenant: str) -> None:
        self._add("completed", run_type, worker_id, status, tenant)

    def record_queue_depth(self, run_type: str, status: str, depth: int, tenant: str = "?") -> None:
        self._add("queue_depth", run_type, status, depth, tenant)


def _submit_for_tenants(db_url: str) -> list[tuple[str, Client, str]]:
    """Runs of two tenants and of the default one: (tenant, its client, run id) of those handled."""
    made = []
    for tenant, kinds in (("acme", ["ok", "ok", "never"]), ("globex", ["ok"]), ("default", ["ok"])):
        c = Client(db_url, tenant=tenant)
        for kind in kinds:
            made.append((tenant, c, c.submit("demo.m.v1", {"kind": kind}).with_max_attempts(1).execute()))
    with Client(db_url, tenant="globex") as globex:
        globex.submit("other.queued.v1", {}).execute()
        globex.submit("other.queued.v1", {}).execute()
    with Client(db_url, tenant="acme") as acme:
        acme.submit("other.queued.v1", {}).execute()
    return made


def _run_all(db_url: str, metrics: Any, made: list[tuple[str, Client, str]], ready: Any) -> None:
    with make_poller(db_url, "t1") as poller:
        poller.handle_func("demo.m.v1", _flaky).with_metrics(metrics)
        with started(poller):
            for _, c, run_id in made:
                c.wait(run_id, timeout=timedelta(seconds=10))
            wait_for(ready, what="the outcomes and a queue depth sample")
    for _, c, _ in made:
        c.close()


def test_prometheus_metrics_with_a_tenant_label(client: Client, db_url: str) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry, tenant_label=True)
    made = _submit_for_tenants(db_url)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)  # type: ignore[no-any-return]

    _run_all(
        db_url,
        metrics,
        made,
        lambda: (
            value("simpleflow_queue_depth", tenant="globex", type="other.queued.v1", status="pending")
            and value("simpleflow_runs_completed_total", tenant="acme", type="demo.m.v1", worker="t1", status="failed")
        ),
    )
    claimed = {
        s.labels["tenant"]: s.value
        for m in registry.collect()
        if m.name == "simpleflow_runs_claimed"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert claimed == {"acme": 3, "globex": 1, "default": 1}
    assert (
        value("simpleflow_runs_completed_total", tenant="acme", type="demo.m.v1", worker="t1", status="succeeded") == 2
    )
    assert value("simpleflow_runs_completed_total", tenant="acme", type="demo.m.v1", worker="t1", status="failed") == 1
    assert (
        value("simpleflow_runs_completed_total", tenant="globex", type="demo.m.v1", worker="t1", status="succeeded")
        == 1
    )
    assert (
        value("simpleflow_runs_completed_total", tenant="globex", type="demo.m.v1", worker="t1", status="failed")
        is None
    )
    assert value("simpleflow_runs_dead_lettered_total", tenant="acme", type="demo.m.v1", worker="t1") == 1
    assert value("simpleflow_runs_dead_lettered_total", tenant="globex", type="demo.m.v1", worker="t1") is None
    assert value("simpleflow_run_failed_attempts_total", tenant="acme", type="demo.m.v1", worker="t1") == 1
    assert value("simpleflow_run_duration_seconds_count", tenant="default", type="demo.m.v1", status="succeeded") == 1
    assert value("simpleflow_queue_depth", tenant="globex", type="other.queued.v1", status="pending") == 2
    assert value("simpleflow_queue_depth", tenant="acme", type="other.queued.v1", status="pending") == 1
    assert value("simpleflow_poll_cycles_total", worker="t1")  # not per run: no tenant label
    for family in registry.collect():
        for sample in family.samples:  # every per-run metric; the poll cycles are not per run
            assert ("tenant" in sample.labels) == (family.name != "simpleflow_poll_cycles"), sample


def test_prometheus_metrics_have_no_tenant_label_by_default(client: Client, db_url: str) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    made = _submit_for_tenants(db_url)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)  # type: ignore[no-any-return]

    _run_all(
        db_url,
        PrometheusMetrics(registry=registry),
        made,
        lambda: (
            value("simpleflow_queue_depth", type="other.queued.v1", status="pending")
            and value("simpleflow_runs_completed_total", type="demo.m.v1", worker="t1", status="failed")
        ),
    )
    samples = [s for family in registry.collect() for s in family.samples]
    assert samples and not any("tenant" in s.labels for s in samples)
    assert value("simpleflow_runs_claimed_total", type="demo.m.v1", worker="t1") == 5  # every tenant's, together
    assert value("simpleflow_runs_completed_total", type="demo.m.v1", worker="t1", status="succeeded") == 4
    assert value("simpleflow_queue_depth", type="other.queued.v1", status="pending") == 3  # summed over tenants


def test_a_collector_without_tenant_parameters_is_called_as_before(client: Client, db_url: str) -> None:
    rec = Recorder()
    made = _submit_for_tenants(db_url)
    _run_all(db_url, rec, made, lambda: len(rec.of("completed")) == 5 and rec.of("queue_depth"))
    assert Counter(rec.of("claimed")) == {("demo.m.v1", "t1"): 5}  # every tenant's runs, no tenant argument
    assert {len(c) for c in rec.of("completed")} == {4}
    assert rec.of("dead_letter") == [("demo.m.v1", "t1")]
    assert ("other.queued.v1", "pending", 3) in rec.of("queue_depth")  # summed over the tenants


def test_a_collector_that_takes_the_tenant_gets_it(client: Client, db_url: str) -> None:
    rec = TenantRecorder()
    made = _submit_for_tenants(db_url)
    _run_all(db_url, rec, made, lambda: len(rec.of("completed")) == 5 and rec.of("queue_depth"))
    assert Counter(rec.of("claimed")) == {
        ("demo.m.v1", "t1", "acme"): 3,
        ("demo.m.v1", "t1", "globex"): 1,
        ("demo.m.v1", "t1", "default"): 1,
    }
    assert Counter((c[2], c[3]) for c in rec.of("completed")) == {
        ("succeeded", "acme"): 2,
        ("failed", "acme"): 1,
        ("succeeded", "globex"): 1,
        ("succeeded", "default"): 1,
    }
    assert rec.of("dead_letter") == [("demo.m.v1", "t1")]  # no tenant parameter there: called as before
    depths = rec.of("queue_depth")
    assert ("other.queued.v1", "pending", 2, "globex") in depths
    assert ("other.queued.v1", "pending", 1, "acme") in depths


def test_which_methods_get_the_tenant() -> None:
    class Opted(TenantRecorder):
        tenant_label = False  # the collector's own switch wins over its signatures

    class Flexible(Recorder):
        def record_claimed(self, run_type: str, worker_id: str, **labels: str) -> None: ...

    assert RunMetrics(TenantRecorder()).by_tenant == {"record_claimed", "record_completed", "record_queue_depth"}
    assert RunMetrics(Recorder()).by_tenant == frozenset()
    assert RunMetrics(Opted()).by_tenant == frozenset()
    assert RunMetrics(Flexible()).by_tenant == frozenset()  # **kwargs is not asking for the tenant
    assert RunMetrics(PrometheusMetrics(registry=_registry())).by_tenant == frozenset()
    assert RunMetrics(PrometheusMetrics(registry=_registry(), tenant_label=True)).by_tenant == set(PER_RUN)


def _registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()
