"""The one benchmark entry point: ``nox -s bench`` (``-- --db sqlite|postgresql --quick``).

Runs every figure of issue 8 for simpleflow, for the database floor (bare
psycopg / sqlite3 loops of the same statements, ``floor.py``) and for the peers
(PgQueuer, Procrastinate, DBOS), in the same run, on the same database server,
with the same job shape (payload ``{"i": n}``, a handler that does nothing).
Each (tool, figure, database) runs in its own subprocess with a time limit; a
peer that is not installed, unsupported or failing is recorded with its reason.
Prints one Markdown table and writes ``benchmarks/results/bench-<time>-<mode>.json``.

PostgreSQL: ``SIMPLEFLOW_BENCH_POSTGRES_URL`` (a server you run; the bench
creates and drops one database per measurement on it), else a throwaway
PostgreSQL cluster started with ``tests/pg_cluster.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.report import PEERS, markdown

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "BENCH-RESULT "
DATABASES = ("postgresql", "sqlite")


@dataclass(frozen=True)
class Sizes:
    burn: int
    burn_reps: int
    single: int
    many: int
    submit_reps: int
    pickup: int
    steps: int
    steps_reps: int
    mem_first: int
    mem_last: int
    big_rows: int
    big_n: int
    big_reps: int
    peer_slow: int  # jobs for the slow peers (Procrastinate, DBOS, PgQueuer on psycopg)
    peer_reps: int
    load_seconds: float  # continuous load: seconds of arrivals per rate
    timeout: float


FULL = Sizes(
    burn=20_000,
    burn_reps=3,
    single=2_000,
    many=20_000,
    submit_reps=3,
    pickup=250,
    steps=2_000,
    steps_reps=3,
    mem_first=10_000,
    mem_last=100_000,
    big_rows=1_000_000,
    big_n=20_000,
    big_reps=2,
    peer_slow=2_000,
    peer_reps=3,
    load_seconds=10,
    timeout=420,
)
QUICK = Sizes(
    burn=2_000,
    burn_reps=2,
    single=500,
    many=5_000,
    submit_reps=2,
    pickup=100,
    steps=500,
    steps_reps=1,
    mem_first=2_000,
    mem_last=20_000,
    big_rows=100_000,
    big_n=2_000,
    big_reps=1,
    peer_slow=200,
    peer_reps=1,
    load_seconds=3,
    timeout=120,
)


@dataclass
class Job:
    tool: str
    module: str
    figure: str
    db: str
    n: int
    reps: int
    n2: int = 0
    env: dict[str, str] = field(default_factory=dict)
    label: str = ""  # the figure's name in the results (default: figure)

    @property
    def name(self) -> str:
        return self.label or self.figure

    @property
    def server(self) -> str:
        """The database the workload talks to (the durable cluster is PostgreSQL too)."""
        return self.db.split("-", 1)[0]


TOOLS = (
    "simpleflow",
    "floor",
    "floor-batched",
    "floor-batched-asyncpg",
    "pgqueuer",
    "pgqueuer-psycopg",
    "procrastinate",
    "dbos",
)


def plan(db: str, s: Sizes) -> list[Job]:
    """Every measurement of one database, in run order (``postgresql-durable``: the PostgreSQL
    figures the issue-18 targets name, on a cluster with fsync and synchronous_commit on)."""
    batched = [
        Job("floor-batched", "floor_batched", "burn_down", db, s.burn, s.burn_reps),
        Job(
            "floor-batched-asyncpg",
            "floor_batched",
            "burn_down",
            db,
            s.burn,
            s.burn_reps,
            env={"BENCH_FLOOR_DRIVER": "asyncpg"},
        ),
    ]
    if db == "postgresql-durable":
        return [
            Job("simpleflow", "sf", "burn_down", db, s.burn, s.burn_reps),
            Job("floor", "floor", "burn_down", db, s.burn, s.burn_reps),
            *batched,
            Job("pgqueuer", "peer_pgqueuer", "burn_down", db, s.burn, s.burn_reps),
            Job("simpleflow", "sf", "submit_single", db, s.single, s.submit_reps),
            Job("floor", "floor", "submit_single", db, s.single, s.submit_reps),
            Job("pgqueuer", "peer_pgqueuer", "submit_single", db, s.single, s.submit_reps),
            Job("simpleflow", "sf", "steps", db, s.steps, s.steps_reps),
            Job("floor", "floor", "steps", db, s.steps, s.steps_reps),
            Job("dbos", "peer_dbos", "steps", db, min(s.steps, s.peer_slow), s.peer_reps),
        ]
    jobs = [
        Job("simpleflow", "sf", "burn_down", db, s.burn, s.burn_reps),
        Job("floor", "floor", "burn_down", db, s.burn, s.burn_reps),
        Job("simpleflow", "sf", "burn_down_limited", db, s.burn, s.burn_reps),
        Job("simpleflow", "sf", "burn_down_other_limits", db, s.burn, s.burn_reps),
        Job("simpleflow", "sf_tenants", "burn_down_tenants", db, s.burn, s.burn_reps),
        *(batched if db == "postgresql" else []),
        Job("simpleflow", "sf", "submit_single", db, s.single, s.submit_reps),
        Job("floor", "floor", "submit_single", db, s.single, s.submit_reps),
        Job("simpleflow", "sf", "submit_many", db, s.many, s.submit_reps),
        Job("floor", "floor", "submit_many", db, s.many, s.submit_reps),
        Job("simpleflow", "sf", "pickup", db, s.pickup, 1),
        Job("floor", "floor", "pickup", db, s.pickup, 1),
        Job("simpleflow", "sf", "steps", db, s.steps, s.steps_reps),
        Job("floor", "floor", "steps", db, s.steps, s.steps_reps),
        Job("simpleflow", "sf", "memory", db, s.mem_first, 1, n2=s.mem_last),
        Job("simpleflow", "sf", "big_table", db, s.big_n, s.big_reps, n2=s.big_rows),
    ]
    if db == "postgresql":
        jobs += [
            Job("pgqueuer", "peer_pgqueuer", "burn_down", db, s.burn, s.burn_reps),
            Job("pgqueuer", "peer_pgqueuer", "submit_single", db, s.single, s.submit_reps),
            Job("pgqueuer", "peer_pgqueuer", "submit_many", db, s.many, s.submit_reps),
            Job(
                "pgqueuer-psycopg",
                "peer_pgqueuer",
                "burn_down",
                db,
                s.peer_slow,
                s.peer_reps,
                env={"BENCH_PGQ_DRIVER": "psycopg"},
            ),
            Job("procrastinate", "peer_procrastinate", "burn_down", db, s.peer_slow, s.peer_reps),
            Job("procrastinate", "peer_procrastinate", "submit_single", db, s.single, s.submit_reps),
            Job("procrastinate", "peer_procrastinate", "submit_many", db, s.many, s.submit_reps),
        ]
        jobs += [
            Job("simpleflow", "scaling", "burn_procs", db, s.burn, s.burn_reps, n2=k, label=f"burn_procs{k}")
            for k in PROCESSES
        ]
        jobs += [
            Job(tool, "scaling", f"load-{tool}", db, rate, 1, n2=int(rate * s.load_seconds), label=f"load{rate}")
            for rate in RATES
            for tool in ("simpleflow", "pgqueuer", "procrastinate")
        ]
    else:
        jobs += [Job(t, "peer_" + t.split("-")[0], "burn_down", db, s.burn, 1) for t in PEERS if t != "dbos"]
    jobs += [
        Job("dbos", "peer_dbos", "burn_down", db, s.peer_slow, s.peer_reps),
        Job("dbos", "peer_dbos", "steps", db, min(s.steps, s.peer_slow), s.peer_reps),
    ]
    return jobs


PROCESSES = (1, 2, 4)
RATES = (250, 500, 1000)


# -- the PostgreSQL server ----------------------------------------------------------------


#: the production defaults the durable column set runs with (the throwaway cluster: fsync off)
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


@contextlib.contextmanager
def postgres(log_dir: Path, durable: bool = False) -> Iterator[tuple[str, str]]:
    """(admin URL, where it came from): the given server or a throwaway cluster (``durable``:
    ``SIMPLEFLOW_BENCH_POSTGRES_DURABLE_URL`` or a throwaway cluster with fsync and
    synchronous_commit on)."""
    given = os.environ.get("SIMPLEFLOW_BENCH_POSTGRES_DURABLE_URL" if durable else "SIMPLEFLOW_BENCH_POSTGRES_URL")
    if given:
        yield given.split("?", 1)[0].replace("postgresql+psycopg://", "postgresql://"), "given URL"
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from pg_cluster import start_postgres

    cluster = start_postgres(log_dir / ("durable" if durable else "fast"), settings=DURABLE if durable else None)
    try:
        kind = "fsync=on, synchronous_commit=on" if durable else "fsync=off"
        yield cluster.url, f"throwaway cluster from tests/pg_cluster.py ({kind}, {cluster.bin_dir})"
    finally:
        cluster.destroy()


@contextlib.contextmanager
def pg_database(admin_url: str, name: str) -> Iterator[str]:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with contextlib.suppress(Exception), psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- running one measurement ------------------------------------------------------------------


def run_job(job: Job, index: int, admin_url: str | None, work: Path, quick: bool, timeout: float) -> dict[str, Any]:
    record: dict[str, Any] = {"tool": job.tool, "figure": job.name, "db": job.db, "n": job.n, "reps": job.reps}
    if job.n2:
        record["n2"] = job.n2
    if job.server == "postgresql" and admin_url is None:
        return record | {"skipped": "no PostgreSQL server"}
    workdir = work / f"{index:02d}-{job.tool}-{job.name}-{job.db}"
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        url = ""
        if job.server == "postgresql":
            assert admin_url is not None
            url = stack.enter_context(pg_database(admin_url, f"bench_{index:02d}"))
        cmd = [
            sys.executable,
            "-m",
            f"benchmarks.{job.module}",
            job.figure,
            "--db",
            job.server,
            "--url",
            url,
            "--workdir",
            str(workdir),
            "--n",
            str(job.n),
            "--n2",
            str(job.n2),
            "--reps",
            str(job.reps),
        ]
        if quick:
            cmd.append("--quick")
        env = {**os.environ, **job.env, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            err = (error.stderr or b"").decode() if isinstance(error.stderr, bytes) else (error.stderr or "")
            return record | {"error": f"time limit of {timeout:.0f} s exceeded", "stderr_tail": _tail(err)}
        record["seconds"] = round(time.monotonic() - started, 1)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(PREFIX)]
        if proc.returncode != 0 or not lines:
            return record | {"error": f"exit {proc.returncode}", "stderr_tail": _tail(proc.stderr + proc.stdout)}
        return record | json.loads(lines[-1][len(PREFIX) :])


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- the machine -------------------------------------------------------------------------------


def machine(admin_url: str | None, pg_source: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "memory_gb": round(_meminfo_kb("MemTotal") / 1024 / 1024, 1),
        "cpu": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "versions": {},
    }
    for dist in ("simpleflow", "SQLAlchemy", "psycopg", "pydantic", "pgqueuer", "asyncpg", "procrastinate", "dbos"):
        try:
            info["versions"][dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info["versions"][dist] = "not installed"
    if admin_url:
        import psycopg

        with psycopg.connect(admin_url, autocommit=True) as conn:
            get = lambda q: conn.execute(q).fetchone()[0]  # type: ignore[index]  # noqa: E731
            info["postgresql"] = {
                "version": get("SHOW server_version"),
                "source": pg_source,
                "same_machine": True,
                "settings": {
                    k: get(f"SHOW {k}")
                    for k in ("fsync", "synchronous_commit", "shared_buffers", "full_page_writes", "wal_level")
                },
            }
    return info


def _meminfo_kb(key: str) -> int:
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


# -- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--db", choices=[*DATABASES, "both"], default="both")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and smaller N (about 10 minutes)")
    p.add_argument("--only", default="", help="comma-separated figures to run (burn_down,submit_single,…)")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("--no-durable", action="store_true", help="skip the durable PostgreSQL column set")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    dbs = list(DATABASES) if args.db == "both" else [args.db]
    if "postgresql" in dbs and not args.no_durable:
        dbs.insert(dbs.index("postgresql") + 1, "postgresql-durable")
    only = {f for f in args.only.split(",") if f}
    tools = {t for t in args.tools.split(",") if t}
    jobs = [
        j
        for db in dbs
        for j in plan(db, sizes)
        if j.tool in tools and (not only or j.figure in only or j.name in only or j.name.rstrip("0123456789") in only)
    ]
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="simpleflow-bench-"))
    results: list[dict[str, Any]] = []
    try:
        with contextlib.ExitStack() as stack:
            servers: dict[str, tuple[str, str]] = {}
            for db in dbs:
                if db.startswith("postgresql"):
                    try:
                        servers[db] = stack.enter_context(postgres(work, durable=db.endswith("durable")))
                    except Exception as error:  # recorded; the others still run
                        print(f"PostgreSQL ({db}) unavailable: {error}", file=sys.stderr)
            info = machine(*servers.get("postgresql", (None, None)))
            if "postgresql-durable" in servers:
                info["postgresql_durable"] = machine(*servers["postgresql-durable"]).get("postgresql")
            for i, job in enumerate(jobs):
                timeout = sizes.timeout * (2 if job.figure in ("memory", "big_table") else 1)
                print(
                    f"[{time.time() - started:6.1f}s] {job.tool:<21} {job.name:<14} {job.db:<18}", end=" ", flush=True
                )
                admin_url = servers.get(job.db, (None, ""))[0]
                record = run_job(job, i, admin_url, work, args.quick, timeout)
                results.append(record)
                print(_summary(record), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown(results, dbs, sizes)
    mode = "quick" if args.quick else "full"
    command = "nox -s bench -- " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "mode": mode,
        "command": command.strip(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_seconds": round(time.time() - started, 1),
        "machine": info,
        "sizes": sizes.__dict__,
        "method": {
            "job": 'payload {"i": n}; handler does nothing and returns None',
            "burn_down": "N runs submitted with submit_many (1,000 rows per insert), then one Poller "
            "(50 threads) drains them: N / drain time (not continuous)",
            "burn_down_limited": "burn-down with client.set_limit(type, concurrency=50) and 5 limits on other "
            "types, 50 threads: every claim is the limited claim (locks the limit row, counts leased runs)",
            "burn_down_other_limits": "burn-down of a type no limit governs while 5 limits on other types exist "
            "(the one-statement claim, which reads the limits table to leave governed types alone)",
            "submit_single": "submit().execute(), one transaction each, one client thread",
            "submit_many": "submit_many of 1,000 (type, payload) pairs per call",
            "pickup": "idle poller; one run every 20 ms; handler start − submit's return (time.time()); "
            "SQLite: producer thread in the poller's process; PostgreSQL: producer process",
            "memory": "VmRSS of the Poller process (runs submitted by another process first)",
            "big_table": "N runs burned down with n2 succeeded runs already in workflow_run "
            "(bare INSERT … SELECT, then ANALYZE)",
            "floor": "bare psycopg / sqlite3 loop of the same statements, one client (see floor.py)",
            "floor-batched": "simpleflow's own claim and apply statements (compiled from store/leases.py), "
            "50 per claim, one apply per claim, one autocommit connection, psycopg or asyncpg (floor_batched.py)",
            "postgresql-durable": "the PostgreSQL figures on a second throwaway cluster with fsync=on, "
            "synchronous_commit=on, full_page_writes=on (the production defaults)",
            "burn_procs": "the burn-down drained by 1, 2, 4 Poller processes of 50 threads each (scaling.py)",
            "load": "1 ms jobs arriving at a fixed rate from a producer process (a batch every 5 ms); "
            "latency = handler return - submit call start (scaling.py)",
            "median": "each figure is the median of its repetitions",
        },
        "results": results,
        "table_markdown": table,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started))}-{mode}-{args.db}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print()
    print(
        f"machine: {info['cores']} cores, {info['memory_gb']} GB, {info['cpu']}; Python {info['python']}; "
        f"SQLite {info['sqlite']}; PostgreSQL {info.get('postgresql', {}).get('version', '—')} "
        f"({info.get('postgresql', {}).get('source', '—')})"
    )
    print(table)
    print(f"\nwrote {path.relative_to(ROOT)} in {report['duration_seconds']:.0f} s")
    return 0


def _summary(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return "skipped: " + str(r["skipped"])[:100]
    if "error" in r:
        return "ERROR: " + r["error"] + " | " + str(r.get("stderr_tail", "")).replace("\n", " | ")[-300:]
    if "p50" in r:
        return f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms ({r['seconds']} s)"
    if "rss_last_mb" in r:
        return f"RSS {r['rss_first_mb']:.0f} → {r['rss_last_mb']:.0f} MB ({r['growth_pct']:+.1f} %) ({r['seconds']} s)"
    return f"{r['median']:,.0f} {r.get('unit', '')} ({r['seconds']} s)"


if __name__ == "__main__":
    sys.exit(main())
