"""The examples run as a user runs them: a fresh interpreter, on SQLite and on PostgreSQL.

``run_example(name, db_url)`` runs ``examples/<name>`` with ``SIMPLEFLOW_DATABASE_URL``
set to the test's fresh database and returns the finished process (stdout and stderr
as text); it fails the test with the script's output if the exit code is not 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(
    name: str, db_url: str, *, timeout: float = 120, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` against ``db_url``; assert it exits 0."""
    env = {**os.environ, "SIMPLEFLOW_DATABASE_URL": db_url, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, (
        f"{name} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


def _table(stdout: str) -> dict[str, list[str]]:
    """The quickstart's table: type -> [status, attempts, result]."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run "))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        _id, type_, status, attempts, result = line.split(maxsplit=4)
        rows[type_] = [status, attempts, result]
    return rows


def test_quickstart(db_url: str) -> None:
    proc = run_example("quickstart.py", db_url)
    assert f"database: {db_url}" in proc.stdout
    assert "processed 6 attempts" in proc.stdout
    assert _table(proc.stdout) == {
        "demo.hello.v1": ["succeeded", "1/3", '{"greeting": "hello, ana"}'],
        "billing.invoice.v1": ["succeeded", "1/3", '{"total": 1550}'],
        "billing.charge.v1": ["succeeded", "2/3", '{"charged": "o_42"}'],
        "demo.broken.v1": ["failed", "2/2", "ValueError: this handler always fails"],
    }
    # The retry is logged with the run's id and type.
    assert "(billing.charge.v1): attempt 1 failed (ConnectionError: payment gateway timed out)" in proc.stderr


def test_quickstart_defaults_to_a_fresh_sqlite_file_in_the_temp_dir(tmp_path: Path) -> None:
    """Without SIMPLEFLOW_DATABASE_URL: twice in a row, and the second run starts from scratch."""
    env = {k: v for k, v in os.environ.items() if k != "SIMPLEFLOW_DATABASE_URL"}
    env["TMPDIR"] = str(tmp_path)  # tempfile.gettempdir() of the child
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / "quickstart.py")], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert f"database: sqlite:///{tmp_path}/simpleflow-quickstart.db" in proc.stdout
        assert len(_table(proc.stdout)) == 4


def test_fanout(db_url: str) -> None:
    proc = run_example("fanout.py", db_url)
    out = proc.stdout
    assert "stage while it runs: charged" in out or "stage while it runs: shipped" in out
    assert "run succeeded" in out and "stage at the end: shipped" in out
    assert "charged 4200, labels TRK-P1, TRK-P2, TRK-P3, cheapest ups" in out
    assert "4 children, all succeeded: example.charge.v1, example.ship.v1, example.ship.v1, example.ship.v1" in out
    assert "ship/all       child_wait completed" in out


def test_flow_control(db_url: str) -> None:
    proc = run_example("flow_control.py", db_url)
    assert "50 debounced submissions -> 1 run" in proc.stdout
    assert "paused: ['sync.%']" in proc.stdout
    assert "while paused, customer syncs ran: []" in proc.stdout
    assert "reindex ran once with {'n': 49}" in proc.stdout
    assert "partner charges: at most 2 at once (limit 2)" in proc.stdout
    assert "customer:42 syncs ran one at a time, in order: [0, 1, 2, 3]" in proc.stdout
    assert "limit partner.%: concurrency 2, rate 20/1.0s, breaker after 5 failures, paused=False" in proc.stdout
