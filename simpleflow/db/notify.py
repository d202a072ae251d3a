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

#: PostgreSQL identifiers (and so channel names) are at most NAMEDATALEN - 1 bytes
MAX_CHANNEL_BYTES = 63
CHANNEL_PREFIX = "simpleflow"


def notify_channel(schema: str | None) -> str:
    """The NOTIFY/LISTEN channel of simpleflow's tables in ``schema``: every sender and
    listener uses this one function.

    ``simpleflow_<schema>`` when that fits PostgreSQL's 63 bytes; a longer schema name
    (53-63 characters) keeps its first 40 characters, then ``-`` and 10 hex digits of
    its SHA-256, so the channel still fits. The ``-`` cannot occur in a schema name,
    so a hashed channel never equals another schema's plain one.
    """
    if not schema:
        return CHANNEL_PREFIX
    channel = f"{CHANNEL_PREFIX}_{schema}"
    if len(channel.encode("utf-8")) <= MAX_CHANNEL_BYTES:
        return channel
    digest = hashlib.sha256(schema.encode("utf-8")).hexdigest()[:10]
    return f"{CHANNEL_PREFIX}_{schema[:40]}-{digest}"


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
