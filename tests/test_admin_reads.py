"""The reads the web dashboard needs from ``simpleflow.admin``: ``ping``, ``list_workers``
and ``finished_by_minute``, and ``Submission.execute_created``; on both databases."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from poller_helpers import started, wait_for
from test_admin import age_runs

from simpleflow import Client, Poller, ValidationError, admin
from simpleflow.core.attempt import WorkflowRun
from simpleflow.db.schema import workflow_registry


def test_ping_reads_the_database_clock(client: Client) -> None:
    assert abs(admin.ping(client) - datetime.now(timezone.utc)) < timedelta(minutes=5)


def test_finished_by_minute_buckets_by_type_status_and_minute(client: Client) -> None:
    now_ids = [client.submit("a.one.v1").execute() for _ in range(3)]
    old_ids = [client.submit("a.two.v1").execute() for _ in range(2)]
    ancient = client.submit("a.one.v1").execute()
    pending = client.submit("a.one.v1").execute()
    for run_id in [*now_ids, *old_ids, ancient]:
        client.cancel(run_id)
    age_runs(client, old_ids, timedelta(minutes=10))
    age_runs(client, [ancient], timedelta(hours=2))
    counts = admin.finished_by_minute(client)
    assert sum(c.count for c in counts) == 5 and pending not in now_ids
    assert all(c.status == "cancelled" and c.minute.tzinfo is not None and c.minute.second == 0 for c in counts)
    by_type = {t: [c for c in counts if c.type == t] for t in ("a.one.v1", "a.two.v1")}
    assert sum(c.count for c in by_type["a.one.v1"]) == 3 and sum(c.count for c in by_type["a.two.v1"]) == 2
    newest = max(c.minute for c in by_type["a.one.v1"])
    older = max(c.minute for c in by_type["a.two.v1"])
    assert timedelta(minutes=9) <= newest - older <= timedelta(minutes=11)
    assert counts == sorted(counts, key=lambda c: (c.minute, c.type, c.status))
    assert sum(c.count for c in admin.finished_by_minute(client, timedelta(minutes=5))) == 3
    with pytest.raises(ValidationError):
        admin.finished_by_minute(client, timedelta(0))


def test_list_workers_includes_stale_ones(client: Client, migrated_url: str) -> None:
    assert admin.list_workers(client) == []

    def work(run: WorkflowRun) -> None:
        return None

    poller = Poller(migrated_url).handle_func("a.work.v1", work).with_worker_id("reads-1")
    with started(poller):
        (worker,) = wait_for(lambda: admin.list_workers(client), what="the worker to register")
        assert worker.worker_id == "reads-1" and "a.work.v1" in worker.types and worker.heartbeat_age_seconds < 60
        with client.db.engine.begin() as conn:  # test-only SQL: a heartbeat five minutes old
            opts = client.db.exec_options
            beat = conn.execute(sa.select(workflow_registry.c.heartbeat_at), execution_options=opts).scalar_one()
            conn.execute(
                sa.update(workflow_registry).values(heartbeat_at=beat - timedelta(minutes=5)), execution_options=opts
            )
        (stale,) = admin.list_workers(client)
        assert stale.worker_id == "reads-1" and stale.heartbeat_age_seconds >= 290
        stats = client.stats()
        assert stats.workers == [] and stats.stale_workers == 1
    assert admin.list_workers(client) == []  # a worker that stops leaves the registry


def test_execute_created_tells_a_duplicate_key(client: Client) -> None:
    first, created = client.submit("a.one.v1", 1).with_idempotency("k").execute_created()
    again, created_again = client.submit("a.one.v1", 2).with_idempotency("k").execute_created()
    assert created and not created_again and first == again
    assert client.get_run(first).payload == 1
    plain, made = client.submit("a.one.v1").execute_created()
    assert made and plain != first
