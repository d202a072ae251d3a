"""The database seam, asyncio side: how ``AsyncClient`` opens a connection on each database
(mixed into the ``Dialect`` classes of ``simpleflow.db.dialect``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the asyncio extension needs greenlet (the "async" extra): imported by its users only
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class AsyncConnect:
    """Any database: one transaction on an asyncio engine."""

    @asynccontextmanager
    async def connect_async(
        self, engine: AsyncEngine, *, autocommit: bool, read: bool
    ) -> AsyncIterator[AsyncConnection]:
        """``connect`` on an asyncio engine (``AsyncClient``)."""
        async with engine.begin() as conn:
            yield conn


class PostgresAsyncConnect:
    """PostgreSQL (psycopg's async mode): reads and single statements autocommit, as ``connect``."""

    @asynccontextmanager
    async def connect_async(
        self, engine: AsyncEngine, *, autocommit: bool, read: bool
    ) -> AsyncIterator[AsyncConnection]:
        if autocommit or read:
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
        else:
            async with engine.begin() as conn:
                yield conn


class SqliteAsyncConnect:
    """SQLite (aiosqlite): reads begin deferred, writes take the write lock at BEGIN."""

    @asynccontextmanager
    async def connect_async(
        self, engine: AsyncEngine, *, autocommit: bool, read: bool
    ) -> AsyncIterator[AsyncConnection]:
        # No process-wide writer lock here (it would block the event loop): the write lock
        # taken at BEGIN IMMEDIATE, waited for in the driver's thread, orders the writers.
        if read:
            async with engine.connect() as conn:
                await conn.execution_options(simpleflow_read=True)
                async with conn.begin():
                    yield conn
        else:
            async with engine.begin() as conn:
                yield conn
