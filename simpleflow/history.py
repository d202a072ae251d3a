"""A run's recorded history as a whole: fork a run from a step, delete a run's data (GDPR).

``Client`` (and so ``Workflow``) inherits ``HistoryMethods``. Each operation is one
transaction with its audit events; every check happens before anything changes.
"""

from __future__ import annotations

from sqlalchemy import Connection

from simpleflow.core.errors import InvalidState, ValidationError
from simpleflow.core.ids import new_id
from simpleflow.core.states import TERMINAL_STATUSES
from simpleflow.core.validation import check_id, check_name
from simpleflow.db.notify import local_bus
from simpleflow.store import Store
from simpleflow.store.history import DATA_DELETED, FORKED
from simpleflow.store.new_runs import NewRun


class HistoryMethods:
    """``Client.fork`` and ``Client.delete_data``."""

    store: Store

    def fork(self, run_id: str, from_step: str) -> str:
        """A new run of the same type, payload, priority and max attempts whose history is the
        source run's records up to (not including) the record named ``from_step``; it runs
        from there, so the steps before it are not executed again. Returns the new run's id.

        Only a finished run (succeeded, failed, cancelled) can be forked: a running one
        would go on doing, in parallel, the very work the fork redoes. ``NotFound`` for an
        unknown run, ``InvalidState`` for an unfinished one or one whose data was deleted,
        ``ValidationError`` if no record is named ``from_step``. Both runs get a ``forked``
        event linking them. The new run is top-level (no parent) and has no idempotency key,
        deadline, signals or published events of its own yet.
        """
        run_id = check_id(run_id)
        from_step = check_name(from_step, "from_step")
        store = self.store.history

        def tx(conn: Connection) -> str:
            source = store.lock_run(conn, run_id)
            if source.status not in TERMINAL_STATUSES:
                raise InvalidState(
                    f"run {run_id} is {source.status}; only a finished run can be forked "
                    "(cancel it first, or wait for it to finish)"
                )
            if store.was_scrubbed(conn, run_id):
                raise InvalidState(f"run {run_id} cannot be forked: its data was deleted")
            seq = store.step_seq(conn, run_id, from_step)
            if seq is None:
                names = store.step_names(conn, run_id)
                shown = ", ".join(repr(n) for n in names) or "none"
                raise ValidationError(
                    f"run {run_id} has no recorded step named {from_step!r}; its records are: {shown}"
                )
            new = NewRun(
                id=new_id(),
                type=source.type,
                payload=source.payload,
                priority=source.priority,
                max_attempts=source.max_attempts,
                idempotency_key=None,
                run_at=None,
                delay=0.0,
            )
            fork_id = self.store.runs.insert_runs(conn, [new])[0]
            copied = store.copy_steps(conn, run_id, fork_id, seq)
            store.add_events(
                conn,
                [
                    {
                        "run_id": run_id,
                        "event_type": FORKED,
                        "detail": {"fork": fork_id, "from_step": from_step, "copied": copied},
                    },
                    {
                        "run_id": fork_id,
                        "event_type": FORKED,
                        "detail": {"forked_from": run_id, "from_step": from_step, "copied": copied},
                    },
                ],
            )
            return fork_id

        fork_id = self.store.db.run(tx)
        local_bus.publish(self.store.db.key)
        return fork_id

    def delete_data(self, run_id: str, children: bool = False) -> list[str]:
        """Replace a finished run's data with tombstones (GDPR erasure) and return the ids
        of the runs scrubbed.

        Payload, result, last error, step results and errors, signal payloads, published
        event values and audit-event details become ``{"deleted": true}`` (or
        ``"[data deleted]"`` for the error text; empty values stay empty). Ids, types,
        idempotency keys, step names, statuses, attempts and times stay, and each run gets
        a ``data_deleted`` event. ``children=True`` includes every descendant (runs started
        with ``ctx.start_child``). One transaction; ``NotFound`` for an unknown run,
        ``InvalidState`` if it (or, with ``children``, a descendant) is unfinished.
        """
        run_id = check_id(run_id)
        if not isinstance(children, bool):
            raise ValidationError("children must be True or False")
        store = self.store.history

        def tx(conn: Connection) -> list[str]:
            root = store.lock_run(conn, run_id)
            if root.status not in TERMINAL_STATUSES:
                raise InvalidState(
                    f"run {run_id} is {root.status}; only a finished run's data can be deleted "
                    "(cancel it first, or wait for it to finish)"
                )
            below = store.descendants(conn, [run_id]) if children else []
            busy = [f"{i} ({s})" for i, s in below if s not in TERMINAL_STATUSES]
            if busy:
                raise InvalidState(
                    f"run {run_id} has {len(busy)} unfinished descendant(s): {', '.join(busy[:5])}"
                    f"{' …' if len(busy) > 5 else ''}; cancel them or wait for them to finish"
                )
            ids = [run_id, *(i for i, _ in below)]
            store.scrub(conn, ids)
            detail = {"requested_for": run_id, "children": children}
            store.add_events(conn, [{"run_id": i, "event_type": DATA_DELETED, "detail": detail} for i in ids])
            return ids

        return self.store.db.run(tx)
