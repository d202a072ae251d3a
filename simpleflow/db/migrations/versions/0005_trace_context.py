"""Tracing: the submitter's W3C trace context, stored with the run.

- ``workflow_run.trace_context``: the ``traceparent``/``tracestate`` of the span that
  submitted the run (JSON text), NULL when the submitter was not tracing. A worker's
  span for each attempt is a child of it, so one trace runs from the producer's
  request to every attempt in another process.

Existing runs have no trace context; nothing is rewritten.

Revision ID: 0005_trace_context
Revises: 0004_flow_control
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0005_trace_context"
down_revision = "0004_flow_control"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workflow_run", sa.Column("trace_context", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("workflow_run", "trace_context")
