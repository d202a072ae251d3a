"""simpleflow in one file: submit a few runs, work them off with a Poller, print what happened.

    python examples/quickstart.py

Uses an embedded SQLite file in the system temp directory (deleted first, so every
run starts fresh), or the database in SIMPLEFLOW_DATABASE_URL if that is set.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from simpleflow import Client, Poller, RetryPolicy, WorkflowRun


class Invoice(BaseModel):
    customer: str
    amounts: list[int]


def database_url() -> str:
    url = os.environ.get("SIMPLEFLOW_DATABASE_URL")
    if url:
        return url
    path = Path(tempfile.gettempdir()) / "simpleflow-quickstart.db"
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    return f"sqlite:///{path}"


def hello(run: WorkflowRun) -> dict[str, str]:
    name = json.loads(run.payload)["name"]
    return {"greeting": f"hello, {name}"}


def invoice(run: WorkflowRun) -> dict[str, int]:
    params = run.payload_as(Invoice)  # validated by pydantic; a bad payload fails the attempt
    return {"total": sum(params.amounts)}


def charge(run: WorkflowRun) -> dict[str, str]:
    if run.attempt == 1:
        raise ConnectionError("payment gateway timed out")  # fails once, succeeds on the retry
    return {"charged": json.loads(run.payload)["order"]}


def broken(run: WorkflowRun) -> None:
    raise ValueError("this handler always fails")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  log: %(levelname)s %(name)s: %(message)s")
    url = database_url()
    print(f"database: {url}")

    with Client(url) as client:
        client.auto_migrate()
        ids = [
            client.submit("demo.hello.v1", {"name": "ana"}).execute(),
            client.submit("billing.invoice.v1", Invoice(customer="acme", amounts=[1200, 350]))
            .with_priority(10)
            .execute(),
            client.submit("billing.charge.v1", {"order": "o_42"}).execute(),
            client.submit("demo.broken.v1", {}).with_max_attempts(2).execute(),
        ]

        # Retry at once instead of the production default (1 min, x4, +-10 %, capped at 1 h).
        now = RetryPolicy(initial_delay=timedelta(0), jitter=0.0)
        with Poller(url) as poller:
            poller.handle_func("demo.hello.v1", hello)
            poller.handle_func("billing.invoice.v1", invoice)
            poller.handle_func("billing.charge.v1", charge)
            poller.handle_func("demo.broken.v1", broken)
            poller.with_retry_policy(now).with_lease_duration(timedelta(seconds=10))
            processed = poller.run_until_idle(timeout=timedelta(seconds=30))
        print(f"processed {processed} attempts\n")

        print(f"{'run':<10} {'type':<20} {'status':<10} {'attempts':<9} result")
        for run_id in ids:
            run = client.get_run(run_id)
            if run.status == "succeeded":
                shown = json.dumps(run.result)
            else:  # the traceback's last line: "ValueError: ..."
                shown = (run.last_error or "").strip().splitlines()[-1]
            # UUIDv7 ids start with a timestamp, so the random tail tells runs apart.
            print(f"…{run.id[-8:]:<9} {run.type:<20} {run.status:<10} {f'{run.attempt}/{run.max_attempts}':<9} {shown}")


if __name__ == "__main__":
    main()
