"""Several workers migrating the same fresh database at once all succeed (issue 11).

PostgreSQL: concurrent ``CREATE SCHEMA IF NOT EXISTS`` / ``CREATE TABLE`` raced on
pg_namespace/pg_type unique keys and most processes died with ``MigrationError``.
SQLite: switching a fresh file to WAL failed at once with "database is locked"
while another process held it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from simpleflow import Client

REPO = Path(__file__).resolve().parent.parent
PROCESSES = 6

# Every process waits for the same instant, then opens the database and migrates it the
# way a worker does (Poller.with_auto_migrate runs the same migrate() on start).
SCRIPT = """
import sys, time
start = float(sys.argv[2])
from simpleflow import Client, migrate
while time.time() < start:
    time.sleep(0.001)
migrate(sys.argv[1])
with Client(sys.argv[1]) as client:
    client.auto_migrate()
    print(client.submit("migrated.v1", {}).execute())
"""


def _migrate_at_once(url: str) -> list[str]:
    start = time.time() + 3.0  # past every interpreter's start-up
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, url, repr(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for _ in range(PROCESSES)
    ]
    ids = []
    failures = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            lines = [line for line in err.splitlines() if "Error" in line] or err.strip().splitlines() or [""]
            failures.append(f"exit {proc.returncode}: {lines[-1]}")
        else:
            ids.append(out.strip())
    assert not failures, f"{len(failures)} of {PROCESSES} processes failed: {failures}"
    return ids


def test_concurrent_migrations_of_a_fresh_database_all_succeed(db_url: str) -> None:
    for _ in range(2):  # a race: twice, each on a brand-new database
        ids = _migrate_at_once(db_url)
        with Client(db_url) as client:
            assert sorted(r.id for r in client.list_runs(type="migrated.v1")) == sorted(ids)
            assert len(set(ids)) == PROCESSES
        _reset(db_url)


def _reset(db_url: str) -> None:
    """Make the database fresh again for the next round."""
    if db_url.startswith("sqlite"):
        path = Path(db_url[len("sqlite:///") :])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return
    schema = db_url.split("schema=", 1)[1]
    engine = sa.create_engine(db_url.split("?", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


def test_opening_a_fresh_sqlite_file_waits_while_another_process_writes_it(tmp_path: Path) -> None:
    """Switching to WAL needs an exclusive lock, and SQLite answers "database is locked"
    at once, without calling the busy handler, while another connection holds a write
    lock on a file still in rollback-journal mode: what a process opening a fresh file
    meets while another one is switching the same file to WAL. Here that write lock is
    held for half a second."""
    import sqlite3
    import threading

    path = tmp_path / "fresh.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE other_app (x)")  # a file still in rollback-journal mode
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO other_app VALUES (1)")  # holds the RESERVED lock until COMMIT
    release = threading.Timer(0.5, lambda: writer.execute("COMMIT"))
    release.start()
    try:
        began = time.monotonic()
        with Client(f"sqlite:///{path}") as client:
            client.auto_migrate()  # failed at once: "database is locked"
            run_id = client.submit("fresh.v1", {}).execute()
            assert client.get_run(run_id).status == "pending"
        assert 0.4 <= time.monotonic() - began < 20  # it waited for the writer
    finally:
        release.join()
        writer.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
