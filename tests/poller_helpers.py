"""Helpers shared by the poller test files: fast pollers, background running, polling waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from simpleflow import Client, Poller, RetryPolicy

#: retries after milliseconds, no jitter: a failing run burns through its attempts at once
FAST_RETRY = RetryPolicy(
    initial_delay=timedelta(milliseconds=10), multiplier=2.0, max_delay=timedelta(milliseconds=50), jitter=0.0
)
LEASE = timedelta(seconds=1)


def make_poller(
    url: str,
    worker_id: str,
    *,
    lease: timedelta = LEASE,
    concurrency: int = 4,
    poll: timedelta = timedelta(milliseconds=100),
    retry: RetryPolicy = FAST_RETRY,
    cls: type[Poller] = Poller,
) -> Poller:
    """A poller tuned for tests: short lease, quick polls, millisecond retries."""
    return (
        cls(url)
        .with_worker_id(worker_id)
        .with_lease_duration(lease)
        .with_poll_interval(poll)
        .with_concurrency(concurrency)
        .with_retry_policy(retry)
    )


@contextmanager
def started(poller: Poller, stop_timeout: timedelta = timedelta(seconds=5)) -> Iterator[Poller]:
    """``poller.start()`` in a thread for the ``with`` block; waits until its loop runs; stops after."""
    thread = threading.Thread(target=poller.start, name=f"test-{poller.worker_id}", daemon=True)
    thread.start()
    wait_for(lambda: poller._running, what=f"{poller.worker_id} to start")
    try:
        yield poller
    finally:
        poller.stop(stop_timeout)
        thread.join(timeout=30)
        assert not thread.is_alive(), f"{poller.worker_id}: start() did not return after stop()"


def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def event_types(client: Client, run_id: str) -> list[str]:
    return [e.event_type for e in client.get_events(run_id)]


def raw_status(client: Client, run_id: str) -> str:
    return client.get_run(run_id).status
