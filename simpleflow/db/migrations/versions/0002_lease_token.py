"""Fencing tokens, deadlines, ids by default, exact JSON on SQLite.

- ``workflow_run.lease_token``: a per-run counter every claim increments; every
  write of a worker is fenced by (run id, token). Existing runs start at 0.
- ``workflow_run.deadline_at``: a run's overall deadline (``with_deadline``).
- ``workflow_run.id`` gets a server default (time-ordered on PostgreSQL), so a
  plain ``INSERT INTO workflow_run (type, payload) VALUES (...)`` works.
- SQLite: JSON columns are declared TEXT. A column declared ``JSON`` has NUMERIC
  affinity in SQLite, which turned a payload like ``18446744073709551617`` into
  a float. The declared types are rewritten in place (SQLite's documented
  ``writable_schema`` procedure for changes that leave the stored rows as they
  are), not by rebuilding ``workflow_run``: dropping it would cascade to its events.
- ``workflow_registry.health``: background services of a worker that keep failing.
- Indexes for the next due time and for deadlines.

Revision ID: 0002_lease_token
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0002_lease_token"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

WAITING = "status IN ('pending', 'sleeping', 'waiting')"
JSON_COLUMNS = {
    "workflow_run": ("payload", "result"),
    "workflow_event": ("detail",),
    "workflow_registry": ("types", "prefixes", "health"),
    "workflow_schedule": ("payload",),
    "workflow_step": ("result", "error"),
    "workflow_signal": ("payload",),
}
PG_UUID7 = (
    "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing "
    "substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3) "
    "from 1 for 6), 52, 1), 53, 1), 'hex')::uuid"
)
SQLITE_UUID4 = (
    "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))))"
)
ID_PLAIN = "id VARCHAR(36) NOT NULL"
ID_DEFAULT = f"id VARCHAR(36) DEFAULT {SQLITE_UUID4} NOT NULL"


def _json() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def upgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    op.add_column("workflow_run", sa.Column("lease_token", sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("workflow_run", sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("workflow_registry", sa.Column("health", _json(), nullable=True))
    op.create_index("ix_workflow_run_next", "workflow_run", ["run_at"], **_partial(WAITING))
    op.create_index("ix_workflow_run_deadline", "workflow_run", ["deadline_at"], **_partial("deadline_at IS NOT NULL"))
    if sqlite:
        _rewrite_sqlite_schema(to_text=True)
    else:
        op.alter_column("workflow_run", "id", server_default=sa.text(PG_UUID7))


def downgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    if sqlite:
        _rewrite_sqlite_schema(to_text=False)
    else:
        op.alter_column("workflow_run", "id", server_default=None)
    op.drop_index("ix_workflow_run_deadline", table_name="workflow_run")
    op.drop_index("ix_workflow_run_next", table_name="workflow_run")
    op.drop_column("workflow_run", "deadline_at")
    op.drop_column("workflow_run", "lease_token")
    op.drop_column("workflow_registry", "health")


def _rewrite_sqlite_schema(*, to_text: bool) -> None:
    """Change declared column types and the id default in sqlite_schema, as SQLite documents
    for changes that leave every stored row as it is; then bump the schema version."""
    conn = op.get_bind()
    for table, columns in JSON_COLUMNS.items():
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).scalar()
        if sql is None:
            continue
        for name in columns:
            old, new = ("JSON", "TEXT") if to_text else ("TEXT", "JSON")
            sql = re.sub(rf"(\s{name}) {old}\b", rf"\1 {new}", sql)
        if table == "workflow_run":
            sql = sql.replace(ID_PLAIN, ID_DEFAULT) if to_text else sql.replace(ID_DEFAULT, ID_PLAIN)
        version = conn.exec_driver_sql("PRAGMA schema_version").scalar()
        conn.exec_driver_sql("PRAGMA writable_schema = ON")
        conn.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", (sql, table))
        conn.exec_driver_sql(f"PRAGMA schema_version = {int(version or 0) + 1}")
        conn.exec_driver_sql("PRAGMA writable_schema = OFF")
