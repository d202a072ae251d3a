"""Connection strings and engines: the one door every entry point goes through.

``Database.open(url_or_engine)`` accepts the URL forms of the table below or an
existing SQLAlchemy ``Engine``; anything else is a ``ConfigurationError`` that
lists the accepted forms.

| form                                                   | database                     |
|--------------------------------------------------------|------------------------------|
| ``sqlite:///rel.db``, ``sqlite:////abs.db``            | SQLite file                  |
| ``sqlite://:memory:``, ``sqlite:///:memory:``          | SQLite in memory             |
| ``postgres://…``, ``postgresql://…``, ``postgresql+psycopg://…`` | PostgreSQL (psycopg 3) |
| ``?schema=NAME`` or ``?search_path=NAME`` on a Postgres URL | simpleflow's schema (default ``workflow``) |
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

from simpleflow.core.errors import ConfigurationError, DatabaseError

DEFAULT_SCHEMA = "workflow"
SQLITE_BUSY_TIMEOUT_MS = 30_000

ACCEPTED_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite://:memory:, "
    "sqlite:///:memory:, postgres://user:pass@host/db, postgresql://…, "
    "postgresql+psycopg://… (optionally ?schema=NAME), or an existing sqlalchemy.Engine"
)

# Used with ``fullmatch``: ``$`` would also match before a trailing newline.
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
T = TypeVar("T")


def _reject(what: object, why: str) -> ConfigurationError:
    shown = what if isinstance(what, str) else type(what).__name__
    if isinstance(shown, str) and "@" in shown:  # never echo a password
        shown = re.sub(r"//.*@", "//***@", shown)  # up to the last @: passwords may hold / or @
    return ConfigurationError(f"cannot use {shown!r} as a database: {why}; accepted forms: {ACCEPTED_FORMS}")


class Database:
    """An engine plus what simpleflow needs to know about it (dialect, schema, ownership)."""

    def __init__(self, engine: Engine, *, schema: str | None, owns_engine: bool, key: str) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.schema = schema
        self.owns_engine = owns_engine
        #: identifies the database for in-process wake-ups (same file, same server+schema)
        self.key = key
        #: SQLite: one lock per database file for this process's writing transactions
        self._writers = _writer_lock(key) if self.is_sqlite else None
        #: passed to every execute so tables land in ``schema`` on PostgreSQL
        self.exec_options: dict[str, Any] = (
            {"schema_translate_map": {None: schema}} if schema else {}
        )

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @classmethod
    def open(cls, target: object, *, schema: str | None = None, pool_size: int = 10) -> Database:
        """Open a URL string (owning its engine) or wrap an existing ``Engine``."""
        if isinstance(target, Database):
            return target
        if isinstance(target, Engine):
            name = target.dialect.name
            if name == "postgresql":
                if target.dialect.driver != "psycopg":
                    raise _reject(target, f"PostgreSQL engines must use psycopg 3, not {target.dialect.driver}")
                chosen = _check_schema(schema or DEFAULT_SCHEMA)
                return cls(target, schema=chosen, owns_engine=False, key=f"{target.url!r}/{chosen}")
            if name == "sqlite":
                return cls(target, schema=None, owns_engine=False, key=_sqlite_key(target))
            raise _reject(target, f"the {name} dialect is not supported")
        if not isinstance(target, str):
            raise _reject(target, "expected a URL string or an Engine")
        url = target.strip()
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "sqlite":
            return _open_sqlite(cls, url)
        if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
            return _open_postgres(cls, url, schema, pool_size)
        raise _reject(target, f"unknown scheme {scheme!r}" if scheme else "not a URL")

    def close(self) -> None:
        if self.owns_engine:
            self.engine.dispose()

    def begin(self) -> AbstractContextManager[Connection]:
        """One read-write transaction (SQLite: write lock taken at BEGIN)."""
        return self.connect()

    @contextmanager
    def connect(self, *, autocommit: bool = False, read: bool = False) -> Iterator[Connection]:
        """A transaction, in one of three forms.

        Default: a read-write transaction (SQLite: ``BEGIN IMMEDIATE``). ``autocommit``
        (PostgreSQL): every statement commits itself, saving the BEGIN/COMMIT round
        trips, for callers whose statements are each atomic on their own. ``read``:
        reads only (autocommit on both: no BEGIN/COMMIT, and on SQLite no wait for
        the write lock).
        """
        if self.is_postgres and (autocommit or read):
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
        elif read:
            with self.engine.connect() as conn:
                conn.execution_options(simpleflow_read=True)
                with conn.begin():
                    yield conn
        elif self._writers is not None:
            # SQLite: the process's writers queue on a Python lock, which hands over at
            # once, instead of in SQLite's busy handler, which sleeps 1-100 ms between
            # tries. Other processes still wait in the busy handler.
            with self._writers, self.engine.begin() as conn:
                yield conn
        else:
            with self.engine.begin() as conn:
                yield conn

    def run(
        self, fn: Callable[[Connection], T], *, attempts: int = 5, autocommit: bool = False, read: bool = False
    ) -> T:
        """Run ``fn`` in one transaction (see ``connect`` for ``autocommit`` and ``read``),
        retrying transient failures (lock timeouts, serialization failures, dropped connections)."""
        delay = 0.05
        for attempt in range(1, attempts + 1):
            try:
                with self.connect(autocommit=autocommit, read=read) as conn:
                    return fn(conn)
            except exc.DBAPIError as error:
                if attempt == attempts or not is_transient(error):
                    raise DatabaseError(f"database error: {_first_line(error)}") from error
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")


_writer_locks: dict[str, threading.RLock] = {}
_writer_locks_guard = threading.Lock()


def _writer_lock(key: str) -> threading.RLock:
    """The process-wide lock of one SQLite database (the same file, whichever object opened it)."""
    with _writer_locks_guard:
        return _writer_locks.setdefault(key, threading.RLock())


def _first_line(error: BaseException) -> str:
    text_ = str(getattr(error, "orig", None) or error)
    return text_.strip().splitlines()[0] if text_.strip() else type(error).__name__


def is_transient(error: BaseException) -> bool:
    """Is this a failure worth retrying (the same operation may succeed in a moment)?"""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    orig = getattr(error, "orig", error)
    message = str(orig).lower()
    if isinstance(orig, sqlite3.OperationalError):
        return "locked" in message or "busy" in message
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        # serialization failure, deadlock, connection exceptions, admin shutdown, cannot connect now
        return sqlstate in ("40001", "40P01", "57P01", "57P02", "57P03") or sqlstate.startswith("08")
    return isinstance(error, exc.OperationalError) and (
        "connection" in message or "server closed" in message or "terminat" in message
    )


def _check_schema(schema: str) -> str:
    if not (isinstance(schema, str) and _SCHEMA_NAME.fullmatch(schema)):
        raise ConfigurationError(
            f"invalid schema name {schema!r}: use letters, digits and underscores, starting with a letter"
        )
    return schema


def _sqlite_key(engine: Engine) -> str:
    database = engine.url.database or ":memory:"
    if database == ":memory:":
        return f"sqlite-memory-{id(engine)}"
    import os

    return "sqlite:" + os.path.abspath(database)


def _open_sqlite(cls: type[Database], url: str) -> Database:
    rest = url[len("sqlite:") :]
    if rest in ("//:memory:", "///:memory:", "//"):
        path = ":memory:"
    elif rest.startswith("///"):
        path = rest[3:]
    else:
        raise _reject(url, "SQLite URLs start with sqlite:/// (three slashes, then the path)")
    path = path.split("?", 1)[0]
    if not path:
        raise _reject(url, "the SQLite path is empty")

    if path == ":memory:":
        # One shared connection, handed to one thread at a time: every thread sees the
        # same in-memory database and transactions never interleave.
        shared = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        engine = sa.create_engine(
            "sqlite://",
            creator=lambda: shared,
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            pool_reset_on_return=None,
        )
    else:
        engine = sa.create_engine(
            f"sqlite:///{path}",
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            poolclass=QueuePool,
            pool_size=20,
            max_overflow=20,
            # The most recently used connection first: a few warm connections (and page
            # caches) serve a poller instead of every pooled one in turn.
            pool_use_lifo=True,
        )
    configure_sqlite(engine)
    return cls(engine, schema=None, owns_engine=True, key=_sqlite_key(engine))


def configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, foreign keys, and the write lock taken at BEGIN.

    pysqlite's own transaction handling is switched off so that every transaction
    starts with ``BEGIN IMMEDIATE``: two connections can then never both hold a
    read lock and deadlock upgrading it to a write lock.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if engine.url.database not in (None, "", ":memory:"):
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock at once. Reads run in autocommit (each statement
        # sees a consistent WAL snapshot and never waits for a writer).
        if not conn.get_execution_options().get("simpleflow_read"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another process holds the file.

    The switch needs an exclusive lock; on a fresh file that other processes are
    opening (and switching) at the same moment SQLite can answer "database is locked"
    at once instead of through the busy handler. Retried with a growing pause for up
    to the busy timeout, then the error stands.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            message = str(error).lower()
            if not ("locked" in message or "busy" in message) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _open_postgres(cls: type[Database], url: str, schema: str | None, pool_size: int) -> Database:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise _reject(url, str(error)) from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    chosen = schema
    kept: list[tuple[str, str]] = []
    for key, value in query:
        if key in ("schema", "search_path"):
            if value == "":
                raise ConfigurationError("the ?schema= parameter is empty: name a schema, or leave it out for 'workflow'")
            chosen = chosen or value
        else:
            kept.append((key, value))
    if schema == "":
        raise ConfigurationError("schema is empty: name a schema, or leave it out for 'workflow'")
    chosen = _check_schema(chosen or DEFAULT_SCHEMA)
    sa_url = urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, urlencode(kept), parts.fragment))
    try:
        engine = sa.create_engine(
            sa_url,
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            # No pre-ping round trip per checkout: a dropped connection surfaces as a
            # transient error that every caller retries (Database.run, Poller._persist).
            pool_pre_ping=False,
            pool_recycle=1800,
        )
    except (exc.ArgumentError, ValueError) as error:
        raise _reject(url, str(error)) from error
    key = f"{parts.hostname}:{port}/{parts.path}/{chosen}"
    return cls(engine, schema=chosen, owns_engine=True, key=key)
