"""Replay stored histories against the current code, read-only (``simpleflow check-history``).

A ``ReplayRecorder`` stands in for the ``Recorder`` of a live execution: the
workflow function runs from the top with a real ``WorkflowContext``, every recorded
step, timer, signal, value, version (and any operation built on the recorder's
primitives, such as children and published events) returns its recorded value, and
the first operation that would execute, wait or write anything stops the replay
cleanly: the history matched up to there. Nothing is executed and nothing is written.

It is stricter than a live replay, which finds records by name: it also requires the
records to be reached in the order they were written (``seq``), and reports a new
operation reached while older records are still ahead, since both mean the code no
longer follows the history. Version markers (``ctx.get_version``) are exempt: a run
that passed the call under older code records it late, by design.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from simpleflow.core.attempt import Attempt
from simpleflow.core.errors import NonDeterminismError, ValidationError
from simpleflow.store import Store
from simpleflow.store.history import SourceRun
from simpleflow.store.steps import StepRecord
from simpleflow.workflow.context import WorkflowContext
from simpleflow.workflow.handler import WorkflowHandler
from simpleflow.workflow.recorder import Recorder, Unwind

#: records exempt from the order check (``ctx.get_version`` records them late on purpose)
VERSION_PREFIX = "version:"


class ReplayStop(Unwind):
    """The workflow reached an operation with no finished record: the history matched so far."""


class ReplayMismatch(Unwind):
    """The workflow left the recorded history (the reason is in ``ReplayHistory.mismatch``)."""


class ReplayHistory(dict[str, StepRecord]):
    """A run's records as the replay context reads them, checking the order they are reached in.

    The context looks every name up once, with ``get``, when the workflow reaches it.
    Once the replay stopped or failed, every later lookup unwinds again, so a workflow
    that swallows one unwind cannot go on past the point where the history ends.
    """

    def __init__(self, records: dict[str, StepRecord]) -> None:
        super().__init__(records)
        self._ahead = [r.name for r in sorted(records.values(), key=lambda r: r.seq) if not _exempt(r.name)]
        self.reached = 0
        self.stopped = False
        self.mismatch: str | None = None
        self._new: tuple[str, str] | None = None  # (first name without a record, the record ahead then)
        self._lock = threading.Lock()

    def get(self, name: str, default: Any = None) -> Any:
        with self._lock:
            if self.mismatch is not None:
                raise ReplayMismatch(self.mismatch)
            if self.stopped:
                raise ReplayStop()
            rec = super().get(name)
            if _exempt(name):
                return rec if rec is not None else default
            if rec is None:  # judged when the replay stops: gather reaches all its names before it writes
                if self._ahead and self._new is None:
                    self._new = (name, self._ahead[0])
                return default
            if name not in self._ahead:  # a second lookup of a name already reached
                return rec
            if self._ahead[0] != name:
                self._fail(
                    f"the code reaches {name!r} where the history has {self._ahead[0]!r} "
                    f"(recorded before {name!r}): the order of operations changed"
                )
            self._ahead.remove(name)
            self.reached += 1
            return rec

    def unreached(self) -> list[str]:
        """Recorded names (but version markers) the replay has not reached."""
        return list(self._ahead)

    def stop(self) -> Unwind:
        """The workflow is about to execute, wait or write: the end of the replay. A name it
        reached without a record is new code, unless every older record was reached after it
        (a gather whose later calls were recorded before an earlier one's)."""
        if self._new is not None and self._ahead:
            name, expected = self._new
            self.mismatch = f"the code reaches a new operation {name!r} where the history has {expected!r}"
            return ReplayMismatch(self.mismatch)
        self.stopped = True
        return ReplayStop()

    def _fail(self, message: str) -> None:
        self.mismatch = message
        raise ReplayMismatch(message)


def _exempt(name: str) -> bool:
    return name.startswith(VERSION_PREFIX)


class ReplayRecorder(Recorder):
    """A ``Recorder`` that never touches the database: any write, or the status read that
    precedes executing a step, stops the replay (a version marker is kept in memory)."""

    history: ReplayHistory

    def __init__(self, store: Store, run: Attempt, history: ReplayHistory) -> None:
        super().__init__(store, run, history)

    def status(self) -> str | None:
        raise self.history.stop()

    def write(self, fn: Any) -> Any:
        raise self.history.stop()

    def save(self, name: str, *, kind: str, **record: Any) -> None:
        if kind == "version":  # get_version records the version it decided: nothing else changes
            return
        raise self.history.stop()

    def single(self, fn: Any, *, read: bool = False) -> Any:
        raise self.history.stop()

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Verdict:
    """What replaying one run's history against the current code found."""

    run_id: str
    type: str
    status: str
    matches: bool
    replayed: int  # records reached in order before the replay stopped or failed
    error: str | None = None  # "NonDeterminismError: ..." when it does not match


def replay_run(store: Store, handler: WorkflowHandler, run: SourceRun) -> Verdict:
    """Replay ``run``'s stored history with ``handler``'s workflow function, read-only."""
    workflow = handler.workflow

    def verdict(history: ReplayHistory | None, error: str | None) -> Verdict:
        replayed = history.reached if history is not None else 0
        return Verdict(run.id, run.type, run.status, error is None, replayed, error)

    argument = run.payload
    if workflow.input is not None:
        try:
            argument = workflow.input.load(run.payload, f"input of run {run.id}")
        except ValidationError as error:
            return verdict(None, f"ValidationError: the stored input no longer fits the workflow's input type: {error}")
    history = ReplayHistory(store.db.run(lambda conn: store.steps.load(conn, run.id), read=True))
    attempt = Attempt(
        run.id,
        run.type,
        run.payload,
        run.attempt if run.status == "leased" else run.attempt + 1,  # what the next claim would give
        run.max_attempts,
        heartbeat=lambda _run, _seconds: False,
        lease_seconds=30.0,
        token=-1,  # matches no lease: even a stray fenced write could not land
    )
    ctx = WorkflowContext(ReplayRecorder(store, attempt, history))
    raised: BaseException | None = None
    try:
        workflow.fn(ctx, argument)
    except Unwind:
        pass
    except Exception as error:  # the code fails where the recorded run did not
        raised = error
    if history.mismatch is not None:
        return verdict(history, f"NonDeterminismError: run {run.id}: {history.mismatch}")
    if ctx._state.fatal is not None:
        return verdict(history, f"NonDeterminismError: {ctx._state.fatal}")
    if history.stopped:
        return verdict(history, None)
    if isinstance(raised, NonDeterminismError):
        return verdict(history, f"NonDeterminismError: {raised}")
    if history.unreached():  # an error the code raises is fine, as long as it raised it there before too
        left = ", ".join(repr(n) for n in history.unreached()[:5])
        how = "finishes" if raised is None else f"raises {type(raised).__name__}: {raised}"
        return verdict(history, f"NonDeterminismError: run {run.id}: the code {how} without reaching recorded {left}")
    return verdict(history, None)


def check_histories(
    store: Store, handlers: dict[str, WorkflowHandler], statuses: tuple[str, ...], limit: int
) -> list[Verdict]:
    """Replay up to ``limit`` runs of these workflow types in ``statuses``, oldest first."""
    runs = store.db.run(lambda conn: store.history.runs_to_check(conn, sorted(handlers), statuses, limit), read=True)
    return [replay_run(store, handlers[r.type], r) for r in runs]
