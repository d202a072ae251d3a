"""What a claim writes and returns: the lease values, the returned columns, the ``leased``
audit events, and the ``ClaimedRun`` a worker dispatches (shared by the one-statement
claim in ``store.leases`` and the claim of governed runs in ``store.limits``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import CTE, Float, Select, String, bindparam, literal, null, select

from simpleflow.core.states import Lease
from simpleflow.db.dialect_sql import db_now, db_now_plus
from simpleflow.db.schema import workflow_run

run = workflow_run.c


def lease_values() -> dict[str, Any]:
    """What a claim writes: the new lease, a spent attempt, the next token; a debounce key is
    dropped (the run has started: later submissions with the key make a new run)."""
    return {
        "status": "leased",
        "leased_by": bindparam("w", type_=String()),
        "lease_until": db_now_plus(bindparam("lease", type_=Float())),
        "attempt": run.attempt + 1,
        "lease_token": run.lease_token + 1,
        "debounce_key": None,
        "updated_at": db_now(),
    }


CLAIM_RETURNING = (
    run.id,
    run.type,
    run.payload,
    run.attempt,
    run.max_attempts,
    run.lease_token,
    run.priority,
    run.run_at,
    run.trace_context,
    run.tenant,
)


@dataclass(frozen=True)
class ClaimedRun:
    """A run this worker now holds a lease on."""

    id: str
    type: str
    payload: Any
    attempt: int
    max_attempts: int
    token: int
    tenant: str
    trace_context: str | None = None  # the submitter's, for the attempt's span (``core.tracing``)

    @property
    def lease(self) -> Lease:
        return Lease(self.id, self.token)


def claim_events_select(changed: CTE) -> Select[Any]:
    """The ``leased`` audit event of each claimed row (PostgreSQL: in the claim statement)."""
    return select(
        changed.c.id, literal("leased", String()), bindparam("w", type_=String()), changed.c.attempt, null(), db_now()
    )
