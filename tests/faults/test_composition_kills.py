"""Workflow trees whose workers are SIGKILLed at random (both databases).

Each tree (``worker.py trees``): a parent workflow starts three leaf runs and a branch
workflow that starts two leaves of its own; both wait for their children. Any
process may die at any moment: between a child's start and its record, while a
leaf runs, while a parent parks or is woken. Every tree must complete, and every
child must have been started exactly once (one row per ``start_child`` record).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import pytest
import sqlalchemy as sa

from simpleflow import Client
from simpleflow.db.schema import workflow_run, workflow_step

from . import tables
from .harness import Fleet, chaos, check_exactly_once, report, rows, scale, scaled, unfinished, wait_until

pytestmark = pytest.mark.faults

TREE, BRANCH, LEAF = "fault.tree.v1", "fault.branch.v1", "fault.leaf.v1"


def test_trees_complete_with_every_child_started_once_while_workers_die(
    client: Client, db_url: str, db_kind: str, tmp_path: Path
) -> None:
    n = scaled(20)
    tables.create(client.db)
    trees = client.submit_many([client.submit(TREE).with_max_attempts(50) for _ in range(n)])
    fleet = Fleet("trees", db_url, json.dumps({"lease": 2.0, "concurrency": 8}), tmp_path / "logs")
    started = time.monotonic()
    fleet.spawn(3)
    try:
        kills = chaos([fleet], until=lambda: unfinished(client) == 0, seconds=150 * scale())
        wait_until(lambda: unfinished(client) == 0, seconds=90, what="the last trees", fleets=[fleet])
    finally:
        fleet.stop()
    elapsed = time.monotonic() - started

    check_exactly_once(client, n * 7)  # a tree is 7 runs: parent, 3 leaves, branch, its 2 leaves
    r = workflow_run.c
    children: dict[str, set[str]] = defaultdict(set)
    types: dict[str, str] = {}
    for run_id, parent_id, type_ in rows(client, sa.select(r.id, r.parent_id, r.type)):
        types[run_id] = type_
        if parent_id is not None:
            children[parent_id].add(run_id)
    s = workflow_step.c
    started_by: dict[str, set[str]] = defaultdict(set)
    for run_id, child_id in rows(client, sa.select(s.run_id, s.result).where(s.kind == "child")):
        started_by[run_id].add(child_id)
    branches = [i for i, t in types.items() if t == BRANCH]
    assert len(branches) == n
    for parent in [*trees, *branches]:
        # exactly the children its records name: none started twice, none lost
        assert children[parent] == started_by[parent], (
            f"run {parent}: rows {children[parent]}, records {started_by[parent]}"
        )
        expected = 4 if parent in trees else 2
        assert len(children[parent]) == expected, f"run {parent} has {len(children[parent])} children"
    for tree in trees:
        result = client.get_run(tree).result
        assert result == {
            "leaves": [{"leaf": 0}, {"leaf": 1}, {"leaf": 2}],
            "branch": {"leaves": [{"leaf": 10}, {"leaf": 11}]},
        }

    # Leaves are at-least-once: a repeat is only allowed when the earlier executor was killed.
    ex = tables.fault_exec.c
    pids: dict[str, list[int]] = defaultdict(list)
    for run_id, pid in rows(client, sa.select(ex.run_id, ex.pid).where(ex.name == "leaf").order_by(ex.id)):
        pids[run_id].append(pid)
    assert len(pids) == n * 5
    repeated = {k: v for k, v in pids.items() if len(v) > 1}
    unexplained = {k: v for k, v in repeated.items() if not set(v[:-1]) <= fleet.killed}
    assert not unexplained, f"leaves repeated without a killed worker: {list(unexplained.items())[:5]}"
    report(
        "composition_sigkill",
        db=db_kind,
        trees=n,
        runs=n * 7,
        children_started=sum(len(c) for c in children.values()),
        leaf_executions=sum(len(v) for v in pids.values()),
        leaves_executed_more_than_once=len(repeated),
        kills=kills,
        seconds=round(elapsed, 1),
    )
