"""Per-tenant limits (``set_limit(..., per_tenant=True)``), on both databases: each tenant
gets the numbers on its own, a tenant at its limit holds back nobody else, starts are
counted per tenant, usage is shown per tenant, and global limits still count everyone."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from poller_helpers import make_poller, started, wait_for

from simpleflow import Client, ValidationError, WorkflowRun
from simpleflow.db.schema import workflow_limit_start

JOB = "report.daily.v1"


@pytest.fixture
def acme(migrated_url: str) -> Iterator[Client]:
    with Client(migrated_url, tenant="acme") as c:
        yield c


@pytest.fixture
def globex(migrated_url: str) -> Iterator[Client]:
    with Client(migrated_url, tenant="globex") as c:
        yield c


class PerTenant:
    """Handlers running at once, per tenant and in all; a gate a test can hold closed."""

    def __init__(self, sleep: float = 0.05, hold: frozenset[str] = frozenset()) -> None:
        self.sleep, self.hold = sleep, hold
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_all = 0
        self.done: list[str] = []

    def __call__(self, run: WorkflowRun) -> None:
        with self.lock:
            self.running[run.tenant] = self.running.get(run.tenant, 0) + 1
            self.peak[run.tenant] = max(self.peak.get(run.tenant, 0), self.running[run.tenant])
            self.peak_all = max(self.peak_all, sum(self.running.values()))
        if run.tenant in self.hold:
            self.gate.wait(20)
        time.sleep(self.sleep)
        with self.lock:
            self.running[run.tenant] -= 1
            self.done.append(run.tenant)


def _succeeded(client: Client) -> int:
    return sum(1 for r in client.list_runs(limit=1000) if r.status == "succeeded")


def test_each_tenant_gets_the_concurrency_on_its_own(acme: Client, globex: Client, migrated_url: str) -> None:
    acme.set_limit("report.%", concurrency=2, per_tenant=True)
    track = PerTenant(0.15)
    poller = make_poller(migrated_url, "w1", concurrency=8).handle_func(JOB, track)
    for c in (acme, globex):
        c.submit_many([c.submit(JOB, {"i": i}) for i in range(6)])
    with started(poller):
        wait_for(lambda: acme.list_limits()[0].leased == 2, what="acme using its 2 slots")
        wait_for(lambda: _succeeded(acme) + _succeeded(globex) == 12, timeout=30, what="all runs")
    assert track.peak == {"acme": 2, "globex": 2}
    assert track.peak_all == 4  # the two tenants ran side by side: 2 each, not 2 in all
    (limit,) = globex.list_limits()
    assert limit.per_tenant and limit.concurrency == 2 and limit.leased == 0


def test_a_tenant_at_its_limit_holds_back_no_other(acme: Client, globex: Client, migrated_url: str) -> None:
    """acme's backlog comes first in claim order and its one slot is taken by a run that
    does not finish: globex's later run still starts (the claim leaves acme's runs out)."""
    acme.set_limit(JOB, concurrency=1, per_tenant=True)
    track = PerTenant(0.0, hold=frozenset({"acme"}))
    poller = make_poller(migrated_url, "w1", concurrency=4).handle_func(JOB, track)
    acme.submit_many([acme.submit(JOB, {"i": i}) for i in range(30)])
    with started(poller):
        wait_for(lambda: acme.list_limits()[0].leased == 1, what="acme's one slot taken")
        theirs = globex.submit(JOB).execute()
        wait_for(lambda: globex.get_run(theirs).status == "succeeded", what="globex's run, past acme's backlog")
        assert acme.list_limits()[0].leased == 1 and track.peak["acme"] == 1
        track.gate.set()
        wait_for(lambda: _succeeded(acme) == 30, timeout=30, what="acme's backlog")
    assert track.peak["acme"] == 1


def test_each_tenant_gets_the_rate_on_its_own(acme: Client, globex: Client, migrated_url: str) -> None:
    acme.set_limit("report.%", rate=(2, timedelta(hours=1)), per_tenant=True)
    poller = make_poller(migrated_url, "w1", concurrency=4).handle_func(JOB, lambda run: None)
    for c in (acme, globex):
        c.submit_many([c.submit(JOB, {"i": i}) for i in range(4)])
    with started(poller):
        wait_for(lambda: _succeeded(acme) + _succeeded(globex) == 4, what="two starts per tenant")
        time.sleep(0.6)  # more claim cycles: no third start for anyone
    assert (_succeeded(acme), _succeeded(globex)) == (2, 2)
    assert [x.started_in_window for x in acme.list_limits()] == [2]
    with acme.db.engine.connect() as conn:
        rows = conn.execute(sa.select(workflow_limit_start.c.tenant), execution_options=acme.db.exec_options)
        assert sorted(r[0] for r in rows) == ["acme", "acme", "globex", "globex"]


def test_a_global_limit_still_counts_every_tenant(acme: Client, globex: Client, migrated_url: str) -> None:
    acme.set_limit(JOB, concurrency=2)
    track = PerTenant(0.0, hold=frozenset({"acme", "globex"}))
    poller = make_poller(migrated_url, "w1", concurrency=8).handle_func(JOB, track)
    for c in (acme, globex):
        c.submit_many([c.submit(JOB, {"i": i}) for i in range(3)])
    with started(poller), Client(migrated_url) as default:
        wait_for(lambda: default.list_limits()[0].leased == 2, what="the 2 global slots taken")
        time.sleep(0.4)
        assert track.peak_all == 2
        assert not default.list_limits()[0].per_tenant
        track.gate.set()
        wait_for(lambda: _succeeded(acme) + _succeeded(globex) == 6, timeout=20, what="all runs")
    assert track.peak_all == 2


def test_switching_a_limit_to_per_tenant_and_back(acme: Client, globex: Client, migrated_url: str) -> None:
    acme.set_limit(JOB, concurrency=1)
    acme.set_limit(JOB, concurrency=1, per_tenant=True)
    assert [(x.concurrency, x.per_tenant) for x in globex.list_limits()] == [(1, True)]
    track = PerTenant(0.2)
    poller = make_poller(migrated_url, "w1", concurrency=4).handle_func(JOB, track)
    for c in (acme, globex):
        c.submit_many([c.submit(JOB, {"i": i}) for i in range(2)])
    poller.run_until_idle(timeout=timedelta(seconds=20))
    assert track.peak == {"acme": 1, "globex": 1} and track.peak_all == 2
    acme.set_limit(JOB, concurrency=1)  # global again: one at a time in all
    assert [x.per_tenant for x in acme.list_limits()] == [False]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 1, "per_tenant": "yes"},
        {"concurrency": 1, "per_tenant": 1},
        {"pause_after_failures": 3, "per_tenant": True},
    ],
)
def test_bad_per_tenant_limits_are_rejected(acme: Client, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="per_tenant"):
        acme.set_limit("report.%", **kwargs)
    assert acme.list_limits() == []


def test_runs_a_global_limit_governs_are_shared_fairly_among_tenants(
    acme: Client, globex: Client, migrated_url: str
) -> None:
    """The fair claim holds for governed types too: with one global slot and acme's backlog
    submitted first, globex's later run is among the next few to start, not after 30."""
    acme.set_limit(JOB, concurrency=1)
    order: list[str] = []
    poller = make_poller(migrated_url, "w1", concurrency=4).handle_func(JOB, lambda run: order.append(run.tenant))
    acme.submit_many([acme.submit(JOB, {"i": i}) for i in range(30)])
    globex.submit(JOB).with_priority(500).execute()  # later and lower priority: still its turn
    poller.run_until_idle(timeout=timedelta(seconds=30))
    assert len(order) == 31
    assert order.index("globex") <= 2, order
