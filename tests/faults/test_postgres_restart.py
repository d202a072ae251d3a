"""PostgreSQL restarted (fast and immediate shutdown) and its connections terminated while
workers drain runs (PostgreSQL only: it restarts the session's throwaway server).

Two worker processes (``worker.py jobs``, each with a schedule ticker) work through a
backlog a producer thread keeps topped up. After every fault the test measures how long
until runs complete again and the completion rate over the next seconds, checks that every
worker's LISTEN connection is back, and that the tickers fire a schedule made due after
the fault. The poll interval is 10 s, so prompt pick-up of a new run at the end proves the
LISTEN connections work, not the fallback poll.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import sqlalchemy as sa

from simpleflow import Client, SimpleflowError
from simpleflow.db.schema import workflow_run, workflow_schedule
from simpleflow.schedules import slot_key

from . import tables
from .harness import Fleet, check_exactly_once, executions, report, rows, scale, unexplained_duplicates, wait_until

pytestmark = pytest.mark.faults

JOB = "fault.job.v1"
T = TypeVar("T")
WORKERS = 2
MEASURE = 3.0  # seconds per throughput window


@pytest.fixture
def pg_url(pg_cluster: Any) -> Iterator[tuple[Any, str]]:
    """A database of its own on the restartable cluster; the server is left running."""
    name = f"faults_{uuid.uuid4().hex[:10]}"
    url = pg_cluster.create_database(name)
    try:
        yield pg_cluster, url
    finally:
        if not pg_cluster.is_running():
            pg_cluster.start()
        pg_cluster.drop_database(name)


def patiently(fn: Callable[[], T], seconds: float = 60.0) -> T:
    """Call ``fn`` until the database answers (it may be restarting)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except (SimpleflowError, sa.exc.DBAPIError, psycopg.Error):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def succeeded(client: Client) -> int:
    run = workflow_run.c
    stmt = sa.select(sa.func.count()).select_from(workflow_run).where(run.status == "succeeded")
    return int(patiently(lambda: rows(client, stmt))[0][0])


def listeners(url: str) -> int:
    def read() -> int:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN %'"
            ).fetchone()
        return int(row[0]) if row else 0

    return patiently(read)


def terminate_backends(url: str) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(killed[0]) if killed else 0


class Producer(threading.Thread):
    """Keeps about ``backlog`` runs pending; rides out the outages (and counts the failures)."""

    def __init__(self, client: Client, backlog: int) -> None:
        super().__init__(daemon=True)
        self.client, self.backlog = client, backlog
        self.ids: list[str] = []
        self.failures = 0
        self.halt = threading.Event()

    def run(self) -> None:
        run = workflow_run.c
        pending = sa.select(sa.func.count()).select_from(workflow_run).where(run.status == "pending")
        while not self.halt.wait(0.1):
            try:
                if int(rows(self.client, pending)[0][0]) < self.backlog:
                    self.ids += self.client.submit_many(
                        [self.client.submit(JOB, {"n": len(self.ids) + i}).with_max_attempts(20) for i in range(200)]
                    )
            except SimpleflowError:
                self.failures += 1


def rate(client: Client, seconds: float = MEASURE) -> float:
    before, start = succeeded(client), time.monotonic()
    time.sleep(seconds)
    return (succeeded(client) - before) / (time.monotonic() - start)


def fire_fresh_schedule(client: Client) -> str:
    """A schedule whose current minute is due now (and was never fired): a live ticker fires it within a tick."""
    sid = patiently(lambda: client.schedule(JOB, {"scheduled": True}).cron("* * * * *").create())
    with client.db.engine.connect() as conn:
        now: datetime = conn.execute(sa.select(sa.func.now())).scalar_one()
    slot = now.astimezone(timezone.utc).replace(second=0, microsecond=0)

    def move() -> None:
        with client.db.engine.begin() as conn:
            conn.execute(
                sa.update(workflow_schedule).where(workflow_schedule.c.id == sid).values(next_run_at=slot),
                execution_options=client.db.exec_options,
            )

    patiently(move)
    return slot_key(sid, slot)


def test_restarts_and_killed_connections_are_survived_and_throughput_returns(
    pg_url: tuple[Any, str], tmp_path: Path
) -> None:
    cluster, base = pg_url
    url = f"{base}?schema=faults"
    client = Client(url)
    client.auto_migrate()
    tables.create(client.db)
    options = {"lease": 2.0, "poll": 10.0, "concurrency": 4, "sleep": 0.05, "ticker": True, "tick": 0.2}
    fleet = Fleet("jobs", url, json.dumps(options), tmp_path / "logs")
    producer = Producer(client, backlog=600)
    faults: list[tuple[str, Callable[[], object]]] = [
        ("restart_fast", lambda: cluster.restart("fast")),
        ("restart_immediate", lambda: cluster.restart("immediate")),
        ("terminate_backends", lambda: terminate_backends(base)),
    ] * max(1, round(scale()))
    measured: list[str] = []
    keys: list[str] = []
    started = time.monotonic()
    producer.start()
    fleet.spawn(WORKERS)
    try:
        wait_until(
            lambda: listeners(base) == WORKERS and succeeded(client) > 100,
            seconds=60,
            what="the workers to start",
            fleets=[fleet],
        )
        baseline = rate(client)
        assert baseline > 20, f"baseline throughput {baseline:.0f} runs/s is too low to compare"
        for name, fault in faults:
            done_before = succeeded(client)
            fault()
            fault_done = time.monotonic()
            wait_until(
                lambda done_before=done_before: succeeded(client) > done_before + 10,
                seconds=60,
                what=f"completions after {name}",
                fleets=[fleet],
            )
            recovery = time.monotonic() - fault_done
            after = rate(client)
            assert after >= 0.5 * baseline, f"after {name}: {after:.0f} runs/s, baseline {baseline:.0f} runs/s"
            wait_until(
                lambda: listeners(base) == WORKERS, seconds=30, what=f"LISTEN connections after {name}", fleets=[fleet]
            )
            key = fire_fresh_schedule(client)
            keys.append(key)
            wait_until(
                lambda key=key: rows(client, sa.select(workflow_run.c.id).where(workflow_run.c.idempotency_key == key)),
                seconds=30,
                what=f"the ticker to fire after {name}",
                fleets=[fleet],
            )
            measured.append(f"{name}:recovered_in={recovery:.1f}s,rate={after:.0f}/s")
        producer.halt.set()
        producer.join(30)
        wait_until(
            lambda: (
                not rows(
                    client,
                    sa.select(workflow_run.c.id)
                    .where(workflow_run.c.status.not_in(("succeeded", "failed", "cancelled")))
                    .limit(1),
                )
            ),
            seconds=90,
            what="the backlog to drain",
            fleets=[fleet],
        )
        # Idle workers wait up to 10 s between polls: a run picked up within 3 s was announced
        # through a LISTEN connection that survived (was re-established after) every fault.
        time.sleep(1.0)
        latencies = []
        for _ in range(3):
            probe = client.submit(JOB, {"probe": True}).execute()
            t = time.monotonic()
            assert client.wait(probe, timedelta(seconds=15)).status == "succeeded"
            latencies.append(time.monotonic() - t)
            time.sleep(0.5)
        assert max(latencies) < 3.0, f"pick-up latencies after the faults: {latencies} (poll interval 10 s)"
    finally:
        producer.halt.set()
        fleet.stop()
        if not cluster.is_running():
            cluster.start()
    elapsed = time.monotonic() - started

    total = int(rows(client, sa.select(sa.func.count()).select_from(workflow_run))[0][0])
    events = check_exactly_once(client, total)
    ids = {r[0] for r in rows(client, sa.select(workflow_run.c.id))}
    assert set(producer.ids) <= ids, "a run the producer was given an id for is missing"
    fired = {
        r[0]
        for r in rows(
            client, sa.select(workflow_run.c.idempotency_key).where(workflow_run.c.idempotency_key.is_not(None))
        )
    }
    assert set(keys) <= fired
    ran = executions(client)
    assert set(ran) == ids
    duplicates, unexplained = unexplained_duplicates(ran, events, None)
    assert not unexplained, "\n".join(unexplained[:5])
    client.close()
    report(
        "postgres_restart",
        db="postgresql",
        runs=total,
        baseline_rate=f"{baseline:.0f}/s",
        faults=len(faults),
        runs_executed_more_than_once=duplicates,
        producer_failures=producer.failures,
        pickup_latency=f"{max(latencies):.2f}s",
        seconds=round(elapsed, 1),
        **{"after": ";".join(measured)},
    )
