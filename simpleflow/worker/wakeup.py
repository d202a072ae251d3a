"""Wake-ups: how an idle poller learns at once that something became due.

Two sources set the poller's wake event: submissions and transitions in this
process (``local_bus``), and the dialect's watcher for other processes
(PostgreSQL LISTEN/NOTIFY; for SQLite files, a ``data_version`` check every
50 ms). Between wake-ups the poller sleeps until the earliest due time it
knows of, at most the poll interval.
"""

from __future__ import annotations

import threading

from simpleflow.db.database import Database
from simpleflow.db.dialect import Watcher
from simpleflow.db.notify import local_bus


class WakeUp:
    """Every wake-up source of one poller, started and stopped together."""

    def __init__(self, db: Database, channel: str, wake: threading.Event) -> None:
        self.db = db
        self.channel = channel
        self.wake = wake
        self.watcher: Watcher | None = None

    def start(self) -> None:
        local_bus.subscribe(self.db.key, self.wake)
        self.watcher = self.db.dialect.watcher(self.db.engine, self.channel, self.wake.set)
        if self.watcher is not None:
            self.watcher.start()

    def stop(self) -> None:
        local_bus.unsubscribe(self.db.key, self.wake)
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
