"""Lease edge cases (both databases): workers with wrong clocks, a handler that outlives its
lease with renewal off, ``stop()`` in the middle of a burst, and a deploy (SIGTERM, then new
worker processes) while runs are in flight."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from simpleflow import Client, Poller, WorkflowRun
from simpleflow.db.schema import workflow_event, workflow_run

from . import tables
from .harness import (
    Fleet,
    check_exactly_once,
    events_by_run,
    executions,
    report,
    rows,
    scale,
    scaled,
    unfinished,
    wait_until,
)

pytestmark = pytest.mark.faults

JOB = "fault.job.v1"
HOUR = 3600.0


def test_workers_with_skewed_clocks_follow_the_database_clock(
    client: Client, db_url: str, db_kind: str, tmp_path: Path
) -> None:
    """One worker an hour ahead, one an hour behind: leases and due times come from the database,
    so the fast one claims nothing early and neither takes the other's (renewed) runs."""
    tables.create(client.db)
    now_ids = client.submit_many([client.submit(JOB, {"i": i}) for i in range(12)])
    later_ids = client.submit_many([client.submit(JOB, {"i": i}).run_in(timedelta(seconds=4)) for i in range(4)])
    options = json.dumps({"lease": 2.0, "concurrency": 4, "sleep": 3.0, "check_lease": True})
    fleet = Fleet("jobs", db_url, options, tmp_path / "logs")
    fleet.spawn(1, FAULT_CLOCK_SKEW=str(HOUR))
    fleet.spawn(1, FAULT_CLOCK_SKEW=str(-HOUR))
    try:
        wait_until(lambda: unfinished(client) == 0, seconds=90, what="the runs", fleets=[fleet])
    finally:
        fleet.stop()
    events = check_exactly_once(client, 16)
    for run_id, evs in events.items():  # handlers outlived the 2 s lease: renewal (by the database clock) kept them
        kinds = [k for k, _, _ in evs]
        assert kinds == ["created", "leased", "succeeded"], f"run {run_id}: {evs}"
    ex = tables.fault_exec.c
    observed = rows(client, sa.select(ex.run_id, ex.pid, ex.worker_time, ex.lease_left))
    assert len(observed) == 16
    pids = {pid for _, pid, _, _ in observed}
    assert len(pids) == 2, "both skewed workers should have taken runs"
    real = time.time()
    skews = sorted(round((worker_time - real) / HOUR) for _, _, worker_time, _ in observed)
    assert set(skews) == {-1, 1}, f"the workers' clocks were not skewed: {skews}"
    leases = [left for _, _, _, left in observed]
    assert all(left is not None and 0 < left <= 2.5 for left in leases), f"lease_until - database now: {leases}"
    run, ev = workflow_run.c, workflow_event.c
    waited = rows(
        client,
        sa.select(run.id, ev.created_at, run.created_at)
        .join(workflow_event, ev.run_id == run.id)
        .where(ev.event_type == "leased", run.id.in_(later_ids)),
    )
    for _, leased_at, created_at in waited:
        assert (leased_at - created_at).total_seconds() >= 3.9, (
            "a run was claimed before it was due on the database clock"
        )
    assert {r[0] for r in waited} == set(later_ids) and set(now_ids) | set(later_ids) == set(events)
    report("clock_skew", db=db_kind, runs=16, worker_skews="+1h,-1h", max_lease_left=f"{max(leases):.2f}s", takeovers=0)


class NoRenewalPoller(Poller):
    """Renewal disabled: the handler runs on, its lease lapses (this poller reaps nothing either)."""

    def renew_now(self) -> None:
        pass


@pytest.mark.parametrize("late", ["complete", "fail"])
def test_a_late_write_after_takeover_is_fenced_and_the_second_worker_wins(
    client: Client, db_url: str, db_kind: str, late: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The stale worker's late write lands while the second worker still runs the attempt it took
    over: the stale write changes nothing, and the second worker's result is the one recorded."""
    caplog.set_level(logging.WARNING, logger="simpleflow.poller")
    run_id = client.submit(JOB, {}).execute()
    gates = {name: (threading.Event(), threading.Event()) for name in ("stale", "rescuer")}

    def handler(name: str) -> Any:
        def run(job: WorkflowRun) -> dict[str, str]:
            entered, release = gates[name]
            entered.set()
            release.wait(30)
            if name == "stale" and late == "fail":
                raise RuntimeError("late failure")
            return {"by": name}

        return run

    def poller(cls: type[Poller], name: str) -> Poller:
        p = (
            cls(db_url)
            .with_worker_id(name)
            .with_lease_duration(timedelta(seconds=1))
            .with_poll_interval(timedelta(milliseconds=50))
            .with_concurrency(1)
        )
        return p.handle_func(JOB, handler(name))

    stale, rescuer = poller(NoRenewalPoller, "stale"), poller(Poller, "rescuer")
    threads = [threading.Thread(target=p.start, daemon=True) for p in (stale, rescuer)]
    try:
        threads[0].start()
        assert gates["stale"][0].wait(10)
        threads[1].start()
        assert gates["rescuer"][0].wait(15), "the rescuer never took over the expired lease"
        gates["stale"][1].set()  # the late write, while the rescuer's attempt is still running

        def stale_write_seen() -> bool:
            return any(
                ("result was discarded" in r.getMessage() or "lease was lost" in r.getMessage())
                and getattr(r, "run_id", None) == run_id
                for r in caplog.records
            )

        wait_until(stale_write_seen, seconds=10, what="the stale worker's write to be fenced off")
        mid = client.get_run(run_id)
        assert (mid.status, mid.leased_by, mid.attempt, mid.result) == ("leased", "rescuer", 2, None)
        gates["rescuer"][1].set()
        info = client.wait(run_id, timedelta(seconds=10))
    finally:
        for _, release in gates.values():
            release.set()
        stale.stop(timedelta(seconds=5))
        rescuer.stop(timedelta(seconds=5))
        for t in threads:
            t.join(30)
    assert (info.status, info.result, info.attempt, info.last_error) == ("succeeded", {"by": "rescuer"}, 2, None)
    assert [(e.event_type, e.worker_id, e.attempt) for e in client.get_events(run_id)] == [
        ("created", None, 0),
        ("leased", "stale", 1),
        ("lease_expired", "stale", 1),
        ("leased", "rescuer", 2),
        ("succeeded", "rescuer", 2),
    ]


def test_stop_during_a_burst_loses_nothing_and_leaves_nothing_leased(client: Client, db_url: str, db_kind: str) -> None:
    n = scaled(300)
    ids = client.submit_many([client.submit(JOB, {"i": i}) for i in range(n)])
    ran: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(run: WorkflowRun) -> int:
        with lock:
            ran[run.id] += 1
        time.sleep(0.05 if ran.total() % 5 else 1.0)  # some outlive the stop timeout below
        return run.attempt

    def make() -> Poller:
        return (
            Poller(db_url)
            .with_lease_duration(timedelta(seconds=30))
            .with_concurrency(8)
            .with_poll_interval(timedelta(milliseconds=50))
            .handle_func(JOB, handler)
        )

    first = make()
    thread = threading.Thread(target=first.start, daemon=True)
    thread.start()
    wait_until(lambda: ran.total() >= 40, seconds=30, what="the burst to get going")
    first.stop(timedelta(milliseconds=100))
    thread.join(30)
    counts = Counter(r.status for r in client.list_runs(limit=10_000))
    assert set(counts) <= {"succeeded", "pending"}, f"after stop(): {dict(counts)}"
    assert counts["pending"] > 0, "stop() came too late to interrupt the burst"
    events = events_by_run(client)
    released = {r for r, evs in events.items() if any(k == "released" for k, _, _ in evs)}
    assert released, "no in-flight run was released"
    for r in client.list_runs(status="pending", limit=10_000):
        assert r.attempt == 0 and r.leased_by is None, f"released without refunding the attempt: {r}"
    with make() as second:
        second.run_until_idle(timedelta(seconds=scaled(60)))  # the work grows with the scale
    events = check_exactly_once(client, n)
    assert set(ran) == set(ids)
    repeated = {r for r, c in ran.items() if c > 1}
    assert repeated <= released, "a run ran twice without having been released by stop()"
    assert not any(k == "lease_expired" for evs in events.values() for k, _, _ in evs)
    report("stop_during_burst", db=db_kind, runs=n, released=len(released), ran_twice=len(repeated), left_leased=0)


def test_a_deploy_sigterm_then_new_workers_drains_without_waiting_for_leases(
    client: Client, db_url: str, db_kind: str, tmp_path: Path
) -> None:
    """SIGTERM (what a deploy sends) drains in-flight runs: nothing is left for lease expiry."""
    tables.create(client.db)
    n = scaled(400)
    client.submit_many([client.submit(JOB, {"i": i}) for i in range(n)])
    fleet = Fleet("jobs", db_url, json.dumps({"lease": 30.0, "concurrency": 4, "sleep": 0.05}), tmp_path / "logs")
    deploys = max(3, round(3 * scale()))
    started = time.monotonic()
    fleet.spawn(2)
    try:
        for _ in range(deploys):
            time.sleep(1.5)
            old = list(fleet.alive)
            for proc in old:
                fleet.kill(proc, signal.SIGTERM)
                assert proc.returncode in (0, -signal.SIGTERM), f"SIGTERM exit code {proc.returncode}"
            fleet.spawn(2)
        wait_until(lambda: unfinished(client) == 0, seconds=120, what="the runs", fleets=[fleet])
    finally:
        fleet.stop()
    events = check_exactly_once(client, n)
    expired = sum(1 for evs in events.values() for k, _, _ in evs if k == "lease_expired")
    assert expired == 0, "a graceful stop left a run to lease expiry (30 s here)"
    ran = executions(client)
    assert max(len(v) for v in ran.values()) == 1, "a run was executed twice across a graceful deploy"
    report(
        "deploy_sigterm",
        db=db_kind,
        runs=n,
        deploys=deploys,
        expired_leases=expired,
        executions=sum(len(v) for v in ran.values()),
        seconds=round(time.monotonic() - started, 1),
    )
