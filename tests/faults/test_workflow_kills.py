"""Durable workflows whose workers are SIGKILLed at random (both databases).

Each workflow (``worker.py flows``) runs a step, a transactional step that writes one
row to an application table, a durable sleep, a wait for a signal the test sends from
outside with ``Client.signal`` at a random moment, and a last step.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from simpleflow import Client

from . import tables
from .harness import Fleet, chaos, check_exactly_once, report, rows, scale, scaled, unfinished, wait_until

pytestmark = pytest.mark.faults

FLOW = "fault.flow.v1"
EXPECTED_STEPS = [
    ("a/v1", "step", "completed"),
    ("reserve/v1", "step", "completed"),
    ("nap/v1", "sleep", "completed"),
    ("go/v1", "signal", "received"),
    ("c/v1", "step", "completed"),
]


def send_signals(client: Client, run_ids: list[str], seconds: float, stop: threading.Event) -> None:
    """Signal every run once, in random order, spread over ``seconds``."""
    order = random.sample(run_ids, len(run_ids))
    for i, run_id in enumerate(order):
        if stop.wait(seconds / len(order)):
            return
        client.signal(run_id, "go/v1", {"by": "ops", "i": i})


def test_workflows_survive_sigkilled_workers_with_each_step_recorded_once(
    client: Client, db_url: str, db_kind: str, tmp_path: Path
) -> None:
    n = scaled(80)
    tables.create(client.db)
    ids = client.submit_many(
        [client.submit(FLOW, {"nap_ms": random.randint(50, 400)}).with_max_attempts(50) for _ in range(n)]
    )
    fleet = Fleet("flows", db_url, json.dumps({"lease": 2.0, "concurrency": 8}), tmp_path / "logs")
    stop = threading.Event()
    signaller = threading.Thread(target=send_signals, args=(client, ids, min(20.0, 0.1 * n), stop), daemon=True)
    started = time.monotonic()
    fleet.spawn(3)
    signaller.start()
    try:
        kills = chaos([fleet], until=lambda: unfinished(client) == 0, seconds=150 * scale())
        wait_until(lambda: unfinished(client) == 0, seconds=60, what="the last workflows", fleets=[fleet])
    finally:
        stop.set()
        signaller.join(30)
        fleet.stop()
    elapsed = time.monotonic() - started

    check_exactly_once(client, n)
    for run_id in ids:
        steps = client.get_steps(run_id)
        assert [(s.name, s.kind, s.status) for s in steps] == EXPECTED_STEPS, f"run {run_id}: {steps}"
        info = client.get_run(run_id)
        assert info.result["approval"]["by"] == "ops" and info.result["a"] == "a/v1-done", info.result
    business = Counter(r[0] for r in rows(client, sa.select(tables.fault_business.c.run_id)))
    assert business == Counter({run_id: 1 for run_id in ids}), "a transactional step's write is missing or doubled"

    # Plain steps are at-least-once: a repeat is only allowed when the earlier executor was killed.
    ex = tables.fault_exec.c
    runs_of: dict[tuple[str, str], list[int]] = {}
    for run_id, name, pid in rows(client, sa.select(ex.run_id, ex.name, ex.pid).order_by(ex.id)):
        runs_of.setdefault((run_id, name), []).append(pid)
    assert {k for k in runs_of} == {(r, s) for r in ids for s in ("a/v1", "c/v1")}
    repeated = {k: pids for k, pids in runs_of.items() if len(pids) > 1}
    unexplained = {k: pids for k, pids in repeated.items() if not set(pids[:-1]) <= fleet.killed}
    assert not unexplained, f"steps repeated without a killed worker: {list(unexplained.items())[:5]}"
    report(
        "workflow_sigkill",
        db=db_kind,
        workflows=n,
        steps_recorded=n * len(EXPECTED_STEPS),
        business_writes=sum(business.values()),
        step_executions=sum(len(p) for p in runs_of.values()),
        steps_executed_more_than_once=len(repeated),
        kills=kills,
        seconds=round(elapsed, 1),
    )
