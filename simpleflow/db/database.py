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

import copy
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

from simpleflow.core.errors import ConfigurationError, DatabaseError
from simpleflow.db.dialect import Dialect, dialect_for, sqlite_key

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
log = logging.getLogger("simpleflow.db")


def _reject(what: object, why: str) -> ConfigurationError:
    shown = what if isinstance(what, str) else type(what).__name__
    if isinstance(shown, str) and "@" in shown:  # never echo a password
        shown = re.sub(r"//.*@", "//***@", shown)  # up to the last @: passwords may hold / or @
    return ConfigurationError(f"cannot use {shown!r} as a database: {why}; accepted forms: {ACCEPTED_FORMS}")


class Database:
    """An engine plus what simpleflow needs to know about it (its ``Dialect``, schema, ownership)."""

    def __init__(self, engine: Engine, *, schema: str | None, owns_engine: bool, key: str) -> None:
        self.engine = engine
        #: identifies the database for in-process wake-ups (same file, same server+schema)
        self.key = key
        try:
            self.dialect: Dialect = dialect_for(engine)
        except ValueError as error:
            raise _reject(engine, str(error)) from None
        self.schema = schema
        self.owns_engine = owns_engine
        #: passed to every execute so tables land in ``schema`` on PostgreSQL
        self.exec_options: dict[str, Any] = {"schema_translate_map": {None: schema}} if schema else {}
        #: the tenant every session of ``run`` acts for (row-level security), None: not set
        self.tenant: str | None = None

    def for_tenant(self, tenant: str) -> Database:
        """This database (same engine and pool) with every ``run`` acting for ``tenant``:
        PostgreSQL sessions get ``simpleflow.tenant`` set, which row-level security reads."""
        view = copy.copy(self)
        view.tenant = tenant
        return view

    @classmethod
    def open(cls, target: object, *, schema: str | None = None, pool_size: int = 10) -> Database:
        """Open a URL string (owning its engine) or wrap an existing ``Engine``."""
        if isinstance(target, Database):
            return target
        if isinstance(target, Engine):
            try:
                dialect = dialect_for(target)
            except ValueError as error:
                raise _reject(target, str(error)) from None
            chosen = _check_schema(schema or DEFAULT_SCHEMA) if dialect.has_schemas else None
            return cls(target, schema=chosen, owns_engine=False, key=dialect.key(target, chosen))
        if not isinstance(target, str):
            raise _reject(target, "expected a URL string or an Engine")
        url = target.strip()
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        opener = _OPENERS.get(scheme)
        if opener is None:
            raise _reject(target, f"unknown scheme {scheme!r}" if scheme else "not a URL")
        return opener(cls, url, schema, pool_size)

    def close(self) -> None:
        if self.owns_engine:
            self.engine.dispose()

    def ensure_connections(self, needed: int) -> None:
        """Make the pool of an engine this object owns hold at least ``needed`` connections
        (a poller needs one per worker thread plus its services). An engine the user gave
        is left as it is: size it yourself (see the README); a pool timeout is retried
        like any transient error."""
        pool = self.engine.pool
        if not self.owns_engine or not isinstance(pool, QueuePool):
            return
        capacity = pool.size() + max(0, pool._max_overflow)
        if capacity >= needed or pool.size() <= 1:  # in-memory SQLite: one shared connection by design
            return
        overflow = max(0, pool._max_overflow)
        # QueuePool.recreate() with a larger size: same creator, settings and event listeners.
        bigger = QueuePool(
            pool._creator,
            pool_size=max(pool.size(), needed - overflow),
            max_overflow=overflow,
            pre_ping=pool._pre_ping,
            use_lifo=pool._pool.use_lifo,
            timeout=pool._timeout,
            recycle=pool._recycle,
            echo=pool.echo,
            logging_name=pool._orig_logging_name,
            reset_on_return=pool._reset_on_return,
            _dispatch=pool.dispatch,
            dialect=pool._dialect,
        )
        pool.dispose()
        self.engine.pool = bigger

    def begin(self) -> AbstractContextManager[Connection]:
        """One read-write transaction (SQLite: write lock taken at BEGIN)."""
        return self.connect()

    @property
    def keeps_connections(self) -> bool:
        """May a caller keep a pooled connection across many statements (False when the pool
        is one shared connection: in-memory SQLite)?"""
        pool = self.engine.pool
        return not isinstance(pool, QueuePool) or pool.size() > 1

    def connect(self, *, autocommit: bool = False, read: bool = False) -> AbstractContextManager[Connection]:
        """A transaction, in one of three forms.

        Default: a read-write transaction (SQLite: ``BEGIN IMMEDIATE``). ``autocommit``:
        where the dialect allows it (PostgreSQL), every statement commits itself, saving
        the BEGIN/COMMIT round trips, for callers whose statements are each atomic on
        their own. ``read``: reads only (no BEGIN/COMMIT round trips; on SQLite no wait
        for the write lock).
        """
        return self.dialect.connect(self.engine, autocommit=autocommit, read=read)

    def run(
        self,
        fn: Callable[[Connection], T],
        *,
        autocommit: bool = False,
        read: bool = False,
        patience: float = 5.0,
        what: str = "database operation",
    ) -> T:
        """Run ``fn`` in one transaction (see ``connect``), retrying transient failures (lock
        timeouts, serialization failures, dropped connections, a full pool) for up to
        ``patience`` seconds with backoff; then ``DatabaseError``. The one retry loop."""
        return retry_transient(lambda: self._once(fn, autocommit, read), patience=patience, what=what)

    def _once(self, fn: Callable[[Connection], T], autocommit: bool, read: bool) -> T:
        with self.connect(autocommit=autocommit, read=read) as conn:
            if self.tenant is not None:
                self.dialect.set_tenant(conn, self.tenant)
            return fn(conn)


def retry_transient(fn: Callable[[], T], *, patience: float = 5.0, what: str = "database operation") -> T:
    """Call ``fn`` until it succeeds, retrying transient database failures for up to
    ``patience`` seconds (backoff 50 ms doubling to 2 s); other failures at once."""
    limit = time.monotonic() + patience
    delay = 0.05
    while True:
        try:
            return fn()
        except (exc.DBAPIError, exc.TimeoutError) as error:
            retry_or_raise(error, limit, delay, what)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def retry_or_raise(error: exc.DBAPIError | exc.TimeoutError, limit: float, delay: float, what: str) -> None:
    """The retry loops' decision (sync and asyncio): return to retry after ``delay``, or raise
    ``DatabaseError`` for a failure that is not transient or would retry past ``limit``."""
    if not is_transient(error) or time.monotonic() + delay > limit:
        raise DatabaseError(f"{what} failed: {_first_line(error)}") from error
    log.warning("%s failed (%s); retrying", what, _first_line(error))


def _first_line(error: BaseException) -> str:
    text_ = str(getattr(error, "orig", None) or error)
    return text_.strip().splitlines()[0] if text_.strip() else type(error).__name__


def is_transient(error: BaseException) -> bool:
    """Is this a failure worth retrying (the same operation may succeed in a moment)?"""
    if isinstance(error, exc.TimeoutError):  # no pooled connection free in time
        return True
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


def _open_sqlite(cls: type[Database], url: str, schema: str | None, pool_size: int) -> Database:
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
    return cls(engine, schema=None, owns_engine=True, key=sqlite_key(engine))


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
        # (On the raw sqlite3 connection: the statement needs none of SQLAlchemy's execution
        # machinery, which cost more than the BEGIN itself.)
        if not conn.get_execution_options().get("simpleflow_read"):
            conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]


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
                raise ConfigurationError(
                    "the ?schema= parameter is empty: name a schema, or leave it out for 'workflow'"
                )
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
    configure_postgres(engine)
    key = f"{parts.hostname}:{port}/{parts.path}/{chosen}"
    return cls(engine, schema=chosen, owns_engine=True, key=key)


def configure_postgres(engine: Engine) -> None:
    """JIT compilation off for the sessions of an engine simpleflow opened.

    Every simpleflow statement is short and indexed, but the planner cannot know the
    per-tenant LIMIT of the fair claim: with fresh statistics of a deep backlog (after
    ANALYZE, which autovacuum runs) its estimated cost passes ``jit_above_cost`` and each
    claim paid a JIT compilation (measured: 5,000-run burn-down 691 runs/s with JIT,
    4,869 without). An ``Engine`` you pass in is left as it is: set ``jit = off`` for its
    role (``ALTER ROLE … SET jit = off``) or in its ``options``.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True  # a SET outside any transaction: nothing left open
        try:
            dbapi_conn.execute("SET jit = off")
        finally:
            dbapi_conn.autocommit = autocommit


_OPENERS = {
    "sqlite": _open_sqlite,
    "postgres": _open_postgres,
    "postgresql": _open_postgres,
    "postgresql+psycopg": _open_postgres,
}
