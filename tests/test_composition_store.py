"""The wake-up of a parent by its child's end, at the store level (both databases): every
order of "the parent parks" and "the child ends", including both in one batch of
``LeaseStore.apply``, leaves the parent due at once, never parked for good."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from simpleflow.client import Client
from simpleflow.core.states import Lease, Transition, complete, fail, park
from simpleflow.db.schema import workflow_run
from simpleflow.store import Store
from simpleflow.store.leases import ClaimedRun


def family(client: Client) -> tuple[str, str]:
    parent = client.submit("fam.parent").execute()
    child = client.submit("fam.child").execute()
    with client.db.engine.begin() as conn:
        conn.execute(
            sa.update(workflow_run).where(workflow_run.c.id == child).values(parent_id=parent),
            execution_options=client.db.exec_options,
        )
    return parent, child


def claim(client: Client, store: Store, type_: str) -> ClaimedRun:
    route = store.leases.route_filter([type_], [])
    got = client.db.run(lambda conn: store.leases.claim(conn, "w", route, 1, 30.0))
    assert len(got) == 1
    return got[0]


def apply(client: Client, store: Store, *outcomes: tuple[ClaimedRun, Transition]) -> None:
    batch = [(Lease(r.id, r.token), t) for r, t in outcomes]

    def write(conn: sa.Connection) -> Any:
        store.leases.lock(conn, [lease for lease, t in batch if t.guarded])
        return store.leases.apply(conn, "w", batch)

    assert client.db.run(write) == {r.id for r, _ in outcomes}


def due_now(client: Client, run_id: str) -> bool:
    info = client.get_run(run_id)
    return info.status in ("pending", "waiting") and info.run_at.year < 9999


@pytest.mark.parametrize("end", [complete({"ok": 1}), fail("ValueError: boom")], ids=["succeeded", "failed"])
def test_a_child_that_ends_before_its_parent_parks_makes_the_park_due(client: Client, end: Transition) -> None:
    store = Store(client.db)
    parent, child = family(client)
    p, c = claim(client, store, "fam.parent"), claim(client, store, "fam.child")
    apply(client, store, (c, end))
    assert client.get_run(parent).status == "leased"  # nothing to wake yet
    apply(client, store, (p, park("waiting", None, child=child)))
    assert client.get_run(parent).status == "waiting" and due_now(client, parent)


def test_a_child_that_ends_after_its_parent_parked_wakes_it(client: Client) -> None:
    store = Store(client.db)
    parent, child = family(client)
    p, c = claim(client, store, "fam.parent"), claim(client, store, "fam.child")
    apply(client, store, (p, park("waiting", None, child=child)))
    assert client.get_run(parent).run_at.year == 9999
    apply(client, store, (c, complete(None)))
    assert client.get_run(parent).status == "pending" and due_now(client, parent)
    assert [e.event_type for e in client.get_events(parent)][-1] == "woken"


def test_a_parent_parking_in_the_same_batch_as_its_child_ends_is_due(client: Client) -> None:
    store = Store(client.db)
    parent, child = family(client)
    p, c = claim(client, store, "fam.parent"), claim(client, store, "fam.child")
    apply(client, store, (p, park("waiting", None, child=child)), (c, complete(None)))
    assert due_now(client, parent)


def test_a_park_guarded_by_an_unfinished_child_stays_parked(client: Client) -> None:
    store = Store(client.db)
    parent, child = family(client)
    other = client.submit("fam.child").execute()  # a run that is not its child finishing changes nothing
    p, c = claim(client, store, "fam.parent"), claim(client, store, "fam.child")
    apply(client, store, (p, park("waiting", None, child=child)))
    o = claim(client, store, "fam.child")
    assert o.id == other
    apply(client, store, (o, complete(None)))
    assert client.get_run(parent).run_at.year == 9999 and client.get_run(child).status == "leased"
    del c
