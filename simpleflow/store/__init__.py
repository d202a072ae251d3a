"""The store: every SQL statement simpleflow runs, as named methods grouped by what they touch.

``runs`` (insert, read, cancel, requeue), ``leases`` (claim, renew, apply a
worker's transitions, expire), ``steps`` (workflow records and signals),
``schedules``, ``admin`` (prune, stats), ``workers`` (the registry) and ``limits``
(flow control). Each
method takes an open connection; the caller decides the transaction.
"""

from __future__ import annotations

from typing import Protocol

from simpleflow.db.database import Database
from simpleflow.store.admin import AdminStore
from simpleflow.store.base import Statements
from simpleflow.store.leases import LeaseStore
from simpleflow.store.limits import LimitStore
from simpleflow.store.runs import RunStore
from simpleflow.store.schedules import ScheduleStore
from simpleflow.store.steps import StepStore
from simpleflow.store.workers import WorkerStore


class Store:
    """Every part of the store for one database, sharing one cache of built statements."""

    def __init__(self, db: Database) -> None:
        built = Statements()
        self.db = db
        self.runs = RunStore(db, built)
        self.leases = LeaseStore(db, built)
        self.steps = StepStore(db, built)
        self.schedules = ScheduleStore(db, built)
        self.admin = AdminStore(db, built)
        self.workers = WorkerStore(db, built)
        self.limits = LimitStore(db, built)


class HasStore(Protocol):
    """A ``Client`` (or anything else holding a ``Store``)."""

    store: Store


def store_of(target: Store | HasStore) -> Store:
    """The store itself, or the one a client holds (so helpers take either)."""
    return target if isinstance(target, Store) else target.store
