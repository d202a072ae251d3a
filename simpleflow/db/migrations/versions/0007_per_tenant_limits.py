"""Per-tenant limits: a flow-control limit whose numbers hold for each tenant on its own.

- ``workflow_limit.per_tenant`` (NOT NULL, default false): existing limits stay global.
- ``workflow_limit_start.tenant`` (NOT NULL, default ``'default'``): the tenant of the run
  whose start a rate limit counts; existing starts (at most one rate window old) belong
  to the default tenant.
- PostgreSQL: row-level security on ``workflow_limit_start`` with a read-only policy (a
  tenant's role sees its own starts, for ``list_limits``; only the owning role that runs
  the workers records them).

Revision ID: 0007_per_tenant_limits
Revises: 0006_tenants
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0007_per_tenant_limits"
down_revision = "0006_tenants"
branch_labels = None
depends_on = None

POLICY = "simpleflow_tenant"
SETTING = "current_setting('simpleflow.tenant', true)"


def upgrade() -> None:
    op.add_column(
        "workflow_limit", sa.Column("per_tenant", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.add_column("workflow_limit_start", sa.Column("tenant", sa.String(64), server_default="default", nullable=False))
    if op.get_context().dialect.name == "sqlite":
        return
    op.execute("ALTER TABLE workflow_limit_start ENABLE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY {POLICY} ON workflow_limit_start FOR SELECT USING (tenant = {SETTING})")


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        op.execute(f"DROP POLICY IF EXISTS {POLICY} ON workflow_limit_start")
        op.execute("ALTER TABLE workflow_limit_start DISABLE ROW LEVEL SECURITY")
    op.drop_column("workflow_limit_start", "tenant")
    op.drop_column("workflow_limit", "per_tenant")
