"""The query plan of a hot statement. Hot statements run on the lean path (``simpleflow.db.lean``),
below SQLAlchemy's cursor events, so their SQL is read from the dialect's cache of compiled
statements and EXPLAINed with the same parameters on the raw connection."""

from __future__ import annotations

from typing import Any

from simpleflow.db.database import Database


def hot_plan(db: Database, contains: tuple[str, ...], params: dict[str, Any]) -> str:
    """The plan of the cached hot statement whose SQL contains every string of ``contains``."""
    hot = [v for v in db.dialect._lean.values() if v is not None]
    found = [v for v in hot if all(word in v.sql for word in contains)]
    assert len(found) == 1, [v.sql for v in found] or "no such hot statement was run"
    statement = found[0]
    explain = "EXPLAIN " if db.dialect.autocommit_writes else "EXPLAIN QUERY PLAN "
    with db.engine.connect() as conn:
        conn.begin()
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(explain + statement.sql, statement.params(params))
        plan = "\n".join(str(row[0] if db.dialect.autocommit_writes else row[-1]) for row in cursor.fetchall())
        conn.rollback()
    return plan
