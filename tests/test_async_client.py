"""AsyncClient (extra ``async``): the producer API for asyncio code, on both databases.

Same builder, checks, errors and SQL as ``Client``; ``execute(connection=…)`` joins the
caller's ``AsyncConnection`` transaction; a FastAPI-style service submits without
blocking its event loop. Each test drives its coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from test_examples import run_example

from simpleflow import (
    AlreadyComplete,
    AsyncClient,
    Client,
    ConfigurationError,
    InvalidState,
    NotFound,
    Poller,
    SimpleflowError,
    ValidationError,
    WaitTimeout,
    WorkflowContext,
)

REPO = Path(__file__).resolve().parents[1]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def async_url(db_url: str) -> str:
    """The URL an application gives ``create_async_engine`` for the test's database."""
    if db_url.startswith("sqlite:"):
        return db_url.replace("sqlite:", "sqlite+aiosqlite:", 1)
    return "postgresql+psycopg://" + db_url.split("://", 1)[1].split("?", 1)[0]


@pytest.fixture
def app_async_engine(db_url: str) -> Iterator[AsyncEngine]:
    engine = create_async_engine(async_url(db_url))
    try:
        yield engine
    finally:
        asyncio.run(engine.dispose())


class Order(BaseModel):
    total: int


# -- the calls, as Client makes them -------------------------------------------------------------


def test_submit_read_cancel_retry(client: Client, db_url: str) -> None:
    async def main() -> None:
        async with AsyncClient(db_url) as aclient:
            run_id = (
                await aclient.submit("shop.order.v1", {"total": 3}).with_idempotency("o-1").with_priority(7).execute()
            )
            assert await aclient.submit("shop.order.v1", {"total": 4}).with_idempotency("o-1").execute() == run_id
            info = await aclient.get_run(run_id)
            assert (info.type, info.payload, info.priority, info.status) == (
                "shop.order.v1",
                {"total": 3},
                7,
                "pending",
            )
            later = await aclient.submit("shop.order.v1", {"total": 5}).run_in(timedelta(hours=1)).execute_created()
            assert later[1] is True
            many = await aclient.submit_many([("shop.mail.v1", 1), aclient.submit("shop.mail.v1", 2).with_priority(1)])
            assert [r.id for r in await aclient.list_runs(type="shop.mail.v1")] == sorted(many, reverse=True)
            assert [r.id for r in await aclient.list_runs(idempotency_key="o-1")] == [run_id]
            assert await aclient.submit_many([]) == []

            await aclient.cancel(run_id)
            with pytest.raises(AlreadyComplete):
                await aclient.cancel(run_id)
            await aclient.retry(run_id)
            with pytest.raises(InvalidState):
                await aclient.retry(run_id)
            assert [e.event_type for e in await aclient.get_events(run_id)] == ["created", "cancelled", "requeued"]
            with pytest.raises(InvalidState, match="only a succeeded run has a result"):
                await aclient.get_result(run_id, Order)
            with pytest.raises(WaitTimeout, match="is still pending"):
                await aclient.wait(run_id, timeout=0.05)

    run(main())
    # What the async client wrote is what the threaded client reads.
    assert client.get_run(client.list_runs(idempotency_key="o-1")[0].id).status == "pending"


def test_wait_get_result_signal_and_steps_with_a_worker(client: Client, db_url: str) -> None:
    def order(ctx: WorkflowContext, data: dict[str, int]) -> Order:
        total = ctx.step("price/v1", lambda n: n * 10, data["n"])
        ctx.set_event("stage", "priced")
        approval = ctx.wait_for_signal("approved/v1", dict)
        return Order(total=total + approval["tip"])

    stop = threading.Event()
    with Poller(db_url) as poller:
        poller.with_poll_interval(0.05).handle_workflow("shop.order.v1", order)
        worker = threading.Thread(target=lambda: poller.start(), daemon=True)
        worker.start()

        async def main() -> None:
            async with AsyncClient(db_url) as aclient:
                run_id = await aclient.submit("shop.order.v1", {"n": 4}).execute()
                for _ in range(400):  # until the workflow waits for its signal
                    if (await aclient.get_run(run_id)).status == "waiting":
                        break
                    await asyncio.sleep(0.025)
                assert await aclient.get_event(run_id, "stage", timeout=10) == "priced"  # while it waits
                with pytest.raises(WaitTimeout, match="has not published event 'never'"):
                    await aclient.get_event(run_id, "never", timeout=0.05)
                with pytest.raises(NotFound):
                    await aclient.get_event(str(uuid.uuid4()), "stage", timeout=0.05)
                await aclient.signal(run_id, "approved/v1", {"tip": 2})
                info = await aclient.wait(run_id, timeout=timedelta(seconds=30))
                assert info.status == "succeeded"
                assert await aclient.get_result(run_id, Order) == Order(total=42)
                steps = await aclient.get_steps(run_id)
                assert [(s.name, s.kind, s.status) for s in steps] == [
                    ("price/v1", "step", "completed"),
                    ("event:stage", "event", "completed"),
                    ("approved/v1", "signal", "received"),
                ]

        try:
            run(main())
        finally:
            stop.set()
            poller.stop(timeout=timedelta(seconds=10))
            worker.join(10)


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.submit("", 1),
        lambda c: c.submit("a.v1", float("nan")),
        lambda c: c.submit("a.v1", 1).with_priority("high"),
        lambda c: c.submit_many("a.v1"),
        lambda c: c.submit_many([("a.v1", 1, 2)]),
        lambda c: c.get_run("not-a-run-id"),
        lambda c: c.get_run("0190a7a8-0000-7000-8000-000000000000"),
        lambda c: c.list_runs(status="sleepy"),
        lambda c: c.list_runs(limit=0),
        lambda c: c.get_events("0190a7a8-0000-7000-8000-000000000000"),
        lambda c: c.get_steps("nope"),
        lambda c: c.cancel("0190a7a8-0000-7000-8000-000000000000"),
        lambda c: c.retry("0190a7a8-0000-7000-8000-000000000000"),
        lambda c: c.signal("0190a7a8-0000-7000-8000-000000000000", "", 1),
        lambda c: c.wait("0190a7a8-0000-7000-8000-000000000000", timeout=-1),
    ],
)
def test_the_same_errors_as_client(client: Client, db_url: str, call: Callable[[Any], Any]) -> None:
    with pytest.raises(SimpleflowError) as expected:
        call(client)

    async def main() -> None:
        async with AsyncClient(db_url) as aclient:
            with pytest.raises(SimpleflowError) as got:
                result = call(aclient)
                if asyncio.iscoroutine(result):
                    await result
            assert (type(got.value), str(got.value)) == (type(expected.value), str(expected.value))

    run(main())


def test_what_it_accepts(db_url: str, app_async_engine: AsyncEngine, db_schema: str | None) -> None:
    with pytest.raises(ConfigurationError, match=r"expected a URL string or a sqlalchemy\.ext\.asyncio\.AsyncEngine"):
        AsyncClient(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unknown scheme 'mysql'"):
        AsyncClient("mysql://localhost/db")

    with Client(db_url) as migrating:
        migrating.auto_migrate()

    async def main() -> None:
        aclient = AsyncClient(app_async_engine, schema=db_schema)  # the application's engine: not disposed
        run_id = await aclient.submit("a.v1", 1).execute()
        await aclient.close()
        async with app_async_engine.connect() as conn:  # still usable after close()
            assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
        async with AsyncClient(db_url) as again:
            assert (await again.get_run(run_id)).status == "pending"
            with pytest.raises(ConfigurationError, match=r"must be a sqlalchemy\.ext\.asyncio\.AsyncConnection"):
                await again.submit("a.v1", 1).execute(connection=object())  # type: ignore[arg-type]

    run(main())


# -- in the caller's transaction -------------------------------------------------------------------


def shop_table(schema: str | None) -> sa.Table:
    return sa.Table(
        "shop_order",
        sa.MetaData(),
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        schema=schema,
    )


def test_execute_in_the_callers_transaction(
    client: Client, db_url: str, app_async_engine: AsyncEngine, db_schema: str | None
) -> None:
    orders = shop_table(db_schema)

    async def main() -> None:
        async with app_async_engine.begin() as conn:
            await conn.run_sync(orders.metadata.create_all)
        async with AsyncClient(db_url) as aclient:
            async with app_async_engine.begin() as conn:  # commits: the order and its run
                kept = await aclient.submit("shop.fulfil.v1", {"order": "o-1"}).execute(connection=conn)
                await conn.execute(orders.insert().values(order_id="o-1", run_id=kept))
                assert await aclient.submit_many([("shop.mail.v1", 1)], connection=conn)
            assert (await aclient.get_run(kept)).status == "pending"

            async with app_async_engine.connect() as conn:  # rolls back: neither exists
                transaction = await conn.begin()
                dropped = await aclient.submit("shop.fulfil.v1", {"order": "o-2"}).execute(connection=conn)
                await conn.execute(orders.insert().values(order_id="o-2", run_id=dropped))
                await transaction.rollback()
            with pytest.raises(NotFound):
                await aclient.get_run(dropped)

            with pytest.raises(sa.exc.IntegrityError):  # the order exists: its new run goes down with it
                async with app_async_engine.begin() as conn:
                    again = await aclient.submit("shop.fulfil.v1", {"order": "o-1"}).execute(connection=conn)
                    await conn.execute(orders.insert().values(order_id="o-1", run_id=again))
            with pytest.raises(NotFound):
                await aclient.get_run(again)

            async with app_async_engine.connect() as conn:
                rows = (await conn.execute(sa.select(orders.c.order_id, orders.c.run_id))).all()
            assert [tuple(r) for r in rows] == [("o-1", kept)]

    run(main())
    assert len(client.list_runs(type="shop.fulfil.v1")) == 1


# -- a FastAPI-style service --------------------------------------------------------------------------


def test_a_fastapi_service_submits_without_blocking_its_loop(
    client: Client, db_url: str, app_async_engine: AsyncEngine, db_schema: str | None
) -> None:
    from contextlib import asynccontextmanager

    import httpx
    from fastapi import FastAPI

    orders = shop_table(db_schema)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        async with app_async_engine.begin() as conn:
            await conn.run_sync(orders.metadata.create_all)
        async with AsyncClient(db_url) as aclient:
            state["client"] = aclient
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/orders/{order_id}")
    async def place(order_id: str) -> dict[str, Any]:
        aclient: AsyncClient = state["client"]
        async with app_async_engine.begin() as conn:
            run_id = await aclient.submit("shop.fulfil.v1", {"order": order_id}).execute(connection=conn)
            await conn.execute(orders.insert().values(order_id=order_id, run_id=run_id))
        return {"run_id": run_id, "status": (await aclient.get_run(run_id)).status}

    @app.get("/orders/{order_id}")
    async def show(order_id: str) -> dict[str, Any]:
        async with app_async_engine.connect() as conn:
            run_id = (await conn.execute(sa.select(orders.c.run_id).where(orders.c.order_id == order_id))).scalar()
        info = await state["client"].wait(run_id, timeout=30)
        return {"run_id": run_id, "status": info.status, "result": info.result}

    async def calls() -> None:
        async with (
            lifespan(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop") as http,
        ):
            placed = (await http.post("/orders/o-7")).json()
            assert placed["status"] in ("pending", "leased", "succeeded")  # the worker may be that quick
            shown = (await http.get("/orders/o-7")).json()
            assert shown == {"run_id": placed["run_id"], "status": "succeeded", "result": {"shipped": "o-7"}}

    with Poller(db_url) as poller:
        poller.with_poll_interval(0.05).handle_func("shop.fulfil.v1", lambda r: {"shipped": r.payload_value["order"]})
        worker = threading.Thread(target=poller.start, daemon=True)
        worker.start()
        try:
            run(calls())
        finally:
            poller.stop(timeout=timedelta(seconds=10))
            worker.join(10)


# -- without the extra ------------------------------------------------------------------------------

WITHOUT_GREENLET = textwrap.dedent(
    """
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name == "greenlet" or name.startswith("greenlet."):
                raise ImportError("No module named 'greenlet' (blocked by the test)")
            return None

    sys.meta_path.insert(0, Blocker())
    import simpleflow
    try:
        simpleflow.AsyncClient(sys.argv[1])
    except simpleflow.ConfigurationError as error:
        print(error)
    """
)


def test_without_the_extra_the_error_says_what_to_install(tmp_path: Path) -> None:
    script = tmp_path / "absent.py"
    script.write_text(WITHOUT_GREENLET)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(script), f"sqlite:///{tmp_path}/t.db"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "AsyncClient needs SQLAlchemy's asyncio extension" in proc.stdout
    assert "pip install 'simpleflow-db[async]'" in proc.stdout


def test_validation_happens_before_any_await() -> None:
    async def main() -> None:
        async with AsyncClient("sqlite:///:memory:") as aclient:
            with pytest.raises(ValidationError):
                aclient.submit("a.v1", 1).with_max_attempts(0)

    run(main())


def test_the_example(db_url: str) -> None:
    proc = run_example("async_producer.py", db_url)
    assert proc.stdout.splitlines() == [
        "rolled back: order o_2 and its run",
        "order o_1: run succeeded, result {'shipped': 'o_1'}",
    ]
