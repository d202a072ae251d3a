"""Watching the database for other processes' changes, for the pollers' wake-ups.

PostgreSQL: ``PgListener`` holds a LISTEN connection (reconnecting when it drops)
and calls back on every notification. SQLite: ``SqliteWatcher`` checks
``PRAGMA data_version`` every 50 ms, which changes when another connection commits.
``Dialect.watcher`` picks the one its database has.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("simpleflow.notify")

#: how often another SQLite process's commits are looked for
DATA_VERSION_INTERVAL = 0.05


class PgListener:
    """A thread holding a LISTEN connection; calls ``on_notify`` for every notification."""

    def __init__(self, url: str, channel: str, on_notify: Callable[[], None]) -> None:
        self.url = url
        self.channel = channel
        self.on_notify = on_notify
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simpleflow-listen", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        conn.execute(f'LISTEN "{self.channel}"')
        return conn

    def _loop(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as error:
                log.warning("LISTEN connection failed (%s); retrying in %.1fs", error, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            self.connected.set()
            # A reconnect may have missed notifications: wake the poller once.
            self.on_notify()
            try:
                with conn:
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.2):
                            self.on_notify()
            except Exception as error:
                self.connected.clear()
                if not self._stop.is_set():
                    log.warning("LISTEN connection lost (%s); reconnecting", error)
                    time.sleep(0.05)


class SqliteWatcher:
    """A thread that calls ``on_change`` when another connection commits to a SQLite file."""

    def __init__(self, path: str, on_change: Callable[[], None]) -> None:
        self.path = path
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simpleflow-data-version", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _loop(self) -> None:
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as error:
            log.warning("cannot watch %s for other processes' commits (%s); polling only", self.path, error)
            return
        try:
            last = None
            while not self._stop.wait(DATA_VERSION_INTERVAL):
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    continue
                if last is not None and version != last:
                    self.on_change()
                last = version
        finally:
            conn.close()
