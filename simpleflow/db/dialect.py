"""The few places where PostgreSQL and SQLite differ, as SQL constructs.

Everything else in the store is written once with SQLAlchemy Core. Times that
decide leases and due work are always read from the database clock through
``db_now()`` and ``db_now_plus()``, never from a worker's clock.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime, Float, Integer, String, TypeDecorator
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
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

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the database layer")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # an expression result SQLite returned as text
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def json_type() -> TypeEngine[Any]:
    """JSON on SQLite, JSONB on PostgreSQL."""
    return JSON().with_variant(postgresql.JSONB(), "postgresql")


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
    from sqlalchemy import literal

    if isinstance(value, ColumnElement):
        return value
    return literal(float(value), Float())




def insert(dialect_name: str, table: Any) -> Any:
    """An INSERT that supports ``on_conflict_do_nothing`` / ``_do_update`` on this dialect."""
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
