"""What users read back: runs, events, schedules and step records (pydantic models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

RunStatus = Literal["pending", "leased", "sleeping", "waiting", "succeeded", "failed", "cancelled"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class RunInfo(_Model):
    """One row of ``workflow_run``: a unit of intent and where it stands."""

    id: str
    type: str
    payload: Any
    status: RunStatus
    priority: int
    run_at: datetime
    idempotency_key: str | None
    attempt: int
    max_attempts: int
    leased_by: str | None
    lease_until: datetime | None
    last_error: str | None
    result: Any
    created_at: datetime
    updated_at: datetime
    #: the run that started this one with ``ctx.start_child``; None for a top-level run
    parent_id: str | None = None
    tenant: str = "default"

    @property
    def is_terminal(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class RunEvent(_Model):
    """One entry of a run's (or a schedule's) audit trail."""

    id: int
    run_id: str | None
    schedule_id: str | None = None
    event_type: str
    worker_id: str | None
    attempt: int | None
    detail: Any
    created_at: datetime


class Schedule(_Model):
    """A cron schedule that turns each due slot into one run."""

    id: str
    type: str
    payload: Any
    cron_expr: str
    timezone: str
    priority: int
    max_attempts: int
    missed: str
    enabled: bool
    next_run_at: datetime
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    tenant: str = "default"


class StepInfo(_Model):
    """One recorded step, timer, signal wait or deterministic value of a workflow run."""

    run_id: str
    name: str
    seq: int
    kind: str
    status: str
    attempts: int
    result: Any
    error: Any
    wake_at: datetime | None
    created_at: datetime
    updated_at: datetime
