"""The lifecycle under load (both databases): a poller stopped and restarted while handlers are
slow, bulk requeues of cancelled runs whose handlers still run, timeouts with the pool kept
at full strength, and BaseExceptions raised by handlers and steps."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from simpleflow import Client, Poller, RetryPolicy, WorkflowContext, WorkflowRun, admin

from .harness import check_exactly_once, events_by_run, report, scale, scaled, status_counts, wait_until

pytestmark = pytest.mark.faults

JOB = "fault.life.v1"
QUICK_RETRY = RetryPolicy(
    initial_delay=timedelta(milliseconds=5), multiplier=1.0, max_delay=timedelta(milliseconds=5), jitter=0.0
)


def _poller(url: str, **opts: Any) -> Poller:
    return (
        Poller(url)
        .with_lease_duration(timedelta(seconds=opts.get("lease", 30)))
        .with_concurrency(opts.get("concurrency", 8))
        .with_poll_interval(timedelta(milliseconds=50))
        .with_retry_policy(QUICK_RETRY)
    )


def test_a_poller_stopped_and_restarted_while_handlers_are_slow_lets_no_late_write_land(
    client: Client, db_url: str, db_kind: str
) -> None:
    n = scaled(200)
    client.submit_many([client.submit(JOB, {"i": i}) for i in range(n)])
    lock = threading.Lock()
    executions: Counter[str] = Counter()
    abandoned: set[tuple[str, int]] = set()  # (run, execution number) still running when released
    returned: dict[tuple[str, int], str] = {}

    def handler(run: WorkflowRun) -> str:
        with lock:
            executions[run.id] += 1
            number = executions[run.id]
        time.sleep(random.choice((0.01, 0.01, 0.01, 0.6)))
        value = f"{run.id}/{number}"
        returned[(run.id, number)] = value
        return value

    poller = _poller(db_url).handle_func(JOB, handler)
    restarts = 0
    for _ in range(4):  # the same poller object: the same worker id every time
        thread = threading.Thread(target=poller.start, daemon=True)
        thread.start()
        time.sleep(0.4)
        with lock:
            running = {(r, executions[r]) for r in executions}
        poller.stop(timeout=0.05)
        thread.join(30)
        abandoned |= {k for k in running if k not in returned}
        restarts += 1
    poller.run_until_idle(timeout=timedelta(seconds=scaled(120)))
    time.sleep(0.7)  # every abandoned handler has returned by now
    poller.close()
    events = check_exactly_once(client, n)
    for info in client.list_runs(limit=10_000):
        run_id, number = str(info.result).split("/")
        assert (run_id, int(number)) not in abandoned, f"an abandoned execution's late result landed: {info.result}"
    released = sum(1 for evs in events.values() if any(k == "released" for k, _, _ in evs))
    report(
        "stop_restart_same_poller",
        db=db_kind,
        runs=n,
        restarts=restarts,
        released=released,
        ran_twice=sum(1 for c in executions.values() if c > 1),
        late_writes=0,
    )


def test_bulk_requeue_of_cancelled_runs_whose_handlers_still_run(client: Client, db_url: str, db_kind: str) -> None:
    n = scaled(40)
    ids = client.submit_many([client.submit(JOB, {"i": i}) for i in range(n)])
    gate = threading.Event()
    started: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(run: WorkflowRun) -> str:
        with lock:
            started[run.id] += 1
            first = started[run.id] == 1
        if first:
            gate.wait(60)
            return "stale"
        return "fresh"

    # Threads to spare: a handler that ignores its cancellation keeps its thread until it
    # returns (it is told, not abandoned), so with exactly n threads the requeued runs could
    # only start once the gate below timed out, a race with this test's own deadline.
    poller = _poller(db_url, concurrency=2 * n).handle_func(JOB, handler)
    thread = threading.Thread(target=poller.start, daemon=True)
    thread.start()
    wait_until(lambda: len(started) == n, seconds=60, what="every handler to start")
    for run_id in ids:
        client.cancel(run_id)
    assert sorted(admin.requeue(client, ["cancelled"])) == sorted(ids)
    wait_until(
        lambda: sum(1 for c in started.values() if c >= 2) == n or status_counts(client)["succeeded"] == n,
        seconds=scaled(60),
        what="the requeued runs to run again",
    )
    gate.set()  # the cancelled executions return now, too late
    wait_until(lambda: status_counts(client)["succeeded"] == n, seconds=scaled(60), what="every run to finish")
    poller.stop()
    thread.join(30)
    poller.close()
    results = Counter(str(r.result) for r in client.list_runs(limit=10_000))
    assert results == Counter({"fresh": n}), results
    report("requeue_cancelled_running", db=db_kind, runs=n, stale_results=0)


def test_timeouts_under_load_keep_the_pool_at_full_strength(client: Client, db_url: str, db_kind: str) -> None:
    n = scaled(300)
    hang_every = 10
    release = threading.Event()
    client.submit_many([client.submit(JOB, {"i": i}).with_max_attempts(1) for i in range(n)])

    def handler(run: WorkflowRun) -> int:
        i = int(run.payload_value["i"])
        if i % hang_every == 0:
            release.wait(1.0)  # five times its timeout: the stuck thread returns later
        return i

    poller = _poller(db_url, concurrency=4).handle_func(JOB, handler, timeout=timedelta(seconds=0.2))
    started = time.monotonic()
    poller.run_until_idle(timeout=timedelta(seconds=scaled(120)))
    elapsed = time.monotonic() - started
    counts = status_counts(client)
    hung = len(range(0, n, hang_every))
    assert counts == Counter({"succeeded": n - hung, "failed": hung}), counts
    failed = client.list_runs(status="failed", limit=10_000)
    assert all("AttemptTimeout" in (r.last_error or "") for r in failed)
    release.set()
    time.sleep(0.3)
    assert status_counts(client) == counts  # the late results changed nothing
    poller.close()
    report("timeouts_under_load", db=db_kind, runs=n, timed_out=hung, threads=4, seconds=round(elapsed, 1))


def test_base_exceptions_in_handlers_and_steps_under_load(client: Client, db_url: str, db_kind: str) -> None:
    n = scaled(200)
    kinds = [SystemExit, KeyboardInterrupt, asyncio.CancelledError, GeneratorExit]
    client.submit_many([client.submit(JOB, {"i": i}).with_max_attempts(1) for i in range(n)])
    client.submit_many([client.submit("fault.life.flow.v1", {"i": i}).with_max_attempts(1) for i in range(n // 4)])

    def handler(run: WorkflowRun) -> int:
        i = int(run.payload_value["i"])
        if i % 3 == 0:
            raise kinds[i % len(kinds)]()
        return i

    def boom(i: int) -> int:
        raise kinds[i % len(kinds)]()

    def flow(ctx: WorkflowContext, payload: dict[str, int]) -> int:
        i = payload["i"]
        if i % 2 == 0:
            return int(ctx.step("boom", boom, i, retry=RetryPolicy(max_attempts=2, initial_delay=timedelta(0))))
        return int(ctx.step("fine", lambda: i))

    poller = _poller(db_url, concurrency=4).handle_func(JOB, handler).handle_workflow("fault.life.flow.v1", flow)
    poller.run_until_idle(timeout=timedelta(seconds=scaled(120)))
    poller.close()
    runs = client.list_runs(limit=10_000)
    unfinished = [r for r in runs if not r.is_terminal]
    assert not unfinished, f"{len(unfinished)} run(s) left unfinished: the pool lost threads"
    failed = [r for r in runs if r.status == "failed"]
    for r in failed:
        assert any(k.__name__ in (r.last_error or "") for k in kinds), r.last_error
    expected_failed = len(range(0, n, 3)) + len(range(0, n // 4, 2))
    assert len(failed) == expected_failed
    events = events_by_run(client)
    assert all(any(k in ("succeeded", "failed") for k, _, _ in evs) for evs in events.values())
    report("base_exceptions_under_load", db=db_kind, runs=len(runs), failed=len(failed), scale=scale())
