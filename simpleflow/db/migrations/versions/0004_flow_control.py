"""Flow control: limits in the database, concurrency keys, debounce keys.

- ``workflow_limit``: one row per type pattern (exact or ``prefix%``) with its
  concurrency, rate (count per seconds), circuit breaker threshold, paused flag
  and consecutive failures. Every worker reads it at claim time.
- ``workflow_limit_start``: the attempt starts a rate limit counts in its window.
- ``workflow_run.concurrency_key`` (at most one leased run per key, enforced by a
  partial unique index) and ``workflow_run.debounce_key`` (at most one pending,
  not-yet-started run per key).

Existing runs have neither key; nothing is rewritten.

Revision ID: 0004_flow_control
Revises: 0003_composition
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from alembic import op

revision = "0004_flow_control"
down_revision = "0003_composition"
branch_labels = None
depends_on = None

NOW = sa.text("CURRENT_TIMESTAMP")


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def _time(name: str, default: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=NOW if default else None)


def upgrade() -> None:
    op.add_column("workflow_run", sa.Column("concurrency_key", sa.String(255), nullable=True))
    op.add_column("workflow_run", sa.Column("debounce_key", sa.String(255), nullable=True))
    op.create_index(
        "ix_workflow_run_concurrency_key",
        "workflow_run",
        ["concurrency_key", "priority", "run_at"],
        **_partial("concurrency_key IS NOT NULL"),
    )
    op.create_index(
        "uq_workflow_run_concurrency_key_leased",
        "workflow_run",
        ["concurrency_key"],
        unique=True,
        **_partial("concurrency_key IS NOT NULL AND status = 'leased'"),
    )
    op.create_index(
        "uq_workflow_run_debounce_key",
        "workflow_run",
        ["debounce_key"],
        unique=True,
        **_partial("debounce_key IS NOT NULL AND status = 'pending'"),
    )
    op.create_table(
        "workflow_limit",
        sa.Column("pattern", sa.String(255), nullable=False),
        sa.Column("prefix", sa.String(255), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("rate_count", sa.Integer(), nullable=True),
        sa.Column("rate_seconds", sa.Float(), nullable=True),
        sa.Column("pause_after_failures", sa.Integer(), nullable=True),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("paused_reason", sa.String(64), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        _time("created_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("pattern", name="pk_workflow_limit"),
    )
    op.create_table(
        "workflow_limit_start",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("pattern", sa.String(255), nullable=False),
        _time("started_at", default=False),
        sa.PrimaryKeyConstraint("id", name="pk_workflow_limit_start"),
    )
    op.create_index("ix_workflow_limit_start_pattern", "workflow_limit_start", ["pattern", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_workflow_limit_start_pattern", table_name="workflow_limit_start")
    op.drop_table("workflow_limit_start")
    op.drop_table("workflow_limit")
    for index in ("uq_workflow_run_debounce_key", "uq_workflow_run_concurrency_key_leased"):
        op.drop_index(index, table_name="workflow_run")
    op.drop_index("ix_workflow_run_concurrency_key", table_name="workflow_run")
    op.drop_column("workflow_run", "debounce_key")
    op.drop_column("workflow_run", "concurrency_key")
