"""The database seam: every behaviour that differs between PostgreSQL and SQLite.

Everything else is written once with SQLAlchemy Core. A ``Dialect`` object per
database owns the differences: how a batch of rows is bound as one parameter,
how a write carries its audit events, upsert forms, wake-up notifications,
which connections may autocommit and how SQLite's writers queue. Column types
and clock functions compiled per database are in ``simpleflow.db.dialect_sql``, how an
asyncio connection opens in ``simpleflow.db.dialect_async``. Nothing outside these three
modules asks which database it talks to.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CTE,
    BigInteger,
    Connection,
    Engine,
    FromClause,
    Row,
    Select,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    column,
    func,
    literal_column,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from simpleflow.core.errors import ConfigurationError
from simpleflow.db.dialect_async import AsyncConnect, PostgresAsyncConnect, SqliteAsyncConnect
from simpleflow.db.dialect_sql import db_now, pg_type, sqlite_value, writer_lock
from simpleflow.db.lean import LeanStatement
from simpleflow.db.listen import PgListener, SqliteWatcher
from simpleflow.db.schema import DEFAULT_TENANT, TENANT_TABLES, workflow_event

if TYPE_CHECKING:  # the asyncio extension needs greenlet (the "async" extra): imported by its users only
    pass

# -- the seam -------------------------------------------------------------------------------

#: a batch column: its name and its SQL type
BatchColumn = tuple[str, TypeEngine[Any]]
#: builds the audit events of a write from the CTE of changed rows (PostgreSQL)
EventsSelect = Callable[[CTE], Select[Any]]
#: builds the audit events of a write from its returned rows (SQLite)
EventsRows = Callable[[Sequence[Row[Any]]], list[dict[str, Any]]]
#: builds more data-modifying CTEs from the CTE of changed rows, embedded in the write (PostgreSQL)
ThenCtes = Callable[[CTE], Sequence[CTE]]
#: the same work as ``ThenCtes`` as statements run after the write, in its transaction (SQLite)
ThenRows = Callable[[Sequence[Row[Any]]], None]

Watcher = PgListener | SqliteWatcher


def _json_field(i: int) -> ColumnElement[Any]:
    return func.json_extract(column("value"), literal_column(f"'$[{i}]'"))


#: a batch of audit events as one JSON parameter, unpacked by SQLite's json_each (built once)
_INSERT_EVENTS_SQLITE = workflow_event.insert().from_select(
    ["run_id", "event_type", "worker_id", "attempt", "detail", "tenant", "created_at"],
    select(*(_json_field(i) for i in range(6)), db_now()).select_from(func.json_each(bindparam("ev", type_=Text()))),
)

_EVENT_COLUMNS = ["run_id", "event_type", "worker_id", "attempt", "detail", "created_at"]


class Dialect(AsyncConnect):
    """What differs between the databases simpleflow runs on; one instance per ``Database``."""

    name: str
    #: may a single self-contained statement run on an autocommit connection?
    autocommit_writes: bool
    #: Alembic must rebuild tables to alter them (SQLite's batch mode)
    batch_migrations: bool
    #: simpleflow's tables live in a schema of their own (``?schema=``)
    has_schemas: bool

    def __init__(self) -> None:
        #: hot statements compiled once, run on the raw DBAPI connection (``db.lean``)
        self._lean: dict[tuple[Any, frozenset[str]], LeanStatement | None] = {}

    def key(self, engine: Engine, schema: str | None) -> str:
        """Identifies the database for in-process wake-ups (same server and schema, same file)."""
        return f"{engine.url!r}/{schema}"

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

    def rows_per_group(self, groups: FromClause, head: Select[Any], table: Table) -> FromClause:
        """For each row of ``groups``, the rows of ``head`` (a LIMITed SELECT of columns of
        ``table``, correlated to ``groups``), as one FROM with ``head``'s columns."""
        raise NotImplementedError

    def with_events(
        self, dml: Any, events: EventsSelect, *, notify: str | None = None, then: ThenCtes | None = None
    ) -> Any:
        """A write (``… RETURNING id, attempt, …``) that also writes its audit events (and, with
        ``notify``, wakes listeners on that channel), built once and cached by the caller.
        ``then``: more writes that follow from the changed rows, in the same statement where
        the database allows it (``execute_with_events(then=…)`` runs them elsewhere)."""
        raise NotImplementedError

    def execute_with_events(
        self,
        conn: Connection,
        stmt: Any,
        params: dict[str, Any],
        options: dict[str, Any],
        events: EventsRows,
        *,
        then: ThenRows | None = None,
    ) -> list[Row[Any]]:
        """Execute a ``with_events`` statement: the change and its events, atomically; ``then``
        runs the follow-up writes ``with_events(then=…)`` could not embed, in the same transaction."""
        raise NotImplementedError

    def execute_hot(self, conn: Connection, stmt: Any, params: dict[str, Any], options: dict[str, Any]) -> list[Any]:
        """Execute a statement of a hot path (built once and cached by the caller); its rows.
        Compiled once and run on the raw DBAPI connection (``db.lean``) where it can be."""
        key = (stmt, frozenset(params))
        if key in self._lean:
            lean = self._lean[key]
        else:
            try:
                lean = LeanStatement(stmt, conn.dialect, params, options.get("schema_translate_map"))
            except ValueError:
                lean = None
            self._lean[key] = lean
        if lean is None:
            return list(conn.execute(stmt, params, execution_options=options).all())
        return lean.execute(conn, params)

    def notify(self, conn: Connection, channel: str, options: dict[str, Any]) -> None:
        """Wake the pollers listening on ``channel`` when this transaction commits."""

    def set_tenant(self, conn: Connection, tenant: str) -> None:
        """Tell the database which tenant this session acts for (PostgreSQL: the
        ``simpleflow.tenant`` setting the row-level security policies read)."""

    def grant_tenant_role(self, conn: Connection, schema: str | None, role: str) -> list[str]:
        """Grant ``role`` what a tenant-bound client needs, row-level security deciding which
        rows; the statements run."""
        raise ConfigurationError(
            "this database has no roles or row-level security: tenants are kept apart by the library only"
        )

    def lock_until_commit(self, conn: Connection, key: int) -> None:
        """Take a lock named by ``key`` that other processes wait for until this transaction
        ends (SQLite: the write lock taken at BEGIN already serializes every writer)."""

    def watcher(self, engine: Engine, channel: str, on_change: Callable[[], None]) -> Watcher | None:
        """What tells a poller that another process changed something (None: nothing can)."""
        return None

    @contextmanager
    def connect(self, engine: Engine, *, autocommit: bool, read: bool) -> Iterator[Connection]:
        """A transaction (see ``Database.connect``)."""
        with engine.begin() as conn:
            yield conn

    def keep(self, conn: Connection) -> None:
        """Prepare a connection its caller keeps for many ``on_kept`` uses (a workflow's records)."""

    @contextmanager
    def on_kept(self, conn: Connection, *, read: bool) -> Iterator[Connection]:
        """One self-contained statement on a kept connection: as ``connect`` would run it
        (PostgreSQL: autocommit; SQLite: its own transaction), without a pool checkout."""
        yield conn


class PostgresDialect(PostgresAsyncConnect, Dialect):
    """PostgreSQL through psycopg 3: arrays through ``unnest``, events in a data-modifying
    CTE (one round trip per write), ``pg_notify`` wake-ups, autocommit single statements."""

    name = "postgresql"
    autocommit_writes = True
    batch_migrations = False
    has_schemas = True

    def insert(self, table: Table) -> Any:
        return postgresql.insert(table)

    def batch(self, name: str, columns: Sequence[BatchColumn]) -> FromClause:
        arrays = [bindparam(f"{name}_{col}", type_=postgresql.ARRAY(pg_type(kind))) for col, kind in columns]
        return func.unnest(*arrays).table_valued(*[col for col, _ in columns]).render_derived(name=name)

    def bind_batch(self, name: str, columns: Sequence[BatchColumn], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        return {f"{name}_{col}": [row[i] for row in rows] for i, (col, _) in enumerate(columns)}

    def in_list(self, column: ColumnElement[Any], name: str, item: TypeEngine[Any]) -> ColumnElement[bool]:
        return column == any_(bindparam(name, type_=postgresql.ARRAY(pg_type(item))))

    def bind_list(self, values: Sequence[Any]) -> Any:
        return list(values)

    def json_from_text(self, value: ColumnElement[Any]) -> ColumnElement[Any]:
        return cast(value, postgresql.JSONB)

    def rows_per_group(self, groups: FromClause, head: Select[Any], table: Table) -> FromClause:
        lateral = head.lateral("head")
        return select(*lateral.c).select_from(groups.join(lateral, true())).subquery("heads")

    def with_events(
        self, dml: Any, events: EventsSelect, *, notify: str | None = None, then: ThenCtes | None = None
    ) -> Any:
        changed = dml.cte("changed")
        source = events(changed)
        if "tenant" in changed.c:  # the write returns its rows' tenant: the events carry it
            source = source.add_columns(changed.c.tenant)
        names = [*_EVENT_COLUMNS, "tenant"] if "tenant" in changed.c else _EVENT_COLUMNS
        written = postgresql.insert(workflow_event).from_select(names, source)
        columns: list[Any] = [*changed.c]
        if notify is not None:
            columns.append(func.pg_notify(notify, "").label("notified"))
        stmt = select(*columns).add_cte(written.cte("events"))
        return stmt.add_cte(*then(changed)) if then is not None else stmt

    def execute_with_events(
        self,
        conn: Connection,
        stmt: Any,
        params: dict[str, Any],
        options: dict[str, Any],
        events: EventsRows,
        *,
        then: ThenRows | None = None,
    ) -> list[Row[Any]]:
        return self.execute_hot(conn, stmt, params, options)

    def notify(self, conn: Connection, channel: str, options: dict[str, Any]) -> None:
        conn.execute(select(func.pg_notify(channel, "")), execution_options=options)

    def set_tenant(self, conn: Connection, tenant: str) -> None:
        # For the session, not the transaction: autocommit connections run one statement each.
        conn.execute(select(func.set_config("simpleflow.tenant", bindparam("t", tenant, type_=Text()), False)))

    def grant_tenant_role(self, conn: Connection, schema: str | None, role: str) -> list[str]:
        who = '"' + role.replace('"', '""') + '"'
        where = f'"{schema}".' if schema else ""
        tenant_tables = ", ".join(where + t.name for t in TENANT_TABLES)
        statements = [
            *([f'GRANT USAGE ON SCHEMA "{schema}" TO {who}'] if schema else []),
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {tenant_tables} TO {who}",
            # global, not tenant data: the registry, the flow-control limits (read by stats), and
            # the limits' starts (row-level security shows a tenant its own)
            f"GRANT SELECT ON {where}workflow_registry, {where}workflow_limit, {where}workflow_limit_start TO {who}",
            f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema or "public"}" TO {who}',
        ]
        for statement in statements:
            conn.exec_driver_sql(statement)
        return statements

    def lock_until_commit(self, conn: Connection, key: int) -> None:
        conn.execute(select(func.pg_advisory_xact_lock(bindparam("key", key, type_=BigInteger()))))

    def keep(self, conn: Connection) -> None:
        conn.execution_options(isolation_level="AUTOCOMMIT")

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


class SqliteDialect(SqliteAsyncConnect, Dialect):
    """SQLite: batches as one JSON parameter unpacked by ``json_each`` (in C), events
    inserted after the write in the same transaction (no round trips to save), the
    write lock taken at BEGIN, and this process's writers queued on a Python lock."""

    name = "sqlite"
    autocommit_writes = False
    batch_migrations = True
    has_schemas = False

    def __init__(self, key: str) -> None:
        super().__init__()
        #: one lock per database file for this process's writing transactions: they hand
        #: over at once instead of sleeping 1-100 ms in SQLite's busy handler
        self.writers = writer_lock(key)

    def key(self, engine: Engine, schema: str | None) -> str:
        return sqlite_key(engine)

    def insert(self, table: Table) -> Any:
        return sqlite.insert(table)

    def batch(self, name: str, columns: Sequence[BatchColumn]) -> FromClause:
        value: ColumnElement[Any] = column("value")
        fields = [
            func.json_extract(value, literal_column(f"'$[{i}]'")).label(col) for i, (col, _) in enumerate(columns)
        ]
        return select(*fields).select_from(func.json_each(bindparam(name, type_=Text()))).subquery(name)

    def bind_batch(self, name: str, columns: Sequence[BatchColumn], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        return {name: json.dumps([[sqlite_value(v) for v in row] for row in rows], ensure_ascii=False)}

    def in_list(self, column: ColumnElement[Any], name: str, item: TypeEngine[Any]) -> ColumnElement[bool]:
        return column.in_(select(literal_column("value")).select_from(func.json_each(bindparam(name, type_=Text()))))

    def bind_list(self, values: Sequence[Any]) -> Any:
        return json.dumps(list(values))

    def json_from_text(self, value: ColumnElement[Any]) -> ColumnElement[Any]:
        return value

    def rows_per_group(self, groups: FromClause, head: Select[Any], table: Table) -> FromClause:
        # No LATERAL: join the table again on "id IN (the group's LIMITed ids)", which SQLite
        # runs as one correlated list subquery per group row.
        again = table.alias("heads_of")
        ids = head.with_only_columns(table.c.id)
        columns = [again.c[c.name] for c in head.selected_columns]
        return select(*columns).select_from(groups.join(again, again.c.id.in_(ids))).subquery("heads")

    def with_events(
        self, dml: Any, events: EventsSelect, *, notify: str | None = None, then: ThenCtes | None = None
    ) -> Any:
        return dml

    def execute_with_events(
        self,
        conn: Connection,
        stmt: Any,
        params: dict[str, Any],
        options: dict[str, Any],
        events: EventsRows,
        *,
        then: ThenRows | None = None,
    ) -> list[Row[Any]]:
        rows = self.execute_hot(conn, stmt, params, options)
        written = events(rows)
        if written:  # all of them as ONE JSON parameter: no per-row parameter processing
            tenants = {r.id: r.tenant for r in rows} if "tenant" in rows[0]._fields else {}
            batch = [
                [
                    e["run_id"],
                    e["event_type"],
                    e["worker_id"],
                    e["attempt"],
                    e["detail"],
                    tenants.get(e["run_id"], DEFAULT_TENANT),
                ]
                for e in written
            ]
            self.execute_hot(conn, _INSERT_EVENTS_SQLITE, {"ev": json.dumps(batch, ensure_ascii=False)}, options)
        if then is not None:  # SQLite writes in a transaction, under its one write lock
            then(rows)
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

    @contextmanager
    def on_kept(self, conn: Connection, *, read: bool) -> Iterator[Connection]:
        conn.execution_options(simpleflow_read=read)  # see configure_sqlite: reads begin deferred
        if read:
            with conn.begin():
                yield conn
        else:
            with self.writers, conn.begin():
                yield conn


def dialect_for(engine: Engine) -> Dialect:
    """The ``Dialect`` of an engine; ``ValueError`` for a database simpleflow does not support."""
    name = engine.dialect.name
    if name == "postgresql":
        if engine.dialect.driver != "psycopg":
            raise ValueError(f"PostgreSQL engines must use psycopg 3, not {engine.dialect.driver}")
        return PostgresDialect()
    if name == "sqlite":
        return SqliteDialect(sqlite_key(engine))
    raise ValueError(f"the {name} dialect is not supported")


def sqlite_key(engine: Engine) -> str:
    """A SQLite database's identity: its absolute path (in-memory: the engine itself)."""
    database = engine.url.database or ":memory:"
    if database == ":memory:":
        return f"sqlite-memory-{id(engine)}"
    return "sqlite:" + os.path.abspath(database)


def uses_batch_migrations(connection: Connection) -> bool:
    """Alembic's ``render_as_batch`` for this connection's database."""
    return connection.dialect.name == "sqlite"
