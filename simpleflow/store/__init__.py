"""The store: every SQL statement simpleflow runs, as named methods grouped by what they touch.

``runs`` (insert, read, cancel, requeue), ``leases`` (claim, renew, apply a
worker's transitions, expire), ``steps`` (workflow records and signals),
``schedules``, ``admin`` (prune, stats), ``workers`` (the registry),
``composition`` (parents and children, published events), ``history`` (fork,
data deletion) and ``limits`` (flow control). Each
method takes an open connection; the caller decides the transaction.
"""

from __future__ import annotations

from typing import Protocol

from simpleflow.db.database import Database
from simpleflow.store.admin import AdminStore
from simpleflow.store.base import Statements
from simpleflow.store.composition import CompositionStore
from simpleflow.store.history import HistoryStore
from simpleflow.store.leases import LeaseStore
from simpleflow.store.limits import LimitStore
from simpleflow.store.runs import RunStore
from simpleflow.store.schedules import ScheduleStore
from simpleflow.store.steps import StepStore
from simpleflow.store.workers import WorkerStore


class Store:
    """Every part of the store for one database, sharing one cache of built statements.

    ``tenant``: every statement reads and writes only that tenant's rows (``StoreBase.scope``);
    None (workers, the ticker, retention): every tenant's.
    """

    def __init__(self, db: Database, tenant: str | None = None) -> None:
        built = Statements()
        self.db = db
        self.tenant = tenant
        self.runs = RunStore(db, built, tenant)
        self.leases = LeaseStore(db, built, tenant)
        self.steps = StepStore(db, built, tenant)
        self.schedules = ScheduleStore(db, built, tenant)
        self.admin = AdminStore(db, built, tenant)
        self.workers = WorkerStore(db, built, tenant)
        self.composition = CompositionStore(db, built, tenant)
        self.history = HistoryStore(db, built, tenant)
        self.limits = LimitStore(db, built, tenant)

    def for_tenant(self, tenant: str | None) -> Store:
        """The same database, scoped to ``tenant`` (None: unscoped)."""
        return self if tenant == self.tenant else Store(self.db, tenant)


class HasStore(Protocol):
    """A ``Client`` (or anything else holding a ``Store``)."""

    store: Store


def store_of(target: Store | HasStore) -> Store:
    """The store itself, or the one a client holds (so helpers take either)."""
    return target if isinstance(target, Store) else target.store
