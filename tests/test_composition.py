"""Workflow composition on both databases: child runs, waits, gather, published events,
the cancellation cascade and prune over trees (issue 16).

Workflows run on real pollers; step functions and child handlers count their executions
in ``calls`` so the tests tell replay from re-execution.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from simpleflow import ChildFailed, NonRetryable, StepFailed, WaitTimeout, WorkflowRun
from simpleflow.client import Client
from simpleflow.core.errors import NotFound, ValidationError
from simpleflow.db.schema import workflow_run, workflow_run_event
from simpleflow.worker.poller import Poller, running
from simpleflow.workflow.context import WorkflowContext

calls: Counter[str] = Counter()


class Doubled(BaseModel):
    n: int


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


@pytest.fixture
def pollers(client: Client) -> Iterator[Callable[..., Poller]]:
    """Pollers on the test database handling ``double.v1``, ``slow.v1`` (and the given
    workflows); ``poll`` is the poll interval (a fallback the wake-up must not need)."""
    made: list[Poller] = []

    def make(poll: float = 0.05, **workflows: Callable[..., Any]) -> Poller:
        poller = Poller(client.db.engine, schema=client.db.schema).with_poll_interval(timedelta(seconds=poll))
        poller.handle_func("double.v1", double)
        poller.handle_func("slow.v1", slow)
        for type_, fn in workflows.items():
            poller.handle_workflow(type_.replace("_", "."), fn)
        made.append(poller)
        return poller

    yield make
    for p in made:
        p.close()


def drain(poller: Poller, seconds: float = 30) -> int:
    return poller.run_until_idle(timeout=timedelta(seconds=seconds))


def double(run: WorkflowRun) -> dict[str, int]:
    n = run.payload_as(dict)["n"]
    calls[f"double:{n}"] += 1
    if n < 0:
        raise NonRetryable(f"cannot double {n}")
    return {"n": 2 * n}


release = threading.Event()


def slow(run: WorkflowRun) -> dict[str, int]:
    """Finishes when the test sets ``release``."""
    release.wait(30)
    return {"n": 0}


def rows(client: Client, stmt: Any) -> list[Any]:
    with client.db.engine.connect() as conn:
        return list(conn.execute(stmt, execution_options=client.db.exec_options).all())


# -- children ------------------------------------------------------------------------------------


def parent_wf(ctx: WorkflowContext, n: int) -> dict[str, Any]:
    child = ctx.start_child("double/v1", "double.v1", {"n": n})
    ctx.sleep("nap", timedelta(milliseconds=200))  # a replay passes the start again
    result = ctx.wait_child("double/v1/wait", child, Doubled)
    assert isinstance(result, Doubled)
    return {"child": child, "n": result.n}


def test_a_child_is_started_once_and_linked_to_its_parent(client: Client, pollers: Callable[..., Poller]) -> None:
    run_id = client.submit("parent.v1", 21).execute()
    drain(pollers(parent_v1=parent_wf))
    info = client.get_run(run_id)
    assert info.status == "succeeded" and info.result["n"] == 42 and info.parent_id is None
    children = client.list_runs(parent_id=run_id)
    assert [(c.id, c.type, c.status, c.parent_id) for c in children] == [
        (info.result["child"], "double.v1", "succeeded", run_id)
    ]
    assert client.get_run(info.result["child"]).parent_id == run_id
    assert calls == Counter({"double:21": 1})
    steps = client.get_steps(run_id)
    assert [(s.name, s.kind, s.status) for s in steps] == [
        ("double/v1", "child", "started"),
        ("nap", "sleep", "completed"),
        ("double/v1/wait", "child_wait", "completed"),
    ]
    events = [(e.event_type, e.detail) for e in client.get_events(run_id)]
    assert ("child_started", {"child": info.result["child"], "name": "double/v1", "type": "double.v1"}) in events
    assert client.list_runs(parent_id=info.result["child"]) == []


def test_the_end_of_a_child_wakes_its_parent_within_one_claim_cycle(
    client: Client, pollers: Callable[..., Poller]
) -> None:
    def wf(ctx: WorkflowContext, _: Any) -> int:
        return int(ctx.run_child("slow", "slow.v1", None, Doubled).n)

    release.clear()
    poller = pollers(poll=30, wait_v1=wf)  # a poll every 30 s: only the wake-up can be this quick
    run_id = client.submit("wait.v1").execute()
    with running(poller):
        deadline = time.monotonic() + 20
        while client.get_run(run_id).status != "waiting":
            assert time.monotonic() < deadline, client.get_run(run_id)
            time.sleep(0.02)
        assert client.get_run(run_id).run_at.year == 9999  # parked for good, no polling
        started = time.monotonic()
        release.set()
        info = client.wait(run_id, timeout=timedelta(seconds=10))
        woke_in = time.monotonic() - started
    assert info.status == "succeeded" and info.result == 0
    assert woke_in < 3, f"the parent finished {woke_in:.2f}s after its child"
    assert "woken" in [e.event_type for e in client.get_events(run_id)]


def test_a_failed_child_raises_child_failed_in_the_parent(client: Client, pollers: Callable[..., Poller]) -> None:
    def wf(ctx: WorkflowContext, _: Any) -> dict[str, Any]:
        ok = ctx.start_child("ok", "double.v1", {"n": 1})
        bad = ctx.start_child("bad", "double.v1", {"n": -1})
        try:
            ctx.wait_children("both", [ok, bad], Doubled)
        except ChildFailed as error:
            assert isinstance(error, ChildFailed)
            ctx.step("compensate", lambda: calls.update(["compensate"]))
            return {
                "child": error.child_id,
                "status": error.status,
                "type": error.error_type,
                "msg": error.error_message,
            }
        return {}

    run_id = client.submit("catch.v1").execute()
    poller = pollers(catch_v1=wf)
    drain(poller)
    result = client.get_run(run_id).result
    bad = client.get_steps(run_id)[1].result
    assert result == {"child": bad, "status": "failed", "type": "NonRetryable", "msg": "cannot double -1"}
    wait = next(s for s in client.get_steps(run_id) if s.name == "both")
    assert (wait.kind, wait.status, wait.error["child"]) == ("child_wait", "failed", bad)
    assert calls == Counter({"double:1": 1, "double:-1": 1, "compensate": 1})


def test_wait_child_times_out_with_wait_timeout(client: Client, pollers: Callable[..., Poller]) -> None:
    def wf(ctx: WorkflowContext, _: Any) -> str:
        child = ctx.start_child("never", "nobody.handles.this", None)
        try:
            ctx.wait_child("never/wait", child, timeout=timedelta(milliseconds=100))
        except WaitTimeout as error:
            assert isinstance(error, TimeoutError)
            return "timed out"
        return "finished"

    run_id = client.submit("timeout.v1").execute()
    drain(pollers(timeout_v1=wf))
    assert client.get_run(run_id).result == "timed out"
    assert client.get_steps(run_id)[1].status == "timed_out"


def test_cancelling_a_waiting_child_wakes_the_parent(client: Client, pollers: Callable[..., Poller]) -> None:
    def wf(ctx: WorkflowContext, _: Any) -> str:
        try:
            ctx.run_child("c", "nobody.handles.this", None)
        except ChildFailed as error:
            return f"{error.status}: {error.error_type}"
        return "finished"

    run_id = client.submit("cancelled.v1").execute()
    poller = pollers(cancelled_v1=wf)
    drain(poller)
    assert client.get_run(run_id).status == "waiting"
    client.cancel(client.list_runs(parent_id=run_id)[0].id)
    assert client.get_run(run_id).status == "pending"  # woken in the cancel's transaction
    drain(poller)
    assert client.get_run(run_id).result == "cancelled: WorkflowCancelled"


def test_composition_arguments_are_validated(client: Client, pollers: Callable[..., Poller]) -> None:
    seen: list[str] = []

    def wf(ctx: WorkflowContext, _: Any) -> list[str]:
        for attempt in (
            lambda: ctx.start_child("x", "not a type!", None),
            lambda: ctx.start_child("y", "double.v1", object()),
            lambda: ctx.wait_children("z", "not-a-list"),
            lambda: ctx.gather("g", [print]),
            lambda: ctx.set_event("", 1),
        ):
            try:
                attempt()
            except ValidationError as error:
                seen.append(type(error).__name__)
        try:
            ctx.wait_child("w", client.submit("double.v1", {"n": 1}).execute())  # not a child of this run
        except ValidationError as error:
            seen.append("not a child" if "not a child" in str(error) else str(error))
        return seen

    run_id = client.submit("validate.v1").execute()
    drain(pollers(validate_v1=wf))
    assert client.get_run(run_id).result == ["ValidationError"] * 5 + ["not a child"]
    assert client.list_runs(parent_id=run_id) == []
    with pytest.raises(NotFound):
        client.list_runs(parent_id="nope")


# -- cancellation and prune over trees -------------------------------------------------------------


def middle_wf(ctx: WorkflowContext, _: Any) -> Any:
    return ctx.run_child("leaf", "nobody.handles.this", None)


def top_wf(ctx: WorkflowContext, _: Any) -> Any:
    done = ctx.run_child("quick", "double.v1", {"n": 1})
    return [done, ctx.run_child("middle", "middle.v1", None)]


def tree(client: Client, poller: Poller) -> tuple[str, dict[str, str]]:
    """top -> quick (succeeded), top -> middle -> leaf (pending: nothing handles it)."""
    top = client.submit("top.v1").execute()
    drain(poller)
    by_type = {c.type: c.id for c in client.list_runs(parent_id=top)}
    by_type["leaf"] = client.list_runs(parent_id=by_type["middle.v1"])[0].id
    return top, by_type


def test_cancelling_a_parent_cancels_its_unfinished_descendants(client: Client, pollers: Callable[..., Poller]) -> None:
    top, ids = tree(client, pollers(top_v1=top_wf, middle_v1=middle_wf))
    assert {k: client.get_run(v).status for k, v in ids.items()} == {
        "double.v1": "succeeded",
        "middle.v1": "waiting",
        "leaf": "pending",
    }
    client.cancel(top)
    assert client.get_run(top).status == "cancelled"
    assert {k: client.get_run(v).status for k, v in ids.items()} == {
        "double.v1": "succeeded",
        "middle.v1": "cancelled",
        "leaf": "cancelled",
    }
    for child in (ids["middle.v1"], ids["leaf"]):
        cancel = [e for e in client.get_events(child) if e.event_type == "cancelled"]
        assert len(cancel) == 1 and cancel[0].detail["reason"] == "parent cancelled"
    assert [e.event_type for e in client.get_events(ids["double.v1"])][-1] == "succeeded"


def test_prune_keeps_a_tree_until_every_run_in_it_finished(client: Client, pollers: Callable[..., Poller]) -> None:
    top, ids = tree(client, pollers(top_v1=top_wf, middle_v1=middle_wf))
    # The quick child finished, but its parent still runs: it is kept.
    assert client.prune(older_than=0) == 0
    assert client.get_run(ids["double.v1"]).status == "succeeded"
    client.cancel(top)
    assert client.prune(older_than=0, statuses=("succeeded", "cancelled")) == 4
    assert rows(client, sa.select(workflow_run.c.id)) == []


# -- gather --------------------------------------------------------------------------------------


def quote(carrier: str) -> int:
    calls[carrier] += 1
    time.sleep(0.5)
    if carrier == "broken":
        raise NonRetryable("no quote from broken")
    return len(carrier)


def gather_wf(ctx: WorkflowContext, carriers: list[str]) -> dict[str, Any]:
    try:
        return {"quotes": ctx.gather("quotes", [(quote, c) for c in carriers])}
    except StepFailed as error:
        ctx.sleep("then", timedelta(milliseconds=100))  # a replay passes the gather again
        return {"failed": error.step, "error": error.error_message}


def test_gather_runs_its_calls_in_parallel_and_records_each(client: Client, pollers: Callable[..., Poller]) -> None:
    run_id = client.submit("gather.v1", ["dhl", "ups", "fedex", "post"]).execute()
    started = time.monotonic()
    drain(pollers(gather_v1=gather_wf))
    assert client.get_run(run_id).result == {"quotes": [3, 3, 5, 4]}
    assert time.monotonic() - started < 0.5 * 4  # in parallel, not one after the other
    steps = client.get_steps(run_id)
    assert sorted((s.name, s.kind, s.status, s.result) for s in steps) == [
        ("quotes/0", "step", "completed", 3),
        ("quotes/1", "step", "completed", 3),
        ("quotes/2", "step", "completed", 5),
        ("quotes/3", "step", "completed", 4),
    ]


def test_gather_with_one_failing_call_records_the_others_and_raises_step_failed(
    client: Client, pollers: Callable[..., Poller]
) -> None:
    run_id = client.submit("gather.v1", ["dhl", "broken", "ups"]).execute()
    drain(pollers(gather_v1=gather_wf))
    assert client.get_run(run_id).result == {"failed": "quotes/1", "error": "no quote from broken"}
    steps = {s.name: (s.status, s.result) for s in client.get_steps(run_id)}
    assert steps == {
        "quotes/0": ("completed", 3),
        "quotes/1": ("failed", None),
        "quotes/2": ("completed", 3),
        "then": ("completed", None),
    }
    assert calls == Counter({"dhl": 1, "broken": 1, "ups": 1})  # the replay ran nothing again


# -- published events ----------------------------------------------------------------------------


def stages_wf(ctx: WorkflowContext, _: Any) -> str:
    ctx.set_event("stage", "started")
    ctx.set_event("stage", {"name": "charged", "amount": 42})
    ctx.set_event("other", 1)
    ctx.wait_for_signal("go")
    ctx.set_event("stage", "shipped")
    return "done"


def test_events_are_read_while_the_workflow_runs(client: Client, pollers: Callable[..., Poller]) -> None:
    run_id = client.submit("stages.v1").execute()
    poller = pollers(stages_v1=stages_wf)
    with pytest.raises(WaitTimeout):
        client.get_event(run_id, "stage", timeout=0.1)
    drain(poller)
    assert client.get_run(run_id).status == "waiting"
    assert client.get_event(run_id, "stage") == {"name": "charged", "amount": 42}  # the latest set wins
    assert client.get_event(run_id, "other", timeout=0) == 1
    table = workflow_run_event.c
    before = rows(client, sa.select(table.key, table.updated_at).order_by(table.key))

    client.signal(run_id, "go")
    drain(poller)  # the replay passes the recorded sets without publishing again
    assert client.get_run(run_id).result == "done"
    assert client.get_event(run_id, "stage") == "shipped"
    after = dict(rows(client, sa.select(table.key, table.updated_at)))
    assert after["other"] == dict(before)["other"]
    assert [(s.name, s.kind) for s in client.get_steps(run_id)][:3] == [
        ("event:stage", "event"),
        ("event:stage#2", "event"),
        ("event:other", "event"),
    ]
    with pytest.raises(NotFound):
        client.get_event("01a21392-0000-7000-8000-000000000000", "stage", timeout=0)


def test_get_event_waits_for_the_first_value(client: Client, pollers: Callable[..., Poller]) -> None:
    run_id = client.submit("stages.v1").execute()
    poller = pollers(stages_v1=stages_wf)
    with running(poller):
        assert client.get_event(run_id, "stage", timeout=timedelta(seconds=20)) in (
            "started",
            {"name": "charged", "amount": 42},
        )
        client.signal(run_id, "go")
        client.wait(run_id, timeout=timedelta(seconds=20))


def flaky_once(run: WorkflowRun) -> dict[str, int]:
    calls["flaky"] += 1
    if calls["flaky"] == 1:
        raise NonRetryable("first time")
    return {"n": 7}


def test_retrying_a_failed_child_then_its_parent_resumes_the_wait(
    client: Client, pollers: Callable[..., Poller]
) -> None:
    def wf(ctx: WorkflowContext, _: Any) -> int:
        return int(ctx.run_child("c", "flaky.v1", None, Doubled).n)

    run_id = client.submit("tree.v1").with_max_attempts(1).execute()
    poller = pollers(tree_v1=wf).handle_func("flaky.v1", flaky_once)
    drain(poller)
    assert client.get_run(run_id).status == "failed" and "ChildFailed" in (client.get_run(run_id).last_error or "")
    child = client.list_runs(parent_id=run_id)[0].id
    client.retry(child)
    client.retry(run_id)
    drain(poller)
    assert client.get_run(run_id).result == 7 and len(client.list_runs(parent_id=run_id)) == 1
