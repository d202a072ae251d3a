"""Tracing: OpenTelemetry spans when the ``otel`` extra is installed, nothing otherwise.

simpleflow opens a span for each submit, each claimed attempt, each workflow step,
timer and signal wait, and each schedule fire, through ``span(...)``. The span of a
submit (or a schedule fire) is saved with the run as its W3C trace context
(``context()``), and the worker's span for each attempt is its child, so one trace
goes from a producer's request to the handler in another process.

Without ``opentelemetry`` importable nothing is imported and every call returns one
shared no-op object. With it, spans go to the global tracer provider the
application configured (``opentelemetry.trace.set_tracer_provider``); until it
configures one, the calls stay no-ops too (no span objects, no trace context
stored), so the hot paths cost a function call when tracing is off.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from simpleflow.core.attempt import Attempt
from simpleflow.core.states import Kind, Transition

Attributes = Mapping[str, Any]

#: the instrumentation scope of every simpleflow span
SCOPE = "simpleflow"


class Span:
    """One open span. This base class is the no-op one used when tracing is off."""

    def context(self) -> str | None:
        """The span's W3C trace context (``traceparent``, ``tracestate``) as JSON text, to store."""
        return None

    def set(self, key: str, value: Any) -> None:
        """Set an attribute."""

    def ok(self) -> None:
        """The operation succeeded."""

    def fail(self, error: BaseException | str) -> None:
        """The operation failed: status ERROR, with the exception recorded."""


class _NoScope:
    """``with span(...) as s``: the same object each time, yielding the no-op span."""

    def __enter__(self) -> Span:
        return NO_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


NO_SPAN = Span()
#: what ``span()`` returns when tracing is off
NO_SCOPE = _NoScope()


def enabled() -> bool:
    """Are spans being recorded (the extra installed and a tracer provider configured)?"""
    otel = _otel()
    return otel is not None and otel.active()


def span(
    name: str,
    run: Attempt | None = None,
    attributes: Attributes | None = None,
    *,
    parent: str | None = None,
    kind: str = "internal",
) -> AbstractContextManager[Span]:
    """A span around a block, current within it (spans opened inside are its children).

    ``run`` adds the attempt's attributes (run id, type, attempt, worker, tenant); ``parent``
    is a stored trace context (``Span.context()``) to continue; ``kind`` is
    ``internal``, ``producer`` or ``consumer``. An ``Exception`` leaving the block
    marks the span failed; simpleflow's internal unwinding (a park, a lost lease)
    is a ``BaseException`` and leaves the status alone.
    """
    otel = _otel()
    if otel is None or not otel.active():
        return NO_SCOPE
    return otel.span(name, run, attributes, parent, kind)


def attempt(invoke: Callable[[Attempt], Transition | None], run: Attempt) -> Transition | None:
    """``invoke(run)`` (a handler) inside the attempt's span, a child of the submitter's
    trace; the transition it returns (or the exception it raises) is the span's status."""
    otel = _otel()
    if otel is None or not otel.active():
        return invoke(run)
    with otel.span(f"run {run.type}", run, None, run.trace_context, "consumer") as opened:
        transition = invoke(run)
        if transition is not None:
            opened.set("simpleflow.run.outcome", transition.kind.value)
            if transition.kind is Kind.COMPLETE:
                opened.ok()
            elif transition.kind in (Kind.FAIL, Kind.RETRY):
                opened.fail(transition.error or transition.kind.value)
        return transition


def run_attributes(run: Attempt) -> dict[str, Any]:
    """The attributes every span about one attempt carries."""
    return {
        "simpleflow.run.id": run.id,
        "simpleflow.run.type": run.type,
        "simpleflow.run.attempt": run.attempt,
        "simpleflow.worker.id": run.worker_id,
        "simpleflow.tenant": run.tenant,
    }


# -- the OpenTelemetry implementation ------------------------------------------------------------

_state: dict[str, Any] = {}  # "otel": the implementation, or None once the import failed
_UNKNOWN = object()


def _otel() -> _Otel | None:
    try:
        return _state["otel"]  # type: ignore[no-any-return]
    except KeyError:
        pass
    try:
        found: _Otel | None = _Otel()
    except ImportError:
        found = None
    _state["otel"] = found
    return found


class _Otel:
    """Spans through the OpenTelemetry API (imported on first use)."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.trace = trace
        #: a provider named by the environment is loaded by the API on first use
        self.from_environment = OTEL_PYTHON_TRACER_PROVIDER in os.environ
        self.propagator = TraceContextTextMapPropagator()
        self.kinds = {
            "internal": trace.SpanKind.INTERNAL,
            "producer": trace.SpanKind.PRODUCER,
            "consumer": trace.SpanKind.CONSUMER,
        }

    def active(self) -> bool:
        """Has the application configured a tracer provider (the SDK)?

        The common "no" costs one attribute read: the API's own global, read directly
        because ``get_tracer_provider()`` looks at ``os.environ`` on every call (about
        ten times a function call) while none is set; ``get_tracer_provider()`` is the
        fallback should that private name change.
        """
        provider = getattr(self.trace, "_TRACER_PROVIDER", _UNKNOWN)
        if provider is None and not self.from_environment:
            return False
        if provider is None or provider is _UNKNOWN:
            provider = self.trace.get_tracer_provider()
        return not isinstance(provider, self.trace.ProxyTracerProvider)

    @contextmanager
    def span(
        self, name: str, run: Attempt | None, attributes: Attributes | None, parent: str | None, kind: str
    ) -> Iterator[Span]:
        values = run_attributes(run) if run is not None else {}
        if attributes:
            values.update(attributes)
        context = self.propagator.extract(json.loads(parent)) if parent else None
        tracer = self.trace.get_tracer(SCOPE)
        with tracer.start_as_current_span(
            name,
            context=context,
            kind=self.kinds[kind],
            attributes=values,
            record_exception=False,
            set_status_on_exception=False,
        ) as opened:
            handle = _OtelSpan(self, opened)
            try:
                yield handle
            except Exception as error:
                handle.fail(error)
                raise
            except BaseException as error:  # a handler's SystemExit fails its attempt; our unwinding does not
                if kind == "consumer":
                    handle.fail(error)
                raise


class _OtelSpan(Span):
    def __init__(self, otel: _Otel, span: Any) -> None:
        self._otel = otel
        self._span = span

    def context(self) -> str | None:
        carrier: dict[str, str] = {}
        self._otel.propagator.inject(carrier, self._otel.trace.set_span_in_context(self._span))
        return json.dumps(carrier, separators=(",", ":")) if carrier else None

    def set(self, key: str, value: Any) -> None:
        self._span.set_attribute(key, value)

    def ok(self) -> None:
        self._span.set_status(self._otel.trace.Status(self._otel.trace.StatusCode.OK))

    def fail(self, error: BaseException | str) -> None:
        trace = self._otel.trace
        if isinstance(error, BaseException):
            self._span.record_exception(error)
            message = f"{type(error).__name__}: {error}"
        else:
            message = error
        self._span.set_status(trace.Status(trace.StatusCode.ERROR, message[:1000]))
