"""Workers SIGKILLed at random while they drain runs; submitters racing on idempotency keys.

Both on SQLite and PostgreSQL. The workers are real processes (``worker.py jobs``) with
2-second leases; a chaos loop SIGKILLs one every ~0.5 s and starts a replacement.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from simpleflow import Client
from simpleflow.db.schema import workflow_run

from . import tables
from .harness import (
    Fleet,
    chaos,
    check_exactly_once,
    executions,
    report,
    rows,
    scale,
    scaled,
    unexplained_duplicates,
    unfinished,
    wait_until,
)

pytestmark = pytest.mark.faults

JOB = "fault.job.v1"
#: enough attempts that a run hit by several kills in a row is never failed for it
ATTEMPTS = 50


def submit(client: Client, n: int, batch: int = 500) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, batch):
        ids += client.submit_many(
            [client.submit(JOB, {"i": i}).with_max_attempts(ATTEMPTS) for i in range(start, min(n, start + batch))]
        )
    return ids


def test_sigkilled_workers_lose_nothing_and_record_every_run_once(
    client: Client, db_url: str, db_kind: str, tmp_path: Path
) -> None:
    n = scaled(1000 if db_kind == "postgresql" else 500)
    tables.create(client.db)
    ids = submit(client, n)
    fleet = Fleet("jobs", db_url, json.dumps({"lease": 2.0, "concurrency": 4, "sleep": 0.05}), tmp_path / "logs")
    started = time.monotonic()
    fleet.spawn(3)
    try:
        kills = chaos([fleet], until=lambda: unfinished(client) == 0, seconds=150 * scale())
        wait_until(lambda: unfinished(client) == 0, seconds=60, what="the last runs", fleets=[fleet])
    finally:
        fleet.stop()
    elapsed = time.monotonic() - started

    events = check_exactly_once(client, n)
    ran = executions(client)
    assert set(ran) == set(ids), "a run succeeded without its handler having run"
    duplicates, unexplained = unexplained_duplicates(ran, events, fleet.killed)
    assert not unexplained, "\n".join(unexplained[:5])
    expired = sum(1 for evs in events.values() for kind, _, _ in evs if kind == "lease_expired")
    assert kills >= 5 and expired > 0, f"the chaos did not hit running work ({kills} kills, {expired} expired leases)"
    report(
        "worker_sigkill",
        db=db_kind,
        runs=n,
        executions=sum(len(v) for v in ran.values()),
        runs_executed_more_than_once=duplicates,
        kills=kills,
        expired_leases=expired,
        processes=len(fleet.all),
        seconds=round(elapsed, 1),
    )


def test_racing_idempotent_submissions_under_worker_kills_make_one_run_per_key(
    client: Client, db_url: str, db_kind: str, tmp_path: Path
) -> None:
    keys = [f"order:{i}:'%_\\;--" for i in range(scaled(300))]  # SQL and LIKE metacharacters, on purpose
    tables.create(client.db)
    out = tmp_path / "ids"
    out.mkdir()
    workers = Fleet("jobs", db_url, json.dumps({"lease": 2.0, "concurrency": 4, "sleep": 0.02}), tmp_path / "logs")
    submitters = Fleet("submit", db_url, json.dumps({"keys": keys, "out": str(out), "passes": 2}), tmp_path / "logs")
    started = time.monotonic()
    workers.spawn(2)
    submitters.spawn(3)
    try:

        def done() -> bool:
            submitters.reap()
            return not submitters.alive and unfinished(client) == 0

        kills = chaos([workers], until=done, seconds=120 * scale())
        wait_until(done, seconds=60, what="the submitters and the last runs", fleets=[workers, submitters])
    finally:
        workers.stop()
        submitters.stop()
    elapsed = time.monotonic() - started

    run = workflow_run.c
    per_key = Counter(
        {
            k: int(c)
            for k, c in rows(client, sa.select(run.idempotency_key, sa.func.count()).group_by(run.idempotency_key))
        }
    )
    assert sum(per_key.values()) == len(keys) and set(per_key) == set(keys)
    assert max(per_key.values()) == 1
    holders = dict(rows(client, sa.select(run.idempotency_key, run.id)))
    answers = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(answers) == 3, f"a submitter did not finish:\n{submitters.tail()}"
    for answer in answers:
        assert answer == holders, "a submitter was given an id that is not the key's run"
    check_exactly_once(client, len(keys))
    report(
        "idempotency_race",
        db=db_kind,
        keys=len(keys),
        submissions=len(keys) * 2 * 3,
        runs=sum(per_key.values()),
        worker_kills=kills,
        seconds=round(elapsed, 1),
    )
