"""``Client.fork`` and ``Client.delete_data`` on real databases (SQLite and PostgreSQL).

Workflows run on real pollers (``run_until_idle``); steps count their executions in
``calls`` so the tests can tell a reused record from a re-execution. The deletion test
reads every row of every table back as text and looks for a marker.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from simpleflow import admin
from simpleflow.client import Client
from simpleflow.core.errors import InvalidState, NotFound, StepFailed, ValidationError
from simpleflow.core.retry import RetryPolicy
from simpleflow.db.schema import workflow_run, workflow_run_event
from simpleflow.worker.poller import Poller
from simpleflow.workflow.context import WorkflowContext

calls: Counter[str] = Counter()
IDLE = timedelta(seconds=20)
ONCE = RetryPolicy(max_attempts=1)
NOW = RetryPolicy(initial_delay=0, multiplier=1.0, max_delay=0, jitter=0.0)


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


@pytest.fixture
def poller(client: Client) -> Iterator[Callable[..., Poller]]:
    made: list[Poller] = []

    def make(**workflows: Callable[..., Any]) -> Poller:
        p = Poller(client.db.engine, schema=client.db.schema).with_poll_interval(timedelta(milliseconds=50))
        p.with_retry_policy(NOW)
        for type_, fn in workflows.items():
            p.handle_workflow(type_.replace("_", "."), fn)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def charge(amount: int) -> str:
    calls["charge"] += 1
    return f"tx-{amount}"


def ship(order: dict[str, Any]) -> str:
    calls["ship"] += 1
    if order.get("broken") and calls["ship"] == 1:
        raise RuntimeError("the carrier is down")
    return f"label-{order['id']}"


def order_flow(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
    tx = ctx.step("charge/v1", charge, order["amount"])
    key = ctx.uuid7("key/v1")
    label = ctx.step("ship/v1", ship, order, retry=ONCE)
    return {"tx": tx, "key": key, "label": label}


# -- fork --------------------------------------------------------------------------------


def test_fork_reuses_the_history_before_the_step_and_runs_from_there(
    client: Client, poller: Callable[..., Poller]
) -> None:
    """A run whose last step failed, forked from that step after the fix: the card is not
    charged again, the recorded key is the same, the failed step runs again and succeeds."""
    p = poller(order_v1=order_flow)
    run_id = client.submit("order.v1", {"id": "o1", "amount": 7, "broken": True}).with_max_attempts(1).execute()
    p.run_until_idle(IDLE)
    assert client.get_run(run_id).status == "failed"
    assert calls == {"charge": 1, "ship": 1}

    fork_id = client.fork(run_id, from_step="ship/v1")
    forked = client.get_run(fork_id)
    source = client.get_run(run_id)
    assert (forked.type, forked.payload, forked.max_attempts, forked.priority, forked.status) == (
        "order.v1",
        source.payload,
        1,
        source.priority,
        "pending",
    )
    assert [s.name for s in client.get_steps(fork_id)] == ["charge/v1", "key/v1"]
    p.run_until_idle(IDLE)

    assert client.wait(fork_id, timeout=5).status == "succeeded"
    assert calls == {"charge": 1, "ship": 2}  # the charge was reused, the shipment redone
    result = client.get_result(fork_id, dict)
    original_key = next(s.result for s in client.get_steps(run_id) if s.name == "key/v1")
    assert result == {"tx": "tx-7", "key": original_key, "label": "label-o1"}
    assert client.get_run(run_id).status == "failed"  # the source is untouched
    mine = [e for e in client.get_events(fork_id) if e.event_type == "forked"]
    theirs = [e for e in client.get_events(run_id) if e.event_type == "forked"]
    assert mine[0].detail == {"forked_from": run_id, "from_step": "ship/v1", "copied": 2}
    assert theirs[0].detail == {"fork": fork_id, "from_step": "ship/v1", "copied": 2}


def test_fork_from_the_first_step_copies_nothing(client: Client, poller: Callable[..., Poller]) -> None:
    p = poller(order_v1=order_flow)
    run_id = client.submit("order.v1", {"id": "o2", "amount": 3}).execute()
    p.run_until_idle(IDLE)
    fork_id = client.fork(run_id, "charge/v1")
    assert client.get_steps(fork_id) == []
    p.run_until_idle(IDLE)
    assert client.get_run(fork_id).status == "succeeded"
    assert calls == {"charge": 2, "ship": 2}


def test_fork_refuses_what_it_cannot_do_and_changes_nothing(client: Client, poller: Callable[..., Poller]) -> None:
    p = poller(order_v1=order_flow)
    done = client.submit("order.v1", {"id": "o3", "amount": 1}).execute()
    p.run_until_idle(IDLE)
    waiting = client.submit("order.v1", {"id": "o4", "amount": 1}).execute()
    before = len(client.list_runs())

    with pytest.raises(NotFound):
        client.fork(str(uuid.uuid4()), "charge/v1")
    with pytest.raises(ValidationError, match=r"no recorded step named 'nope'.*'charge/v1', 'key/v1', 'ship/v1'"):
        client.fork(done, "nope")
    with pytest.raises(InvalidState, match="only a finished run can be forked"):
        client.fork(waiting, "charge/v1")
    with pytest.raises(ValidationError):
        client.fork(done, "")
    assert len(client.list_runs()) == before
    assert not [e for e in client.get_events(done) if e.event_type == "forked"]

    client.delete_data(done)
    with pytest.raises(InvalidState, match="its data was deleted"):
        client.fork(done, "ship/v1")


# -- delete_data -------------------------------------------------------------------------

MARKER = "gdpr-marker-7f3a"


def leaky(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    """Carries the marker into every place a run keeps data."""
    echoed = ctx.step("echo/v1", lambda: f"echo {data['secret']}")
    try:
        ctx.step("boom/v1", _boom, data["secret"], retry=ONCE)
    except StepFailed:
        pass
    approval = ctx.wait_for_signal("approved/v1", dict)
    if ctx.attempt == 1:  # a failed attempt: a retried event and last_error carry the marker
        raise RuntimeError(f"first attempt lost {data['secret']}")
    return {"echo": echoed, "approval": approval}


def _boom(secret: str) -> None:
    raise ValueError(f"cannot handle {secret}")


def all_rows_as_text(client: Client) -> str:
    """Every row of every table of the database, as text."""
    engine, schema = client.db.engine, client.db.schema
    tables = sa.inspect(engine).get_table_names(schema=schema)
    assert "workflow_run" in tables and "workflow_run_event" in tables
    out: list[str] = []
    with engine.connect() as conn:
        for name in tables:
            table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=conn)
            if client.db.dialect.name == "postgresql":  # the whole row, every column, as PostgreSQL prints it
                out.extend(conn.execute(sa.select(sa.text(f'CAST("{name}" AS text)')).select_from(table)).scalars())
            else:
                out.extend(repr(tuple(r)) for r in conn.execute(sa.select(table)))
    return "\n".join(out)


def test_delete_data_leaves_no_trace_of_the_data_anywhere(client: Client, poller: Callable[..., Poller]) -> None:
    p = poller(leaky_v1=leaky)
    p.handle_func("child.v1", lambda run: {"child_saw": run.payload_value})
    secret = MARKER
    run_id = client.submit("leaky.v1", {"secret": secret}).execute()
    client.signal(run_id, "approved/v1", {"by": secret})
    child = client.submit("child.v1", {"secret": secret}).execute()
    grandchild = client.submit("child.v1", {"secret": secret}).execute()
    other = client.submit("child.v1", {"secret": "keep-me-42"}).execute()
    assert other not in (child, grandchild)
    with client.db.engine.begin() as conn:  # a tree and a published event, as ctx.start_child/set_event make them
        opts = client.db.exec_options
        for kid, parent in ((child, run_id), (grandchild, child)):
            conn.execute(
                workflow_run.update().where(workflow_run.c.id == kid).values(parent_id=parent),
                execution_options=opts,
            )
        conn.execute(
            workflow_run_event.insert().values(run_id=run_id, key="stage", value={"who": secret}),
            execution_options=opts,
        )
    p.run_until_idle(IDLE)
    info = client.get_run(run_id)
    assert info.status == "succeeded" and info.attempt == 2
    assert MARKER in all_rows_as_text(client)
    steps_before = [(s.name, s.kind, s.status, s.attempts, s.seq) for s in client.get_steps(run_id)]
    events_before = [(e.id, e.event_type, e.attempt) for e in client.get_events(run_id)]

    assert sorted(client.delete_data(run_id, children=True)) == sorted([run_id, child, grandchild])

    text = all_rows_as_text(client)
    assert MARKER not in text
    assert "keep-me-42" in text  # an unrelated run keeps its data
    after = client.get_run(run_id)
    assert after.payload == {"deleted": True} and after.result == {"deleted": True}
    assert (after.id, after.type, after.status, after.attempt, after.created_at, after.updated_at) == (
        info.id,
        info.type,
        info.status,
        info.attempt,
        info.created_at,
        info.updated_at,
    )
    assert [(s.name, s.kind, s.status, s.attempts, s.seq) for s in client.get_steps(run_id)] == steps_before
    events = client.get_events(run_id)
    assert [(e.id, e.event_type, e.attempt) for e in events[:-1]] == events_before
    assert events[-1].event_type == "data_deleted"
    assert events[-1].detail == {"requested_for": run_id, "children": True}
    assert client.get_run(grandchild).payload == {"deleted": True}


def test_delete_data_without_children_and_its_refusals(client: Client, poller: Callable[..., Poller]) -> None:
    p = poller()
    p.handle_func("child.v1", lambda run: run.payload_value)
    parent = client.submit("child.v1", {"secret": MARKER}).execute()
    kid = client.submit("child.v1", {"kid": MARKER}).execute()
    with pytest.raises(InvalidState, match="only a finished run's data can be deleted"):
        client.delete_data(parent)
    with pytest.raises(NotFound):
        client.delete_data(str(uuid.uuid4()))
    with pytest.raises(ValidationError):
        client.delete_data(parent, children="yes")  # type: ignore[arg-type]
    client.cancel(parent)
    with client.db.engine.begin() as conn:  # an unfinished child of a finished parent (one it did not wait for)
        conn.execute(
            workflow_run.update().where(workflow_run.c.id == kid).values(parent_id=parent),
            execution_options=client.db.exec_options,
        )
    with pytest.raises(InvalidState, match=rf"1 unfinished descendant\(s\): {kid} \(pending\)"):
        client.delete_data(parent, children=True)
    assert client.get_run(parent).payload == {"secret": MARKER}  # refused: nothing changed

    assert client.delete_data(parent) == [parent]
    assert client.get_run(parent).payload == {"deleted": True}
    assert client.get_run(kid).payload == {"kid": MARKER}
    assert client.get_run(parent).status == "cancelled"
    with pytest.raises(InvalidState, match="cannot be retried: its data was deleted"):
        client.retry(parent)  # nothing is left to run
    client.cancel(kid)
    assert admin.requeue(client, ("cancelled",)) == [kid]  # a bulk requeue skips the scrubbed run
    assert client.get_run(parent).status == "cancelled"


# -- prune and trees ----------------------------------------------------------------------


def test_prune_takes_a_settled_tree_from_its_root(client: Client) -> None:
    from test_admin import age_runs

    def run(payload: str, parent: str | None = None, finish: bool = True) -> str:
        run_id = client.submit("tree.v1", payload).execute()
        if finish:
            client.cancel(run_id)
        if parent is not None:
            with client.db.engine.begin() as conn:
                conn.execute(
                    workflow_run.update().where(workflow_run.c.id == run_id).values(parent_id=parent),
                    execution_options=client.db.exec_options,
                )
        return run_id

    root = run("root")
    child = run("child", root)
    grandchild = run("grandchild", child)
    waiting_root = run("waiting-root")
    busy = run("busy", waiting_root, finish=False)
    under_busy = run("under-busy", busy)
    running_parent = run("running-parent", finish=False)
    old_child = run("old-child", running_parent)
    age_runs(client, [root, waiting_root, old_child, under_busy], timedelta(days=2))  # the others: just now

    assert client.prune(timedelta(days=1)) == 3  # root with child and grandchild, whatever their age
    for run_id in (root, child, grandchild):
        with pytest.raises(NotFound):
            client.get_run(run_id)
    kept = (waiting_root, busy, under_busy, running_parent, old_child)
    assert [client.get_run(r).payload for r in kept] == [
        "waiting-root",  # its child is unfinished: kept until the child finishes
        "busy",
        "under-busy",  # a child is never pruned while its parent exists
        "running-parent",
        "old-child",
    ]

    client.cancel(busy)
    assert client.prune(timedelta(days=1)) == 3  # the settled tree, from its root
    assert {r.id for r in client.list_runs()} == {running_parent, old_child}


# -- the example, and Workflow ------------------------------------------------------------


def test_fork_and_erase_example(db_url: str) -> None:
    from test_examples import run_example

    lines = run_example("fork_and_erase.py", db_url).stdout.splitlines()
    assert lines[0].endswith(": failed, card charged 1 time(s)")
    assert lines[1].endswith(": succeeded, card charged 1 time(s) in all")
    assert lines[2] == 'fork result: {"label": "label for 1 Rue de la Paix, Paris", "transaction": "tx-1"}'
    assert lines[3] == "erased 2 run(s); fork payload now {'deleted': True}"
    assert lines[4] == "events of the fork: created, forked, leased, succeeded, data_deleted"


def test_workflow_has_fork_and_delete_data() -> None:
    from simpleflow import Workflow

    assert Workflow.fork is Client.fork and Workflow.delete_data is Client.delete_data
