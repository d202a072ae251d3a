"""The SQL half of the database seam: column types and clock functions compiled per database.

``db_now()`` and ``db_now_plus(seconds)`` read the database's clock (leases and
due times are never decided by a worker's clock); ``UTCDateTime`` is a
``timestamptz`` on PostgreSQL and sortable UTC text on SQLite; JSON is JSONB on
PostgreSQL and TEXT on SQLite; ``new_uuid()`` is the server default of run ids.
The behaviour half (batches, events, notifications, connections) is
``simpleflow.db.dialect``. Nothing else asks which database it talks to.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    TypeDecorator,
    literal,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import JSON, TypeEngine

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
    return f"strftime('{SQLITE_TIME_FORMAT}', 'now', printf('%+.6f seconds', {compiler.process(seconds, **kw)}))"


class at_or_before(FunctionElement[bool]):
    """``time_column <= time_value``, compared as times. SQLite keeps times as text, and a row
    written by plain SQL may hold ``datetime('now')``'s ``YYYY-MM-DD HH:MM:SS``, three
    fraction digits, a ``T`` separator: compare those with ``julianday`` (after a text
    range a day wide that lets the index narrow the scan), never as text."""

    type = Boolean()
    inherit_cache = True
    name = "at_or_before"


@compiles(at_or_before, "postgresql")
def _pg_at_or_before(element: at_or_before, compiler: SQLCompiler, **kw: Any) -> str:
    column, value = (compiler.process(c, **kw) for c in element.clauses)
    return f"({column} <= {value})"


@compiles(at_or_before, "sqlite")
def _sqlite_at_or_before(element: at_or_before, compiler: SQLCompiler, **kw: Any) -> str:
    column, value = (compiler.process(c, **kw) for c in element.clauses)
    return (
        f"({column} <= strftime('%Y-%m-%dT%H:%M:%S', {value}, '+1 day') AND julianday({column}) <= julianday({value}))"
    )


class same_time(FunctionElement[bool]):
    """``time_column = time_value``, compared as times (see ``at_or_before``)."""

    type = Boolean()
    inherit_cache = True
    name = "same_time"


@compiles(same_time, "postgresql")
def _pg_same_time(element: same_time, compiler: SQLCompiler, **kw: Any) -> str:
    column, value = (compiler.process(c, **kw) for c in element.clauses)
    return f"({column} = {value})"


@compiles(same_time, "sqlite")
def _sqlite_same_time(element: same_time, compiler: SQLCompiler, **kw: Any) -> str:
    column, value = (compiler.process(c, **kw) for c in element.clauses)
    return f"(julianday({column}) = julianday({value}))"


class minute_of(FunctionElement[str]):
    """A UTC time column truncated to its minute, as text ``YYYY-MM-DD HH:MM`` on both databases."""

    type = String()
    inherit_cache = True
    name = "minute_of"


@compiles(minute_of, "postgresql")
def _pg_minute_of(element: minute_of, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    return f"to_char({compiler.process(column, **kw)} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')"


@compiles(minute_of, "sqlite")
def _sqlite_minute_of(element: minute_of, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses  # stored as sortable UTC text: 'YYYY-MM-DD HH:MM:SS.fff'
    return f"substr({compiler.process(column, **kw)}, 1, 16)"


def seconds(value: float | ColumnElement[Any]) -> ColumnElement[float]:
    """A float parameter for ``db_now_plus`` (typed so both drivers bind it as a number)."""
    if isinstance(value, ColumnElement):
        return value
    return literal(float(value), Float())


class UuidText(String):
    """A run id in a batch (``uuid`` on PostgreSQL, text on SQLite)."""


#: the type of a batch column holding run ids
UUID_ITEM: TypeEngine[Any] = UuidText()


# -- helpers of the Dialect classes ------------------------------------------------------


def pg_type(kind: TypeEngine[Any]) -> TypeEngine[Any]:
    """The PostgreSQL element type of a batch column."""
    if isinstance(kind, UTCDateTime):
        return postgresql.TIMESTAMP(timezone=True)
    if isinstance(kind, UuidText):
        return postgresql.UUID(as_uuid=False)
    return kind


def sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


_writer_locks: dict[str, threading.RLock] = {}
_writer_locks_guard = threading.Lock()


def writer_lock(key: str) -> threading.RLock:
    """The process-wide lock of one SQLite database (the same file, whichever object opened it)."""
    with _writer_locks_guard:
        return _writer_locks.setdefault(key, threading.RLock())
