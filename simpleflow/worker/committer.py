"""Group commit: handler outcomes from every worker thread written in few transactions.

A worker thread hands its run's outcome over and takes the next run at once; one
committer thread writes whatever has queued up in a single transaction (the time
a commit takes forms the next batch, so a lone run waits for nobody). The run
stays in flight, its lease renewed, until its outcome is committed, and every
write is fenced by the lease exactly as a single write would be.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simpleflow.worker.run import WorkflowRun

log = logging.getLogger("simpleflow.poller")

MAX_BATCH = 500


@dataclass
class Outcome:
    """What became of one attempt, waiting to be written."""

    run: WorkflowRun
    kind: str  # "complete", "fail" or "suspend"
    on_done: Callable[[Any], None]
    result: Any = None
    error: str = ""
    retry_in: float | None = None
    status: str = ""
    wake_in: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Committer:
    """One thread that writes queued outcomes in batches through ``write_batch``."""

    def __init__(self, write_batch: Callable[[list[Outcome]], list[Any]]) -> None:
        self._write_batch = write_batch
        self._queue: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="simpleflow-commit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, outcome: Outcome) -> None:
        self._queue.put(outcome)

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued so far, then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                answers = self._write_batch(batch)
            except Exception:
                log.exception("writing %d outcome(s) failed; their runs will be retried after their leases expire", len(batch))
                answers = [None] * len(batch)
            for item, answer in zip(batch, answers, strict=True):
                try:
                    item.on_done(answer)
                except Exception:
                    log.exception("run %s: outcome callback failed", item.run.id)
