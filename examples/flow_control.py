"""Flow control: limits in the database that every worker obeys.

    python examples/flow_control.py

A concurrency limit, a rate limit, a concurrency key, a debounce and a pause, all set
on the database, so every worker process on every machine obeys the same numbers.
Uses ``SIMPLEFLOW_DATABASE_URL`` (default: a SQLite file in the temp directory).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from datetime import timedelta

from simpleflow import Workflow, WorkflowRun

URL = os.environ.get("SIMPLEFLOW_DATABASE_URL") or f"sqlite:///{tempfile.gettempdir()}/simpleflow-flow-example.db"

running = 0
peak = 0
lock = threading.Lock()
order: list[int] = []


def charge(run: WorkflowRun) -> None:
    """A call to a partner API that allows two requests at a time."""
    global running, peak
    with lock:
        running += 1
        peak = max(peak, running)
    time.sleep(0.05)
    with lock:
        running -= 1


def sync_customer(run: WorkflowRun) -> None:
    order.append(run.payload_as(dict)["step"])


def reindex(run: WorkflowRun) -> None:
    print(f"reindex ran once with {run.payload_as(dict)}")


def main() -> None:
    with Workflow(URL) as wf:
        wf.auto_migrate()
        for pattern in [x.pattern for x in wf.list_limits()]:  # a fresh start when run twice
            wf.clear_limit(pattern)
        wf.handle_func("partner.charge.v1", charge)
        wf.handle_func("sync.customer.v1", sync_customer)
        wf.handle_func("search.reindex.v1", reindex)
        wf.with_concurrency(8).with_poll_interval(timedelta(milliseconds=200))

        wf.set_limit("partner.%", concurrency=2, rate=(20, timedelta(seconds=1)), pause_after_failures=5)
        for i in range(12):
            wf.submit("partner.charge.v1", {"i": i}).execute()
        for step in range(4):
            wf.submit("sync.customer.v1", {"step": step}).with_concurrency_key("customer:42").execute()
        ids = {
            wf.submit("search.reindex.v1", {"n": n})
            .with_debounce("reindex:shop-7", timedelta(milliseconds=300))
            .execute()
            for n in range(50)
        }
        print(f"50 debounced submissions -> {len(ids)} run")

        wf.pause("sync.%")
        print(f"paused: {wf.stats().paused}")
        wf.run_until_idle(timeout=timedelta(seconds=30))
        print(f"while paused, customer syncs ran: {order}")
        wf.resume("sync.%")
        time.sleep(0.3)  # the debounced run is due 300 ms after the last submission
        wf.run_until_idle(timeout=timedelta(seconds=30))

        print(f"partner charges: at most {peak} at once (limit 2)")
        print(f"customer:42 syncs ran one at a time, in order: {order}")
        for limit in wf.list_limits():
            print(
                f"limit {limit.pattern}: concurrency {limit.concurrency}, rate {limit.rate_count}/"
                f"{limit.rate_period.total_seconds() if limit.rate_period else '-'}s, "
                f"breaker after {limit.pause_after_failures} failures, paused={limit.paused}"
            )


if __name__ == "__main__":
    main()
