"""The producer API (``Client``) against a real database, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from simpleflow import AlreadyComplete, Client, InvalidState, NotFound, RunInfo, WaitTimeout
from simpleflow.db.dialect_sql import db_now
from simpleflow.db.schema import workflow_run


def db_clock(client: Client) -> datetime:
    """The database's current time (the clock simpleflow schedules by)."""
    with client.db.engine.connect() as conn:
        value = conn.execute(sa.select(db_now())).scalar_one()
    assert isinstance(value, datetime) and value.tzinfo is not None
    return value


def count_runs(client: Client, **where: Any) -> int:
    stmt = sa.select(sa.func.count()).select_from(workflow_run)
    for column, value in where.items():
        stmt = stmt.where(workflow_run.c[column] == value)
    with client.db.engine.connect() as conn:
        return int(conn.execute(stmt, execution_options=client.db.exec_options).scalar_one())


def close_to(a: datetime, b: datetime, seconds: float = 5.0) -> bool:
    return abs((a - b).total_seconds()) <= seconds


# -- submit and read back -------------------------------------------------------------


def test_submit_defaults(client: Client) -> None:
    before = db_clock(client)
    run_id = client.submit("content.thumbnail.v1", {"content_id": "c_123", "width": 300}).execute()
    after = db_clock(client)

    assert isinstance(run_id, str) and str(uuid.UUID(run_id)) == run_id
    info = client.get_run(run_id)
    assert isinstance(info, RunInfo)
    assert info.id == run_id
    assert info.type == "content.thumbnail.v1"
    assert info.payload == {"content_id": "c_123", "width": 300}
    assert info.status == "pending"
    assert info.priority == 100
    assert info.max_attempts == 3
    assert info.attempt == 0
    assert info.idempotency_key is None
    assert info.leased_by is None and info.lease_until is None
    assert info.last_error is None and info.result is None
    assert not info.is_terminal
    for stamp in (info.run_at, info.created_at, info.updated_at):
        assert stamp.tzinfo is not None
        # stamped by the database clock at insert time (SQLite keeps milliseconds)
        assert before - timedelta(milliseconds=2) <= stamp <= after + timedelta(milliseconds=2), (before, stamp, after)
    assert close_to(info.run_at, info.created_at, 0.5)


def test_payload_none_and_pydantic_model(client: Client) -> None:
    class Params(BaseModel):
        content_id: str
        width: int
        when: datetime

    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    rid = client.submit("a.model", Params(content_id="c", width=3, when=when)).execute()
    assert client.get_run(rid).payload == {"content_id": "c", "width": 3, "when": "2030-01-02T03:04:05Z"}
    rid = client.submit("a.none").execute()
    assert client.get_run(rid).payload is None


def test_builder_options(client: Client) -> None:
    rid = client.submit("a.b", {}).with_priority(10).with_max_attempts(5).execute()
    info = client.get_run(rid)
    assert (info.priority, info.max_attempts) == (10, 5)

    rid = client.submit("a.b", {}).with_priority(-7).execute()
    assert client.get_run(rid).priority == -7


def test_run_in_uses_database_clock(client: Client) -> None:
    rid = client.submit("a.b", {}).run_in(timedelta(minutes=5)).execute()
    info = client.get_run(rid)
    assert abs((info.run_at - info.created_at) - timedelta(minutes=5)) < timedelta(seconds=1)

    rid = client.submit("a.b", {}).run_in(timedelta(0)).execute()
    info = client.get_run(rid)
    assert abs(info.run_at - info.created_at) < timedelta(seconds=1)


def test_run_after_absolute_time(client: Client) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=-5)))
    rid = client.submit("a.b", {}).run_after(when).execute()
    info = client.get_run(rid)
    assert info.run_at == when
    assert info.run_at.utcoffset() == timedelta(0)  # read back in UTC

    # the later call wins
    rid = client.submit("a.b", {}).run_after(when).run_in(timedelta(0)).execute()
    assert abs(client.get_run(rid).run_at - db_clock(client)) < timedelta(seconds=5)
    rid = client.submit("a.b", {}).run_in(timedelta(hours=1)).run_after(when).execute()
    assert client.get_run(rid).run_at == when


def test_idempotency_returns_existing_id(client: Client) -> None:
    first = client.submit("a.b", {"n": 1}).with_idempotency("order:1").execute()
    second = client.submit("a.b", {"n": 2}).with_idempotency("order:1").with_priority(1).execute()
    assert second == first
    assert count_runs(client, idempotency_key="order:1") == 1
    info = client.get_run(first)
    assert info.payload == {"n": 1} and info.priority == 100  # the duplicate changed nothing
    assert info.idempotency_key == "order:1"
    assert [e.event_type for e in client.get_events(first)] == ["created"]

    other = client.submit("a.b", {"n": 3}).with_idempotency("order:2").execute()
    assert other != first
    no_key = [client.submit("a.b", {}).execute() for _ in range(2)]
    assert len(set(no_key)) == 2


def test_idempotency_key_survives_cancel(client: Client) -> None:
    """A finished run still holds its key: resubmitting returns it (no new run)."""
    rid = client.submit("a.b", {}).with_idempotency("k").execute()
    client.cancel(rid)
    assert client.submit("a.b", {}).with_idempotency("k").execute() == rid
    assert count_runs(client) == 1


# -- joining the caller's transaction ----------------------------------------------------


@pytest.fixture
def app_client(app_engine: sa.Engine, db_schema: str | None, client: Client) -> Any:
    """A Client on the application's own Engine (migrated through ``client``)."""
    c = Client(app_engine, schema=db_schema)
    yield c
    c.close()


def test_execute_in_callers_transaction_rolled_back(app_engine: sa.Engine, app_client: Client) -> None:
    class Boom(Exception):
        pass

    ids: list[str] = []
    with pytest.raises(Boom), app_engine.begin() as conn:
        ids.append(app_client.submit("a.b", {"x": 1}).execute(connection=conn))
        ids.extend(app_client.submit_many([("a.c", 1), ("a.d", 2)], connection=conn))
        # visible inside the transaction
        assert app_client.store.runs.get_run(conn, ids[0]).status == "pending"
        raise Boom
    assert len(ids) == 3
    for rid in ids:
        with pytest.raises(NotFound):
            app_client.get_run(rid)
    assert count_runs(app_client) == 0


def test_execute_in_callers_transaction_committed(app_engine: sa.Engine, app_client: Client) -> None:
    with app_engine.begin() as conn:
        rid = app_client.submit("a.b", {"x": 1}).with_idempotency("tx").execute(connection=conn)
    assert app_client.get_run(rid).payload == {"x": 1}
    assert [e.event_type for e in app_client.get_events(rid)] == ["created"]
    # an Engine-built client does not own the engine: it still works after close()
    app_client.close()
    with app_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1


def test_execute_with_connection_and_later_rollback(app_engine: sa.Engine, app_client: Client) -> None:
    """The caller's own statements and the run commit or roll back together."""
    with app_engine.connect() as conn:
        tx = conn.begin()
        rid = app_client.submit("a.b", {}).execute(connection=conn)
        tx.rollback()
        tx = conn.begin()
        rid2 = app_client.submit("a.b", {}).execute(connection=conn)
        tx.commit()
    with pytest.raises(NotFound):
        app_client.get_run(rid)
    assert app_client.get_run(rid2).status == "pending"


# -- submit_many ----------------------------------------------------------------------


def test_submit_many_order_and_options(client: Client) -> None:
    ids = client.submit_many(
        [
            ("t.one", {"i": 0}),
            client.submit("t.two", {"i": 1}).with_priority(5).with_max_attempts(7),
            ("t.three", [1, 2, 3]),
            client.submit("t.four", "text").run_in(timedelta(hours=2)),
        ]
    )
    assert len(ids) == 4 and len(set(ids)) == 4
    infos = [client.get_run(i) for i in ids]
    assert [i.type for i in infos] == ["t.one", "t.two", "t.three", "t.four"]
    assert [i.payload for i in infos] == [{"i": 0}, {"i": 1}, [1, 2, 3], "text"]
    assert (infos[1].priority, infos[1].max_attempts) == (5, 7)
    assert abs((infos[3].run_at - infos[3].created_at) - timedelta(hours=2)) < timedelta(seconds=1)
    assert client.submit_many([]) == []


def test_submit_many_idempotency(client: Client) -> None:
    existing = client.submit("t.a", {"old": True}).with_idempotency("k-existing").execute()
    ids = client.submit_many(
        [
            client.submit("t.a", {"n": 0}).with_idempotency("k-new"),
            client.submit("t.a", {"n": 1}).with_idempotency("k-existing"),
            client.submit("t.a", {"n": 2}),
            client.submit("t.a", {"n": 3}).with_idempotency("k-new"),
            client.submit("t.a", {"n": 4}).with_idempotency("k-existing"),
        ]
    )
    assert ids[1] == existing and ids[4] == existing
    assert ids[0] == ids[3]
    assert len({ids[0], ids[2], existing}) == 3
    assert client.get_run(ids[0]).payload == {"n": 0}  # the first of the batch wins
    assert client.get_run(existing).payload == {"old": True}
    assert count_runs(client) == 3
    assert count_runs(client, idempotency_key="k-new") == 1
    assert count_runs(client, idempotency_key="k-existing") == 1
    # one "created" event per run actually created
    for rid in (ids[0], ids[2], existing):
        assert [e.event_type for e in client.get_events(rid)] == ["created"]


def test_submit_many_large_batch(client: Client) -> None:
    ids = client.submit_many([("t.bulk", {"i": i}) for i in range(500)])
    assert len(set(ids)) == 500
    assert count_runs(client, type="t.bulk") == 500
    assert client.get_run(ids[321]).payload == {"i": 321}


# -- cancel / retry -------------------------------------------------------------------


def test_cancel(client: Client) -> None:
    rid = client.submit("a.b", {}).execute()
    client.cancel(rid)
    info = client.get_run(rid)
    assert info.status == "cancelled" and info.is_terminal
    assert info.updated_at >= info.created_at
    with pytest.raises(AlreadyComplete):
        client.cancel(rid)
    with pytest.raises(NotFound):
        client.cancel(str(uuid.uuid4()))


def test_retry(client: Client) -> None:
    rid = client.submit("a.b", {}).with_max_attempts(2).execute()
    with pytest.raises(InvalidState):
        client.retry(rid)  # pending: nothing to retry
    client.cancel(rid)
    client.retry(rid)
    info = client.get_run(rid)
    assert info.status == "pending"
    assert info.attempt == 0
    assert info.max_attempts == 2
    assert info.leased_by is None and info.lease_until is None
    with pytest.raises(InvalidState):
        client.retry(rid)
    with pytest.raises(NotFound):
        client.retry(str(uuid.uuid4()))


def test_get_run_unknown(client: Client) -> None:
    with pytest.raises(NotFound):
        client.get_run(str(uuid.uuid4()))
    with pytest.raises(NotFound):
        client.get_events(str(uuid.uuid4()))


def test_get_events_order(client: Client) -> None:
    rid = client.submit("a.b", {}).execute()
    client.cancel(rid)
    client.retry(rid)
    client.cancel(rid)
    events = client.get_events(rid)
    assert [e.event_type for e in events] == ["created", "cancelled", "requeued", "cancelled"]
    assert all(e.run_id == rid for e in events)
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert all(a.created_at <= b.created_at for a, b in itertools.pairwise(events))
    assert events[0].attempt == 0


# -- list_runs -------------------------------------------------------------------------


def test_list_runs_filters_and_pagination(client: Client) -> None:
    a_ids = [client.submit("t.a", {"i": i}).execute() for i in range(5)]
    b_ids = [client.submit("t.b", {"i": i}).execute() for i in range(3)]
    keyed = client.submit("t.b", {}).with_idempotency("the-key").execute()
    client.cancel(a_ids[1])
    client.cancel(b_ids[0])

    everything = client.list_runs()
    assert [r.id for r in everything] == [keyed, *reversed(b_ids), *reversed(a_ids)]  # newest first

    assert [r.id for r in client.list_runs(type="t.a")] == list(reversed(a_ids))
    assert {r.id for r in client.list_runs(status="cancelled")} == {a_ids[1], b_ids[0]}
    assert [r.id for r in client.list_runs(type="t.b", status="pending")] == [keyed, b_ids[2], b_ids[1]]
    assert [r.id for r in client.list_runs(idempotency_key="the-key")] == [keyed]
    assert client.list_runs(idempotency_key="nope") == []
    assert client.list_runs(type="t.none") == []
    assert client.list_runs(type="t.a", status="succeeded") == []

    newest_first = [r.id for r in everything]
    pages = [client.list_runs(limit=4, offset=o) for o in (0, 4, 8)]
    assert [len(p) for p in pages] == [4, 4, 1]
    assert [r.id for p in pages for r in p] == newest_first
    assert client.list_runs(limit=4, offset=100) == []
    assert [r.id for r in client.list_runs(type="t.a", limit=2, offset=1)] == [a_ids[3], a_ids[2]]


def test_list_runs_default_limit(client: Client) -> None:
    client.submit_many([("t.many", i) for i in range(60)])
    assert len(client.list_runs()) == 50
    assert len(client.list_runs(limit=60)) == 60


# -- wait / get_result -----------------------------------------------------------------


def test_wait_times_out_on_pending_run(client: Client) -> None:
    rid = client.submit("a.b", {}).execute()
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        client.wait(rid, timeout=timedelta(milliseconds=200))
    elapsed = time.monotonic() - started
    assert isinstance(caught.value, TimeoutError)
    assert 0.19 <= elapsed < 3.0
    assert rid in str(caught.value)


def test_wait_returns_finished_run(client: Client) -> None:
    rid = client.submit("a.b", {}).execute()
    client.cancel(rid)
    started = time.monotonic()
    info = client.wait(rid, timeout=timedelta(seconds=10))
    assert info.status == "cancelled"
    assert time.monotonic() - started < 2.0


def test_wait_sees_a_change_made_by_another_client(client: Client, db_url: str) -> None:
    rid = client.submit("a.b", {}).execute()

    def cancel_later() -> None:
        time.sleep(0.2)
        with Client(db_url) as other:
            other.cancel(rid)

    thread = threading.Thread(target=cancel_later)
    thread.start()
    try:
        assert client.wait(rid, timeout=timedelta(seconds=10)).status == "cancelled"
    finally:
        thread.join()


def test_get_result_of_unfinished_run(client: Client) -> None:
    class Out(BaseModel):
        ok: bool

    rid = client.submit("a.b", {}).execute()
    with pytest.raises(InvalidState):
        client.get_result(rid, Out)
    client.cancel(rid)
    with pytest.raises(InvalidState):
        client.get_result(rid, Out)
    with pytest.raises(NotFound):
        client.get_result(str(uuid.uuid4()), Out)


def test_client_context_manager(migrated_url: str) -> None:
    with Client(migrated_url) as c:
        rid = c.submit("a.b", {}).execute()
    with Client(migrated_url) as c:
        assert c.get_run(rid).type == "a.b"


# -- idempotency under concurrency -------------------------------------------------------

THREADS = 16
PROCESSES = 4


def test_idempotency_race_threads(migrated_url: str) -> None:
    """16 clients submit the same key at the same moment: one run, one id for all."""
    clients = [Client(migrated_url) for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    ids: list[str | None] = [None] * THREADS
    errors: list[BaseException] = []

    def submit(i: int) -> None:
        try:
            builder = clients[i].submit("race.v1", {"who": i}).with_idempotency("race-key")
            barrier.wait(timeout=30)
            ids[i] = builder.execute()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(THREADS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for c in clients:
            c.close()
    assert not errors, errors
    assert None not in ids
    assert len(set(ids)) == 1
    with Client(migrated_url) as c:
        assert count_runs(c, idempotency_key="race-key") == 1
        assert count_runs(c) == 1
        assert [e.event_type for e in c.get_events(ids[0])] == ["created"]  # type: ignore[arg-type]


_RACE_CHILD = textwrap.dedent(
    """
    import os
    import sys

    from simpleflow import Client

    url, key = sys.argv[1], sys.argv[2]
    with Client(url) as client:
        builder = client.submit("race.v1", {"pid": os.getpid()}).with_idempotency(key)
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            sys.exit(3)
        print("id", builder.execute(), flush=True)
    """
)


def test_idempotency_race_processes(migrated_url: str) -> None:
    """4 processes submit the same key at once: one run, one id for all."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE_CHILD, migrated_url, "proc-race-key"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")
        for p in procs:  # release them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    ids = []
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        (line,) = [ln for ln in out.splitlines() if ln.startswith("id ")]
        ids.append(line.split()[1])
    assert len(set(ids)) == 1, ids
    with Client(migrated_url) as c:
        assert count_runs(c, idempotency_key="proc-race-key") == 1
        assert c.get_run(ids[0]).idempotency_key == "proc-race-key"
