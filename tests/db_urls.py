"""Database URL helpers the tests share. (Not in conftest.py: ``from conftest import …`` is
ambiguous once a test folder has a conftest.py of its own.)"""

from __future__ import annotations

from typing import Any


def _connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def drop_schema(url: str, schema: str) -> None:
    """``DROP SCHEMA … CASCADE``; connections a test leaked are terminated if they block it."""
    with _connect(url) as conn:
        conn.execute("SET lock_timeout = '5s'")
        try:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        except Exception:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def split_db_url(url: str) -> tuple[str, str | None]:
    """A ``db_url`` as (SQLAlchemy URL an application would use, schema or None)."""
    if url.startswith("sqlite:"):
        return url, None
    base, _, query = url.partition("?")
    schema = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("schema")
    return "postgresql+psycopg://" + base.split("://", 1)[1], schema
