"""Flow control across worker processes, on both databases: limits every process obeys.

Workers are real processes (``flow_worker.py``); their handlers write start and end
lines with ``time.monotonic()`` (one clock for all processes of the machine), so the
test counts what really ran at once. Rate windows are checked on the database clock
(the ``leased`` events), the clock the limit is enforced on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from poller_helpers import wait_for

from simpleflow import Client

WORKER = Path(__file__).with_name("flow_worker.py")
JOB = "partner.sync.v1"


@contextmanager
def workers(url: str, n: int, record: Path, **opts: object) -> Iterator[list[subprocess.Popen[bytes]]]:
    options = json.dumps({"types": [JOB], "record": str(record), **opts})
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), url, options], stdout=subprocess.DEVNULL, env=env)
        for _ in range(n)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def spans(record: Path, killed: dict[int, float] | None = None) -> list[tuple[float, float, str, str, int]]:
    """(start, end, run id, key, pid) of every execution; one cut short by SIGKILL ends at the kill
    (and has pid 0)."""
    starts: dict[tuple[int, str], tuple[float, str]] = {}
    out = []
    for line in record.read_text().splitlines():
        kind, pid, t, run_id, key = line.split()
        if kind == "S":
            starts[(int(pid), run_id)] = (float(t), key)
        else:
            s, key = starts.pop((int(pid), run_id))
            out.append((s, float(t), run_id, key, int(pid)))
    for (pid, run_id), (s, key) in starts.items():
        assert killed is not None and pid in killed, f"execution of {run_id} in {pid} never ended"
        out.append((s, killed[pid], run_id, key, 0))
    return sorted(out)


def busy(record: Path, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes] | None:
    """A process in the middle of an execution, if any."""
    if not record.exists():
        return None
    open_: dict[int, int] = defaultdict(int)
    for line in record.read_text().splitlines():
        kind, pid = line.split()[:2]
        open_[int(pid)] += 1 if kind == "S" else -1
    return next((p for p in procs if open_[p.pid] > 0), None)


def most_at_once(found: list[tuple[float, float, str, str, int]]) -> int:
    return max((sum(1 for a, b, *_ in found if a <= s < b) for s, *_ in found), default=0)


def all_succeeded(client: Client, ids: list[str]) -> bool:
    return all(client.get_run(i).status == "succeeded" for i in ids)


def test_global_concurrency_of_2_across_3_processes(client: Client, db_url: str, tmp_path: Path) -> None:
    client.set_limit("partner.%", concurrency=2)
    # due a moment later, so every worker process has started when they are
    ids = [client.submit(JOB, {"i": i}).run_in(1.5).execute() for i in range(24)]
    record = tmp_path / "record"
    # 1 thread each: the process whose run just settled is woken first and would take the
    # freed slot every time; with one thread it cannot hold both slots, so two must share
    with workers(db_url, 3, record, sleep=0.15, concurrency=1):
        wait_for(lambda: all_succeeded(client, ids), timeout=90, what="every run")
    found = spans(record)
    assert len(found) == 24
    assert most_at_once(found) == 2
    assert len({pid for *_, pid in found}) >= 2, "one process did all the work: nothing was contended"
    assert client.list_limits()[0].leased == 0


def test_per_tenant_concurrency_of_2_across_3_processes(db_url: str, tmp_path: Path) -> None:
    tenants = ("acme", "globex")
    for tenant in tenants:
        with Client(db_url, tenant=tenant) as c:
            c.auto_migrate()
            # due a moment later, so every worker process has started when they are
            c.submit_many([c.submit(JOB, {"key": tenant, "i": i}).run_in(1.5) for i in range(12)])
            c.set_limit("partner.%", concurrency=2, per_tenant=True)
    record = tmp_path / "record"
    clients = [Client(db_url, tenant=t) for t in tenants]
    # 2 threads each: no one process can hold both tenants' 2 slots, so they must share
    with workers(db_url, 3, record, sleep=0.2, concurrency=2):
        wait_for(
            lambda: all(r.status == "succeeded" for c in clients for r in c.list_runs(limit=100)),
            timeout=90,
            what="every run",
        )
    for c in clients:
        c.close()
    found = spans(record)
    assert len(found) == 24
    for tenant in tenants:
        assert most_at_once([f for f in found if f[3] == tenant]) == 2, tenant
    assert most_at_once(found) > 2, "the tenants never ran side by side"
    assert len({pid for *_, pid in found}) >= 2, "one process did all the work: nothing was contended"


def test_rate_of_5_per_second_across_3_processes(client: Client, db_url: str, tmp_path: Path) -> None:
    client.set_limit(JOB, rate=(5, timedelta(seconds=1)))
    ids = [client.submit(JOB, {"i": i}).execute() for i in range(18)]
    record = tmp_path / "record"
    began = time.monotonic()
    with workers(db_url, 3, record, sleep=0.0, concurrency=4):
        wait_for(lambda: all_succeeded(client, ids), timeout=90, what="every run")
    took = time.monotonic() - began
    leased = sorted(e.created_at for i in ids for e in client.get_events(i) if e.event_type == "leased")
    assert len(leased) == 18
    window = timedelta(seconds=1)
    assert max(sum(1 for t in leased if s <= t < s + window) for s in leased) <= 5
    assert leased[-1] - leased[0] >= timedelta(seconds=3), "18 starts at 5/s need more than 3 s"
    assert took < 60


def test_pause_and_resume_across_processes(client: Client, db_url: str, tmp_path: Path) -> None:
    client.pause("partner.%")
    ids = [client.submit(JOB, {"i": i}).execute() for i in range(6)]
    record = tmp_path / "record"
    with workers(db_url, 2, record, sleep=0.0):
        time.sleep(2.0)
        assert {client.get_run(i).status for i in ids} == {"pending"}
        assert not record.exists() or record.read_text() == ""
        client.resume("partner.%")
        wait_for(lambda: all_succeeded(client, ids), timeout=30, what="resumed runs")


def test_per_key_serialization_survives_sigkilled_workers(client: Client, db_url: str, tmp_path: Path) -> None:
    keys = ["customer:1", "customer:2", "customer:3"]
    ids: dict[str, list[str]] = defaultdict(list)
    for i in range(5):
        for key in keys:
            ids[key].append(
                client.submit(JOB, {"key": key, "i": i}).with_concurrency_key(key).with_max_attempts(10).execute()
            )
    record = tmp_path / "record"
    killed: dict[int, float] = {}
    every = [i for key in keys for i in ids[key]]
    with workers(db_url, 3, record, sleep=0.3, concurrency=2, lease=1.0) as procs:
        for _ in range(2):  # kill two of the three, each while it runs a keyed run
            victim = wait_for(lambda: busy(record, [p for p in procs if p.pid not in killed]), timeout=30)
            killed[victim.pid] = time.monotonic()
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        wait_for(lambda: all_succeeded(client, every), timeout=120, what="every run, after lease expiry")
    found = spans(record, killed)
    assert any(pid == 0 for *_, pid in found), "no kill cut an execution short"
    for key in keys:
        mine = [s for s in found if s[3] == key]
        assert all(mine[k][1] <= mine[k + 1][0] for k in range(len(mine) - 1)), f"{key}: two ran at once"
        # a run whose outcome a kill lost runs again before the next one (it is still the head)
        finished = list(dict.fromkeys(run_id for _, _, run_id, _, pid in mine if pid != 0))
        assert finished == ids[key], (
            f"{key}: not in submission order: {[ids[key].index(r) for r in finished]} {[(round(a, 2), round(b, 2), ids[key].index(r), p) for a, b, r, _, p in mine]}"
        )
    assert not any(x.status == "leased" for x in client.list_runs(limit=100))
