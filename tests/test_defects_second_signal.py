"""A second Ctrl-C (or SIGTERM) during a worker's drain releases the in-flight runs and
exits at once (issue 11); it used to be ignored for up to the 30 s drain.

Real ``simpleflow worker`` processes with a handler that takes a minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from poller_helpers import wait_for

from simpleflow import Client

REPO = Path(__file__).resolve().parent.parent

APP = """
import os
import time
from simpleflow import Poller

def slow(run):
    time.sleep(60)
    return "too late"

poller = Poller(os.environ["SIMPLEFLOW_DATABASE_URL"]).handle_func("slow.job.v1", slow)
"""


def _start_worker(url: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPLEFLOW_")}
    env.update(
        PYTHONPATH=str(REPO),
        SIMPLEFLOW_DATABASE_URL=url,
        SIMPLEFLOW_POLL_INTERVAL="0.1",
        SIMPLEFLOW_LEASE_SECONDS="30",
        SIMPLEFLOW_LOG_LEVEL="INFO",
        SIMPLEFLOW_WORKER_ID="sig-w1",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "simpleflow", "worker", "slowapp:poller"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_releases_the_runs_and_exits_at_once(
    client: Client, db_url: str, tmp_path: Path, signum: signal.Signals
) -> None:
    (tmp_path / "slowapp.py").write_text(textwrap.dedent(APP))
    run_id = client.submit("slow.job.v1", {}).with_max_attempts(3).execute()
    proc = _start_worker(db_url, tmp_path)
    try:
        wait_for(lambda: client.get_run(run_id).status == "leased", timeout=30, what="the worker to claim the run")
        assert client.get_run(run_id).attempt == 1
        proc.send_signal(signum)
        time.sleep(1.0)
        assert proc.poll() is None, "the first signal must drain (wait for the handler), not exit"
        assert client.get_run(run_id).status == "leased"  # still draining
        began = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(timeout=30)
        elapsed = time.monotonic() - began
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert elapsed < 2.5, f"exited {elapsed:.1f}s after the second signal\n{err}"
    assert code == 0, err
    assert "Traceback" not in err, err
    assert "drain" in err  # the first signal says so
    assert "again" in err  # the second one too
    info = client.get_run(run_id)
    assert (info.status, info.attempt, info.leased_by) == ("pending", 0, None), info  # the attempt was not spent
    assert "released" in [e.event_type for e in client.get_events(run_id)]
