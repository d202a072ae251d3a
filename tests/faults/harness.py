"""What the fault tests share: the soak scale, a fleet of worker processes to kill, chaos,
database reads for the final checks, and the ``FAULTS …`` report lines."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from simpleflow import Client
from simpleflow.db.schema import workflow_event, workflow_run

from .tables import fault_exec

WORKER = Path(__file__).with_name("worker.py")

#: every report line of this session, printed in pytest's terminal summary (see conftest.py)
REPORTS: list[str] = []


def scale() -> float:
    """``SIMPLEFLOW_SOAK_SCALE`` (default 1): ``nox -s soak`` sets 10."""
    value = float(os.environ.get("SIMPLEFLOW_SOAK_SCALE", "1") or 1)
    if value <= 0:
        raise ValueError(f"SIMPLEFLOW_SOAK_SCALE must be > 0, got {value}")
    return value


def scaled(n: int) -> int:
    return max(1, round(n * scale()))


def report(test: str, **counts: Any) -> None:
    line = f"FAULTS {test}: " + " ".join(f"{k}={v}" for k, v in counts.items())
    REPORTS.append(line)
    print(line, flush=True)


# -- processes ----------------------------------------------------------------------------


def untraced_env() -> dict[str, str]:
    """This environment without coverage's subprocess hook: the processes a fault test starts are
    timed and killed by the hundred, and tracing them would slow exactly what the suite measures."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}


@dataclass
class Fleet:
    """Worker processes of one kind (``worker.py MODE URL OPTIONS``), killed and replaced at will."""

    mode: str
    url: str
    options: str
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    alive: list[subprocess.Popen[bytes]] = field(default_factory=list)
    all: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    log_of: dict[int, Path] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(os.getpid()))

    def spawn(self, n: int = 1, **env: str) -> list[subprocess.Popen[bytes]]:
        self.logs.mkdir(parents=True, exist_ok=True)
        started = []
        for _ in range(n):
            path = self.logs / f"{self.mode}-{len(self.all):04d}.log"
            log = open(path, "wb")  # noqa: SIM115 (the child owns it)
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), self.mode, self.url, self.options],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**untraced_env(), **self.env, **env},
            )
            log.close()
            self.log_of[proc.pid] = path
            self.alive.append(proc)
            self.all.append(proc)
            started.append(proc)
        return started

    def kill_random(self) -> int | None:
        """SIGKILL one live process at random; returns its pid."""
        self.reap()
        if not self.alive:
            return None
        proc = self.rng.choice(self.alive)
        self.kill(proc)
        return proc.pid

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            if sig == signal.SIGKILL:
                self.killed.add(proc.pid)
        proc.wait(timeout=60)
        if proc in self.alive:
            self.alive.remove(proc)

    def reap(self) -> None:
        """Forget processes that exited on their own (and fail loudly if one crashed)."""
        for proc in list(self.alive):
            if proc.poll() is not None:
                self.alive.remove(proc)
                if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
                    text = self.log_of[proc.pid].read_text(errors="replace")[-4000:]
                    raise AssertionError(f"a {self.mode} process exited with {proc.returncode}:\n{text}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every live process (a graceful drain), SIGKILL what is left after ``timeout``."""
        for proc in self.alive:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in list(self.alive):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(proc)
        self.alive.clear()

    def tail(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.logs.glob(f"{self.mode}-*.log"))[-3:]:
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def logged(self, needle: str) -> int:
        """How many lines of every process's output contain ``needle``."""
        return sum(p.read_text(errors="replace").count(needle) for p in self.logs.glob(f"{self.mode}-*.log"))


def chaos(
    fleets: list[Fleet],
    *,
    until: Callable[[], bool],
    seconds: float,
    interval: float = 0.5,
    rng: random.Random | None = None,
) -> int:
    """Every ~``interval`` s SIGKILL a random process of a random fleet and start a replacement,
    until ``until()`` or ``seconds`` pass. Returns the number of kills."""
    rng = rng or random.Random()
    deadline = time.monotonic() + seconds
    kills = 0
    while time.monotonic() < deadline and not until():
        time.sleep(interval * rng.uniform(0.5, 1.5))
        fleet = rng.choice(fleets)
        if fleet.kill_random() is not None:
            kills += 1
        fleet.spawn()
    return kills


def wait_until(predicate: Callable[[], Any], *, seconds: float, what: str, fleets: Iterable[Fleet] = ()) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        for fleet in fleets:
            fleet.reap()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(f.tail() for f in fleets)
            raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}\n{tails}")
        time.sleep(0.2)


# -- reading the outcome ------------------------------------------------------------------------


def rows(client: Client, stmt: Any) -> list[Any]:
    return client.db.run(lambda conn: conn.execute(stmt, execution_options=client.db.exec_options).all())


def status_counts(client: Client) -> Counter[str]:
    run = workflow_run.c
    return Counter({s: int(n) for s, n in rows(client, sa.select(run.status, sa.func.count()).group_by(run.status))})


def unfinished(client: Client) -> int:
    counts = status_counts(client)
    return sum(n for s, n in counts.items() if s not in ("succeeded", "failed", "cancelled"))


def events_by_run(
    client: Client, run_ids: set[str] | None = None
) -> dict[str, list[tuple[str, str | None, int | None]]]:
    """(event type, worker id, attempt) per run, oldest first."""
    ev = workflow_event.c
    out: dict[str, list[tuple[str, str | None, int | None]]] = defaultdict(list)
    for run_id, kind, worker, attempt in rows(
        client,
        sa.select(ev.run_id, ev.event_type, ev.worker_id, ev.attempt).where(ev.run_id.is_not(None)).order_by(ev.id),
    ):
        if run_ids is None or run_id in run_ids:
            out[run_id].append((kind, worker, attempt))
    return out


def executions(client: Client, name: str = "handler") -> dict[str, list[tuple[int, int]]]:
    """(pid, attempt) of every logged execution, per run, in order; a retried log insert
    that had in fact committed is counted once."""
    ex = fault_exec.c
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for run_id, pid, attempt in rows(
        client, sa.select(ex.run_id, ex.pid, ex.attempt).where(ex.name == name).order_by(ex.id)
    ):
        if (pid, attempt) not in out[run_id] or attempt == 0:
            out[run_id].append((pid, attempt))
    return out


def check_exactly_once(client: Client, expected: int) -> dict[str, list[tuple[str, str | None, int | None]]]:
    """Every run exists and succeeded, with exactly one ``succeeded`` event; returns the events."""
    counts = status_counts(client)
    assert counts == Counter({"succeeded": expected}), f"runs by status: {dict(counts)} (expected {expected} succeeded)"
    events = events_by_run(client)
    wrong = {r: e for r, e in events.items() if sum(1 for k, _, _ in e if k == "succeeded") != 1}
    assert not wrong, f"{len(wrong)} run(s) without exactly one 'succeeded' event, e.g. {next(iter(wrong.items()))}"
    return events


def unexplained_duplicates(
    runs: dict[str, list[tuple[int, int]]],
    events: dict[str, list[tuple[str, str | None, int | None]]],
    killed: set[int] | None,
) -> tuple[int, list[str]]:
    """(runs executed more than once, the ones no expired lease explains).

    An execution other than the one that succeeded is explained when its attempt has a
    ``lease_expired`` event (the worker stopped renewing: it died or lost the database)
    and, when ``killed`` is given, its process is one the test SIGKILLed.
    """
    duplicates = 0
    bad: list[str] = []
    for run_id, done in runs.items():
        if len(done) <= 1:
            continue
        duplicates += 1
        evs = events.get(run_id, [])
        won = next((a for k, _, a in evs if k == "succeeded"), None)
        expired = {a for k, _, a in evs if k == "lease_expired"}
        for pid, attempt in done:
            if attempt == won:
                continue
            if attempt not in expired or (killed is not None and pid not in killed):
                bad.append(f"run {run_id}: execution by pid {pid} attempt {attempt}; executions {done}; events {evs}")
    return duplicates, bad
