"""SQL of workflow composition: a child's end waking its parent, the cancellation cascade,
what a parent reads of its children, and the events a run publishes.

The wake-up of a waiting parent happens in the transaction that makes its child
terminal (``LeaseStore.apply`` embeds it in its one statement on PostgreSQL;
``cancel``, ``fail_overdue`` and SQLite call ``wake_parents``). The parent's row is
locked first, whatever its status, so a parent that is parking at that moment
either sees the child finished (its park's guard) or is woken right after it parked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, String, bindparam, literal, null, select, update

from simpleflow.core.states import TERMINAL_STATUSES, Kind, Status
from simpleflow.db.dialect_sql import db_now
from simpleflow.db.schema import workflow_run, workflow_run_event
from simpleflow.store.base import StoreBase

run = workflow_run.c
rev = workflow_run_event.c

#: the audit event of a parent woken by a child's end
WOKEN = "woken"
#: the detail of that event
WOKEN_DETAIL = {"reason": "a child run finished"}


@dataclass(frozen=True)
class ChildState:
    """What a parent's wait reads of one child: status, result, last error."""

    id: str
    status: str
    result: Any
    last_error: str | None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


def lock_parents(parent_ids: Any) -> Select[Any]:
    """Lock the rows of these parents (any status) and read their current status."""
    return select(run.id, run.status).where(run.id.in_(parent_ids)).order_by(run.id).with_for_update()


def wake(waiting_ids: Any) -> Any:
    """The wake-up itself: these parents (found ``waiting`` under their row lock) become due now."""
    return (
        update(workflow_run)
        .where(run.id.in_(waiting_ids))
        .values(status=Status.PENDING.value, run_at=db_now(), updated_at=db_now())
        .returning(run.id, run.attempt)
    )


class CompositionStore(StoreBase):
    """All SQL about parents, children and published events."""

    # -- a child's end -----------------------------------------------------------------

    def wake_parents(self, conn: Connection, parent_ids: Sequence[str | None]) -> list[str]:
        """Wake the waiting ones among these parents (of children that just finished, in
        this transaction), with a ``woken`` event each; returns the ids woken."""
        ids = sorted({p for p in parent_ids if p})
        if not ids:
            return []
        waiting = [str(r.id) for r in self.x(conn, lock_parents(ids)) if r.status == Status.WAITING.value]
        if not waiting:
            return []
        woken = self.x(conn, wake(waiting).where(run.status == Status.WAITING.value)).all()
        self.add_events(
            conn, [{"run_id": r.id, "event_type": WOKEN, "attempt": r.attempt, "detail": WOKEN_DETAIL} for r in woken]
        )
        if woken:
            self.notify(conn)
        return [str(r.id) for r in woken]

    def cancel_descendants(self, conn: Connection, run_id: str) -> list[str]:
        """The cancellation cascade: every unfinished run below ``run_id`` (children, their
        children, …, also below children that already finished) ends ``cancelled``, with
        its event; returns their ids. A worker running one is fenced off at once."""
        cancelled: list[str] = []
        frontier = [run_id]
        while frontier:
            children = [
                str(r[0])
                for r in self.x(
                    conn, select(run.id).where(run.parent_id.in_(frontier)).order_by(run.id).with_for_update()
                )
            ]
            if not children:
                break
            rows = self.x(
                conn,
                update(workflow_run)
                .where(run.id.in_(children), run.deleted_at.is_(None), run.status.not_in(TERMINAL_STATUSES))
                .values(status=Status.CANCELLED.value, lease_until=None, updated_at=db_now())
                .returning(run.id, run.attempt, run.parent_id),
            ).all()
            self.add_events(
                conn,
                [
                    {
                        "run_id": r.id,
                        "event_type": Kind.CANCEL.value,
                        "attempt": r.attempt,
                        "detail": {"reason": "parent cancelled", "parent": str(r.parent_id)},
                    }
                    for r in rows
                ],
            )
            cancelled.extend(str(r.id) for r in rows)
            frontier = children
        return cancelled

    # -- what a parent reads -------------------------------------------------------------

    def children_states(self, conn: Connection, parent_id: str, child_ids: Sequence[str]) -> dict[str, ChildState]:
        """Status, result and last error of these children of ``parent_id`` (ids that are not
        its children are absent from the answer)."""
        rows = self.x(
            conn,
            select(run.id, run.status, run.result, run.last_error).where(
                run.id.in_(sorted(set(child_ids))), run.parent_id == parent_id
            ),
        )
        return {str(r.id): ChildState(str(r.id), str(r.status), r.result, r.last_error) for r in rows}

    # -- published events ------------------------------------------------------------------

    def set_event(self, conn: Connection, run_id: str, key: str, value: Any) -> None:
        """Publish ``value`` under ``key`` for this run (the latest set wins). Call inside a
        fenced transaction (after ``hold``)."""

        def build() -> Any:
            ins = self.dialect.insert(workflow_run_event).values(
                run_id=bindparam("rid", type_=run.id.type),
                key=bindparam("key", type_=String()),
                value=self.dialect.json_from_text(bindparam("value", type_=String())),
                created_at=db_now(),
                updated_at=db_now(),
                tenant=select(run.tenant).where(run.id == bindparam("rid", type_=run.id.type)).scalar_subquery(),
            )
            return ins.on_conflict_do_update(
                index_elements=[rev.run_id, rev.key], set_={"value": ins.excluded.value, "updated_at": db_now()}
            )

        stmt = self.statements.get("set_event", build)
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        self.x(conn, stmt, {"rid": run_id, "key": key, "value": text})

    def get_event(self, conn: Connection, run_id: str, key: str) -> tuple[bool, Any]:
        """(found, the latest value published under ``key``)."""
        stmt = select(rev.value).where(rev.run_id == run_id, rev.key == key, self.scope(workflow_run_event))
        row = self.x(conn, stmt).first()
        return (False, None) if row is None else (True, row[0])


def woken_events(woken: Any, detail: Any) -> Select[Any]:
    """The ``woken`` events of parents woken inside another statement (PostgreSQL's form);
    ``detail``: ``WOKEN_DETAIL`` as the dialect's JSON."""
    return select(woken.c.id, literal(WOKEN, String()), null(), woken.c.attempt, detail, db_now())
