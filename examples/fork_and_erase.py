"""Re-run a failed workflow from a step after a fix, then erase its data (GDPR).

    python examples/fork_and_erase.py

The database comes from ``SIMPLEFLOW_DATABASE_URL`` (default: a SQLite file in the
system temp directory). An order workflow charges a card, then its shipment step
fails for good (a bug). After the "fix", ``client.fork(run_id, from_step="ship/v1")``
starts a new run that reuses the recorded charge, so the card is charged once in
all. Finally ``client.delete_data`` scrubs the customer's data from both runs.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import timedelta

from simpleflow import NonRetryable, Workflow, WorkflowContext

URL = os.environ.get("SIMPLEFLOW_DATABASE_URL") or f"sqlite:///{tempfile.gettempdir()}/simpleflow_fork_example.db"

charged: list[int] = []
carrier_fixed = False


def charge_card(amount: int) -> str:
    charged.append(amount)
    return f"tx-{len(charged)}"


def ship(address: str) -> str:
    if not carrier_fixed:
        raise NonRetryable("carrier API rejected the address format")  # the bug, fixed below
    return f"label for {address}"


def order(ctx: WorkflowContext, data: dict[str, str | int]) -> dict[str, str]:
    tx = ctx.step("charge/v1", charge_card, data["amount"])
    label = ctx.step("ship/v1", ship, data["address"])
    return {"transaction": tx, "label": label}


def main() -> None:
    global carrier_fixed
    with Workflow(URL) as app:
        app.auto_migrate()
        app.handle_workflow("example.order.v1", order).with_poll_interval(timedelta(milliseconds=50))
        run_id = (
            app.submit("example.order.v1", {"amount": 42, "address": "1 Rue de la Paix, Paris"})
            .with_max_attempts(1)
            .execute()
        )
        app.run_until_idle(timeout=timedelta(seconds=30))
        print(f"run {run_id}: {app.get_run(run_id).status}, card charged {len(charged)} time(s)")

        carrier_fixed = True  # deploy the fix, then re-run from the failed step
        fork_id = app.fork(run_id, from_step="ship/v1")
        app.run_until_idle(timeout=timedelta(seconds=30))
        print(f"fork {fork_id}: {app.get_run(fork_id).status}, card charged {len(charged)} time(s) in all")
        print(f"fork result: {json.dumps(app.get_result(fork_id, dict), sort_keys=True)}")

        erased = app.delete_data(fork_id) + app.delete_data(run_id)
        print(f"erased {len(erased)} run(s); fork payload now {app.get_run(fork_id).payload}")
        print("events of the fork:", ", ".join(e.event_type for e in app.get_events(fork_id)))


if __name__ == "__main__":
    main()
