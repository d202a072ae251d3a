"""Procrastinate on the same PostgreSQL: ``python -m benchmarks.peer_procrastinate FIGURE …``.

Its own schema (``schema_manager.apply_schema()``), a no-op async task taking
``i``, deferred with its sync API (``defer`` / ``batch_defer``), drained by
``app.run_worker(wait=False, concurrency=8)`` (the worker exits once the queue
is empty; 8 matches the Poller's 8 threads).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import emit, libpq, median, skip, workload_args

BATCH = 1000
CONCURRENCY = 8


def make_app(url: str) -> tuple[Any, Any]:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    done = [0]

    @app.task(name="bench_noop")
    async def noop(i: int) -> None:
        done[0] += 1

    noop.done = done  # type: ignore[attr-defined]
    return app, noop


def prepare(url: str) -> None:
    import psycopg

    app, _ = make_app(url)
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0]  # type: ignore[index]
    if exists is None:
        with app.open():
            app.schema_manager.apply_schema()


def defer_many(task: Any, start: int, n: int) -> None:
    for i in range(start, start + n, BATCH):
        task.batch_defer(*({"i": j} for j in range(i, min(start + n, i + BATCH))))


def burn_down(args: Any, url: str) -> None:
    rates = []
    for rep in range(args.reps):
        app, noop = make_app(url)
        with app.open():
            defer_many(noop, rep * args.n, args.n)
        t0 = time.perf_counter()
        app.run_worker(wait=False, concurrency=CONCURRENCY, install_signal_handlers=False)
        elapsed = time.perf_counter() - t0
        if noop.done[0] != args.n:
            raise SystemExit(f"Procrastinate processed {noop.done[0]}, expected {args.n}")
        rates.append(args.n / elapsed)
    emit(values=rates, unit="runs/s", n=args.n, concurrency=CONCURRENCY, median=median(rates))


def _clear(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM procrastinate_jobs")


def submit_single(args: Any, url: str) -> None:
    rates = []
    for _ in range(args.reps):
        app, noop = make_app(url)
        with app.open():
            noop.defer(i=-1)
            t0 = time.perf_counter()
            for i in range(args.n):
                noop.defer(i=i)
            rates.append(args.n / (time.perf_counter() - t0))
        _clear(url)
    emit(values=rates, unit="runs/s", n=args.n, median=median(rates))


def submit_many(args: Any, url: str) -> None:
    rates = []
    for _ in range(args.reps):
        app, noop = make_app(url)
        with app.open():
            t0 = time.perf_counter()
            defer_many(noop, 0, args.n)
            rates.append(args.n / (time.perf_counter() - t0))
        _clear(url)
    emit(values=rates, unit="runs/s", n=args.n, batch=BATCH, median=median(rates))


FIGURES = {"burn_down": burn_down, "submit_single": submit_single, "submit_many": submit_many}


def main() -> None:
    args = workload_args(__doc__ or "")
    if args.db != "postgresql":
        skip("Procrastinate supports PostgreSQL only")
    if args.figure not in FIGURES:
        skip(f"not measured for Procrastinate: {args.figure}")
    try:
        import procrastinate  # noqa: F401
    except ImportError as error:
        skip(f"Procrastinate not installed: {error}")
    url = libpq(args.url)
    prepare(url)
    FIGURES[args.figure](args, url)


if __name__ == "__main__":
    main()
