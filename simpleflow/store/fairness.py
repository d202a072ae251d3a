"""The fair claim: free threads shared among the tenants with due work, in turn.

``LeaseStore.claim(..., fair=True, after=cursor)`` takes its ``due`` runs from
``fair_due``; the poller keeps the cursor (``next_tenant``) between claims, so the
tenant served last waits for the others' turn. Nothing here scans a backlog: each
claim reads at most ``n`` tenants on each side of the cursor and ``n`` runs of each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import CTE, ColumnElement, Integer, String, bindparam, case, func, literal, select, text

from simpleflow.core.states import DUE_STATUSES
from simpleflow.db.dialect import Dialect
from simpleflow.db.dialect_sql import db_now
from simpleflow.db.schema import workflow_run

run = workflow_run.c

# Literal SQL (not bound parameters) so both planners match the partial indexes.
DUE = text("status IN (" + ", ".join(f"'{s}'" for s in DUE_STATUSES) + ")")


def fair_due(dialect: Dialect, route: ColumnElement[bool]) -> CTE:
    """The due runs a fair claim takes. The next ``n`` tenants with waiting runs in turn
    after ``:after``, wrapping around (a skip scan of ``ix_workflow_run_tenant_due``: one
    index probe per tenant, however many runs each holds); each one's share of the ``n``
    (rounded up) of its due runs in priority order (locked, skipping rows other workers hold); then the first
    ``n`` of those by rank within their tenant, tenants in turn: every tenant's first
    run before any tenant's second. Priority orders runs within a tenant."""
    n = bindparam("n", type_=Integer())
    after = bindparam("after", type_=String())
    # The n tenants next in turn: those after the cursor, then (wrapping around) as many
    # of those up to it as are still missing. More would only be read to be dropped.
    later = _tenants_in_turn("tenants_after", "after", after, n)
    wrapped = _tenants_in_turn("tenants_upto", "upto", after, n - select(func.count(later.c.tenant)).scalar_subquery())
    tenants = select(later.c.tenant).union_all(select(wrapped.c.tenant)).subquery("tenants")
    # Each tenant's fair share of the n threads, rounded up: n runs of each would only be
    # read to be dropped (a claim that comes back short is followed by another at once).
    found = func.coalesce(func.nullif(select(func.count(tenants.c.tenant)).scalar_subquery(), 0), 1)
    head = (
        select(run.id, run.tenant, run.priority, run.run_at)
        .where(run.tenant == tenants.c.tenant, DUE, run.run_at <= db_now(), route)
        .order_by(run.priority, run.run_at)
        .limit((n + found - 1) // found)
        .with_for_update(skip_locked=True)
    )
    heads = dialect.rows_per_group(tenants, head, workflow_run)
    rank = func.row_number().over(partition_by=heads.c.tenant, order_by=(heads.c.priority, heads.c.run_at))
    ranked = select(heads.c.id, heads.c.tenant, rank.label("rk")).subquery("ranked")
    turn = case((ranked.c.tenant > after, 0), else_=1)
    return (
        select(ranked.c.id).order_by(ranked.c.rk, turn, ranked.c.tenant).limit(n).cte("due").prefix_with("MATERIALIZED")
    )


def _tenants_in_turn(name: str, side: str, after: Any, n: Any) -> CTE:
    """Up to ``n`` tenants with waiting runs (none if ``n`` < 1), in name order: those after
    ``after`` (side "after") or up to it (side "upto", where the turn wraps around). A
    recursive skip scan; its last row (or only row) is a NULL tenant, which counts nothing."""
    other = workflow_run.alias(f"{name}_next")

    def bound(col: Any) -> Any:
        return col > after if side == "after" else col <= after

    first = select(func.min(run.tenant).label("tenant"), literal(1, Integer()).label("k"))
    first = first.where(DUE, bound(run.tenant), n >= 1)
    found = first.cte(name, recursive=True)
    following = select(func.min(other.c.tenant)).where(DUE, other.c.tenant > found.c.tenant, bound(other.c.tenant))
    more = select(following.scalar_subquery(), found.c.k + 1).where(found.c.tenant.is_not(None), found.c.k < n)
    return found.union_all(more)


def next_tenant(claimed: Sequence[str], after: str) -> str:
    """The tenant a fair claim served last (the ``after`` of the next claim), from the
    tenants of the runs it took: of the tenants that got the most runs (the last round),
    the last in turn after ``after``."""
    if not claimed:
        return after
    counts: dict[str, int] = {}
    for tenant in claimed:
        counts[tenant] = counts.get(tenant, 0) + 1
    last_round = [t for t, n in counts.items() if n == max(counts.values())]
    return max(last_round, key=lambda t: (t <= after, t))
