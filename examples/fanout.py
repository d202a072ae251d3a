"""Fan-out and fan-in: a workflow that runs child runs, waits for them, gathers quotes in
parallel and publishes its stage to callers.

    python examples/fanout.py

The database comes from ``SIMPLEFLOW_DATABASE_URL`` (default: a fresh SQLite file in the
system temp directory). The order workflow charges the card in a child run, starts one
child per parcel and waits for all of them (parked, no thread held, woken by the last
child's end), asks two carriers for a quote at the same time, and publishes its stage
with ``ctx.set_event``, which the caller reads with ``get_event`` while it runs.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from datetime import timedelta

from pydantic import BaseModel

from simpleflow import Workflow, WorkflowContext, WorkflowRun

URL = os.environ.get("SIMPLEFLOW_DATABASE_URL") or f"sqlite:///{tempfile.mkdtemp()}/simpleflow_fanout_example.db"


class Parcel(BaseModel):
    id: str
    weight_g: int


class Order(BaseModel):
    order_id: str
    amount: int
    parcels: list[Parcel]


class Receipt(BaseModel):
    charged: int


class Label(BaseModel):
    parcel_id: str
    tracking: str


class Summary(BaseModel):
    order_id: str
    charged: int
    labels: list[str]
    cheapest: str


def charge(run: WorkflowRun) -> Receipt:
    """A child run of a plain handler: pretend to charge the card."""
    return Receipt(charged=run.payload_as(dict)["amount"])


def ship(run: WorkflowRun) -> Label:
    """One child per parcel."""
    parcel = run.payload_as(Parcel)
    time.sleep(0.1)
    return Label(parcel_id=parcel.id, tracking=f"TRK-{parcel.id.upper()}")


def quote_dhl(order: Order) -> int:
    time.sleep(0.3)
    return 900 + 10 * len(order.parcels)


def quote_ups(order: Order) -> int:
    time.sleep(0.3)
    return 850 + 20 * len(order.parcels)


def order_workflow(ctx: WorkflowContext, order: Order) -> Summary:
    receipt = ctx.run_child(
        "charge/v1", "example.charge.v1", {"amount": order.amount}, Receipt, timeout=timedelta(hours=1)
    )
    ctx.set_event("stage", "charged")
    ids = [ctx.start_child(f"ship/{i}", "example.ship.v1", p) for i, p in enumerate(order.parcels)]
    labels = ctx.wait_children("ship/all", ids, Label)  # results in order; parked until all are done
    dhl, ups = ctx.gather("quotes/v1", [(quote_dhl, order), (quote_ups, order)])  # both at once
    ctx.set_event("stage", "shipped")
    return Summary(
        order_id=order.order_id,
        charged=receipt.charged,
        labels=[label.tracking for label in labels],
        cheapest="dhl" if dhl <= ups else "ups",
    )


def main() -> None:
    with Workflow(URL) as wf:
        wf.auto_migrate()
        (
            wf.handle_workflow("example.order.v1", order_workflow)
            .handle_func("example.charge.v1", charge)
            .handle_func("example.ship.v1", ship)
            .with_poll_interval(timedelta(seconds=5))  # wake-ups come from the children, not from polling
        )
        worker = threading.Thread(target=wf.start, daemon=True)
        worker.start()
        try:
            parcels = [Parcel(id=f"p{i}", weight_g=500 * i) for i in range(1, 4)]
            run_id = wf.submit("example.order.v1", Order(order_id="o-1", amount=4200, parcels=parcels)).execute()
            print(f"submitted run {run_id}")
            print(f"stage while it runs: {wf.get_event(run_id, 'stage', timeout=timedelta(seconds=30))}")
            started = time.monotonic()
            info = wf.wait(run_id, timeout=timedelta(seconds=30))
            print(f"run {info.status} in {time.monotonic() - started:.1f}s more")
            summary = wf.get_result(run_id, Summary)
            print(f"charged {summary.charged}, labels {', '.join(summary.labels)}, cheapest {summary.cheapest}")
            print(f"stage at the end: {wf.get_event(run_id, 'stage')}")
            children = wf.list_runs(parent_id=run_id)
            kinds = sorted(c.type for c in children)
            print(f"{len(children)} children, all {'/'.join(sorted({c.status for c in children}))}: {', '.join(kinds)}")
            for step in wf.get_steps(run_id):
                print(f"  {step.seq:>2} {step.name:<14} {step.kind:<10} {step.status}")
        finally:
            wf.stop()
            worker.join(timeout=30)


if __name__ == "__main__":
    main()
