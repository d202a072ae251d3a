"""``AsyncClient``: the producer API for asyncio services (FastAPI, aiohttp, …).

The same builder, checks, errors and SQL as ``Client`` (``simpleflow.producer`` and the
store); only the waiting differs: each call runs the store's statements on the driver's
asyncio connection (``await conn.run_sync(...)``), so the event loop never blocks.
Workers stay threaded (``Poller``). Needs the ``async`` extra.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from simpleflow.core.errors import WaitTimeout
from simpleflow.core.models import RunEvent, RunInfo, StepInfo
from simpleflow.core.validation import DEFAULT_PAYLOAD_LIMIT, check_duration, check_id, check_int, check_tenant
from simpleflow.db.aio import AsyncDatabase, check_connection
from simpleflow.db.notify import local_bus
from simpleflow.db.schema import DEFAULT_TENANT
from simpleflow.producer import (
    Builder,
    deliver,
    event_timeout_message,
    new_runs,
    read_event,
    read_events,
    read_steps,
    result_of,
    run_filters,
    submit_span,
    traced,
    wait_timeout_message,
)
from simpleflow.store import Store
from simpleflow.store.new_runs import NewRun

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")


class AsyncSubmission(Builder):
    """A run being built: ``await client.submit(type, payload).with_…().execute()``."""

    def __init__(self, client: AsyncClient, type: str, payload: Any) -> None:
        super().__init__(type, payload, client.payload_limit)
        self._client = client

    async def execute(self, connection: AsyncConnection | None = None) -> str:
        """Insert the run and return its id.

        With ``connection`` (an ``AsyncConnection`` in an open transaction), the insert
        joins the caller's transaction: the run exists only if the caller commits.
        """
        return (await self._client._insert([self.to_new_run()], connection))[0]

    async def execute_created(self, connection: AsyncConnection | None = None) -> tuple[str, bool]:
        """Like ``execute()``, and say whether this call created the run."""
        new = self.to_new_run()
        run_id = (await self._client._insert([new], connection))[0]
        return run_id, run_id == new.id


class AsyncClient:
    """Producer API for asyncio code. Owns its engine when built from a URL.

    ``AsyncClient("postgresql://…")`` (psycopg's async mode) or ``AsyncClient("sqlite:///…")``
    (aiosqlite), or an existing ``sqlalchemy.ext.asyncio.AsyncEngine``. ``await close()``,
    or ``async with AsyncClient(url) as client``.
    """

    def __init__(
        self,
        database: str | AsyncEngine,
        *,
        schema: str | None = None,
        tenant: str | None = None,
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
    ) -> None:
        chosen = None if tenant is None else check_tenant(tenant)
        self.payload_limit = check_int(payload_limit, "payload_limit", 1, 256 * 1024 * 1024)
        self.adb = AsyncDatabase.open(database, schema=schema)
        if chosen is not None:  # sessions act for the tenant (PostgreSQL row-level security)
            self.adb.db = self.adb.db.for_tenant(chosen)
        self.db = self.adb.db
        #: the tenant this client acts for, as ``Client.tenant``
        self.tenant = DEFAULT_TENANT if chosen is None else chosen
        self.store = Store(self.db, self.tenant)

    # -- lifecycle ------------------------------------------------------------------

    async def close(self) -> None:
        """Dispose of the engine if this client created it."""
        await self.adb.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- submitting -----------------------------------------------------------------

    def submit(self, type: str, payload: Any = None) -> AsyncSubmission:
        """Start building a run of ``type``; ``await …execute()`` inserts it."""
        return AsyncSubmission(self, type, payload)

    async def submit_many(
        self,
        submissions: Sequence[AsyncSubmission | tuple[str, Any]],
        connection: AsyncConnection | None = None,
    ) -> list[str]:
        """Insert many runs in one statement and return their ids in order (see ``Client.submit_many``)."""
        runs = new_runs(submissions, self.submit)
        if not runs:
            return []
        return await self._insert(runs, connection)

    async def _insert(self, runs: list[NewRun], connection: AsyncConnection | None) -> list[str]:
        if connection is not None:
            check_connection(connection)
        with submit_span(runs, self.tenant) as span:
            runs = traced(runs, span)
            insert = self.store.runs.insert_runs
            if connection is not None:
                ids = await self.adb.run_on(connection, lambda conn: insert(conn, runs))
            else:
                ids = await self.adb.run(
                    lambda conn: insert(conn, runs),
                    autocommit=len(runs) == 1 and self.db.dialect.autocommit_writes,
                )
            if len(ids) == 1:
                span.set("simpleflow.run.id", ids[0])
        local_bus.publish(self.db.key)
        return ids

    # -- reading ----------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunInfo:
        """The run, or ``NotFound``."""
        run_id = check_id(run_id)
        return await self.adb.run(lambda conn: self.store.runs.get_run(conn, run_id), read=True)

    async def list_runs(
        self,
        type: str | None = None,
        status: str | None = None,
        idempotency_key: str | None = None,
        limit: int = 50,
        offset: int = 0,
        parent_id: str | None = None,
    ) -> list[RunInfo]:
        """Runs matching every given filter, newest first (``parent_id``: the children of that run)."""
        filters = run_filters(type, status, idempotency_key, limit, offset, parent_id)
        return await self.adb.run(lambda conn: self.store.runs.list_runs(conn, **filters), read=True)

    async def get_events(self, run_id: str) -> list[RunEvent]:
        """The run's audit trail, oldest first (``NotFound`` if the run does not exist)."""
        return await self.adb.run(read_events(self.store, run_id), read=True)

    async def get_steps(self, run_id: str) -> list[StepInfo]:
        """The recorded steps, timers, signals and values of a workflow run, in order."""
        return await self.adb.run(read_steps(self.store, run_id), read=True)

    async def wait(self, run_id: str, timeout: timedelta | float = timedelta(seconds=30)) -> RunInfo:
        """Until the run is finished (without blocking the event loop); ``WaitTimeout`` otherwise."""
        run_id = check_id(run_id)
        timeout = check_duration(timeout, "timeout")
        deadline = time.monotonic() + timeout.total_seconds()
        pause = 0.005
        while True:
            info = await self.get_run(run_id)
            if info.is_terminal:
                return info
            if time.monotonic() >= deadline:
                raise WaitTimeout(wait_timeout_message(info, timeout))
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, 0.25)

    async def get_event(self, run_id: str, key: str, timeout: timedelta | float = timedelta(seconds=30)) -> Any:
        """The latest value the run published under ``key`` (see ``Client.get_event``), waiting
        without blocking the event loop; ``WaitTimeout``, ``NotFound``."""
        read = read_event(self.store, run_id, key)
        timeout = check_duration(timeout, "timeout")
        deadline = time.monotonic() + timeout.total_seconds()
        pause = 0.005
        while True:
            found, value = await self.adb.run(read, read=True)
            if found:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(event_timeout_message(run_id, key, timeout))
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 1.5, 0.25)

    @overload
    async def get_result(self, run_id: str, model: type[T]) -> T: ...
    @overload
    async def get_result(self, run_id: str, model: Any) -> Any: ...
    async def get_result(self, run_id: str, model: Any) -> Any:
        """The succeeded run's result validated into ``model`` (see ``Client.get_result``)."""
        return result_of(await self.get_run(run_id), model)

    # -- changing ---------------------------------------------------------------------

    async def cancel(self, run_id: str) -> None:
        """Cancel an unfinished run (``NotFound``, ``AlreadyComplete``)."""
        run_id = check_id(run_id)
        await self.adb.run(lambda conn: self.store.runs.cancel(conn, run_id))

    async def retry(self, run_id: str) -> None:
        """Run a failed or cancelled run again, with a fresh set of attempts."""
        run_id = check_id(run_id)
        await self.adb.run(lambda conn: self.store.runs.requeue_one(conn, run_id))
        local_bus.publish(self.db.key)

    async def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Deliver a signal to a workflow run; kept until ``ctx.wait_for_signal(name)`` takes it."""
        if await self.adb.run(deliver(self.store, run_id, name, payload, self.payload_limit)):
            local_bus.publish(self.db.key)
