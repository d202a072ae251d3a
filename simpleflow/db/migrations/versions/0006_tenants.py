"""Multi-tenancy: every row belongs to a tenant; PostgreSQL enforces it with row-level security.

- ``tenant`` (NOT NULL, default ``'default'``) on workflow_run, workflow_event,
  workflow_schedule, workflow_step, workflow_signal and workflow_run_event: existing
  rows belong to the default tenant; nothing else is rewritten.
- Idempotency keys are unique per tenant: ``uq_workflow_run_tenant_idempotency_key``
  replaces ``uq_workflow_run_idempotency_key``; so are concurrency and debounce keys
  (``uq_workflow_run_concurrency_key_leased`` and ``uq_workflow_run_debounce_key`` gain
  the tenant as their first column).
- ``ix_workflow_run_tenant_due``: each tenant's due runs in claim order (the fair claim).
- PostgreSQL: row-level security ENABLEd (not FORCEd, so the owning role that runs
  workers and migrations is not bound by it) with one policy per table: a session sees
  the rows of the tenant in its ``simpleflow.tenant`` setting, and none when it is unset.
  ``workflow_registry`` has no tenant: other roles may read it (for ``stats``), not write.

Revision ID: 0006_tenants
Revises: 0005_trace_context
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from alembic import op

revision = "0006_tenants"
down_revision = "0005_trace_context"
branch_labels = None
depends_on = None

TENANT_TABLES = (
    "workflow_run",
    "workflow_event",
    "workflow_schedule",
    "workflow_step",
    "workflow_signal",
    "workflow_run_event",
)
DUE = "status IN ('pending', 'sleeping', 'waiting')"
LIVE_KEY = "idempotency_key IS NOT NULL AND deleted_at IS NULL"
KEYS = (
    ("uq_workflow_run_concurrency_key_leased", "concurrency_key", "concurrency_key IS NOT NULL AND status = 'leased'"),
    ("uq_workflow_run_debounce_key", "debounce_key", "debounce_key IS NOT NULL AND status = 'pending'"),
)
POLICY = "simpleflow_tenant"
SETTING = "current_setting('simpleflow.tenant', true)"


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def upgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    for table in TENANT_TABLES:
        op.add_column(table, sa.Column("tenant", sa.String(64), server_default="default", nullable=False))
    op.drop_index("uq_workflow_run_idempotency_key", table_name="workflow_run")
    op.create_index(
        "uq_workflow_run_tenant_idempotency_key",
        "workflow_run",
        ["tenant", "idempotency_key"],
        unique=True,
        **_partial(LIVE_KEY),
    )
    op.create_index("ix_workflow_run_tenant_due", "workflow_run", ["tenant", "priority", "run_at"], **_partial(DUE))
    for name, column, where in KEYS:  # concurrency and debounce keys are per tenant too
        op.drop_index(name, table_name="workflow_run")
        op.create_index(name, "workflow_run", ["tenant", column], unique=True, **_partial(where))
    if sqlite:
        return
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {POLICY} ON {table} USING (tenant = {SETTING}) WITH CHECK (tenant = {SETTING})")
    op.execute("ALTER TABLE workflow_registry ENABLE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY {POLICY} ON workflow_registry FOR SELECT USING (true)")


def downgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    if not sqlite:
        for table in (*TENANT_TABLES, "workflow_registry"):
            op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.drop_index("ix_workflow_run_tenant_due", table_name="workflow_run")
    for name, column, where in KEYS:
        op.drop_index(name, table_name="workflow_run")
        op.create_index(name, "workflow_run", [column], unique=True, **_partial(where))
    op.drop_index("uq_workflow_run_tenant_idempotency_key", table_name="workflow_run")
    op.create_index(
        "uq_workflow_run_idempotency_key", "workflow_run", ["idempotency_key"], unique=True, **_partial(LIVE_KEY)
    )
    for table in TENANT_TABLES:
        op.drop_column(table, "tenant")  # SQLite >= 3.35 drops a column in place
