"""A validated submission ready to insert (``NewRun``) and the columns of a batch of them,
bound as one parameter by the dialect (``RunStore.insert_runs``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Integer, String, Text

from simpleflow.db.dialect_sql import UUID_ITEM, UTCDateTime

#: the columns of a batch of new runs
NEW_RUNS = (
    ("id", UUID_ITEM),
    ("type", String()),
    ("payload", Text()),
    ("priority", Integer()),
    ("max_attempts", Integer()),
    ("key", String()),
    ("run_at", UTCDateTime()),
    ("delay", Float()),
    ("deadline_at", UTCDateTime()),
    ("deadline_in", Float()),
    ("trace", Text()),
    ("tenant", String()),
    ("ckey", String()),
    ("dkey", String()),
)


@dataclass(frozen=True)
class NewRun:
    """A validated submission, ready to insert."""

    id: str
    type: str
    payload: Any
    priority: int
    max_attempts: int
    idempotency_key: str | None
    run_at: datetime | None  # absolute time, or None for "now + delay" on the database clock
    delay: float
    payload_text: str | None = None  # the payload's JSON text, when the caller already has it
    deadline_at: datetime | None = None  # absolute deadline, or ...
    deadline_in: float | None = None  # ... seconds from now on the database clock
    trace_context: str | None = None  # the submitter's W3C trace context (``core.tracing``)
    tenant: str | None = None  # None: the inserting store's tenant (a child passes its parent's)
    concurrency_key: str | None = None  # runs sharing it are leased one at a time
    debounce_key: str | None = None  # replaces the payload of the not-yet-started run holding it

    @property
    def payload_json(self) -> str:
        if self.payload_text is not None:
            return self.payload_text
        return json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False)

    def row(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.type,
            self.payload_json,
            self.priority,
            self.max_attempts,
            self.idempotency_key,
            self.run_at,
            self.delay,
            self.deadline_at,
            self.deadline_in,
            self.trace_context,
            self.tenant,
            self.concurrency_key,
            self.debounce_key,
        )
