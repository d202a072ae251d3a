"""Flow control's SQL: the limits table and its changes, the circuit breaker; the claim of
governed runs is ``LimitClaims`` (``store.limit_claims``), which ``LimitStore`` extends.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, false, or_, select, true, update

from simpleflow.core.errors import NotFound
from simpleflow.core.limits import Limit, LimitSpec
from simpleflow.db.dialect_sql import db_now
from simpleflow.db.schema import workflow_limit, workflow_limit_start, workflow_run
from simpleflow.store.limit_claims import LimitClaims, LimitedClaim, Usage, usage_columns

__all__ = ["LimitStore", "LimitedClaim", "Usage"]

lim = workflow_limit.c
start = workflow_limit_start.c


class LimitStore(LimitClaims):
    """All SQL about ``workflow_limit`` and ``workflow_limit_start``."""

    # -- what limits exist --------------------------------------------------------------

    def patterns(self, conn: Connection) -> list[tuple[str, int | None, bool]]:
        """Every limit's pattern, circuit-breaker threshold and paused flag (the pollers' cheap
        refresh)."""
        stmt = self.statements.get(
            "limit_patterns", lambda: select(lim.pattern, lim.pause_after_failures, lim.paused).order_by(lim.pattern)
        )
        return [(str(p), n, bool(paused)) for p, n, paused in self.x(conn, stmt)]

    def paused(self, conn: Connection) -> list[str]:
        """The paused patterns."""
        return [str(p) for (p,) in self.x(conn, select(lim.pattern).where(lim.paused == true()).order_by(lim.pattern))]

    def list_all(self, conn: Connection) -> list[Limit]:
        """Every limit with its state and current usage (a per-tenant limit's: this store's
        tenant's, or every tenant's together for an unscoped store)."""
        # a per-tenant limit's usage is this store's tenant's; a global limit's, every tenant's
        mine = (or_(lim.per_tenant == false(), self.scope(t)) for t in (workflow_run, workflow_limit_start))
        rows = self.x(
            conn,
            select(
                *usage_columns(*mine),
                lim.pause_after_failures,
                lim.paused_reason,
                lim.consecutive_failures,
                lim.created_at,
                lim.updated_at,
            ).order_by(lim.pattern),
        )
        return [
            Limit(
                pattern=r.pattern,
                concurrency=r.concurrency,
                rate_count=r.rate_count,
                rate_period=None if r.rate_seconds is None else _seconds(r.rate_seconds),
                pause_after_failures=r.pause_after_failures,
                per_tenant=bool(r.per_tenant),
                paused=bool(r.paused),
                paused_reason=r.paused_reason,
                consecutive_failures=r.consecutive_failures,
                leased=r.leased,
                started_in_window=r.started if r.rate_seconds is not None else 0,
                created_at=r.created_at,
                updated_at=r.updated_at,
            )
            for r in rows
        ]

    # -- changes (each with its audit event, run_id NULL, detail.pattern) -----------------

    def set(self, conn: Connection, spec: LimitSpec) -> None:
        """Create or replace the numbers of a limit; its paused state and failure count stay."""
        values = {
            "prefix": spec.pattern[:-1] if spec.pattern.endswith("%") else None,
            "concurrency": spec.concurrency,
            "rate_count": spec.rate_count,
            "rate_seconds": spec.rate_seconds,
            "pause_after_failures": spec.pause_after_failures,
            "per_tenant": spec.per_tenant,
        }
        stmt = self.dialect.insert(workflow_limit).values(
            pattern=spec.pattern, **values, paused=False, created_at=db_now(), updated_at=db_now()
        )
        stmt = stmt.on_conflict_do_update(index_elements=[lim.pattern], set_={**values, "updated_at": db_now()})
        self.x(conn, stmt)
        self.add_events(conn, [_event("limit_set", spec.pattern, None, _spec_detail(spec))])
        self.notify(conn)

    def clear(self, conn: Connection, pattern: str) -> None:
        """Remove a limit (and its rate window); ``NotFound`` if there is none."""
        if self.x(conn, delete(workflow_limit).where(lim.pattern == pattern)).rowcount == 0:
            raise NotFound(f"no limit on {pattern!r}; list them with client.list_limits()")
        self.x(conn, delete(workflow_limit_start).where(start.pattern == pattern))
        self.add_events(conn, [_event("limit_cleared", pattern, None, {})])
        self.notify(conn)

    def pause(self, conn: Connection, pattern: str, reason: str, worker_id: str | None = None) -> None:
        """Stop claims of matching types (a limit row with no numbers if none exists)."""
        stmt = self.dialect.insert(workflow_limit).values(
            pattern=pattern,
            prefix=pattern[:-1] if pattern.endswith("%") else None,
            paused=True,
            paused_reason=reason,
            created_at=db_now(),
            updated_at=db_now(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[lim.pattern], set_={"paused": True, "paused_reason": reason, "updated_at": db_now()}
        )
        self.x(conn, stmt)
        self.add_events(conn, [_event("paused", pattern, worker_id, {"reason": reason})])

    def resume(self, conn: Connection, pattern: str) -> None:
        """Claims of matching types start again; the failure count restarts at 0. A row that
        only existed to pause goes away. ``NotFound`` if nothing is paused under ``pattern``."""
        done = self.x(
            conn,
            update(workflow_limit)
            .where(lim.pattern == pattern, lim.paused == true())
            .values(paused=False, paused_reason=None, consecutive_failures=0, updated_at=db_now()),
        ).rowcount
        if not done:
            raise NotFound(f"{pattern!r} is not paused; list limits with client.list_limits()")
        self.x(
            conn,
            delete(workflow_limit).where(
                lim.pattern == pattern,
                lim.concurrency.is_(None),
                lim.rate_count.is_(None),
                lim.pause_after_failures.is_(None),
            ),
        )
        self.add_events(conn, [_event("resumed", pattern, None, {})])
        self.notify(conn)

    def record_attempts(self, conn: Connection, worker_id: str, failed: bool, patterns: Sequence[str]) -> list[str]:
        """The circuit breaker: count a failed attempt (or reset the count after a success) on
        these limits; the ones that reach ``pause_after_failures`` pause. Returns those."""
        if not patterns:
            return []
        listed = sorted(set(patterns))
        if not failed:
            self.x(
                conn,
                update(workflow_limit)
                .where(lim.pattern.in_(listed), lim.consecutive_failures != 0)
                .values(consecutive_failures=0),
            )
            return []
        rows = self.x(
            conn,
            update(workflow_limit)
            .where(lim.pattern.in_(listed), lim.pause_after_failures.is_not(None))
            .values(consecutive_failures=lim.consecutive_failures + 1)
            .returning(lim.pattern, lim.consecutive_failures, lim.pause_after_failures, lim.paused),
        ).all()
        tripped = sorted(r.pattern for r in rows if not r.paused and r.consecutive_failures >= r.pause_after_failures)
        for pattern in tripped:
            self.pause(conn, pattern, "circuit breaker", worker_id)
        return tripped

    # -- the claim ----------------------------------------------------------------------


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _spec_detail(spec: LimitSpec) -> dict[str, Any]:
    return {
        "concurrency": spec.concurrency,
        "rate_count": spec.rate_count,
        "rate_seconds": spec.rate_seconds,
        "pause_after_failures": spec.pause_after_failures,
    }


def _event(kind: str, pattern: str, worker_id: str | None, detail: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": None, "event_type": kind, "worker_id": worker_id, "detail": {"pattern": pattern, **detail}}
