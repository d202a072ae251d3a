"""The Poller on both databases: handlers, routing, ordering, retries, concurrency caps,
registry, wake-ups and the process lifecycle."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from poller_helpers import FAST_RETRY, event_types, make_poller, started, wait_for
from pydantic import BaseModel

from simpleflow import Client, Poller, RetryPolicy, Workflow, WorkflowRun
from simpleflow.worker.metrics import NullMetrics


class Thumbnail(BaseModel):
    content_id: str
    width: int


class Rendered(BaseModel):
    content_id: str
    url: str


def test_happy_path_stores_the_result_and_the_audit_trail(client: Client, db_url: str) -> None:
    run_id = client.submit("demo.hello.v1", {"name": "ana"}).execute()
    seen: list[WorkflowRun] = []

    def hello(run: WorkflowRun) -> dict[str, Any]:
        seen.append(run)
        return {"greeting": f"hello {json.loads(run.payload)['name']}"}

    with make_poller(db_url, "w1") as poller:
        poller.handle_func("demo.hello.v1", hello)
        assert poller.run_until_idle() == 1

    info = client.get_run(run_id)
    assert (info.status, info.result, info.attempt, info.last_error) == (
        "succeeded",
        {"greeting": "hello ana"},
        1,
        None,
    )
    assert info.lease_until is None
    (run,) = seen
    assert (run.id, run.type, run.attempt, run.max_attempts) == (run_id, "demo.hello.v1", 1, 3)
    assert json.loads(run.payload) == {"name": "ana"}
    events = client.get_events(run_id)
    assert [e.event_type for e in events] == ["created", "leased", "succeeded"]
    assert [e.worker_id for e in events] == [None, "w1", "w1"]
    assert [e.attempt for e in events] == [0, 1, 1]


def test_payload_as_and_a_pydantic_result(client: Client, db_url: str) -> None:
    run_id = client.submit("content.thumbnail.v1", Thumbnail(content_id="c_1", width=300)).execute()

    class ThumbnailExecutor:
        def execute(self, run: WorkflowRun) -> Rendered:
            params = run.payload_as(Thumbnail)
            return Rendered(content_id=params.content_id, url=f"https://cdn/{params.content_id}/{params.width}.png")

    with make_poller(db_url, "w1") as poller:
        poller.handle("content.thumbnail.v1", ThumbnailExecutor())
        poller.run_until_idle()

    assert client.get_run(run_id).result == {"content_id": "c_1", "url": "https://cdn/c_1/300.png"}
    assert client.get_result(run_id, Rendered) == Rendered(content_id="c_1", url="https://cdn/c_1/300.png")


def test_a_payload_that_does_not_fit_the_model_fails_the_attempt_readably(client: Client, db_url: str) -> None:
    run_id = (
        client.submit("content.thumbnail.v1", {"content_id": "c_1", "width": "wide"}).with_max_attempts(1).execute()
    )

    with make_poller(db_url, "w1") as poller:
        poller.handle_func("content.thumbnail.v1", lambda run: run.payload_as(Thumbnail).width)
        poller.run_until_idle()

    info = client.get_run(run_id)
    assert info.status == "failed"
    assert info.last_error is not None
    assert f"payload of run {run_id} does not fit Thumbnail" in info.last_error
    assert "width" in info.last_error  # pydantic names the offending field
    assert "simpleflow.errors.ValidationError" in info.last_error or "ValidationError:" in info.last_error


def test_a_result_that_is_not_json_fails_the_attempt(client: Client, db_url: str) -> None:
    run_id = client.submit("demo.bad.v1", {}).with_max_attempts(1).execute()
    with make_poller(db_url, "w1") as poller:
        poller.handle_func("demo.bad.v1", lambda run: {"when": object()})
        poller.run_until_idle()
    info = client.get_run(run_id)
    assert info.status == "failed"
    assert info.last_error is not None and "result is not JSON-serializable" in info.last_error


def test_lower_priority_number_runs_first(client: Client, db_url: str) -> None:
    ids = {p: client.submit("demo.prio.v1", {"p": p}).with_priority(p).execute() for p in (50, 100, 5, 10, 200)}
    order: list[int] = []
    with make_poller(db_url, "w1", concurrency=1) as poller:
        poller.handle_func("demo.prio.v1", lambda run: order.append(run.payload_value["p"]))
        assert poller.run_until_idle() == 5
    assert order == [5, 10, 50, 100, 200]
    assert all(client.get_run(i).status == "succeeded" for i in ids.values())


def test_a_delayed_run_is_not_claimed_before_it_is_due(client: Client, db_url: str) -> None:
    later = client.submit("demo.later.v1", {"n": 1}).run_in(timedelta(seconds=1.5)).execute()
    now = client.submit("demo.later.v1", {"n": 2}).execute()
    with make_poller(db_url, "w1") as poller:
        poller.handle_func("demo.later.v1", lambda run: run.payload_value["n"])
        assert poller.run_until_idle() == 1
        info = client.get_run(later)
        assert (info.status, info.attempt, event_types(client, later)) == ("pending", 0, ["created"])
        assert client.get_run(now).status == "succeeded"
        wait_for(lambda: poller.run_until_idle() == 1, timeout=10, what="the delayed run to become due")
    info = client.get_run(later)
    assert (info.status, info.result) == ("succeeded", 1)
    assert info.updated_at >= info.run_at >= info.created_at + timedelta(seconds=1.4)


def test_two_pollers_on_disjoint_prefixes_split_the_work(client: Client, db_url: str) -> None:
    billing = [client.submit(t, {}).execute() for t in ("billing.invoice.v1", "billing.payment.v1")]
    media = [client.submit(t, {}).execute() for t in ("media.resize.v1", "media.transcode.v1")]
    with make_poller(db_url, "billing-1") as b, make_poller(db_url, "media-1") as m:
        for t in ("billing.invoice.v1", "billing.payment.v1"):
            b.handle_func(t, lambda run: "billing")
        for t in ("media.resize.v1", "media.transcode.v1"):
            m.handle_func(t, lambda run: "media")
        b.with_type_prefixes("billing.%")
        m.with_type_prefixes("media.%")
        assert b.run_until_idle() == 2
        assert all(client.get_run(i).status == "pending" for i in media)  # untouched by the billing poller
        assert all(event_types(client, i) == ["created"] for i in media)
        assert m.run_until_idle() == 2
    for ids, worker, result in ((billing, "billing-1", "billing"), (media, "media-1", "media")):
        for i in ids:
            info = client.get_run(i)
            assert (info.status, info.result, info.leased_by) == ("succeeded", result, worker)


def test_like_metacharacters_in_a_prefix_are_literal(client: Client, db_url: str) -> None:
    exact = client.submit("a_b.x", {}).execute()
    lookalike = client.submit("axb.x", {}).execute()
    with make_poller(db_url, "w1") as poller:
        poller.handle_func("a_b.x", lambda run: "ok").handle_func("axb.x", lambda run: "wrong")
        poller.with_type_prefixes("a_b.%")  # `_` would match any character in an unescaped LIKE
        assert poller.run_until_idle() == 1
    assert client.get_run(exact).status == "succeeded"
    info = client.get_run(lookalike)
    assert (info.status, info.attempt, event_types(client, lookalike)) == ("pending", 0, ["created"])

    # Prefixes derived from the registered types are exact matches, escaped just the same.
    with make_poller(db_url, "w2") as poller:
        poller.handle_func("a_b.y", lambda run: "ok")
        client.submit("axb.y", {}).execute()
        assert poller.run_until_idle() == 0


def test_a_claimed_run_without_a_handler_is_released_untouched(client: Client, db_url: str) -> None:
    handled = client.submit("jobs.a", {}).execute()
    orphan = client.submit("jobs.b", {}).with_max_attempts(1).execute()
    with make_poller(db_url, "w1") as poller:
        poller.handle_func("jobs.a", lambda run: "done").with_type_prefixes("jobs.%")
        assert poller.run_until_idle(timeout=timedelta(seconds=10)) == 1
    assert client.get_run(handled).status == "succeeded"
    info = client.get_run(orphan)
    assert (info.status, info.attempt, info.leased_by, info.last_error) == ("pending", 0, None, None)
    events = client.get_events(orphan)
    assert [e.event_type for e in events] == ["created", "leased", "released"]
    assert events[-1].detail == {"reason": "no handler on this worker"}
    # The only attempt was not spent: a worker that has the handler runs it.
    with make_poller(db_url, "w2") as other:
        other.handle_func("jobs.b", lambda run: "b")
        assert other.run_until_idle() == 1
    assert client.get_run(orphan).status == "succeeded"


def test_retries_with_backoff_then_failed_with_the_traceback(client: Client, db_url: str) -> None:
    run_id = client.submit("demo.flaky.v1", {"n": 42}).with_max_attempts(3).execute()
    attempts: list[int] = []

    def always_fails(run: WorkflowRun) -> None:
        attempts.append(run.attempt)
        raise ValueError(f"boom {run.payload_value['n']}")

    with make_poller(db_url, "w1") as poller:
        poller.handle_func("demo.flaky.v1", always_fails)
        with started(poller):
            info = client.wait(run_id, timeout=timedelta(seconds=15))
    assert attempts == [1, 2, 3]
    assert (info.status, info.attempt, info.result) == ("failed", 3, None)
    assert info.last_error is not None
    assert info.last_error.startswith("Traceback (most recent call last):")
    assert "in always_fails" in info.last_error and "ValueError: boom 42" in info.last_error
    events = client.get_events(run_id)
    assert [e.event_type for e in events] == ["created", "leased", "retried", "leased", "retried", "leased", "failed"]
    retried = [e for e in events if e.event_type == "retried"]
    # FAST_RETRY: 10 ms after attempt 1, 20 ms after attempt 2 (no jitter)
    assert [e.detail["retry_in_seconds"] for e in retried] == [0.01, 0.02]
    assert [e.detail["error"] for e in retried] == ["ValueError: boom 42", "ValueError: boom 42"]


def test_a_per_handler_retry_policy_overrides_the_pollers(client: Client, db_url: str) -> None:
    fast = client.submit("demo.fast.v1", {}).execute()
    slow = client.submit("demo.slow.v1", {}).execute()

    def fails_once(run: WorkflowRun) -> str:
        if run.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "second attempt"

    poller_policy = RetryPolicy(initial_delay=timedelta(hours=1), jitter=0.0)
    with make_poller(db_url, "w1", retry=poller_policy) as poller:
        poller.handle_func("demo.fast.v1", fails_once, retry=FAST_RETRY)
        poller.handle_func("demo.slow.v1", fails_once)
        with started(poller):
            assert client.wait(fast, timeout=timedelta(seconds=10)).result == "second attempt"
    info = client.get_run(slow)
    assert (info.status, info.attempt) == ("pending", 1)
    assert timedelta(minutes=59) < info.run_at - info.updated_at <= timedelta(hours=1, seconds=1)


def test_the_audit_trail_lists_every_transition_in_order(client: Client, db_url: str) -> None:
    run_id = client.submit("demo.trail.v1", {}).execute()
    with make_poller(db_url, "w1") as poller:
        poller.handle_func("demo.trail.v1", lambda run: 1 / (run.attempt - 1))  # attempt 1 divides by zero
        with started(poller):
            client.wait(run_id, timeout=timedelta(seconds=10))
    events = client.get_events(run_id)
    assert [(e.event_type, e.attempt, e.worker_id) for e in events] == [
        ("created", 0, None),
        ("leased", 1, "w1"),
        ("retried", 1, "w1"),
        ("leased", 2, "w1"),
        ("succeeded", 2, "w1"),
    ]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert [e.created_at for e in events] == sorted(e.created_at for e in events)
    assert events[2].detail["error"] == "ZeroDivisionError: division by zero"


def test_a_per_type_concurrency_cap_holds_while_other_types_run(client: Client, db_url: str) -> None:
    heavy = client.submit_many([("media.heavy.v1", {"i": i}) for i in range(6)])
    light = client.submit_many([("media.light.v1", {"i": i}) for i in range(4)])
    lock = threading.Lock()
    state = {"heavy": 0, "max_heavy": 0, "light_beside_heavy": 0}

    def heavy_job(run: WorkflowRun) -> None:
        with lock:
            state["heavy"] += 1
            state["max_heavy"] = max(state["max_heavy"], state["heavy"])
        time.sleep(0.25)
        with lock:
            state["heavy"] -= 1

    def light_job(run: WorkflowRun) -> None:
        with lock:
            if state["heavy"]:
                state["light_beside_heavy"] += 1
        time.sleep(0.02)

    with make_poller(db_url, "w1", concurrency=8) as poller:
        poller.handle_func("media.heavy.v1", heavy_job, concurrency=2)
        poller.handle_func("media.light.v1", light_job)
        assert poller.run_until_idle(timeout=timedelta(seconds=30)) == 10
    assert state["max_heavy"] == 2
    assert state["light_beside_heavy"] >= 1  # the capped type did not starve the other one
    assert all(client.get_run(i).status == "succeeded" for i in heavy + light)


def test_the_registry_row_exists_while_running_and_goes_on_clean_stop(client: Client, db_url: str) -> None:
    with make_poller(db_url, "registry-w1", concurrency=3) as poller:
        poller.handle_func("billing.invoice.v1", lambda run: None).handle_func("billing.payment.v1", lambda run: None)
        with started(poller):
            (row,) = wait_for(lambda: poller.db.run(poller.store.workers.list), what="the registry row")
            assert row["worker_id"] == "registry-w1"
            assert (row["host"], row["pid"]) == (socket.gethostname(), os.getpid())
            assert row["types"] == ["billing.invoice.v1", "billing.payment.v1"]
            assert row["concurrency"] == 3
            assert row["started_at"] <= row["heartbeat_at"] and row["heartbeat_age_seconds"] >= 0
        assert poller.db.run(poller.store.workers.list) == []


def test_default_worker_ids_are_unique_within_a_process(db_url: str) -> None:
    with Poller(db_url) as a, Poller(db_url) as b:
        assert a.worker_id != b.worker_id
        assert a.worker_id.startswith(f"{socket.gethostname()}-{os.getpid()}")


def test_workflow_all_in_one(db_url: str) -> None:
    with Workflow(db_url) as wf:
        wf.auto_migrate()
        wf.handle_func("demo.add.v1", lambda run: sum(json.loads(run.payload)))
        wf.with_lease_duration(timedelta(seconds=2)).with_worker_id("all-in-one")
        run_id = wf.submit("demo.add.v1", [1, 2, 3]).execute()
        assert wf.run_until_idle() == 1
        info = wf.wait(run_id, timeout=timedelta(seconds=5))
        assert (info.status, info.result, info.leased_by) == ("succeeded", 6, "all-in-one")
        assert [e.event_type for e in wf.get_events(run_id)] == ["created", "leased", "succeeded"]


def test_an_idle_poller_picks_up_a_submission_at_once(client: Client, db_url: str, db_kind: str) -> None:
    """PostgreSQL: LISTEN/NOTIFY; SQLite: the in-process wake-up. Both well under the 10 s poll interval."""
    done = threading.Event()
    with make_poller(db_url, "w1", poll=timedelta(seconds=10)) as poller:
        poller.handle_func("demo.ping.v1", lambda run: done.set())
        with started(poller):
            if db_kind == "postgresql":
                assert poller._listener is not None and poller._listener.connected.wait(5)
            time.sleep(0.5)  # the poller has looked once, found nothing, and sleeps on its 10 s interval
            t0 = time.monotonic()
            run_id = client.submit("demo.ping.v1", {}).execute()
            assert done.wait(5)
            latency = time.monotonic() - t0
            client.wait(run_id, timeout=timedelta(seconds=5))
    assert latency < 1.0, f"pickup took {latency:.3f}s"


WORKER_SCRIPT = """
import os, sys, time
from datetime import timedelta
from simpleflow import Poller

def sleepy(run):
    print("started", run.payload_value["name"], flush=True)
    time.sleep(run.payload_value["seconds"])
    return {"slept": run.payload_value["seconds"]}

poller = (Poller(os.environ["SIMPLEFLOW_DATABASE_URL"]).with_worker_id("sigterm-worker")
          .with_concurrency(1).with_lease_duration(timedelta(seconds=2))
          .with_poll_interval(timedelta(milliseconds=100)))
poller.handle_func("demo.sleepy.v1", sleepy)
print("ready", flush=True)
poller.start()
print("stopped", flush=True)
"""


def test_start_blocks_and_drains_on_sigterm(client: Client, db_url: str, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    first = client.submit("demo.sleepy.v1", {"name": "first", "seconds": 1.0}).with_priority(1).execute()
    second = client.submit("demo.sleepy.v1", {"name": "second", "seconds": 0.0}).with_priority(2).execute()
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, "SIMPLEFLOW_DATABASE_URL": db_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert proc.stdout.readline().strip() == "started first"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.strip() == "stopped", (out, err)
    # The run in flight finished during the drain; nothing new was claimed after the signal.
    assert client.get_run(first).result == {"slept": 1.0}
    info = client.get_run(second)
    assert (info.status, info.attempt) == ("pending", 0)
    with Poller(db_url) as probe:
        assert probe.db.run(probe.store.workers.list) == []


def test_a_poller_never_claims_more_runs_than_it_has_free_threads(client: Client, db_url: str) -> None:
    """A capped type's claim uses up free threads: the next claim of the cycle asks for fewer.

    Counted from the claim (the metrics hook) until the handler returns: claimed runs
    waiting for a thread would push the count over the thread count.
    """
    client.submit_many([("media.heavy.v1", {}) for _ in range(2)] + [("media.light.v1", {}) for _ in range(3)])
    lock = threading.Lock()
    state = {"outstanding": 0, "most": 0}

    class ClaimCounter(NullMetrics):
        def record_claimed(self, run_type: str, worker_id: str) -> None:
            with lock:
                state["outstanding"] += 1
                state["most"] = max(state["most"], state["outstanding"])

    def job(run: WorkflowRun) -> None:
        time.sleep(0.1)
        with lock:
            state["outstanding"] -= 1

    with make_poller(db_url, "w1", concurrency=3) as poller:
        poller.with_metrics(ClaimCounter())
        poller.handle_func("media.heavy.v1", job, concurrency=2).handle_func("media.light.v1", job)
        assert poller.run_until_idle(timeout=timedelta(seconds=20)) == 5
    assert state["most"] == 3
