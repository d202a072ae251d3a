"""Side tables the fault tests create next to simpleflow's own (same database, same schema).

They are written by handlers and steps in worker processes, outside simpleflow, so the
tests can count what really ran: ``fault_exec`` one row per handler or step execution,
``fault_business`` one row per business write of a transactional step (deliberately
without a unique constraint: exactly-once must come from simpleflow, not from the table).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from simpleflow.db.database import Database, is_transient

meta = sa.MetaData()

fault_exec = sa.Table(
    "fault_exec",
    meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("name", sa.String(64), nullable=False, server_default="handler"),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker_time", sa.Float),  # the worker's time.time() (skewed in the clock test)
    sa.Column("lease_left", sa.Float),  # lease_until - database now, read inside the handler
)

fault_business = sa.Table(
    "fault_business",
    meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)


def create(db: Database) -> None:
    with db.engine.begin() as conn:
        meta.create_all(conn.execution_options(**db.exec_options))


def insert_retrying(db: Database, table: sa.Table, row: dict[str, Any], timeout: float = 90.0) -> None:
    """Insert one row in its own transaction, riding out restarts and killed connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with db.engine.begin() as conn:
                conn.execute(table.insert().values(**row), execution_options=db.exec_options)
            return
        except sa.exc.DBAPIError as error:
            if not is_transient(error) or time.monotonic() > deadline:
                raise
        time.sleep(0.1)
