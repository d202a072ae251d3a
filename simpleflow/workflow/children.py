"""Workflow composition for the replay context: child runs, fan-out and fan-in, published events.

``Composition`` is a mixin of ``WorkflowContext``; each call is a named record in
``workflow_step``, checked by name and kind on replay like a step:

- ``child`` (``start_child``): the child's id; the child's row and this record are
  inserted in one transaction fenced by the parent's lease, so a replay never
  starts a second child, whenever the worker dies.
- ``child_wait`` (``wait_child``, ``wait_children``): ``waiting`` while parked, then
  ``completed`` (the children's results), ``failed`` (the first failed child's
  error) or ``timed_out``.
- ``event`` (``set_event``): the value published; the publication and the record
  commit together, and a replay does not publish again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection

from simpleflow.core import tracing
from simpleflow.core.errors import ChildFailed, ValidationError, WaitTimeout
from simpleflow.core.ids import new_id
from simpleflow.core.retry import RetryPolicy
from simpleflow.core.states import error_summary, park
from simpleflow.core.validation import (
    DEFAULT_PAYLOAD_LIMIT,
    check_duration,
    check_id,
    check_max_attempts,
    check_name,
    check_priority,
    check_type,
    encode_json,
)
from simpleflow.db.notify import local_bus
from simpleflow.store.composition import ChildState
from simpleflow.store.new_runs import NewRun
from simpleflow.store.steps import Hold, StepRecord
from simpleflow.workflow.codec import Codec
from simpleflow.workflow.gather import gather_steps

if TYPE_CHECKING:
    from simpleflow.core.attempt import Attempt
    from simpleflow.workflow.recorder import Recorder, Sticky

T = TypeVar("T")


class Composition:
    """``WorkflowContext``'s composition calls (see the module docstring)."""

    if TYPE_CHECKING:  # provided by WorkflowContext
        _rec: Recorder
        _run: Attempt
        _state: Sticky
        _in_step: bool
        _events: dict[str, int]  # how often each event key was set in this execution

        @property
        def run_id(self) -> str: ...

        def _reach(self, name: str, kind: str) -> StepRecord | None: ...

        def _write(self, fn: Callable[[Connection, Hold], T]) -> T: ...

        def _save(self, name: str, **record: Any) -> None: ...

        def _check_live(self) -> None: ...

    # -- children ----------------------------------------------------------------------

    def start_child(
        self, name: str, type: str, input: Any = None, *, priority: int = 100, max_attempts: int = 3
    ) -> str:
        """Start a run of ``type`` (a plain handler or a workflow) with ``input`` as a child of
        this run and return its id, recorded under ``name``: on replay the same id is
        returned and nothing is started. The child inherits nothing from this run (no
        priority, attempts, deadline or idempotency key: ``priority`` and ``max_attempts``
        are the submission's defaults unless given); only ``parent_id`` links it here."""
        type = check_type(type, f"type of child {name!r}")
        check_priority(priority)
        check_max_attempts(max_attempts)
        rec = self._reach(name, "child")
        if rec is not None:
            return str(rec.result)
        payload, text = encode_json(input, f"input of child {name!r}", DEFAULT_PAYLOAD_LIMIT)
        attributes = {"simpleflow.step.name": name, "simpleflow.child.type": type}
        with tracing.span(f"start_child {name}", self._run, attributes, kind="producer") as span:
            child = NewRun(
                new_id(),
                type,
                payload,
                priority,
                max_attempts,
                None,
                None,
                0.0,
                payload_text=text,
                trace_context=span.context(),
                tenant=self._run.tenant,  # a child belongs to its parent's tenant  # the child's attempts continue this trace
            )
            child_id = self._start(name, child)
            span.set("simpleflow.child.id", child_id)
        return child_id

    def _start(self, name: str, child: NewRun) -> str:
        seq = self._rec.take_seq()

        def start(conn: Connection, hold: Hold) -> str:
            child_id = self._rec.store.runs.insert_child(conn, self.run_id, child, name)
            self._rec.store.steps.save(
                conn, self.run_id, name, seq=seq, kind="child", status="started", result=child_id
            )
            return child_id

        child_id = self._write(start)
        local_bus.publish(self._rec.db.key)
        return child_id

    def wait_child(self, name: str, child_id: str, model: Any = None, timeout: timedelta | float | None = None) -> Any:
        """The result of child run ``child_id`` (parsed into ``model``), recorded under ``name``.

        Parks the run as ``waiting`` (no thread held) until the child finishes: its end
        wakes this run in the same transaction. A failed or cancelled child raises
        ``ChildFailed`` (catch it to compensate); after ``timeout`` raises ``WaitTimeout``.
        """
        return self._wait(name, [check_id(child_id)], model, timeout)[0]

    def wait_children(
        self, name: str, child_ids: Sequence[str], model: Any = None, timeout: timedelta | float | None = None
    ) -> list[Any]:
        """The results of these child runs, in order, once all of them have finished
        (``wait_child`` for many, one record). If any failed, ``ChildFailed`` for the first
        failed one in the list."""
        if isinstance(child_ids, (str, bytes)) or not isinstance(child_ids, Sequence):
            raise ValidationError(f"wait_children {name!r} takes a list of child run ids")
        return self._wait(name, [check_id(i) for i in child_ids], model, timeout)

    def run_child(
        self, name: str, type: str, input: Any = None, model: Any = None, timeout: timedelta | float | None = None
    ) -> Any:
        """``start_child(name, …)`` then ``wait_child(name + "/wait", …)``: two records."""
        return self.wait_child(f"{name}/wait", self.start_child(name, type, input), model, timeout)

    def _wait(self, name: str, ids: list[str], model: Any, timeout: timedelta | float | None) -> list[Any]:
        limit = None if timeout is None else check_duration(timeout, f"timeout of the wait {name!r}")
        codec = Codec(model if model is not None else Any)
        rec = self._reach(name, "child_wait")
        if rec is not None and rec.status in ("completed", "failed", "timed_out"):
            return _settled(name, rec.status, rec.result, rec.error, codec)
        seq = rec.seq if rec is not None else self._rec.take_seq()

        def check(conn: Connection, hold: Hold) -> tuple[str, Any, Any]:
            states = self._rec.store.composition.children_states(conn, self.run_id, ids)
            missing = [i for i in ids if i not in states]
            if missing:
                raise ValidationError(
                    f"wait {name!r}: run {missing[0]} is not a child of run {self.run_id} (start it with ctx.start_child)"
                )
            deadline = rec.wake_at if rec is not None else (hold.now + limit if limit is not None else None)
            steps = self._rec.store.steps
            pending = [i for i in ids if not states[i].finished]
            if not pending:
                status, result, error = _outcome(ids, states, codec, name)
                steps.save(
                    conn, self.run_id, name, seq=seq, kind="child_wait", status=status, result=result, error=error
                )
                return status, result, error
            if deadline is not None and hold.now >= deadline:
                steps.save(conn, self.run_id, name, seq=seq, kind="child_wait", status="timed_out", wake_at=deadline)
                return "timed_out", None, None
            if rec is None:
                steps.save(conn, self.run_id, name, seq=seq, kind="child_wait", status="waiting", wake_at=deadline)
            return "waiting", pending[0], None if deadline is None else (deadline - hold.now).total_seconds()

        status, value, extra = self._write(check)
        if status != "waiting":
            return _settled(name, status, value, extra, codec)
        # Parked with a guard: if the awaited child ends before the park is written, the run is due at once.
        raise self._state.suspend(park("waiting", extra, child=value))

    # -- fan-out of steps ----------------------------------------------------------------

    def gather(
        self,
        name: str,
        calls: Sequence[tuple[Any, ...]],
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | float | None = None,
    ) -> list[Any]:
        """Run ``fn(*args)`` for each ``(fn, *args)`` of ``calls`` at the same time, on the
        poller's bounded pool of step threads, each recorded as step ``name/i``; returns
        their results in order (on replay, the recorded ones without running anything).
        Each call is retried like a step (``retry``, default 3 attempts; backoffs sleep in
        its thread). If any fails for good, the others still run to the end and are
        recorded, then ``StepFailed`` is raised for the first failed call in the list."""
        check_name(name, "gather name")
        if isinstance(calls, (str, bytes)) or not isinstance(calls, Sequence):
            raise ValidationError(f"gather {name!r} takes a list of (fn, arg) tuples")
        for i, call in enumerate(calls):
            if not isinstance(call, tuple) or not call or not callable(call[0]):
                raise ValidationError(f"gather {name!r}: item {i} must be a tuple (fn, arg), got {call!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValidationError(f"retry of gather {name!r} must be a RetryPolicy or None")
        limit = None if timeout is None else check_duration(timeout, f"timeout of gather {name!r}", allow_zero=False)
        return gather_steps(self, name, list(calls), retry, limit)

    # -- published events ----------------------------------------------------------------

    def set_event(self, key: str, value: Any) -> None:
        """Publish ``value`` under ``key`` for ``client.get_event`` (the latest set wins), in
        the transaction that records it (as ``event:KEY``, ``event:KEY#2``, … for each set
        of the key in this run): a replay does not publish again."""
        check_name(key, "event key")
        count = self._events[key] = self._events.get(key, 0) + 1
        name = f"event:{key}" if count == 1 else f"event:{key}#{count}"
        if self._reach(name, "event") is not None:
            return
        plain, _ = encode_json(value, f"value of event {key!r}", DEFAULT_PAYLOAD_LIMIT)
        seq = self._rec.take_seq()

        def publish(conn: Connection, hold: Hold) -> None:
            self._rec.store.composition.set_event(conn, self.run_id, key, plain)
            self._rec.store.steps.save(conn, self.run_id, name, seq=seq, kind="event", status="completed", result=plain)

        self._write(publish)


def _outcome(ids: list[str], states: dict[str, ChildState], codec: Codec, name: str) -> tuple[str, Any, Any]:
    """The record of a wait whose children have all finished: (status, result, error)."""
    for i in ids:
        state = states[i]
        if state.status != "succeeded":
            kind, message = _split_error(state)
            return "failed", None, {"child": i, "status": state.status, "type": kind, "message": message}
    results = [states[i].result for i in ids]
    for i, value in zip(ids, results, strict=True):  # a result that does not fit: not recorded, fixed code retries
        codec.load(value, f"result of child {i} awaited by {name!r}")
    return "completed", results, None


def _split_error(state: ChildState) -> tuple[str, str]:
    if state.status == "cancelled":
        return "WorkflowCancelled", f"run {state.id} was cancelled"
    line = error_summary(state.last_error or "")
    head, sep, tail = line.partition(": ")
    if sep and head and " " not in head:
        return head.rsplit(".", 1)[-1], tail
    return "Error", line


def _settled(name: str, status: str, result: Any, error: Any, codec: Codec) -> list[Any]:
    if status == "completed":
        return [codec.load(v, f"recorded result of the wait {name!r}") for v in result]
    if status == "timed_out":
        raise WaitTimeout(f"the wait {name!r} for child runs timed out")
    error = error if isinstance(error, dict) else {}
    raise ChildFailed(
        str(error.get("child", "")),
        str(error.get("status", "failed")),
        str(error.get("type", "Error")),
        str(error.get("message", "")),
    )
