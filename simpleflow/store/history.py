"""SQL over a run's recorded history as a whole: fork it, scrub its data, pick runs to check.

``simpleflow.history`` composes these into ``Client.fork`` and ``Client.delete_data``
(one transaction each); ``simpleflow check-history`` reads through ``runs_to_check``.
Nothing here changes a run's status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, exists, insert, literal, select, update

from simpleflow.core.errors import NotFound
from simpleflow.db.schema import workflow_event, workflow_run, workflow_run_event, workflow_signal, workflow_step
from simpleflow.store.base import StoreBase

run = workflow_run.c
step = workflow_step.c
ev = workflow_event.c

#: what replaces every deleted JSON value (payload, result, step values, signal payloads, events)
TOMBSTONE: dict[str, Any] = {"deleted": True}
#: what replaces a deleted error text (``last_error``)
TOMBSTONE_TEXT = "[data deleted]"
#: the audit events this module writes
FORKED = "forked"
DATA_DELETED = "data_deleted"


@dataclass(frozen=True)
class SourceRun:
    """What a fork copies, and what ``delete_data`` checks, of one run."""

    id: str
    type: str
    payload: Any
    status: str
    priority: int
    attempt: int
    max_attempts: int


class HistoryStore(StoreBase):
    """All SQL behind fork, delete_data and the history check."""

    def lock_run(self, conn: Connection, run_id: str) -> SourceRun:
        """The run's row, locked for this transaction (PostgreSQL ``FOR UPDATE``); ``NotFound``."""
        row = self.x(
            conn,
            select(run.id, run.type, run.payload, run.status, run.priority, run.attempt, run.max_attempts)
            .where(run.id == run_id, run.deleted_at.is_(None), self.scope(workflow_run))
            .with_for_update(),
        ).first()
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return SourceRun(**row._mapping)

    def step_seq(self, conn: Connection, run_id: str, name: str) -> int | None:
        """The position (``seq``) of the record named ``name`` in a run's history, or None."""
        row = self.x(conn, select(step.seq).where(step.run_id == run_id, step.name == name)).first()
        return None if row is None else int(row[0])

    def step_names(self, conn: Connection, run_id: str, limit: int = 20) -> list[str]:
        """The first ``limit`` record names of a run, in order (for error messages)."""
        rows = self.x(conn, select(step.name).where(step.run_id == run_id).order_by(step.seq).limit(limit))
        return [str(r[0]) for r in rows]

    def copy_steps(self, conn: Connection, source: str, target: str, before_seq: int) -> int:
        """Copy the records of ``source`` positioned before ``before_seq`` to ``target``, as
        they are (seq, kind, status, values, times); returns how many."""
        columns = [c for c in workflow_step.c if c.name != "run_id"]
        picked = select(literal(target, type_=run.id.type), *columns).where(
            step.run_id == source, step.seq < before_seq
        )
        stmt = insert(workflow_step).from_select(["run_id", *(c.name for c in columns)], picked)
        return len(self.x(conn, stmt.returning(step.name)).all())

    def was_scrubbed(self, conn: Connection, run_id: str) -> bool:
        """Whether ``delete_data`` already replaced this run's data with tombstones."""
        found = select(ev.id).where(ev.run_id == run_id, ev.event_type == DATA_DELETED)
        return bool(self.x(conn, select(exists(found))).scalar())

    def descendants(self, conn: Connection, run_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(id, status) of every run below these in the ``parent_id`` tree, locked, level by level."""
        found: list[tuple[str, str]] = []
        seen = set(run_ids)
        frontier = list(run_ids)
        while frontier:
            rows = self.x(
                conn,
                select(run.id, run.status)
                .where(run.parent_id.in_(frontier), run.deleted_at.is_(None))
                .order_by(run.id)
                .with_for_update(),
            ).all()
            frontier = [str(r.id) for r in rows if str(r.id) not in seen]
            seen.update(frontier)
            found.extend((str(r.id), str(r.status)) for r in rows if str(r.id) in frontier)
        return found

    def scrub(self, conn: Connection, run_ids: Sequence[str]) -> None:
        """Replace every value these runs carry with a tombstone: payload, result and last
        error; step results and errors; signal payloads; published event values; audit-event
        details. Ids, names, types, statuses, attempts and times stay; NULL stays NULL."""
        ids = list(run_ids)
        if not ids:
            return
        changes: list[tuple[Any, Any, Any, dict[str, Any]]] = [
            (workflow_run, run.id, None, {"payload": TOMBSTONE}),
            (workflow_run, run.id, run.result, {"result": TOMBSTONE}),
            (workflow_run, run.id, run.last_error, {"last_error": TOMBSTONE_TEXT}),
            (workflow_step, step.run_id, step.result, {"result": TOMBSTONE}),
            (workflow_step, step.run_id, step.error, {"error": TOMBSTONE}),
            (workflow_signal, workflow_signal.c.run_id, None, {"payload": TOMBSTONE}),
            (workflow_run_event, workflow_run_event.c.run_id, None, {"value": TOMBSTONE}),
            (workflow_event, ev.run_id, ev.detail, {"detail": TOMBSTONE}),
        ]
        for table, owner, column, values in changes:
            stmt = update(table).where(owner.in_(ids))
            if column is not None:
                stmt = stmt.where(column.is_not(None))
            self.x(conn, stmt.values(**values))

    def runs_to_check(
        self, conn: Connection, types: Sequence[str], statuses: Sequence[str], limit: int
    ) -> list[SourceRun]:
        """Up to ``limit`` runs of ``types`` in ``statuses``, oldest first (``check-history``)."""
        if not types:
            return []
        rows = self.x(
            conn,
            select(run.id, run.type, run.payload, run.status, run.priority, run.attempt, run.max_attempts)
            .where(
                run.type.in_(list(types)),
                run.status.in_(list(statuses)),
                run.deleted_at.is_(None),
                self.scope(workflow_run),
            )
            .order_by(run.id)
            .limit(limit),
        )
        return [SourceRun(**r._mapping) for r in rows]
