"""SIGINT/SIGTERM for the blocking ``start()`` of a Poller or a ScheduleTicker."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any


def stop_on_signals(stop: Callable[[], None], logger: logging.Logger, what: str) -> Callable[[], None]:
    """Call ``stop`` on SIGINT or SIGTERM until the returned function restores the
    previous handlers. Outside the main thread (where Python allows no handlers) it
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, frame: Any) -> None:
        logger.info("received %s: %s", signal.Signals(signum).name, what)
        stop()

    for s in previous:
        signal.signal(s, on_signal)

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return restore
