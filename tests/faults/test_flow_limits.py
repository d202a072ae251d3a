"""Workers SIGKILLed while flow-control limits are saturated: no slot leaks, nothing lost.

Both on SQLite and PostgreSQL. A concurrency limit of 3 and a rate of 40/s govern the job
type; three worker processes (``worker.py jobs``, 1-second leases, 4 threads each) would
run 12 at once without it. A chaos loop SIGKILLs one every ~0.5 s and starts a
replacement. A sampler reads the number of leased runs all along: it never exceeds the
limit, a killed worker's slots come back when the reaper expires its leases, and every
run succeeds exactly once.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from simpleflow import Client

from . import tables
from .harness import Fleet, chaos, check_exactly_once, executions, report, scale, scaled, unfinished, wait_until

pytestmark = pytest.mark.faults

JOB = "fault.job.v1"
LIMIT = 3


def test_killed_workers_under_saturated_limits_leak_no_slot(
    client: Client, db_url: str, db_kind: str, tmp_path: Path
) -> None:
    n = scaled(80)
    tables.create(client.db)
    client.set_limit("fault.%", concurrency=LIMIT)
    client.set_limit(JOB, rate=(40, timedelta(seconds=1)))
    ids = client.submit_many([client.submit(JOB, {"i": i}).with_max_attempts(50) for i in range(n)])
    fleet = Fleet("jobs", db_url, json.dumps({"lease": 1.0, "concurrency": 4, "sleep": 0.05}), tmp_path / "logs")
    peak = 0
    samples = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, samples
        while not done.is_set():
            leased = next(x.leased for x in client.list_limits() if x.pattern == "fault.%")
            peak, samples = max(peak, leased), samples + 1
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    fleet.spawn(3)
    sampler.start()
    try:
        kills = chaos([fleet], until=lambda: unfinished(client) == 0, seconds=150 * scale())
        wait_until(lambda: unfinished(client) == 0, seconds=90, what="the last runs", fleets=[fleet])
    finally:
        done.set()
        sampler.join(timeout=10)
        fleet.stop()

    check_exactly_once(client, n)
    assert set(executions(client)) == set(ids), "a run succeeded without its handler having run"
    assert peak <= LIMIT, f"{peak} runs leased at once under a concurrency limit of {LIMIT}"
    assert peak == LIMIT, "the limit was never saturated: the test proved nothing"
    limits = {x.pattern: x for x in client.list_limits()}
    assert limits["fault.%"].leased == 0, "a slot leaked"
    assert kills >= 3
    report("limits_sigkill", db=db_kind, runs=n, kills=kills, peak_leased=peak, samples=samples)
