"""A parent workflow's worker SIGKILLed around ``start_child``: the child exists exactly once.

The worker is a real separate process: this file run as a script
(``python test_composition_crash.py URL``) starts a ``Poller`` for the parent
workflow and the child handler. ``SIMPLEFLOW_CRASH_AT`` picks where it blocks
(after writing ``DIR/blocked``) until the test kills it:

- ``start``: inside the transaction of ``start_child``, after the child's row was
  inserted and before the commit (the child and the parent's record die together);
- ``between``: in a step after the start was recorded, before the wait.

Every child execution and step execution appends a line to ``DIR/calls``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from simpleflow import WorkflowRun
from simpleflow.client import Client
from simpleflow.store.runs import RunStore
from simpleflow.worker.poller import Poller, running
from simpleflow.workflow.context import WorkflowContext

pytestmark = pytest.mark.faults

CRASH_AT = "SIMPLEFLOW_CRASH_AT"
CRASH_DIR = "SIMPLEFLOW_CRASH_DIR"


def log(directory: str, line: str) -> None:
    with open(os.path.join(directory, "calls"), "a") as f:
        f.write(line + "\n")


def block_here(where: str) -> None:
    if os.environ.get(CRASH_AT) == where:
        Path(os.environ[CRASH_DIR], "blocked").write_text(where)
        while True:
            time.sleep(60)


def child(run: WorkflowRun) -> dict[str, Any]:
    job = run.payload_as(dict)
    log(job["dir"], "child")
    return {"charged": job["amount"]}


def between(directory: str) -> str:
    log(directory, "between")
    block_here("between")
    return "ok"


def parent(ctx: WorkflowContext, job: dict[str, Any]) -> Any:
    child_id = ctx.start_child("charge/v1", "crash.child", {"dir": job["dir"], "amount": 42})
    ctx.step("between", between, job["dir"])
    return ctx.wait_child("charge/v1/wait", child_id)


def make_poller(url: str | Any, schema: str | None = None) -> Poller:
    return (
        Poller(url, schema=schema)
        .with_lease_duration(timedelta(seconds=1))  # a dead worker's runs come back within a second
        .with_poll_interval(timedelta(milliseconds=100))
        .handle_func("crash.child", child)
        .handle_workflow("crash.parent", parent)
    )


def kill_parent_worker(client: Client, db_url: str, where: str, directory: Path) -> str:
    run_id = client.submit("crash.parent", {"dir": str(directory)}).execute()
    proc = subprocess.Popen(
        [sys.executable, __file__, db_url],
        env={**os.environ, CRASH_AT: where, CRASH_DIR: str(directory)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not (directory / "blocked").exists():
            assert proc.poll() is None, f"worker exited early: {proc.stdout.read().decode() if proc.stdout else ''}"
            assert time.monotonic() < deadline, "the worker never reached the blocking point"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return run_id


def resume(client: Client, run_id: str) -> Any:
    with running(make_poller(client.db.engine, client.db.schema)):
        info = client.wait(run_id, timeout=timedelta(seconds=30))
    assert info.status == "succeeded", info.last_error
    return info.result


def calls(directory: Path) -> list[str]:
    path = directory / "calls"
    return path.read_text().split() if path.exists() else []


def test_a_parent_killed_between_start_and_wait_never_starts_a_second_child(
    client: Client, db_url: str, tmp_path: Path
) -> None:
    run_id = kill_parent_worker(client, db_url, "between", tmp_path)
    children = client.list_runs(parent_id=run_id)
    assert len(children) == 1
    assert [s.name for s in client.get_steps(run_id)] == ["charge/v1"]

    assert resume(client, run_id) == {"charged": 42}
    assert [c.id for c in client.list_runs(parent_id=run_id)] == [children[0].id]
    if calls(tmp_path).count("child") == 2:  # the killed worker had run the child too, before its outcome was written
        assert "lease_expired" in [e.event_type for e in client.get_events(children[0].id)]
    else:
        assert calls(tmp_path).count("child") == 1
    assert calls(tmp_path).count("between") == 2  # cut off before its record, so it ran again
    assert "lease_expired" in [e.event_type for e in client.get_events(run_id)]


def test_a_parent_killed_inside_the_start_leaves_neither_child_nor_record(
    client: Client, db_url: str, tmp_path: Path
) -> None:
    run_id = kill_parent_worker(client, db_url, "start", tmp_path)
    assert client.list_runs(parent_id=run_id) == []  # the insert died with the transaction
    assert client.get_steps(run_id) == []

    assert resume(client, run_id) == {"charged": 42}
    assert len(client.list_runs(parent_id=run_id)) == 1
    assert calls(tmp_path).count("child") == 1


if __name__ == "__main__":  # the worker process
    if os.environ.get(CRASH_AT) == "start":
        original = RunStore.insert_child

        def blocking(self: RunStore, *args: Any, **kwargs: Any) -> str:
            child_id = original(self, *args, **kwargs)
            block_here("start")
            return child_id

        RunStore.insert_child = blocking  # type: ignore[method-assign]
    make_poller(sys.argv[1]).start()
