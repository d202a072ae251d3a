"""Background services of a poller: a common start/stop lifecycle and failure accounting.

A service runs ``tick()`` every ``interval`` seconds on its own thread until it
is stopped. A tick that raises is logged with how many times in a row it has
failed; a service failing repeatedly is reported in ``health()``, which the
registry heartbeat stores in the worker's row and ``stats`` shows. Nothing is
swallowed silently and no failure stops the loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("simpleflow.poller")

#: consecutive failures after which a service is reported unhealthy
UNHEALTHY_AFTER = 3


class Service:
    """One background loop: ``tick`` every ``interval`` seconds (``interval()`` may change)."""

    def __init__(self, name: str, tick: Callable[[], Any], interval: float | Callable[[], float]) -> None:
        self.name = name
        self._tick = tick
        self._interval = interval if callable(interval) else (lambda: float(interval))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"simpleflow-{self.name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next tick now."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None

    def run_once(self) -> None:
        """One tick, with the failure accounting of the loop."""
        try:
            self._tick()
        except Exception as error:
            self.failures += 1
            self.last_error = f"{type(error).__name__}: {error}"
            level = logging.ERROR if self.failures >= UNHEALTHY_AFTER else logging.WARNING
            log.log(level, "%s failed (%d in a row): %s; will retry", self.name, self.failures, self.last_error)
        else:
            if self.failures >= UNHEALTHY_AFTER:
                log.info("%s recovered after %d failures", self.name, self.failures)
            self.failures = 0
            self.last_error = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval())
            self._wake.clear()
            if self._stop.is_set():
                return
            self.run_once()


def health(services: Sequence[Service]) -> dict[str, Any]:
    """The services failing repeatedly: ``{name: {"failures": n, "error": "..."}}``."""
    return {s.name: {"failures": s.failures, "error": s.last_error} for s in services if s.failures >= UNHEALTHY_AFTER}
