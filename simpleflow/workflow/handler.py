"""A workflow function as a handler: one execution replays the run and returns its transition.

The worker runs ``invoke(run)`` like any handler. It returns ``complete`` with the
function's result, the ``park`` the context unwound with, ``fail`` for good on
non-determinism or an input that can never fit, or None when there is nothing to
write (the lease was lost, or the run was cancelled). Any other error the
function raises is the attempt's failure, which the worker turns into a retry or
a failure by the retry policy. This module never writes the run's state itself.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simpleflow.core.attempt import Attempt
from simpleflow.core.errors import NonDeterminismError, ValidationError
from simpleflow.core.states import Transition, complete, fail, format_error
from simpleflow.store import Store
from simpleflow.workflow.codec import Codec, hints
from simpleflow.workflow.context import WorkflowContext
from simpleflow.workflow.gather import GatherPool
from simpleflow.workflow.recorder import Recorder, Unwind

log = logging.getLogger("simpleflow.workflow")


@dataclass(frozen=True)
class _Workflow:
    """A registered workflow function with its input and result types."""

    type: str
    fn: Callable[..., Any]
    input: Codec | None  # None: the function takes the JSON payload as is
    result: Codec


@dataclass(frozen=True)
class WorkflowHandler:
    """A handler's ``invoke(run)`` for a workflow; ``workflow`` is what ``check-history`` replays,
    ``pool`` the threads of ``ctx.gather``."""

    store: Store
    workflow: _Workflow
    pool: GatherPool | None = None

    def __call__(self, run: Attempt) -> Transition | None:
        return execute(self.store, self.workflow, run, self.pool)


def workflow_handler(
    store: Store, type: str, fn: Callable[..., Any], pool: GatherPool | None = None
) -> WorkflowHandler:
    """Wrap ``fn(ctx, input)`` into a handler's ``invoke(run)``; ``pool``: the threads of ``ctx.gather``."""
    if not callable(fn):
        raise ValidationError(f"workflow for {type!r} must be callable, got {fn!r}")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise ValidationError(f"workflow for {type!r} must take two arguments: fn(ctx: WorkflowContext, input)")
    found = hints(fn)
    input_hint = found.get(positional[1].name) if len(positional) == 2 else None
    workflow = _Workflow(
        type, fn, Codec(input_hint) if input_hint is not None else None, Codec(found.get("return", Any))
    )
    return WorkflowHandler(store, workflow, pool)


def execute(store: Store, workflow: _Workflow, run: Attempt, pool: GatherPool | None = None) -> Transition | None:
    """One execution of a workflow run: replay from the top until it finishes or parks."""
    if workflow.input is not None:
        try:
            argument = workflow.input.load(run.payload_value, f"input of run {run.id}")
        except ValidationError as error:  # the payload cannot change: retrying will not help
            return fail(format_error(error))
    else:
        argument = run.payload_value
    history = store.db.run(lambda conn: store.steps.load(conn, run.id), read=True)
    recorder = Recorder(store, run, history, pool)
    ctx = WorkflowContext(recorder)
    try:
        value = workflow.fn(ctx, argument)
    except Unwind:
        return outcome(ctx, run, None)
    except Exception as error:
        return outcome(ctx, run, error)
    finally:
        recorder.close()
    settled = outcome(ctx, run, None, finished=True)
    if settled is not None or ctx._state.lost or ctx._state.cancelled:
        return settled
    return complete(workflow.result.dump(value, f"result of run {run.id}"))


def outcome(ctx: WorkflowContext, run: Attempt, error: Exception | None, finished: bool = False) -> Transition | None:
    """What an execution amounts to, whatever the workflow did with our exceptions.

    Non-determinism fails the run at once (replaying cannot fix it); a lost lease or a
    cancellation writes nothing; a suspension parks the run. Otherwise an error is the
    attempt's failure (re-raised for the worker) and a finished function its result.
    """
    if ctx._state.fatal is not None:
        fatal = error if isinstance(error, NonDeterminismError) else NonDeterminismError(ctx._state.fatal)
        log.error("run %s failed for good: %s", run.id, fatal)
        return fail(format_error(fatal))
    if ctx._state.lost:
        log.warning("run %s: lease lost (the run was taken back); this worker stops without writing", run.id)
        return None
    if ctx._state.cancelled:
        log.info("run %s: cancelled; stopped at a step boundary", run.id)
        return None
    if ctx._state.suspended is not None:
        return ctx._state.suspended
    if error is not None:
        raise error
    assert finished
    return None
