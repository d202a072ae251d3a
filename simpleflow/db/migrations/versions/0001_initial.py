"""The initial simpleflow schema: runs, events, workers, schedules, steps, signals.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

NOW = sa.text("CURRENT_TIMESTAMP")


def _json() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _uuid() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.String(length=36).with_variant(sa.UUID(as_uuid=False), "postgresql")


def _time(name: str, nullable: bool = False, default: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=NOW if default else None)


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def _bigint_pk() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False)


def upgrade() -> None:
    op.create_table(
        "workflow_run",
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("priority", sa.Integer(), server_default="100", nullable=False),
        _time("run_at", default=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("leased_by", sa.String(length=255), nullable=True),
        _time("lease_until", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("result", _json(), nullable=True),
        _time("created_at", default=True),
        _time("updated_at", default=True),
        _time("deleted_at", nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'leased', 'sleeping', 'waiting', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_workflow_run_status"),
        ),
        sa.CheckConstraint("max_attempts >= 1", name=op.f("ck_workflow_run_max_attempts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_run")),
    )
    op.create_index(
        "ix_workflow_run_due",
        "workflow_run",
        ["priority", "run_at"],
        **_partial("status IN ('pending', 'sleeping', 'waiting')"),
    )
    op.create_index(
        "ix_workflow_run_finished",
        "workflow_run",
        ["updated_at"],
        **_partial("status IN ('succeeded', 'failed', 'cancelled')"),
    )
    op.create_index("ix_workflow_run_lease", "workflow_run", ["lease_until"], **_partial("status = 'leased'"))
    op.create_index("ix_workflow_run_type_status", "workflow_run", ["type", "status"])
    op.create_index(
        "uq_workflow_run_idempotency_key",
        "workflow_run",
        ["idempotency_key"],
        unique=True,
        **_partial("idempotency_key IS NOT NULL AND deleted_at IS NULL"),
    )

    op.create_table(
        "workflow_event",
        _bigint_pk(),
        sa.Column("run_id", _uuid(), nullable=True),
        sa.Column("schedule_id", _uuid(), nullable=True),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("worker_id", sa.String(length=255), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("detail", _json(), nullable=True),
        _time("created_at", default=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["workflow_run.id"], name=op.f("fk_workflow_event_run_id_workflow_run"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_event")),
    )
    op.create_index("ix_workflow_event_run_id", "workflow_event", ["run_id", "id"])
    op.create_index("ix_workflow_event_schedule_id", "workflow_event", ["schedule_id", "id"])

    op.create_table(
        "workflow_registry",
        sa.Column("worker_id", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("types", _json(), nullable=False),
        sa.Column("prefixes", _json(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        _time("started_at", default=True),
        _time("heartbeat_at", default=True),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_workflow_registry")),
    )

    op.create_table(
        "workflow_schedule",
        sa.Column("id", _uuid(), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("cron_expr", sa.String(length=255), nullable=False),
        sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False),
        sa.Column("priority", sa.Integer(), server_default="100", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("missed", sa.String(length=16), server_default="latest", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        _time("next_run_at"),
        _time("last_run_at", nullable=True),
        _time("created_at", default=True),
        _time("updated_at", default=True),
        _time("deleted_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_schedule")),
    )
    op.create_index(
        "ix_workflow_schedule_due",
        "workflow_schedule",
        ["next_run_at"],
        **_partial("enabled AND deleted_at IS NULL"),
    )

    op.create_table(
        "workflow_step",
        sa.Column("run_id", _uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("result", _json(), nullable=True),
        sa.Column("error", _json(), nullable=True),
        _time("wake_at", nullable=True),
        _time("created_at", default=True),
        _time("updated_at", default=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["workflow_run.id"], name=op.f("fk_workflow_step_run_id_workflow_run"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "name", name=op.f("pk_workflow_step")),
    )

    op.create_table(
        "workflow_signal",
        _bigint_pk(),
        sa.Column("run_id", _uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("consumed_by", sa.String(length=255), nullable=True),
        _time("created_at", default=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["workflow_run.id"], name=op.f("fk_workflow_signal_run_id_workflow_run"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_signal")),
    )
    op.create_index("ix_workflow_signal_run_id", "workflow_signal", ["run_id", "name", "id"])


def downgrade() -> None:
    for table in (
        "workflow_signal",
        "workflow_step",
        "workflow_schedule",
        "workflow_registry",
        "workflow_event",
        "workflow_run",
    ):
        op.drop_table(table)
