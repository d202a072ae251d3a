"""What a handler receives: one claimed attempt of a run (``Attempt``, public name ``WorkflowRun``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol, TypeVar, overload

from simpleflow.core.states import Lease
from simpleflow.core.validation import check_duration, parse_as

T = TypeVar("T")


class Executor(Protocol):
    """Any object with ``execute(run)``; its return value is the run's result."""

    def execute(self, run: Attempt) -> Any: ...


class Attempt:
    """One attempt of a run, held under this worker's lease.

    ``payload`` is the JSON payload as bytes. ``is_cancelled()`` turns true within
    one lease-renewal round after the run is cancelled or its lease is lost; the
    handler should then stop, and whatever it returns is discarded.
    """

    def __init__(
        self,
        id: str,
        type: str,
        payload: Any,
        attempt: int,
        max_attempts: int,
        *,
        heartbeat: Callable[[Attempt, float], bool],
        lease_seconds: float,
        token: int = 0,
        worker_id: str = "",
        trace_context: str | None = None,
        tenant: str = "default",
    ) -> None:
        self.id = id
        #: what fences every write about this attempt (internal)
        self.lease = Lease(id, token)
        #: the worker that holds the lease (internal)
        self.worker_id = worker_id
        #: the submitter's W3C trace context, the parent of this attempt's span (internal)
        self.trace_context = trace_context
        self.type = type
        #: the tenant the run belongs to (``Client(url, tenant=...)``)
        self.tenant = tenant
        self._payload_value = payload
        self._payload_bytes: bytes | None = None
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._heartbeat = heartbeat
        self._lease_seconds = lease_seconds
        self._lost = threading.Event()

    @property
    def payload(self) -> bytes:
        """The payload as JSON bytes (``json.loads(run.payload)`` gives the value)."""
        if self._payload_bytes is None:
            self._payload_bytes = json.dumps(self._payload_value, separators=(",", ":"), ensure_ascii=False).encode()
        return self._payload_bytes

    @property
    def payload_value(self) -> Any:
        """The payload already decoded from JSON."""
        return self._payload_value

    @overload
    def payload_as(self, model: type[T]) -> T: ...
    @overload
    def payload_as(self, model: Any) -> Any: ...
    def payload_as(self, model: Any) -> Any:
        """The payload validated into ``model``: a pydantic model, a dataclass, ``dict``,
        ``list[int]``, any type pydantic's ``TypeAdapter`` handles (``ValidationError`` if
        the payload does not fit, or the type is not one pydantic can validate)."""
        return parse_as(self._payload_value, model, f"payload of run {self.id}")

    def heartbeat(self, duration: timedelta | float | None = None) -> None:
        """Extend the lease now by ``duration`` (default: the poller's lease duration).

        Leases are renewed automatically while a handler runs; this is for handlers
        that want an explicit, audited extension. If the lease was lost, the run is
        marked cancelled for this handler and nothing is written.
        """
        seconds = (
            self._lease_seconds
            if duration is None
            else check_duration(duration, "heartbeat duration", allow_zero=False).total_seconds()
        )
        if not self._heartbeat(self, seconds):
            self._lost.set()

    def is_cancelled(self) -> bool:
        """True once the run was cancelled or this worker lost its lease."""
        return self._lost.is_set()

    def mark_lost(self) -> None:
        self._lost.set()

    def __repr__(self) -> str:
        return f"Attempt(id={self.id!r}, type={self.type!r}, attempt={self.attempt}/{self.max_attempts})"


#: The public name of ``Attempt`` (what ``handle_func`` handlers receive).
WorkflowRun = Attempt
