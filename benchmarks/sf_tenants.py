"""Multi-tenant burn-down for the bench table: ``python -m benchmarks.sf_tenants burn_down_tenants …``.

The burn-down of ``sf.burn_down`` (50 threads, no-op handler) with the fair claim: the
backlog of one tenant; the same backlog shared by 100 tenants whose submissions
interleave as they arrive (run ``i`` of tenant ``i % 100``); and shared by 100 tenants
that each submit their runs in bulk (``submit_many`` of each tenant's share of every
1,000), so a fair claim's runs lie in different pages. Repetitions interleaved so
machine noise hits all alike. Reports ``median`` (100 tenants, interleaved),
``median_one`` (1 tenant) and ``median_bulk``.
"""

from __future__ import annotations

import argparse
import os

from benchmarks.common import emit, median, simpleflow_url, workload_args
from benchmarks.sf import drain
from benchmarks.tenants import fill
from simpleflow import Client
from simpleflow.db.database import Database

TENANTS = 100


def burn_down_tenants(args: argparse.Namespace) -> None:
    variants = {"one": (1, False), "many": (TENANTS, True), "bulk": (TENANTS, False)}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(args.reps):
        for name, (tenants, interleaved) in variants.items():
            url = simpleflow_url(args, f"ten_{name}_{rep}")
            with Client(url) as client:
                client.auto_migrate()
            fill(url, args.n, tenants, interleaved=interleaved)
            rates[name].append(drain(url, args.n))
            discard(url)
    one, many, bulk = (median(rates[name]) for name in variants)
    emit(
        values=rates["many"],
        values_one=rates["one"],
        values_bulk=rates["bulk"],
        unit="runs/s",
        n=args.n,
        tenants=TENANTS,
        median=many,
        median_one=one,
        median_bulk=bulk,
        ratio=many / one,
        ratio_bulk=bulk / one,
    )


def discard(url: str) -> None:
    """Drop a finished repetition's data, so autovacuum of its 20,000 updated rows does not
    compete with the next repetition on a 2-core machine."""
    db = Database.open(url)
    with db.engine.begin() as conn:
        if db.schema is not None:
            conn.exec_driver_sql(f'DROP SCHEMA "{db.schema}" CASCADE')
    db.close()
    if db.schema is None and db.engine.url.database:
        os.remove(db.engine.url.database)


def main() -> None:
    args = workload_args(__doc__ or "")
    {"burn_down_tenants": burn_down_tenants}[args.figure](args)


if __name__ == "__main__":
    main()
