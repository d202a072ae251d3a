"""DBOS Transact on the same database (PostgreSQL or SQLite): ``python -m benchmarks.peer_dbos FIGURE …``.

``burn_down``: queued workflows/s — N no-op workflows enqueued on a ``Queue``
(worker_concurrency 8, queue polling 10 ms instead of its 1 s default)
after ``DBOS.launch()``, timed from the first enqueue to the last result.
``steps``: one workflow of N sequential no-op ``@DBOS.step()`` calls; steps/s.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.common import emit, libpq, median, skip, workload_args

CONCURRENCY = 8
POLL = 0.01


def launch(args: Any) -> tuple[Any, Any, Any, Any]:
    from dbos import DBOS

    sqlite_url = f"sqlite:///{os.path.join(args.workdir, 'dbos.sqlite')}"
    url = libpq(args.url) if args.db == "postgresql" else sqlite_url
    DBOS(config={"name": "bench", "system_database_url": url, "log_level": "WARNING"})

    @DBOS.workflow()
    def noop_workflow(i: int) -> None:
        return None

    @DBOS.step()
    def noop_step() -> None:
        return None

    @DBOS.workflow()
    def steps_workflow(n: int) -> int:
        for _ in range(n):
            noop_step()
        return n

    DBOS.launch()
    queue = DBOS.register_queue("bench", worker_concurrency=CONCURRENCY, polling_interval_sec=POLL)
    return DBOS, queue, noop_workflow, steps_workflow


def burn_down(args: Any) -> None:
    dbos, queue, noop_workflow, _ = launch(args)
    rates = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        handles = [queue.enqueue(noop_workflow, i) for i in range(args.n)]
        for h in handles:
            h.get_result()
        rates.append(args.n / (time.perf_counter() - t0))
    dbos.destroy()
    emit(
        values=rates,
        unit="workflows/s",
        n=args.n,
        concurrency=CONCURRENCY,
        polling_interval_sec=POLL,
        median=median(rates),
        note="enqueue and execution overlap (timed from first enqueue to last result)",
    )


def steps(args: Any) -> None:
    dbos, _, _, steps_workflow = launch(args)
    rates = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        assert steps_workflow(args.n) == args.n
        rates.append(args.n / (time.perf_counter() - t0))
    dbos.destroy()
    emit(values=rates, unit="steps/s", n=args.n, median=median(rates))


FIGURES = {"burn_down": burn_down, "steps": steps}


def main() -> None:
    args = workload_args(__doc__ or "")
    if args.figure not in FIGURES:
        skip(f"not measured for DBOS: {args.figure}")
    try:
        import dbos  # noqa: F401
    except ImportError as error:
        skip(f"DBOS not installed: {error}")
    FIGURES[args.figure](args)


if __name__ == "__main__":
    main()
