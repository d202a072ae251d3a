"""Every table simpleflow uses, one MetaData for PostgreSQL and SQLite.

Tables carry no schema name here; on PostgreSQL the schema from the URL
(default ``workflow``) is applied at execution time with
``schema_translate_map`` so the same compiled statements serve any schema.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DefaultClause,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from simpleflow.core.states import DUE_STATUSES, STATUSES, TERMINAL_STATUSES
from simpleflow.db.dialect_sql import UTCDateTime, bigint_pk, json_type, new_uuid, uuid_type

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

WAITING_STATUSES = DUE_STATUSES

_NOW = text("CURRENT_TIMESTAMP")

#: the tenant of rows written without one (``Client(url)``); a fixed value, not NULL, so
#: unique keys stay (tenant, key) and an unset session setting matches no row (RLS)
DEFAULT_TENANT = "default"


def _tenant() -> Column[str]:
    """Which tenant a row belongs to (``Client(url, tenant=...)``)."""
    return Column("tenant", String(64), nullable=False, server_default=DEFAULT_TENANT)


def _in(values: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


workflow_run = Table(
    "workflow_run",
    metadata,
    Column("id", uuid_type(), primary_key=True, server_default=DefaultClause(new_uuid())),
    Column("type", String(255), nullable=False),
    Column("payload", json_type(), nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("priority", Integer, nullable=False, server_default="100"),
    Column("run_at", UTCDateTime(), nullable=False, server_default=_NOW),
    Column("idempotency_key", String(255)),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False, server_default="3"),
    Column("leased_by", String(255)),
    Column("lease_until", UTCDateTime()),
    Column("last_error", Text),
    Column("result", json_type()),
    Column("created_at", UTCDateTime(), nullable=False, server_default=_NOW),
    Column("updated_at", UTCDateTime(), nullable=False, server_default=_NOW),
    Column("deleted_at", UTCDateTime()),
    # The fencing token: incremented by every claim, never refunded, reset or reused.
    Column("lease_token", BigInteger, nullable=False, server_default="0"),
    # The run's overall deadline (``with_deadline``): past it, it ends failed.
    Column("deadline_at", UTCDateTime()),
    # The run that started this one as a child (``ctx.start_child``); NULL for a top-level run.
    Column("parent_id", uuid_type()),
    # The submitter's W3C trace context (JSON text; ``core.tracing``), NULL when it was not tracing.
    Column("trace_context", Text),
    _tenant(),
    # Flow control: runs sharing a concurrency key are leased one at a time; a debounce key
    # names the one not-yet-started run later submissions with that key replace.
    Column("concurrency_key", String(255)),
    Column("debounce_key", String(255)),
    CheckConstraint(_in(STATUSES), name="status"),
    CheckConstraint("max_attempts >= 1", name="max_attempts"),
    # The claim of due work: an ordered scan of this partial index.
    Index(
        "ix_workflow_run_due",
        "priority",
        "run_at",
        postgresql_where=text(_in(WAITING_STATUSES)),
        sqlite_where=text(_in(WAITING_STATUSES)),
    ),
    # The next due time a poller sleeps until.
    Index(
        "ix_workflow_run_next",
        "run_at",
        postgresql_where=text(_in(WAITING_STATUSES)),
        sqlite_where=text(_in(WAITING_STATUSES)),
    ),
    # Runs with a deadline, for the reaper.
    Index(
        "ix_workflow_run_deadline",
        "deadline_at",
        postgresql_where=text("deadline_at IS NOT NULL"),
        sqlite_where=text("deadline_at IS NOT NULL"),
    ),
    # Expired leases, found by the reaper.
    Index(
        "ix_workflow_run_lease",
        "lease_until",
        postgresql_where=text("status = 'leased'"),
        sqlite_where=text("status = 'leased'"),
    ),
    # The fair claim across tenants: each tenant's due runs in priority order.
    Index(
        "ix_workflow_run_tenant_due",
        "tenant",
        "priority",
        "run_at",
        postgresql_where=text(_in(WAITING_STATUSES)),
        sqlite_where=text(_in(WAITING_STATUSES)),
    ),
    # An idempotency key belongs to at most one live run of a tenant.
    Index(
        "uq_workflow_run_tenant_idempotency_key",
        "tenant",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL AND deleted_at IS NULL"),
        sqlite_where=text("idempotency_key IS NOT NULL AND deleted_at IS NULL"),
    ),
    Index("ix_workflow_run_type_status", "type", "status"),
    # A key's queue, oldest first: the claim's "is this run the head of its key?" check.
    Index(
        "ix_workflow_run_concurrency_key",
        "concurrency_key",
        "priority",
        "run_at",
        postgresql_where=text("concurrency_key IS NOT NULL"),
        sqlite_where=text("concurrency_key IS NOT NULL"),
    ),
    # At most one leased run per concurrency key: the database's safety net under the claim.
    Index(
        "uq_workflow_run_concurrency_key_leased",
        "tenant",
        "concurrency_key",
        unique=True,
        postgresql_where=text("concurrency_key IS NOT NULL AND status = 'leased'"),
        sqlite_where=text("concurrency_key IS NOT NULL AND status = 'leased'"),
    ),
    # At most one not-yet-started run per debounce key (the claim clears the key).
    Index(
        "uq_workflow_run_debounce_key",
        "tenant",
        "debounce_key",
        unique=True,
        postgresql_where=text("debounce_key IS NOT NULL AND status = 'pending'"),
        sqlite_where=text("debounce_key IS NOT NULL AND status = 'pending'"),
    ),
    # A parent's children: cancellation cascade, wake-up of a waiting parent, list_runs(parent_id=).
    Index(
        "ix_workflow_run_parent_id",
        "parent_id",
        postgresql_where=text("parent_id IS NOT NULL"),
        sqlite_where=text("parent_id IS NOT NULL"),
    ),
    # Retention: finished runs by age.
    Index(
        "ix_workflow_run_finished",
        "updated_at",
        postgresql_where=text(_in(TERMINAL_STATUSES)),
        sqlite_where=text(_in(TERMINAL_STATUSES)),
    ),
)

workflow_event = Table(
    "workflow_event",
    metadata,
    Column("id", bigint_pk(), primary_key=True, autoincrement=True),
    Column("run_id", uuid_type(), ForeignKey("workflow_run.id", ondelete="CASCADE")),
    Column("schedule_id", uuid_type()),
    Column("event_type", String(32), nullable=False),
    Column("worker_id", String(255)),
    Column("attempt", Integer),
    Column("detail", json_type()),
    Column("created_at", UTCDateTime(), nullable=False, server_default=_NOW),
    _tenant(),
    Index("ix_workflow_event_run_id", "run_id", "id"),
    Index("ix_workflow_event_schedule_id", "schedule_id", "id"),
)

workflow_registry = Table(
    "workflow_registry",
    metadata,
    Column("worker_id", String(255), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("types", json_type(), nullable=False),
    Column("prefixes", json_type(), nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False, server_default=_NOW),
    Column("heartbeat_at", UTCDateTime(), nullable=False, server_default=_NOW),
    # Background services that keep failing: {"service": {"failures": n, "error": "..."}}.
    Column("health", json_type()),
)

workflow_schedule = Table(
    "workflow_schedule",
    metadata,
    Column("id", uuid_type(), primary_key=True),
    Column("type", String(255), nullable=False),
    Column("payload", json_type(), nullable=False),
    Column("cron_expr", String(255), nullable=False),
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("priority", Integer, nullable=False, server_default="100"),
    Column("max_attempts", Integer, nullable=False, server_default="3"),
    Column("missed", String(16), nullable=False, server_default="latest"),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("next_run_at", UTCDateTime(), nullable=False),
    Column("last_run_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False, server_default=_NOW),
    Column("updated_at", UTCDateTime(), nullable=False, server_default=_NOW),
    Column("deleted_at", UTCDateTime()),
    _tenant(),
    Index(
        "ix_workflow_schedule_due",
        "next_run_at",
        postgresql_where=text("enabled AND deleted_at IS NULL"),
        sqlite_where=text("enabled AND deleted_at IS NULL"),
    ),
)

# The replay layer: one record per step, timer, signal wait, deterministic value
# or version marker of a workflow run, keyed by the name the workflow gives it.
workflow_step = Table(
    "workflow_step",
    metadata,
    Column("run_id", uuid_type(), ForeignKey("workflow_run.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("result", json_type()),
    Column("error", json_type()),
    Column("wake_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False, server_default=_NOW),
    Column("updated_at", UTCDateTime(), nullable=False, server_default=_NOW),
    _tenant(),
)

workflow_signal = Table(
    "workflow_signal",
    metadata,
    Column("id", bigint_pk(), primary_key=True, autoincrement=True),
    Column("run_id", uuid_type(), ForeignKey("workflow_run.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("payload", json_type(), nullable=False),
    Column("consumed_by", String(255)),
    Column("created_at", UTCDateTime(), nullable=False, server_default=_NOW),
    _tenant(),
    Index("ix_workflow_signal_run_id", "run_id", "name", "id"),
)

# Values a workflow publishes with ``ctx.set_event(key, value)``: the latest per key,
# read by ``client.get_event`` while the run is still going.
workflow_run_event = Table(
    "workflow_run_event",
    metadata,
    Column("run_id", uuid_type(), ForeignKey("workflow_run.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("value", json_type(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False, server_default=_NOW),
    Column("updated_at", UTCDateTime(), nullable=False, server_default=_NOW),
    _tenant(),
)

#: the tables whose rows belong to a tenant (row-level security on PostgreSQL)
TENANT_TABLES = (
    workflow_run,
    workflow_event,
    workflow_schedule,
    workflow_step,
    workflow_signal,
    workflow_run_event,
)

# Flow control: limits every worker obeys, keyed by a type pattern (exact or ``prefix%``).
workflow_limit = Table(
    "workflow_limit",
    metadata,
    Column("pattern", String(255), primary_key=True),
    # The pattern without its trailing %, or NULL for an exact type (matched with substr).
    Column("prefix", String(255)),
    Column("concurrency", Integer),
    Column("rate_count", Integer),
    Column("rate_seconds", Float),
    Column("pause_after_failures", Integer),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("paused_reason", String(64)),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    # The numbers hold for each tenant on its own (``set_limit(..., per_tenant=True)``).
    Column("per_tenant", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", UTCDateTime(), nullable=False, server_default=_NOW),
    Column("updated_at", UTCDateTime(), nullable=False, server_default=_NOW),
)

# The starts a rate limit counts: one row per attempt started under it within its window,
# with the tenant of the run (a per-tenant limit counts each tenant's starts on its own).
workflow_limit_start = Table(
    "workflow_limit_start",
    metadata,
    Column("id", bigint_pk(), primary_key=True, autoincrement=True),
    Column("pattern", String(255), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    _tenant(),
    Index("ix_workflow_limit_start_pattern", "pattern", "started_at"),
)

TABLES = (
    workflow_run,
    workflow_event,
    workflow_registry,
    workflow_schedule,
    workflow_step,
    workflow_signal,
    workflow_run_event,
    workflow_limit,
    workflow_limit_start,
)
