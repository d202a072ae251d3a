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


def fill(url: str, n: int, tenants: int, type_: str = NOOP) -> None:
    clients = [Client(url, tenant=f"t{i:03d}") for i in range(tenants)]
    for start in range(0, n, 1000):
        batch = range(start, min(n, start + 1000))
        by_tenant: dict[int, list[tuple[str, Any]]] = {}
        for i in batch:
            by_tenant.setdefault(i % tenants, []).append((type_, {"i": i}))
        for t, items in by_tenant.items():
            clients[t].submit_many(items)
    for c in clients:
        c.close()


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
    thread = threading.Thread(target=poller.start, daemon=True)
    thread.start()
    while len(started) < 200:  # saturated, steady state
        time.sleep(0.01)
    with Client(url, tenant="b") as b:
        t_submit = time.perf_counter()
        b.submit(SLOW, {}).execute()
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
    cycles = leased_in_between(url)
    return {"b_latency_ms": (b_start - t_submit) * 1000, "a_runs_leased_while_b_waited": cycles, "a_runs_per_s": a_rate}


def leased_in_between(url: str) -> float:
    """How many of A's runs were leased after B's run was created and before it was leased
    (from the audit events: ids grow in insert order); inf if B was never leased."""
    db = Database.open(url)
    ev = workflow_event.c
    with db.engine.connect() as conn:
        o = db.exec_options
        b_events = dict(
            conn.execute(
                sa.select(ev.event_type, sa.func.min(ev.id)).where(ev.tenant == "b").group_by(ev.event_type),
                execution_options=o,
            ).all()
        )
        if "leased" not in b_events:
            return float("inf")
        between = conn.execute(
            sa.select(sa.func.count()).where(
                ev.tenant == "t000",
                ev.event_type == "leased",
                ev.id > b_events["created"],
                ev.id < b_events["leased"],
            ),
            execution_options=o,
        ).scalar_one()
    db.close()
    return float(between)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    with Client(args.url) as c:
        c.auto_migrate()
    rates: dict[str, list[float]] = {
        "plain claim, 1 tenant": [],
        "fair claim, 1 tenant": [],
        "fair claim, 100 tenants": [],
    }
    for _ in range(args.reps):  # interleaved, so machine noise hits every variant alike
        rates["plain claim, 1 tenant"].append(burn(args.url, args.n, 1, False))
        rates["fair claim, 1 tenant"].append(burn(args.url, args.n, 1, True))
        rates["fair claim, 100 tenants"].append(burn(args.url, args.n, 100, True))
    for name, values in rates.items():
        print(
            f"burn-down {args.n} runs, {name}: median {statistics.median(values):,.0f} runs/s {[round(v) for v in values]}"
        )
    for fair in (False, True):
        results = [fairness(args.url, fair) for _ in range(args.reps)]
        summary = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"fairness, {'fair' if fair else 'plain'} claim: {summary} (runs: {results})")


if __name__ == "__main__":
    main()
