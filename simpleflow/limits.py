"""Flow control for operators: set, list and clear limits, pause and resume type patterns.

``Client.set_limit`` and friends (and the CLI's ``limits``, ``pause``, ``resume``)
delegate here. Limits live in the database (``workflow_limit``); every poller
reads them at claim time, so a change applies to all workers at their next claim.
"""

from __future__ import annotations

from datetime import timedelta

from simpleflow.core.limits import Limit, check_pattern, limit_spec
from simpleflow.db.notify import local_bus
from simpleflow.store import HasStore, Store, store_of


def set_limit(
    target: Store | HasStore,
    pattern: str,
    *,
    concurrency: int | None = None,
    rate: tuple[int, timedelta | float] | str | None = None,
    pause_after_failures: int | None = None,
    per_tenant: bool = False,
) -> None:
    """Create or replace the limit on ``pattern`` (its paused state is kept)."""
    spec = limit_spec(pattern, concurrency, rate, pause_after_failures, per_tenant)
    store = store_of(target)
    store.db.run(lambda conn: store.limits.set(conn, spec), what="setting a limit")
    local_bus.publish(store.db.key)


def list_limits(target: Store | HasStore) -> list[Limit]:
    """Every limit, with its paused state and current usage, by pattern."""
    store = store_of(target)
    return store.db.run(store.limits.list_all, read=True)


def clear_limit(target: Store | HasStore, pattern: str) -> None:
    """Remove the limit on ``pattern`` (``NotFound`` if there is none)."""
    pattern = check_pattern(pattern)
    store = store_of(target)
    store.db.run(lambda conn: store.limits.clear(conn, pattern), what="clearing a limit")
    local_bus.publish(store.db.key)


def pause(target: Store | HasStore, pattern: str) -> None:
    """No new claims of matching types anywhere; submissions are still accepted and
    in-flight runs finish."""
    pattern = check_pattern(pattern)
    store = store_of(target)
    store.db.run(lambda conn: store.limits.pause(conn, pattern, "manual"), what="pausing")


def resume(target: Store | HasStore, pattern: str) -> None:
    """Claims of matching types start again (``NotFound`` if ``pattern`` is not paused)."""
    pattern = check_pattern(pattern)
    store = store_of(target)
    store.db.run(lambda conn: store.limits.resume(conn, pattern), what="resuming")
    local_bus.publish(store.db.key)


class LimitMethods:
    """``Client``'s flow-control methods: thin calls into ``simpleflow.limits``."""

    store: Store

    def set_limit(
        self,
        pattern: str,
        *,
        concurrency: int | None = None,
        rate: tuple[int, timedelta | float] | str | None = None,
        pause_after_failures: int | None = None,
        per_tenant: bool = False,
    ) -> None:
        """Limit every worker's claims of types matching ``pattern`` (an exact type or
        ``prefix%``): at most ``concurrency`` leased at once, at most ``rate=(n, per)``
        starts in any window of ``per``, pause after ``pause_after_failures`` consecutive
        failed attempts. With ``per_tenant=True`` the concurrency and the rate hold for
        each tenant on its own. Replaces the numbers of an existing limit on the same
        pattern."""
        set_limit(
            self.store,
            pattern,
            concurrency=concurrency,
            rate=rate,
            pause_after_failures=pause_after_failures,
            per_tenant=per_tenant,
        )

    def list_limits(self) -> list[Limit]:
        """Every limit with its paused state and current usage."""
        return list_limits(self.store)

    def clear_limit(self, pattern: str) -> None:
        """Remove the limit on ``pattern``; ``NotFound`` if there is none."""
        clear_limit(self.store, pattern)

    def pause(self, pattern: str) -> None:
        """Stop claims of matching types on every worker until ``resume``; runs stay pending."""
        pause(self.store, pattern)

    def resume(self, pattern: str) -> None:
        """Let claims of matching types start again."""
        resume(self.store, pattern)
