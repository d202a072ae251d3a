"""An asyncio producer: AsyncClient submits inside the application's own transaction.

    pip install 'simpleflow-db[async]'
    python examples/async_producer.py            # SIMPLEFLOW_DATABASE_URL picks the database

The coroutine inserts an order row and submits its fulfilment run on the same
``AsyncConnection`` (both commit or neither does), a second order is rolled back
with its run, and a threaded worker (workers stay threaded) fulfils the first
while the event loop awaits the result.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from simpleflow import AsyncClient, Client, NotFound, Poller, WorkflowRun

URL = os.environ.get("SIMPLEFLOW_DATABASE_URL") or f"sqlite:///{tempfile.gettempdir()}/simpleflow-async.db"
SCHEMA = URL.split("schema=", 1)[1].split("&", 1)[0] if "schema=" in URL else None

orders = sa.Table(
    "async_shop_order",
    sa.MetaData(),
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    schema=SCHEMA,  # on PostgreSQL, next to simpleflow's tables (this example's choice)
)


def app_async_url(url: str) -> str:
    """The URL the application gives SQLAlchemy's create_async_engine."""
    if url.startswith("sqlite:"):
        return url.replace("sqlite:", "sqlite+aiosqlite:", 1)
    return "postgresql+psycopg://" + url.split("://", 1)[1].split("?", 1)[0]


def fulfil(run: WorkflowRun) -> dict[str, str]:
    return {"shipped": run.payload_value["order_id"]}


async def main() -> None:
    engine = create_async_engine(app_async_url(URL))
    async with engine.begin() as conn:
        await conn.run_sync(orders.metadata.create_all)
        await conn.execute(orders.delete())
    async with AsyncClient(URL) as client:
        # One transaction: the order row and its run commit together.
        async with engine.begin() as conn:
            run_id = await client.submit("shop.fulfil.v1", {"order_id": "o_1"}).execute(connection=conn)
            await conn.execute(orders.insert().values(order_id="o_1", run_id=run_id))

        # Rolled back: neither the row nor the run exists.
        async with engine.connect() as conn:
            transaction = await conn.begin()
            dropped = await client.submit("shop.fulfil.v1", {"order_id": "o_2"}).execute(connection=conn)
            await conn.execute(orders.insert().values(order_id="o_2", run_id=dropped))
            await transaction.rollback()
        try:
            await client.get_run(dropped)
        except NotFound:
            print("rolled back: order o_2 and its run")

        info = await client.wait(run_id, timeout=timedelta(seconds=30))
        print(f"order o_1: run {info.status}, result {info.result}")
    await engine.dispose()


if __name__ == "__main__":
    with Client(URL) as setup:
        setup.auto_migrate()
    with Poller(URL) as poller:
        poller.with_poll_interval(timedelta(milliseconds=100)).handle_func("shop.fulfil.v1", fulfil)
        worker = threading.Thread(target=poller.start, daemon=True)
        worker.start()
        try:
            asyncio.run(main())
        finally:
            poller.stop(timeout=timedelta(seconds=10))
            worker.join()
