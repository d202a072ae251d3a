"""Multi-tenancy figures: ``python -m benchmarks.tenants URL [--n N]``.

- burn-down of one backlog with the plain claim, the fair claim with 1 tenant, and the
  fair claim with the backlog spread over 100 tenants (50 threads, no-op handler);
- fairness: tenant A holds 10,000 due runs and every thread is busy with them
  (handlers of 20 ms); tenant B submits one run. How long until it starts, and how
  many claim cycles (runs of A started) in between; A's throughput with the fair
  claim against the plain one.

Prints one line per figure. Use a URL of an empty database (a fresh ``?schema=`` on
PostgreSQL, a new file on SQLite): the script migrates and fills it.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from simpleflow import Client, Poller
from simpleflow.db.database import Database
from simpleflow.db.schema import workflow_event, workflow_run

NOOP = "bench.noop.v1"
SLOW = "bench.slow.v1"


def reset(url: str) -> None:
    db = Database.open(url)
    with db.engine.begin() as conn:
        conn.execute(sa.delete(workflow_event), execution_options=db.exec_options)
        conn.execute(sa.delete(workflow_run), execution_options=db.exec_options)
    db.close()


def fill(url: str, n: int, tenants: int, type_: str = NOOP, *, interleaved: bool = False) -> None:
    """``n`` due runs of ``type_``, run ``i`` in tenant ``i % tenants``. ``interleaved``: in
    that order, as many tenants' submissions arrive (1,000 per transaction); otherwise each
    tenant's share of every 1,000 runs is submitted together (``submit_many``), so a tenant's
    runs lie in clusters and a fair claim's runs in different pages."""
    db = Database.open(url)  # one pool for every tenant's client (100 pools would exhaust max_connections)
    clients = [Client(url, tenant=f"t{i:03d}", _db=db) for i in range(tenants)]
    for start in range(0, n, 1000):
        batch = range(start, min(n, start + 1000))
        if interleaved:
            with db.engine.begin() as conn:
                for i in batch:
                    clients[i % tenants].submit(type_, {"i": i}).execute(connection=conn)
            continue
        by_tenant: dict[int, list[tuple[str, Any]]] = {}
        for i in batch:
            by_tenant.setdefault(i % tenants, []).append((type_, {"i": i}))
        for t, items in by_tenant.items():
            clients[t].submit_many(items)
    db.close()
    settle(url)


def settle(url: str) -> None:
    """Start every burn-down from the same physical state, however the backlog was written
    (100 tenants' submissions are 100 times as many transactions as one tenant's): SQLite's
    write-ahead log checkpointed and emptied. (No ANALYZE on PostgreSQL: with fresh
    statistics of a deep backlog the fair claim's estimated cost passes ``jit_above_cost``
    and every claim pays a JIT compilation; see the README.)"""
    db = Database.open(url)
    if db.engine.dialect.name == "sqlite":
        raw = db.engine.raw_connection()  # outside a transaction (the engine's begins BEGIN IMMEDIATE)
        raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
        raw.close()
    db.close()


def burn(url: str, n: int, tenants: int, fair: bool) -> float:
    reset(url)
    fill(url, n, tenants)
    with Poller(url).with_concurrency(50) as poller:
        poller.fair = fair
        poller.handle_func(NOOP, lambda run: None)
        t0 = time.perf_counter()
        done = poller.run_until_idle(timeout=timedelta(seconds=600))
        rate = n / (time.perf_counter() - t0)
    assert done == n, (done, n)
    return rate


def fairness(url: str, fair: bool, backlog: int = 10_000, threads: int = 8) -> dict[str, float]:
    """A's backlog keeps every thread busy; B submits one run once the poller is saturated."""
    reset(url)
    fill(url, backlog, 1, SLOW)  # tenant t000
    started: list[tuple[float, str]] = []
    lock = threading.Lock()

    def slow(run: Any) -> None:
        with lock:
            started.append((time.perf_counter(), run.tenant))
        time.sleep(0.02)

    poller = Poller(url).with_concurrency(threads).handle_func(SLOW, slow)
    poller.fair = fair
    claims: list[tuple[float, list[str]]] = []  # (when the claim statement started, tenants it leased)
    claim = poller.store.leases.claim

    def recorded(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        got = claim(*args, **kwargs)
        claims.append((began, [r.tenant for r in got]))
        return got

    poller.store.leases.claim = recorded  # type: ignore[method-assign]
    thread = threading.Thread(target=poller.start, daemon=True)
    thread.start()
    while len(started) < 200:  # saturated, steady state
        time.sleep(0.01)
    with Client(url, tenant="b") as b:
        t_submit = time.perf_counter()
        b.submit(SLOW, {}).execute()
        t_committed = time.perf_counter()  # every claim started from now on sees B's run
    give_up = t_submit + 5.0  # the plain claim serves B after A's whole backlog (~25 s)
    while not any(t == "b" for _, t in started) and time.perf_counter() < give_up:
        time.sleep(0.001)
    t_window = time.perf_counter()
    time.sleep(2.0)
    poller.stop(timeout=5)
    thread.join(10)
    with lock:
        b_start = next((s for s, t in started if t == "b"), float("inf"))
        a_rate = sum(1 for s, t in started if t == "t000" and t_window <= s < t_window + 2.0) / 2.0
    # Claims that started once B's run was committed (so saw it), before the one that took
    # it (which may have started a moment before execute() returned: then 0).
    taking_b = next((i for i, (_, tenants) in enumerate(claims) if "b" in tenants), None)
    missed = [] if taking_b is None else [t for began, t in claims[:taking_b] if began >= t_committed]
    cycles = float("inf") if taking_b is None else float(len(missed))
    a_runs = float("inf") if taking_b is None else float(sum(len(t) for t in missed))
    return {
        "b_latency_ms": (b_start - t_submit) * 1000,
        "claims_before_b": cycles,  # claims started after B's run was committed, before the one that took it
        "a_runs_leased_in_them": a_runs,
        "a_runs_per_s": a_rate,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", choices=("burn_down", "fairness"), default=None)
    args = p.parse_args()
    with Client(args.url) as c:
        c.auto_migrate()
    if args.only != "fairness":
        variants = {
            "plain claim, 1 tenant": (1, False),
            "fair claim, 1 tenant": (1, True),
            "fair claim, 100 tenants": (100, True),
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.reps):  # interleaved, so machine noise hits every variant alike
            for name, (tenants, fair) in variants.items():
                rates[name].append(burn(args.url, args.n, tenants, fair))
        for name, values in rates.items():
            shown = [round(v) for v in values]
            print(f"burn-down {args.n} runs, {name}: median {statistics.median(values):,.0f} runs/s {shown}")
    if args.only != "burn_down":
        results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(args.reps):
            for fair in (False, True):
                results[fair].append(fairness(args.url, fair))
        for fair, runs in results.items():
            summary = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"fairness, {'fair' if fair else 'plain'} claim: median {summary}; runs {runs}")


if __name__ == "__main__":
    main()
