"""Multi-tenancy: a tenant-bound client sees and changes only its tenant's rows, on both databases."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from plans import hot_plan

from simpleflow import AsyncClient, Client, Poller, Workflow, WorkflowContext, admin
from simpleflow.core.errors import MigrationError, NotFound, ValidationError
from simpleflow.db.database import Database
from simpleflow.db.schema import TENANT_TABLES, workflow_run, workflow_schedule
from simpleflow.schedules import ScheduleTicker
from simpleflow.store import Store
from simpleflow.store.fairness import next_tenant


@pytest.fixture
def acme(db_url: str) -> Iterator[Client]:
    c = Client(db_url, tenant="acme")
    c.auto_migrate()
    yield c
    c.close()


@pytest.fixture
def globex(acme: Client, db_url: str) -> Iterator[Client]:
    c = Client(db_url, tenant="globex")
    yield c
    c.close()


def tenants_of(client: Client, table: sa.Table, **where: Any) -> list[str]:
    """The tenant of each row of ``table`` (owner's view, no scoping)."""
    stmt = sa.select(table.c.tenant)
    for column, value in where.items():
        stmt = stmt.where(table.c[column] == value)
    with client.db.engine.connect() as conn:
        return sorted(str(t) for t in conn.execute(stmt, execution_options=client.db.exec_options).scalars())


def test_runs_carry_their_tenant_and_default(acme: Client, globex: Client, db_url: str) -> None:
    run_id = acme.submit("report.v1", {"n": 1}).execute()
    assert acme.get_run(run_id).tenant == "acme"
    with Client(db_url) as default:
        other = default.submit("report.v1").execute()
        assert default.tenant == "default"
        assert default.get_run(other).tenant == "default"
        with pytest.raises(NotFound):
            default.get_run(run_id)
    assert tenants_of(acme, workflow_run) == ["acme", "default"]


def test_another_tenants_run_is_not_found_by_every_method(acme: Client, globex: Client) -> None:
    theirs = globex.submit("report.v1", {}).execute()
    mine = acme.submit("report.v1", {}).execute()
    for call in (
        lambda: acme.get_run(theirs),
        lambda: acme.get_events(theirs),
        lambda: acme.get_steps(theirs),
        lambda: acme.cancel(theirs),
        lambda: acme.retry(theirs),
        lambda: acme.signal(theirs, "go"),
        lambda: acme.wait(theirs, timeout=0.1),
        lambda: acme.get_result(theirs, dict),
        lambda: acme.get_event(theirs, "stage", timeout=0.05),
        lambda: acme.delete_data(theirs),
        lambda: acme.fork(theirs, from_step="any"),
    ):
        with pytest.raises(NotFound):
            call()
    assert acme.list_runs(parent_id=theirs) == []
    assert [r.id for r in acme.list_runs()] == [mine]
    assert [r.id for r in globex.list_runs()] == [theirs]
    assert acme.list_runs(idempotency_key="x") == []
    assert globex.get_run(theirs).status == "pending"  # nothing changed


def test_cancel_retry_signal_events_steps_in_own_tenant(acme: Client) -> None:
    run_id = acme.submit("report.v1", {}).execute()
    acme.signal(run_id, "go", {"a": 1})
    acme.cancel(run_id)
    acme.retry(run_id)
    kinds = [e.event_type for e in acme.get_events(run_id)]
    assert kinds == ["created", "signalled", "cancelled", "requeued"]
    assert acme.get_steps(run_id) == []
    assert set(tenants_of(acme, TENANT_TABLES[1], run_id=run_id)) == {"acme"}  # events
    assert tenants_of(acme, TENANT_TABLES[4], run_id=run_id) == ["acme"]  # the signal


def test_idempotency_keys_are_unique_per_tenant(acme: Client, globex: Client) -> None:
    a1, created1 = acme.submit("report.v1").with_idempotency("k").execute_created()
    a2, created2 = acme.submit("report.v1").with_idempotency("k").execute_created()
    g1, created3 = globex.submit("report.v1").with_idempotency("k").execute_created()
    assert (a1 == a2, created1, created2, created3) == (True, True, False, True)
    assert g1 != a1
    assert acme.submit_many([acme.submit("x.v1").with_idempotency("k")]) == [a1]
    assert globex.submit_many([globex.submit("x.v1").with_idempotency("k")]) == [g1]


def test_stats_prune_and_requeue_are_scoped(acme: Client, globex: Client) -> None:
    mine = acme.submit("report.v1").execute()
    theirs = globex.submit("report.v1").execute()
    assert [(q.type, q.count) for q in acme.stats().queue] == [("report.v1", 1)]
    acme.cancel(mine)
    globex.cancel(theirs)
    assert admin.requeue(acme, statuses=("cancelled",)) == [mine]
    assert globex.get_run(theirs).status == "cancelled"
    acme.cancel(mine)
    assert acme.prune(older_than=0, statuses=("cancelled",)) == 1
    assert globex.get_run(theirs).status == "cancelled"
    assert globex.prune(older_than=0, statuses=("cancelled",)) == 1
    assert acme.stats().finished_last_hour == 0


def test_schedules_are_scoped_and_fire_in_their_tenant(acme: Client, globex: Client, db_url: str) -> None:
    sid = globex.schedule("report.v1", {"k": 1}).cron("* * * * *").create()
    assert globex.get_schedule(sid).tenant == "globex"
    assert acme.list_schedules() == []
    for call in (
        lambda: acme.get_schedule(sid),
        lambda: acme.pause_schedule(sid),
        lambda: acme.resume_schedule(sid),
        lambda: acme.delete_schedule(sid),
    ):
        with pytest.raises(NotFound):
            call()
    mine = acme.schedule("report.v1").cron("* * * * *").create()
    assert [s.id for s in acme.list_schedules()] == [mine]
    db = Database.open(db_url)
    with db.engine.begin() as conn:  # make both due now
        conn.execute(
            sa.update(workflow_schedule).values(next_run_at=admin.ping(acme) - timedelta(seconds=1)),
            execution_options=db.exec_options,
        )
    db.close()
    assert ScheduleTicker(db_url).tick() == 2
    assert [r.tenant for r in globex.list_runs()] == ["globex"]
    assert [r.tenant for r in acme.list_runs()] == ["acme"]
    assert {e.event_type for e in globex.store.db.run(lambda c: globex.store.schedules.schedule_events(c, sid))} >= {
        "schedule_created",
        "schedule_fired",
    }
    assert set(tenants_of(acme, TENANT_TABLES[1], schedule_id=sid)) == {"globex"}


def test_handler_sees_its_tenant_and_steps_carry_it(acme: Client, globex: Client, db_url: str) -> None:
    seen: dict[str, str] = {}

    def work(run: Any) -> None:
        seen[run.id] = run.tenant

    def flow(ctx: Any, data: Any) -> int:
        return int(ctx.step("one/v1", lambda: 1))

    a = acme.submit("plain.v1").execute()
    g = globex.submit("plain.v1").execute()
    w = globex.submit("flow.v1", {}).execute()
    poller = Poller(db_url).handle_func("plain.v1", work).handle_workflow("flow.v1", flow)
    assert poller.run_until_idle() == 3
    poller.close()
    assert seen == {a: "acme", g: "globex"}
    assert globex.get_run(w).result == 1
    assert [s.name for s in globex.get_steps(w)] == ["one/v1"]
    assert tenants_of(acme, TENANT_TABLES[3], run_id=w) == ["globex"]  # the step record
    assert set(tenants_of(acme, TENANT_TABLES[1], run_id=w)) == {"globex"}  # claim, complete events


def test_poller_with_tenants_claims_only_those(acme: Client, globex: Client, db_url: str) -> None:
    a = acme.submit("plain.v1").execute()
    g = globex.submit("plain.v1").execute()
    poller = Poller(db_url).with_tenants("globex").handle_func("plain.v1", lambda run: run.tenant)
    assert poller.run_until_idle() == 1
    poller.close()
    assert globex.get_run(g).result == "globex"
    assert acme.get_run(a).status == "pending"
    with pytest.raises(ValidationError):
        Poller(db_url).with_tenants()
    with pytest.raises(ValidationError):
        Poller(db_url).with_tenants("no spaces")


def test_workflow_with_a_tenant_serves_only_it(acme: Client, db_url: str) -> None:
    other = acme.submit("plain.v1").execute()
    with Workflow(db_url, tenant="globex") as wf:
        wf.handle_func("plain.v1", lambda run: run.tenant)
        mine = wf.submit("plain.v1").execute()
        assert wf.run_until_idle() == 1
        assert wf.get_run(mine).result == "globex"
        with pytest.raises(NotFound):
            wf.get_run(other)
    assert acme.get_run(other).status == "pending"


def test_invalid_tenant_is_rejected_before_anything(db_url: str) -> None:
    for bad in ("", "a b", "x" * 65, 3, "-lead"):
        with pytest.raises(ValidationError, match="tenant"):
            Client(db_url, tenant=bad)  # type: ignore[arg-type]


# -- the fair claim ----------------------------------------------------------------------


def claim(db: Database, store: Store, n: int, after: str) -> list[str]:
    route = ROUTES.setdefault(id(store), store.leases.route_filter(["plain.v1"], []))
    got = db.run(lambda c: store.leases.claim(c, "w", route, n, 30.0, fair=True, after=after))
    return [r.tenant for r in got]


ROUTES: dict[int, Any] = {}


def test_fair_claim_shares_free_threads_among_tenants(acme: Client, globex: Client, db_url: str) -> None:
    acme.submit_many([acme.submit("plain.v1", {"i": i}) for i in range(50)])
    globex.submit("plain.v1").with_priority(500).execute()  # newer, lower priority: still its turn
    db = Database.open(db_url)
    store = Store(db)
    assert claim(db, store, 1, after="acme") == ["globex"]  # one free thread: B's turn after A
    globex.submit("plain.v1").execute()
    assert claim(db, store, 1, after="globex") == ["acme"]  # and then A's
    # 4 threads, 2 tenants: a share of 2 each; globex has 1, so this claim comes back short
    # (the poller claims again at once) rather than reading more of acme's backlog
    assert sorted(claim(db, store, 4, after="acme")) == ["acme", "acme", "globex"]
    assert next_tenant([], "x") == "x"
    assert next_tenant(["a", "b", "a"], "") == "a"  # a got the last round's slot
    assert next_tenant(["c", "a"], "b") == "a"  # after b: c, then a (wrapped)
    db.close()


def test_fair_claim_keeps_priority_within_a_tenant(acme: Client, db_url: str) -> None:
    low = acme.submit("plain.v1").with_priority(200).execute()
    high = acme.submit("plain.v1").with_priority(1).execute()
    db = Database.open(db_url)
    store = Store(db)
    route = store.leases.route_filter(["plain.v1"], [])
    got = db.run(lambda c: store.leases.claim(c, "w", route, 1, 30.0, fair=True))
    assert [r.id for r in got] == [high]
    assert acme.get_run(low).status == "pending"
    db.close()


def test_a_new_tenant_starts_within_one_claim_cycle_of_a_free_thread(acme: Client, globex: Client, db_url: str) -> None:
    """A's backlog holds both threads; B's run takes the first thread that frees."""
    acme.submit_many([acme.submit("plain.v1", {"i": i}) for i in range(200)])
    gate = threading.Semaphore(0)
    order: list[str] = []

    def work(run: Any) -> None:
        order.append(run.tenant)
        if run.tenant == "acme":
            gate.acquire(timeout=10)

    poller = Poller(db_url).with_concurrency(2).with_poll_interval(0.05).handle_func("plain.v1", work)
    thread = threading.Thread(target=poller.start, daemon=True)
    thread.start()
    try:
        while len(order) < 2:
            threading.Event().wait(0.01)
        globex.submit("plain.v1").execute()
        gate.release()  # one of A's runs finishes: one thread frees
        while "globex" not in order:
            threading.Event().wait(0.01)
        assert order[:3] == ["acme", "acme", "globex"]
    finally:
        for _ in range(300):
            gate.release()
        poller.stop(timeout=5)
        thread.join(10)


def test_tenants_example_runs(db_url: str) -> None:
    from test_examples import run_example

    out = run_example("tenants.py", db_url).stdout
    assert "two runs (True)" in out
    assert "acme cannot see globex's run: NotFound" in out
    assert "globex's run started as run 2 of 22" in out
    assert "acme sees 21 runs, globex sees 1" in out
    assert "per-tenant limit of 2: at most 2 acme and 2 globex exports at once" in out


def test_migration_puts_existing_rows_in_the_default_tenant(db_url: str) -> None:
    from simpleflow.db.migrate import downgrade, upgrade

    upgrade(db_url, "0005_trace_context")
    db = Database.open(db_url)
    with db.engine.begin() as conn:  # a row written before tenants existed (no tenant column yet)
        names = ("id", "type", "payload", "idempotency_key")
        old_table = sa.Table("workflow_run", sa.MetaData(), *[sa.Column(n, workflow_run.c[n].type) for n in names])
        conn.execute(
            sa.insert(old_table).values(
                id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", type="old.v1", payload="{}", idempotency_key="k"
            ),
            execution_options=db.exec_options,
        )
    upgrade(db_url)
    with Client(db_url) as default, Client(db_url, tenant="acme") as acme:
        old = default.get_run("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
        assert (old.tenant, old.type) == ("default", "old.v1")
        assert default.submit("old.v1").with_idempotency("k").execute() == old.id
        assert acme.submit("old.v1").with_idempotency("k").execute() != old.id
    with pytest.raises(MigrationError, match="idempotency_key"):  # two tenants share a live key
        downgrade(db_url, "0005_trace_context")
    with db.engine.begin() as conn:
        conn.execute(sa.delete(workflow_run).where(workflow_run.c.tenant == "acme"), execution_options=db.exec_options)
    downgrade(db_url, "0005_trace_context")  # and back: the column goes, the rows stay
    with db.engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(old_table), execution_options=db.exec_options)
        assert count.scalar_one() == 1  # the run from before the migration
    db.close()


def test_fair_claim_reads_through_the_tenant_index(acme: Client, globex: Client) -> None:
    acme.submit_many([acme.submit("plain.v1", {"i": i}) for i in range(2000)])
    globex.submit_many([globex.submit("plain.v1", {"i": i}) for i in range(10)])
    db = acme.db
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    store = Store(db)
    with db.engine.connect() as conn:
        tx = conn.begin()
        route = store.leases.route_filter(["plain.v1"], [])
        claimed = store.leases.claim(conn, "w1", route, 4, 30.0, fair=True)
        tx.rollback()
    assert sorted(r.tenant for r in claimed) == ["acme", "acme", "globex", "globex"]
    plan = hot_plan(db, ("lease_until", "row_number"), {"n": 4, "w": "w1", "lease": 30.0, "after": ""})
    assert "ix_workflow_run_tenant_due" in plan, plan
    assert "Seq Scan on workflow_run" not in plan and "SCAN workflow_run" not in plan, plan


def test_children_events_and_forks_stay_in_the_parents_tenant(acme: Client, globex: Client, db_url: str) -> None:
    from simpleflow.db.schema import workflow_run_event, workflow_step

    def parent(ctx: WorkflowContext, n: int) -> int:
        ctx.set_event("stage", "started")
        doubled: int = ctx.run_child("double/v1", "double.v1", n, int)
        return doubled

    run_id = acme.submit("parent.v1", 21).execute()
    with Poller(db_url) as poller:
        poller.handle_workflow("parent.v1", parent)
        poller.handle_func("double.v1", lambda run: run.payload_value * 2 if run.tenant == "acme" else -1)
        poller.run_until_idle(timeout=timedelta(seconds=30))
    assert acme.get_result(run_id, int) == 42
    (child,) = acme.list_runs(parent_id=run_id)
    assert child.tenant == "acme"
    assert acme.get_event(run_id, "stage") == "started"
    assert tenants_of(acme, workflow_run_event) == ["acme"]
    assert set(tenants_of(acme, workflow_step)) == {"acme"}
    fork = acme.fork(run_id, from_step="double/v1")
    assert acme.get_run(fork).tenant == "acme"
    with pytest.raises(NotFound):
        globex.get_event(run_id, "stage", timeout=0.05)


def test_an_async_client_is_scoped_like_client(acme: Client, globex: Client, db_url: str) -> None:
    theirs = globex.submit("report.v1", {}).execute()

    async def main() -> str:
        async with AsyncClient(db_url, tenant="acme") as client:
            mine = await client.submit("report.v1", {}).with_idempotency("k").execute()
            assert (await client.get_run(mine)).tenant == "acme"
            with pytest.raises(NotFound):
                await client.get_run(theirs)
            assert [r.id for r in await client.list_runs()] == [mine]
            return mine

    mine = asyncio.run(main())
    assert acme.get_run(mine).tenant == "acme"
    assert globex.submit("report.v1", {}).with_idempotency("k").execute() != mine  # keys per tenant


def test_concurrency_and_debounce_keys_are_per_tenant(acme: Client, globex: Client, db_url: str) -> None:
    started = threading.Barrier(2, timeout=20)

    def both_at_once(run: Any) -> None:
        started.wait()  # only returns when the other tenant's run with the same key runs too

    a = acme.submit("sync.v1", {}).with_concurrency_key("customer:42").execute()
    g = globex.submit("sync.v1", {}).with_concurrency_key("customer:42").execute()
    with Poller(db_url) as poller:
        poller.with_concurrency(4).handle_func("sync.v1", both_at_once)
        poller.run_until_idle(timeout=timedelta(seconds=30))
    assert acme.get_run(a).status == "succeeded" and globex.get_run(g).status == "succeeded"

    first = acme.submit("reindex.v1", {"n": 1}).with_debounce("shop-7", 60).execute()
    assert acme.submit("reindex.v1", {"n": 2}).with_debounce("shop-7", 60).execute() == first
    other = globex.submit("reindex.v1", {"n": 3}).with_debounce("shop-7", 60).execute()
    assert other != first
    assert acme.get_run(first).payload == {"n": 2} and globex.get_run(other).payload == {"n": 3}
