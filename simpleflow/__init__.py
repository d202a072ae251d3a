"""simpleflow: durable jobs and workflows whose only coordination point is the database.

Producers write intent with a ``Client``; workers claim it with a ``Poller``;
durable workflows replay on top through a ``WorkflowContext``. PostgreSQL in
production, SQLite embedded for local work, tests and small services.
"""

from __future__ import annotations

from simpleflow._version import __version__
from simpleflow.aio import AsyncClient
from simpleflow.app import Workflow
from simpleflow.client import Client
from simpleflow.core.attempt import WorkflowRun
from simpleflow.core.errors import (
    AlreadyComplete,
    AttemptTimeout,
    ChildFailed,
    ConfigurationError,
    DatabaseError,
    DeadlineExceeded,
    InvalidState,
    MigrationError,
    NonDeterminismError,
    NonRetryable,
    NotFound,
    SignalTimeout,
    SimpleflowError,
    StepFailed,
    ValidationError,
    WaitTimeout,
    WorkflowCancelled,
    WorkflowError,
)
from simpleflow.core.limits import Limit
from simpleflow.core.models import RunEvent, RunInfo, Schedule, StepInfo
from simpleflow.core.retry import RetryPolicy
from simpleflow.db.migrate import migrate
from simpleflow.schedules import ScheduleTicker
from simpleflow.worker.metrics import MetricsCollector, PrometheusMetrics
from simpleflow.worker.poller import Poller
from simpleflow.workflow.context import WorkflowContext

__all__ = [
    "AlreadyComplete",
    "AsyncClient",
    "AttemptTimeout",
    "ChildFailed",
    "Client",
    "ConfigurationError",
    "DatabaseError",
    "DeadlineExceeded",
    "InvalidState",
    "Limit",
    "MetricsCollector",
    "MigrationError",
    "NonDeterminismError",
    "NonRetryable",
    "NotFound",
    "Poller",
    "PrometheusMetrics",
    "RetryPolicy",
    "RunEvent",
    "RunInfo",
    "Schedule",
    "ScheduleTicker",
    "SignalTimeout",
    "SimpleflowError",
    "StepFailed",
    "StepInfo",
    "ValidationError",
    "WaitTimeout",
    "Workflow",
    "WorkflowCancelled",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowRun",
    "__version__",
    "migrate",
]
