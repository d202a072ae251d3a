"""Statements compiled once and run on the raw DBAPI connection of an open transaction.

SQLAlchemy spends tens of microseconds per ``Connection.execute`` (execution context,
parameter processing, cursor result set-up) around SQLite calls that take a few
microseconds; on the hot writes of a SQLite database (submit, claim, outcomes, step
records) that overhead was most of the cost. A ``LeanStatement`` is the same Core
statement compiled once for the connection's dialect: each execution binds the
parameters in the compiled order (with the same bind processors and the statement's
own literal values), runs on the raw connection inside the caller's transaction and
returns rows with the same attribute names and result processing. A DBAPI error is
wrapped as SQLAlchemy wraps it, so the retry rules (``db.database.is_transient``) hold.

Both dialects use it for ``Dialect.execute_hot`` (PostgreSQL with the schema translated
into the SQL once); a statement that cannot run this way (an IN list bound per execution)
runs through SQLAlchemy as usual.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, exc
from sqlalchemy.engine.interfaces import Dialect as SaDialect

_EMPTY: dict[str, Any] = {}


class LeanStatement:
    """One Core statement compiled for one dialect, executed on raw DBAPI connections."""

    def __init__(
        self, stmt: Any, dialect: SaDialect, sample: dict[str, Any], translate: dict[Any, Any] | None = None
    ) -> None:
        compiled = stmt.compile(dialect=dialect, schema_translate_map=translate)
        expanding = {name for name, b in compiled.binds.items() if b.expanding}
        if expanding & set(sample):
            raise ValueError("an IN list bound per execution")
        # the IN lists fixed in the statement are expanded once, as SQLAlchemy does per execution
        state = compiled.construct_expanded_state(dict.fromkeys(_required(compiled), None) | sample)
        processors = state.processors
        self.sql: str = state.statement
        if translate:
            self.sql = compiled.preparer._render_schema_translates(self.sql, translate)
        #: positional (qmark, numeric) or named (pyformat) parameters
        self._named = state.positiontup is None
        names = list(state.parameters) if self._named else list(state.positiontup or ())
        self._binds: list[tuple[str, Any, Any]] = []
        for name in names:
            default = state.parameters.get(name)
            processor = processors.get(name)
            if processor is not None and name not in sample:
                default = processor(default)
            self._binds.append((name, default, processor))
        columns = compiled._result_columns
        self._row: Any = namedtuple("LeanRow", [c[0] for c in columns], rename=True) if columns else None
        self._results = [c[3]._cached_result_processor(dialect, None) for c in columns]
        self._process = any(p is not None for p in self._results)

    def params(self, given: dict[str, Any]) -> Any:
        out = []
        for name, default, processor in self._binds:
            if name in given:
                value = given[name]
                out.append(value if processor is None else processor(value))
            else:
                out.append(default)
        if self._named:
            return dict(zip((b[0] for b in self._binds), out, strict=True))
        return out

    def execute(self, conn: Connection, params: dict[str, Any] | None = None) -> list[Any]:
        """Run on ``conn``'s DBAPI connection, in its open transaction; the returned rows."""
        values = self.params(params or _EMPTY)
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            cursor.execute(self.sql, values)
            fetched = cursor.fetchall() if self._row is not None else []
        except Exception as error:
            dbapi = conn.dialect.loaded_dbapi
            if not isinstance(error, dbapi.Error):
                raise
            lost = conn.dialect.is_disconnect(error, raw, cursor)
            if lost:  # as SQLAlchemy does: the pool must not hand this connection out again
                conn.invalidate(error)
            raise exc.DBAPIError.instance(self.sql, values, error, dbapi.Error, connection_invalidated=lost) from error
        finally:
            cursor.close()
        if self._row is None:
            return []
        make = self._row._make
        if not self._process:
            return [make(r) for r in fetched]
        procs = self._results
        return [make([v if p is None else p(v) for p, v in zip(procs, r, strict=True)]) for r in fetched]


def _required(compiled: Any) -> Sequence[str]:
    return [name for name, b in compiled.binds.items() if b.required and not b.expanding]
