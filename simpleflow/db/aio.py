"""An asyncio engine for ``AsyncClient``, from the same URLs and with the same set-up as ``Database``.

SQLAlchemy's asyncio extension runs the store's ordinary (synchronous) methods with
``await conn.run_sync(fn)``, so every statement is the one the ``Client`` runs.
PostgreSQL goes through psycopg 3's async mode, SQLite through ``aiosqlite``; both
need the ``async`` extra (``greenlet`` and ``aiosqlite``), imported only here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import exc
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import StaticPool

from simpleflow.core.errors import ConfigurationError
from simpleflow.db.database import (
    ACCEPTED_FORMS,
    SQLITE_BUSY_TIMEOUT_MS,
    Database,
    configure_sqlite,
    retry_or_raise,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")

INSTALL_HINT = "pip install 'simpleflow-db[async]'"


def _asyncio() -> Any:
    try:
        import sqlalchemy.ext.asyncio as extension
    except ImportError as error:
        raise ConfigurationError(
            f"AsyncClient needs SQLAlchemy's asyncio extension and an async driver ({error}); {INSTALL_HINT}"
        ) from None
    return extension


class AsyncDatabase:
    """An ``AsyncEngine`` plus the ``Database`` describing it (dialect, schema, wake-up key)."""

    def __init__(self, engine: AsyncEngine, db: Database, *, owns_engine: bool) -> None:
        self.engine = engine
        self.db = db
        self.owns_engine = owns_engine

    @classmethod
    def open(cls, target: object, *, schema: str | None = None, pool_size: int = 10) -> AsyncDatabase:
        """A URL string (owning its engine) or an existing ``AsyncEngine``."""
        extension = _asyncio()
        if isinstance(target, extension.AsyncEngine):
            return cls(target, Database.open(target.sync_engine, schema=schema), owns_engine=False)
        if not isinstance(target, str):
            raise ConfigurationError(
                f"cannot use {type(target).__name__!r} as a database for AsyncClient: expected a URL string or "
                f"a sqlalchemy.ext.asyncio.AsyncEngine; accepted URL forms: {ACCEPTED_FORMS}"
            )
        parsed = Database.open(target, schema=schema, pool_size=pool_size)  # checks the URL, connects nothing
        try:
            opener = _OPENERS[parsed.engine.url.drivername]
            engine = opener(extension, parsed.engine.url, pool_size)
        finally:
            parsed.close()
        # The key of the URL (not of the engine): in-process pollers opened on the same URL wake up.
        db = Database(engine.sync_engine, schema=parsed.schema, owns_engine=False, key=parsed.key)
        return cls(engine, db, owns_engine=True)

    async def close(self) -> None:
        if self.owns_engine:
            await self.engine.dispose()

    async def run(
        self,
        fn: Callable[[Connection], T],
        *,
        autocommit: bool = False,
        read: bool = False,
        patience: float = 5.0,
        what: str = "database operation",
    ) -> T:
        """``Database.run`` for asyncio: ``fn`` in one transaction, on the driver's connection
        through ``run_sync``, retrying transient failures for ``patience`` seconds."""
        limit = time.monotonic() + patience
        delay = 0.05
        while True:
            try:
                async with self.db.dialect.connect_async(self.engine, autocommit=autocommit, read=read) as conn:
                    return await conn.run_sync(self._as_tenant(fn))
            except (exc.DBAPIError, exc.TimeoutError) as error:
                retry_or_raise(error, limit, delay, what)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def run_on(self, conn: AsyncConnection, fn: Callable[[Connection], T]) -> T:
        """``fn`` on the caller's connection, in the caller's transaction."""
        return await conn.run_sync(self._as_tenant(fn))

    def _as_tenant(self, fn: Callable[[Connection], T]) -> Callable[[Connection], T]:
        """``fn`` preceded by the session's tenant setting (``Database.for_tenant``), if any."""
        tenant = self.db.tenant
        if tenant is None:
            return fn

        def scoped(conn: Connection) -> T:
            self.db.dialect.set_tenant(conn, tenant)
            return fn(conn)

        return scoped


def _open_postgres(extension: Any, url: URL, pool_size: int) -> AsyncEngine:
    engine: AsyncEngine = extension.create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=False, pool_recycle=1800
    )
    return engine


def _open_sqlite(extension: Any, url: URL, pool_size: int) -> AsyncEngine:
    url = url.set(drivername="sqlite+aiosqlite")
    if url.database in (None, "", ":memory:"):
        engine: AsyncEngine = extension.create_async_engine(url, poolclass=StaticPool)
    else:
        engine = extension.create_async_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, pool_size=pool_size, max_overflow=pool_size
        )
    configure_sqlite(engine.sync_engine)  # WAL, busy timeout, BEGIN IMMEDIATE: as for the threaded engine
    return engine


#: the asyncio engine for each URL ``Database.open`` accepts (by the driver it chose)
_OPENERS: dict[str, Callable[[Any, URL, int], AsyncEngine]] = {
    "postgresql+psycopg": _open_postgres,
    "sqlite": _open_sqlite,
}


def check_connection(conn: object) -> None:
    """``execute(connection=…)`` of ``AsyncClient`` takes the caller's ``AsyncConnection``."""
    if not isinstance(conn, _asyncio().AsyncConnection):
        raise ConfigurationError(
            f"connection must be a sqlalchemy.ext.asyncio.AsyncConnection in an open transaction, "
            f"got {type(conn).__name__}"
        )
