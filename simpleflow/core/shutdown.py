"""SIGINT/SIGTERM for the blocking ``start()`` of a Poller or a ScheduleTicker.

The first signal asks for a graceful stop (a Poller drains: it waits for in-flight
handlers); a second one, while that is under way, asks to stop at once (a Poller
releases its in-flight runs without spending their attempts and returns).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any


def stop_on_signals(
    stop: Callable[[], None],
    logger: logging.Logger,
    what: str,
    *,
    second: Callable[[], None] | None = None,
    second_what: str = "stopping at once",
) -> Callable[[], None]:
    """Call ``stop`` on the first SIGINT or SIGTERM and ``second`` (default: ``stop``
    again) on every later one, until the returned function restores the previous
    handlers. Outside the main thread (where Python allows no handlers) it does nothing.

    The handlers only set flags and log: they run in the main thread between two
    bytecodes, wherever it is (claiming, draining, committing).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        received.append(signum)
        if len(received) == 1:
            if second is not None:
                logger.info("received %s: %s; send it again to stop at once", name, what)
            else:
                logger.info("received %s: %s", name, what)
            stop()
        elif second is not None:
            logger.warning("received %s again: %s", name, second_what)
            second()
        else:
            logger.info("received %s again: %s", name, what)
            stop()

    for s in previous:
        signal.signal(s, on_signal)

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return restore
