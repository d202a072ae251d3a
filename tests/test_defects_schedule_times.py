"""A schedule whose ``next_run_at`` was written by plain SQL in the database's own time
formats fires and advances (issue 11): on SQLite ``datetime('now', '-1 minute')`` gives
``YYYY-MM-DD HH:MM:SS`` and ``strftime('%Y-%m-%d %H:%M:%f', …)`` three fraction digits,
while simpleflow writes six, and the ticker compared the texts."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from simpleflow import Client, ScheduleTicker
from simpleflow.db.dialect_sql import db_now
from simpleflow.db.schema import workflow_run
from simpleflow.store import Store

# (id, SQLite expression one minute ago, PostgreSQL expression one minute ago)
FORMATS = [
    ("sqlite-datetime", "datetime('now', '-1 minute')", "now() - interval '1 minute'"),
    (
        "sqlite-strftime-ms",
        "strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 minute')",
        "statement_timestamp() - interval '1 minute'",
    ),
    (
        "sqlite-strftime-iso-t",
        "strftime('%Y-%m-%dT%H:%M:%S', 'now', '-1 minute')",
        "(now() - interval '1 minute')::text::timestamptz",
    ),
    (
        "sqlite-minutes-only",
        "strftime('%Y-%m-%d %H:%M', 'now', '-1 minute')",
        "date_trunc('minute', now()) - interval '1 minute'",
    ),
]


def _db_now(client: Client) -> datetime:
    with client.db.engine.connect() as conn:
        value: datetime = conn.execute(sa.select(db_now())).scalar_one()
    return value


def _runs_of(client: Client, schedule_id: str) -> int:
    stmt = (
        sa.select(sa.func.count())
        .select_from(workflow_run)
        .where(workflow_run.c.idempotency_key.like(f"schedule:{schedule_id}:%"))
    )
    with client.db.engine.connect() as conn:
        return int(conn.execute(stmt, execution_options=client.db.exec_options).scalar_one())


def _table(client: Client) -> str:
    return f'"{client.db.schema}".workflow_schedule' if client.db.schema else "workflow_schedule"


def _assert_fires_once_and_advances(client: Client, schedule_id: str) -> None:
    before = _db_now(client)
    with ScheduleTicker(client.db) as ticker:  # the database clock, as in production
        assert ticker.tick() == 1, "the due schedule did not fire"
        assert ticker.tick() == 0, "it fired twice for one slot"
    assert _runs_of(client, schedule_id) == 1
    after = client.get_schedule(schedule_id).next_run_at
    assert after > before, f"next_run_at did not advance past now ({after} <= {before})"
    assert after - before <= timedelta(minutes=1, seconds=5)


@pytest.mark.parametrize(("name", "sqlite_expr", "pg_expr"), FORMATS, ids=[f[0] for f in FORMATS])
def test_next_run_at_updated_by_plain_sql_fires(client: Client, name: str, sqlite_expr: str, pg_expr: str) -> None:
    sid = client.schedule("sql.time.v1", {}).cron("* * * * *").create()
    expr = sqlite_expr if (client.db.dialect.name == "sqlite") else pg_expr
    with client.db.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {_table(client)} SET next_run_at = {expr} WHERE id = :id"), {"id": sid})
    _assert_fires_once_and_advances(client, sid)


@pytest.mark.parametrize(("name", "sqlite_expr", "pg_expr"), FORMATS, ids=[f[0] for f in FORMATS])
def test_schedule_inserted_by_plain_sql_fires(client: Client, name: str, sqlite_expr: str, pg_expr: str) -> None:
    sid = str(uuid.uuid4())
    expr = sqlite_expr if (client.db.dialect.name == "sqlite") else pg_expr
    with client.db.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO {_table(client)} (id, type, payload, cron_expr, next_run_at) "
                f"VALUES (:id, 'sql.insert.v1', '{{}}', '* * * * *', {expr})"
            ),
            {"id": sid},
        )
    _assert_fires_once_and_advances(client, sid)


def test_due_schedules_query_still_uses_the_index_on_sqlite(client: Client) -> None:
    if client.db.dialect.name != "sqlite":
        pytest.skip("SQLite's query plan")
    store = Store(client.db).schedules
    seen: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "workflow_schedule" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    now = _db_now(client)
    sa.event.listen(client.db.engine, "before_cursor_execute", capture)
    try:
        client.db.run(lambda conn: store.claim_due(conn, now, 10))
    finally:
        sa.event.remove(client.db.engine, "before_cursor_execute", capture)
    (statement,) = seen
    params = tuple(now.replace(tzinfo=None).isoformat(" ") if i == 0 else 10 for i in range(statement.count("?")))
    with client.db.engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params))
    assert "ix_workflow_schedule_due" in plan, plan
