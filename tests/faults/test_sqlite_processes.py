"""Four processes submitting and working on one SQLite file at once (SQLite only).

Each process (``worker.py mixed``) submits its share of runs, singly and in batches,
while a Poller in the same process works on the shared file, and keeps reading until
every process's runs have succeeded. Any exception a public API raised is recorded.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from simpleflow import Client

from . import tables
from .harness import Fleet, check_exactly_once, executions, report, scale, scaled, wait_until

pytestmark = pytest.mark.faults

PROCESSES = 4


def test_four_processes_share_one_sqlite_file_without_lock_errors_or_losses(tmp_path: Path) -> None:
    selected = os.environ.get("SIMPLEFLOW_TEST_DB", "").strip().lower()
    if selected and selected != "sqlite":
        pytest.skip(f"SQLite-only test; this session runs SIMPLEFLOW_TEST_DB={selected}")
    url = f"sqlite:///{tmp_path}/shared.db"
    per_process = scaled(250)
    total = per_process * PROCESSES
    out = tmp_path / "out"
    out.mkdir()
    with Client(url) as client:
        client.auto_migrate()
        tables.create(client.db)
        fleets = [
            Fleet(
                "mixed",
                url,
                json.dumps(
                    {
                        "count": per_process,
                        "tag": f"p{i}",
                        "total": total,
                        "lease": 5.0,
                        "concurrency": 4,
                        "out": str(out / f"p{i}.json"),
                        "deadline": 150 * scale(),
                    }
                ),
                tmp_path / f"logs{i}",
            )
            for i in range(PROCESSES)
        ]
        started = time.monotonic()
        for fleet in fleets:
            fleet.spawn()
        try:
            wait_until(
                lambda: all(not f.alive for f in fleets),
                seconds=180 * scale(),
                what="the processes to finish",
                fleets=fleets,
            )
        finally:
            for fleet in fleets:
                fleet.stop()
        elapsed = time.monotonic() - started

        answers = [json.loads((out / f"p{i}.json").read_text()) for i in range(PROCESSES)]
        escaped = [e for a in answers for e in a["escaped"]]
        assert not escaped, f"errors reached the caller: {escaped[:5]}"
        submitted = [r for a in answers for r in a["submitted"]]
        assert len(submitted) == len(set(submitted)) == total
        check_exactly_once(client, total)
        ran = executions(client)
        assert set(ran) == set(submitted)
        locked_logged = sum(f.logged("database is locked") for f in fleets)
        tracebacks = sum(f.logged("Traceback") for f in fleets)
        assert tracebacks == 0, "\n".join(f.tail() for f in fleets)
    report(
        "sqlite_processes",
        processes=PROCESSES,
        runs=total,
        executions=sum(len(v) for v in ran.values()),
        lock_errors_escaped=len(escaped),
        lock_retries_logged=locked_logged,
        seconds=round(elapsed, 1),
    )
