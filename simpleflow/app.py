"""``Workflow``: a Client and a Poller on one engine, for small services and getting started."""

from __future__ import annotations

from sqlalchemy import Engine

from simpleflow.client import Client
from simpleflow.db.database import Database
from simpleflow.worker.poller import Poller


class Workflow(Client, Poller):
    """Every method of ``Client`` and of ``Poller``, sharing one database connection pool."""

    def __init__(
        self,
        database: str | Engine,
        *,
        schema: str | None = None,
        tenant: str | None = None,
        payload_limit: int | None = None,
    ) -> None:
        db = Database.open(database, schema=schema)
        if payload_limit is None:
            Client.__init__(self, database, tenant=tenant, _db=db)
        else:
            Client.__init__(self, database, tenant=tenant, payload_limit=payload_limit, _db=db)
        scoped = self.store
        Poller.__init__(self, database, _db=self.db)
        self.store = scoped  # one store, scoped to the client's tenant, for both sides
        if tenant is not None:
            self.with_tenants(tenant)  # the poller claims only this tenant's runs

    def close(self) -> None:
        """Stop the poller if it runs, then dispose of the engine if this object created it."""
        Poller.close(self)

    def __enter__(self) -> Workflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
