"""``simpleflow check-history``: stored histories replayed against new code, read-only.

Histories are recorded by real pollers (the workflows park mid-way, waiting for a
signal or sleeping); the replay runs in-process through ``check_histories`` and, for
the command, as a real subprocess. Every test also checks that the replay executed no
step and wrote nothing (every row of every table reads the same before and after).
"""

from __future__ import annotations

import json
import runpy
import textwrap
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from test_cli import failed, ok, sf
from test_history import all_rows_as_text

from simpleflow.client import Client
from simpleflow.worker.poller import Poller
from simpleflow.workflow.context import WorkflowContext
from simpleflow.workflow.handler import WorkflowHandler
from simpleflow.workflow.replayer import Verdict, check_histories

calls: Counter[str] = Counter()
IDLE = timedelta(seconds=20)
STATUSES = ("pending", "leased", "sleeping", "waiting")


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


def work(name: str) -> str:
    calls[name] += 1
    return f"did {name}"


def v1(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    a = ctx.step("charge/v1", work, "charge")
    b = ctx.step("reserve/v1", work, "reserve")
    ctx.uuid7("key/v1")
    ctx.wait_for_signal("approved/v1")
    c = ctx.step("ship/v1", work, "ship")
    return {"steps": [a, b, c]}


def reordered(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    b = ctx.step("reserve/v1", work, "reserve")
    a = ctx.step("charge/v1", work, "charge")
    ctx.uuid7("key/v1")
    ctx.wait_for_signal("approved/v1")
    return {"steps": [a, b]}


def inserted(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    ctx.step("charge/v1", work, "charge")
    ctx.step("fraud-check/v1", work, "fraud")  # new, before records the run already has
    ctx.step("reserve/v1", work, "reserve")
    ctx.uuid7("key/v1")
    ctx.wait_for_signal("approved/v1")
    return {}


def appended(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    """Unchanged up to the wait; new work after it is fine (the run has not got there)."""
    v1(ctx, data)
    ctx.step("notify/v1", work, "notify")
    return {}


def versioned(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    """A change behind get_version, the right way: old runs keep the old path."""
    ctx.step("charge/v1", work, "charge")
    if ctx.get_version("fraud-check", 1, 2) >= 2:
        ctx.step("fraud-check/v1", work, "fraud")
    ctx.step("reserve/v1", work, "reserve")
    ctx.uuid7("key/v1")
    ctx.wait_for_signal("approved/v1")
    return {}


def kind_changed(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    ctx.step("charge/v1", work, "charge")
    ctx.step("reserve/v1", work, "reserve")
    ctx.now("key/v1")  # recorded as a uuid
    return {}


def truncated(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    ctx.step("charge/v1", work, "charge")
    return {}


class Strict(BaseModel):
    order_id: str


def new_input(ctx: WorkflowContext, data: Strict) -> dict[str, Any]:
    return v1(ctx, {})


def record(client: Client, fn: Callable[..., Any], runs: int = 1) -> list[str]:
    """Runs of ``order.v1`` recorded by a real poller until they wait for their signal."""
    ids = [client.submit("order.v1", {"n": i}).execute() for i in range(runs)]
    with Poller(client.db.engine, schema=client.db.schema) as poller:
        poller.handle_workflow("order.v1", fn)
        poller.run_until_idle(IDLE)
    assert {client.get_run(i).status for i in ids} == {"waiting"}
    calls.clear()
    return ids


def check(client: Client, fn: Callable[..., Any]) -> list[Verdict]:
    """Replay every unfinished ``order.v1`` run with ``fn``; nothing may run or change."""
    before = all_rows_as_text(client)
    with Poller(client.db.engine, schema=client.db.schema) as poller:
        poller.handle_workflow("order.v1", fn)
        handler = poller.handlers["order.v1"].invoke
        assert isinstance(handler, WorkflowHandler)
        verdicts = check_histories(poller.store, {"order.v1": handler}, STATUSES, 100)
    assert calls == {}, "the replay executed a step"
    assert all_rows_as_text(client) == before, "the replay wrote to the database"
    return verdicts


def test_unchanged_code_and_compatible_changes_match(client: Client) -> None:
    ids = record(client, v1, runs=2)
    for fn in (v1, appended, versioned):
        verdicts = check(client, fn)
        assert [(v.run_id, v.matches, v.error) for v in verdicts] == [(i, True, None) for i in ids], fn.__name__
    assert check(client, v1)[0].replayed == 4  # charge, reserve, key, and the wait where it stops


@pytest.mark.parametrize(
    ("fn", "fragment"),
    [
        (reordered, "reaches 'reserve/v1' where the history has 'charge/v1'"),
        (inserted, "reaches a new operation 'fraud-check/v1' where the history has 'reserve/v1'"),
        (kind_changed, "'key/v1' was recorded as a uuid but the workflow code now reaches it as a now"),
        (truncated, "the code finishes without reaching recorded 'reserve/v1', 'key/v1'"),
        (new_input, "the stored input no longer fits"),
    ],
)
def test_changed_code_is_reported(client: Client, fn: Callable[..., Any], fragment: str) -> None:
    (run_id,) = record(client, v1)
    (verdict,) = check(client, fn)
    assert (verdict.run_id, verdict.type, verdict.status, verdict.matches) == (run_id, "order.v1", "waiting", False)
    assert verdict.error is not None and fragment in verdict.error
    assert verdict.error.startswith(("NonDeterminismError: ", "ValidationError: "))


def test_finished_runs_and_other_statuses_are_not_replayed(client: Client) -> None:
    (run_id,) = record(client, v1)
    with Poller(client.db.engine, schema=client.db.schema) as poller:
        poller.handle_workflow("order.v1", v1)
        client.signal(run_id, "approved/v1")
        poller.run_until_idle(IDLE)
    assert client.get_run(run_id).status == "succeeded"
    calls.clear()
    assert check(client, reordered) == []


APP = """
    import os
    from simpleflow import Poller

    def work(name):
        return "did " + name

    def order(ctx, data):
        {body}
        ctx.wait_for_signal("approved/v1")
        return {{}}

    def make():
        return Poller(os.environ["SIMPLEFLOW_DATABASE_URL"]).handle_workflow("order.v1", order)
"""
V1 = 'ctx.step("charge/v1", work, "charge"); ctx.sleep("cool-off/v1", 0.01); ctx.step("reserve/v1", work, "reserve")'
V2 = 'ctx.step("reserve/v1", work, "reserve"); ctx.sleep("cool-off/v1", 0.01); ctx.step("charge/v1", work, "charge")'


def test_check_history_command(client: Client, db_url: str, tmp_path: Path) -> None:
    """The real command over a real stored history: the unchanged app passes (exit 0),
    the app whose step order changed fails (exit 1) and names the run."""
    for name, body in (("app_v1", V1), ("app_v2", V2)):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(APP.format(body=body)))
    order = runpy.run_path(str(tmp_path / "app_v1.py"))["order"]
    (run_id,) = record(client, order)
    (other,) = record(client, order)
    before = all_rows_as_text(client)

    out = ok(sf(db_url, "check-history", "app_v1:make", cwd=tmp_path))
    assert out == "checked 2 run(s) of 1 workflow type(s): every history matches the code\n"

    result = sf(db_url, "check-history", "app_v2:make", "--status", "waiting", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "checked 2 run(s) of 1 workflow type(s): 2 no longer match the code"
    assert lines[0].startswith(f"{run_id} (order.v1, waiting): NonDeterminismError: run {run_id}: ")
    assert "the code reaches 'reserve/v1' where the history has 'charge/v1'" in lines[0]

    result = sf(db_url, "check-history", "app_v2:make", "--json", "--limit", "1", cwd=tmp_path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["checked"], report["mismatched"]) == (1, 1)
    assert report["runs"][0]["run_id"] == run_id and report["runs"][0]["matches"] is False
    assert other not in result.stdout

    assert ok(sf(db_url, "check-history", "app_v2:make", "--status", "running,sleeping", cwd=tmp_path)).startswith(
        "checked 0 run(s)"
    )
    failed(sf(db_url, "check-history", "app_v1:make", "--status", "done", cwd=tmp_path), 2, "--status")
    failed(sf(db_url, "check-history", "app_v1:make", "--type", "nope.v1", cwd=tmp_path), 2, "order.v1")
    assert all_rows_as_text(client) == before


def test_delete_data_command(client: Client, db_url: str) -> None:
    run_id = client.submit("gdpr.v1", {"email": "ana@example.com"}).execute()
    failed(sf(db_url, "delete-data", run_id), 1, "only a finished run's data can be deleted")
    client.cancel(run_id)
    out = ok(sf(db_url, "delete-data", run_id, "--children", "--json"))
    assert json.loads(out) == {"deleted": [run_id]}
    assert client.get_run(run_id).payload == {"deleted": True}
    assert ok(sf(db_url, "delete-data", run_id)) == f"deleted the data of 1 run(s): {run_id}\n"


def test_a_name_without_a_record_is_judged_when_the_replay_stops() -> None:
    """Sequential code that reaches a new name executes it at once: a mismatch while older
    records are ahead. A gather reaches all its names before executing, and its later calls
    may be recorded before an earlier one's: once those are reached, the stop is clean."""
    from simpleflow.store.steps import StepRecord
    from simpleflow.workflow.replayer import ReplayHistory, ReplayMismatch, ReplayStop

    def history() -> ReplayHistory:
        return ReplayHistory({"quotes/1": StepRecord("quotes/1", 2, "step", "completed", 1, "ups", None, None)})

    gap = history()
    assert gap.get("quotes/0") is None and gap.get("quotes/1").result == "ups"
    assert isinstance(gap.stop(), ReplayStop) and gap.mismatch is None

    inserted = history()
    assert inserted.get("fraud/v1") is None
    assert isinstance(inserted.stop(), ReplayMismatch)
    assert inserted.mismatch == "the code reaches a new operation 'fraud/v1' where the history has 'quotes/1'"
    with pytest.raises(ReplayMismatch):
        inserted.get("quotes/1")
