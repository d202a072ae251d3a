"""Day-two operations through the Python API: prune, Retention, bulk requeue, stats."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from simpleflow import admin
from simpleflow.client import Client
from simpleflow.core.attempt import WorkflowRun
from simpleflow.core.errors import NotFound, ValidationError
from simpleflow.db.database import Database
from simpleflow.db.schema import workflow_event, workflow_run, workflow_signal, workflow_step
from simpleflow.worker.poller import Poller
from simpleflow.worker.services import Service, health


def count(client: Client, table: sa.Table, **where: Any) -> int:
    stmt = sa.select(sa.func.count()).select_from(table)
    for column, value in where.items():
        col = table.c[column]
        stmt = stmt.where(col.in_(value) if isinstance(value, (list, tuple, set)) else col == value)
    with client.db.engine.connect() as conn:
        return int(conn.execute(stmt, execution_options=client.db.exec_options).scalar_one())


def age_runs(client: Client, ids: list[str], by: timedelta) -> None:
    """Pretend these runs last changed ``by`` ago (test-only SQL)."""
    with client.db.engine.begin() as conn:
        for run_id in ids:
            old = conn.execute(
                sa.select(workflow_run.c.updated_at).where(workflow_run.c.id == run_id),
                execution_options=client.db.exec_options,
            ).scalar_one()
            conn.execute(
                sa.update(workflow_run).where(workflow_run.c.id == run_id).values(updated_at=old - by),
                execution_options=client.db.exec_options,
            )


def ok(run: WorkflowRun) -> dict[str, str]:
    return {"ok": run.id}


def boom(run: WorkflowRun) -> None:
    raise RuntimeError("boom")


def finished_runs(client: Client, url: str, succeeded: int, failed: int, cancelled: int) -> dict[str, list[str]]:
    """Runs in each terminal status (processed by an in-process poller)."""
    ids = {
        "succeeded": [client.submit("ops.ok.v1", {"i": i}).execute() for i in range(succeeded)],
        "failed": [client.submit("ops.bad.v1", {"i": i}).with_max_attempts(1).execute() for i in range(failed)],
        "cancelled": [client.submit("ops.idle.v1", {"i": i}).execute() for i in range(cancelled)],
    }
    for run_id in ids["cancelled"]:
        client.cancel(run_id)
    with Poller(url) as poller:
        poller.handle_func("ops.ok.v1", ok).handle_func("ops.bad.v1", boom)
        poller.run_until_idle(timeout=timedelta(seconds=30))
    for status, run_ids in ids.items():
        assert all(client.get_run(r).status == status for r in run_ids)
    return ids


def test_prune_removes_only_old_finished_runs_with_their_records(client: Client, migrated_url: str) -> None:
    ids = finished_runs(client, migrated_url, succeeded=5, failed=2, cancelled=2)
    pending = client.submit("ops.idle.v1", {}).execute()
    recent = client.submit("ops.ok.v1", {}).execute()
    old = ids["succeeded"] + ids["failed"] + ids["cancelled"]
    age_runs(client, [*old, pending], timedelta(days=2))
    with Poller(migrated_url) as poller:  # one fresh succeeded run, not old
        poller.handle_func("ops.ok.v1", ok).run_until_idle(timeout=timedelta(seconds=30))
    gone = ids["succeeded"] + ids["cancelled"]
    with client.db.engine.begin() as conn:  # child rows of every kind, to see them go too
        conn.execute(
            workflow_step.insert(),
            [{"run_id": r, "name": "s", "seq": 1, "kind": "step", "status": "completed", "attempts": 1} for r in old],
            execution_options=client.db.exec_options,
        )
        conn.execute(
            workflow_signal.insert(),
            [{"run_id": r, "name": "go", "payload": {}} for r in old],
            execution_options=client.db.exec_options,
        )
    assert count(client, workflow_event, run_id=gone) > 0

    assert client.prune(timedelta(days=1), batch_size=2) == len(gone)

    for run_id in gone:
        with pytest.raises(NotFound):
            client.get_run(run_id)
    for table in (workflow_event, workflow_step, workflow_signal):
        assert count(client, table, run_id=gone) == 0
        assert count(client, table, run_id=ids["failed"]) > 0
    assert client.get_run(pending).status == "pending"  # old but unfinished: never touched
    assert client.get_run(recent).status == "succeeded"  # finished but not old
    assert all(client.get_run(r).status == "failed" for r in ids["failed"])  # status not chosen
    assert client.prune(timedelta(days=1)) == 0

    assert client.prune(timedelta(days=1), statuses=["failed"]) == 2
    assert count(client, workflow_run) == 2


def test_prune_runs_in_batches_each_its_own_transaction(client: Client, migrated_url: str) -> None:
    ids = finished_runs(client, migrated_url, succeeded=7, failed=0, cancelled=0)
    age_runs(client, ids["succeeded"], timedelta(hours=2))
    trace: list[str] = []

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM") and "workflow_run " in statement + " ":
            trace.append("delete-runs")

    sa.event.listen(client.db.engine, "before_cursor_execute", on_execute)
    sa.event.listen(client.db.engine, "commit", lambda conn: trace.append("commit"))
    assert client.prune(timedelta(hours=1), batch_size=3) == 7
    # batches of 3, 3 and 1 (a short batch ends the loop), each committed on its own
    assert trace[-6:] == ["delete-runs", "commit"] * 3
    assert trace.count("delete-runs") == 3
    assert count(client, workflow_run) == 0


def test_prune_deletes_children_when_foreign_keys_are_off(db_kind: str, migrated_url: str, tmp_path: Any) -> None:
    if db_kind != "sqlite":
        pytest.skip("PostgreSQL always enforces foreign keys")
    engine = sa.create_engine(migrated_url)  # a plain engine: SQLite's foreign_keys pragma is off
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
        with Client(engine) as client:
            ids = finished_runs(client, migrated_url, succeeded=3, failed=0, cancelled=0)["succeeded"]
            age_runs(client, ids, timedelta(days=3))
            assert count(client, workflow_event, run_id=ids) > 0
            assert client.prune(timedelta(days=1), batch_size=2) == 3
            assert count(client, workflow_event, run_id=ids) == 0
            assert count(client, workflow_run) == 0
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"older_than": timedelta(days=-1)}, "older_than must be >= 0"),
        ({"older_than": "30d"}, "older_than must be a datetime.timedelta or a number of seconds"),
        ({"older_than": "30"}, "older_than must be a datetime.timedelta or a number of seconds"),
        ({"older_than": -1}, "older_than must be >= 0"),
        ({"statuses": ["pending"]}, "'pending' is not allowed"),
        ({"statuses": []}, "non-empty list"),
        ({"batch_size": 0}, "batch_size must be between 1 and 10000"),
    ],
)
def test_prune_rejects_bad_input_and_changes_nothing(client: Client, kwargs: dict[str, Any], message: str) -> None:
    run_id = client.submit("ops.ok.v1", {}).execute()
    client.cancel(run_id)
    args: dict[str, Any] = {"older_than": timedelta(0)} | kwargs
    with pytest.raises(ValidationError, match=message):
        client.prune(**args)
    assert client.get_run(run_id).status == "cancelled"


def test_retention_rejects_bad_settings() -> None:
    with pytest.raises(ValidationError, match="retention interval must be > 0"):
        admin.Retention(timedelta(days=1), interval=timedelta(0))
    with pytest.raises(ValidationError, match="'leased' is not allowed"):
        admin.Retention(timedelta(days=1), statuses=("leased",))


def test_poller_with_retention_prunes_on_its_timer(client: Client, migrated_url: str) -> None:
    ids = finished_runs(client, migrated_url, succeeded=3, failed=1, cancelled=0)
    age_runs(client, ids["succeeded"] + ids["failed"], timedelta(days=10))
    poller = (
        Poller(migrated_url)
        .handle_func("ops.ok.v1", ok)
        .with_retention(timedelta(days=7), ("succeeded",), interval=timedelta(milliseconds=100))
    )
    thread = threading.Thread(target=poller.start, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while count(client, workflow_run, status="succeeded") and time.monotonic() < deadline:
            time.sleep(0.05)
        fresh = client.submit("ops.ok.v1", {}).execute()
        assert client.wait(fresh, timeout=timedelta(seconds=20)).status == "succeeded"
        time.sleep(0.3)  # a few more retention passes: the fresh run is not old enough
    finally:
        poller.stop()
        thread.join(30)
        poller.close()
    assert not thread.is_alive()
    assert count(client, workflow_run, id=ids["succeeded"]) == 0
    assert client.get_run(ids["failed"][0]).status == "failed"
    assert client.get_run(fresh).status == "succeeded"


def test_retention_survives_database_errors(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    db = Database.open(f"sqlite:///{tmp_path}/never-migrated.db")  # no tables: every pass fails
    retention = admin.Retention(timedelta(days=1), interval=timedelta(milliseconds=20))
    service = Service("retention", lambda: retention.prune_once(db), retention.interval.total_seconds())
    with caplog.at_level(logging.WARNING, logger="simpleflow.poller"):
        service.start()
        time.sleep(0.3)
        assert service.failures >= 3  # it kept trying, counting the failures in a row
        assert health([service])["retention"]["failures"] == service.failures
        service.stop()
    db.close()
    failures = [r for r in caplog.records if "retention failed" in r.getMessage()]
    assert len(failures) >= 3
    assert any(r.levelno == logging.ERROR for r in failures)  # repeated failures are errors, not noise


def test_requeue_in_batches(client: Client, migrated_url: str) -> None:
    ids = finished_runs(client, migrated_url, succeeded=1, failed=5, cancelled=2)
    other = client.submit("ops.other.v1", {}).with_max_attempts(1).execute()
    with Poller(migrated_url) as poller:
        poller.handle_func("ops.other.v1", boom).run_until_idle(timeout=timedelta(seconds=30))
    assert client.get_run(other).status == "failed"

    requeued = admin.requeue(client, ["failed"], type="ops.bad.v1", batch_size=2)
    assert sorted(requeued) == sorted(ids["failed"])
    for run_id in ids["failed"]:
        info = client.get_run(run_id)
        assert (info.status, info.attempt) == ("pending", 0)
        assert client.get_events(run_id)[-1].event_type == "requeued"
    assert client.get_run(other).status == "failed"  # another type
    assert all(client.get_run(r).status == "cancelled" for r in ids["cancelled"])  # another status

    assert sorted(admin.requeue(client, ["cancelled", "failed"])) == sorted(ids["cancelled"] + [other])
    assert admin.requeue(client, ["failed"]) == []
    with pytest.raises(ValidationError, match="'succeeded' is not allowed"):
        admin.requeue(client, ["succeeded"])


def test_stats(client: Client, migrated_url: str) -> None:
    empty = client.stats()
    assert (empty.queue, empty.oldest_due_age_seconds, empty.finished_last_hour, empty.workers) == ([], None, 0, [])
    finished_runs(client, migrated_url, succeeded=2, failed=1, cancelled=1)
    due = client.submit("ops.waiting.v1", {}).execute()
    client.submit("ops.waiting.v1", {}).run_in(timedelta(hours=1)).execute()
    time.sleep(0.2)
    poller = Poller(migrated_url).handle_func("ops.ok.v1", ok).with_worker_id("stats-worker")
    poller.with_lease_duration(timedelta(seconds=3))
    thread = threading.Thread(target=poller.start, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not client.stats().workers and time.monotonic() < deadline:
            time.sleep(0.05)
        s = client.stats()
    finally:
        poller.stop()
        thread.join(30)
        poller.close()
    assert [(q.type, q.status, q.count) for q in s.queue] == [("ops.waiting.v1", "pending", 2)]
    assert s.oldest_due_age_seconds is not None and 0.1 <= s.oldest_due_age_seconds < 30
    assert (s.finished_last_hour, s.succeeded_last_hour, s.failed_last_hour, s.cancelled_last_hour) == (4, 2, 1, 1)
    assert [w.worker_id for w in s.workers] == ["stats-worker"]
    assert s.workers[0].types == ["ops.ok.v1"] and s.workers[0].heartbeat_age_seconds < 60
    assert client.stats().workers == []  # unregistered on stop
    assert client.get_run(due).status == "pending"
