"""Flow control in one process, on both databases: limits in the database, pause/resume,
the circuit breaker, concurrency keys, debounce, no busy loop. The multi-process
guarantees are in ``test_flow_processes.py``."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import prometheus_client
import pytest
from poller_helpers import make_poller, started, wait_for

from simpleflow import Client, Limit, NotFound, PrometheusMetrics, ValidationError, WorkflowRun
from simpleflow.worker.metrics import NullMetrics

JOB = "billing.charge.v1"
OTHER = "email.send.v1"


class Tracker:
    """Counts handlers running at once, and when each started and ended (monotonic)."""

    def __init__(self, sleep: float = 0.05) -> None:
        self.sleep = sleep
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.spans: list[tuple[float, float, Any]] = []

    def __call__(self, run: WorkflowRun) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        start = time.monotonic()
        time.sleep(self.sleep)
        with self.lock:
            self.running -= 1
            self.spans.append((start, time.monotonic(), run.payload_as(dict)))

    def peak_after(self, t: float) -> int:
        """Most handlers running at once at any start after ``t``."""
        starts = [s for s, _, _ in self.spans if s > t]
        return max((sum(1 for a, b, _ in self.spans if a <= s < b) for s in starts), default=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"concurrency": 0},
        {"concurrency": -1},
        {"concurrency": True},
        {"rate": (0, timedelta(seconds=1))},
        {"rate": (5, timedelta(0))},
        {"rate": (5, -1)},
        {"rate": 5},
        {"rate": "100"},
        {"rate": "100/"},
        {"rate": "x/1m"},
        {"pause_after_failures": 0},
    ],
)
def test_bad_limits_are_rejected_and_nothing_is_stored(client: Client, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        client.set_limit("billing.%", **kwargs)
    assert client.list_limits() == []


@pytest.mark.parametrize("pattern", ["", "%billing", "bil%ling.%", "billing.%%", " x", 5, None])
def test_malformed_patterns_are_rejected(client: Client, pattern: Any) -> None:
    with pytest.raises(ValidationError):
        client.set_limit(pattern, concurrency=1)
    with pytest.raises(ValidationError):
        client.pause(pattern)
    assert client.list_limits() == []


def test_limits_are_listed_replaced_cleared_with_events(client: Client) -> None:
    client.set_limit("billing.%", concurrency=5)
    client.set_limit(OTHER, rate=(100, timedelta(minutes=1)))
    client.set_limit("partner.%", concurrency=2, rate="10/1s", pause_after_failures=20)
    limits = {limit.pattern: limit for limit in client.list_limits()}
    assert list(limits) == ["billing.%", OTHER, "partner.%"]
    assert isinstance(limits["billing.%"], Limit)
    assert limits["billing.%"].concurrency == 5 and limits["billing.%"].rate is None
    assert limits[OTHER].rate == (100, timedelta(minutes=1))
    assert limits["partner.%"].rate == (10, timedelta(seconds=1))
    assert limits["partner.%"].pause_after_failures == 20 and not limits["partner.%"].paused

    client.set_limit("billing.%", concurrency=7)  # replaces the numbers
    assert [x.concurrency for x in client.list_limits() if x.pattern == "billing.%"] == [7]
    client.clear_limit("billing.%")
    assert [x.pattern for x in client.list_limits()] == [OTHER, "partner.%"]
    with pytest.raises(NotFound):
        client.clear_limit("billing.%")


def test_concurrency_limit_is_obeyed_and_usage_is_shown(client: Client, migrated_url: str) -> None:
    client.set_limit("billing.%", concurrency=2)
    track = Tracker(0.1)
    poller = make_poller(migrated_url, "w1", concurrency=8)
    poller.handle_func(JOB, track)
    poller.handle_func("billing.refund.v1", track)
    ids = [client.submit(JOB if i % 2 else "billing.refund.v1", {"i": i}).execute() for i in range(10)]
    with started(poller):
        wait_for(lambda: client.list_limits()[0].leased == 2, what="two slots in use")
        wait_for(lambda: all(client.get_run(i).status == "succeeded" for i in ids), timeout=20, what="all runs")
    assert track.peak == 2
    assert client.list_limits()[0].leased == 0


def test_unlimited_types_are_not_held_back_by_other_limits(client: Client, migrated_url: str) -> None:
    client.set_limit(JOB, concurrency=1)
    client.pause("billing.%")
    poller = make_poller(migrated_url, "w1", concurrency=4)
    poller.handle_func(JOB, lambda run: None)
    poller.handle_func(OTHER, lambda run: None)
    blocked = client.submit(JOB, {}).execute()
    free = [client.submit(OTHER, {"i": i}).execute() for i in range(20)]
    poller.run_until_idle(timeout=timedelta(seconds=20))
    assert all(client.get_run(i).status == "succeeded" for i in free)
    assert client.get_run(blocked).status == "pending"


def test_pause_keeps_runs_pending_lets_in_flight_finish_and_resume_restarts(client: Client, migrated_url: str) -> None:
    gate = threading.Event()
    poller = make_poller(migrated_url, "w1", concurrency=4)
    poller.handle_func(JOB, lambda run: gate.wait(10))
    first = client.submit(JOB, {}).execute()
    with started(poller):
        wait_for(lambda: client.get_run(first).status == "leased", what="the first run to start")
        client.pause("billing.%")
        later = [client.submit(JOB, {"i": i}).execute() for i in range(3)]
        gate.set()
        wait_for(lambda: client.get_run(first).status == "succeeded", what="the in-flight run to finish")
        time.sleep(0.5)  # several claim cycles
        assert {client.get_run(i).status for i in later} == {"pending"}
        stats = client.stats()
        assert stats.paused == ["billing.%"]
        assert [x.paused_reason for x in client.list_limits()] == ["manual"]
        client.resume("billing.%")
        wait_for(lambda: all(client.get_run(i).status == "succeeded" for i in later), what="resumed runs")
    assert client.stats().paused == []
    assert client.list_limits() == []  # a row that only paused goes away on resume
    with pytest.raises(NotFound):
        client.resume("billing.%")
    events = _limit_events(client)
    assert [(e["event_type"], e["detail"]["pattern"]) for e in events] == [
        ("paused", "billing.%"),
        ("resumed", "billing.%"),
    ]


def test_a_limit_changed_at_run_time_applies_at_the_next_claim(client: Client, migrated_url: str) -> None:
    client.set_limit(JOB, concurrency=1)
    track = Tracker(0.3)
    poller = make_poller(migrated_url, "w1", concurrency=6, poll=timedelta(seconds=5))
    poller.handle_func(JOB, track)
    ids = [client.submit(JOB, {"i": i}).execute() for i in range(24)]
    with started(poller):
        wait_for(lambda: track.running == 1, what="one run under the limit of 1")
        raised = time.monotonic()
        client.set_limit(JOB, concurrency=4)
        wait_for(lambda: track.running == 4, timeout=1.0, what="the raised limit")  # not the 5 s poll
        assert time.monotonic() - raised < 1.0
        client.set_limit(JOB, concurrency=2)
        lowered = time.monotonic()
        wait_for(lambda: all(client.get_run(i).status == "succeeded" for i in ids), timeout=30, what="all runs")
    assert track.peak == 4
    # every run that started after the lowering (and after the 4 then in flight ended) saw at most 2
    drained = max(b for a, b, _ in track.spans if a < lowered)
    assert track.peak_after(drained) <= 2


def test_rate_limit_spaces_starts(client: Client, migrated_url: str) -> None:
    client.set_limit(JOB, rate=(4, timedelta(seconds=1)))
    track = Tracker(0.0)
    poller = make_poller(migrated_url, "w1", concurrency=8)
    poller.handle_func(JOB, track)
    ids = [client.submit(JOB, {"i": i}).execute() for i in range(10)]
    started_at = time.monotonic()
    poller.run_until_idle(timeout=timedelta(seconds=20))
    took = time.monotonic() - started_at
    assert all(client.get_run(i).status == "succeeded" for i in ids)
    assert took >= 2.0, f"10 runs at 4/s took only {took:.2f}s"
    leased = sorted(e.created_at for i in ids for e in client.get_events(i) if e.event_type == "leased")
    assert max(sum(1 for t in leased if s <= t < s + timedelta(seconds=1)) for s in leased) <= 4


def test_circuit_breaker_pauses_after_n_failures_and_resume_resets(
    client: Client, migrated_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client.set_limit("billing.%", pause_after_failures=3)
    healthy = threading.Event()

    def handler(run: WorkflowRun) -> None:
        if not healthy.is_set():
            raise RuntimeError("partner down")

    registry = prometheus_client.CollectorRegistry()
    poller = make_poller(migrated_url, "w1", concurrency=1).with_metrics(PrometheusMetrics(registry))
    poller.handle_func(JOB, handler)
    ids = [client.submit(JOB, {"i": i}).with_max_attempts(1).execute() for i in range(8)]
    with caplog.at_level(logging.ERROR, logger="simpleflow.limits"):
        poller.run_until_idle(timeout=timedelta(seconds=20))
    statuses = [client.get_run(i).status for i in ids]
    assert statuses.count("failed") == 3 and statuses.count("pending") == 5, statuses
    (limit,) = client.list_limits()
    assert limit.paused and limit.paused_reason == "circuit breaker" and limit.consecutive_failures == 3
    assert client.stats().paused == ["billing.%"]
    assert any("circuit breaker" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    paused = [e for e in _limit_events(client) if e["event_type"] == "paused"]
    assert paused and paused[-1]["detail"]["reason"] == "circuit breaker" and paused[-1]["worker_id"] == "w1"
    tripped = registry.get_sample_value("simpleflow_limits_paused_total", {"pattern": "billing.%", "worker": "w1"})
    assert tripped == 1

    healthy.set()
    client.resume("billing.%")
    assert client.list_limits()[0].consecutive_failures == 0
    poller.run_until_idle(timeout=timedelta(seconds=20))
    assert [client.get_run(i).status for i in ids].count("succeeded") == 5
    assert not client.list_limits()[0].paused


def test_breaker_counts_consecutive_failures_only(client: Client, migrated_url: str) -> None:
    client.set_limit(JOB, pause_after_failures=2)
    poller = make_poller(migrated_url, "w1", concurrency=1)

    def handler(run: WorkflowRun) -> None:
        if run.payload_as(dict)["fail"]:
            raise RuntimeError("boom")

    poller.handle_func(JOB, handler)
    for i, fail in enumerate([True, False, True, False, True]):
        client.submit(JOB, {"fail": fail}).with_max_attempts(1).with_priority(i).execute()
    poller.run_until_idle(timeout=timedelta(seconds=20))
    (limit,) = client.list_limits()
    assert not limit.paused and limit.consecutive_failures == 1


def test_concurrency_key_runs_one_at_a_time_in_order(client: Client, migrated_url: str) -> None:
    track = Tracker(0.05)
    poller = make_poller(migrated_url, "w1", concurrency=8)
    poller.handle_func(JOB, track)
    for i in range(6):
        for key in ("customer:1", "customer:2"):
            client.submit(JOB, {"key": key, "i": i}).with_concurrency_key(key).execute()
    client.submit(JOB, {"key": "customer:1", "i": -1}).with_concurrency_key("customer:1").with_priority(1).execute()
    poller.run_until_idle(timeout=timedelta(seconds=20))
    for key in ("customer:1", "customer:2"):
        spans = sorted((a, b, p["i"]) for a, b, p in track.spans if p["key"] == key)
        assert all(spans[k][1] <= spans[k + 1][0] for k in range(len(spans) - 1)), f"{key} overlapped"
        order = [i for _, _, i in spans]
        assert order == ([-1] if key == "customer:1" else []) + list(range(6))
    assert track.peak == 2  # the two keys did run side by side


def test_debounce_collapses_a_burst_into_one_run_with_the_last_payload(client: Client, migrated_url: str) -> None:
    ids = [
        client.submit(JOB, {"n": n}).with_debounce("reindex:shop-7", timedelta(seconds=0.5)).execute()
        for n in range(50)
    ]
    assert len(set(ids)) == 1
    run = client.get_run(ids[0])
    assert run.payload == {"n": 49} and run.status == "pending"
    assert run.run_at > run.created_at + timedelta(seconds=0.3)
    events = [e.event_type for e in client.get_events(ids[0])]
    assert events == ["created"] + ["debounced"] * 49

    seen: list[Any] = []
    poller = make_poller(migrated_url, "w1")
    poller.handle_func(JOB, lambda r: seen.append(r.payload_as(dict)))
    time.sleep(0.6)  # run_until_idle does not wait for runs due later
    poller.run_until_idle(timeout=timedelta(seconds=10))
    assert seen == [{"n": 49}]
    after = client.submit(JOB, {"n": 50}).with_debounce("reindex:shop-7", 0).execute()
    assert after != ids[0]  # the first one started: a new run
    many = client.submit_many(
        [client.submit(JOB, {"n": n}).with_debounce("reindex:shop-7", 1) for n in (51, 52)]
        + [client.submit(OTHER, {"plain": True})]
    )
    assert many[0] == many[1] == after and many[2] != after
    assert client.get_run(after).payload == {"n": 52}


def test_debounce_and_idempotency_do_not_combine(client: Client) -> None:
    with pytest.raises(ValidationError):
        client.submit(JOB, {}).with_idempotency("a").with_debounce("b", 1)
    with pytest.raises(ValidationError):
        client.submit(JOB, {}).with_debounce("b", 1).with_idempotency("a")
    with pytest.raises(ValidationError):
        client.submit(JOB, {}).with_concurrency_key("")
    with pytest.raises(ValidationError):
        client.submit(JOB, {}).with_debounce("k", -1)


class CountingMetrics(NullMetrics):
    def __init__(self) -> None:
        self.cycles = 0

    def record_poll_cycle(self, worker_id: str) -> None:
        self.cycles += 1


@pytest.mark.parametrize("block", ["pause", "concurrency", "rate", "key", "tenant_concurrency", "tenant_rate"])
def test_blocked_work_does_not_make_a_busy_loop(client: Client, migrated_url: str, block: str) -> None:
    gate = threading.Event()
    metrics = CountingMetrics()
    poller = make_poller(migrated_url, "w1", concurrency=4, poll=timedelta(milliseconds=250))
    poller.with_metrics(metrics)
    poller.handle_func(JOB, lambda run: gate.wait(10))
    if block == "pause":
        client.pause(JOB)
    elif block == "concurrency":
        client.set_limit(JOB, concurrency=1)
    elif block == "rate":
        client.set_limit(JOB, rate=(1, timedelta(seconds=30)))
    elif block == "tenant_concurrency":
        client.set_limit(JOB, concurrency=1, per_tenant=True)
    elif block == "tenant_rate":
        client.set_limit(JOB, rate=(1, timedelta(seconds=30)), per_tenant=True)
    for i in range(5):
        builder = client.submit(JOB, {"i": i})
        client_builder = builder.with_concurrency_key("k") if block == "key" else builder
        client_builder.execute()
    with started(poller):
        time.sleep(0.3)
        before = metrics.cycles
        time.sleep(1.5)
        cycles = metrics.cycles - before
        gate.set()
    # 6 polls, plus wake-ups from lease renewals of the held run (9-10 on a quiet machine);
    # a busy loop makes hundreds
    assert cycles <= 20, f"{cycles} claim cycles in 1.5 s while blocked (poll interval 0.25 s)"


def _limit_events(client: Client) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from simpleflow.db.schema import workflow_event

    ev = workflow_event.c
    with client.db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ev.event_type, ev.worker_id, ev.detail).where(ev.run_id.is_(None)).order_by(ev.id),
            execution_options=client.db.exec_options,
        )
        return [dict(r._mapping) for r in rows]
