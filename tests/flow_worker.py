"""A worker process for the flow-control tests: ``python flow_worker.py URL JSON-OPTIONS``.

A Poller for ``types`` whose handler appends ``S`` (start) and ``E`` (end) lines to
``record`` — ``S|E pid monotonic-time run-id payload-key`` — so the test can count
how many handlers ran at once across processes (``time.monotonic`` is one clock for
every process of the machine). A line is one ``write`` on an ``O_APPEND`` file, so
lines of different processes never interleave. Options: ``types``, ``record``,
``sleep`` (seconds per run), ``concurrency``, ``lease``, ``poll``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simpleflow import Poller, WorkflowRun


def main() -> None:
    url, opts = sys.argv[1], json.loads(sys.argv[2])
    fd = os.open(opts["record"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sleep = float(opts.get("sleep", 0.1))

    def note(kind: str, run: WorkflowRun) -> None:
        key = json.loads(run.payload).get("key", "-")
        os.write(fd, f"{kind} {os.getpid()} {time.monotonic():.6f} {run.id} {key}\n".encode())

    def handler(run: WorkflowRun) -> Any:
        note("S", run)
        time.sleep(sleep)
        note("E", run)
        return None

    poller = (
        Poller(url)
        .with_worker_id(f"flow-{os.getpid()}")
        .with_lease_duration(timedelta(seconds=opts.get("lease", 5.0)))
        .with_poll_interval(timedelta(seconds=opts.get("poll", 0.05)))
        .with_concurrency(opts.get("concurrency", 4))
    )
    for type_ in opts["types"]:
        poller.handle_func(type_, handler)
    print("ready", flush=True)
    poller.start()


if __name__ == "__main__":
    main()
