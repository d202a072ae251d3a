"""What every workload process shares: how it reports, reads its RSS and names its databases."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

RESULT_PREFIX = "BENCH-RESULT "
NOOP_TYPE = "bench.noop.v1"


def emit(**fields: Any) -> None:
    """The one line the orchestrator reads from a workload's stdout."""
    print(RESULT_PREFIX + json.dumps(fields, default=str), flush=True)


def skip(reason: str) -> None:
    emit(skipped=reason)
    sys.exit(0)


def rss_mb() -> float:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def workload_args(description: str) -> argparse.Namespace:
    """Arguments every workload module takes: ``FIGURE --db --url --n --reps --workdir``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("figure")
    p.add_argument("--db", choices=["sqlite", "postgresql"], required=True)
    p.add_argument("--url", help="PostgreSQL database URL (postgresql://…); unused for SQLite")
    p.add_argument("--workdir", required=True, help="a directory of this workload's own (SQLite files, logs)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--n2", type=int, default=0, help="a second size (memory: the later checkpoint; big table: rows)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    return p.parse_args()


def simpleflow_url(args: argparse.Namespace, tag: str) -> str:
    """A fresh simpleflow database for one repetition: a new SQLite file or PostgreSQL schema."""
    if args.db == "sqlite":
        return f"sqlite:///{os.path.join(args.workdir, tag + '.db')}"
    return f"{args.url}?schema={tag}"


def libpq(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url.split("?", 1)[0]
