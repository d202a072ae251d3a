"""Cron schedules: one run per slot, however many tickers race for it.

    python examples/cron.py

Uses ``SIMPLEFLOW_DATABASE_URL`` (default: a SQLite file in the temp directory).
"""

from __future__ import annotations

import json
import os
import tempfile

from simpleflow import Client, Poller, ScheduleTicker, WorkflowRun

URL = os.environ.get("SIMPLEFLOW_DATABASE_URL") or f"sqlite:///{tempfile.gettempdir()}/simpleflow-cron-example.db"


def report(run: WorkflowRun) -> dict[str, str]:
    params = json.loads(run.payload)
    print(f"handler: building the {params['kind']} report (attempt {run.attempt})")
    return {"status": "sent"}


def main() -> None:
    with Client(URL) as client:
        client.auto_migrate()
        schedule_id = (
            client.schedule("example.report.v1", {"kind": "sales"})
            .cron("* * * * *")  # every minute
            .in_timezone("Europe/London")
            .with_priority(50)
            .create()
        )
        slot = client.get_schedule(schedule_id).next_run_at
        print(f"schedule {schedule_id}: '* * * * *' in Europe/London, next slot {slot.isoformat()}")

        # In production a ticker reads the database clock, so this slot would be
        # due within the minute. To finish in seconds, these two tickers are given
        # a clock that already shows the slot. Both tick it: only one run exists.
        for name in ("A", "B"):
            with ScheduleTicker(URL, clock=lambda: slot) as ticker:
                print(f"ticker {name} created {ticker.tick()} run(s)")

        poller = Poller(URL).handle_func("example.report.v1", report)
        with poller:
            poller.run_until_idle()

        (run,) = client.list_runs(
            type="example.report.v1", idempotency_key=f"schedule:{schedule_id}:{slot.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        )
        print(f"run {run.idempotency_key}: {run.status}, result {run.result}")
        client.delete_schedule(schedule_id)  # soft delete: the run and the audit trail stay


if __name__ == "__main__":
    main()
