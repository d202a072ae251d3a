"""Wake-ups: how an idle poller learns at once that work was submitted.

PostgreSQL: submissions ``pg_notify`` in their own transaction and each poller
LISTENs on one dedicated connection (reconnecting when it drops). SQLite: a
submission in the same process sets the wake-up event of every poller on the
same database file. The poll interval is the fallback everywhere.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import defaultdict

log = logging.getLogger("simpleflow.notify")

#: PostgreSQL truncates identifiers, channel names included, at 63 bytes
MAX_CHANNEL = 63


def notify_channel(schema: str | None) -> str:
    """The LISTEN/NOTIFY channel of a schema: ``simpleflow_<schema>`` when it fits in 63
    bytes, else a stable short form with a hash of the whole name."""
    if not schema:
        return "simpleflow"
    channel = f"simpleflow_{schema}"
    if len(channel.encode()) <= MAX_CHANNEL:
        return channel
    digest = hashlib.sha1(schema.encode()).hexdigest()[:12]
    return f"simpleflow_{schema[:MAX_CHANNEL - len('simpleflow_') - 13]}_{digest}"


class _LocalBus:
    """In-process wake-ups, keyed by database (the same file or server and schema)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = defaultdict(set)

    def subscribe(self, key: str, event: threading.Event) -> None:
        with self._lock:
            self._waiters[key].add(event)

    def unsubscribe(self, key: str, event: threading.Event) -> None:
        with self._lock:
            self._waiters[key].discard(event)

    def publish(self, key: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(key, ()))
        for event in waiters:
            event.set()


#: One per process: wake-ups cross every Client and Poller object in it.
local_bus = _LocalBus()
