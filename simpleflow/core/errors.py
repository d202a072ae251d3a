"""The one error tree of simpleflow.

Every failure a caller can see is a ``SimpleflowError``; the docstring of each
class is its default message.

    SimpleflowError
    ├── ConfigurationError        bad URL, engine or setting
    ├── ValidationError           bad input to a public entry point (also a ValueError)
    ├── NotFound                  no such run or schedule (also a LookupError)
    ├── AlreadyComplete           the run is finished; it cannot be cancelled or signalled
    ├── InvalidState              the run is not in a state that allows the operation
    ├── WaitTimeout               a wait gave up: ``Client.wait``, ``Client.get_event``, ``ctx.wait_child``
    │                             (also a TimeoutError; ``SignalTimeout`` is one too)
    ├── DatabaseError             the database failed after retries
    ├── MigrationError            the schema could not be migrated
    ├── NonRetryable              raised by a handler or step: fail for good, no retry
    ├── AttemptTimeout            an attempt ran past its timeout (also a TimeoutError)
    ├── DeadlineExceeded          a run passed its overall deadline (also a TimeoutError)
    └── WorkflowError             raised inside durable workflows
        ├── StepFailed            a step exhausted its retries
        ├── SignalTimeout         no signal arrived before the timeout (also a WaitTimeout)
        ├── ChildFailed           a child run awaited by the workflow failed or was cancelled
        ├── NonDeterminismError   recorded history no longer matches the code
        └── WorkflowCancelled     the run was cancelled; unwinds the workflow function
"""

from __future__ import annotations


class SimpleflowError(Exception):
    """simpleflow failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())


class ConfigurationError(SimpleflowError):
    """simpleflow is configured wrongly."""


class ValidationError(SimpleflowError, ValueError):
    """The input is invalid; nothing was changed."""


class NotFound(SimpleflowError, LookupError):
    """No such run or schedule."""


class AlreadyComplete(SimpleflowError):
    """The run has already finished."""


class InvalidState(SimpleflowError):
    """The run is not in a state that allows this operation."""


class WaitTimeout(SimpleflowError, TimeoutError):
    """The wait ended at its timeout before what it waited for happened."""


class DatabaseError(SimpleflowError):
    """The database operation failed."""


class MigrationError(SimpleflowError):
    """The simpleflow schema could not be migrated."""


class NonRetryable(SimpleflowError):
    """The error is permanent: the run (or step) fails for good without another attempt.

    Raise it from a handler or a workflow step (``raise NonRetryable("card stolen")``),
    or chain the real cause: ``raise NonRetryable("bad input") from error``.
    """


class AttemptTimeout(SimpleflowError, TimeoutError):
    """The attempt did not finish within its timeout."""


class DeadlineExceeded(SimpleflowError, TimeoutError):
    """The run did not finish before its deadline."""


class WorkflowError(SimpleflowError):
    """A durable workflow failed."""


class StepFailed(WorkflowError):
    """A workflow step exhausted its retries."""

    def __init__(
        self,
        step: str,
        error_type: str,
        error_message: str,
        traceback: str = "",
    ) -> None:
        self.step = step
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback
        #: the step raised ``NonRetryable``: the run fails for good if this propagates
        self.permanent = False
        super().__init__(f"step {step!r} failed: {error_type}: {error_message}")


class SignalTimeout(WorkflowError, WaitTimeout):
    """No signal arrived before the timeout."""


class ChildFailed(WorkflowError):
    """A child run the workflow waited for failed or was cancelled.

    ``child_id``, ``status`` (``failed`` or ``cancelled``), and the child's error as
    ``error_type`` and ``error_message`` (the last line of its ``last_error``).
    """

    def __init__(self, child_id: str, status: str, error_type: str, error_message: str) -> None:
        self.child_id = child_id
        self.status = status
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(f"child run {child_id} {status}: {error_type}: {error_message}")


class NonDeterminismError(WorkflowError):
    """The run's recorded history no longer matches the workflow code."""


class WorkflowCancelled(WorkflowError):
    """The workflow run was cancelled."""
