"""Durable workflows (the replay context) against real databases, on SQLite and PostgreSQL.

Workflows run on real pollers (``run_until_idle`` or a started poller in a thread);
steps count their executions in ``calls`` so the tests can tell replay from re-execution.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from simpleflow.client import Client
from simpleflow.core.errors import (
    AlreadyComplete,
    NotFound,
    SignalTimeout,
    StepFailed,
    ValidationError,
    WorkflowCancelled,
)
from simpleflow.core.retry import RetryPolicy
from simpleflow.db.schema import workflow_run, workflow_signal
from simpleflow.worker.poller import Poller, running
from simpleflow.workflow import context as context_module
from simpleflow.workflow.context import WorkflowContext

calls: Counter[str] = Counter()
FAST = RetryPolicy(
    initial_delay=timedelta(milliseconds=10),
    multiplier=1.0,
    max_delay=timedelta(milliseconds=10),
    jitter=0.0,
    max_attempts=3,
)
SHORT = timedelta(milliseconds=300)


class OrderIn(BaseModel):
    order_id: str
    amount: int


class OrderOut(BaseModel):
    order_id: str
    charged: int
    steps: list[str]


class Charge(BaseModel):
    transaction_id: str
    amount: int


class Approval(BaseModel):
    by: str


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


@pytest.fixture
def pollers(client: Client) -> Iterator[Callable[..., Poller]]:
    """Build pollers on the test database (fast polling); all closed after the test."""
    made: list[Poller] = []

    def make(**handlers: Callable[..., Any]) -> Poller:
        poller = Poller(client.db.engine, schema=client.db.schema).with_poll_interval(timedelta(milliseconds=50))
        for type_, fn in handlers.items():
            poller.handle_workflow(type_.replace("_", "."), fn)
        made.append(poller)
        return poller

    yield make
    for p in made:
        p.close()


def drain(poller: Poller, seconds: float = 30) -> int:
    return poller.run_until_idle(timeout=timedelta(seconds=seconds))


def counted(name: str, value: Any = None) -> Any:
    calls[name] += 1
    return value if value is not None else name


# -- replay basics ---------------------------------------------------------------------------


def charge(amount: int) -> Charge:
    calls["charge"] += 1
    return Charge(transaction_id=f"tx-{amount}", amount=amount)


def order_v1(ctx: WorkflowContext, order: OrderIn) -> OrderOut:
    assert isinstance(order, OrderIn)
    c = ctx.step("charge/v1", charge, order.amount)
    ctx.step("reserve/v1", counted, "reserve")
    ctx.sleep("cool-off/v1", SHORT)
    ctx.step("ship/v1", counted, "ship")
    return OrderOut(order_id=order.order_id, charged=c.amount, steps=[s for s in ("charge", "reserve", "ship")])


def test_steps_run_once_across_a_sleep_and_a_worker_restart(client: Client, pollers: Callable[..., Poller]) -> None:
    run_id = client.submit("order.v1", OrderIn(order_id="o1", amount=42)).execute()
    drain(pollers(order_v1=order_v1))
    info = client.get_run(run_id)
    assert info.status == "sleeping"
    assert info.attempt == 0  # a suspension does not spend an attempt
    assert calls == {"charge": 1, "reserve": 1}

    time.sleep(SHORT.total_seconds() + 0.1)
    drain(pollers(order_v1=order_v1))  # a brand-new poller: nothing lives in memory
    info = client.get_run(run_id)
    assert info.status == "succeeded", info.last_error
    assert client.get_result(run_id, OrderOut) == OrderOut(
        order_id="o1", charged=42, steps=["charge", "reserve", "ship"]
    )
    assert calls == {"charge": 1, "reserve": 1, "ship": 1}
    steps = client.get_steps(run_id)
    assert [(s.name, s.kind, s.status, s.attempts) for s in steps] == [
        ("charge/v1", "step", "completed", 1),
        ("reserve/v1", "step", "completed", 1),
        ("cool-off/v1", "sleep", "completed", 0),
        ("ship/v1", "step", "completed", 1),
    ]
    assert steps[0].result == {"transaction_id": "tx-42", "amount": 42}
    assert steps[2].wake_at is not None and steps[2].wake_at >= steps[2].created_at + SHORT - timedelta(milliseconds=50)


class Item(BaseModel):
    sku: str
    qty: int


def item() -> Item:
    return Item(sku="a", qty=1)


def items() -> list[Item]:
    return [Item(sku="a", qty=1), Item(sku="b", qty=2)]


def stamp() -> datetime:
    return datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def pair() -> tuple[int, str]:
    return (1, "x")


def untyped():  # type: ignore[no-untyped-def]
    return {"k": [1, 2]}


seen_types: list[list[str]] = []


def typed_workflow(ctx: WorkflowContext, _input: Any) -> list[str]:
    values = [
        ctx.step("item", item),
        ctx.step("items", items),
        ctx.step("stamp", stamp),
        ctx.step("pair", pair),
        ctx.step("untyped", untyped),
    ]
    names = [
        type(values[0]).__name__,
        f"list[{type(values[1][0]).__name__}]",
        type(values[2]).__name__,
        type(values[3]).__name__,
        type(values[4]).__name__,
    ]
    seen_types.append(names)
    ctx.sleep("pause", timedelta(milliseconds=100))
    return names


def test_replayed_values_have_the_types_of_the_first_run(client: Client, pollers: Callable[..., Poller]) -> None:
    seen_types.clear()
    run_id = client.submit("typed.v1", None).execute()
    poller = pollers(typed_v1=typed_workflow)
    drain(poller)
    time.sleep(0.15)
    drain(poller)
    assert client.get_run(run_id).status == "succeeded"
    assert len(seen_types) == 2  # the first run, then the replay after the sleep
    assert seen_types[0] == seen_types[1] == ["Item", "list[Item]", "datetime", "tuple", "dict"]
    assert client.get_run(run_id).result == ["Item", "list[Item]", "datetime", "tuple", "dict"]


class Doubler:
    def __call__(self, x: int) -> tuple[int, int]:
        return (x, 2 * x)


def returns_a_lock() -> threading.Lock:
    return threading.Lock()


def test_builtins_callable_objects_and_unrecordable_types(client: Client, pollers: Callable[..., Poller]) -> None:
    def wf(ctx: WorkflowContext, _: Any) -> list[Any]:
        out: list[Any] = [ctx.step("len", len, [1, 2, 3]), ctx.step("double", Doubler(), 4)]
        try:
            ctx.step("lock", returns_a_lock)
        except ValidationError as error:
            out.append(str(error).split(":")[0])
        out.append(ctx.step("lock", counted, "lock"))  # the rejected call did not take the name
        return out

    run_id = client.submit("callables.v1").execute()
    drain(pollers(callables_v1=wf))
    result = client.get_run(run_id).result
    assert result[:2] == [3, [4, 8]] and result[3] == "lock"
    assert result[2].startswith("cannot record values of type")


def json_input(ctx: WorkflowContext, payload):  # type: ignore[no-untyped-def]
    return {"got": payload, "type": type(payload).__name__}


def test_unannotated_input_is_the_json_value_and_bad_input_fails_at_once(
    client: Client, pollers: Callable[..., Poller]
) -> None:
    ok = client.submit("json.v1", {"a": [1]}).execute()
    bad = client.submit("order.v1", {"order_id": "o1"}).execute()  # no amount
    drain(pollers(json_v1=json_input, order_v1=order_v1))
    assert client.get_run(ok).result == {"got": {"a": [1]}, "type": "dict"}
    info = client.get_run(bad)
    assert info.status == "failed" and info.attempt == 1  # the payload cannot change: no retry
    assert "does not fit" in (info.last_error or "") and "amount" in (info.last_error or "")
    assert calls["charge"] == 0


def test_handle_workflow_rejects_a_function_of_the_wrong_shape(client: Client, pollers: Callable[..., Poller]) -> None:
    poller = pollers()
    with pytest.raises(ValidationError, match="two arguments"):
        poller.handle_workflow("bad.v1", lambda ctx: None)
    with pytest.raises(ValidationError, match="callable"):
        poller.handle_workflow("bad.v1", "not a function")  # type: ignore[arg-type]


def test_a_name_used_twice_in_one_run_is_a_clear_error(client: Client, pollers: Callable[..., Poller]) -> None:
    def twice(ctx: WorkflowContext, _: Any) -> None:
        ctx.step("a", counted, "a1")
        ctx.step("a", counted, "a2")

    run_id = client.submit("twice.v1").with_max_attempts(1).execute()
    drain(pollers(twice_v1=twice))
    info = client.get_run(run_id)
    assert info.status == "failed"
    assert "the name 'a' is already used in this run" in (info.last_error or "")
    assert calls == {"a1": 1}


def test_invalid_step_arguments_change_nothing(client: Client, pollers: Callable[..., Poller]) -> None:
    errors: list[str] = []

    def wf(ctx: WorkflowContext, _: Any) -> list[str]:
        for bad in (
            lambda: ctx.step("s", "nope"),  # type: ignore[call-overload, arg-type]
            lambda: ctx.step("s", counted, retry=3),  # type: ignore[arg-type]
            lambda: ctx.step("s", counted, timeout=timedelta(seconds=-1)),
            lambda: ctx.step("s", counted, transactional=True, timeout=timedelta(seconds=1)),
            lambda: ctx.step("", counted),
            lambda: ctx.sleep("z", "5s"),  # type: ignore[arg-type]
            lambda: ctx.get_version("v", 2, 1),
        ):
            try:
                bad()
            except ValidationError as error:
                errors.append(str(error))
        return [ctx.step("s", counted, "s")]

    run_id = client.submit("bad.args.v1").execute()
    drain(pollers(bad_args_v1=wf))
    assert client.get_run(run_id).result == ["s"]  # "s" was still free: rejected calls claimed nothing
    assert len(errors) == 7
    assert any("cannot be combined with transactional" in e for e in errors)
    assert [s.name for s in client.get_steps(run_id)] == ["s"]


# -- retries, failures, timeouts -----------------------------------------------------------------


def flaky(until: int) -> str:
    calls["flaky"] += 1
    if calls["flaky"] < until:
        raise ConnectionError(f"attempt {calls['flaky']} failed")
    return "ok"


def test_step_retries_in_thread_for_short_backoffs(client: Client, pollers: Callable[..., Poller]) -> None:
    def wf(ctx: WorkflowContext, _: Any) -> str:
        return ctx.step("flaky", flaky, 3, retry=FAST)

    run_id = client.submit("flaky.v1").execute()
    drain(pollers(flaky_v1=wf))
    assert client.get_run(run_id).result == "ok"
    (step,) = client.get_steps(run_id)
    assert (step.status, step.attempts, step.result) == ("completed", 3, "ok")


def test_long_step_backoff_parks_the_run_and_resumes_the_step(
    client: Client, pollers: Callable[..., Poller], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context_module, "INLINE_RETRY_LIMIT", 0.05)
    policy = RetryPolicy(
        initial_delay=timedelta(milliseconds=400), max_delay=timedelta(seconds=1), jitter=0.0, max_attempts=3
    )

    def wf(ctx: WorkflowContext, _: Any) -> str:
        ctx.step("before", counted, "before")
        return ctx.step("flaky", flaky, 2, retry=policy)

    run_id = client.submit("park.v1").execute()
    poller = pollers(park_v1=wf)
    drain(poller)
    info = client.get_run(run_id)
    assert info.status == "pending" and info.attempt == 0
    assert info.run_at > info.updated_at + timedelta(milliseconds=300)
    step = client.get_steps(run_id)[1]
    assert (step.status, step.attempts, step.error["type"]) == ("retrying", 1, "ConnectionError")
    time.sleep(0.5)
    drain(poller)
    assert client.get_run(run_id).result == "ok"
    step = client.get_steps(run_id)[1]
    assert (step.status, step.attempts) == ("completed", 2)
    assert calls == {"before": 1, "flaky": 2}


def always_fails() -> None:
    calls["fails"] += 1
    raise RuntimeError("card declined")


def test_exhausted_step_raises_step_failed_and_replays_it(client: Client, pollers: Callable[..., Poller]) -> None:
    def wf(ctx: WorkflowContext, _: Any) -> dict[str, str]:
        try:
            ctx.step("charge", always_fails, retry=FAST)
        except StepFailed as failure:
            ctx.step("compensate", counted, "compensate")
            ctx.sleep("pause", timedelta(milliseconds=100))
            return {
                "type": failure.error_type,
                "message": failure.error_message,
                "step": failure.step,
                "tb": str("card declined" in failure.traceback),
            }
        return {}

    run_id = client.submit("comp.v1").execute()
    poller = pollers(comp_v1=wf)
    drain(poller)
    time.sleep(0.15)
    drain(poller)
    info = client.get_run(run_id)
    assert info.result == {"type": "RuntimeError", "message": "card declined", "step": "charge", "tb": "True"}
    assert calls == {"fails": 3, "compensate": 1}  # the replay raised StepFailed without executing
    step = client.get_steps(run_id)[0]
    assert (step.status, step.attempts, step.error["type"]) == ("failed", 3, "RuntimeError")
    assert "Traceback" in step.error["traceback"]


def test_step_over_its_timeout_is_a_failed_attempt(client: Client, pollers: Callable[..., Poller]) -> None:
    release = threading.Event()

    def slow() -> str:
        calls["slow"] += 1
        release.wait(5)
        return "late"

    def wf(ctx: WorkflowContext, _: Any) -> str:
        try:
            return ctx.step("slow", slow, timeout=timedelta(milliseconds=100), retry=RetryPolicy(max_attempts=1))
        except StepFailed as failure:
            return failure.error_type

    run_id = client.submit("timeout.v1").execute()
    try:
        drain(pollers(timeout_v1=wf))
    finally:
        release.set()
    assert client.get_run(run_id).result == "AttemptTimeout"  # a SimpleflowError and a TimeoutError
    assert calls["slow"] == 1


def test_workflow_exceptions_follow_run_attempts_without_rerunning_steps(
    client: Client, pollers: Callable[..., Poller]
) -> None:
    def wf(ctx: WorkflowContext, fail_until: int) -> int:
        ctx.step("a", counted, "a")
        if ctx.attempt < fail_until:
            raise ValueError(f"boom on attempt {ctx.attempt}")
        return ctx.attempt

    ok = client.submit("exc.v1", 2).execute()
    doomed = client.submit("exc.v1", 99).with_max_attempts(2).execute()
    poller = pollers(exc_v1=wf).with_retry_policy(
        RetryPolicy(initial_delay=timedelta(0), max_delay=timedelta(0), jitter=0.0)
    )
    drain(poller)
    assert client.get_run(ok).result == 2
    info = client.get_run(doomed)
    assert info.status == "failed" and info.attempt == 2
    assert "ValueError: boom on attempt 2" in (info.last_error or "") and "Traceback" in (info.last_error or "")
    assert calls["a"] == 2  # once per run, never again on later attempts


def test_suspension_cannot_be_swallowed_by_except_exception(client: Client, pollers: Callable[..., Poller]) -> None:
    def wf(ctx: WorkflowContext, _: Any) -> str:
        try:
            ctx.sleep("nap", timedelta(hours=1))
        except Exception:
            return "swallowed"
        return "woke"

    run_id = client.submit("swallow.v1").execute()
    drain(pollers(swallow_v1=wf))
    assert client.get_run(run_id).status == "sleeping"


# -- transactional steps and fencing -----------------------------------------------------------------


def app_table(client: Client) -> str:
    """A table of 'the application' in the test's own database (and schema)."""
    name = f"app_orders_{uuid.uuid4().hex[:8]}"
    qualified = f'"{client.db.schema}".{name}' if client.db.schema else name
    with client.db.engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {qualified} (id VARCHAR(50) PRIMARY KEY, amount INTEGER)"))
    return qualified


def app_rows(client: Client, table: str) -> list[tuple[Any, ...]]:
    with client.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(f"SELECT id, amount FROM {table} ORDER BY id"))]


def test_transactional_step_commits_with_its_record_and_rolls_back_with_a_failure(
    client: Client, pollers: Callable[..., Poller]
) -> None:
    table = app_table(client)

    def reserve(conn: sa.Connection, order_id: str, amount: int) -> str:
        calls["reserve"] += 1
        conn.execute(sa.text(f"INSERT INTO {table} (id, amount) VALUES (:i, :a)"), {"i": order_id, "a": amount})
        if calls["reserve"] == 1:
            raise RuntimeError("after the write, before the commit")
        return order_id

    def wf(ctx: WorkflowContext, order: OrderIn) -> str:
        return ctx.step("reserve", reserve, order.order_id, order.amount, transactional=True, retry=FAST)

    run_id = client.submit("tx.v1", {"order_id": "o7", "amount": 5}).execute()
    drain(pollers(tx_v1=wf))
    assert client.get_run(run_id).result == "o7"
    assert app_rows(client, table) == [("o7", 5)]  # the failed attempt's write was rolled back
    (step,) = client.get_steps(run_id)
    assert (step.status, step.attempts) == ("completed", 2)


@pytest.mark.parametrize("transactional", [False, True], ids=["plain", "transactional"])
def test_a_worker_that_lost_its_lease_writes_nothing(
    client: Client, pollers: Callable[..., Poller], transactional: bool, db_kind: str
) -> None:
    if transactional and db_kind == "sqlite":
        pytest.skip("SQLite: the step's transaction holds the write lock, so no one can take the run over mid-step")
    table = app_table(client)
    run_ids: list[str] = []

    def steal() -> None:  # another worker takes the run over (as after an expired lease)
        with client.db.engine.begin() as other:
            other.execute(
                sa.update(workflow_run)
                .where(workflow_run.c.id == run_ids[0])
                .values(
                    leased_by="thief", attempt=workflow_run.c.attempt + 1, lease_token=workflow_run.c.lease_token + 1
                ),
                execution_options=client.db.exec_options,
            )

    def write_then_lose(conn: sa.Connection) -> str:
        conn.execute(sa.text(f"INSERT INTO {table} (id, amount) VALUES ('x', 1)"))
        steal()
        return "done"

    def plain() -> str:
        steal()
        return "done"

    def wf(ctx: WorkflowContext, _: Any) -> str:
        if transactional:
            ctx.step("s", write_then_lose, transactional=True)
        else:
            ctx.step("s", plain)
        calls["after"] += 1
        return "finished"

    run_ids.append(client.submit("lose.v1").execute())
    drain(pollers(lose_v1=wf))
    info = client.get_run(run_ids[0])
    assert (info.status, info.leased_by, info.result) == ("leased", "thief", None)
    assert client.get_steps(run_ids[0]) == []
    assert calls["after"] == 0
    assert app_rows(client, table) == []


# -- timers ---------------------------------------------------------------------------------------


def test_a_sleeping_run_frees_its_thread(client: Client, pollers: Callable[..., Poller]) -> None:
    def sleeper(ctx: WorkflowContext, _: Any) -> str:
        ctx.sleep("nap", timedelta(seconds=1.5))
        return "rested"

    def quick(ctx: WorkflowContext, _: Any) -> str:
        return ctx.step("q", counted, "q")

    poller = pollers(sleeper_v1=sleeper, quick_v1=quick).with_concurrency(1)
    a = client.submit("sleeper.v1").with_priority(1).execute()
    with running(poller):
        deadline = time.monotonic() + 10
        while client.get_run(a).status != "sleeping" and time.monotonic() < deadline:
            time.sleep(0.02)
        b = client.submit("quick.v1").execute()
        assert client.wait(b, timeout=timedelta(seconds=10)).status == "succeeded"
        assert client.get_run(a).status == "sleeping"  # b ran on the only thread while a slept
        assert client.wait(a, timeout=timedelta(seconds=15)).result == "rested"


# -- signals ---------------------------------------------------------------------------------------


def approval_wf(ctx: WorkflowContext, _: Any) -> dict[str, Any]:
    first = ctx.wait_for_signal("approved", Approval)
    second = ctx.wait_for_signal("approved", Approval, step_name="approved/2")
    assert isinstance(first, Approval) and isinstance(second, Approval)
    return {"first": first.by, "second": second.by}


def test_signals_sent_before_the_wait_are_kept_oldest_first(client: Client, pollers: Callable[..., Poller]) -> None:
    run_id = client.submit("approval.v1").execute()
    client.signal(run_id, "approved", {"by": "ana"})
    client.signal(run_id, "approved", Approval(by="bo"))
    client.signal(run_id, "other", {"by": "nobody"})
    drain(pollers(approval_v1=approval_wf))
    assert client.get_run(run_id).result == {"first": "ana", "second": "bo"}
    with client.db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(workflow_signal.c.name, workflow_signal.c.consumed_by).order_by(workflow_signal.c.id),
            execution_options=client.db.exec_options,
        ).all()
    assert [tuple(r) for r in rows] == [("approved", "approved"), ("approved", "approved/2"), ("other", None)]
    steps = client.get_steps(run_id)
    assert [(s.name, s.kind, s.status, s.result) for s in steps] == [
        ("approved", "signal", "received", {"by": "ana"}),
        ("approved/2", "signal", "received", {"by": "bo"}),
    ]


def test_a_signal_after_the_wait_wakes_the_run(client: Client, pollers: Callable[..., Poller]) -> None:
    run_id = client.submit("approval.v1").execute()
    poller = pollers(approval_v1=approval_wf)
    drain(poller)
    info = client.get_run(run_id)
    assert info.status == "waiting" and info.run_at.year == 9999 and info.attempt == 0
    client.signal(run_id, "approved", {"by": "ana"})
    assert client.get_run(run_id).status == "pending"
    drain(poller)
    assert client.get_run(run_id).status == "waiting"  # now waiting for the second one
    client.signal(run_id, "approved", {"by": "cy"})
    drain(poller)
    assert client.get_run(run_id).result == {"first": "ana", "second": "cy"}
    events = [e.event_type for e in client.get_events(run_id)]
    assert events.count("signalled") == 2 and events.count("waiting") == 2


def test_wait_for_signal_times_out(client: Client, pollers: Callable[..., Poller]) -> None:
    def wf(ctx: WorkflowContext, _: Any) -> str:
        try:
            ctx.wait_for_signal("approved", Approval, timeout=SHORT)
        except SignalTimeout as error:
            assert isinstance(error, TimeoutError)
            ctx.step("after", counted, "after")
            ctx.sleep("pause", timedelta(milliseconds=600))
            return "timed out"
        return "approved"

    run_id = client.submit("to.v1").execute()
    poller = pollers(to_v1=wf)
    drain(poller)
    assert client.get_run(run_id).status == "waiting"
    time.sleep(SHORT.total_seconds() + 0.1)
    drain(poller)
    time.sleep(0.15)
    client.signal(run_id, "approved", {"by": "late"})  # too late: the replay keeps the timeout
    time.sleep(0.6)
    drain(poller)
    assert client.get_run(run_id).result == "timed out"
    assert calls["after"] == 1
    assert client.get_steps(run_id)[0].status == "timed_out"


def test_signal_errors(client: Client, pollers: Callable[..., Poller]) -> None:
    with pytest.raises(NotFound):
        client.signal(str(uuid.uuid4()), "approved", {})
    run_id = client.submit("json.v1", 1).execute()
    with pytest.raises(ValidationError, match="signal name"):
        client.signal(run_id, "", {})
    with pytest.raises(ValidationError, match="signal payload"):
        client.signal(run_id, "x", {"bad": object()})
    drain(pollers(json_v1=json_input))
    with pytest.raises(AlreadyComplete, match="succeeded"):
        client.signal(run_id, "approved", {})
    with client.db.engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(workflow_signal), execution_options=client.db.exec_options
        ).scalar_one()
    assert count == 0


# -- deterministic values and versions ------------------------------------------------------------------


values_seen: list[tuple[Any, ...]] = []


def helpers_wf(ctx: WorkflowContext, _: Any) -> None:
    values_seen.append((ctx.now("now"), ctx.uuid7("id"), ctx.random("dice")))
    ctx.sleep("pause", timedelta(milliseconds=100))


def test_now_uuid7_and_random_are_recorded_once(client: Client, pollers: Callable[..., Poller]) -> None:
    values_seen.clear()
    run_id = client.submit("helpers.v1").execute()
    poller = pollers(helpers_v1=helpers_wf)
    drain(poller)
    time.sleep(0.15)
    drain(poller)
    assert client.get_run(run_id).status == "succeeded"
    assert len(values_seen) == 2 and values_seen[0] == values_seen[1]
    now, id_, dice = values_seen[0]
    assert isinstance(now, datetime) and now.tzinfo is not None
    assert isinstance(id_, str) and uuid.UUID(id_).version == 7
    assert isinstance(dice, float) and 0 <= dice < 1
    assert [s.kind for s in client.get_steps(run_id)] == ["now", "uuid", "random", "sleep"]


def versioned_v1(ctx: WorkflowContext, _: Any) -> list[str]:
    ctx.step("a", counted, "a")
    ctx.sleep("nap", SHORT)
    ctx.step("b", counted, "b")
    return ["a", "b"]


def versioned_v2(ctx: WorkflowContext, _: Any) -> list[str]:
    done = [ctx.step("a", counted, "a")]
    if ctx.get_version("extra", 1, 2) >= 2:
        done.append(ctx.step("extra", counted, "extra"))
    ctx.sleep("nap", SHORT)
    done.append(ctx.step("b", counted, "b"))
    return done


def versioned_v3(ctx: WorkflowContext, _: Any) -> list[str]:
    done = [ctx.step("a", counted, "a")]
    ctx.get_version("extra", 2, 2)  # support for runs started before "extra" was dropped
    done.append(ctx.step("extra", counted, "extra"))
    ctx.sleep("nap", SHORT)
    done.append(ctx.step("b", counted, "b"))
    return done


def test_versioning_across_a_code_change(client: Client, pollers: Callable[..., Poller]) -> None:
    old, older = (client.submit("ver.v1").execute() for _ in range(2))
    drain(pollers(ver_v1=versioned_v1))
    assert client.get_run(old).status == client.get_run(older).status == "sleeping"
    time.sleep(SHORT.total_seconds() + 0.1)

    client.cancel(older)  # parked until the v3 code below (client.retry makes it due again)
    before = [s.model_dump() for s in client.get_steps(older)]
    new = client.submit("ver.v1").execute()
    v2 = pollers(ver_v1=versioned_v2)
    drain(v2)
    assert client.get_run(old).result == ["a", "b"]  # started under v1: keeps the old branch
    assert [(s.name, s.result) for s in client.get_steps(old) if s.kind == "version"] == [("version:extra", 1)]
    time.sleep(SHORT.total_seconds() + 0.1)
    drain(v2)
    assert client.get_run(new).result == ["a", "extra", "b"]  # started under v2: the new branch
    assert [(s.name, s.result) for s in client.get_steps(new) if s.kind == "version"] == [("version:extra", 2)]

    client.retry(older)
    drain(pollers(ver_v1=versioned_v3))
    info = client.get_run(older)
    assert info.status == "failed" and info.attempt == 1  # at once: replaying cannot fix it
    assert "NonDeterminismError" in (info.last_error or "") and "'extra'" in (info.last_error or "")
    assert [s.model_dump() for s in client.get_steps(older)] == before  # records untouched
    assert calls["extra"] == 1


def nd_v1(ctx: WorkflowContext, _: Any) -> None:
    ctx.step("x", counted, "x")
    ctx.sleep("nap", timedelta(hours=1))


def nd_v2(ctx: WorkflowContext, _: Any) -> str:
    try:
        ctx.sleep("x", timedelta(seconds=1))  # "x" was a step
    except Exception:
        return "swallowed"
    return "ran"


def test_nondeterminism_fails_the_run_and_keeps_its_records(client: Client, pollers: Callable[..., Poller]) -> None:
    run_id = client.submit("nd.v1").execute()
    drain(pollers(nd_v1=nd_v1))
    before = [s.model_dump() for s in client.get_steps(run_id)]
    client.cancel(run_id)
    client.retry(run_id)  # due now, replayed by new code
    drain(pollers(nd_v1=nd_v2))
    info = client.get_run(run_id)
    assert info.status == "failed" and info.attempt == 1 and info.result is None
    assert "step 'x' was recorded as a step but the workflow code now reaches it as a sleep" in (info.last_error or "")
    assert [s.model_dump() for s in client.get_steps(run_id)] == before


# -- cancellation ----------------------------------------------------------------------------------------


#: long enough that run_until_idle cannot reach the wake-up under a loaded machine (it
#: keeps going while something is due within its idle horizon)
PARKED = timedelta(seconds=1.5)


def parked_wf(ctx: WorkflowContext, how: str) -> None:
    if how == "sleep":
        ctx.sleep("nap", PARKED)
    else:
        ctx.wait_for_signal("go", timeout=PARKED)
    ctx.step("after", counted, "after")


@pytest.mark.parametrize("how", ["sleep", "wait"])
def test_cancel_a_sleeping_or_waiting_run_at_once(client: Client, pollers: Callable[..., Poller], how: str) -> None:
    run_id = client.submit("parked.v1", how).execute()
    poller = pollers(parked_v1=parked_wf)
    drain(poller)
    assert client.get_run(run_id).status == ("sleeping" if how == "sleep" else "waiting")
    client.cancel(run_id)
    assert client.get_run(run_id).status == "cancelled"
    time.sleep(PARKED.total_seconds() + 0.1)
    assert drain(poller) == 0
    assert client.get_run(run_id).status == "cancelled" and calls["after"] == 0
    with pytest.raises(AlreadyComplete):
        client.signal(run_id, "go", {})


def test_cancel_a_running_workflow_stops_it_at_the_next_step(client: Client, pollers: Callable[..., Poller]) -> None:
    caught: list[str] = []

    def wf(ctx: WorkflowContext, where: str) -> str:
        ctx.step("a", counted, "a")
        if where == "between":
            client.cancel(ctx.run_id)  # as another process would, between two steps
            ctx.step("b", counted, "b")
        else:
            try:
                ctx.step("b", lambda: (client.cancel(ctx.run_id), counted("b"))[1])  # cancelled during the step
            except WorkflowCancelled:
                caught.append("b")
            try:
                ctx.step("c", counted, "c")  # cancellation is sticky
            except WorkflowCancelled:
                caught.append("c")
        return "finished anyway"

    between = client.submit("cancel.v1", "between").execute()
    during = client.submit("cancel.v1", "during").execute()
    drain(pollers(cancel_v1=wf))
    for run_id in (between, during):
        info = client.get_run(run_id)
        assert (info.status, info.result) == ("cancelled", None)
        assert [s.name for s in client.get_steps(run_id)] == ["a"]  # b was not recorded in either run
    assert calls == {"a": 2, "b": 1}  # "b" ran only in the run cancelled during it
    assert caught == ["b", "c"]


# -- size and inspection -------------------------------------------------------------------------------------


def test_a_100_step_workflow(client: Client, pollers: Callable[..., Poller]) -> None:
    def wf(ctx: WorkflowContext, n: int) -> int:
        total = 0
        for i in range(n):
            total += ctx.step(f"step/{i}", counted, f"s{i}", i + 1) if i else 0
        ctx.sleep("pause", timedelta(milliseconds=50))
        return total

    run_id = client.submit("big.v1", 100).execute()
    poller = pollers(big_v1=wf)
    started = time.monotonic()
    drain(poller)
    time.sleep(0.1)
    drain(poller)
    assert time.monotonic() - started < 60  # a loose sanity bound
    assert client.get_run(run_id).result == sum(range(2, 101))
    steps = client.get_steps(run_id)
    assert len(steps) == 100 and [s.seq for s in steps] == list(range(1, 101))
    assert all(calls[f"s{i}"] == 1 for i in range(1, 100))  # the replay executed none of them


def test_get_steps_of_a_missing_run(client: Client) -> None:
    with pytest.raises(NotFound):
        client.get_steps(str(uuid.uuid4()))
    run_id = client.submit("nothing.v1").execute()
    assert client.get_steps(run_id) == []


# -- the example --------------------------------------------------------------------------------------------


def test_order_workflow_example_runs(migrated_url: str) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "order_workflow.py"
    done = subprocess.run(
        [sys.executable, str(example)],
        env={**os.environ, "SIMPLEFLOW_DATABASE_URL": migrated_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout and "approved by ana" in done.stdout
    assert "signal sent from process" in done.stdout
    assert "reserve/v1       step    completed" in done.stdout
