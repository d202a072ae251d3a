"""Connection strings, engines, ownership and SQLite settings (``simpleflow.db.database``)."""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from simpleflow import Client, ConfigurationError, DatabaseError, MigrationError, SimpleflowError
from simpleflow.db.database import Database
from simpleflow.db.schema import TABLES

SIMPLEFLOW_TABLES = {t.name for t in TABLES}


def roundtrip(client: Client) -> None:
    """Migrate, write a run and read it back."""
    client.auto_migrate()
    rid = client.submit("a.b", {"ok": True}).execute()
    assert client.get_run(rid).payload == {"ok": True}


# -- SQLite URL forms ----------------------------------------------------------------------


def test_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Client("sqlite:///rel.db") as c:
        roundtrip(c)
    assert (tmp_path / "rel.db").is_file()
    (tmp_path / "sub").mkdir()
    with Client("sqlite:///sub/nested.db") as c:
        roundtrip(c)
    assert (tmp_path / "sub" / "nested.db").is_file()


def test_sqlite_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    url = f"sqlite:///{tmp_path}/abs.db"
    assert url.startswith("sqlite:////")
    with Client(url) as c:
        roundtrip(c)
    assert (tmp_path / "abs.db").is_file()
    with Client(url) as c:  # a second client sees the same file
        assert len(c.list_runs()) == 1


@pytest.mark.parametrize("url", ["sqlite://:memory:", "sqlite:///:memory:"])
def test_sqlite_memory(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Client(url) as c:
        roundtrip(c)
        rid = c.submit("a.c", {}).execute()
        seen: list[str] = []
        # every thread of the client sees the same in-memory database
        t = threading.Thread(target=lambda: seen.append(c.get_run(rid).type))
        t.start()
        t.join()
        assert seen == ["a.c"]
    with Client(url) as other:  # a new client is a new, empty database
        other.auto_migrate()
        assert other.list_runs() == []
    assert list(tmp_path.iterdir()) == []  # nothing written to disk


# -- PostgreSQL URL forms ---------------------------------------------------------------------


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh schema name in the shared test database, dropped afterwards."""
    name = f"u_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def pg_tables(postgres_url: str, schema: str) -> set[str]:
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
@pytest.mark.parametrize("param", ["schema", "search_path"])
def test_postgres_url_forms(postgres_url: str, pg_schema: str, scheme: str, param: str) -> None:
    rest = postgres_url.split("://", 1)[1]
    with Client(f"{scheme}://{rest}?{param}={pg_schema}") as c:
        assert c.db.dialect.name == "postgresql" and c.db.schema == pg_schema
        assert c.db.engine.dialect.driver == "psycopg"
        roundtrip(c)
    assert pg_tables(postgres_url, pg_schema) == SIMPLEFLOW_TABLES | {"simpleflow_alembic_version"}
    assert not SIMPLEFLOW_TABLES & pg_tables(postgres_url, "public")


def test_postgres_default_schema_and_kwarg() -> None:
    url = "postgresql://app:secret@db.invalid/app"  # nothing connects
    db = Database.open(url)
    assert db.schema == "workflow"
    db.close()
    db = Database.open(url, schema="jobs")
    assert db.schema == "jobs"
    db.close()


def test_postgres_other_query_parameters_are_kept(postgres_url: str, pg_schema: str) -> None:
    with Client(f"{postgres_url}?application_name=sf_test_app&schema={pg_schema}") as c:
        with c.db.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_setting('application_name')")).scalar_one() == "sf_test_app"
        roundtrip(c)
    assert "workflow_run" in pg_tables(postgres_url, pg_schema)


@pytest.mark.parametrize("bad", ["bad-name", "a b", "1abc", "x;drop table t", 'a"b', "x" * 64, "é"])
def test_invalid_schema_name_is_rejected(bad: str) -> None:
    from urllib.parse import quote

    base = "postgresql://app:secret@db.invalid/app"
    with pytest.raises(ConfigurationError, match="schema"):
        Client(f"{base}?schema={quote(bad)}")
    with pytest.raises(ConfigurationError, match="schema"):
        Client(f"{base}?search_path={quote(bad)}")
    with pytest.raises(ConfigurationError, match="schema"):
        Client(base, schema=bad)
    engine = sa.create_engine("postgresql+psycopg://app:secret@db.invalid/app")
    try:
        with pytest.raises(ConfigurationError, match="schema"):
            Client(engine, schema=bad)
    finally:
        engine.dispose()


# -- engines and ownership -------------------------------------------------------------------------


def watch_disposal(engine: sa.Engine) -> list[sa.Engine]:
    calls: list[sa.Engine] = []
    sa.event.listen(engine, "engine_disposed", calls.append)
    return calls


def test_given_engine_is_not_disposed(app_engine: sa.Engine, db_schema: str | None) -> None:
    disposed = watch_disposal(app_engine)
    c = Client(app_engine, schema=db_schema)
    assert c.db.engine is app_engine
    roundtrip(c)
    c.close()
    with Client(app_engine, schema=db_schema) as c2:
        assert len(c2.list_runs()) == 1
    assert disposed == []
    with app_engine.connect() as conn:  # still the caller's, still usable
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1


def test_url_client_owns_and_disposes_its_engine(db_url: str) -> None:
    c = Client(db_url)
    disposed = watch_disposal(c.db.engine)
    roundtrip(c)
    c.close()
    assert disposed == [c.db.engine]
    with Client(db_url) as c2:
        disposed2 = watch_disposal(c2.db.engine)
        assert len(c2.list_runs()) == 1
    assert disposed2 == [c2.db.engine]


def test_sqlite_engine_is_accepted(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/app.db")
    try:
        with Client(engine) as c:
            assert c.db.dialect.name == "sqlite" and c.db.schema is None
            roundtrip(c)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM workflow_run")).scalar_one() == 1
    finally:
        engine.dispose()


# -- SQLite settings ---------------------------------------------------------------------------------


def test_sqlite_pragmas(tmp_path: Path) -> None:
    with Client(f"sqlite:///{tmp_path}/p.db") as c:
        c.auto_migrate()
        # several pooled connections at once (raw: no transaction, so no write lock):
        # every one is configured
        conns = [c.db.engine.raw_connection() for _ in range(3)]
        try:
            assert len({id(conn.driver_connection) for conn in conns}) == 3
            for conn in conns:
                cur = conn.cursor()
                assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
                assert cur.execute("PRAGMA foreign_keys").fetchone()[0] == 1
                assert cur.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
                cur.close()
        finally:
            for conn in conns:
                conn.close()
        # foreign keys are enforced, not just switched on
        with pytest.raises(sa.exc.IntegrityError), c.db.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO workflow_event (run_id, event_type, created_at) VALUES (?, 'x', '2020-01-01')",
                (str(uuid.uuid4()),),
            )


def test_sqlite_write_transactions_begin_immediate(tmp_path: Path) -> None:
    """Every transaction that writes takes the write lock at BEGIN (reads may begin deferred)."""
    with Client(f"sqlite:///{tmp_path}/b.db") as c:
        c.auto_migrate()
        statements: list[str] = []
        # traced by sqlite3 itself: the hot paths run on the raw connection (simpleflow.db.lean)
        sa.event.listen(c.db.engine, "checkout", lambda dbapi, *a: dbapi.set_trace_callback(statements.append))
        sa.event.listen(c.db.engine, "checkin", lambda dbapi, *a: dbapi.set_trace_callback(None))
        rid = c.submit("a.b", {}).execute()
        assert statements and statements[0] == "BEGIN IMMEDIATE", statements
        statements.clear()
        c.cancel(rid)
        assert statements and statements[0] == "BEGIN IMMEDIATE", statements
        statements.clear()
        with c.db.begin() as conn:
            conn.exec_driver_sql("SELECT 1")
        assert statements[0] == "BEGIN IMMEDIATE", statements


def test_sqlite_read_then_write_from_two_threads_never_locks(tmp_path: Path) -> None:
    """With deferred BEGIN, two read-then-write transactions deadlock on the lock upgrade
    and one fails at once with "database is locked"; BEGIN IMMEDIATE serializes them."""
    with Client(f"sqlite:///{tmp_path}/lock.db") as c:
        with c.db.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE counter (n INTEGER NOT NULL)")
            conn.exec_driver_sql("INSERT INTO counter VALUES (0)")
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def bump() -> None:
            try:
                barrier.wait(timeout=10)
                with c.db.begin() as conn:  # no retry wrapper: a lock error would surface
                    n = conn.exec_driver_sql("SELECT n FROM counter").scalar_one()
                    time.sleep(0.2)
                    conn.exec_driver_sql("UPDATE counter SET n = ?", (n + 1,))
            except BaseException as error:
                errors.append(error)

        started = time.monotonic()
        threads = [threading.Thread(target=bump) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        elapsed = time.monotonic() - started
        assert errors == []
        with c.db.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 2  # no lost update
        assert elapsed >= 0.39  # the second waited for the first


# -- error messages never show passwords -----------------------------------------------------------

SECRET = "s3cretPW"


def full_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://app:{SECRET}@db.example/app",
        f"mysql+pymysql://app:{SECRET}@db.example:3306/app?x=1",
        f"sqlite://app:{SECRET}@host/x.db",
        f"postgresql://app:{SECRET}@db.example/app?schema=bad-name",
        f"postgresql://app:{SECRET}@db.example:notaport/app",
        f"mssql://app:{SECRET}@db.example/app",
        f"mysql://app:{SECRET}%2F1@db.example/app",
        # unencoded / and @ in the password (a common copy-paste mistake)
        f"mysql://app:{SECRET}/x@db.example/app",
        f"mysql://app:x@{SECRET}@db.example/app",
        f"postgresql://app:x/@{SECRET}@db.example:notaport/app",
    ],
)
def test_passwords_not_in_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Client(url)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


@pytest.mark.parametrize(
    "url",
    [f"postgresql://app:{SECRET}@db.example:99999/app", f"postgresql://app:{SECRET}@[::1/app", "postgres://h:-1/db"],
)
def test_malformed_postgres_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Client(url)
    assert SECRET not in str(caught.value)
    assert "postgresql+psycopg://" in str(caught.value)  # lists the accepted forms


def test_passwords_not_in_connection_errors() -> None:
    url = f"postgresql://app:{SECRET}@127.0.0.1:1/app?schema=x&connect_timeout=2"
    with Client(url) as c:
        with pytest.raises(DatabaseError) as caught:
            c.get_run(str(uuid.uuid4()))
        assert SECRET not in str(caught.value)
        assert SECRET not in full_text(caught.value)
        with pytest.raises(MigrationError) as caught_m:
            c.auto_migrate()
        assert SECRET not in full_text(caught_m.value)
    for error in (caught.value, caught_m.value):
        assert isinstance(error, SimpleflowError)


def test_database_open_rejects_unsupported_dialects(tmp_path: Path) -> None:
    class NotAnEngine:
        url = "sqlite://"

    with pytest.raises(ConfigurationError):
        Database.open(NotAnEngine())
    engine: Any = sa.create_engine("sqlite://")
    try:
        assert Database.open(engine).dialect.name == "sqlite"
    finally:
        engine.dispose()


def test_postgres_sessions_run_without_jit(postgres_url: str, pg_schema: str) -> None:
    """The planner cannot know the fair claim's per-tenant LIMIT; with statistics of a deep
    backlog its estimate passed jit_above_cost and every claim paid a JIT compilation. The
    sessions of an engine simpleflow opens have JIT off; a given Engine is left alone."""
    with Client(f"{postgres_url}?schema={pg_schema}") as c:
        with c.db.engine.connect() as conn:
            assert conn.execute(sa.text("SHOW jit")).scalar_one() == "off"
        roundtrip(c)
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with psycopg.connect(postgres_url) as raw:
        server_default = raw.execute("SHOW jit").fetchone()
    with Client(engine, schema=pg_schema) as c, c.db.engine.connect() as conn:
        assert (conn.execute(sa.text("SHOW jit")).scalar_one(),) == server_default
    engine.dispose()
