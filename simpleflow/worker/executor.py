"""The executor pool: worker threads that run handlers and turn each attempt into a transition.

A handler's return value becomes ``complete``; any exception it raises, a
``SystemExit``, ``KeyboardInterrupt``, ``CancelledError`` or ``GeneratorExit``
included, becomes ``retry`` or ``fail`` by the retry policy, and the thread
lives on. An attempt that outlives its timeout is abandoned: its failure is
recorded at once (an ``AttemptTimeout``), a replacement thread keeps the pool at
full strength, and whatever the abandoned handler returns later is dropped (and
would be fenced off by its lease token anyway). Python cannot kill a thread, so
at most ``max_abandoned`` stuck threads (default ``max(8, 2 * size)``) are replaced; past that the pool runs
short, and says so at ERROR.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from simpleflow.core.attempt import Attempt
from simpleflow.core.retry import RetryPolicy
from simpleflow.core.states import Transition

log = logging.getLogger("simpleflow.poller")


@dataclass
class Handler:
    """A registered handler: ``invoke(run)`` returns the attempt's transition, or None when
    there is nothing to write (a workflow that found its lease gone)."""

    type: str
    invoke: Callable[[Attempt], Transition | None]
    concurrency: int | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None  # seconds; None: the poller's default


class State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # the handler returned; its outcome is with the committer
    ABANDONED = "abandoned"  # timed out or released; its handler's outcome is dropped


@dataclass(eq=False)
class InFlight:
    """One claimed attempt, from dispatch until its outcome is written (or given up on)."""

    run: Attempt
    handler: Handler
    timeout: float | None
    state: State = State.QUEUED
    started: float = 0.0
    thread: threading.Thread | None = field(default=None, repr=False)


class ExecutorPool:
    """``size`` threads running ``execute(item)`` for submitted items, with timeouts."""

    def __init__(
        self,
        size: int,
        execute: Callable[[InFlight], None],
        on_timeout: Callable[[InFlight], None],
        *,
        max_abandoned: int | None = None,
    ) -> None:
        self.size = size
        self._execute = execute
        self._on_timeout = on_timeout
        self.max_abandoned = max_abandoned if max_abandoned is not None else max(8, 2 * size)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[InFlight | None] = queue.SimpleQueue()
        self._running: set[InFlight] = set()
        self._live = 0  # threads serving the queue
        self.stuck = 0  # threads still inside an abandoned handler
        self._watch = threading.Event()
        self._stopped = threading.Event()
        self._numbers = 0

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self._queue = queue.SimpleQueue()  # a previous start's sentinels never reach these threads
        self._stopped.clear()
        with self._lock:
            self._live = 0
            for _ in range(self.size):
                self._spawn()
        threading.Thread(target=self._watchdog, name="simpleflow-watchdog", daemon=True).start()

    def stop(self) -> None:
        """End the serving threads once the queue is empty; stuck ones end on their own."""
        self._stopped.set()
        self._watch.set()
        with self._lock:
            live = self._live
        for _ in range(live):
            self._queue.put(None)

    def submit(self, item: InFlight) -> None:
        self._queue.put(item)

    # -- state changes ---------------------------------------------------------------

    def finish(self, item: InFlight) -> bool:
        """The handler returned: True if its outcome is still ours to write."""
        with self._lock:
            if item.state is not State.RUNNING:
                return False
            item.state = State.DONE
            self._running.discard(item)
            return True

    def abandon(self, item: InFlight) -> bool:
        """Give up on an attempt that is queued or running (timeout, or a stop that cannot
        wait longer); True if it was. A thread stuck in its handler is replaced."""
        with self._lock:
            if item.state not in (State.QUEUED, State.RUNNING):
                return False
            was_running = item.state is State.RUNNING
            item.state = State.ABANDONED
            self._running.discard(item)
            if was_running:
                self.stuck += 1
                self._live -= 1
                if self.stuck <= self.max_abandoned and not self._stopped.is_set():
                    self._spawn()
                elif not self._stopped.is_set():
                    log.error(
                        "%d worker thread(s) are stuck in abandoned handlers (limit %d): running with %d of %d "
                        "threads until they return",
                        self.stuck,
                        self.max_abandoned,
                        self._live,
                        self.size,
                    )
        item.run.mark_lost()
        return True

    def busy(self) -> int:
        """Threads' worth of work taken: queued and running attempts."""
        with self._lock:
            return len(self._running)

    def capacity(self) -> int:
        """Threads serving the queue now (``size`` unless stuck threads could not be replaced)."""
        with self._lock:
            return self._live

    # -- threads ---------------------------------------------------------------------

    def _spawn(self) -> None:
        self._numbers += 1
        self._live += 1
        threading.Thread(target=self._serve, name=f"simpleflow-worker-{self._numbers}", daemon=True).start()

    def reserve(self, item: InFlight) -> None:
        """Count an item as taking a thread from dispatch on (``busy``)."""
        with self._lock:
            self._running.add(item)

    def _serve(self) -> None:
        work = self._queue
        while True:
            item = work.get()
            if item is None:
                return
            with self._lock:
                if item.state is not State.QUEUED:
                    continue
                item.state = State.RUNNING
                item.started = time.monotonic()
                item.thread = threading.current_thread()
            if item.timeout is not None:
                self._watch.set()
            try:
                self._execute(item)
            except BaseException:  # never let anything kill a worker thread
                log.exception("run %s: unexpected error in the executor", item.run.id)
                with self._lock:
                    if item.state is State.RUNNING:  # pragma: no cover - execute settles its items
                        item.state = State.DONE
                        self._running.discard(item)
            with self._lock:
                if item.state is not State.ABANDONED:
                    continue
                # This thread was counted out (and maybe replaced) when its item was abandoned.
                self.stuck -= 1
                if self._live < self.size and not self._stopped.is_set():
                    self._live += 1  # nobody replaced it: serve again
                    continue
            return

    def _watchdog(self) -> None:
        """Abandon attempts past their timeout; sleeps until the earliest one is due."""
        while not self._stopped.is_set():
            now = time.monotonic()
            late: list[InFlight] = []
            wait = 1.0
            with self._lock:
                for item in self._running:
                    if item.state is not State.RUNNING or item.timeout is None:
                        continue
                    left = item.started + item.timeout - now
                    if left <= 0:
                        late.append(item)
                    else:
                        wait = min(wait, left)
            for item in late:
                if self.abandon(item):
                    self._on_timeout(item)
            self._watch.wait(wait)
            self._watch.clear()
