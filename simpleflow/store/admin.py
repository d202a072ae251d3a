"""The SQL of day-two operations: retention (prune), bulk requeue and statistics.

One named method per statement, built with SQLAlchemy Core for both dialects,
times from the database clock. Each method runs on a connection the caller
opened, so ``simpleflow.admin`` decides how statements group into (short)
transactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, func, or_, select, text

from simpleflow.core.states import DUE_STATUSES, REQUEUE_STATUSES, TERMINAL_STATUSES
from simpleflow.db.dialect_sql import db_now, db_now_plus, minute_of, seconds
from simpleflow.db.schema import workflow_event, workflow_run, workflow_run_event, workflow_signal, workflow_step
from simpleflow.store.base import StoreBase

run = workflow_run.c
_other = workflow_run.alias("other")

#: a run is pruned only once its parent and its children have finished too, so a live
#: parent never loses a child it may still wait for, and no live child loses its parent
_TREE_SETTLED = and_(
    ~exists(select(_other.c.id).where(_other.c.id == run.parent_id, _other.c.status.not_in(TERMINAL_STATUSES))),
    ~exists(select(_other.c.id).where(_other.c.parent_id == run.id, _other.c.status.not_in(TERMINAL_STATUSES))),
)
parent = workflow_run.alias("parent")


def _status_in(statuses: Sequence[str], allowed: Sequence[str]) -> Any:
    """``status IN (...)`` as literal SQL so the planners can use the partial indexes.

    Only names from ``allowed`` (fixed identifiers of the schema) ever reach the text.
    """
    if not statuses or any(s not in allowed for s in statuses):
        raise AssertionError(f"statuses {statuses!r} must be a non-empty subset of {allowed!r}")
    return text("status IN (" + ", ".join(f"'{s}'" for s in sorted(set(statuses))) + ")")


class AdminStore(StoreBase):
    """All SQL behind ``prune``, bulk ``retry`` and ``stats``."""

    # -- clock --------------------------------------------------------------------------

    def now(self, conn: Connection) -> datetime:
        """The database's current time (cut-offs are computed from it, never from ours)."""
        value: datetime = self.x(conn, select(db_now())).scalar_one()
        return value

    # -- retention ------------------------------------------------------------------------

    def select_finished_runs(
        self, conn: Connection, statuses: Sequence[str], cutoff: datetime, limit: int
    ) -> list[str]:
        """Ids of up to ``limit`` runs in ``statuses`` last updated before ``cutoff``, oldest
        first, locked for this transaction (PostgreSQL skips rows others hold). A child run
        whose parent still exists is not one of them: it goes with its parent. A run with an
        unfinished child is kept until the child finishes."""
        orphan = or_(run.parent_id.is_(None), ~exists(select(parent.c.id).where(parent.c.id == run.parent_id)))
        stmt = (
            select(run.id)
            .where(
                _status_in(statuses, TERMINAL_STATUSES),
                run.updated_at < cutoff,
                orphan,
                _TREE_SETTLED,
                self.scope(workflow_run),
            )
            .order_by(run.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [str(r[0]) for r in self.x(conn, stmt)]

    def delete_finished_runs(
        self, conn: Connection, run_ids: Sequence[str], statuses: Sequence[str], cutoff: datetime
    ) -> list[str]:
        """Delete these runs if they are still in ``statuses`` and older than ``cutoff``; the
        ids deleted. The re-check means a run retried a moment ago is never removed."""
        if not run_ids:
            return []
        rows = self.x(
            conn,
            delete(workflow_run)
            .where(
                run.id.in_(list(run_ids)),
                _status_in(statuses, TERMINAL_STATUSES),
                run.updated_at < cutoff,
                _TREE_SETTLED,
                self.scope(workflow_run),
            )
            .returning(run.id),
        )
        return [str(r[0]) for r in rows]

    def delete_finished_descendants(self, conn: Connection, run_ids: Sequence[str]) -> list[str]:
        """Delete the finished runs below these (deleted) runs in the ``parent_id`` tree,
        whatever their age or status, level by level; the ids deleted. An unfinished child
        stays (with its own children), to be pruned on its own once finished and old."""
        deleted: list[str] = []
        frontier = list(run_ids)
        while frontier:
            finished = _status_in(TERMINAL_STATUSES, TERMINAL_STATUSES)
            rows = self.x(conn, select(run.id).where(run.parent_id.in_(frontier), finished).with_for_update())
            frontier = [str(r[0]) for r in rows]
            if frontier:  # a plain prune (no trees) costs one indexed read here, no extra delete
                self.x(conn, delete(workflow_run).where(run.id.in_(frontier)))
            deleted.extend(frontier)
        return deleted

    def delete_children(self, conn: Connection, run_ids: Sequence[str]) -> None:
        """Delete the events, step records and signals of these (deleted) runs.

        ``ON DELETE CASCADE`` already did this where foreign keys are enforced; this
        covers SQLite connections opened without ``PRAGMA foreign_keys``.
        """
        if not run_ids:
            return
        ids = list(run_ids)
        for table in (workflow_event, workflow_step, workflow_signal, workflow_run_event):
            self.x(conn, delete(table).where(table.c.run_id.in_(ids)))

    # -- bulk requeue -----------------------------------------------------------------------

    def select_requeueable(
        self, conn: Connection, statuses: Sequence[str], type: str | None, after: str | None, limit: int
    ) -> list[str]:
        """Ids of up to ``limit`` failed/cancelled runs (of ``type``, ids above ``after``) in
        id order, locked for this transaction (PostgreSQL skips rows others hold)."""
        stmt = select(run.id).where(
            _status_in(statuses, REQUEUE_STATUSES), run.deleted_at.is_(None), self.scope(workflow_run)
        )
        if type is not None:
            stmt = stmt.where(run.type == type)
        if after is not None:
            stmt = stmt.where(run.id > after)
        stmt = stmt.order_by(run.id).limit(limit).with_for_update(skip_locked=True)
        return [str(r[0]) for r in self.x(conn, stmt)]

    # -- statistics ------------------------------------------------------------------------

    def oldest_due(self, conn: Connection) -> tuple[datetime | None, datetime]:
        """(``run_at`` of the longest-waiting due run or None, the database's now)."""
        due = _status_in(DUE_STATUSES, DUE_STATUSES)
        row = self.x(
            conn, select(func.min(run.run_at), db_now()).where(due, run.run_at <= db_now(), self.scope(workflow_run))
        ).one()
        return row[0], row[1]

    def finished_since(self, conn: Connection, seconds_ago: float) -> dict[str, int]:
        """How many runs reached each terminal status in the last ``seconds_ago`` seconds."""
        finished = _status_in(TERMINAL_STATUSES, TERMINAL_STATUSES)
        rows = self.x(
            conn,
            select(run.status, func.count())
            .where(finished, run.updated_at >= db_now_plus(seconds(-seconds_ago)), self.scope(workflow_run))
            .group_by(run.status),
        )
        return {str(s): int(n) for s, n in rows}

    def oldest_due_by_tenant(self, conn: Connection) -> list[tuple[str, datetime]]:
        """(tenant, ``run_at`` of its longest-waiting due run) for each tenant with a due run."""
        due = _status_in(DUE_STATUSES, DUE_STATUSES)
        rows = self.x(
            conn,
            select(run.tenant, func.min(run.run_at))
            .where(due, run.run_at <= db_now(), self.scope(workflow_run))
            .group_by(run.tenant),
        )
        return [(str(t), at) for t, at in rows]

    def finished_since_by_tenant(self, conn: Connection, seconds_ago: float) -> list[tuple[str, str, int]]:
        """(tenant, terminal status, count) of the runs that finished in the last ``seconds_ago`` seconds."""
        finished = _status_in(TERMINAL_STATUSES, TERMINAL_STATUSES)
        rows = self.x(
            conn,
            select(run.tenant, run.status, func.count())
            .where(finished, run.updated_at >= db_now_plus(seconds(-seconds_ago)), self.scope(workflow_run))
            .group_by(run.tenant, run.status),
        )
        return [(str(t), str(s), int(n)) for t, s, n in rows]

    def finished_by_minute(self, conn: Connection, seconds_ago: float) -> list[tuple[str, str, str, int]]:
        """(minute ``YYYY-MM-DD HH:MM`` in UTC, type, terminal status, count) of the runs that
        finished in the last ``seconds_ago`` seconds."""
        finished = _status_in(TERMINAL_STATUSES, TERMINAL_STATUSES)
        minute = minute_of(run.updated_at)
        rows = self.x(
            conn,
            select(minute, run.type, run.status, func.count())
            .where(finished, run.updated_at >= db_now_plus(seconds(-seconds_ago)), self.scope(workflow_run))
            .group_by(minute, run.type, run.status),
        )
        return [(str(m), str(t), str(s), int(n)) for m, t, s, n in rows]
