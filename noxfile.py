"""Every check CI runs, and the developer sessions: ``nox`` runs lint, typecheck, imports and tests.

Run from the project's own venv (``.venv/bin/nox``, as in the README), the checks use that venv
(it already has ``.[dev]``) instead of building one per session; a ``nox`` from elsewhere
(pipx, a global install) builds and reuses ``.nox/<session>`` venvs as usual.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "imports", "tests"]
nox.options.reuse_existing_virtualenvs = True

#: nox runs in a venv that has the dev tools and simpleflow: every check uses it as is.
IN_DEV_VENV = sys.prefix != sys.base_prefix and all(
    importlib.util.find_spec(m) for m in ("simpleflow", "pytest", "pytest_cov", "mypy", "importlinter")
)
BACKEND = "none" if IN_DEV_VENV else "venv"
BIN = Path(sys.executable).parent
DATABASES = ["sqlite", "postgresql"]
LINT_PATHS = ["simpleflow", "tests", "examples", "benchmarks", "noxfile.py"]

#: Checks of issue 12 that today's code does not pass yet: run and reported, not enforced, until the
#: restructuring and the formatting land (then empty this set and drop the xfail marks in
#: tests/test_architecture.py).
NOT_YET_ENFORCED: set[str] = set()


def dev_env(session: nox.Session, extras: str = "dev") -> None:
    """Install the package with *extras* unless nox runs in a venv that already has them."""
    if not IN_DEV_VENV:
        session.install("-e", f".[{extras}]")


def tool(name: str) -> str:
    """A console script of the dev venv (nox's own when IN_DEV_VENV, else the session's)."""
    return str(BIN / name) if IN_DEV_VENV else name


def check(session: nox.Session, name: str, *args: str) -> None:
    """Run a check; one in NOT_YET_ENFORCED may fail (with a warning) without failing the session."""
    if name in NOT_YET_ENFORCED:
        session.warn(f"{name}: reported, NOT enforced yet (NOT_YET_ENFORCED in noxfile.py)")
        session.run(*args, success_codes=[0, 1])
    else:
        session.run(*args)


#: data files of the tests sessions of this nox run, combined once both databases ran
_coverage_files: list[str] = []


@nox.session(venv_backend=BACKEND)
@nox.parametrize("db", DATABASES)
def tests(session: nox.Session, db: str) -> None:
    """The test suite, fault tests included, on one database (both by default), with coverage.

    Prints the coverage total of each database and, when both ran, of the two together.
    """
    dev_env(session)
    data = f".coverage.{db}"
    env = {"SIMPLEFLOW_TEST_DB": db, "COVERAGE_FILE": data}
    session.run(tool("pytest"), "--cov", "--cov-report=", *session.posargs, env=env)
    coverage = tool("coverage")
    total = session.run(coverage, "report", f"--data-file={data}", "--format=total", silent=True)
    session.log(f"coverage of simpleflow by the tests on {db}: {str(total).strip()}%")
    _coverage_files.append(data)
    if len(_coverage_files) == len(DATABASES):  # both ran in this nox run: one figure for the two
        session.run(coverage, "combine", "--keep", "-q", "--data-file=.coverage", *_coverage_files)
        session.run(coverage, "report", "--data-file=.coverage", "--skip-covered", "--skip-empty")
        total = session.run(coverage, "report", "--data-file=.coverage", "--format=total", silent=True)
        session.log(f"coverage of simpleflow by the tests on both databases: {str(total).strip()}%")


@nox.session(venv_backend=BACKEND)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    if not IN_DEV_VENV:
        session.install("ruff")
    session.run(tool("ruff"), "check", *LINT_PATHS)
    check(session, "format", tool("ruff"), "format", "--check", "--output-format=concise", *LINT_PATHS)


@nox.session(venv_backend=BACKEND)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    dev_env(session)
    session.run(tool("mypy"), "--strict", "simpleflow")


@nox.session(venv_backend=BACKEND)
def imports(session: nox.Session) -> None:
    """The layer contract and no import cycles (pyproject.toml's [tool.importlinter])."""
    dev_env(session)
    check(session, "imports", tool("lint-imports"), "--no-cache")


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


@nox.session(venv_backend=BACKEND)
def soak(session: nox.Session) -> None:
    """The fault suite, ten times bigger and longer, on both databases; prints its counts.

    ``nox -s soak`` (``-- -k sigkill`` to pick tests; ``SIMPLEFLOW_SOAK_SCALE`` overrides the 10).
    """
    dev_env(session)
    scale = os.environ.get("SIMPLEFLOW_SOAK_SCALE") or "10"
    session.run(
        tool("pytest"),
        "-m",
        "faults",
        "--timeout=7200",
        *session.posargs,
        env={"SIMPLEFLOW_SOAK_SCALE": scale, "SIMPLEFLOW_TEST_DB": ""},
    )
