"""Two tenants in one database: each client sees only its own runs; one poller serves both,
fairly; a per-tenant limit gives each tenant its own slots.

    python examples/tenants.py

Uses ``SIMPLEFLOW_DATABASE_URL`` (default: a SQLite file in the temp directory).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

from simpleflow import Client, NotFound, Poller, WorkflowRun

URL = os.environ.get("SIMPLEFLOW_DATABASE_URL") or f"sqlite:///{tempfile.gettempdir()}/simpleflow-tenants-example.db"


def report(run: WorkflowRun) -> dict[str, str]:
    return {"for": run.tenant}


def main() -> None:
    with Client(URL, tenant="acme") as acme, Client(URL, tenant="globex") as globex:
        acme.auto_migrate()
        backlog = acme.submit_many([acme.submit("example.report.v1", {"i": i}) for i in range(20)])
        mine = globex.submit("example.report.v1").with_idempotency("june").execute()
        again = acme.submit("example.report.v1").with_idempotency("june").execute()
        print(f"the same idempotency key in two tenants: two runs ({mine != again})")
        try:
            acme.get_run(mine)
        except NotFound:
            print("acme cannot see globex's run: NotFound")

        order: list[str] = []
        poller = (
            Poller(URL)
            .with_concurrency(1)
            .handle_func("example.report.v1", lambda run: order.append(run.tenant) or report(run))
        )
        poller.run_until_idle()
        poller.close()
        print(f"globex's run started as run {order.index('globex') + 1} of {len(order)}, not after acme's backlog")
        print(f"acme sees {len(acme.list_runs(limit=100))} runs, globex sees {len(globex.list_runs())}")
        print(f"result of globex's run: {globex.get_run(mine).result}")
        assert len(backlog) == 20
        per_tenant_limit(acme, globex)


def per_tenant_limit(acme: Client, globex: Client) -> None:
    """At most 2 exports at once for each tenant: the two tenants' exports run side by side."""
    acme.set_limit("example.export.%", concurrency=2, per_tenant=True)
    lock, running, peak = threading.Lock(), {"acme": 0, "globex": 0}, {"acme": 0, "globex": 0}

    def export(run: WorkflowRun) -> None:
        with lock:
            running[run.tenant] += 1
            peak[run.tenant] = max(peak[run.tenant], running[run.tenant])
        time.sleep(0.1)
        with lock:
            running[run.tenant] -= 1

    for client in (acme, globex):
        client.submit_many([client.submit("example.export.v1", {"i": i}) for i in range(6)])
    poller = Poller(URL).with_concurrency(8).handle_func("example.export.v1", export)
    poller.run_until_idle()
    poller.close()
    (limit,) = acme.list_limits()
    print(
        f"per-tenant limit of {limit.concurrency}: at most {peak['acme']} acme and {peak['globex']} globex exports at once"
    )
    acme.clear_limit("example.export.%")


if __name__ == "__main__":
    main()
