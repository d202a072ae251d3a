"""PgQueuer on the same PostgreSQL: ``python -m benchmarks.peer_pgqueuer FIGURE …``.

Schema from its own CLI (``pgq install``), a no-op async entrypoint, payload
``{"i": n}`` as JSON bytes, ``batch_size=50`` as in the issue's reference, drain mode.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import NOOP_TYPE, emit, libpq, median, skip, workload_args

BATCH = 1000
ENTRY = NOOP_TYPE


def install(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('pgqueuer')").fetchone()[0] is not None:  # type: ignore[index]
            return
    pgq = shutil.which("pgq") or shutil.which("pgqueuer")
    cmd = [pgq] if pgq else [sys.executable, "-m", "pgqueuer"]
    subprocess.run([*cmd, "--pg-dsn", url, "install"], check=True, capture_output=True, text=True, timeout=120)


async def connect(url: str) -> Any:
    """asyncpg when installed (PgQueuer's recommended, faster driver), else psycopg;
    ``BENCH_PGQ_DRIVER=psycopg`` forces psycopg (simpleflow's driver)."""
    try:
        if os.environ.get("BENCH_PGQ_DRIVER") == "psycopg":
            raise ImportError("psycopg forced")
        import asyncpg
        from pgqueuer import AsyncpgDriver

        conn = await asyncpg.connect(url)
        return conn, AsyncpgDriver(conn)
    except ImportError:
        import psycopg
        from pgqueuer import PsycopgDriver

        pconn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        return pconn, PsycopgDriver(pconn)


def driver_name() -> str:
    if os.environ.get("BENCH_PGQ_DRIVER") == "psycopg":
        return "psycopg"
    try:
        import asyncpg  # noqa: F401

        return "asyncpg"
    except ImportError:
        return "psycopg"


async def enqueue_many(queries: Any, start: int, n: int) -> None:
    for i in range(start, start + n, BATCH):
        k = min(BATCH, start + n - i)
        await queries.enqueue([ENTRY] * k, [json.dumps({"i": j}).encode() for j in range(i, i + k)], [0] * k)


async def burn_down(args: Any) -> None:
    from pgqueuer import PgQueuer, Queries
    from pgqueuer.types import QueueExecutionMode

    url = libpq(args.url)
    rates = []
    for rep in range(args.reps):
        conn, driver = await connect(url)
        await enqueue_many(Queries(driver), rep * args.n, args.n)
        done = [0]
        pgq = PgQueuer(driver)

        @pgq.entrypoint(ENTRY)
        async def noop(job: Any) -> None:
            done[0] += 1  # noqa: B023  (used only within this repetition)

        t0 = time.perf_counter()
        await pgq.run(batch_size=50, mode=QueueExecutionMode.drain)
        elapsed = time.perf_counter() - t0
        await conn.close()
        if done[0] != args.n:
            raise SystemExit(f"PgQueuer processed {done[0]}, expected {args.n}")
        rates.append(args.n / elapsed)
    emit(values=rates, unit="runs/s", n=args.n, batch_size=50, driver=driver_name(), median=median(rates))


async def submit_single(args: Any) -> None:
    from pgqueuer import Queries

    rates = []
    for _ in range(args.reps):
        conn, driver = await connect(libpq(args.url))
        q = Queries(driver)
        t0 = time.perf_counter()
        for i in range(args.n):
            await q.enqueue(ENTRY, json.dumps({"i": i}).encode())
        rates.append(args.n / (time.perf_counter() - t0))
        await conn.execute("DELETE FROM pgqueuer")
        await conn.close()
    emit(values=rates, unit="runs/s", n=args.n, median=median(rates))


async def submit_many(args: Any) -> None:
    from pgqueuer import Queries

    rates = []
    for _ in range(args.reps):
        conn, driver = await connect(libpq(args.url))
        t0 = time.perf_counter()
        await enqueue_many(Queries(driver), 0, args.n)
        rates.append(args.n / (time.perf_counter() - t0))
        await conn.execute("DELETE FROM pgqueuer")
        await conn.close()
    emit(values=rates, unit="runs/s", n=args.n, batch=BATCH, median=median(rates))


FIGURES = {"burn_down": burn_down, "submit_single": submit_single, "submit_many": submit_many}


def main() -> None:
    args = workload_args(__doc__ or "")
    if args.db != "postgresql":
        skip("PgQueuer supports PostgreSQL only")
    if args.figure not in FIGURES:
        skip(f"not measured for PgQueuer: {args.figure}")
    try:
        import pgqueuer  # noqa: F401
    except ImportError as error:
        skip(f"PgQueuer not installed: {error}")
    install(libpq(args.url))
    asyncio.run(FIGURES[args.figure](args))


if __name__ == "__main__":
    main()
