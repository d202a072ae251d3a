"""The database floor: bare psycopg / sqlite3 loops of the statements simpleflow issues.

Same tables (created by simpleflow's migration), same rows, same transaction
boundaries, no library in between: what the database and driver allow from one
client. ``python -m benchmarks.floor FIGURE …``.

| figure        | one transaction =                                                              |
|---------------|--------------------------------------------------------------------------------|
| submit_single | INSERT run … ON CONFLICT DO NOTHING RETURNING id; INSERT event; (PG) pg_notify |
| submit_many   | the same with 1,000 rows per statement                                         |
| burn_down     | claim: UPDATE … WHERE id IN (SELECT … LIMIT 8 FOR UPDATE SKIP LOCKED) RETURNING |
|               | + 8 events; then one transaction completing those 8 (fenced UPDATE RETURNING,  |
|               | 8 events): the shape of the Poller's batch claim + group commit               |
| steps         | INSERT one workflow_step row                                                    |
| pickup (PG)   | INSERT + pg_notify committed on one connection, received by a LISTEN connection |
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from typing import Any

from benchmarks.common import NOOP_TYPE, emit, libpq, median, percentile, simpleflow_url, skip, workload_args

BATCH = 1000
CLAIM = 8
PG_NOW = "statement_timestamp()"
SQ_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


class Bare:
    """One bare connection on simpleflow's tables, with the dialect's spelling of each statement."""

    def __init__(self, args: Any, tag: str) -> None:
        import simpleflow

        url = simpleflow_url(args, tag)
        simpleflow.migrate(url)
        self.pg = args.db == "postgresql"
        if self.pg:
            import psycopg

            self.conn: Any = psycopg.connect(libpq(args.url), autocommit=True)
            self.conn.execute(f'SET search_path TO "{tag}"')
            self.p = "%s"
            self.now = PG_NOW
            self.channel = f"simpleflow_{tag}"
        else:
            self.conn = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.p = "?"
            self.now = SQ_NOW

    def begin(self) -> None:
        self.conn.execute("BEGIN" if self.pg else "BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def q(self, sql: str) -> str:
        return sql.replace("?", self.p).replace("NOW()", self.now)

    def insert_runs(self, ids: list[str], first: int) -> None:
        values = ", ".join(["(?, ?, ?, 'pending', 100, NOW(), 0, 3, NOW(), NOW())"] * len(ids))
        params: list[Any] = []
        for k, run_id in enumerate(ids):
            params += [run_id, NOOP_TYPE, json.dumps({"i": first + k})]
        sql = self.q(
            "INSERT INTO workflow_run (id, type, payload, status, priority, run_at, attempt, max_attempts,"
            f" created_at, updated_at) VALUES {values} ON CONFLICT DO NOTHING RETURNING id"
        )
        inserted = [r[0] for r in self.conn.execute(sql, params).fetchall()]
        ev = ", ".join(["(?, 'created', 0, NOW())"] * len(inserted))
        self.conn.execute(
            self.q(f"INSERT INTO workflow_event (run_id, event_type, attempt, created_at) VALUES {ev}"),
            [str(i) for i in inserted],
        )
        if self.pg:
            self.conn.execute("SELECT pg_notify(%s, '')", (self.channel,))

    def claim(self, worker: str) -> list[tuple[Any, int]]:
        lock = " FOR UPDATE SKIP LOCKED" if self.pg else ""
        rows = self.conn.execute(
            self.q(
                "UPDATE workflow_run SET status = 'leased', leased_by = ?, lease_until = NOW(), attempt = attempt + 1,"
                " updated_at = NOW() WHERE id IN (SELECT id FROM workflow_run WHERE status IN ('pending', 'sleeping',"
                f" 'waiting') AND run_at <= NOW() AND type IN (?) ORDER BY priority, run_at LIMIT {CLAIM}{lock})"
                " RETURNING id, type, payload, attempt, max_attempts, priority, run_at"
            ),
            (worker, NOOP_TYPE),
        ).fetchall()
        if rows:
            ev = ", ".join(["(?, 'leased', ?, ?, NOW())"] * len(rows))
            params: list[Any] = []
            for r in rows:
                params += [str(r[0]), worker, r[3]]
            self.conn.execute(
                self.q(f"INSERT INTO workflow_event (run_id, event_type, worker_id, attempt, created_at) VALUES {ev}"),
                params,
            )
        return [(r[0], r[3]) for r in rows]

    def complete(self, worker: str, run_id: Any, attempt: int) -> None:
        row = self.conn.execute(
            self.q(
                "UPDATE workflow_run SET status = 'succeeded', result = NULL, lease_until = NULL, last_error = NULL,"
                " updated_at = NOW() WHERE id = ? AND status = 'leased' AND leased_by = ? AND attempt = ? RETURNING id"
            ),
            (run_id, worker, attempt),
        ).fetchone()
        assert row is not None
        self.conn.execute(
            self.q(
                "INSERT INTO workflow_event (run_id, event_type, worker_id, attempt, created_at)"
                " VALUES (?, 'succeeded', ?, ?, NOW())"
            ),
            (str(run_id), worker, attempt),
        )


def submit_single(args: Any) -> None:
    rates = []
    for rep in range(args.reps):
        b = Bare(args, f"fsingle{rep}")
        t0 = time.perf_counter()
        for i in range(args.n):
            b.begin()
            b.insert_runs([str(uuid.uuid4())], i)
            b.commit()
        rates.append(args.n / (time.perf_counter() - t0))
    emit(values=rates, unit="runs/s", n=args.n, median=median(rates))


def submit_many(args: Any) -> None:
    rates = []
    for rep in range(args.reps):
        b = Bare(args, f"fmany{rep}")
        t0 = time.perf_counter()
        for i in range(0, args.n, BATCH):
            b.begin()
            b.insert_runs([str(uuid.uuid4()) for _ in range(min(BATCH, args.n - i))], i)
            b.commit()
        rates.append(args.n / (time.perf_counter() - t0))
    emit(values=rates, unit="runs/s", n=args.n, batch=BATCH, median=median(rates))


def burn_down(args: Any) -> None:
    rates = []
    for rep in range(args.reps):
        b = Bare(args, f"fburn{rep}")
        for i in range(0, args.n, BATCH):
            b.begin()
            b.insert_runs([str(uuid.uuid4()) for _ in range(min(BATCH, args.n - i))], i)
            b.commit()
        done = 0
        t0 = time.perf_counter()
        while True:
            b.begin()
            claimed = b.claim("floor")
            b.commit()
            if not claimed:
                break
            b.begin()
            for run_id, attempt in claimed:
                b.complete("floor", run_id, attempt)
                done += 1
            b.commit()
        rates.append(done / (time.perf_counter() - t0))
        if done != args.n:
            raise SystemExit(f"floor drained {done}, expected {args.n}")
    emit(values=rates, unit="runs/s", n=args.n, median=median(rates))


def steps(args: Any) -> None:
    rates = []
    for rep in range(args.reps):
        b = Bare(args, f"fsteps{rep}")
        run_id = str(uuid.uuid4())
        b.begin()
        b.insert_runs([run_id], 0)
        b.commit()
        sql = b.q(
            "INSERT INTO workflow_step (run_id, name, seq, kind, status, attempts, result, created_at, updated_at)"
            " VALUES (?, ?, ?, 'step', 'completed', 1, 'null', NOW(), NOW())"
        )
        t0 = time.perf_counter()
        for i in range(args.n):
            b.begin()
            b.conn.execute(sql, (run_id, f"s{i}/v1", i))
            b.commit()
        rates.append(args.n / (time.perf_counter() - t0))
    emit(values=rates, unit="steps/s", n=args.n, median=median(rates))


def pickup(args: Any) -> None:
    if args.db != "postgresql":
        skip("no database notification on SQLite (simpleflow wakes in-process); no floor")
    import psycopg

    b = Bare(args, "fpickup")
    listener = psycopg.connect(libpq(args.url), autocommit=True)
    listener.execute(f'LISTEN "{b.channel}"')
    received: list[float] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            for _ in listener.notifies(timeout=0.2):
                received.append(time.time())

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.2)
    sent: list[float] = []
    for i in range(args.n * args.reps):
        b.begin()
        b.insert_runs([str(uuid.uuid4())], i)
        b.commit()
        sent.append(time.time())
        time.sleep(0.02)
    time.sleep(0.5)
    stop.set()
    thread.join()
    lat = [max(0.0, r - s) * 1000 for s, r in zip(sent, received, strict=False)]
    emit(values=lat, unit="ms", n=len(lat), p50=percentile(lat, 50), p99=percentile(lat, 99))


FIGURES = {
    "submit_single": submit_single,
    "submit_many": submit_many,
    "burn_down": burn_down,
    "steps": steps,
    "pickup": pickup,
}


def main() -> None:
    args = workload_args(__doc__ or "")
    if args.figure not in FIGURES:
        skip(f"no floor for {args.figure}")
    FIGURES[args.figure](args)


if __name__ == "__main__":
    main()
