"""Workflow composition: parent runs and published events.

- ``workflow_run.parent_id``: the run that started this one with ``ctx.start_child``
  (NULL for a top-level run), with a partial index for a parent's children.
- ``workflow_run_event``: the latest value a workflow published per key with
  ``ctx.set_event``, read by ``client.get_event``.

Existing runs are top-level runs; nothing is rewritten.

Revision ID: 0003_composition
Revises: 0002_lease_token
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0003_composition"
down_revision = "0002_lease_token"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    # TEXT affinity on SQLite (see 0002), JSONB on PostgreSQL.
    return sa.Text().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    uuid = sa.String(36) if sqlite else postgresql.UUID(as_uuid=False)
    op.add_column("workflow_run", sa.Column("parent_id", uuid, nullable=True))
    where = sa.text("parent_id IS NOT NULL")
    op.create_index(
        "ix_workflow_run_parent_id", "workflow_run", ["parent_id"], postgresql_where=where, sqlite_where=where
    )
    op.create_table(
        "workflow_run_event",
        sa.Column("run_id", uuid, nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("value", _json(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["workflow_run.id"], name="fk_workflow_run_event_run_id_workflow_run", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_workflow_run_event"),
    )


def downgrade() -> None:
    op.drop_table("workflow_run_event")
    op.drop_index("ix_workflow_run_parent_id", table_name="workflow_run")
    op.drop_column("workflow_run", "parent_id")
