"""Step functions on threads: one attempt with a timeout, and ``ctx.gather``'s fan-out.

``gather`` runs its calls on a ``GatherPool``, the bounded pool of step threads a
poller owns. The threads only call the user's functions; the records are written
by the workflow's own thread as results come in (fenced like any step), so a
call that finished is recorded even if another is still running or fails.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import timedelta
from typing import Any

from simpleflow.core.errors import AttemptTimeout, NonRetryable
from simpleflow.core.retry import RetryPolicy
from simpleflow.workflow.codec import codec_for, error_record, step_failed

#: Retries of a step given no ``retry=``: 3 attempts, 1 s then 2 s apart.
DEFAULT_STEP_RETRY = RetryPolicy(
    initial_delay=timedelta(seconds=1), multiplier=2.0, max_delay=timedelta(minutes=5), jitter=0.1, max_attempts=3
)


class GatherPool:
    """At most ``size()`` threads running ``gather`` calls for a poller's workflows; started
    on first use, stopped with the poller (and started again if it starts again)."""

    def __init__(self, size: Callable[[], int]) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max(1, self._size()), thread_name_prefix="simpleflow-gather")
            return self._executor.submit(fn, *args)

    def shutdown(self) -> None:
        """Let the threads end once their calls return (a late call's result is dropped)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


def call_with_timeout(name: str, fn: Callable[..., Any], args: Any, kwargs: Any, timeout: timedelta | None) -> Any:
    """``fn(*args, **kwargs)``; with a timeout it runs in a helper thread, abandoned when late
    (``AttemptTimeout``: Python threads cannot be stopped, the late attempt runs on)."""
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
        raise AttemptTimeout(
            f"step {name!r} did not finish within {timeout} (the late attempt keeps running "
            "in a background thread: Python threads cannot be stopped)"
        )
    if "error" in box:
        raise box["error"]
    return box["value"]


def _attempts(
    name: str, call: tuple[Any, ...], policy: RetryPolicy, timeout: timedelta | None, done: int, stop: threading.Event
) -> tuple[bool, Any, int]:
    """On a pool thread: the attempts of one call, retried per ``policy`` (backoffs sleep
    here). (succeeded, value or error record, attempts)."""
    fn, args = call[0], call[1:]
    codec = codec_for(fn)
    attempts = done
    while True:
        attempts += 1
        try:
            return (
                True,
                codec.dump(call_with_timeout(name, fn, args, {}, timeout), f"result of step {name!r}"),
                attempts,
            )
        except BaseException as error:  # this attempt of the call failed
            failure = error_record(error)
            permanent = isinstance(error, NonRetryable) or policy.gives_up_on(error)
            if permanent or attempts >= policy.max_attempts or stop.is_set():
                if permanent:
                    failure["permanent"] = True
                return False, failure, attempts
            if stop.wait(policy.delay(attempts).total_seconds()):
                return False, failure, attempts


def gather_steps(
    ctx: Any, name: str, calls: list[tuple[Any, ...]], retry: RetryPolicy | None, timeout: timedelta | None
) -> list[Any]:
    """``ctx.gather``: replay what is recorded, run the rest at once, record each as it ends."""
    names = [f"{name}/{i}" for i in range(len(calls))]
    records = [ctx._reach(n, "step") for n in names]
    results: list[Any] = [None] * len(calls)
    failures: dict[int, Exception] = {}
    todo: list[tuple[int, int, int]] = []  # (index, seq, attempts already spent)
    for i, rec in enumerate(records):
        if rec is not None and rec.status == "completed":
            results[i] = codec_for(calls[i][0]).load(rec.result, f"recorded result of step {names[i]!r}")
        elif rec is not None and rec.status == "failed":
            failures[i] = step_failed(names[i], rec.error)
        else:
            todo.append((i, rec.seq if rec is not None else ctx._rec.take_seq(), rec.attempts if rec else 0))
    if todo:
        ctx._check_live()
        _run(ctx, names, calls, todo, retry or DEFAULT_STEP_RETRY, timeout, results, failures)
    if failures:
        raise failures[min(failures)]
    return results


def _run(
    ctx: Any,
    names: list[str],
    calls: list[tuple[Any, ...]],
    todo: list[tuple[int, int, int]],
    policy: RetryPolicy,
    timeout: timedelta | None,
    results: list[Any],
    failures: dict[int, Exception],
) -> None:
    pool: GatherPool | None = ctx._rec.pool
    own = pool is None
    if pool is None:  # a context outside a poller: threads for this call only
        pool = GatherPool(lambda: len(todo))
    stop = threading.Event()
    ctx._in_step = True
    try:
        futures = {
            pool.submit(_attempts, names[i], calls[i], policy, timeout, done, stop): (i, seq) for i, seq, done in todo
        }
        for future in as_completed(futures):
            i, seq = futures[future]
            ok, value, attempts = future.result()
            if ok:
                ctx._save(names[i], seq=seq, kind="step", status="completed", attempts=attempts, result=value)
                results[i] = codec_for(calls[i][0]).load(value, f"result of step {names[i]!r}")
            else:
                ctx._save(names[i], seq=seq, kind="step", status="failed", attempts=attempts, error=value)
                failures[i] = step_failed(names[i], value)
    finally:
        stop.set()  # a run that unwinds (cancelled, lease lost) stops the retries of the others
        ctx._in_step = False
        if own:
            pool.shutdown()
