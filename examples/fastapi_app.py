"""A FastAPI service that records an order and submits its fulfilment in ONE transaction.

    pip install simpleflow-db fastapi uvicorn
    cd examples
    SIMPLEFLOW_DATABASE_URL=sqlite:///shop.db uvicorn fastapi_app:app        # the service
    SIMPLEFLOW_DATABASE_URL=sqlite:///shop.db simpleflow worker fastapi_app:worker   # fulfils orders

    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"order_id": "o_1", "item": "book", "quantity": 2}'
    curl localhost:8000/orders/o_1

``POST /orders`` inserts the application's own ``shop_order`` row and submits the
``shop.fulfil.v1`` run with ``.execute(connection=conn)`` on the same connection,
so both commit together or neither does: a second POST with the same ``order_id``
fails on the row's primary key and takes its run down with it (409, still one run).
``GET /orders/{order_id}`` shows the order and its run's status.

The endpoints are plain ``def`` functions: FastAPI runs them on its thread pool, so
simpleflow's synchronous calls never block the event loop.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from simpleflow import Client, NotFound, Poller, WorkflowRun

URL = os.environ.get("SIMPLEFLOW_DATABASE_URL") or f"sqlite:///{tempfile.gettempdir()}/simpleflow-fastapi-shop.db"

#: The application's own table, next to simpleflow's (a real application migrates it with
#: its own Alembic environment, see "Migrations inside your application's Alembic").
metadata = sa.MetaData()
orders = sa.Table(
    "shop_order",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("item", sa.String(200), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("run_id", sa.String(36), nullable=False),
)

client = Client(URL)


class NewOrder(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    item: str = Field(min_length=1, max_length=200)
    quantity: int = Field(ge=1, le=1000)


class OrderStatus(BaseModel):
    order_id: str
    item: str
    quantity: int
    status: str  # the application's: placed, shipped
    run_id: str
    run_status: str  # simpleflow's: pending, running, succeeded, failed, ...
    result: Any = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    client.auto_migrate()
    metadata.create_all(client.db.engine)
    yield
    client.close()


app = FastAPI(title="shop", lifespan=lifespan)


@app.post("/orders", status_code=201)
def place_order(order: NewOrder) -> OrderStatus:
    try:
        with client.db.engine.begin() as conn:  # one transaction: the run and the row, or nothing
            run_id = client.submit("shop.fulfil.v1", {"order_id": order.order_id}).execute(connection=conn)
            conn.execute(orders.insert().values(**order.model_dump(), status="placed", run_id=run_id))
    except sa.exc.IntegrityError:
        raise HTTPException(409, f"order {order.order_id} already exists") from None
    return get_order(order.order_id)


@app.get("/orders/{order_id}")
def get_order(order_id: str) -> OrderStatus:
    with client.db.engine.connect() as conn:
        row = conn.execute(orders.select().where(orders.c.order_id == order_id)).mappings().first()
    if row is None:
        raise HTTPException(404, f"no order {order_id}")
    try:
        run = client.get_run(row["run_id"])
    except NotFound:  # pruned after it finished
        return OrderStatus(**row, run_status="pruned")
    return OrderStatus(**row, run_status=run.status, result=run.result)


def fulfil(run: WorkflowRun) -> dict[str, str]:
    """The run's handler: ship the order, then mark it shipped in the application's table."""
    order_id = json.loads(run.payload)["order_id"]
    with client.db.engine.begin() as conn:
        conn.execute(orders.update().where(orders.c.order_id == order_id).values(status="shipped"))
    return {"shipped": order_id}


def worker() -> Poller:
    """``simpleflow worker fastapi_app:worker`` (from this directory) fulfils the orders."""
    poller = Poller(URL)
    poller.handle_func("shop.fulfil.v1", fulfil)
    return poller
