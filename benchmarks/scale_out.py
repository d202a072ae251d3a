"""What bounds one PostgreSQL: simpleflow at a large table size. ``python -m benchmarks.scale_out ROWS``.

On a throwaway cluster (tests/pg_cluster.py, or ``SIMPLEFLOW_BENCH_POSTGRES_URL``):
``ROWS`` finished (succeeded) runs with their three audit events each (created,
leased, succeeded: what a run leaves behind), inserted by bare ``INSERT … SELECT``,
then ``ANALYZE``. Measured: the same burn-down on an empty table first, the claim's plan (``EXPLAIN (ANALYZE, BUFFERS)`` of
simpleflow's own claim statement), a burn-down of 20,000 new runs (one Poller, 50
threads), the dead tuples it leaves, and the prune rate (``simpleflow.prune``, batches
of 1,000, for 20 s) with the table sizes before and after. Prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import NOOP_TYPE

BURN = 20_000
PRUNE_SECONDS = 20.0


def preload(conn: Any, rows: int) -> float:
    t0 = time.perf_counter()
    conn.execute(
        "INSERT INTO workflow_run (id, type, payload, status, priority, run_at, attempt, max_attempts, result,"
        " leased_by, lease_token, created_at, updated_at)"
        " SELECT gen_random_uuid(), %s, jsonb_build_object('i', g), 'succeeded', 100, now() - interval '2 days',"
        " 1, 3, 'null'::jsonb, 'w', 1, now() - interval '2 days', now() - interval '2 days'"
        " FROM generate_series(1, %s) AS g",
        (NOOP_TYPE, rows),
    )
    conn.execute(
        "INSERT INTO workflow_event (run_id, event_type, worker_id, attempt, created_at)"
        " SELECT r.id, e.t, CASE WHEN e.t = 'created' THEN NULL ELSE 'w' END, e.a, r.created_at"
        " FROM workflow_run r CROSS JOIN (VALUES ('created', 0), ('leased', 1), ('succeeded', 1)) AS e(t, a)"
    )
    conn.execute("VACUUM ANALYZE workflow_run")
    conn.execute("VACUUM ANALYZE workflow_event")
    return time.perf_counter() - t0


def sizes(conn: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table in ("workflow_run", "workflow_event"):
        row = conn.execute(
            "SELECT pg_total_relation_size(c.oid), s.n_live_tup, s.n_dead_tup FROM pg_class c"
            " JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.relname = %s AND s.schemaname = 'workflow'",
            (table,),
        ).fetchone()
        out[table] = {"mb": round(row[0] / 2**20), "live": row[1], "dead": row[2]}
    return out


def claim_plan(url: str) -> str:
    from sqlalchemy import event

    from simpleflow.db.database import Database
    from simpleflow.store import Store

    db = Database.open(url)
    captured: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "FOR UPDATE SKIP LOCKED" in statement and "MATERIALIZED" in statement and not captured:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            captured.append("\n".join(r[0] for r in cursor.fetchall()))

    try:
        store = Store(db)
        event.listen(db.engine, "before_cursor_execute", before)
        with db.engine.connect() as conn:
            trans = conn.begin()
            store.leases.claim(conn, "explain", store.leases.route_filter([NOOP_TYPE], []), 50, 30.0)
            trans.rollback()
        return captured[0] if captured else "not captured"
    finally:
        db.close()


def main() -> None:
    import psycopg

    from benchmarks.sf import drain, fill
    from simpleflow import Client
    from simpleflow.admin import prune_database

    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with contextlib.ExitStack() as stack:
        from benchmarks.bench import postgres

        admin, source = stack.enter_context(postgres(Path(tempfile.mkdtemp(prefix="sf-scale-"))))
        url = admin + "?schema=workflow"
        with Client(url) as c:
            c.auto_migrate()
        conn = stack.enter_context(psycopg.connect(admin, autocommit=True))
        conn.execute("SET search_path TO workflow")
        report: dict[str, Any] = {"rows": rows, "server": source}
        empty = admin + "?schema=empty"  # the same burn-down on an empty table, same cluster, same run
        fill(empty, BURN)
        report["burn_down_empty_table"] = round(drain(empty, BURN))
        report["preload_seconds"] = round(preload(conn, rows), 1)
        report["sizes_loaded"] = sizes(conn)
        fill(url, BURN, start=0)
        report["claim_plan"] = claim_plan(url)  # with 20,000 runs due
        report["burn_down"] = round(drain(url, BURN))
        conn.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(1)
        report["sizes_after_burn"] = sizes(conn)
        stop = threading.Event()
        timer = threading.Timer(PRUNE_SECONDS, stop.set)
        with Client(url) as c:
            t0 = time.perf_counter()
            timer.start()
            pruned = prune_database(c.db, 3600, batch_size=1000, stop=stop)
            elapsed = time.perf_counter() - t0
        timer.cancel()
        report["prune"] = {"runs": pruned, "seconds": round(elapsed, 1), "runs_per_s": round(pruned / elapsed)}
        conn.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(1)
        report["sizes_after_prune"] = sizes(conn)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
