"""``GET /metrics``: the database's view of the queue in Prometheus' text format.

Read from the database at scrape time (``admin.tenant_stats``), so one scrape target
describes the whole deployment whatever workers run; the workers' own counters
stay with ``PrometheusMetrics``.

Tenants: an app over a URL (a ``Client`` bound to no tenant) counts every tenant's
runs; a tenant-bound ``Client`` its own. The per-run metrics carry a ``tenant`` label
only when the scrape sees a tenant other than ``default`` (computed per scrape, so a
single-tenant installation keeps its label sets).
"""

from __future__ import annotations

from collections import Counter

from simpleflow import admin
from simpleflow.client import Client
from simpleflow.db.schema import DEFAULT_TENANT

Samples = list[tuple[dict[str, str], float]]

FINISHED = ("succeeded", "failed", "cancelled")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(client: Client) -> str:
    """Queue depth by type and status, oldest due age, runs finished in the last hour, workers
    (the first three by tenant too once there is more than the default tenant)."""
    store = client.store.for_tenant(None) if client.db.tenant is None else client.store
    stats = admin.tenant_stats(store)
    tenants = stats.tenants
    by_tenant = any(t != DEFAULT_TENANT for t in tenants)
    lines: list[str] = []

    def metric(name: str, kind: str, help: str, samples: Samples) -> None:
        lines.append(f"# HELP simpleflow_{name} {help}")
        lines.append(f"# TYPE simpleflow_{name} {kind}")
        for labels, value in samples:
            shown = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"simpleflow_{name}{{{shown}}} {value:g}" if shown else f"simpleflow_{name} {value:g}")

    queue: Counter[tuple[str, str, str]] = Counter()
    finished: Counter[tuple[str, str]] = Counter()
    for q in stats.queue:
        queue[(q.tenant if by_tenant else "", q.type, q.status)] += q.count
    for f in stats.finished_last_hour:
        finished[(f.tenant if by_tenant else "", f.status)] += f.count
    ages = stats.oldest_due_age_seconds

    def tenant(t: str) -> dict[str, str]:
        return {"tenant": t} if by_tenant else {}

    metric(
        "queue_depth",
        "gauge",
        "Unfinished runs by type and status.",
        [({**tenant(tn), "type": t, "status": s}, n) for (tn, t, s), n in sorted(queue.items())],
    )
    metric(
        "oldest_due_age_seconds",
        "gauge",
        "How long the longest-waiting due run has waited (0 when none is due).",
        [({"tenant": t}, ages.get(t, 0.0)) for t in tenants] if by_tenant else [({}, max(ages.values(), default=0.0))],
    )
    metric(
        "runs_finished_last_hour",
        "gauge",
        "Runs that reached a final status in the last hour.",
        [({**tenant(t), "status": s}, finished[(t, s)]) for t in (tenants if by_tenant else [""]) for s in FINISHED],
    )
    metric(
        "workers",
        "gauge",
        "Registered workers by whether their heartbeat is recent.",
        [({"state": "live"}, stats.live_workers), ({"state": "stale"}, stats.stale_workers)],
    )
    return "\n".join(lines) + "\n"
