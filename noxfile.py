"""Developer sessions: tests on both databases, lint, typecheck, demo, bench, soak."""

from __future__ import annotations

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
