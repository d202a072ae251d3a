"""The replay context: durable steps, timers, signals and versions for workflow functions.

A workflow ``fn(ctx, input)`` runs from the top every time its run is claimed.
Everything it asks of ``ctx`` is recorded in ``workflow_step`` under a name
unique within the run; on later executions a recorded name returns its recorded
value (decoded into the same Python type) without running anything again. A
sleep, a wait for a signal or a long retry backoff parks the run (status
``sleeping``, ``waiting`` or ``pending`` with a later ``run_at``) and frees the
worker thread; the next claim replays up to that point and continues.

Every record is written in a short transaction fenced by the lease (the run is
still ``leased`` by this worker and attempt): a worker that lost its run writes
nothing. Internal control flow (suspension, lease loss) unwinds the workflow
with ``BaseException`` subclasses that a user's ``except Exception`` cannot
swallow.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

from pydantic import PydanticUserError, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from simpleflow.core.errors import (
    AlreadyComplete,
    NonDeterminismError,
    NotFound,
    SignalTimeout,
    StepFailed,
    ValidationError,
    WorkflowCancelled,
)
from simpleflow.core.ids import new_id
from simpleflow.core.models import StepInfo
from simpleflow.core.retry import RetryPolicy
from simpleflow.core.validation import check_duration, check_int, check_name, encode_json
from simpleflow.db.database import is_transient
from simpleflow.db.notify import local_bus
from simpleflow.db.schema import TERMINAL_STATUSES
from simpleflow.store.steps import Hold, StepRecord, StepStore
from simpleflow.worker.poller import Suspend
from simpleflow.worker.run import WorkflowRun

if TYPE_CHECKING:
    from simpleflow.client import Client
    from simpleflow.worker.poller import Poller

log = logging.getLogger("simpleflow.workflow")

T = TypeVar("T")

#: Step backoffs up to this many seconds sleep in the worker thread; longer ones park the run.
INLINE_RETRY_LIMIT = 2.0
#: Retries of a step given no ``retry=``: 3 attempts, 1 s then 2 s apart.
DEFAULT_STEP_RETRY = RetryPolicy(
    initial_delay=timedelta(seconds=1), multiplier=2.0, max_delay=timedelta(minutes=5), jitter=0.1, max_attempts=3
)
#: The version ``get_version`` gives a run that passed the call under code that did not have it yet.
FIRST_VERSION = 1

_ANY: TypeAdapter[Any] = TypeAdapter(Any)


# -- internal control flow -------------------------------------------------------------


class _Unwind(BaseException):
    """Leaves the workflow function; not an ``Exception``, so ``except Exception`` lets it pass."""


class _Suspended(_Unwind):
    """Park the run: the workflow cannot go on before a time or a signal."""

    def __init__(self, suspend: Suspend) -> None:
        super().__init__(suspend.status)
        self.suspend = suspend


class _LeaseLost(_Unwind):
    """This worker no longer holds the run (taken back after an expired lease): stop, write nothing."""


class _Fenced(_Unwind):
    """A fenced write found the lease gone; rolls its transaction back."""

    def __init__(self, hold: Hold) -> None:
        super().__init__(hold.status)
        self.hold = hold


# -- types of recorded values -----------------------------------------------------------


class _Codec:
    """Turns a value into JSON for its record and back into the declared Python type."""

    def __init__(self, annotation: Any = Any) -> None:
        self.annotation = annotation
        self.adapter: TypeAdapter[Any] = _ANY if annotation is Any else _adapter(annotation)

    def dump(self, value: Any, what: str) -> Any:
        try:
            plain = self.adapter.dump_python(value, mode="json", warnings=False)
        except Exception as error:  # pydantic raises several types here
            raise ValidationError(f"{what} cannot be recorded as JSON: {error}") from None
        return encode_json(plain, what, None)[0]

    def load(self, value: Any, what: str) -> Any:
        try:
            return self.adapter.validate_python(value)
        except PydanticValidationError as error:
            raise ValidationError(f"{what} does not fit {_type_name(self.annotation)}: {error}") from None


@functools.lru_cache(maxsize=1024)
def _cached_adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    try:
        try:
            return _cached_adapter(annotation)
        except TypeError:  # an unhashable annotation: build it uncached
            return TypeAdapter(annotation)
    except PydanticUserError as error:
        raise ValidationError(
            f"cannot record values of type {_type_name(annotation)}: {str(error).splitlines()[0]}; annotate with a JSON-compatible "
            "type, a pydantic model or a dataclass"
        ) from None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or repr(annotation)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The resolved type hints of a function (of the wrapped function for a ``partial``).

    Builtins and classes give none (their values are recorded as plain JSON).
    """
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if isinstance(target, type) or inspect.isbuiltin(target):
        return {}
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(type(target), "__call__", None)  # noqa: B004 - the method of a callable object
        if not inspect.isfunction(target):
            return {}
    try:
        return get_type_hints(target)
    except Exception as error:
        name = getattr(fn, "__qualname__", repr(fn))
        raise ValidationError(
            f"cannot resolve the type hints of {name}: {error}; define the types it names at module level"
        ) from None


@functools.lru_cache(maxsize=1024)
def _step_codec(fn: Callable[..., Any]) -> _Codec:
    return _Codec(_hints(fn).get("return", Any))


def _codec_for(fn: Callable[..., Any]) -> _Codec:
    try:
        return _step_codec(fn)
    except TypeError:  # an unhashable callable
        return _Codec(_hints(fn).get("return", Any))


def _error_record(error: BaseException) -> dict[str, str]:
    return {
        "type": type(error).__name__,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }


def _step_failed(name: str, error: Any) -> StepFailed:
    error = error if isinstance(error, dict) else {}
    return StepFailed(
        name, str(error.get("type", "Exception")), str(error.get("message", "")), str(error.get("traceback", ""))
    )


# -- the context --------------------------------------------------------------------------


class WorkflowContext:
    """What a workflow function is given: durable, replayed building blocks.

    Every method takes a ``name`` unique within the run; keep the names (and the
    kind of call made under each name) stable for runs already in flight.
    """

    def __init__(
        self, poller: Poller, steps: StepStore, run: WorkflowRun, history: dict[str, StepRecord]
    ) -> None:
        self._db = poller.db
        self._steps = steps
        self._run = run
        self._worker_id = poller.worker_id
        self._history = history
        self._seen: set[str] = set()
        self._conn: Connection | None = None
        self._next_seq = max((r.seq for r in history.values()), default=0) + 1
        self._in_step = False
        # Sticky outcomes: once one is reached, every later ctx call raises it again.
        self._suspended: Suspend | None = None
        self._fatal: str | None = None
        self._cancelled = False
        self._lost = False

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
        codec = _codec_for(fn)
        rec = self._reach(name, "step")
        if rec is not None and rec.status == "completed":
            return codec.load(rec.result, f"recorded result of step {name!r}")  # type: ignore[no-any-return]
        if rec is not None and rec.status == "failed":
            raise _step_failed(name, rec.error)
        policy = retry or DEFAULT_STEP_RETRY
        attempts = rec.attempts if rec is not None else 0
        seq = rec.seq if rec is not None else self._take_seq()
        if rec is not None and rec.wake_at is not None:  # resuming after a long backoff
            remaining = (rec.wake_at - self._write(lambda conn, hold: hold.now)).total_seconds()
            if remaining > 0:
                raise self._suspend(Suspend("pending", remaining))
        while True:
            attempts += 1
            self._check_live()
            try:
                if transactional:
                    return self._run_transactional(name, fn, args, kwargs, codec, seq, attempts)  # type: ignore[no-any-return]
                value = codec.dump(self._call(name, fn, args, kwargs, timeout), f"result of step {name!r}")
                typed = codec.load(value, f"result of step {name!r}")
            except _Fenced as fenced:
                raise self._fenced(fenced.hold) from None
            except Exception as error:
                failure = _error_record(error)
                if attempts >= policy.max_attempts:
                    self._save(name, seq=seq, kind="step", status="failed", attempts=attempts, error=failure)
                    raise _step_failed(name, failure) from error
                delay = policy.delay(attempts).total_seconds()
                log.info("step %r of run %s: attempt %d failed (%s); retrying in %.2fs",
                         name, self.run_id, attempts, failure["type"], delay)
                if delay <= INLINE_RETRY_LIMIT:
                    time.sleep(delay)
                    continue
                self._save(name, seq=seq, kind="step", status="retrying", attempts=attempts, error=failure,
                           wake_in=delay)
                raise self._suspend(Suspend("pending", delay)) from None
            self._save(name, seq=seq, kind="step", status="completed", attempts=attempts, result=value)
            return typed  # type: ignore[no-any-return]

    def _call(self, name: str, fn: Callable[..., Any], args: Any, kwargs: Any, timeout: timedelta | None) -> Any:
        """One attempt; with a timeout it runs in a helper thread that is abandoned when late."""
        self._in_step = True
        try:
            if timeout is None:
                return fn(*args, **kwargs)
            box: dict[str, Any] = {}

            def attempt() -> None:
                try:
                    box["value"] = fn(*args, **kwargs)
                except BaseException as error:
                    box["error"] = error

            thread = threading.Thread(target=attempt, name=f"simpleflow-step-{name}", daemon=True)
            thread.start()
            thread.join(timeout.total_seconds())
            if thread.is_alive():
                raise TimeoutError(
                    f"step {name!r} did not finish within {timeout} (the late attempt keeps running "
                    "in a background thread: Python threads cannot be stopped)"
                )
            if "error" in box:
                raise box["error"]
            return box["value"]
        finally:
            self._in_step = False

    def _run_transactional(
        self, name: str, fn: Callable[..., Any], args: Any, kwargs: Any, codec: _Codec, seq: int, attempts: int
    ) -> Any:
        """``fn(conn, …)``, then the fenced record, in one transaction: both commit or neither does."""
        with self._db.engine.begin() as conn:
            self._in_step = True
            try:
                raw = fn(conn, *args, **kwargs)
            finally:
                self._in_step = False
            value = codec.dump(raw, f"result of step {name!r}")
            typed = codec.load(value, f"result of step {name!r}")
            hold = self._steps.hold(conn, self._worker_id, self.run_id, self.attempt)
            if not hold.held:
                raise _Fenced(hold)
            self._steps.save(conn, self.run_id, name, seq=seq, kind="step", status="completed",
                             attempts=attempts, result=value)
        return typed

    # -- timers -----------------------------------------------------------------------

    def sleep(self, name: str, duration: timedelta | float) -> None:
        """A durable timer: the run sleeps (status ``sleeping``, no thread held) until
        ``duration`` after the first time this line was reached, by the database clock."""
        delta = check_duration(duration, f"duration of sleep {name!r}")
        rec = self._reach(name, "sleep")
        if rec is not None and rec.status == "completed":
            return
        seq = rec.seq if rec is not None else self._take_seq()
        wake_at = rec.wake_at if rec is not None else None

        def record(conn: Connection, hold: Hold) -> float:
            wake = wake_at or hold.now + delta
            remaining = (wake - hold.now).total_seconds()
            status = "completed" if remaining <= 0 else "sleeping"
            if rec is None or status == "completed":
                self._steps.save(conn, self.run_id, name, seq=seq, kind="sleep", status=status, wake_at=wake)
            return remaining

        remaining = self._write(record)
        if remaining > 0:
            raise self._suspend(Suspend("sleeping", remaining))

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
        codec = _Codec(model if model is not None else Any)
        key = name if step_name is None else step_name
        rec = self._reach(key, "signal")
        if rec is not None and rec.status == "received":
            return codec.load(rec.result, f"signal {name!r}")
        if rec is not None and rec.status == "timed_out":
            raise SignalTimeout(f"signal {name!r} did not arrive before the wait {key!r} timed out")
        seq = rec.seq if rec is not None else self._take_seq()

        def check(conn: Connection, hold: Hold) -> tuple[str, Any]:
            found, payload = self._steps.take_signal(conn, self.run_id, name, key)
            deadline = rec.wake_at if rec is not None else (hold.now + timeout if timeout is not None else None)
            if found:
                self._steps.save(conn, self.run_id, key, seq=seq, kind="signal", status="received",
                                 result=payload, wake_at=deadline)
                return "received", payload
            if deadline is not None and hold.now >= deadline:
                self._steps.save(conn, self.run_id, key, seq=seq, kind="signal", status="timed_out", wake_at=deadline)
                return "timed_out", None
            if rec is None:
                self._steps.save(conn, self.run_id, key, seq=seq, kind="signal", status="waiting", wake_at=deadline)
            remaining = None if deadline is None else (deadline - hold.now).total_seconds()
            # Parked in the same transaction as the check: a signal sent meanwhile waits for
            # this row lock, then finds the run ``waiting`` and wakes it.
            self._steps.store.suspend(conn, self._worker_id, self.run_id, self.attempt, "waiting", remaining)
            return "waiting", remaining

        outcome, value = self._write(check)
        if outcome == "received":
            return codec.load(value, f"signal {name!r}")
        if outcome == "timed_out":
            raise SignalTimeout(f"signal {name!r} did not arrive before the wait {key!r} timed out")
        raise self._suspend(Suspend("waiting", value, recorded=True))

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
            seq = self._take_seq()
            self._save(name, seq=seq, kind="version", status="completed", result=version)
        return version

    def _value(self, name: str, kind: str, produce: Callable[[], Any]) -> Any:
        rec = self._reach(name, kind)
        if rec is not None:
            return rec.result
        value = produce()
        self._save(name, seq=self._take_seq(), kind=kind, status="completed", result=value)
        return value

    # -- bookkeeping --------------------------------------------------------------------

    def _reach(self, name: str, kind: str) -> StepRecord | None:
        """Enter a named call: re-raise a sticky outcome, check the name, compare the record's kind."""
        if self._in_step:
            raise ValidationError(f"{kind} {name!r}: the workflow context cannot be used inside a step function")
        self._raise_sticky()
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

    def _raise_sticky(self) -> None:
        if self._fatal is not None:
            raise NonDeterminismError(self._fatal)
        if self._lost:
            raise _LeaseLost()
        if self._cancelled:
            raise WorkflowCancelled(f"run {self.run_id} was cancelled")
        if self._suspended is not None:
            raise _Suspended(self._suspended)

    def _nondeterminism(self, message: str) -> NonDeterminismError:
        self._fatal = (
            f"run {self.run_id}: {message}; the recorded history no longer matches the code "
            "(keep old branches behind ctx.get_version, or let old runs finish before changing the code)"
        )
        return NonDeterminismError(self._fatal)

    def _suspend(self, suspend: Suspend) -> _Suspended:
        self._suspended = suspend
        return _Suspended(suspend)

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _check_live(self) -> None:
        """Before new work: a cheap read of the run's status (no lock, no transaction on
        PostgreSQL), so a cancel between two steps stops the workflow before the next."""
        self._raise_sticky()
        status = self._single(lambda conn: self._steps.run_status(conn, self.run_id), read=True)
        if status == "cancelled":
            self._cancelled = True
            raise WorkflowCancelled(f"run {self.run_id} was cancelled")
        if status != "leased" or self._run.is_cancelled():
            self._lost = True
            raise _LeaseLost()

    def _single(self, fn: Callable[[Connection], T], *, read: bool = False) -> T:
        """Run a self-contained statement (a read, or a write that is atomic on its own).

        PostgreSQL: on one autocommit connection kept for this execution, so a long
        run of steps pays no pool checkout per record; a dropped connection falls back
        to the retrying path. SQLite: a short transaction as usual.
        """
        if not self._db.is_postgres:
            return self._db.run(fn, read=read)
        try:
            if self._conn is None:
                self._conn = self._db.engine.connect()
                self._conn.execution_options(isolation_level="AUTOCOMMIT")
            return fn(self._conn)
        except DBAPIError as error:
            self._release_connection()
            if not is_transient(error):
                raise
            return self._db.run(fn, autocommit=True)

    def _release_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except DBAPIError:  # a broken connection: the pool discards it
                log.debug("closing a broken connection of run %s", self.run_id)

    def _fenced(self, hold: Hold) -> BaseException:
        if hold.status == "cancelled":
            self._cancelled = True
            return WorkflowCancelled(f"run {self.run_id} was cancelled")
        self._lost = True
        return _LeaseLost()

    def _write(self, fn: Callable[[Connection, Hold], T]) -> T:
        """One short transaction that runs ``fn`` only while this worker still holds the run."""

        def tx(conn: Connection) -> T:
            hold = self._steps.hold(conn, self._worker_id, self.run_id, self.attempt)
            if not hold.held:
                raise _Fenced(hold)
            return fn(conn, hold)

        try:
            return self._db.run(tx)
        except _Fenced as fenced:
            raise self._fenced(fenced.hold) from None

    def _save(self, name: str, *, seq: int, kind: str, status: str, attempts: int = 0, result: Any = None,
              error: Any = None, wake_in: float | None = None) -> None:
        if wake_in is None:  # the hot path: one fenced statement (PostgreSQL), no database time needed
            saved = self._single(
                lambda conn: self._steps.save_if_held(
                    conn, self._worker_id, self.run_id, self.attempt, name, seq=seq, kind=kind, status=status,
                    attempts=attempts, result=result, error=error,
                )
            )
            if saved:
                        return
            self._write(lambda conn, hold: None)  # not held: find out why, and raise accordingly
            raise AssertionError("a write fenced out by the lease must raise")  # pragma: no cover

        def save(conn: Connection, hold: Hold) -> None:
            wake_at = None if wake_in is None else hold.now + timedelta(seconds=wake_in)
            self._steps.save(conn, self.run_id, name, seq=seq, kind=kind, status=status, attempts=attempts,
                             result=result, error=error, wake_at=wake_at)

        self._write(save)


# -- the handler the poller runs ------------------------------------------------------------


@dataclass(frozen=True)
class _Workflow:
    """A registered workflow function with its input and result types."""

    type: str
    fn: Callable[..., Any]
    input: _Codec | None  # None: the function takes the JSON payload as is
    result: _Codec


def workflow_handler(poller: Poller, type: str, fn: Callable[..., Any]) -> Callable[[WorkflowRun], Any]:
    """Wrap ``fn(ctx, input)`` into the poller's ``invoke(run)``: replay, then result or ``Suspend``."""
    if not callable(fn):
        raise ValidationError(f"workflow for {type!r} must be callable, got {fn!r}")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise ValidationError(f"workflow for {type!r} must take two arguments: fn(ctx: WorkflowContext, input)")
    hints = _hints(fn)
    input_hint = hints.get(positional[1].name) if len(positional) == 2 else None
    workflow = _Workflow(
        type, fn, _Codec(input_hint) if input_hint is not None else None, _Codec(hints.get("return", Any))
    )
    steps = StepStore(poller.store)

    def invoke(run: WorkflowRun) -> Any:
        return _execute(poller, steps, workflow, run)

    return invoke


def _execute(poller: Poller, steps: StepStore, workflow: _Workflow, run: WorkflowRun) -> Any:
    """One execution of a workflow run: replay from the top until it finishes or parks."""
    if workflow.input is not None:
        try:
            argument = workflow.input.load(run.payload_value, f"input of run {run.id}")
        except ValidationError as error:  # the payload cannot change: retrying will not help
            return _fail_now(poller, run, error)
    else:
        argument = run.payload_value
    history = poller.db.run(lambda conn: steps.load(conn, run.id), read=True)
    ctx = WorkflowContext(poller, steps, run, history)
    try:
        value = workflow.fn(ctx, argument)
    except _Unwind:
        return _settle(poller, ctx, run, None)
    except Exception as error:
        return _settle(poller, ctx, run, error)
    finally:
        ctx._release_connection()
    settled = _settle(poller, ctx, run, None, finished=True)
    if settled is not None:
        return settled
    return workflow.result.dump(value, f"result of run {run.id}")


def _settle(
    poller: Poller, ctx: WorkflowContext, run: WorkflowRun, error: Exception | None, finished: bool = False
) -> Any:
    """What an execution amounts to, whatever the workflow did with our exceptions.

    Non-determinism fails the run at once (replaying cannot fix it); a lost lease or a
    cancellation writes nothing; a suspension parks the run. Otherwise an error is the
    attempt's failure (re-raised for the poller) and a finished function its result (None here).
    """
    if ctx._fatal is not None:
        return _fail_now(poller, run, error if isinstance(error, NonDeterminismError) else NonDeterminismError(ctx._fatal))
    if ctx._lost:
        log.warning("run %s: lease lost (the run was taken back); this worker stops without writing", run.id)
        return Suspend("pending", None, recorded=True)
    if ctx._cancelled:
        log.info("run %s: cancelled; stopped at a step boundary", run.id)
        return Suspend("cancelled", None, recorded=True)
    if ctx._suspended is not None:
        return ctx._suspended
    if error is not None:
        raise error
    assert finished
    return None


def _fail_now(poller: Poller, run: WorkflowRun, error: BaseException) -> Suspend:
    """Fail the run for good in one fenced transaction (no retry), with the traceback."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    status = poller.db.run(lambda conn: poller.store.fail(conn, poller.worker_id, run.id, run.attempt, text, None))
    if status is not None:
        log.error("run %s failed for good: %s", run.id, error)
    return Suspend("failed", None, recorded=True)


# -- client side ------------------------------------------------------------------------------


def send_signal(client: Client, run_id: str, name: str, payload: Any) -> None:
    """Store a signal for a run and wake it if it waits (``Client.signal``)."""
    name = check_name(name, "signal name")
    value, _ = encode_json(payload, "signal payload", client.payload_limit)
    steps = StepStore(client.store)

    def deliver(conn: Connection) -> bool:
        status = steps.lock_run(conn, run_id)
        if status is None:
            raise NotFound(f"run {run_id} not found")
        if status in TERMINAL_STATUSES:
            raise AlreadyComplete(f"run {run_id} is already {status}; signals can only go to unfinished runs")
        signal_id = steps.add_signal(conn, run_id, name, value)
        woke = steps.wake_waiting(conn, run_id)
        client.store.add_events(
            conn, [{"run_id": run_id, "event_type": "signalled",
                    "detail": {"signal": name, "signal_id": signal_id, "woke": woke}}],
        )
        return woke

    if client.db.run(deliver):
        local_bus.publish(client.db.key)


def get_steps(client: Client, run_id: str) -> list[StepInfo]:
    """The run's records in order (``Client.get_steps``); ``NotFound`` if the run does not exist."""
    steps = StepStore(client.store)

    def read(conn: Connection) -> list[StepInfo]:
        client.store.get_run(conn, run_id)
        return steps.list_steps(conn, run_id)

    return client.db.run(read)
