"""The batched floor: simpleflow's own claim and completion statements, from a bare driver.

``python -m benchmarks.floor_batched burn_down --driver psycopg|asyncpg …`` (PostgreSQL).

The statements are the ones ``LeaseStore.claim`` and ``LeaseStore.apply`` execute
(taken from the store's statement cache after one call, compiled for the driver's
dialect with the schema in place), so the SQL, the audit events in the same
statement and the fencing are exactly simpleflow's. A loop on ONE autocommit
connection claims ``CLAIM`` due runs (the Poller's 50 threads), then writes their
``complete`` transitions in one ``apply`` statement, until nothing is due: the
ceiling of simpleflow's design with no library, no threads and no Python handler
around it. With asyncpg: the same SQL (``$n`` parameters), to show what the driver costs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.common import NOOP_TYPE, emit, libpq, median, simpleflow_url, skip, workload_args

CLAIM = 50  # the burn-down Poller's threads (benchmarks.sf.BURN_DOWN_THREADS)
BATCH = 1000
LEASE = 30.0
WORKER = "floor-batched"


class Statements:
    """The claim and apply statements of simpleflow's store, compiled for one driver."""

    def __init__(self, url: str, schema: str, driver: str) -> None:
        from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
        from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

        from simpleflow.core.states import Lease, complete
        from simpleflow.db.database import Database
        from simpleflow.store import Store

        db = Database.open(url)
        try:
            store = Store(db)
            self.route = store.leases.route_filter([NOOP_TYPE], [])
            with db.engine.connect() as conn:  # fill the statement cache, change nothing
                trans = conn.begin()
                store.leases.claim(conn, WORKER, self.route, 1, LEASE)
                store.leases.apply(conn, WORKER, [(Lease("00000000-0000-4000-8000-000000000000", 1), complete(None))])
                trans.rollback()
            built = store.leases.statements._built
            claim = next(v for k, v in built.items() if isinstance(k, tuple) and k[0] == "claim")
            apply = built["apply"]
            self.bind_batch = store.leases.dialect.bind_batch
            self.event = complete(None).event
        finally:
            db.close()
        dialect = pg_asyncpg.dialect() if driver == "asyncpg" else pg_psycopg.dialect()
        translate = {None: schema}
        self.claim = self._expand(claim.compile(dialect=dialect, schema_translate_map=translate), self.claim_params())
        compiled = apply.compile(dialect=dialect, schema_translate_map=translate)
        self.apply_sql, self._apply_base, _ = self._expand(compiled, self.apply_params([]))
        state = compiled.construct_expanded_state(self.apply_params([]))
        self._apply_order = list(state.positiontup or ())
        self._apply_processors = state.processors

    @staticmethod
    def _expand(compiled: Any, params: dict[str, Any]) -> Any:
        """What SQLAlchemy sends for these parameters: the IN list expanded, the schema in place."""
        state = compiled.construct_expanded_state(params)
        text = compiled.preparer._render_schema_translates(state.statement, compiled.schema_translate_map)
        values = {k: (state.processors[k](v) if k in state.processors else v) for k, v in state.parameters.items()}
        return text, values, [values[n] for n in (state.positiontup or ())]

    def claim_params(self) -> dict[str, Any]:
        return {"n": CLAIM, "w": WORKER, "lease": LEASE}

    def apply_params(self, claimed: list[tuple[Any, int]]) -> dict[str, Any]:
        from simpleflow.store.leases import _OUTCOMES

        rows = [(str(i), t, "succeeded", "null", None, None, 0, 0, None, self.event, None) for i, t in claimed]
        return {**self.bind_batch("o", _OUTCOMES, rows), "w": WORKER}

    def apply_args(self, claimed: list[tuple[Any, int]]) -> tuple[dict[str, Any], list[Any]]:
        """apply's parameters as SQLAlchemy binds them: by name (psycopg) and by position (asyncpg)."""
        p = self._apply_processors
        batch = {k: (p[k](v) if k in p else v) for k, v in self.apply_params(claimed).items()}
        values = self._apply_base | batch
        return values, [values[n] for n in self._apply_order]


def fill(url: str, n: int) -> None:
    from simpleflow import Client

    with Client(url) as client:
        client.auto_migrate()
        for i in range(0, n, BATCH):
            client.submit_many([(NOOP_TYPE, {"i": j}) for j in range(i, min(n, i + BATCH))])


def drain_psycopg(st: Statements, dsn: str, schema: str) -> int:
    import psycopg

    done = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        cur = conn.cursor()
        claim_sql, claim_params, _ = st.claim
        while True:
            rows = cur.execute(claim_sql, claim_params).fetchall()
            if not rows:
                return done
            claimed = [(r[0], int(r[5])) for r in rows]  # id, …, lease_token
            written = cur.execute(st.apply_sql, st.apply_args(claimed)[0]).fetchall()
            done += len(written)


async def drain_asyncpg(st: Statements, dsn: str, schema: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        done = 0
        claim_sql, _, claim_args = st.claim
        while True:
            rows = await conn.fetch(claim_sql, *claim_args)
            if not rows:
                return done
            claimed = [(r[0], int(r[5])) for r in rows]
            written = await conn.fetch(st.apply_sql, *st.apply_args(claimed)[1])
            done += len(written)
    finally:
        await conn.close()


def burn_down(args: Any) -> None:
    import os

    driver = os.environ.get("BENCH_FLOOR_DRIVER", "psycopg")
    if driver == "asyncpg":
        try:
            import asyncpg  # noqa: F401
        except ImportError as error:
            skip(f"asyncpg not installed: {error}")
    rates = []
    for rep in range(args.reps):
        tag = f"fbatch{rep}"
        url = simpleflow_url(args, tag)
        fill(url, args.n)
        st = Statements(url, tag, driver)
        dsn = libpq(args.url)
        t0 = time.perf_counter()
        done = asyncio.run(drain_asyncpg(st, dsn, tag)) if driver == "asyncpg" else drain_psycopg(st, dsn, tag)
        rates.append(done / (time.perf_counter() - t0))
        if done != args.n:
            raise SystemExit(f"batched floor drained {done}, expected {args.n}")
    emit(values=rates, unit="runs/s", n=args.n, batch=CLAIM, driver=driver, median=median(rates))


def main() -> None:
    args = workload_args(__doc__ or "")
    if args.db != "postgresql":
        skip("the batched floor is measured on PostgreSQL (SQLite's claim holds the write lock: the floor is floor.py)")
    if args.figure != "burn_down":
        skip(f"no batched floor for {args.figure}")
    burn_down(args)


if __name__ == "__main__":
    main()
