"""Cron schedules against a real database, on SQLite and PostgreSQL.

Time is controlled by injecting a clock into ``ScheduleTicker`` (never by
waiting for real minutes); where a test needs a slot due on the database clock
it moves the schedule's ``next_run_at`` with plain SQL.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from simpleflow import Client, NotFound, Poller, ScheduleTicker, ValidationError, WorkflowRun
from simpleflow.core.cron import CronSpec
from simpleflow.db.dialect_sql import db_now
from simpleflow.db.schema import workflow_event, workflow_run, workflow_schedule
from simpleflow.schedules import get_schedule_events, slot_key
from simpleflow.worker.poller import running

UTC = timezone.utc
MINUTE = timedelta(minutes=1)
NY = ZoneInfo("America/New_York")


# -- helpers -------------------------------------------------------------------------------


class FakeClock:
    """Returns ``start + k * step`` on its k-th call (k = 1, 2, …)."""

    def __init__(self, start: datetime, step: timedelta = MINUTE) -> None:
        self.start, self.step, self.calls = start, step, 0

    def __call__(self) -> datetime:
        self.calls += 1
        return self.start + self.calls * self.step


def fixed(when: datetime) -> Any:
    return lambda: when


def db_clock(client: Client) -> datetime:
    with client.db.engine.connect() as conn:
        value: datetime = conn.execute(sa.select(db_now())).scalar_one()
    return value


def scalar(client: Client, stmt: Any) -> Any:
    with client.db.engine.connect() as conn:
        return conn.execute(stmt, execution_options=client.db.exec_options).scalar_one()


def set_next_run(client: Client, schedule_id: str, when: datetime) -> None:
    """Pretend the schedule was created earlier: move its first unfired slot."""
    with client.db.engine.begin() as conn:
        conn.execute(
            sa.update(workflow_schedule).where(workflow_schedule.c.id == schedule_id).values(next_run_at=when),
            execution_options=client.db.exec_options,
        )


def keys_count(client: Client) -> dict[str, int]:
    """Runs per idempotency key (GROUP BY), i.e. per (schedule, slot)."""
    run = workflow_run.c
    stmt = sa.select(run.idempotency_key, sa.func.count()).group_by(run.idempotency_key)
    # db.run retries a dropped connection (the connection-loss test kills every backend)
    rows = client.db.run(lambda conn: conn.execute(stmt, execution_options=client.db.exec_options).all())
    return {k: int(n) for k, n in rows}


def slots_of(client: Client, schedule_id: str) -> list[datetime]:
    """The slots that have a run, ascending (read back from the idempotency keys)."""
    prefix = f"schedule:{schedule_id}:"
    return sorted(
        datetime.strptime(k[len(prefix) :], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        for k in keys_count(client)
        if k and k.startswith(prefix)
    )


def event_types(client: Client, schedule_id: str) -> list[str]:
    return [e.event_type for e in get_schedule_events(client, schedule_id)]


def count(client: Client, table: sa.Table) -> int:
    return int(scalar(client, sa.select(sa.func.count()).select_from(table)))


def every_minute(client: Client, missed: str = "latest") -> tuple[str, datetime]:
    """A ``* * * * *`` schedule and its first slot."""
    sid = client.schedule("report.tick.v1", {"n": 1}).cron("* * * * *").with_missed(missed).create()
    return sid, client.get_schedule(sid).next_run_at


# -- creating, reading, validating ---------------------------------------------------------------


def test_create_and_read_back(client: Client) -> None:
    before = db_clock(client)
    sid = (
        client.schedule("report.daily.v1", {"kind": "sales"})
        .cron("0 9 * * 1")
        .in_timezone("America/New_York")
        .with_priority(50)
        .with_max_attempts(7)
        .create()
    )
    assert str(uuid.UUID(sid)) == sid
    s = client.get_schedule(sid)
    assert (s.type, s.payload, s.cron_expr, s.timezone) == (
        "report.daily.v1",
        {"kind": "sales"},
        "0 9 * * 1",
        "America/New_York",
    )
    assert (s.priority, s.max_attempts, s.missed, s.enabled, s.last_run_at) == (50, 7, "latest", True, None)
    local = s.next_run_at.astimezone(NY)
    assert (local.weekday(), local.hour, local.minute) == (0, 9, 0)
    assert before < s.next_run_at <= before + timedelta(days=7)
    assert [x.id for x in client.list_schedules()] == [sid]
    assert event_types(client, sid) == ["schedule_created"]


def test_fired_runs_inherit_type_payload_priority_attempts(client: Client) -> None:
    sid = (
        client.schedule("report.daily.v1", {"kind": "sales"})
        .cron("*/5 * * * *")
        .with_priority(-3)
        .with_max_attempts(9)
        .create()
    )
    first = client.get_schedule(sid).next_run_at
    with ScheduleTicker(client.db, clock=fixed(first + timedelta(seconds=10))) as ticker:
        assert ticker.tick() == 1
        assert ticker.tick() == 0  # the slot is done; the next one is 5 minutes on
    (run,) = client.list_runs(idempotency_key=slot_key(sid, first))
    assert (run.type, run.payload, run.priority, run.max_attempts, run.status) == (
        "report.daily.v1",
        {"kind": "sales"},
        -3,
        9,
        "pending",
    )
    s = client.get_schedule(sid)
    assert s.next_run_at == first + 5 * MINUTE and s.last_run_at == first
    fired = [e for e in get_schedule_events(client, sid) if e.event_type == "schedule_fired"]
    assert [e.detail["run_id"] for e in fired] == [run.id]


@pytest.mark.parametrize(
    ("expr", "tz", "message"),
    [
        ("61 * * * *", "UTC", "minute value 61 out of range"),
        ("* * * *", "UTC", "got 4 fields"),
        ("* * * * * *", "UTC", "seconds and year fields are not supported"),
        ("@reboot", "UTC", "unsupported alias"),
        ("", "UTC", "empty"),
        ("0 0 30 2 *", "UTC", "never"),
        ("0 9 * * *", "Mars/Olympus_Mons", "unknown time zone"),
        ("0 9 * * *", "", "unknown time zone"),
        ("0 9 * * *", "localtime", "unknown time zone"),
    ],
)
def test_invalid_cron_or_timezone_rejected_with_nothing_stored(
    client: Client, expr: str, tz: str, message: str
) -> None:
    builder = client.schedule("report.daily.v1", {}).cron(expr).in_timezone(tz)
    with pytest.raises(ValidationError, match=message):
        builder.create()
    assert count(client, workflow_schedule) == 0
    assert count(client, workflow_event) == 0


def test_invalid_builder_input_rejected(client: Client) -> None:
    with pytest.raises(ValidationError, match=r"call \.cron"):
        client.schedule("report.daily.v1", {}).create()
    with pytest.raises(ValidationError, match="invalid type"):
        client.schedule("", {})
    with pytest.raises(ValidationError, match="not JSON-serializable"):
        client.schedule("report.daily.v1", {"x": object()})
    with pytest.raises(ValidationError, match="priority"):
        client.schedule("report.daily.v1").with_priority("high")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="max_attempts"):
        client.schedule("report.daily.v1").with_max_attempts(0)
    with pytest.raises(ValidationError, match="missed-slot policy 'sometimes'"):
        client.schedule("report.daily.v1").with_missed("sometimes")
    with pytest.raises(ValidationError, match="must be a string"):
        client.get_schedule(42)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="include_deleted"):
        client.list_schedules(include_deleted="yes")  # type: ignore[arg-type]
    assert count(client, workflow_schedule) == 0


@pytest.mark.parametrize("op", ["get_schedule", "pause_schedule", "resume_schedule", "delete_schedule"])
@pytest.mark.parametrize("bad_id", ["not-a-uuid", "01000000-0000-7000-8000-000000000000"])
def test_unknown_schedule_is_not_found(client: Client, op: str, bad_id: str) -> None:
    with pytest.raises(NotFound, match="not found"):
        getattr(client, op)(bad_id)


# -- pause, resume, delete -----------------------------------------------------------------------


def test_pause_stops_firing_and_resume_does_not_burst(client: Client) -> None:
    sid, first = every_minute(client, missed="all")
    client.pause_schedule(sid)
    client.pause_schedule(sid)  # already paused: no change, no second event
    assert client.get_schedule(sid).enabled is False
    with ScheduleTicker(client.db, clock=fixed(first + 30 * MINUTE)) as ticker:
        assert ticker.tick() == 0
    assert keys_count(client) == {}

    set_next_run(client, sid, first - timedelta(hours=1))  # paused for an hour and more
    before = db_clock(client)
    client.resume_schedule(sid)
    client.resume_schedule(sid)  # already enabled: nothing
    s = client.get_schedule(sid)
    assert s.enabled is True
    assert before < s.next_run_at <= before + MINUTE + timedelta(seconds=1)  # from now: no burst
    with ScheduleTicker(client.db, clock=fixed(before)) as ticker:
        assert ticker.tick() == 0  # nothing missed while paused fires (even with missed="all")
    with ScheduleTicker(client.db, clock=fixed(s.next_run_at)) as ticker:
        assert ticker.tick() == 1
    assert slots_of(client, sid) == [s.next_run_at]
    assert event_types(client, sid) == ["schedule_created", "schedule_paused", "schedule_resumed", "schedule_fired"]


def test_delete_is_soft_and_stops_firing(client: Client) -> None:
    sid, first = every_minute(client)
    keep, _ = every_minute(client)
    client.delete_schedule(sid)
    with pytest.raises(NotFound):
        client.delete_schedule(sid)
    with pytest.raises(NotFound):
        client.get_schedule(sid)
    with pytest.raises(NotFound):
        client.pause_schedule(sid)
    assert [s.id for s in client.list_schedules()] == [keep]
    assert [s.id for s in client.list_schedules(include_deleted=True)] == [sid, keep]
    with ScheduleTicker(client.db, clock=fixed(first + 10 * MINUTE)) as ticker:
        assert ticker.tick() == 1  # only the live schedule
    assert slots_of(client, sid) == [] and len(slots_of(client, keep)) == 1
    assert event_types(client, sid) == ["schedule_created", "schedule_deleted"]
    assert count(client, workflow_schedule) == 2  # the row is kept


# -- missed slots ---------------------------------------------------------------------------------


def test_missed_latest_fires_one_catch_up_then_continues_from_now(client: Client) -> None:
    sid, first = every_minute(client)  # default policy: latest
    now = first + 10 * MINUTE + timedelta(seconds=20)
    with ScheduleTicker(client.db, clock=fixed(now)) as ticker:
        assert ticker.tick() == 1
        assert ticker.tick() == 0
    assert slots_of(client, sid) == [first + 10 * MINUTE]
    s = client.get_schedule(sid)
    assert s.next_run_at == first + 11 * MINUTE and s.last_run_at == first + 10 * MINUTE
    skipped = [e for e in get_schedule_events(client, sid) if e.event_type == "schedule_skipped"]
    assert len(skipped) == 1 and skipped[0].detail["from"] == first.isoformat()


def test_missed_all_fires_every_slot_oldest_first(client: Client) -> None:
    sid, first = every_minute(client, missed="all")
    with ScheduleTicker(client.db, clock=fixed(first + 10 * MINUTE)) as ticker:
        assert ticker.tick() == 11
    assert slots_of(client, sid) == [first + i * MINUTE for i in range(11)]
    assert client.get_schedule(sid).next_run_at == first + 11 * MINUTE
    assert "schedule_skipped" not in event_types(client, sid)


def test_missed_all_is_bounded_to_the_latest_100(client: Client) -> None:
    sid, first = every_minute(client, missed="all")
    with ScheduleTicker(client.db, clock=fixed(first + 149 * MINUTE)) as ticker:
        assert ticker.tick() == 100
    assert slots_of(client, sid) == [first + i * MINUTE for i in range(50, 150)]


def test_missed_none_skips_missed_slots_but_fires_on_time_ones(client: Client) -> None:
    sid, first = every_minute(client, missed="none")
    with ScheduleTicker(client.db, clock=fixed(first + 10 * MINUTE)) as ticker:
        assert ticker.tick() == 0
    assert client.get_schedule(sid).next_run_at == first + 11 * MINUTE
    with ScheduleTicker(client.db, clock=fixed(first + 11 * MINUTE + timedelta(seconds=15))) as ticker:
        assert ticker.tick() == 1  # on time (within the one-minute grace)
    assert slots_of(client, sid) == [first + 11 * MINUTE]


# -- daylight saving time ----------------------------------------------------------------------------


def tick_through(client: Client, sid: str, start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """Tick from ``start`` to ``end`` every ``step`` (a controlled clock) and return the slots fired."""
    spec = CronSpec.parse(client.get_schedule(sid).cron_expr, client.get_schedule(sid).timezone)
    set_next_run(client, sid, spec.next_after(start))
    clock = FakeClock(start, step)
    with ScheduleTicker(client.db, clock=clock) as ticker:
        while clock.start + clock.calls * step < end:
            ticker.tick()
    return slots_of(client, sid)


def test_dst_spring_forward_fires_once_after_the_gap(client: Client) -> None:
    sid = client.schedule("report.nightly.v1").cron("30 2 * * *").in_timezone("America/New_York").create()
    slots = tick_through(
        client, sid, datetime(2026, 3, 7, 12, tzinfo=UTC), datetime(2026, 3, 9, 12, tzinfo=UTC), timedelta(minutes=30)
    )
    # 02:30 does not exist on 2026-03-08: it fires once, at 03:00 EDT (07:00 UTC).
    assert slots == [datetime(2026, 3, 8, 7, 0, tzinfo=UTC), datetime(2026, 3, 9, 6, 30, tzinfo=UTC)]
    assert [s.astimezone(NY).date().day for s in slots] == [8, 9]


def test_dst_fall_back_fires_once(client: Client) -> None:
    sid = client.schedule("report.nightly.v1").cron("30 2 * * *").in_timezone("America/New_York").create()
    slots = tick_through(
        client,
        sid,
        datetime(2026, 10, 31, 12, tzinfo=UTC),
        datetime(2026, 11, 2, 12, tzinfo=UTC),
        timedelta(minutes=15),
    )
    assert slots == [datetime(2026, 11, 1, 7, 30, tzinfo=UTC), datetime(2026, 11, 2, 7, 30, tzinfo=UTC)]


def test_dst_repeated_time_fires_at_first_occurrence_only(client: Client) -> None:
    sid = client.schedule("report.nightly.v1").cron("30 1 * * *").in_timezone("America/New_York").create()
    slots = tick_through(
        client, sid, datetime(2026, 11, 1, 3, tzinfo=UTC), datetime(2026, 11, 1, 12, tzinfo=UTC), timedelta(minutes=10)
    )
    assert slots == [datetime(2026, 11, 1, 5, 30, tzinfo=UTC)]  # 01:30 EDT; not again at 01:30 EST


# -- exactly once under a race ---------------------------------------------------------------------------

_TICKER_CHILD = textwrap.dedent(
    """
    import random
    import sys
    import time
    from datetime import datetime, timedelta
    from simpleflow.schedules import ScheduleTicker

    url, start, ticks = sys.argv[1], datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])
    calls = 0

    def clock():
        global calls
        calls += 1
        return start + timedelta(minutes=calls)

    with ScheduleTicker(url, clock=clock) as ticker:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            sys.exit(3)
        total = 0
        for _ in range(ticks):
            total += ticker.tick()
            time.sleep(random.uniform(0, 0.01))  # keep every ticker in the race
        print("created", total, flush=True)
    """
)

THREADS, PROCESSES, SLOTS = 4, 2, 40


def test_exactly_one_run_per_slot_across_threads_and_processes(client: Client, migrated_url: str) -> None:
    sid, first = every_minute(client, missed="all")
    start = first - MINUTE  # every ticker's k-th tick sees start + k minutes: all race on the same slots
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TICKER_CHILD, migrated_url, start.isoformat(), str(SLOTS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    created: list[int] = []
    errors: list[BaseException] = []
    go = threading.Barrier(THREADS + 1)

    def thread_ticker() -> None:
        try:
            with ScheduleTicker(migrated_url, clock=FakeClock(start)) as ticker:
                go.wait()
                total = 0
                for _ in range(SLOTS):
                    total += ticker.tick()
                    time.sleep(random.uniform(0, 0.01))
                created.append(total)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=thread_ticker) for _ in range(THREADS)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stderr is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", (line, p.stderr.read())
        for t in threads:
            t.start()
        for p in procs:  # release processes and threads together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        go.wait()
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            created.append(int(out.split()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for t in threads:
            t.join(timeout=120)
    assert errors == []

    by_key = keys_count(client)
    expected = [first + i * MINUTE for i in range(SLOTS)]
    assert all(n == 1 for n in by_key.values()), {k: n for k, n in by_key.items() if n != 1}
    assert slots_of(client, sid) == expected  # one run per slot, no gaps
    assert sum(created) == SLOTS  # the tickers' own accounts agree
    assert event_types(client, sid).count("schedule_fired") == SLOTS
    assert client.get_schedule(sid).next_run_at == first + SLOTS * MINUTE


def test_skewed_clocks_never_duplicate_a_slot(client: Client) -> None:
    sid, first = every_minute(client, missed="all")
    ahead = ScheduleTicker(client.db, clock=fixed(first + 3 * MINUTE))
    behind = ScheduleTicker(client.db, clock=fixed(first + MINUTE))
    assert behind.tick() == 2
    assert ahead.tick() == 2  # only the slots the slow clock had not reached
    assert behind.tick() == 0 and ahead.tick() == 0
    assert slots_of(client, sid) == [first + i * MINUTE for i in range(4)]


# -- running: standalone, in a poller, through connection loss -------------------------------------------


def due_now(client: Client, sid: str) -> datetime:
    """Make the schedule's current minute due on the database clock; returns that slot."""
    slot = db_clock(client).replace(second=0, microsecond=0)
    set_next_run(client, sid, slot)
    return slot


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_standalone_ticker_start_and_stop(client: Client, migrated_url: str) -> None:
    sid, _ = every_minute(client)
    slot = due_now(client, sid)
    ticker = ScheduleTicker(migrated_url, tick_interval=timedelta(milliseconds=20))
    thread = threading.Thread(target=ticker.start)
    thread.start()
    try:
        wait_for(lambda: slot in slots_of(client, sid))
    finally:
        ticker.stop()
        thread.join(timeout=10)
        ticker.close()
    assert not thread.is_alive()


def test_poller_with_schedule_ticker_runs_due_schedule(client: Client, migrated_url: str) -> None:
    sid = client.schedule("report.tick.v1", {"n": 7}).cron("* * * * *").create()
    slot = due_now(client, sid)
    seen: list[Any] = []
    poller = (
        Poller(migrated_url)
        .with_schedule_ticker()
        .with_schedule_tick_interval(timedelta(milliseconds=50))
        .with_poll_interval(timedelta(milliseconds=50))
    )

    def handler(run: WorkflowRun) -> dict[str, bool]:
        seen.append(json.loads(run.payload))
        return {"ok": True}

    poller.handle_func("report.tick.v1", handler)

    def succeeded() -> bool:
        runs = client.list_runs(idempotency_key=slot_key(sid, slot))
        return bool(runs) and runs[0].status == "succeeded"

    with poller, running(poller):
        wait_for(succeeded)
    assert {"n": 7} in seen


@pytest.fixture
def pg_client(postgres_url: str) -> Iterator[Client]:
    """A migrated Client in a schema of its own on the session's PostgreSQL."""
    from db_urls import drop_schema

    schema = f"t_{uuid.uuid4().hex[:12]}"
    c = Client(f"{postgres_url}?schema={schema}")
    try:
        c.auto_migrate()
        yield c
    finally:
        c.close()
        drop_schema(postgres_url, schema)


def test_ticker_keeps_ticking_after_its_connections_are_killed(pg_client: Client, postgres_url: str) -> None:
    import psycopg

    client = pg_client
    sid, first = every_minute(client, missed="all")
    clock = FakeClock(first - MINUTE)
    ticker = ScheduleTicker(client.db, tick_interval=timedelta(milliseconds=10), clock=clock)
    stop = threading.Event()
    thread = threading.Thread(target=ticker.run_until, args=(stop,))
    thread.start()
    try:
        for round_ in range(3):
            target = len(slots_of(client, sid)) + 3
            wait_for(lambda t=target: len(slots_of(client, sid)) >= t)
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                ).fetchone()
            assert killed is not None and killed[0] >= 1, round_
        target = len(slots_of(client, sid)) + 3
        wait_for(lambda: len(slots_of(client, sid)) >= target)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=30)
    slots = slots_of(client, sid)
    assert all(n == 1 for n in keys_count(client).values())
    assert slots == [first + i * MINUTE for i in range(len(slots))]  # no slot lost while it reconnected


def test_ticker_loop_survives_database_errors(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    sid, first = every_minute(client, missed="all")
    clock = FakeClock(first - MINUTE)
    stop = threading.Event()
    ticker = ScheduleTicker(client.db, tick_interval=timedelta(milliseconds=10), clock=clock)
    thread = threading.Thread(target=ticker.run_until, args=(stop,))
    rename = "ALTER TABLE {s}workflow_schedule RENAME TO {t}"
    prefix = f'"{client.db.schema}".' if client.db.schema else ""
    caplog.set_level("WARNING", logger="simpleflow.schedules")
    thread.start()
    try:
        wait_for(lambda: len(slots_of(client, sid)) >= 2)
        with client.db.engine.begin() as conn:  # the table vanishes: every tick fails
            conn.exec_driver_sql(rename.format(s=prefix, t="workflow_schedule_away"))
        wait_for(lambda: "schedule tick failed" in caplog.text)
        with client.db.engine.begin() as conn:
            conn.exec_driver_sql(
                rename.format(s=prefix, t="workflow_schedule").replace(
                    "workflow_schedule RENAME", "workflow_schedule_away RENAME"
                )
            )
        target = len(slots_of(client, sid)) + 3
        wait_for(lambda: len(slots_of(client, sid)) >= target)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=30)
    slots = slots_of(client, sid)
    assert slots == [first + i * MINUTE for i in range(len(slots))]  # missed="all" caught up: no gap


def test_example_cron_runs(db_url: str) -> None:
    import os
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "cron.py"
    env = {**os.environ, "SIMPLEFLOW_DATABASE_URL": db_url}
    done = subprocess.run([sys.executable, str(example)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ticker A created 1 run(s)" in done.stdout
    assert "ticker B created 0 run(s)" in done.stdout
    assert ": succeeded, result {'status': 'sent'}" in done.stdout
