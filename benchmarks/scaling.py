"""Scaling figures on PostgreSQL: ``python -m benchmarks.scaling FIGURE …``.

``burn_procs``: the burn-down (``--n`` runs) drained by ``--n2`` Poller processes,
each configured as the one-process burn-down (50 threads); all start on one
signal; runs/s = N / (last finish − first start).

``load-simpleflow`` / ``load-pgqueuer`` / ``load-procrastinate``: continuous load
of 1 ms jobs (``time.sleep(0.001)`` on a worker thread, ``asyncio.sleep(0.001)``
for the async peers) arriving at ``--n`` jobs/s for ``--n2`` jobs. A producer
process submits every 5 ms the jobs due by then (one batch call); each job carries
its submit time. Latency = the handler's return − the start of its submit call
(time.time(), one machine). Consumers run with their defaults (simpleflow: 8
threads; PgQueuer: batch 10; Procrastinate: concurrency 8 — asked for, its default is 1).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import NOOP_TYPE, emit, libpq, median, percentile, simpleflow_url, skip, workload_args

TICK = 0.005
LOAD_TYPE = "bench.load.v1"
THREADS = 50  # as the one-process burn-down (benchmarks.sf.BURN_DOWN_THREADS)


# -- burn-down in N processes ---------------------------------------------------------------


def burn_procs(args: Any) -> None:
    from benchmarks.sf import fill

    rates = []
    for rep in range(args.reps):
        url = simpleflow_url(args, f"procs{rep}")
        fill(url, args.n)
        go = Path(args.workdir, f"go-{rep}")
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.scaling",
                    "drain-child",
                    "--db",
                    args.db,
                    "--url",
                    url,
                    "--workdir",
                    str(go),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.n2)
        ]
        for child in children:  # each has opened its pool and registered its handler
            assert child.stdout is not None
            if child.stdout.readline().strip() != "READY":
                raise SystemExit("a drain process did not start")
        go.touch()
        results = []
        for child in children:
            out, _ = child.communicate(timeout=600)
            results.append([float(x) for x in out.split()[-3:]])
        processed = sum(int(r[0]) for r in results)
        if processed != args.n:
            raise SystemExit(f"{args.n2} processes drained {processed}, expected {args.n}")
        rates.append(args.n / (max(r[2] for r in results) - min(r[1] for r in results)))
    emit(values=rates, unit="runs/s", n=args.n, processes=args.n2, threads_each=THREADS, median=median(rates))


def drain_child(args: Any) -> None:
    from simpleflow import Poller

    go = Path(args.workdir)
    with Poller(args.url).with_concurrency(THREADS) as poller:
        poller.handle_func(NOOP_TYPE, lambda run: None)
        print("READY", flush=True)
        while not go.exists():
            time.sleep(0.001)
        t0 = time.time()
        processed = poller.run_until_idle(timeout=timedelta(seconds=600))
        t1 = time.time()
    print(f"{processed} {t0} {t1}", flush=True)


# -- continuous load ----------------------------------------------------------------------------


def producer(args: Any) -> None:
    """Submit ``n2`` jobs at ``n``/s in 5 ms ticks, through the tool named by BENCH_LOAD_TOOL."""
    tool = os.environ["BENCH_LOAD_TOOL"]
    submit, close = _submitter(tool, args.url)
    rate, total = args.n, args.n2
    sent = 0
    t0 = time.time()
    while sent < total:
        due = min(total, int((time.time() - t0) * rate) + 1)
        if due > sent:
            now = time.time()
            submit([{"i": i, "t": now} for i in range(sent, due)])
            sent = due
        time.sleep(max(0.0, t0 + sent / rate - time.time(), 0.0005) if sent < total else 0)
    close()


def _submitter(tool: str, url: str) -> tuple[Any, Any]:
    if tool == "simpleflow":
        from simpleflow import Client

        client = Client(url)
        return lambda jobs: client.submit_many([(LOAD_TYPE, j) for j in jobs]), client.close
    if tool == "pgqueuer":
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        loop = asyncio.new_event_loop()
        conn = loop.run_until_complete(asyncpg.connect(url))
        q = Queries(AsyncpgDriver(conn))

        def pgq_submit(jobs: list[dict[str, Any]]) -> None:
            loop.run_until_complete(
                q.enqueue([LOAD_TYPE] * len(jobs), [json.dumps(j).encode() for j in jobs], [0] * len(jobs))
            )

        return pgq_submit, lambda: loop.run_until_complete(conn.close())
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    task = app.task(name="bench_load")(lambda i, t: None)
    app.open()
    return lambda jobs: task.batch_defer(*jobs), app.close


def _report(tool: str, args: Any, lat: list[float], elapsed: float) -> None:
    """p50/p99 of the jobs done; a consumer that could not keep up within 30 s of the last
    arrival is recorded as saturated, with the latencies of the jobs it did finish."""
    if not lat:
        raise SystemExit(f"{tool}: no job done")
    emit(
        values=[percentile(lat, 50), percentile(lat, 99)],
        unit="ms",
        n=len(lat),
        expected=args.n2,
        saturated=len(lat) < args.n2,
        rate=args.n,
        p50=percentile(lat, 50),
        p99=percentile(lat, 99),
        max=max(lat),
        elapsed=elapsed,
    )


def load_simpleflow(args: Any) -> None:
    from simpleflow import Client, Poller

    url = simpleflow_url(args, "load")
    with Client(url) as c:
        c.auto_migrate()
    lat: list[float] = []
    lock = threading.Lock()

    def handler(run: Any) -> None:
        time.sleep(0.001)
        done = time.time()
        with lock:
            lat.append((done - run.payload_value["t"]) * 1000)

    poller = Poller(url)
    poller.handle_func(LOAD_TYPE, handler)
    thread = threading.Thread(target=poller.start, daemon=True)
    thread.start()
    time.sleep(1.0)  # the listener connected, the poller idle
    t0 = time.time()
    prod = subprocess.Popen(_producer_cmd("simpleflow", url, args))
    prod.wait(timeout=600)
    while len(lat) < args.n2 and time.time() - t0 < args.n2 / args.n + 30:
        time.sleep(0.01)
    elapsed = time.time() - t0
    poller.stop()
    thread.join(30)
    poller.close()
    _report("simpleflow", args, lat, elapsed)


def load_pgqueuer(args: Any) -> None:
    from benchmarks.peer_pgqueuer import install

    url = libpq(args.url)
    install(url)

    async def consume() -> tuple[list[float], float]:
        import asyncpg
        from pgqueuer import AsyncpgDriver, PgQueuer

        conn = await asyncpg.connect(url)
        pgq = PgQueuer(AsyncpgDriver(conn))
        lat: list[float] = []

        @pgq.entrypoint(LOAD_TYPE)
        async def job(j: Any) -> None:
            await asyncio.sleep(0.001)
            lat.append((time.time() - json.loads(j.payload)["t"]) * 1000)

        runner = asyncio.create_task(pgq.run())
        await asyncio.sleep(1.0)
        t0 = time.time()
        prod = await asyncio.create_subprocess_exec(*_producer_cmd("pgqueuer", url, args))
        await prod.wait()
        while len(lat) < args.n2 and time.time() - t0 < args.n2 / args.n + 30:
            await asyncio.sleep(0.01)
        elapsed = time.time() - t0
        pgq.shutdown.set()
        await asyncio.wait_for(runner, 30)
        await conn.close()
        return lat, elapsed

    lat, elapsed = asyncio.run(consume())
    _report("pgqueuer", args, lat, elapsed)


def _producer_cmd(tool: str, url: str, args: Any) -> list[str]:
    os.environ["BENCH_LOAD_TOOL"] = tool
    cmd = [sys.executable, "-m", "benchmarks.scaling", "producer", "--db", "postgresql", "--url", url]
    return [*cmd, "--workdir", args.workdir, "--n", str(args.n), "--n2", str(args.n2)]


def load_procrastinate(args: Any) -> None:
    import procrastinate

    from benchmarks.peer_procrastinate import prepare

    url = libpq(args.url)
    prepare(url)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    lat: list[float] = []

    @app.task(name="bench_load")
    async def job(i: int, t: float) -> None:
        await asyncio.sleep(0.001)
        lat.append((time.time() - t) * 1000)

    async def consume() -> float:
        async with app.open_async():
            worker = asyncio.create_task(app.run_worker_async(concurrency=8, install_signal_handlers=False))
            await asyncio.sleep(1.0)
            t0 = time.time()
            prod = await asyncio.create_subprocess_exec(*_producer_cmd("procrastinate", url, args))
            await prod.wait()
            while len(lat) < args.n2 and time.time() - t0 < args.n2 / args.n + 30:
                await asyncio.sleep(0.01)
            elapsed = time.time() - t0
            worker.cancel()
            try:
                await asyncio.wait_for(worker, 30)
            except (asyncio.CancelledError, Exception):
                pass
            return elapsed

    elapsed = asyncio.run(consume())
    _report("procrastinate", args, lat, elapsed)


FIGURES = {
    "burn_procs": burn_procs,
    "drain-child": drain_child,
    "producer": producer,
    "load-simpleflow": load_simpleflow,
    "load-pgqueuer": load_pgqueuer,
    "load-procrastinate": load_procrastinate,
}


def main() -> None:
    args = workload_args(__doc__ or "")
    if args.db != "postgresql":
        skip("scaling figures are measured on PostgreSQL")
    for peer in ("pgqueuer", "procrastinate"):
        if args.figure == f"load-{peer}":
            try:
                __import__(peer)
            except ImportError as error:
                skip(f"{peer} not installed: {error}")
    FIGURES[args.figure](args)


if __name__ == "__main__":
    main()
