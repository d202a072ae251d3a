"""simpleflow workloads, one figure per invocation: ``python -m benchmarks.sf FIGURE …``.

Every job is the same shape for every tool: payload ``{"i": <int>}``, a handler
that does nothing and returns nothing. The Poller runs with its defaults
(8 worker threads, 30 s lease, LISTEN/NOTIFY on PostgreSQL).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Any

from benchmarks.common import (
    NOOP_TYPE,
    emit,
    libpq,
    median,
    percentile,
    rss_mb,
    simpleflow_url,
    skip,
    workload_args,
)
from simpleflow import Client, Poller

BATCH = 1000


def fill(url: str, n: int, start: int = 0) -> None:
    """Submit ``n`` no-op runs with submit_many in batches of 1,000 (migrating first)."""
    with Client(url) as client:
        client.auto_migrate()
        for i in range(start, start + n, BATCH):
            client.submit_many([(NOOP_TYPE, {"i": j}) for j in range(i, min(start + n, i + BATCH))])


def noop(run: Any) -> None:
    return None


def drain(url: str, expected: int) -> float:
    """One Poller drains everything due; returns runs/s (checks the count it processed)."""
    # 50 threads: as many runs in flight as PgQueuer's batch of 50 in the same run.
    with Poller(url).with_concurrency(BURN_DOWN_THREADS) as poller:
        poller.handle_func(NOOP_TYPE, noop)
        t0 = time.perf_counter()
        processed = poller.run_until_idle(timeout=timedelta(seconds=900))
        elapsed = time.perf_counter() - t0
    if processed != expected:
        raise SystemExit(f"drained {processed} runs, expected {expected}")
    return expected / elapsed


BURN_DOWN_THREADS = 50


def burn_down(args: Any) -> None:
    rates = []
    for rep in range(args.reps):
        url = simpleflow_url(args, f"burn{rep}")
        fill(url, args.n)
        rates.append(drain(url, args.n))
    emit(values=rates, unit="runs/s", n=args.n, median=median(rates))


#: limits on types the burn-down does not use: they exist, but no claim of NOOP_TYPE obeys them
OTHER_LIMITS = 5


def _with_limits(url: str, n: int, *, limited: bool) -> float:
    """Fill, set flow-control limits (on other types; with ``limited``, concurrency 50 on the
    burn-down type too), then drain with the usual Poller."""
    fill(url, n)
    with Client(url) as client:
        for i in range(OTHER_LIMITS):
            client.set_limit(f"bench.other{i}.%", concurrency=10, rate=(100, timedelta(seconds=1)))
        if limited:
            client.set_limit(NOOP_TYPE, concurrency=BURN_DOWN_THREADS)
    return drain(url, n)


def burn_down_limited(args: Any) -> None:
    """Burn-down of a type under a concurrency limit of 50 (the Poller's thread count)."""
    rates = [_with_limits(simpleflow_url(args, f"lim{rep}"), args.n, limited=True) for rep in range(args.reps)]
    emit(values=rates, unit="runs/s", n=args.n, median=median(rates))


def burn_down_other_limits(args: Any) -> None:
    """Burn-down of a type no limit governs while limits on other types exist."""
    rates = [_with_limits(simpleflow_url(args, f"olim{rep}"), args.n, limited=False) for rep in range(args.reps)]
    emit(values=rates, unit="runs/s", n=args.n, median=median(rates))


def submit_single(args: Any) -> None:
    rates = []
    for rep in range(args.reps):
        with Client(simpleflow_url(args, f"single{rep}")) as client:
            client.auto_migrate()
            client.submit(NOOP_TYPE, {"i": -1}).execute()  # warm the pool and statement cache
            t0 = time.perf_counter()
            for i in range(args.n):
                client.submit(NOOP_TYPE, {"i": i}).execute()
            rates.append(args.n / (time.perf_counter() - t0))
    emit(values=rates, unit="runs/s", n=args.n, median=median(rates))


def submit_many(args: Any) -> None:
    rates = []
    for rep in range(args.reps):
        with Client(simpleflow_url(args, f"many{rep}")) as client:
            client.auto_migrate()
            client.submit_many([(NOOP_TYPE, {"i": -1})])
            t0 = time.perf_counter()
            for i in range(0, args.n, BATCH):
                client.submit_many([(NOOP_TYPE, {"i": j}) for j in range(i, min(args.n, i + BATCH))])
            rates.append(args.n / (time.perf_counter() - t0))
    emit(values=rates, unit="runs/s", n=args.n, batch=BATCH, median=median(rates))


# -- pickup latency --------------------------------------------------------------------


def _start_poller(url: str, started: dict[str, float]) -> tuple[Poller, threading.Thread]:
    poller = Poller(url)

    def handler(run: Any) -> None:
        started[run.id] = time.time()

    poller.handle_func(NOOP_TYPE, handler)
    thread = threading.Thread(target=poller.start, daemon=True)
    thread.start()
    return poller, thread


def _wait_idle_listener(poller: Poller) -> None:
    listener = getattr(poller, "_listener", None)
    if listener is not None:
        listener.connected.wait(10)
    time.sleep(0.5)  # let the poller reach its idle wait


def pickup(args: Any) -> None:
    """Idle poller; one run submitted every 20 ms; latency = handler start − submit's return.

    SQLite: producer thread in the poller's process (in-process wake-up).
    PostgreSQL: a separate producer process (wake-up through LISTEN/NOTIFY).
    Times are time.time() on one machine, so they compare across processes.
    """
    lat: list[float] = []
    for rep in range(args.reps):
        url = simpleflow_url(args, f"pickup{rep}")
        with Client(url) as c:
            c.auto_migrate()
        started: dict[str, float] = {}
        poller, thread = _start_poller(url, started)
        _wait_idle_listener(poller)
        submitted: dict[str, float] = {}
        if args.db == "sqlite":
            with Client(url) as client:
                client.submit(NOOP_TYPE, {"i": -1}).execute()
                time.sleep(0.1)
                started.clear()
                for i in range(args.n):
                    run_id = client.submit(NOOP_TYPE, {"i": i}).execute()
                    submitted[run_id] = time.time()
                    time.sleep(0.02)
        else:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.sf",
                    "pickup-producer",
                    "--db",
                    args.db,
                    "--url",
                    url,
                    "--workdir",
                    args.workdir,
                    "--n",
                    str(args.n),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
            for line in out.splitlines():
                if line.startswith("SUBMITTED "):
                    _, run_id, at = line.split()
                    submitted[run_id] = float(at)
        deadline = time.time() + 10
        while len([r for r in submitted if r in started]) < len(submitted) and time.time() < deadline:
            time.sleep(0.05)
        poller.stop()
        thread.join(30)
        poller.close()
        lat += [max(0.0, started[r] - t) * 1000 for r, t in submitted.items() if r in started]
        missing = [r for r in submitted if r not in started]
        if missing:
            raise SystemExit(f"{len(missing)} runs were not picked up within 10 s")
    emit(
        values=lat,
        unit="ms",
        n=len(lat),
        p50=percentile(lat, 50),
        p99=percentile(lat, 99),
        max=max(lat) if lat else None,
    )


def pickup_producer(args: Any) -> None:
    with Client(args.url) as client:
        client.submit(NOOP_TYPE, {"i": -1}).execute()
        time.sleep(0.2)
        for i in range(args.n):
            run_id = client.submit(NOOP_TYPE, {"i": i}).execute()
            print(f"SUBMITTED {run_id} {time.time():.6f}", flush=True)
            time.sleep(0.02)


# -- durable steps -----------------------------------------------------------------------


def steps(args: Any) -> None:
    try:
        import simpleflow.workflow.context  # noqa: F401  (implemented by a colleague; may be missing)
    except ImportError as error:
        skip(f"simpleflow.workflow.context is not importable yet ({error}); handle_workflow/ctx.step unavailable")
    rates = []
    n = args.n

    def step_noop() -> None:
        return None

    def workflow(ctx: Any, payload: Any) -> dict[str, int]:
        for i in range(n):
            ctx.step(f"s{i}/v1", step_noop)
        return {"steps": n}

    for rep in range(args.reps):
        url = simpleflow_url(args, f"steps{rep}")
        with Client(url) as client:
            client.auto_migrate()
            run_id = client.submit("bench.steps.v1", {"n": n}).execute()
            with Poller(url) as poller:
                poller.handle_workflow("bench.steps.v1", workflow)
                t0 = time.perf_counter()
                poller.run_until_idle(timeout=timedelta(seconds=600))
                elapsed = time.perf_counter() - t0
            info = client.get_run(run_id)
            if info.status != "succeeded":
                raise SystemExit(f"workflow ended {info.status}: {info.last_error}")
        rates.append(n / elapsed)
    emit(values=rates, unit="steps/s", n=n, median=median(rates))


# -- memory --------------------------------------------------------------------------------


def memory(args: Any) -> None:
    """RSS of a Poller process after ``n`` and after ``n2`` runs processed.

    The runs are submitted by a separate process first, so this process holds only
    what the Poller keeps.
    """
    url = simpleflow_url(args, "memory")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.sf",
            "fill",
            "--db",
            args.db,
            "--url",
            args.url or "",
            "--workdir",
            args.workdir,
            "--n",
            str(args.n2),
        ],
        check=True,
        env=_fill_env(url),
    )
    gc.collect()
    count = [0]
    lock = threading.Lock()

    def handler(run: Any) -> None:
        with lock:
            count[0] += 1

    # Default settings (8 threads): the question is whether the Poller keeps anything
    # per run. (With 50 threads RSS climbs ~25 MB to a plateau as each thread's stack
    # and allocator arena warm up; that is a fixed cost, not growth per run.)
    poller = Poller(url)
    poller.handle_func(NOOP_TYPE, handler)
    baseline = rss_mb()
    thread = threading.Thread(target=poller.start, daemon=True)
    thread.start()
    samples: dict[int, float] = {}
    t0 = time.perf_counter()
    for checkpoint in (args.n, args.n2):
        while count[0] < checkpoint:
            time.sleep(0.02)
            if time.perf_counter() - t0 > 600:
                raise SystemExit(f"only {count[0]} runs processed after 600 s")
        samples[checkpoint] = rss_mb()
    elapsed = time.perf_counter() - t0
    poller.stop()
    thread.join(30)
    poller.close()
    first, last = samples[args.n], samples[args.n2]
    emit(
        values=[first, last],
        unit="MB",
        baseline_mb=baseline,
        rss_first_mb=first,
        rss_last_mb=last,
        growth_pct=(last - first) / first * 100,
        checkpoints=[args.n, args.n2],
        drain_rate=args.n2 / elapsed,
    )


def _fill_env(url: str) -> dict[str, str]:
    return {**os.environ, "BENCH_FILL_URL": url}


def fill_cmd(args: Any) -> None:
    fill(os.environ["BENCH_FILL_URL"], args.n)


# -- big table -------------------------------------------------------------------------------


def big_table(args: Any) -> None:
    """Burn-down of ``n`` runs with ``n2`` finished runs already in the table."""
    url = simpleflow_url(args, "big")
    with Client(url) as client:
        client.auto_migrate()
    t0 = time.perf_counter()
    preload(args, url, args.n2)
    preload_s = time.perf_counter() - t0
    rates = []
    for rep in range(args.reps):
        fill(url, args.n, start=rep * args.n)
        rates.append(drain(url, args.n))
    emit(
        values=rates,
        unit="runs/s",
        n=args.n,
        finished_rows=args.n2,
        preload_seconds=preload_s,
        median=median(rates),
        claim_plan=claim_plan(args, url),
    )


def preload(args: Any, url: str, rows: int) -> None:
    """``rows`` finished (succeeded) runs, inserted by one bare INSERT … SELECT."""
    if args.db == "postgresql":
        import psycopg

        schema = url.split("schema=", 1)[1]
        with psycopg.connect(libpq(args.url), autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            conn.execute(
                "INSERT INTO workflow_run (id, type, payload, status, priority, run_at, attempt, max_attempts,"
                " result, created_at, updated_at)"
                " SELECT gen_random_uuid(), %s, jsonb_build_object('i', g), 'succeeded', 100,"
                " now() - interval '1 day', 1, 3, NULL, now() - interval '1 day', now() - interval '1 day'"
                " FROM generate_series(1, %s) AS g",
                (NOOP_TYPE, rows),
            )
            conn.execute("ANALYZE workflow_run")
    else:
        import sqlite3

        conn = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < ?)"
            " INSERT INTO workflow_run (id, type, payload, status, priority, run_at, attempt, max_attempts,"
            " created_at, updated_at)"
            " SELECT printf('00000000-0000-4000-8000-%012d', x), ?, json_object('i', x), 'succeeded', 100,"
            " strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 day'), 1, 3,"
            " strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 day'), strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 day') FROM g",
            (rows, NOOP_TYPE),
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.close()


def claim_plan(args: Any, url: str) -> str:
    """The plan of simpleflow's own claim statement on the big table (must be an index scan).

    The claim runs on the lean path (simpleflow.db.lean), so its SQL is taken from the
    dialect's cache of compiled hot statements after one claim, then EXPLAINed with its
    parameters on the same connection."""
    from simpleflow.db.database import Database
    from simpleflow.store import Store

    db = Database.open(url)
    try:
        store = Store(db)
        with db.engine.connect() as conn:
            trans = conn.begin()
            store.leases.claim(conn, "explain", store.leases.route_filter([NOOP_TYPE], []), 8, 30.0)
            hot = [v for v in db.dialect._lean.values() if v is not None]
            claim = next(v for v in hot if all(w in v.sql.upper() for w in ("UPDATE", "ORDER BY", "LIMIT")))
            explain = ("EXPLAIN " if args.db == "postgresql" else "EXPLAIN QUERY PLAN ") + claim.sql
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(explain, claim.params({"n": 8, "w": "explain", "lease": 30.0}))
            plan = "\n".join(" ".join(str(c) for c in row) for row in cursor.fetchall())
            trans.rollback()
        return plan
    except Exception as error:  # the plan is informative only
        return f"not captured: {error}"
    finally:
        db.close()


FIGURES = {
    "burn_down": burn_down,
    "burn_down_limited": burn_down_limited,
    "burn_down_other_limits": burn_down_other_limits,
    "submit_single": submit_single,
    "submit_many": submit_many,
    "pickup": pickup,
    "pickup-producer": pickup_producer,
    "steps": steps,
    "memory": memory,
    "fill": fill_cmd,
    "big_table": big_table,
}


def main() -> None:
    args = workload_args(__doc__ or "")
    FIGURES[args.figure](args)


if __name__ == "__main__":
    main()
