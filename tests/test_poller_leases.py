"""Leases on both databases: expiry and takeover, fencing of late writes, automatic renewal,
cancellation while running, graceful stop, and surviving database errors in the loop."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from poller_helpers import event_types, make_poller, started, wait_for

from simpleflow import Client, Poller, WorkflowRun


class NoRenewalPoller(Poller):
    """A stuck worker: its handler runs, but it never renews its leases (nor reaps others')."""

    def renew_now(self) -> None:
        pass


def _blocking_handler(name: str, entered: threading.Event, release: threading.Event) -> Any:
    def handler(run: WorkflowRun) -> dict[str, str]:
        entered.set()
        release.wait(30)
        return {"by": name}

    return handler


def test_an_expired_lease_is_taken_over_and_the_late_completion_changes_nothing(
    client: Client, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="simpleflow.poller")
    run_id = client.submit("demo.stuck.v1", {}).execute()
    entered, release = threading.Event(), threading.Event()
    stuck = make_poller(db_url, "stuck", concurrency=1, cls=NoRenewalPoller)  # its one thread stays stuck
    stuck.handle_func("demo.stuck.v1", _blocking_handler("stuck", entered, release))
    try:
        with started(stuck):
            assert entered.wait(10)
            with make_poller(db_url, "rescuer") as rescuer:
                rescuer.handle_func("demo.stuck.v1", lambda run: {"by": "rescuer"})
                assert rescuer.run_until_idle() == 0  # the lease still holds: nothing to take
                wait_for(lambda: rescuer.run_until_idle() == 1, timeout=10, what="the lease to expire")
            info = client.get_run(run_id)
            assert (info.status, info.result, info.attempt, info.leased_by) == (
                "succeeded",
                {"by": "rescuer"},
                2,
                "rescuer",
            )

            release.set()  # the stuck handler finishes late and tries to complete its attempt
            wait_for(
                lambda: any("result was discarded" in r.getMessage() for r in caplog.records),
                what="the fenced late completion to be logged",
            )
    finally:
        release.set()
        stuck.close()
    assert client.get_run(run_id) == info  # status, result, attempt and updated_at all unchanged
    events = client.get_events(run_id)
    assert [(e.event_type, e.worker_id, e.attempt) for e in events] == [
        ("created", None, 0),
        ("leased", "stuck", 1),
        ("lease_expired", "stuck", 1),
        ("leased", "rescuer", 2),
        ("succeeded", "rescuer", 2),
    ]
    late = next(r for r in caplog.records if "result was discarded" in r.getMessage())
    assert late.levelno == logging.WARNING
    assert (late.run_id, late.run_type) == (run_id, "demo.stuck.v1")  # type: ignore[attr-defined]


def test_an_expired_lease_on_the_last_attempt_fails_the_run(client: Client, db_url: str) -> None:
    run_id = client.submit("demo.stuck.v1", {}).with_max_attempts(1).execute()
    entered, release = threading.Event(), threading.Event()
    stuck = make_poller(db_url, "stuck", concurrency=1, cls=NoRenewalPoller)  # its one thread stays stuck
    stuck.handle_func("demo.stuck.v1", _blocking_handler("stuck", entered, release))
    try:
        with started(stuck):
            assert entered.wait(10)
            with make_poller(db_url, "rescuer") as rescuer:
                rescuer.handle_func("demo.stuck.v1", lambda run: {"by": "rescuer"})
                wait_for(
                    lambda: rescuer.run_until_idle() == 0 and client.get_run(run_id).status == "failed",
                    timeout=10,
                    what="the lease to expire",
                )
            release.set()
    finally:
        release.set()
        stuck.close()
    info = client.get_run(run_id)
    assert info.status == "failed" and info.result is None
    assert info.last_error is not None and "lease expired" in info.last_error and "stuck" in info.last_error


def test_automatic_renewal_keeps_a_long_handler_from_being_taken_over(client: Client, db_url: str) -> None:
    """The handler runs 3x the 1 s lease while a second poller watches the same type."""
    run_id = client.submit("demo.long.v1", {}).execute()
    entered = threading.Event()
    ran_by: list[str] = []

    def long_job(name: str) -> Any:
        def handler(run: WorkflowRun) -> str:
            ran_by.append(name)
            entered.set()
            time.sleep(3.0)
            return name

        return handler

    with make_poller(db_url, "first") as first, make_poller(db_url, "second") as second:
        first.handle_func("demo.long.v1", long_job("first"))
        second.handle_func("demo.long.v1", long_job("second"))
        with started(first):
            assert entered.wait(10)
            with started(second):
                info = client.wait(run_id, timeout=timedelta(seconds=15))
    assert ran_by == ["first"]
    assert (info.status, info.result, info.attempt) == ("succeeded", "first", 1)
    assert event_types(client, run_id) == ["created", "leased", "succeeded"]


@pytest.mark.parametrize("ending", ["returns", "raises"])
def test_cancel_while_running_is_seen_within_a_renewal_round(client: Client, db_url: str, ending: str) -> None:
    run_id = client.submit("demo.cancel.v1", {}).execute()
    entered, noticed = threading.Event(), threading.Event()

    def handler(run: WorkflowRun) -> str:
        entered.set()
        deadline = time.monotonic() + 10
        while not run.is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        if run.is_cancelled():
            noticed.set()
        if ending == "raises":
            raise RuntimeError("stopped because cancelled")
        return "finished anyway"

    with make_poller(db_url, "w1") as poller:  # 1 s lease: a renewal round every ~0.33 s
        poller.handle_func("demo.cancel.v1", handler)
        with started(poller):
            assert entered.wait(10)
            t0 = time.monotonic()
            client.cancel(run_id)
            assert noticed.wait(5)
            seen_after = time.monotonic() - t0
            wait_for(lambda: not poller._in_flight, what="the outcome to be handled")
    assert seen_after < 1.0, f"cancellation noticed after {seen_after:.2f}s"
    info = client.get_run(run_id)
    assert (info.status, info.result, info.last_error) == ("cancelled", None, None)
    assert event_types(client, run_id) == ["created", "leased", "cancelled"]


def test_graceful_stop_releases_unfinished_work_without_spending_an_attempt(client: Client, db_url: str) -> None:
    run_id = client.submit("demo.slow.v1", {}).with_max_attempts(1).execute()
    entered, release = threading.Event(), threading.Event()
    saw_cancel: list[bool] = []

    def slow(run: WorkflowRun) -> str:
        entered.set()
        release.wait(30)
        saw_cancel.append(run.is_cancelled())
        return "from the stopped worker"

    first = make_poller(db_url, "first")
    first.handle_func("demo.slow.v1", slow)
    thread = threading.Thread(target=first.start, daemon=True)
    thread.start()
    try:
        assert entered.wait(10)
        t0 = time.monotonic()
        first.stop(timedelta(milliseconds=300))
        assert time.monotonic() - t0 < 5
        thread.join(10)
        assert not thread.is_alive()
        info = client.get_run(run_id)
        assert (info.status, info.attempt, info.leased_by, info.lease_until) == ("pending", 0, None, None)
        events = client.get_events(run_id)
        assert [e.event_type for e in events] == ["created", "leased", "released"]
        assert events[-1].detail == {"reason": "worker stopping"}
        assert first.db.run(first.store.workers.list) == []

        # Another worker takes it at once, with the attempt the first one did not spend.
        with make_poller(db_url, "second") as second:
            second.handle_func("demo.slow.v1", lambda run: "from the second worker")
            assert second.run_until_idle() == 1
        done = client.get_run(run_id)
        assert (done.status, done.result, done.attempt) == ("succeeded", "from the second worker", 1)

        release.set()  # the first worker's handler ends late: nothing it returns is written
        wait_for(lambda: saw_cancel, what="the released handler to end")
        assert saw_cancel == [True]
        time.sleep(0.2)
        assert client.get_run(run_id) == done
    finally:
        release.set()
        first.close()


def test_stop_waits_for_handlers_that_finish_within_the_timeout(client: Client, db_url: str) -> None:
    run_id = client.submit("demo.quick.v1", {}).execute()
    entered = threading.Event()

    def quick(run: WorkflowRun) -> str:
        entered.set()
        time.sleep(0.3)
        return "drained"

    with make_poller(db_url, "w1") as poller:
        poller.handle_func("demo.quick.v1", quick)
        thread = threading.Thread(target=poller.start, daemon=True)
        thread.start()
        assert entered.wait(10)
        poller.stop(timedelta(seconds=10))
        thread.join(10)
    info = client.get_run(run_id)
    assert (info.status, info.result, info.attempt) == ("succeeded", "drained", 1)


def test_stop_before_the_loop_begins_is_not_lost(client: Client, db_url: str) -> None:
    with make_poller(db_url, "w1") as poller:
        poller.handle_func("demo.x.v1", lambda run: None)
        thread = threading.Thread(target=poller.start, daemon=True)
        thread.start()
        poller.stop(timedelta(seconds=1))  # may land before start() has begun
        thread.join(10)
        assert not thread.is_alive()
        # ...and the poller can run again afterwards.
        client.submit("demo.x.v1", {}).execute()
        assert poller.run_until_idle() == 1


def test_a_database_error_in_the_claim_loop_is_survived(client: Client, db_url: str, db_kind: str) -> None:
    """The runs table disappears under a running poller (every claim fails), then comes back."""
    from sqlalchemy import text

    table = "workflow_run" if db_kind == "sqlite" else f'"{client.db.schema}".workflow_run'
    with make_poller(db_url, "w1") as poller:
        poller.handle_func("demo.survive.v1", lambda run: "survived")
        with started(poller):
            with client.db.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} RENAME TO workflow_run_away"))
            away = f"{client.db.schema}.workflow_run_away" if db_kind == "postgresql" else "workflow_run_away"
            time.sleep(1.0)  # several claim cycles fail (logged, backed off)
            with client.db.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {away} RENAME TO workflow_run"))
            run_id = client.submit("demo.survive.v1", {}).execute()
            info = client.wait(run_id, timeout=timedelta(seconds=15))
    assert (info.status, info.result) == ("succeeded", "survived")


def _terminate(url_without_schema: str, application_name: str) -> int:
    with psycopg.connect(url_without_schema, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchall()
    return len(rows)


def test_postgresql_connections_killed_under_a_running_poller(client: Client, db_url: str, db_kind: str) -> None:
    """pg_terminate_backend of every connection the poller holds (pool and LISTEN), idle and mid-run."""
    if db_kind != "postgresql":
        pytest.skip("PostgreSQL backends only")
    base = db_url.split("?", 1)[0]
    victim_url = f"{db_url}&application_name=sf_victim"
    entered = threading.Event()

    def job(run: WorkflowRun) -> str:
        entered.set()
        time.sleep(run.payload_value["sleep"])
        return "ok"

    # A 10 s poll interval: pickups within a few seconds prove the LISTEN connection came back.
    with make_poller(victim_url, "victim", poll=timedelta(seconds=10)) as poller:
        poller.handle_func("demo.kill.v1", job)
        with started(poller):
            assert poller._listener is not None and poller._listener.connected.wait(5)
            first = client.submit("demo.kill.v1", {"sleep": 0}).execute()
            client.wait(first, timeout=timedelta(seconds=5))

            assert _terminate(base, "sf_victim") >= 2  # at least a pooled connection and the listener
            wait_for(
                lambda: poller._listener is not None and poller._listener.connected.is_set(), what="LISTEN to reconnect"
            )
            time.sleep(0.3)
            t0 = time.monotonic()
            second = client.submit("demo.kill.v1", {"sleep": 0.5}).execute()
            assert entered.wait(5)
            assert time.monotonic() - t0 < 3
            _terminate(base, "sf_victim")  # while the handler runs: its outcome write must retry
            info = client.wait(second, timeout=timedelta(seconds=15))
    assert (info.status, info.result, info.attempt) == ("succeeded", "ok", 1)
