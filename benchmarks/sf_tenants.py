"""Multi-tenant burn-down for the bench table: ``python -m benchmarks.sf_tenants burn_down_tenants …``.

The burn-down of ``sf.burn_down`` (50 threads, no-op handler) with the fair claim, once
with the backlog of one tenant and once with the same backlog spread over 100 tenants
(submitted the way ``benchmarks.tenants`` does), repetitions interleaved so machine noise
hits both alike. Reports the 100-tenant median as ``median`` and the 1-tenant one as
``median_one``.
"""

from __future__ import annotations

import argparse

from benchmarks.common import emit, median, simpleflow_url, workload_args
from benchmarks.sf import drain
from benchmarks.tenants import fill
from simpleflow import Client

TENANTS = 100


def burn_down_tenants(args: argparse.Namespace) -> None:
    rates: dict[int, list[float]] = {1: [], TENANTS: []}
    for rep in range(args.reps):
        for tenants in rates:
            url = simpleflow_url(args, f"ten{tenants}_{rep}")
            with Client(url) as client:
                client.auto_migrate()
            fill(url, args.n, tenants)
            rates[tenants].append(drain(url, args.n))
    one, many = median(rates[1]), median(rates[TENANTS])
    emit(
        values=rates[TENANTS],
        values_one=rates[1],
        unit="runs/s",
        n=args.n,
        tenants=TENANTS,
        median=many,
        median_one=one,
        ratio=many / one,
    )


def main() -> None:
    args = workload_args(__doc__ or "")
    {"burn_down_tenants": burn_down_tenants}[args.figure](args)


if __name__ == "__main__":
    main()
