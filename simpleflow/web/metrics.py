"""``GET /metrics``: the database's view of the queue in Prometheus' text format.

Read from the database at scrape time (``Client.stats``), so one scrape target
describes the whole deployment whatever workers run; the workers' own counters
stay with ``PrometheusMetrics``.
"""

from __future__ import annotations

from simpleflow.client import Client


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(client: Client) -> str:
    """Queue depth by type and status, oldest due age, runs finished in the last hour, workers."""
    stats = client.stats()
    lines: list[str] = []

    def metric(name: str, kind: str, help: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP simpleflow_{name} {help}")
        lines.append(f"# TYPE simpleflow_{name} {kind}")
        for labels, value in samples:
            shown = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"simpleflow_{name}{{{shown}}} {value:g}" if shown else f"simpleflow_{name} {value:g}")

    metric(
        "queue_depth",
        "gauge",
        "Unfinished runs by type and status.",
        [({"type": q.type, "status": q.status}, q.count) for q in stats.queue],
    )
    metric(
        "oldest_due_age_seconds",
        "gauge",
        "How long the longest-waiting due run has waited (0 when none is due).",
        [({}, stats.oldest_due_age_seconds or 0.0)],
    )
    metric(
        "runs_finished_last_hour",
        "gauge",
        "Runs that reached a final status in the last hour.",
        [
            ({"status": s}, n)
            for s, n in (
                ("succeeded", stats.succeeded_last_hour),
                ("failed", stats.failed_last_hour),
                ("cancelled", stats.cancelled_last_hour),
            )
        ],
    )
    metric(
        "workers",
        "gauge",
        "Registered workers by whether their heartbeat is recent.",
        [({"state": "live"}, len(stats.workers)), ({"state": "stale"}, stats.stale_workers)],
    )
    return "\n".join(lines) + "\n"
