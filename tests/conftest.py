"""Shared fixtures: one fresh database per test, on SQLite and on PostgreSQL.

Fixtures other test files use:

``db_url``
    A URL string of a brand-new, empty database, parametrized with the ids
    ``sqlite`` and ``postgresql``. SQLite: ``sqlite:////<tmp_path>/t.db`` (the
    file does not exist yet). PostgreSQL: ``postgresql://…/simpleflow_test_<hex>?schema=t_<hex>``,
    a schema of its own in one shared test database (not created yet; migrations
    create it), dropped with ``DROP SCHEMA … CASCADE`` after the test.
    ``SIMPLEFLOW_TEST_DB=sqlite`` (or ``postgresql``) restricts the parametrization
    to one database.
``migrated_url``
    ``db_url`` after ``simpleflow.migrate.upgrade`` (every simpleflow table exists):
    build ``Client``/``Poller``/``Workflow`` objects from it.
``client``
    ``Client(db_url)`` with ``auto_migrate()`` applied; closed after the test.
``db_kind``
    ``"sqlite"`` or ``"postgresql"``: which database this test instance runs on.
``db_schema``
    The PostgreSQL schema of ``db_url`` (``t_<hex>``), ``None`` on SQLite.
``app_engine``
    An application-owned SQLAlchemy ``Engine`` on ``db_url``'s database, as a user
    would build it (PostgreSQL: ``postgresql+psycopg://…`` without ``?schema``), for
    ``Client(app_engine, schema=db_schema)`` and ``execute(connection=conn)`` tests.
    Disposed after the test.
``pg_cluster``
    The session's throwaway ``tests.pg_cluster.PgCluster`` (``.url``, ``.restart(mode)``,
    ``.stop()``, ``.create_database(name)``), for fault tests that restart the server.
    It is the server behind ``db_url``/``postgres_url`` too: leave it running.
    Not tied to ``db_url``: a fault test takes ``pg_cluster`` (and ``postgres_url`` or
    its own ``pg_cluster.create_database(...)``) without the sqlite parametrization.
``postgres_url``
    URL of the session's shared PostgreSQL test database (no schema query); for
    PostgreSQL-only tests (skips, or fails under CI, like the postgresql params).

With ``SIMPLEFLOW_TEST_DB=sqlite`` the PostgreSQL-only fixtures skip (no server is
started); with ``SIMPLEFLOW_TEST_DB=postgresql`` only the ``postgresql`` param runs.

PostgreSQL comes from ``SIMPLEFLOW_TEST_POSTGRES_URL`` if set (a server you run;
the suite creates and drops a database ``simpleflow_test_<hex>`` on it, or uses the
given database when it may not create one; ``.ci/run`` starts one for the run), else
from a throwaway cluster started with ``tests/pg_cluster.py``. ``pg_cluster`` is always
a throwaway cluster of the suite's own (a given server is not ours to restart). When neither works the PostgreSQL tests are skipped
with the reason, unless ``CI=true`` or ``SIMPLEFLOW_REQUIRE_POSTGRES=1``, where they fail.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from simpleflow import Client

sys.path.insert(0, str(Path(__file__).parent))  # `import pg_cluster` from any cwd

from db_urls import drop_schema, split_db_url

ALL_DATABASES = ("sqlite", "postgresql")
_selected = os.environ.get("SIMPLEFLOW_TEST_DB", "").strip().lower()
if _selected and _selected not in ALL_DATABASES:
    raise pytest.UsageError(f"SIMPLEFLOW_TEST_DB must be one of {', '.join(ALL_DATABASES)}, got {_selected!r}")
#: the databases ``db_url`` is parametrized over in this session
DATABASES = (_selected,) if _selected else ALL_DATABASES


def postgres_required() -> bool:
    """True when a missing PostgreSQL must fail the suite instead of skipping."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("SIMPLEFLOW_REQUIRE_POSTGRES") == "1"


def _unavailable(reason: str) -> None:
    message = f"PostgreSQL is not available: {reason}"
    if postgres_required():
        pytest.fail(message + " (required because CI=true or SIMPLEFLOW_REQUIRE_POSTGRES=1)", pytrace=False)
    pytest.skip("SKIPPING POSTGRESQL TESTS: " + message + " (set SIMPLEFLOW_TEST_POSTGRES_URL to use a server)")


# -- the server ---------------------------------------------------------------------


@dataclass
class _PgServer:
    admin_url: str | None = None  # a database we may connect to with rights to create others
    test_url: str | None = None  # the shared test database (no ?schema)
    cluster: object | None = None  # PgCluster when we started one
    error: str | None = None


def _connect(url: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def _libpq_url(url: str) -> str:
    """psycopg wants postgresql://; accept the SQLAlchemy spellings too."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def _start_cluster(tmp_path_factory: pytest.TempPathFactory) -> object:
    from pg_cluster import start_postgres

    return start_postgres(tmp_path_factory.mktemp("postgres"))


@pytest.fixture(scope="session")
def _pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_PgServer]:
    """Start (or find) the session's PostgreSQL server and its test database."""
    server = _PgServer()
    external = os.environ.get("SIMPLEFLOW_TEST_POSTGRES_URL")
    created: str | None = None
    try:
        if external:
            server.admin_url = _libpq_url(external.split("?", 1)[0])
        else:
            cluster = _start_cluster(tmp_path_factory)
            server.cluster = cluster
            server.admin_url = cluster.url  # type: ignore[attr-defined]
        name = f"simpleflow_test_{uuid.uuid4().hex[:8]}"
        try:
            with _connect(server.admin_url) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            created = name
            server.test_url = server.admin_url.rsplit("/", 1)[0] + "/" + name
        except Exception:
            if not external:
                raise
            server.test_url = server.admin_url  # no CREATE DATABASE right: share the given one
        with _connect(server.test_url) as conn:
            conn.execute("SELECT 1")
    except Exception as error:  # any failure: report it where PostgreSQL is needed
        where = "SIMPLEFLOW_TEST_POSTGRES_URL" if external else "tests/pg_cluster.py start_postgres()"
        server.error = f"{where} failed: {type(error).__name__}: {error}"
    yield server
    if created and server.admin_url:
        with contextlib.suppress(Exception), _connect(server.admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)')
    if server.cluster is not None:
        server.cluster.destroy()  # type: ignore[attr-defined]


def _skip_unless_postgres_selected() -> None:
    if "postgresql" not in DATABASES:
        pytest.skip(f"PostgreSQL test; this session runs SIMPLEFLOW_TEST_DB={_selected}")


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> str:
    """URL (``postgresql://…``, no schema) of the session's shared test database."""
    _skip_unless_postgres_selected()
    _pg_server: _PgServer = request.getfixturevalue("_pg_server")
    if _pg_server.error or not _pg_server.test_url:
        _unavailable(_pg_server.error or "no server")
    assert _pg_server.test_url is not None
    return _pg_server.test_url


@pytest.fixture(scope="session")
def pg_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The throwaway ``PgCluster`` the suite controls (restart it in fault tests).

    It is the same server as ``postgres_url``'s: leave it running (restart, don't
    just stop) so later tests find it. With ``SIMPLEFLOW_TEST_POSTGRES_URL`` the
    shared server is not ours to restart, so a separate throwaway cluster is
    started for the tests that ask for this.
    """
    _skip_unless_postgres_selected()
    _pg_server: _PgServer = request.getfixturevalue("_pg_server")
    if _pg_server.cluster is not None:
        yield _pg_server.cluster
        return
    if not os.environ.get("SIMPLEFLOW_TEST_POSTGRES_URL"):  # starting one just failed
        _unavailable(_pg_server.error or "no cluster")
    try:
        cluster = _start_cluster(tmp_path_factory)
    except Exception as error:
        _unavailable(f"tests/pg_cluster.py start_postgres() failed: {type(error).__name__}: {error}")
    try:
        yield cluster
    finally:
        cluster.destroy()  # type: ignore[attr-defined]


# -- one fresh database per test ------------------------------------------------------


@pytest.fixture(params=DATABASES, ids=DATABASES)
def db_kind(request: pytest.FixtureRequest) -> str:
    """``"sqlite"`` or ``"postgresql"``; the parametrization every storage test inherits."""
    return str(request.param)


@pytest.fixture
def db_url(db_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty database (see the module docstring)."""
    if db_kind == "sqlite":
        yield f"sqlite:///{tmp_path}/t.db"
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{base}?schema={schema}"
    finally:
        drop_schema(base, schema)


@pytest.fixture
def db_schema(db_url: str) -> str | None:
    """The PostgreSQL schema of ``db_url``; ``None`` on SQLite."""
    return split_db_url(db_url)[1]


@pytest.fixture
def app_engine(db_url: str) -> Iterator[Engine]:
    """An Engine the application owns on ``db_url``'s database (disposed after the test)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(split_db_url(db_url)[0])
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def migrated_url(db_url: str) -> str:
    """``db_url`` with every simpleflow migration applied."""
    from simpleflow.db.migrate import upgrade

    upgrade(db_url)
    return db_url


@pytest.fixture
def client(db_url: str) -> Iterator[Client]:
    """``Client(db_url)`` after ``auto_migrate()``; closed after the test."""
    from simpleflow import Client

    c = Client(db_url)
    try:
        c.auto_migrate()
        yield c
    finally:
        c.close()
