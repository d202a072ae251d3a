"""The run lifecycle keeps its promises: fencing tokens, timeouts, BaseExceptions, drains, requeues.

Each test here reproduces a defect the lifecycle issue found on the old code (a late
write from an abandoned or cancelled execution landing, a thread killed by
``SystemExit``, leases lapsing during a drain, a batch lost to one bad error text),
on both databases.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from poller_helpers import FAST_RETRY, event_types, make_poller, started, wait_for

from simpleflow import (
    Client,
    NonRetryable,
    Poller,
    RetryPolicy,
    WorkflowContext,
    WorkflowRun,
    admin,
)
from simpleflow.db.schema import workflow_run


def _token(client: Client, run_id: str) -> int:
    with client.db.engine.connect() as conn:
        value = conn.execute(
            sa.select(workflow_run.c.lease_token).where(workflow_run.c.id == run_id),
            execution_options=client.db.exec_options,
        ).scalar_one()
    return int(value)


# -- fencing tokens ---------------------------------------------------------------------------


def test_every_claim_takes_a_new_token_and_nothing_lowers_it(client: Client, db_url: str) -> None:
    run_id = client.submit("token.v1", {}).with_max_attempts(3).execute()
    assert _token(client, run_id) == 0
    with make_poller(db_url, "tok") as poller:
        poller.handle_func("token.v1", lambda run: (_ for _ in ()).throw(RuntimeError("again")))
        poller.run_until_idle(timeout=timedelta(seconds=20))
    assert client.get_run(run_id).status == "failed"
    assert _token(client, run_id) == 3
    client.retry(run_id)  # a requeue resets the attempt count, never the token
    info = client.get_run(run_id)
    assert (info.status, info.attempt) == ("pending", 0)
    assert _token(client, run_id) == 3


def test_a_run_released_by_run_until_idle_and_claimed_again_keeps_the_live_result(client: Client, db_url: str) -> None:
    """The old fence (worker, attempt) was refunded by the release: the abandoned handler's
    late result was recorded and the live execution's discarded."""
    run_id = client.submit("restart.v1", {}).execute()
    first_entered, let_first_finish = threading.Event(), threading.Event()
    calls = Counter[str]()

    def handler(run: WorkflowRun) -> dict[str, str]:
        calls["n"] += 1
        if calls["n"] == 1:
            first_entered.set()
            let_first_finish.wait(20)
            return {"by": "abandoned"}
        return {"by": "live"}

    with make_poller(db_url, "same-worker", concurrency=1) as poller:
        poller.handle_func("restart.v1", handler)
        poller.run_until_idle(timeout=timedelta(seconds=0.5))  # releases the run: attempt not spent
        assert first_entered.is_set()
        assert client.get_run(run_id).status == "pending"
        assert poller.run_until_idle(timeout=timedelta(seconds=10)) == 1  # claimed again, by the same worker id
    assert client.get_run(run_id).result == {"by": "live"}
    let_first_finish.set()
    time.sleep(0.3)  # the abandoned handler returns now; its result must change nothing
    info = client.get_run(run_id)
    assert (info.status, info.result) == ("succeeded", {"by": "live"})
    assert event_types(client, run_id).count("succeeded") == 1


def test_an_abandoned_workflow_execution_cannot_overwrite_a_step_the_live_one_used(client: Client, db_url: str) -> None:
    run_id = client.submit("restart.flow.v1", {}).execute()
    entered, release_abandoned = threading.Event(), threading.Event()
    executions = Counter[str]()

    def slow_step(label: str) -> str:
        if label == "abandoned":
            entered.set()
            release_abandoned.wait(20)
        return label

    def flow(ctx: WorkflowContext, _: Any) -> str:
        executions["n"] += 1
        label = "abandoned" if executions["n"] == 1 else "live"
        value = ctx.step("pick", slow_step, label)
        return str(value)

    with make_poller(db_url, "flow-worker", concurrency=1) as poller:
        poller.handle_workflow("restart.flow.v1", flow)
        poller.run_until_idle(timeout=timedelta(seconds=0.5))
        assert entered.is_set()
        poller.run_until_idle(timeout=timedelta(seconds=10))
    release_abandoned.set()
    time.sleep(0.3)
    (step,) = client.get_steps(run_id)
    assert step.result == "live"
    assert client.get_run(run_id).result == "live"


def test_bulk_requeue_of_a_cancelled_run_fences_off_its_still_running_handler(client: Client, db_url: str) -> None:
    """Bulk requeue used to set attempt=0, so when the same worker claimed the run again the
    cancelled execution's (worker, attempt) fence matched: its late result was recorded."""
    run_id = client.submit("requeue.v1", {}).execute()
    entered = [threading.Event(), threading.Event()]
    go = [threading.Event(), threading.Event()]
    calls = Counter[str]()

    def handler(run: WorkflowRun) -> str:
        n = calls["n"]
        calls["n"] += 1
        entered[n].set()
        go[n].wait(20)
        return "stale" if n == 0 else "fresh"

    with make_poller(db_url, "rq", lease=timedelta(seconds=30), concurrency=2) as poller:
        poller.handle_func("requeue.v1", handler)
        with started(poller):
            wait_for(entered[0].is_set, what="the first execution")
            client.cancel(run_id)
            assert admin.requeue(client, ["cancelled"]) == [run_id]
            wait_for(entered[1].is_set, what="the second execution, by the same worker")
            go[0].set()  # the cancelled execution finishes while the live one runs
            time.sleep(0.5)
            assert client.get_run(run_id).status == "leased"
            go[1].set()
            wait_for(lambda: client.get_run(run_id).is_terminal, what="the live execution")
    info = client.get_run(run_id)
    assert (info.status, info.result) == ("succeeded", "fresh")


def test_leases_are_renewed_during_a_graceful_drain(client: Client, db_url: str) -> None:
    """With lease 1 s, a 4 s handler and stop(10 s), no other poller may take the run over."""
    run_id = client.submit("drain.v1", {}).execute()
    entered = threading.Event()
    ran = Counter[str]()

    def slow(run: WorkflowRun) -> str:
        ran[run.id] += 1
        entered.set()
        time.sleep(4)
        return "done"

    first = make_poller(db_url, "drainer", lease=timedelta(seconds=1))
    first.handle_func("drain.v1", slow)
    other = make_poller(db_url, "rescuer", lease=timedelta(seconds=1))
    other.handle_func("drain.v1", slow)
    thread = threading.Thread(target=first.start, daemon=True)
    thread.start()
    wait_for(entered.is_set, what="the handler to start")
    with started(other):
        first.stop(timeout=10)
        thread.join(15)
    first.close()
    other.close()
    assert ran[run_id] == 1
    assert client.get_run(run_id).status == "succeeded"
    assert "lease_expired" not in event_types(client, run_id)


# -- exceptions nobody expected --------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [SystemExit(3), KeyboardInterrupt(), asyncio.CancelledError(), GeneratorExit()],
    ids=["SystemExit", "KeyboardInterrupt", "CancelledError", "GeneratorExit"],
)
def test_a_base_exception_in_a_handler_fails_the_attempt_and_the_thread_lives(
    client: Client, db_url: str, error: BaseException
) -> None:
    bad = client.submit("base.bad.v1", {}).with_max_attempts(1).execute()
    good = [client.submit("base.good.v1", {"i": i}).execute() for i in range(5)]

    def raise_it(run: WorkflowRun) -> None:
        raise error

    with make_poller(db_url, "base", concurrency=1) as poller:
        poller.handle_func("base.bad.v1", raise_it).handle_func("base.good.v1", lambda run: "ok")
        poller.run_until_idle(timeout=timedelta(seconds=20))
    info = client.get_run(bad)
    assert info.status == "failed"
    assert type(error).__name__ in (info.last_error or "")
    assert all(client.get_run(g).status == "succeeded" for g in good)  # the one thread lived on


def test_a_base_exception_in_a_step_fails_the_step_attempt(client: Client, db_url: str) -> None:
    run_id = client.submit("base.flow.v1", {}).with_max_attempts(1).execute()

    def exits() -> None:
        raise SystemExit(1)

    def flow(ctx: WorkflowContext, _: Any) -> None:
        ctx.step("exit", exits, retry=RetryPolicy(max_attempts=2, initial_delay=timedelta(0)))

    with make_poller(db_url, "base-flow", concurrency=1) as poller:
        poller.handle_workflow("base.flow.v1", flow)
        poller.run_until_idle(timeout=timedelta(seconds=20))
    info = client.get_run(run_id)
    assert info.status == "failed" and "SystemExit" in (info.last_error or "")
    (step,) = client.get_steps(run_id)
    assert (step.status, step.attempts) == ("failed", 2)


def test_an_error_text_the_database_cannot_store_affects_no_other_run(client: Client, db_url: str) -> None:
    """A NUL (PostgreSQL) or lone surrogate (both) in an error made the whole group commit fail."""
    bad = [client.submit("text.bad.v1", {"i": i}).with_max_attempts(1).execute() for i in range(3)]
    good = [client.submit("text.good.v1", {"i": i}).execute() for i in range(20)]

    def nasty(run: WorkflowRun) -> None:
        raise ValueError(f"broken \x00 text \ud800 in run {run.id}")

    with make_poller(db_url, "text", concurrency=8) as poller:
        poller.handle_func("text.bad.v1", nasty).handle_func("text.good.v1", lambda run: {"ok": True})
        poller.run_until_idle(timeout=timedelta(seconds=20))
    for run_id in bad:
        info = client.get_run(run_id)
        assert info.status == "failed"
        assert "broken \\x00 text \\ud800" in (info.last_error or "")
    assert all(client.get_run(g).status == "succeeded" for g in good)


# -- errors that must not be retried --------------------------------------------------------------


def test_non_retryable_and_give_up_on_fail_for_good_at_once(client: Client, db_url: str) -> None:
    a = client.submit("nr.raise.v1", {}).with_max_attempts(5).execute()
    b = client.submit("nr.type.v1", {}).with_max_attempts(5).execute()

    def stolen(run: WorkflowRun) -> None:
        raise NonRetryable("card stolen")

    def bad_key(run: WorkflowRun) -> None:
        raise KeyError("no such customer")

    with make_poller(db_url, "nr") as poller:
        poller.handle_func("nr.raise.v1", stolen)
        poller.handle_func("nr.type.v1", bad_key, retry=RetryPolicy(give_up_on=(KeyError,)))
        poller.run_until_idle(timeout=timedelta(seconds=20))
    for run_id, text in ((a, "card stolen"), (b, "no such customer")):
        info = client.get_run(run_id)
        assert (info.status, info.attempt) == ("failed", 1)
        assert text in (info.last_error or "")


def test_non_retryable_in_a_step_fails_the_run_for_good(client: Client, db_url: str) -> None:
    run_id = client.submit("nr.flow.v1", {}).with_max_attempts(5).execute()
    calls = Counter[str]()

    def charge() -> None:
        calls["charge"] += 1
        raise NonRetryable("card stolen")

    def flow(ctx: WorkflowContext, _: Any) -> None:
        ctx.step("charge", charge)

    with make_poller(db_url, "nr-flow") as poller:
        poller.handle_workflow("nr.flow.v1", flow)
        poller.run_until_idle(timeout=timedelta(seconds=20))
    info = client.get_run(run_id)
    assert (info.status, info.attempt) == ("failed", 1)
    assert calls["charge"] == 1


# -- execution timeouts -----------------------------------------------------------------------------


def test_a_timed_out_attempt_fails_retries_and_the_pool_keeps_its_threads(client: Client, db_url: str) -> None:
    slow = client.submit("to.slow.v1", {}).with_max_attempts(2).execute()
    quick = [client.submit("to.quick.v1", {"i": i}).execute() for i in range(30)]
    finish = threading.Event()

    def hang(run: WorkflowRun) -> str:
        finish.wait(30)
        return "late"

    with make_poller(db_url, "to", concurrency=2) as poller:
        poller.handle_func("to.slow.v1", hang, timeout=timedelta(seconds=0.3))
        poller.handle_func("to.quick.v1", lambda run: "ok")
        poller.run_until_idle(timeout=timedelta(seconds=20))
        info = client.get_run(slow)
        assert info.status == "failed" and info.attempt == 2
        assert "AttemptTimeout" in (info.last_error or "")
        assert all(client.get_run(q).status == "succeeded" for q in quick)
    finish.set()
    time.sleep(0.3)
    assert client.get_run(slow).result is None  # the late results were fenced off


def test_with_timeout_is_the_default_and_accepts_seconds(client: Client, db_url: str) -> None:
    run_id = client.submit("to.default.v1", {}).with_max_attempts(1).execute()
    with make_poller(db_url, "to-default").with_timeout(0.2) as poller:
        poller.handle_func("to.default.v1", lambda run: time.sleep(2))
        poller.run_until_idle(timeout=timedelta(seconds=20))
    assert "AttemptTimeout" in (client.get_run(run_id).last_error or "")


def test_run_until_idle_works_while_an_abandoned_handler_holds_the_only_thread(client: Client, db_url: str) -> None:
    client.submit("hold.v1", {}).execute()
    others = [client.submit("hold.next.v1", {"i": i}).execute() for i in range(3)]
    stuck = threading.Event()
    with make_poller(db_url, "hold", concurrency=1) as poller:
        poller.handle_func("hold.v1", lambda run: stuck.wait(30))
        poller.handle_func("hold.next.v1", lambda run: "ok")
        poller.run_until_idle(timeout=timedelta(seconds=0.5))  # abandons the stuck handler
        processed = poller.run_until_idle(timeout=timedelta(seconds=10))
        assert processed >= 3
    stuck.set()
    assert all(client.get_run(o).status == "succeeded" for o in others)


def test_invalid_timeouts_are_rejected(db_url: str) -> None:
    poller = Poller(db_url)
    for bad in (0, -1, "5s", True):
        with pytest.raises(Exception, match="timeout"):
            poller.handle_func("x.v1", lambda run: None, timeout=bad)  # type: ignore[arg-type]
    poller.close()


# -- deadlines ----------------------------------------------------------------------------------------


def test_a_workflow_past_its_deadline_fails_with_deadline_exceeded(client: Client, db_url: str) -> None:
    def sleepy(ctx: WorkflowContext, _: Any) -> str:
        ctx.sleep("long", timedelta(minutes=5))
        return "never"

    run_id = client.submit("deadline.v1", {}).with_deadline(timedelta(seconds=1)).execute()
    with make_poller(db_url, "deadline", lease=timedelta(seconds=0.6)) as poller:
        poller.handle_workflow("deadline.v1", sleepy)
        with started(poller):
            info = wait_for(lambda: (r := client.get_run(run_id)).is_terminal and r, timeout=15, what="the deadline")
    assert info.status == "failed"
    assert "DeadlineExceeded" in (info.last_error or "")


# -- timers fire on time -------------------------------------------------------------------------------


def test_delayed_runs_and_sleeps_resume_on_time_with_a_long_poll_interval(client: Client, db_url: str) -> None:
    starts: dict[str, float] = {}
    woke: dict[str, float] = {}

    def flow(ctx: WorkflowContext, _: Any) -> None:
        ctx.sleep("nap", timedelta(seconds=0.5))
        woke.setdefault(ctx.run_id, time.monotonic())

    def record(run: WorkflowRun) -> None:
        starts.setdefault(run.id, time.monotonic())

    poller = make_poller(db_url, "timers", poll=timedelta(seconds=30))
    poller.handle_func("timer.delayed.v1", record).handle_workflow("timer.sleep.v1", flow)
    with started(poller):
        time.sleep(0.3)  # the poller is idle, waiting up to 30 s
        submitted = time.monotonic()
        delayed = client.submit("timer.delayed.v1", {}).run_in(0.5).execute()
        wait_for(lambda: delayed in starts, timeout=5, what="the delayed run")
        flow_started = time.monotonic()
        sleeper = client.submit("timer.sleep.v1", {}).execute()
        wait_for(lambda: sleeper in woke, timeout=5, what="the sleep to end")
    poller.close()
    # Due after 0.5 s with a 30 s poll interval: never early, and late by far less than a poll.
    # (About 10 ms late on an idle machine; the bound is loose so a loaded CI machine passes.)
    late_delayed = starts[delayed] - submitted - 0.5
    late_sleep = woke[sleeper] - flow_started - 0.5
    assert -0.05 <= late_delayed <= 0.5, late_delayed
    assert -0.05 <= late_sleep <= 0.5, late_sleep


# -- plain SQL producers and exact JSON ---------------------------------------------------------------


def test_a_run_inserted_with_plain_sql_gets_an_id_and_runs(client: Client, db_url: str, db_kind: str) -> None:
    table = f'"{client.db.schema}".workflow_run' if client.db.schema else "workflow_run"
    with client.db.engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {table} (type, payload) VALUES ('sql.v1', '{{\"n\": 1}}')"))
    (run,) = client.list_runs(type="sql.v1")
    assert len(run.id) == 36 and run.status == "pending" and run.payload == {"n": 1}
    with make_poller(db_url, "sql") as poller:
        poller.handle_func("sql.v1", lambda r: {"seen": r.payload_value["n"]})
        poller.run_until_idle(timeout=timedelta(seconds=10))
    assert client.get_run(run.id).result == {"seen": 1}


@pytest.mark.parametrize("value", [2**63 + 1, -(2**63) - 5, 10**30, 1.5, "12", [2**64]], ids=str)
def test_payloads_and_results_round_trip_exactly(client: Client, db_url: str, value: Any) -> None:
    run_id = client.submit("exact.v1", value).execute()
    assert client.get_run(run_id).payload == value
    with make_poller(db_url, "exact") as poller:
        poller.handle_func("exact.v1", lambda run: run.payload_value)
        poller.run_until_idle(timeout=timedelta(seconds=10))
    info = client.get_run(run_id)
    assert info.result == value and type(info.result) is type(value)


def test_a_signal_that_does_not_fit_its_model_is_left_for_a_fixed_deployment(client: Client, db_url: str) -> None:
    from pydantic import BaseModel

    class Approval(BaseModel):
        by: str

    def flow(ctx: WorkflowContext, _: Any) -> str:
        return ctx.wait_for_signal("approved", Approval).by

    run_id = client.submit("sig.v1", {}).with_max_attempts(1).execute()
    with make_poller(db_url, "sig", retry=FAST_RETRY) as poller:
        poller.handle_workflow("sig.v1", flow)
        poller.run_until_idle(timeout=timedelta(seconds=10))
        assert client.get_run(run_id).status == "waiting"
        client.signal(run_id, "approved", {"who": "ana"})  # wrong shape
        poller.run_until_idle(timeout=timedelta(seconds=10))
    info = client.get_run(run_id)
    assert info.status == "failed" and "does not fit" in (info.last_error or "")

    def fixed(ctx: WorkflowContext, _: Any) -> str:
        return str(ctx.wait_for_signal("approved")["who"])

    client.retry(run_id)
    with make_poller(db_url, "sig-fixed") as poller:
        poller.handle_workflow("sig.v1", fixed)
        poller.run_until_idle(timeout=timedelta(seconds=10))
    assert client.get_run(run_id).result == "ana"


def test_workflows_on_more_threads_than_the_pool_do_not_fail(client: Client, db_url: str) -> None:
    def flow(ctx: WorkflowContext, n: int) -> int:
        total = 0
        for i in range(5):
            total += ctx.step(f"s{i}", lambda: (time.sleep(0.01), 1)[1])
        return total

    ids = [client.submit("pool.v1", i).execute() for i in range(60)]
    with Poller(db_url).with_concurrency(40).with_poll_interval(0.05) as poller:
        poller.handle_workflow("pool.v1", flow)
        poller.run_until_idle(timeout=timedelta(seconds=60))
    runs = [client.get_run(i) for i in ids]
    assert all(r.status == "succeeded" and r.attempt == 1 for r in runs), Counter(r.status for r in runs)


# -- background services that keep failing ------------------------------------------------------------


class BrokenReaper(Poller):
    def reap_now(self) -> None:
        raise RuntimeError("reaper is broken")


def test_a_service_that_keeps_failing_is_counted_and_surfaced_in_the_registry_and_stats(
    client: Client, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    poller = make_poller(db_url, "sick", lease=timedelta(seconds=0.6), cls=BrokenReaper)
    poller.handle_func("sick.v1", lambda run: None)
    with caplog.at_level("WARNING", logger="simpleflow.poller"), started(poller):
        worker = wait_for(
            lambda: next((w for w in client.stats().workers if w.health and "reaper" in w.health), None),
            what="the reaper's failures in the registry",
        )
        run_id = client.submit("sick.v1", {}).execute()  # the rest of the worker carries on
        wait_for(lambda: client.get_run(run_id).status == "succeeded", what="the run")
    poller.close()
    assert worker.worker_id == "sick"
    assert worker.health["reaper"]["failures"] >= 3
    assert "reaper is broken" in worker.health["reaper"]["error"]
    counted = [r.getMessage() for r in caplog.records if "reaper failed" in r.getMessage()]
    assert any("(3 in a row)" in m for m in counted)
