"""The hot paths' executor (``Dialect.execute_hot``; on SQLite ``simpleflow.db.lean``: statements
compiled once and run on the raw sqlite3 connection) returns what SQLAlchemy returns and fails
as SQLAlchemy fails, so callers and the retry rules cannot tell the difference."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from simpleflow import Client
from simpleflow.db.database import is_transient
from simpleflow.db.dialect_sql import db_now
from simpleflow.db.schema import workflow_event, workflow_run

run = workflow_run.c


def test_hot_rows_equal_sqlalchemy_rows(client: Client) -> None:
    run_id = client.submit("lean.v1", {"a": [1, "x"], "b": None}).with_priority(7).execute()
    stmt = select_run()
    with client.db.begin() as conn:
        hot = client.db.dialect.execute_hot(conn, stmt, {"rid": run_id}, client.db.exec_options)
        plain = conn.execute(stmt, {"rid": run_id}, execution_options=client.db.exec_options).all()
    assert [tuple(r) for r in hot] == [tuple(r) for r in plain]
    assert hot[0].id == run_id and hot[0].payload == {"a": [1, "x"], "b": None} and hot[0].priority == 7
    assert hot[0].run_at.tzinfo is not None  # result processing (UTCDateTime) applied
    with client.db.begin() as conn:
        assert client.db.dialect.execute_hot(conn, stmt, {"rid": str(uuid.uuid4())}, client.db.exec_options) == []


def test_a_failing_hot_statement_raises_as_sqlalchemy_would(client: Client) -> None:
    stmt = workflow_event.insert().values(run_id=sa.bindparam("rid"), event_type="x", created_at=db_now())
    with pytest.raises(sa.exc.IntegrityError) as caught, client.db.begin() as conn:  # no such run
        client.db.dialect.execute_hot(conn, stmt, {"rid": str(uuid.uuid4())}, client.db.exec_options)
    assert not is_transient(caught.value)
    client.submit("lean.v1").execute()  # the connection went back to the pool usable


def select_run() -> sa.Select[tuple[str, object, int, object, int]]:
    return sa.select(run.id, run.payload, run.priority, run.run_at, run.attempt).where(
        run.id == sa.bindparam("rid"), run.status.in_(["pending", "leased"])
    )
