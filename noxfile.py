"""Developer sessions: tests on both databases, lint, typecheck, demo, bench, soak."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

DATABASES = ["sqlite", "postgresql"]


@nox.session
@nox.parametrize("db", DATABASES)
def tests(session: nox.Session, db: str) -> None:
    """The test suite on one database (both by default). Fault tests included."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs, env={"SIMPLEFLOW_TEST_DB": db})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "simpleflow", "tests", "examples", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "simpleflow")


@nox.session
def demo(session: nox.Session) -> None:
    """The quickstart on the embedded SQLite default."""
    session.install("-e", ".")
    session.run("python", "examples/quickstart.py")


#: Peers measured by the bench session; installed there only, never runtime dependencies.
BENCH_PEERS = ["pgqueuer", "asyncpg", "procrastinate", "dbos"]


@nox.session
def bench(session: nox.Session) -> None:
    """simpleflow against the database floor, PgQueuer, Procrastinate and DBOS (`-- --db sqlite|postgresql --quick`).

    A peer that cannot be installed is recorded as such in the results; the run goes on.
    """
    session.install("-e", ".")
    for peer in BENCH_PEERS:
        try:
            session.install(peer)
        except nox.command.CommandFailed:
            session.warn(f"could not install {peer}; the bench records it as not installed")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """The fault suite, ten times bigger and longer, on both databases; prints its counts.

    ``nox -s soak`` (``-- -k sigkill`` to pick tests; ``SIMPLEFLOW_SOAK_SCALE`` overrides the 10).
    """
    session.install("-e", ".[dev]")
    scale = os.environ.get("SIMPLEFLOW_SOAK_SCALE") or "10"
    session.run(
        "pytest", "-m", "faults", "--timeout=7200", *session.posargs,
        env={"SIMPLEFLOW_SOAK_SCALE": scale, "SIMPLEFLOW_TEST_DB": ""},
    )
