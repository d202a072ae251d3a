"""Schedule tickers in several processes, SIGKILLed and restarted at random (both databases).

Every ticker process (``worker.py ticker``) reads an injected clock that runs 300 times
faster than real time from a common start, each with its own skew of up to ±2 minutes:
many slots pass in a few seconds, and the tickers disagree about the time.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from simpleflow import Client
from simpleflow.core.cron import CronSpec
from simpleflow.db.schema import workflow_run, workflow_schedule
from simpleflow.schedules import get_schedule_events

from .harness import Fleet, chaos, report, rows, scale

pytestmark = pytest.mark.faults

SPEED = 300.0
START = datetime(2031, 3, 9, 6, 0, tzinfo=timezone.utc)  # the US switches to DST that day, at 07:00 UTC
SCHEDULES = [("* * * * *", "UTC"), ("*/2 * * * *", "UTC"), ("*/5 * * * *", "America/New_York")]


def expected_slots(spec: CronSpec, last: datetime) -> list[datetime]:
    slots, slot = [], START
    while slot <= last:
        slots.append(slot)
        slot = spec.next_after(slot)
    return slots


def test_killed_and_restarted_tickers_fire_exactly_one_run_per_slot(
    client: Client, db_url: str, db_kind: str, tmp_path: Path
) -> None:
    seconds = 10.0 * scale()
    ids = []
    for expr, tz in SCHEDULES:
        sid = client.schedule("fault.tick.v1", {"expr": expr}).cron(expr).in_timezone(tz).with_missed("all").create()
        ids.append(sid)
    with client.db.engine.begin() as conn:
        conn.execute(sa.update(workflow_schedule).values(next_run_at=START), execution_options=client.db.exec_options)

    t0 = time.time() + 2.0  # the virtual clocks start once the first processes are up
    fleets = [
        Fleet(
            "ticker",
            db_url,
            json.dumps({"start": START.isoformat(), "t0": t0, "speed": SPEED, "skew": skew}),
            tmp_path / f"logs{i}",
        )
        for i, skew in enumerate((-120.0, 0.0, 90.0))
    ]
    for fleet in fleets:
        fleet.spawn()
    started = time.monotonic()
    try:
        kills = chaos(fleets, until=lambda: False, seconds=seconds + 2.0, rng=random.Random())
    finally:
        for fleet in fleets:
            fleet.stop()
    elapsed = time.monotonic() - started

    run = workflow_run.c
    per_key = Counter(
        {
            k: int(n)
            for k, n in rows(client, sa.select(run.idempotency_key, sa.func.count()).group_by(run.idempotency_key))
        }
    )
    assert per_key and max(per_key.values()) == 1, f"a slot has more than one run: {per_key.most_common(3)}"
    slots_total = 0
    for sid, (expr, tz) in zip(ids, SCHEDULES, strict=True):
        prefix = f"schedule:{sid}:"
        fired = sorted(
            datetime.strptime(k[len(prefix) :], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            for k in per_key
            if k.startswith(prefix)
        )
        assert fired, f"schedule {expr} ({tz}) never fired"
        assert fired == expected_slots(CronSpec.parse(expr, tz), fired[-1]), f"{expr} ({tz}): a slot is missing"
        events = [e.event_type for e in get_schedule_events(client, sid)]
        assert events.count("schedule_fired") == len(fired)
        assert "schedule_skipped" not in events
        slots_total += len(fired)
    minimum = 0.5 * seconds * SPEED / 60  # `* * * * *` alone: half the virtual minutes that passed
    assert slots_total >= minimum, f"only {slots_total} slots fired in {seconds:.0f}s"
    assert kills >= 5
    report(
        "schedule_tickers",
        db=db_kind,
        schedules=len(ids),
        slots=slots_total,
        runs=sum(per_key.values()),
        kills=kills,
        processes=sum(len(f.all) for f in fleets),
        seconds=round(elapsed, 1),
    )
