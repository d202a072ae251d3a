"""The database seam: every behaviour that differs between PostgreSQL and SQLite.

Everything else is written once with SQLAlchemy Core. A ``Dialect`` object per
database owns the differences: how a batch of rows is bound as one parameter,
how a write carries its audit events, upsert forms, wake-up notifications,
which connections may autocommit and how SQLite's writers queue. The column
types and the clock functions (``db_now``, ``db_now_plus``) compile per
database below. Times that decide leases and due work are always read from the
database clock, never from a worker's clock. Nothing outside this module asks
which database it talks to.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    CTE,
    Connection,
    DateTime,
    Engine,
    Float,
    FromClause,
    Integer,
    Row,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    any_,
    bindparam,
    cast,
    column,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import JSON, TypeEngine

from simpleflow.db.listen import PgListener, SqliteWatcher

SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%f"


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime: ``timestamptz`` on PostgreSQL, sortable text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: SADialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the database layer")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: SADialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # an expression result SQLite returned as text
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class SqliteJson(sqlite.JSON):
    """JSON kept as TEXT on SQLite: a column declared ``JSON`` has NUMERIC affinity there, which
    turns the text ``18446744073709551617`` into a float. TEXT affinity stores JSON as written."""

    cache_ok = True


@compiles(SqliteJson, "sqlite")
def _sqlite_json_ddl(type_: SqliteJson, compiler: Any, **kw: Any) -> str:
    return "TEXT"


def json_type() -> TypeEngine[Any]:
    """JSONB on PostgreSQL, JSON text (TEXT affinity) on SQLite."""
    return JSON().with_variant(postgresql.JSONB(), "postgresql").with_variant(SqliteJson(), "sqlite")


class new_uuid(ColumnElement[str]):
    """A new run id computed by the database: the server default of ``id``, so that a plain
    ``INSERT INTO workflow_run (type, payload) VALUES (...)`` works on both databases."""

    inherit_cache = True


@compiles(new_uuid, "postgresql")
def _pg_new_uuid(element: new_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    return PG_UUID7_DEFAULT


@compiles(new_uuid, "sqlite")
def _sqlite_new_uuid(element: new_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    return SQLITE_UUID4_DEFAULT


#: a time-ordered UUID (version 7 layout) computed by PostgreSQL: the default ``id`` of rows
#: inserted by plain SQL (PostgreSQL 15 has no uuidv7(); this is its usual portable form)
PG_UUID7_DEFAULT = (
    "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing "
    "substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3) "
    "from 1 for 6), 52, 1), 53, 1), 'hex')::uuid"
)
#: a random UUID (version 4 layout) computed by SQLite, for rows inserted by plain SQL
SQLITE_UUID4_DEFAULT = (
    "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))))"
)


def uuid_type() -> TypeEngine[str]:
    """Native ``uuid`` on PostgreSQL, 36-character text on SQLite; a ``str`` in Python."""
    return String(36).with_variant(postgresql.UUID(as_uuid=False), "postgresql")


def bigint_pk() -> TypeEngine[int]:
    """An auto-incrementing key: BIGINT identity on PostgreSQL, the rowid alias on SQLite."""
    from sqlalchemy import BigInteger

    return BigInteger().with_variant(Integer(), "sqlite")


class db_now(FunctionElement[datetime]):
    """The database's current time."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"


class db_now_plus(FunctionElement[datetime]):
    """The database's current time plus a number of seconds (a float expression)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now_plus"


@compiles(db_now, "postgresql")
def _pg_now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "statement_timestamp()"


@compiles(db_now, "sqlite")
def _sqlite_now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime('{SQLITE_TIME_FORMAT}', 'now')"


@compiles(db_now_plus, "postgresql")
def _pg_now_plus(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    return f"(statement_timestamp() + make_interval(secs => {compiler.process(seconds, **kw)}))"


@compiles(db_now_plus, "sqlite")
def _sqlite_now_plus(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    return (
        f"strftime('{SQLITE_TIME_FORMAT}', 'now', "
        f"printf('%+.6f seconds', {compiler.process(seconds, **kw)}))"
    )


def seconds(value: float | ColumnElement[Any]) -> ColumnElement[float]:
    """A float parameter for ``db_now_plus`` (typed so both drivers bind it as a number)."""
    if isinstance(value, ColumnElement):
        return value
    return literal(float(value), Float())


# -- the seam -------------------------------------------------------------------------------

#: a batch column: its name and its SQL type
BatchColumn = tuple[str, TypeEngine[Any]]
#: builds the audit events of a write from the CTE of changed rows (PostgreSQL)
EventsSelect = Callable[[CTE], Select[Any]]
#: builds the audit events of a write from its returned rows (SQLite)
EventsRows = Callable[[Sequence[Row[Any]]], list[dict[str, Any]]]

Watcher = PgListener | SqliteWatcher

_EVENT_COLUMNS = ["run_id", "event_type", "worker_id", "attempt", "detail", "created_at"]


class Dialect:
    """What differs between the databases simpleflow runs on; one instance per ``Database``."""

    name: str
    #: may a single self-contained statement run on an autocommit connection?
    autocommit_writes: bool
    #: Alembic must rebuild tables to alter them (SQLite's batch mode)
    batch_migrations: bool

    def insert(self, table: Table) -> Any:
        """An INSERT with ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
        raise NotImplementedError

    def batch(self, name: str, columns: Sequence[BatchColumn]) -> FromClause:
        """Rows bound as ONE parameter set, usable as a table: the SQL text is the same for
        any batch size, so one cached statement serves every batch."""
        raise NotImplementedError

    def bind_batch(self, name: str, columns: Sequence[BatchColumn], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        """The parameters of ``batch(name, columns)`` for these rows."""
        raise NotImplementedError

    def in_list(self, column: ColumnElement[Any], name: str, item: TypeEngine[Any]) -> ColumnElement[bool]:
        """``column IN <a list bound as one parameter>``."""
        raise NotImplementedError

    def bind_list(self, values: Sequence[Any]) -> Any:
        """The value of an ``in_list`` parameter."""
        raise NotImplementedError

    def json_from_text(self, value: ColumnElement[Any]) -> ColumnElement[Any]:
        """A JSON column's value from JSON text."""
        raise NotImplementedError

    def with_events(self, dml: Any, events: EventsSelect, *, notify: str | None = None) -> Any:
        """A write (``… RETURNING id, attempt, …``) that also writes its audit events (and, with
        ``notify``, wakes listeners on that channel), built once and cached by the caller."""
        raise NotImplementedError

    def execute_with_events(
        self, conn: Connection, stmt: Any, params: dict[str, Any], options: dict[str, Any], events: EventsRows
    ) -> list[Row[Any]]:
        """Execute a ``with_events`` statement: the change and its events, atomically."""
        raise NotImplementedError

    def notify(self, conn: Connection, channel: str, options: dict[str, Any]) -> None:
        """Wake the pollers listening on ``channel`` when this transaction commits."""

    def watcher(self, engine: Engine, channel: str, on_change: Callable[[], None]) -> Watcher | None:
        """What tells a poller that another process changed something (None: nothing can)."""
        return None

    @contextmanager
    def connect(self, engine: Engine, *, autocommit: bool, read: bool) -> Iterator[Connection]:
        """A transaction (see ``Database.connect``)."""
        with engine.begin() as conn:
            yield conn


class PostgresDialect(Dialect):
    """PostgreSQL through psycopg 3: arrays through ``unnest``, events in a data-modifying
    CTE (one round trip per write), ``pg_notify`` wake-ups, autocommit single statements."""

    name = "postgresql"
    autocommit_writes = True
    batch_migrations = False

    def insert(self, table: Table) -> Any:
        return postgresql.insert(table)

    def batch(self, name: str, columns: Sequence[BatchColumn]) -> FromClause:
        arrays = [bindparam(f"{name}_{col}", type_=postgresql.ARRAY(_pg_type(kind))) for col, kind in columns]
        return func.unnest(*arrays).table_valued(*[col for col, _ in columns]).render_derived(name=name)

    def bind_batch(self, name: str, columns: Sequence[BatchColumn], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        return {f"{name}_{col}": [row[i] for row in rows] for i, (col, _) in enumerate(columns)}

    def in_list(self, column: ColumnElement[Any], name: str, item: TypeEngine[Any]) -> ColumnElement[bool]:
        return column == any_(bindparam(name, type_=postgresql.ARRAY(_pg_type(item))))

    def bind_list(self, values: Sequence[Any]) -> Any:
        return list(values)

    def json_from_text(self, value: ColumnElement[Any]) -> ColumnElement[Any]:
        return cast(value, postgresql.JSONB)

    def with_events(self, dml: Any, events: EventsSelect, *, notify: str | None = None) -> Any:
        from simpleflow.db.schema import workflow_event

        changed = dml.cte("changed")
        written = postgresql.insert(workflow_event).from_select(_EVENT_COLUMNS, events(changed))
        columns: list[Any] = [*changed.c]
        if notify is not None:
            columns.append(func.pg_notify(notify, "").label("notified"))
        return select(*columns).add_cte(written.cte("events"))

    def execute_with_events(
        self, conn: Connection, stmt: Any, params: dict[str, Any], options: dict[str, Any], events: EventsRows
    ) -> list[Row[Any]]:
        return list(conn.execute(stmt, params, execution_options=options).all())

    def notify(self, conn: Connection, channel: str, options: dict[str, Any]) -> None:
        conn.execute(select(func.pg_notify(channel, "")), execution_options=options)

    def watcher(self, engine: Engine, channel: str, on_change: Callable[[], None]) -> Watcher | None:
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PgListener(url, channel, on_change)

    @contextmanager
    def connect(self, engine: Engine, *, autocommit: bool, read: bool) -> Iterator[Connection]:
        if autocommit or read:
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
        else:
            with engine.begin() as conn:
                yield conn


class SqliteDialect(Dialect):
    """SQLite: batches as one JSON parameter unpacked by ``json_each`` (in C), events
    inserted after the write in the same transaction (no round trips to save), the
    write lock taken at BEGIN, and this process's writers queued on a Python lock."""

    name = "sqlite"
    autocommit_writes = False
    batch_migrations = True

    def __init__(self, key: str) -> None:
        #: one lock per database file for this process's writing transactions: they hand
        #: over at once instead of sleeping 1-100 ms in SQLite's busy handler
        self.writers = _writer_lock(key)

    def insert(self, table: Table) -> Any:
        return sqlite.insert(table)

    def batch(self, name: str, columns: Sequence[BatchColumn]) -> FromClause:
        value: ColumnElement[Any] = column("value")
        fields = [func.json_extract(value, literal_column(f"'$[{i}]'")).label(col) for i, (col, _) in enumerate(columns)]
        return select(*fields).select_from(func.json_each(bindparam(name, type_=Text()))).subquery(name)

    def bind_batch(self, name: str, columns: Sequence[BatchColumn], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        return {name: json.dumps([[_sqlite_value(v) for v in row] for row in rows], ensure_ascii=False)}

    def in_list(self, column: ColumnElement[Any], name: str, item: TypeEngine[Any]) -> ColumnElement[bool]:
        return column.in_(select(literal_column("value")).select_from(func.json_each(bindparam(name, type_=Text()))))

    def bind_list(self, values: Sequence[Any]) -> Any:
        return json.dumps(list(values))

    def json_from_text(self, value: ColumnElement[Any]) -> ColumnElement[Any]:
        return value

    def with_events(self, dml: Any, events: EventsSelect, *, notify: str | None = None) -> Any:
        return dml

    def execute_with_events(
        self, conn: Connection, stmt: Any, params: dict[str, Any], options: dict[str, Any], events: EventsRows
    ) -> list[Row[Any]]:
        from simpleflow.db.schema import workflow_event

        rows = list(conn.execute(stmt, params, execution_options=options).all())
        written = events(rows)
        if written:
            conn.execute(workflow_event.insert().values(created_at=db_now()), written, execution_options=options)
        return rows

    def watcher(self, engine: Engine, channel: str, on_change: Callable[[], None]) -> Watcher | None:
        path = engine.url.database
        return SqliteWatcher(path, on_change) if path not in (None, "", ":memory:") else None

    @contextmanager
    def connect(self, engine: Engine, *, autocommit: bool, read: bool) -> Iterator[Connection]:
        if read:
            with engine.connect() as conn:
                conn.execution_options(simpleflow_read=True)  # see configure_sqlite: no BEGIN IMMEDIATE
                with conn.begin():
                    yield conn
        else:
            with self.writers, engine.begin() as conn:
                yield conn


def dialect_for(engine: Engine, key: str) -> Dialect:
    """The ``Dialect`` of an engine; ``ValueError`` for a database simpleflow does not support."""
    name = engine.dialect.name
    if name == "postgresql":
        if engine.dialect.driver != "psycopg":
            raise ValueError(f"PostgreSQL engines must use psycopg 3, not {engine.dialect.driver}")
        return PostgresDialect()
    if name == "sqlite":
        return SqliteDialect(key)
    raise ValueError(f"the {name} dialect is not supported")


def _pg_type(kind: TypeEngine[Any]) -> TypeEngine[Any]:
    """The PostgreSQL element type of a batch column."""
    if isinstance(kind, UTCDateTime):
        return postgresql.TIMESTAMP(timezone=True)
    if isinstance(kind, _Uuid):
        return postgresql.UUID(as_uuid=False)
    return kind


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


class _Uuid(String):
    """A run id in a batch (``uuid`` on PostgreSQL, text on SQLite)."""


#: the type of a batch column holding run ids
UUID_ITEM: TypeEngine[Any] = _Uuid()

_writer_locks: dict[str, threading.RLock] = {}
_writer_locks_guard = threading.Lock()


def _writer_lock(key: str) -> threading.RLock:
    """The process-wide lock of one SQLite database (the same file, whichever object opened it)."""
    with _writer_locks_guard:
        return _writer_locks.setdefault(key, threading.RLock())
