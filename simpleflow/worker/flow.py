"""A poller's side of flow control: which limits can govern its types, the claim of the
runs they govern, when to look again, and the circuit breaker's count.

The limit patterns are re-read from the database at most every ``REFRESH_SECONDS``
(a claim cycle after that reads them again); their numbers and paused state are read fresh by every
claim (``LimitStore.claim``), so a change applies at the next claim of every worker.
The unlimited claim never needs this list: it reads the limits table in its own
statement to leave governed types alone.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from simpleflow.core.errors import SimpleflowError
from simpleflow.core.limits import governs_any, matches
from simpleflow.db.database import Database
from simpleflow.store import Store
from simpleflow.store.claimed import ClaimedRun
from simpleflow.worker.metrics import MetricsCollector
from simpleflow.worker.routing import Routing

log = logging.getLogger("simpleflow.limits")

#: how stale the list of limit patterns may get while a poller claims without sleeping
REFRESH_SECONDS = 0.5
#: the shortest sleep a blocked limited claim asks for (another worker is committing)
MIN_WAIT = 0.01


class FlowControl:
    """The limits one poller obeys beyond its own threads and per-handler caps."""

    def __init__(self, db: Database, store: Store, routing: Routing, metrics: MetricsCollector) -> None:
        self.db, self.store, self.routing, self.metrics = db, store, routing, metrics
        self.relevant: list[str] = []  # patterns that can govern a type this poller claims
        self.breakers: list[str] = []  # those of them with pause_after_failures
        self.unpaused: list[str] = []  # those of them not paused
        self.refreshed = float("-inf")
        self.window_in: float | None = None  # from the last limited claim that got nothing
        self.due_in: float | None = None

    def refresh(self) -> None:
        """Re-read which limits exist, when the list is older than ``REFRESH_SECONDS``."""
        if time.monotonic() - self.refreshed < REFRESH_SECONDS:
            return
        rows = self.db.run(self.store.limits.patterns, read=True, what="reading limits")
        types, prefixes = self.routing.types, self.routing.prefixes
        self.relevant = [p for p, _, _ in rows if governs_any(p, types, prefixes)]
        self.breakers = [p for p, n, _ in rows if n is not None and p in self.relevant]
        self.unpaused = [p for p, _, paused in rows if not paused and p in self.relevant]
        self.refreshed = time.monotonic()
        if not self.relevant:
            self.window_in = self.due_in = None

    def claim(
        self, route: Any, limit: int, worker_id: str, lease_seconds: float, fair: bool = False, after: str = ""
    ) -> list[ClaimedRun]:
        """Lease up to ``limit`` governed runs of ``route`` (one transaction); ``fair``: shared
        among tenants in turn after ``after``, as the unlimited claim."""
        if not self.relevant or limit <= 0:
            return []
        got = self.db.run(
            partial(
                self.store.limits.claim,
                leases=self.store.leases,
                worker_id=worker_id,
                route=route,
                patterns=self.relevant,
                limit=limit,
                lease_seconds=lease_seconds,
                fair=fair,
                after=after,
            ),
            what="claiming limited runs",
        )
        self.window_in, self.due_in = got.window_in, got.due_in
        return got.runs

    def sleep_hint(self) -> float | None:
        """Seconds until governed work may become claimable by itself (None: unknown)."""
        hints = [h for h in (self.window_in, self.due_in) if h is not None]
        return max(MIN_WAIT, min(hints)) if hints and self.relevant else None

    def busy_soon(self, horizon: float) -> bool:
        """run_until_idle: governed work that is not paused is due (waiting for a slot or a
        rate window, which frees by itself), or will be within ``horizon``."""
        if not self.unpaused:
            return False

        def due(conn: Any) -> bool:
            return any(
                self.store.limits.next_due_in(conn, route, self.unpaused, horizon) is not None
                for route in self.routing.all_filters()
            )

        return bool(self.db.run(due, read=True))

    def record(self, run_type: str, failed: bool, worker_id: str) -> None:
        """The circuit breaker: count this attempt on the limits governing its type."""
        patterns = [p for p in self.breakers if matches(p, run_type)]
        if not patterns:
            return
        try:
            tripped = self.db.run(
                lambda c: self.store.limits.record_attempts(c, worker_id, failed, patterns),
                what="counting failures for a circuit breaker",
            )
        except SimpleflowError as error:
            log.warning("%s", error)
            return
        for pattern in tripped:
            log.error(
                "circuit breaker: %r paused after too many consecutive failed attempts (last: a %s run); "
                "no worker claims matching runs until client.resume(%r) or `simpleflow resume %s`",
                pattern,
                run_type,
                pattern,
                pattern,
            )
            record = getattr(self.metrics, "record_limit_paused", None)
            if record is not None:
                record(pattern, worker_id)
