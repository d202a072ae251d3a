"""Flow control's claim predicates, shared by the unlimited claim (``store.leases``) and the
claim of governed runs (``store.limits``): which limit governs a type, and which run is
the head of its concurrency key."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, literal_column, or_, select

from simpleflow.core.states import DUE_STATUSES
from simpleflow.db.dialect_sql import db_now
from simpleflow.db.schema import workflow_limit, workflow_run

run = workflow_run.c
lim = workflow_limit.c
#: statuses of a run that started and is suspended (a workflow asleep or waiting for a signal)
PARKED = ("sleeping", "waiting")


def governed_by(limit: Any, type_: ColumnElement[str]) -> ColumnElement[bool]:
    """Does the limit row ``limit`` (the table or an alias) govern runs of ``type_``? An exact
    pattern equals the type; a ``prefix%`` pattern starts it (compared with substr, so ``_``
    and ``%`` in types are plain characters)."""
    return or_(
        and_(limit.c.prefix.is_(None), limit.c.pattern == type_),
        and_(limit.c.prefix.is_not(None), func.substr(type_, 1, func.length(limit.c.prefix)) == limit.c.prefix),
    )


def no_limit() -> ColumnElement[bool]:
    """No limit governs the run's type (read in the claim statement itself, so a limit set a
    moment ago already keeps the unlimited claim away from its types)."""
    return ~exists(select(lim.pattern).where(governed_by(workflow_limit, run.type)))


def _started(c: Any) -> ColumnElement[bool]:
    return or_(c.status.in_(PARKED), and_(c.status == literal_column("'pending'"), c.attempt > 0))


def key_free() -> ColumnElement[bool]:
    """The run has no concurrency key, or it is the head of its key (keys are per tenant).
    Another run with the
    key blocks it when that run is leased; or has started and not finished (waiting for a
    retry, sleeping, waiting for a signal) while this one has not started, or was
    submitted before it; or neither has started and that one is due now and comes first
    (priority, then due time). A started run always goes before runs that have not."""
    other = workflow_run.alias("other")
    o = other.c
    before = or_(
        o.priority < run.priority,
        and_(o.priority == run.priority, or_(o.run_at < run.run_at, and_(o.run_at == run.run_at, o.id < run.id))),
    )
    started, run_started = _started(o), _started(run)
    submitted_before = or_(o.created_at < run.created_at, and_(o.created_at == run.created_at, o.id < run.id))
    blocking = or_(
        o.status == literal_column("'leased'"),
        and_(started, or_(~run_started, submitted_before)),
        and_(~started, ~run_started, o.status.in_(DUE_STATUSES), o.run_at <= db_now(), before),
    )
    return or_(
        run.concurrency_key.is_(None),
        ~exists(
            select(o.id).where(
                o.concurrency_key == run.concurrency_key, o.tenant == run.tenant, o.id != run.id, blocking
            )
        ),
    )
