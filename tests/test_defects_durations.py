"""Every duration parameter of the public API takes a ``timedelta`` or a number of seconds
(int or float; not bool, finite, in range), issue 11: ``stop(timeout=1)`` used to raise."""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from poller_helpers import make_poller, started, wait_for

from simpleflow import Client, Poller, RetryPolicy, SignalTimeout, ValidationError, WaitTimeout, WorkflowRun, admin
from simpleflow.core.validation import check_duration
from simpleflow.schedules import ScheduleTicker
from simpleflow.workflow.context import WorkflowContext


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, timedelta(seconds=1)),
        (0.25, timedelta(milliseconds=250)),
        (0, timedelta(0)),
        (timedelta(minutes=2), timedelta(minutes=2)),
        (86_400 * 365, timedelta(days=365)),
    ],
)
def test_check_duration_takes_seconds_or_a_timedelta(value: Any, expected: timedelta) -> None:
    assert check_duration(value, "x") == expected


@pytest.mark.parametrize(
    "bad",
    [True, False, -1, -0.001, math.nan, math.inf, -math.inf, 10**30, 10**400, -(10**400), 1e300, "5", None, [1]],
    ids=lambda v: repr(v)[:20],
)
def test_check_duration_rejects_what_is_not_a_duration(bad: Any) -> None:
    with pytest.raises(ValidationError, match="x must be"):
        check_duration(bad, "x")


def test_zero_is_rejected_where_it_was_before() -> None:
    with pytest.raises(ValidationError, match="> 0"):
        check_duration(0, "x", allow_zero=False)
    with pytest.raises(ValidationError):
        Poller("sqlite:///:memory:").with_poll_interval(0)


def test_retry_policy_takes_seconds() -> None:
    policy = RetryPolicy(initial_delay=2, max_delay=10.5, multiplier=2.0, jitter=0.0)
    assert policy.initial_delay == timedelta(seconds=2) and policy.max_delay == timedelta(seconds=10.5)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [timedelta(seconds=s) for s in (2, 4, 8, 10.5)]
    assert policy == RetryPolicy(
        initial_delay=timedelta(seconds=2), max_delay=timedelta(seconds=10.5), multiplier=2.0, jitter=0.0
    )
    for bad in ({"initial_delay": True}, {"initial_delay": -1}, {"max_delay": math.inf}, {"max_delay": 1}):
        with pytest.raises(ValidationError):
            RetryPolicy(**bad)


def test_poller_and_client_take_seconds(client: Client, db_url: str) -> None:
    poller = (
        Poller(db_url)
        .with_worker_id("w-seconds")
        .with_lease_duration(7)
        .with_poll_interval(0.1)
        .with_schedule_tick_interval(1.5)
        .with_retention(86_400, interval=3600)
    )
    assert (poller.lease_seconds, poller.poll_seconds, poller.schedule_tick_seconds) == (7, 0.1, 1.5)
    assert poller.retention is not None and poller.retention.older_than == timedelta(days=1)

    leases: list[tuple[datetime | None, datetime | None]] = []

    def handler(run: WorkflowRun) -> str:
        before = client.get_run(run.id).lease_until
        run.heartbeat(120)  # seconds
        leases.append((before, client.get_run(run.id).lease_until))
        return "ok"

    poller.handle_func("dur.v1", handler)
    delayed = client.submit("dur.v1", {}).run_in(0.5).execute()
    info = client.get_run(delayed)
    assert info.run_at is not None and info.created_at is not None
    assert timedelta(milliseconds=400) <= info.run_at - info.created_at <= timedelta(seconds=2)
    with pytest.raises(WaitTimeout):
        client.wait(delayed, timeout=0.2)
    with started(poller, stop_timeout=timedelta(seconds=5)):
        assert client.wait(delayed, timeout=10).status == "succeeded"
    ((before, after),) = leases
    assert before is not None and after is not None and after - before > timedelta(seconds=60)

    rid = client.submit("dur.v1", {}).execute()
    assert poller.run_until_idle(10) == 1 and client.get_run(rid).status == "succeeded"
    assert poller.run_until_idle(timeout=0.5) == 0

    assert admin.stats(client, live_within=30).succeeded_last_hour == 2
    assert client.prune(older_than=3600) == 0  # nothing is an hour old
    assert client.prune(older_than=0) == 2
    assert admin.prune(client, 0.0) == 0
    assert admin.Retention(60, interval=0.5).interval == timedelta(milliseconds=500)


def test_stop_takes_seconds(client: Client, db_url: str) -> None:
    gate = threading.Event()
    poller = make_poller(db_url, "w-stop").handle_func("slow.v1", lambda run: gate.wait(10))
    rid = client.submit("slow.v1", {}).execute()
    thread = threading.Thread(target=poller.start, daemon=True)
    thread.start()
    wait_for(lambda: client.get_run(rid).status == "leased", what="the run to be claimed")
    began = time.monotonic()
    poller.stop(timeout=1)  # raised ValidationError before
    thread.join(10)
    gate.set()
    assert not thread.is_alive()
    assert 0.9 <= time.monotonic() - began < 8
    assert client.get_run(rid).status == "pending"  # released, not waited for past the timeout


def test_schedule_ticker_takes_seconds(migrated_url: str) -> None:
    ticker = ScheduleTicker(migrated_url, tick_interval=2, clock=lambda: datetime.now(timezone.utc))
    try:
        assert ticker.tick_seconds == 2
        assert ticker.tick() == 0
    finally:
        ticker.db.close()


def test_workflow_context_takes_seconds(client: Client, db_url: str) -> None:
    seen: list[Any] = []

    def wf(ctx: WorkflowContext, _: Any) -> str:
        ctx.sleep("nap", 0.05)
        try:
            ctx.wait_for_signal("never", timeout=0.05)
        except SignalTimeout:
            seen.append("timed out")
        return ctx.step("s", lambda: "done", timeout=5)

    rid = client.submit("dur.wf.v1").execute()
    poller = make_poller(db_url, "w-wf").handle_workflow("dur.wf.v1", wf)
    with started(poller):
        assert client.wait(rid, timeout=20).status == "succeeded"
    assert client.get_run(rid).result == "done" and "timed out" in seen
