"""A workflow worker killed with SIGKILL mid-run; another worker resumes it (both databases).

The worker is a real separate process: this file run as a script
(``python test_workflow_crash.py URL WORKFLOW DIR``) starts a ``Poller``. With
``SIMPLEFLOW_CRASH_BLOCK=1`` the step named in the input blocks forever after its
side effect and writes ``DIR/blocked``; the test then kills the process. Every
step execution appends its name to ``DIR/calls`` (outside any transaction), so
the test can count executions across processes.
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
import sqlalchemy as sa

from simpleflow.client import Client
from simpleflow.worker.poller import Poller, running
from simpleflow.workflow.context import WorkflowContext

pytestmark = pytest.mark.faults

BLOCK_ENV = "SIMPLEFLOW_CRASH_BLOCK"


def side_effect(name: str, directory: str) -> str:
    """Count this execution, then block forever if this worker is the one to be killed here."""
    with open(os.path.join(directory, "calls"), "a") as f:
        f.write(name + "\n")
    _maybe_block(name, directory)
    return name


def reserve(conn: sa.Connection, table: str, directory: str) -> str:
    """The business write of a transactional step, then (maybe) death before the commit."""
    with open(os.path.join(directory, "calls"), "a") as f:
        f.write("reserve\n")
    conn.execute(sa.text(f"INSERT INTO {table} (id) VALUES ('order-1')"))
    _maybe_block("reserve", directory)
    return "reserved"


def _maybe_block(name: str, directory: str) -> None:
    if os.environ.get(BLOCK_ENV) == "1" and name == Path(directory, "block_at").read_text():
        Path(directory, "blocked").write_text(name)
        while True:
            time.sleep(60)


def three_steps(ctx: WorkflowContext, job: dict[str, str]) -> list[str]:
    return [ctx.step(f"step{i}", side_effect, f"step{i}", job["dir"]) for i in (1, 2, 3)]


def transactional(ctx: WorkflowContext, job: dict[str, str]) -> list[str]:
    return [
        ctx.step("before", side_effect, "before", job["dir"]),
        ctx.step("reserve", reserve, job["table"], job["dir"], transactional=True),
        ctx.step("after", side_effect, "after", job["dir"]),
    ]


WORKFLOWS = {"crash.three": three_steps, "crash.tx": transactional}


def make_poller(url: str | sa.Engine, schema: str | None = None) -> Poller:
    poller = (
        Poller(url, schema=schema)
        .with_lease_duration(timedelta(seconds=1))  # a dead worker's runs come back within a second
        .with_poll_interval(timedelta(milliseconds=100))
    )
    for type_, fn in WORKFLOWS.items():
        poller.handle_workflow(type_, fn)
    return poller


def calls(directory: Path) -> list[str]:
    path = directory / "calls"
    return path.read_text().split() if path.exists() else []


def kill_worker_at(
    client: Client, db_url: str, run_type: str, payload: dict[str, str], block_at: str, directory: Path
) -> str:
    """Submit a run, start a worker process, and SIGKILL it once it blocks inside ``block_at``."""
    (directory / "block_at").write_text(block_at)
    run_id = client.submit(run_type, payload).execute()
    proc = subprocess.Popen(
        [sys.executable, __file__, db_url],
        env={**os.environ, BLOCK_ENV: "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not (directory / "blocked").exists():
            assert proc.poll() is None, f"worker exited early: {proc.stdout.read().decode() if proc.stdout else ''}"
            assert time.monotonic() < deadline, "the worker never reached the blocking step"
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


def test_a_killed_worker_resumes_after_the_last_recorded_step(client: Client, db_url: str, tmp_path: Path) -> None:
    run_id = kill_worker_at(client, db_url, "crash.three", {"dir": str(tmp_path)}, "step3", tmp_path)
    assert calls(tmp_path) == ["step1", "step2", "step3"]
    assert [(s.name, s.status) for s in client.get_steps(run_id)] == [("step1", "completed"), ("step2", "completed")]

    assert resume(client, run_id) == ["step1", "step2", "step3"]
    # Steps 1-2 were recorded before the kill and not run again; step 3 was cut off
    # before its record, so it ran once more (at-least-once, recorded exactly once).
    assert calls(tmp_path) == ["step1", "step2", "step3", "step3"]
    assert [s.name for s in client.get_steps(run_id)] == ["step1", "step2", "step3"]
    events = [e.event_type for e in client.get_events(run_id)]
    assert "lease_expired" in events


def test_a_transactional_step_killed_before_commit_leaves_neither_write_nor_record(
    client: Client, db_url: str, tmp_path: Path
) -> None:
    table = f'"{client.db.schema}".app_orders' if client.db.schema else "app_orders"
    with client.db.engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (id VARCHAR(50) PRIMARY KEY)"))

    def rows() -> list[str]:
        with client.db.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text(f"SELECT id FROM {table}"))]

    payload = {"dir": str(tmp_path), "table": table}
    run_id = kill_worker_at(client, db_url, "crash.tx", payload, "reserve", tmp_path)
    assert calls(tmp_path) == ["before", "reserve"]  # the write was made, then the process died
    assert rows() == []
    assert [s.name for s in client.get_steps(run_id)] == ["before"]

    assert resume(client, run_id) == ["before", "reserved", "after"]
    assert calls(tmp_path) == ["before", "reserve", "reserve", "after"]
    assert rows() == ["order-1"]  # exactly once, with its record
    reserve_step = next(s for s in client.get_steps(run_id) if s.name == "reserve")
    assert (reserve_step.status, reserve_step.attempts, reserve_step.result) == ("completed", 1, "reserved")


if __name__ == "__main__":  # the worker process
    worker = make_poller(sys.argv[1])
    worker.start()
