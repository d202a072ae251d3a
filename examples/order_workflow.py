"""A durable order workflow: steps, a transactional step, a sleep, and a signal from another process.

    python examples/order_workflow.py

The database comes from ``SIMPLEFLOW_DATABASE_URL`` (default: a SQLite file in the
system temp directory). The workflow charges a card (a step with retries and a
timeout), reserves stock in an application table in the same transaction that
records the step, sleeps durably, then waits for an approval that a separate
process sends with ``Client.signal``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta

import sqlalchemy as sa
from pydantic import BaseModel

from simpleflow import RetryPolicy, Workflow, WorkflowContext

URL = os.environ.get("SIMPLEFLOW_DATABASE_URL") or f"sqlite:///{tempfile.gettempdir()}/simpleflow_order_example.db"


class OrderInput(BaseModel):
    order_id: str
    amount: int


class Charge(BaseModel):
    transaction_id: str
    amount: int


class Approval(BaseModel):
    by: str


class OrderOutput(BaseModel):
    order_id: str
    transaction_id: str
    approved_by: str
    receipt_key: str


def charge_card(amount: int) -> Charge:
    """A call to a payment provider (here: pretend)."""
    return Charge(transaction_id=f"tx-{uuid.uuid4().hex[:8]}", amount=amount)


def reserve_stock(conn: sa.Connection, order: OrderInput) -> int:
    """A business write that commits together with the step's record, or not at all."""
    conn.execute(
        sa.text("INSERT INTO example_reservations (order_id, amount) VALUES (:o, :a)"),
        {"o": order.order_id, "a": order.amount},
    )
    return 1


def order_workflow(ctx: WorkflowContext, order: OrderInput) -> OrderOutput:
    charge = ctx.step(
        "charge/v1",
        charge_card,
        order.amount,
        retry=RetryPolicy(max_attempts=3, initial_delay=timedelta(seconds=1)),
        timeout=timedelta(seconds=30),
    )
    ctx.step("reserve/v1", reserve_stock, order, transactional=True)
    ctx.sleep("cool-off/v1", timedelta(seconds=1))  # frees the worker thread while it sleeps
    approval = ctx.wait_for_signal("approved/v1", Approval, timeout=timedelta(minutes=5))
    key = ctx.uuid7("receipt-key/v1")  # recorded once, the same on every replay
    return OrderOutput(
        order_id=order.order_id, transaction_id=charge.transaction_id, approved_by=approval.by, receipt_key=key
    )


SEND_SIGNAL = """
import sys
from simpleflow import Client
with Client(sys.argv[1]) as client:
    client.signal(sys.argv[2], "approved/v1", {"by": "ana"})
print("signal sent from process", __import__("os").getpid())
"""


def main() -> None:
    with Workflow(URL) as wf:
        wf.auto_migrate()
        with wf.db.engine.begin() as conn:  # the application's own table (default schema)
            conn.execute(
                sa.text(
                    "CREATE TABLE IF NOT EXISTS example_reservations (order_id VARCHAR(64) PRIMARY KEY, amount INTEGER)"
                )
            )
        wf.handle_workflow("example.order.v1", order_workflow).with_poll_interval(timedelta(milliseconds=200))
        worker = threading.Thread(target=wf.start, daemon=True)
        worker.start()
        try:
            order = OrderInput(order_id=f"order-{uuid.uuid4().hex[:8]}", amount=4200)
            run_id = wf.submit("example.order.v1", order).execute()
            print(f"submitted {order.order_id} as run {run_id}")

            deadline = time.monotonic() + 30
            while wf.get_run(run_id).status != "waiting":
                if time.monotonic() > deadline:
                    raise SystemExit(f"the run never reached its wait: {wf.get_run(run_id)}")
                time.sleep(0.1)
            print("the run is waiting for approval; sending it from another process")
            subprocess.run([sys.executable, "-c", SEND_SIGNAL, URL, run_id], check=True)

            info = wf.wait(run_id, timeout=timedelta(seconds=30))
            print(f"run {run_id} {info.status}")
            result = wf.get_result(run_id, OrderOutput)
            print(f"charged {result.transaction_id}, approved by {result.approved_by}, receipt {result.receipt_key}")
            for step in wf.get_steps(run_id):
                print(f"  {step.seq:>2} {step.name:<16} {step.kind:<7} {step.status:<10} attempts={step.attempts}")
            with wf.db.engine.connect() as conn:
                reserved = conn.execute(
                    sa.text("SELECT amount FROM example_reservations WHERE order_id = :o"), {"o": order.order_id}
                ).scalar_one()
            print(f"reservation row written exactly once: amount={reserved}")
        finally:
            wf.stop()
            worker.join(timeout=30)


if __name__ == "__main__":
    main()
