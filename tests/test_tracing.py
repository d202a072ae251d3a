"""OpenTelemetry (extra ``otel``): spans recorded with the SDK's in-memory exporter.

One trace from a submit in this process to the handler in a worker process (the
run carries the submitter's W3C trace context); spans for workflow steps, timers,
signal waits and schedule fires; and, without the extra, nothing imported at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once
from sqlalchemy import select

from simpleflow import (
    AsyncClient,
    Client,
    Poller,
    RetryPolicy,
    ScheduleTicker,
    SignalTimeout,
    SimpleflowError,
    WorkflowContext,
)
from simpleflow.db.schema import workflow_run

REPO = Path(__file__).resolve().parents[1]


def _reset_global_provider() -> None:
    # What opentelemetry-test-utils' reset_trace_globals does: the API lets a process set its
    # provider once, and a test must leave the rest of the suite untraced.
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider for this test, exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_global_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_global_provider()


def stored_context(client: Client, run_id: str) -> Any:
    stmt = select(workflow_run.c.trace_context).where(workflow_run.c.id == run_id)
    return client.db.run(lambda c: c.execute(stmt, execution_options=client.db.exec_options).scalar_one(), read=True)


def by_name(found: Any) -> dict[str, Any]:
    return {s["name"] if isinstance(s, dict) else s.name: s for s in found}


# -- one trace across processes ----------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from simpleflow import Poller

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    def order(ctx, data):
        return ctx.step("charge/v1", lambda amount: {"charged": amount}, data["amount"])

    def broken(run):
        raise ValueError("this handler always fails")

    with Poller(sys.argv[1]) as poller:
        poller.with_worker_id("traced-1").handle_workflow("order.v1", order)
        poller.handle_func("broken.v1", broken)
        poller.run_until_idle(timeout=60)
    print(json.dumps([
        {
            "name": s.name,
            "kind": s.kind.name,
            "trace_id": s.context.trace_id,
            "span_id": s.context.span_id,
            "parent": s.parent.span_id if s.parent else None,
            "status": s.status.status_code.name,
            "attributes": dict(s.attributes),
            "events": [e.name for e in s.events],
        }
        for s in exporter.get_finished_spans()
    ]))
    """
)


def test_one_trace_from_a_submit_to_the_handler_in_another_process(
    client: Client, db_url: str, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    run_id = client.submit("order.v1", {"amount": 12}).execute()
    broken_id = client.submit("broken.v1").with_max_attempts(1).execute()
    submitted = spans.get_finished_spans()
    assert [s.name for s in submitted] == ["submit order.v1", "submit broken.v1"]
    submit: ReadableSpan = submitted[0]
    assert submit.kind is SpanKind.PRODUCER
    assert submit.attributes is not None and submit.attributes["simpleflow.run.id"] == run_id
    assert submit.attributes["simpleflow.tenant"] == "default"
    assert submit.context is not None
    assert json.loads(stored_context(client, run_id))["traceparent"].split("-")[1] == f"{submit.context.trace_id:032x}"

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(script), db_url], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    found = by_name(json.loads(proc.stdout.strip().splitlines()[-1]))

    attempt = found["run order.v1"]
    assert attempt["kind"] == "CONSUMER"
    assert attempt["trace_id"] == submit.context.trace_id  # the submitter's trace ...
    assert attempt["parent"] == submit.context.span_id  # ... as a child of its submit span
    assert attempt["status"] == "OK"
    assert attempt["attributes"] == {
        "simpleflow.run.id": run_id,
        "simpleflow.run.type": "order.v1",
        "simpleflow.run.attempt": 1,
        "simpleflow.worker.id": "traced-1",
        "simpleflow.tenant": "default",
        "simpleflow.run.outcome": "succeeded",
    }
    step = found["step charge/v1"]
    assert (step["trace_id"], step["parent"]) == (attempt["trace_id"], attempt["span_id"])
    assert step["attributes"]["simpleflow.step.name"] == "charge/v1"

    failed = found["run broken.v1"]
    assert failed["trace_id"] == submitted[1].context.trace_id  # type: ignore[union-attr]
    assert failed["status"] == "ERROR" and failed["events"] == ["exception"]
    assert client.get_run(broken_id).status == "failed"


# -- in one process: timers, signals, failures, schedules --------------------------------------


def test_workflow_timers_signal_waits_and_failed_steps_have_spans(
    client: Client, db_url: str, spans: InMemorySpanExporter
) -> None:
    def flaky(_: int) -> int:
        raise RuntimeError("card declined")

    def order(ctx: WorkflowContext, data: dict[str, Any]) -> str:
        ctx.sleep("cool-off/v1", timedelta(milliseconds=50))
        approved = ctx.wait_for_signal("approved/v1", dict)
        try:
            ctx.step("charge/v1", flaky, 1, retry=RetryPolicy(max_attempts=3, initial_delay=timedelta(milliseconds=5)))
        except Exception:
            return f"declined, approved by {approved['by']}"
        return "charged"

    run_id = client.submit("order.v1", {}).execute()
    client.signal(run_id, "approved/v1", {"by": "ana"})
    with Poller(db_url) as poller:
        poller.handle_workflow("order.v1", order)
        poller.run_until_idle(timeout=timedelta(seconds=30))
    assert client.get_run(run_id).status == "succeeded"

    finished = spans.get_finished_spans()
    names = [s.name for s in finished]
    assert names.count("run order.v1") == 2  # parked by the timer, then resumed
    assert names.count("sleep cool-off/v1") == 2  # set, then found elapsed
    attempts = [s for s in finished if s.name == "run order.v1"]
    assert all(s.context.trace_id == attempts[0].context.trace_id for s in finished)  # type: ignore[union-attr]
    assert [s.attributes["simpleflow.run.outcome"] for s in attempts] == ["parked", "succeeded"]  # type: ignore[index]
    assert attempts[0].status.status_code is StatusCode.UNSET  # a park is not an error
    assert all(s.status.status_code is StatusCode.UNSET for s in finished if s.name.startswith("sleep"))

    signal = by_name(finished)["wait_for_signal approved/v1"]
    assert signal.attributes["simpleflow.signal.outcome"] == "received"
    assert signal.parent.span_id == attempts[1].context.span_id  # type: ignore[union-attr]

    charges = [s for s in finished if s.name == "step charge/v1"]
    assert len(charges) == 3  # one span per attempt of the step
    assert all(s.status.status_code is StatusCode.ERROR for s in charges)
    assert charges[0].events[0].name == "exception"
    assert charges[0].events[0].attributes["exception.message"] == "card declined"  # type: ignore[index]


def test_a_schedule_fire_is_the_parent_of_the_run_it_creates(
    client: Client, db_url: str, spans: InMemorySpanExporter
) -> None:
    schedule_id = client.schedule("report.daily.v1", {"kind": "sales"}).cron("0 9 * * *").create()
    later = datetime.now(timezone.utc) + timedelta(days=1, hours=1)
    assert ScheduleTicker(db_url, clock=lambda: later).tick() == 1
    with Poller(db_url) as poller:
        poller.handle_func("report.daily.v1", lambda run: "sent")
        poller.run_until_idle(timeout=timedelta(seconds=30))

    found = by_name(spans.get_finished_spans())
    fire, attempt = found["schedule report.daily.v1"], found["run report.daily.v1"]
    assert fire.kind is SpanKind.PRODUCER
    assert fire.attributes["simpleflow.schedule.id"] == schedule_id
    assert attempt.parent.span_id == fire.context.span_id
    assert attempt.context.trace_id == fire.context.trace_id


def test_spans_carry_the_tenant_of_their_run(client: Client, db_url: str, spans: InMemorySpanExporter) -> None:
    def order(ctx: WorkflowContext, data: int) -> int:
        return ctx.step("double/v1", lambda n: n * 2, data)

    with Client(db_url, tenant="acme") as acme, Client(db_url, tenant="globex") as globex:
        acme_id = acme.submit("order.v1", 1).execute()
        globex_ids = globex.submit_many([("order.v1", 2), ("order.v1", 3)])
        schedule_id = globex.schedule("report.v1", {}).cron("0 9 * * *").create()
        client.submit("order.v1", 4).execute()
    later = datetime.now(timezone.utc) + timedelta(days=1, hours=1)
    assert ScheduleTicker(db_url, clock=lambda: later).tick() == 1
    with Poller(db_url) as poller:
        poller.handle_workflow("order.v1", order).handle_func("report.v1", lambda run: run.tenant)
        poller.run_until_idle(timeout=timedelta(seconds=30))

    finished = spans.get_finished_spans()

    def tenants(name: str) -> list[Any]:
        return sorted(s.attributes["simpleflow.tenant"] for s in finished if s.name == name)  # type: ignore[index]

    assert [(s.name, s.attributes["simpleflow.tenant"]) for s in finished if s.kind is SpanKind.PRODUCER] == [  # type: ignore[index]
        ("submit order.v1", "acme"),
        ("submit order.v1", "globex"),
        ("submit order.v1", "default"),
        ("schedule report.v1", "globex"),
    ]
    assert tenants("run order.v1") == ["acme", "default", "globex", "globex"]
    assert tenants("step double/v1") == ["acme", "default", "globex", "globex"]
    assert tenants("run report.v1") == ["globex"]
    fire = by_name(finished)["schedule report.v1"]
    assert fire.attributes["simpleflow.schedule.id"] == schedule_id  # type: ignore[index]
    by_run = {s.attributes["simpleflow.run.id"]: s for s in finished if s.name == "run order.v1"}  # type: ignore[index]
    assert by_run[acme_id].attributes["simpleflow.tenant"] == "acme"  # type: ignore[index]
    assert {by_run[i].attributes["simpleflow.tenant"] for i in globex_ids} == {"globex"}  # type: ignore[index]


def test_a_submit_many_is_one_span_and_every_run_continues_it(client: Client, spans: InMemorySpanExporter) -> None:
    ids = client.submit_many([("a.v1", 1), ("b.v1", 2)])
    (span,) = spans.get_finished_spans()
    assert span.name == "submit_many" and span.attributes["simpleflow.run.count"] == 2  # type: ignore[index]
    parents = {json.loads(stored_context(client, i))["traceparent"].rsplit("-", 1)[0] for i in ids}
    assert parents == {f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}"}  # type: ignore[union-attr]


def test_a_failed_submit_marks_its_span(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    with Client(f"sqlite:///{tmp_path}/not-migrated.db") as unmigrated, pytest.raises(SimpleflowError):
        unmigrated.submit("a.v1", 1).execute()
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.events[0].name == "exception"


# -- without a configured provider, or without the extra -------------------------------------------


def test_without_a_tracer_provider_nothing_is_stored(client: Client) -> None:
    run_id = client.submit("a.v1", 1).execute()
    assert stored_context(client, run_id) is None


ABSENT = textwrap.dedent(
    """
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError(f"{name} is not installed (blocked by the test)")
            return None

    sys.meta_path.insert(0, Blocker())
    from simpleflow import Workflow

    def order(ctx, data):
        ctx.sleep("nap/v1", 0.01)
        return ctx.step("double/v1", lambda n: n * 2, data)

    with Workflow(sys.argv[1]) as app:
        app.auto_migrate()
        app.handle_workflow("order.v1", order)
        run_id = app.submit("order.v1", 21).execute()
        app.run_until_idle(timeout=30)
        print(app.get_run(run_id).status, app.get_result(run_id, int))
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """
)


def test_without_the_extra_nothing_is_imported(tmp_path: Path) -> None:
    script = tmp_path / "absent.py"
    script.write_text(ABSENT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(script), f"sqlite:///{tmp_path}/t.db"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["succeeded 42", "[]"]


def test_an_async_submit_is_traced_the_same_way(client: Client, db_url: str, spans: InMemorySpanExporter) -> None:
    async def submit() -> str:
        async with AsyncClient(db_url) as aclient:
            return await aclient.submit("a.v1", 1).execute()

    run_id = asyncio.run(submit())
    (span,) = spans.get_finished_spans()
    assert (span.name, span.kind, span.attributes["simpleflow.run.id"]) == ("submit a.v1", SpanKind.PRODUCER, run_id)  # type: ignore[index]
    assert json.loads(stored_context(client, run_id))["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"  # type: ignore[union-attr]


def test_a_signal_wait_that_times_out_is_an_error(client: Client, db_url: str, spans: InMemorySpanExporter) -> None:
    def order(ctx: WorkflowContext, data: Any) -> str:
        try:
            ctx.wait_for_signal("approved/v1", dict, timeout=timedelta(milliseconds=50))
        except SignalTimeout:
            return "expired"
        return "approved"

    run_id = client.submit("order.v1", {}).execute()
    with Poller(db_url) as poller:
        poller.handle_workflow("order.v1", order)
        poller.run_until_idle(timeout=timedelta(seconds=30))
    assert client.get_result(run_id, str) == "expired"
    waits = [s for s in spans.get_finished_spans() if s.name == "wait_for_signal approved/v1"]
    assert [s.attributes["simpleflow.signal.outcome"] for s in waits] == ["waiting", "timed_out"]  # type: ignore[index]
    assert [s.status.status_code for s in waits] == [StatusCode.UNSET, StatusCode.ERROR]


def test_a_child_run_continues_the_trace_of_the_attempt_that_started_it(
    client: Client, db_url: str, spans: InMemorySpanExporter
) -> None:
    def parent(ctx: WorkflowContext, data: int) -> int:
        result: int = ctx.run_child("double/v1", "double.v1", data, int)
        return result

    run_id = client.submit("parent.v1", 21).execute()
    with Poller(db_url) as poller:
        poller.handle_workflow("parent.v1", parent)
        poller.handle_func("double.v1", lambda run: json.loads(run.payload) * 2)
        poller.run_until_idle(timeout=timedelta(seconds=30))
    assert client.get_result(run_id, int) == 42

    finished = spans.get_finished_spans()
    (start,) = [s for s in finished if s.name == "start_child double/v1"]
    (child,) = [s for s in finished if s.name == "run double.v1"]
    first = next(s for s in finished if s.name == "run parent.v1")
    assert start.kind is SpanKind.PRODUCER
    assert start.parent.span_id == first.context.span_id  # type: ignore[union-attr]
    assert child.parent.span_id == start.context.span_id  # type: ignore[union-attr]
    assert child.context.trace_id == first.context.trace_id
    assert start.attributes["simpleflow.child.id"] == child.attributes["simpleflow.run.id"]  # type: ignore[index]
