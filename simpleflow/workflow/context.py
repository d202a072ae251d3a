"""The replay context: durable steps, timers, signals and versions for workflow functions.

A workflow ``fn(ctx, input)`` runs from the top every time its run is claimed.
Everything it asks of ``ctx`` is recorded in ``workflow_step`` under a name
unique within the run; on later executions a recorded name returns its recorded
value (decoded into the same Python type) without running anything again. A
sleep, a wait for a signal or a long retry backoff parks the run (status
``sleeping``, ``waiting`` or ``pending`` with a later ``run_at``) and frees the
worker thread; the next claim replays up to that point and continues.

Records are written through ``Recorder``, fenced by the lease token. The
context never writes the run's own state: it unwinds with the transition it
wants (a park), and ``workflow.handler`` returns that to the worker. Internal
control flow unwinds with ``BaseException`` subclasses that a user's
``except Exception`` cannot swallow.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy import Connection

from simpleflow.core import tracing
from simpleflow.core.attempt import Attempt
from simpleflow.core.errors import (
    NonDeterminismError,
    NonRetryable,
    SignalTimeout,
    ValidationError,
    WorkflowCancelled,
)
from simpleflow.core.ids import new_id
from simpleflow.core.retry import RetryPolicy
from simpleflow.core.states import park
from simpleflow.core.validation import check_duration, check_int, check_name
from simpleflow.store.steps import Hold, StepRecord
from simpleflow.workflow.children import Composition
from simpleflow.workflow.codec import Codec, codec_for, error_record, step_failed
from simpleflow.workflow.gather import DEFAULT_STEP_RETRY, call_with_timeout
from simpleflow.workflow.recorder import Fenced, LeaseLost, Recorder, SignalMismatch, Sticky, Unwind

log = logging.getLogger("simpleflow.workflow")

T = TypeVar("T")

#: Step backoffs up to this many seconds sleep in the worker thread; longer ones park the run.
INLINE_RETRY_LIMIT = 2.0
#: The version ``get_version`` gives a run that passed the call under code that did not have it yet.
FIRST_VERSION = 1


class WorkflowContext(Composition):
    """What a workflow function is given: durable, replayed building blocks (composition:
    children, gather and published events, in ``workflow.children``).

    Every method takes a ``name`` unique within the run; keep the names (and the
    kind of call made under each name) stable for runs already in flight.
    """

    def __init__(self, recorder: Recorder) -> None:
        self._rec = recorder
        self._run: Attempt = recorder.run
        self._history = recorder.history
        self._seen: set[str] = set()
        self._in_step = False
        self._state = Sticky(recorder.run.id)
        self._events: dict[str, int] = {}

    @property
    def run_id(self) -> str:
        """The id of the workflow run."""
        return self._run.id

    @property
    def attempt(self) -> int:
        """The run's current attempt (suspensions do not spend attempts)."""
        return self._run.attempt

    @property
    def is_replaying(self) -> bool:
        """True while recorded names remain that this execution has not reached yet."""
        return any(name not in self._seen for name in self._history)

    # -- steps ------------------------------------------------------------------------

    def step(
        self,
        name: str,
        fn: Callable[..., T],
        *args: Any,
        retry: RetryPolicy | None = None,
        timeout: timedelta | float | None = None,
        transactional: bool = False,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` once and record its result under ``name``.

        On replay the recorded result is returned, decoded into ``fn``'s return
        annotation, without calling ``fn``. Failed attempts are retried per
        ``retry`` (default: 3 attempts, 1 s then 2 s apart); a backoff over
        ``INLINE_RETRY_LIMIT`` seconds parks the run instead of holding the thread.
        When attempts run out, ``StepFailed`` is raised (and raised again on replay).
        ``timeout``: an attempt still running after it counts as failed; the
        attempt's thread cannot be killed and finishes in the background.
        ``transactional=True``: ``fn(conn, *args, **kwargs)`` runs in the transaction
        that records the step, so its writes commit if and only if the record does.
        """
        if not callable(fn):
            raise ValidationError(f"step {name!r} needs a callable, got {type(fn).__name__}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValidationError(f"retry of step {name!r} must be a RetryPolicy or None")
        if timeout is not None:
            timeout = check_duration(timeout, f"timeout of step {name!r}", allow_zero=False)
        if not isinstance(transactional, bool):
            raise ValidationError(f"transactional of step {name!r} must be True or False")
        if transactional and timeout is not None:
            raise ValidationError(
                f"step {name!r}: timeout cannot be combined with transactional=True (an attempt that shares the "
                "record's transaction cannot be abandoned); use a statement timeout in the database instead"
            )
        codec = codec_for(fn)
        rec = self._reach(name, "step")
        if rec is not None and rec.status == "completed":
            return codec.load(rec.result, f"recorded result of step {name!r}")  # type: ignore[no-any-return]
        if rec is not None and rec.status == "failed":
            raise step_failed(name, rec.error)
        policy = retry or DEFAULT_STEP_RETRY
        attempts = rec.attempts if rec is not None else 0
        seq = rec.seq if rec is not None else self._rec.take_seq()
        if rec is not None and rec.wake_at is not None:  # resuming after a long backoff
            remaining = (rec.wake_at - self._write(lambda conn, hold: hold.now)).total_seconds()
            if remaining > 0:
                raise self._state.suspend(park("pending", remaining))
        while True:
            attempts += 1
            self._check_live()
            try:
                if transactional:
                    return self._run_transactional(name, fn, args, kwargs, codec, seq, attempts)  # type: ignore[no-any-return]
                value = codec.dump(self._call(name, fn, args, kwargs, timeout), f"result of step {name!r}")
                typed = codec.load(value, f"result of step {name!r}")
            except Fenced as fenced:
                raise self._fenced(fenced.hold) from None
            except Unwind:
                raise
            except BaseException as error:  # SystemExit, CancelledError too: this attempt of the step failed
                failure = error_record(error)
                permanent = isinstance(error, NonRetryable) or policy.gives_up_on(error)
                if permanent or attempts >= policy.max_attempts:
                    if permanent:
                        failure["permanent"] = True
                    self._save(name, seq=seq, kind="step", status="failed", attempts=attempts, error=failure)
                    raise step_failed(name, failure) from error
                delay = policy.delay(attempts).total_seconds()
                log.info(
                    "step %r of run %s: attempt %d failed (%s); retrying in %.2fs",
                    name,
                    self.run_id,
                    attempts,
                    failure["type"],
                    delay,
                )
                if delay <= INLINE_RETRY_LIMIT:
                    time.sleep(delay)
                    continue
                self._save(
                    name, seq=seq, kind="step", status="retrying", attempts=attempts, error=failure, wake_in=delay
                )
                raise self._state.suspend(park("pending", delay)) from None
            self._save(name, seq=seq, kind="step", status="completed", attempts=attempts, result=value)
            return typed  # type: ignore[no-any-return]

    def _call(self, name: str, fn: Callable[..., Any], args: Any, kwargs: Any, timeout: timedelta | None) -> Any:
        """One attempt of a step (the context refuses to be used inside it)."""
        self._in_step = True
        try:
            with tracing.span(f"step {name}", self._run, {"simpleflow.step.name": name}):
                return call_with_timeout(name, fn, args, kwargs, timeout)
        finally:
            self._in_step = False

    def _run_transactional(
        self, name: str, fn: Callable[..., Any], args: Any, kwargs: Any, codec: Codec, seq: int, attempts: int
    ) -> Any:
        """``fn(conn, …)``, then the fenced record, in one transaction: both commit or neither does."""
        with self._rec.db.begin() as conn:
            raw = self._call(name, fn, (conn, *args), kwargs, None)
            value = codec.dump(raw, f"result of step {name!r}")
            typed = codec.load(value, f"result of step {name!r}")
            hold = self._rec.store.steps.hold(conn, self._run.lease)
            if not hold.held:
                raise Fenced(hold)
            self._rec.store.steps.save(
                conn, self.run_id, name, seq=seq, kind="step", status="completed", attempts=attempts, result=value
            )
        return typed

    # -- timers -----------------------------------------------------------------------

    def sleep(self, name: str, duration: timedelta | float) -> None:
        """A durable timer: the run sleeps (status ``sleeping``, no thread held) until
        ``duration`` after the first time this line was reached, by the database clock."""
        duration = check_duration(duration, f"duration of sleep {name!r}")
        rec = self._reach(name, "sleep")
        if rec is not None and rec.status == "completed":
            return
        seq = rec.seq if rec is not None else self._rec.take_seq()
        wake_at = rec.wake_at if rec is not None else None

        def record(conn: Connection, hold: Hold) -> float:
            wake = wake_at or hold.now + duration
            remaining = (wake - hold.now).total_seconds()
            status = "completed" if remaining <= 0 else "sleeping"
            if rec is None or status == "completed":
                self._rec.store.steps.save(conn, self.run_id, name, seq=seq, kind="sleep", status=status, wake_at=wake)
            return remaining

        with tracing.span(f"sleep {name}", self._run, {"simpleflow.step.name": name}):
            remaining = self._write(record)
            if remaining > 0:
                raise self._state.suspend(park("sleeping", remaining))

    # -- signals ----------------------------------------------------------------------

    def wait_for_signal(
        self,
        name: str,
        model: Any = None,
        timeout: timedelta | float | None = None,
        *,
        step_name: str | None = None,
    ) -> Any:
        """The payload of the oldest unconsumed signal ``name`` sent to this run.

        Waits in status ``waiting`` (no thread held) until one arrives; a signal
        sent earlier is kept for it. ``model`` (a pydantic model or any type)
        parses the payload. After ``timeout`` raises ``SignalTimeout``. The wait is
        recorded under ``step_name`` (default: the signal's name); give each wait
        for the same signal its own step name.
        """
        check_name(name, "signal name")
        if timeout is not None:
            timeout = check_duration(timeout, f"timeout of the wait for {name!r}")
        codec = Codec(model if model is not None else Any)
        key = name if step_name is None else step_name
        rec = self._reach(key, "signal")
        if rec is not None and rec.status == "received":
            return codec.load(rec.result, f"signal {name!r}")
        if rec is not None and rec.status == "timed_out":
            raise SignalTimeout(f"signal {name!r} did not arrive before the wait {key!r} timed out")
        seq = rec.seq if rec is not None else self._rec.take_seq()

        def check(conn: Connection, hold: Hold) -> tuple[str, Any]:
            steps = self._rec.store.steps
            found = steps.peek_signal(conn, self.run_id, name)
            deadline = rec.wake_at if rec is not None else (hold.now + timeout if timeout is not None else None)
            if found is not None:
                signal_id, payload = found
                try:
                    codec.load(payload, f"signal {name!r}")
                except ValidationError as error:  # leave it unconsumed: fixed code plus a retry recovers
                    raise SignalMismatch(
                        f"signal {name!r} (id {signal_id}) sent to run {self.run_id} does not fit the model its "
                        f"wait expects, so it was left unconsumed: {error}"
                    ) from None
                steps.consume_signal(conn, signal_id, key)
                steps.save(
                    conn, self.run_id, key, seq=seq, kind="signal", status="received", result=payload, wake_at=deadline
                )
                return "received", payload
            if deadline is not None and hold.now >= deadline:
                steps.save(conn, self.run_id, key, seq=seq, kind="signal", status="timed_out", wake_at=deadline)
                return "timed_out", None
            if rec is None:
                steps.save(conn, self.run_id, key, seq=seq, kind="signal", status="waiting", wake_at=deadline)
            remaining = None if deadline is None else (deadline - hold.now).total_seconds()
            return "waiting", remaining

        with tracing.span(f"wait_for_signal {name}", self._run, {"simpleflow.step.name": key}) as span:
            outcome, value = self._write(check)
            span.set("simpleflow.signal.outcome", outcome)
            if outcome == "timed_out":
                span.fail(f"signal {name!r} did not arrive in time")
        if outcome == "received":
            return codec.load(value, f"signal {name!r}")
        if outcome == "timed_out":
            raise SignalTimeout(f"signal {name!r} did not arrive before the wait {key!r} timed out")
        # Parked with a guard: if the signal arrives before the park is written, the run is due at once.
        raise self._state.suspend(park("waiting", value, signal=name))

    # -- recorded values ----------------------------------------------------------------

    def now(self, name: str) -> datetime:
        """The current time (aware, UTC), recorded once: the same value on every replay."""
        value = self._value(name, "now", lambda: datetime.now(timezone.utc).isoformat())
        return datetime.fromisoformat(str(value))

    def uuid7(self, name: str) -> str:
        """A new UUIDv7 string, recorded once: the same value on every replay."""
        return str(self._value(name, "uuid", new_id))

    def random(self, name: str) -> float:
        """A random float in [0, 1), recorded once: the same value on every replay."""
        return float(self._value(name, "random", random.random))

    def get_version(self, change_id: str, min_supported: int, max_supported: int) -> int:
        """Which side of a code change this run follows (versions start at 1).

        The first time a run reaches the call it records ``max_supported``; a run
        that had already passed this point under older code (its history goes on
        beyond it) gets ``FIRST_VERSION`` (1). A recorded version outside
        ``[min_supported, max_supported]`` raises ``NonDeterminismError``.
        """
        check_name(change_id, "change id")
        check_int(min_supported, "min_supported", 1, 2**31 - 1)
        check_int(max_supported, "max_supported", min_supported, 2**31 - 1)
        name = f"version:{change_id}"
        replaying = self.is_replaying
        rec = self._reach(name, "version")
        version = int(rec.result) if rec is not None else (FIRST_VERSION if replaying else max_supported)
        if not min_supported <= version <= max_supported:
            how = "recorded" if rec is not None else "started under code without this call, so its version is"
            raise self._nondeterminism(
                f"change {change_id!r}: this run {how} {version}, outside the supported range "
                f"[{min_supported}, {max_supported}]"
            )
        if rec is None:
            seq = self._rec.take_seq()
            self._save(name, seq=seq, kind="version", status="completed", result=version)
        return version

    def _value(self, name: str, kind: str, produce: Callable[[], Any]) -> Any:
        rec = self._reach(name, kind)
        if rec is not None:
            return rec.result
        value = produce()
        self._save(name, seq=self._rec.take_seq(), kind=kind, status="completed", result=value)
        return value

    # -- bookkeeping --------------------------------------------------------------------

    def _reach(self, name: str, kind: str) -> StepRecord | None:
        """Enter a named call: re-raise a sticky outcome, check the name, compare the record's kind."""
        if self._in_step:
            raise ValidationError(f"{kind} {name!r}: the workflow context cannot be used inside a step function")
        self._state.raise_if_set()
        check_name(name, f"{kind} name")
        if name in self._seen:
            raise ValidationError(
                f"the name {name!r} is already used in this run; every step, sleep, signal wait and value "
                "needs its own name (e.g. add a counter: 'charge/1', 'charge/2')"
            )
        self._seen.add(name)
        rec = self._history.get(name)
        if rec is not None and rec.kind != kind:
            raise self._nondeterminism(
                f"step {name!r} was recorded as a {rec.kind} but the workflow code now reaches it as a {kind}"
            )
        if self._run.is_cancelled():
            self._check_live()
        return rec

    def _nondeterminism(self, message: str) -> NonDeterminismError:
        self._state.fatal = (
            f"run {self.run_id}: {message}; the recorded history no longer matches the code "
            "(keep old branches behind ctx.get_version, or let old runs finish before changing the code)"
        )
        return NonDeterminismError(self._state.fatal)

    def _check_live(self) -> None:
        """Before new work: a cheap read of the run's status (no lock, no transaction on
        PostgreSQL), so a cancel between two steps stops the workflow before the next."""
        self._state.raise_if_set()
        status = self._rec.status()
        if status == "cancelled":
            self._state.cancelled = True
            raise WorkflowCancelled(f"run {self.run_id} was cancelled")
        if status != "leased" or self._run.is_cancelled():
            self._state.lost = True
            raise LeaseLost()

    def _fenced(self, hold: Hold) -> BaseException:
        if hold.status == "cancelled":
            self._state.cancelled = True
            return WorkflowCancelled(f"run {self.run_id} was cancelled")
        self._state.lost = True
        return LeaseLost()

    def _write(self, fn: Callable[[Connection, Hold], T]) -> T:
        try:
            return self._rec.write(fn)
        except Fenced as fenced:
            raise self._fenced(fenced.hold) from None

    def _save(self, name: str, **record: Any) -> None:
        try:
            self._rec.save(name, **record)
        except Fenced as fenced:
            raise self._fenced(fenced.hold) from None
