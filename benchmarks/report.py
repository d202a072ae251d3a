"""The bench's tables: every figure beside its floors and peers, and ✅/❌ against the targets.

Targets are issue 18's where it names the figure (burn-down against PgQueuer and the
batched floor, durable steps, single submits on SQLite, 2 processes against 1,
continuous load at 500 jobs/s, RSS flat), issue 8's otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

FLOORS = ("floor", "floor-batched", "floor-batched-asyncpg")
PEERS = ("pgqueuer", "pgqueuer-psycopg", "procrastinate", "dbos")
LABELS = {
    "floor": "DB floor",
    "floor-batched": "batched floor (psycopg)",
    "floor-batched-asyncpg": "batched floor (asyncpg)",
    "pgqueuer": "PgQueuer (asyncpg)",
    "pgqueuer-psycopg": "PgQueuer (psycopg)",
    "procrastinate": "Procrastinate",
    "dbos": "DBOS",
}
PG = ("postgresql", "postgresql-durable")

Results = list[dict[str, Any]]


def find(results: Results, tool: str, figure: str, db: str) -> dict[str, Any] | None:
    for r in results:
        if r["tool"] == tool and r["figure"] == figure and r["db"] == db:
            return r
    return None


def value(r: dict[str, Any] | None, key: str = "median") -> float | None:
    if r is None or "error" in r or "skipped" in r:
        return None
    v = r.get(key)
    return None if v is None or v != v else float(v)


def why(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    if "skipped" in r:
        return "skipped: " + str(r["skipped"])
    if "error" in r:
        return "error: " + str(r["error"])
    return ""


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "—"
    if unit == "ms":
        return f"{v:.2f} ms"
    if unit == "MB":
        return f"{v:.0f} MB"
    return f"{v:,.0f}/s"


# -- targets: (text, check(v, results, db) -> bool | None) ------------------------------------

Check = Callable[[float, Results, str], "bool | None"]


def _at_least(n: float) -> Check:
    return lambda v, results, db: v >= n


def _pg_burn(v: float, results: Results, db: str) -> bool | None:
    pgq = value(find(results, "pgqueuer", "burn_down", db))
    floor = value(find(results, "floor-batched", "burn_down", db))
    if pgq is None and floor is None:
        return None
    return (pgq is None or v >= 1.5 * pgq) and (floor is None or v >= 0.6 * floor)


def _pg_steps(v: float, results: Results, db: str) -> bool:
    dbos = value(find(results, "dbos", "steps", db))
    return v >= 4000 and (dbos is None or v >= 10 * dbos)


def _two_procs(v: float, results: Results, db: str) -> bool | None:
    one = value(find(results, "simpleflow", "burn_procs1", db))
    return None if one is None else v >= 1.5 * one


def _load_p99(v: float, results: Results, db: str) -> bool:
    peers = [value(find(results, p, "load500", db), "p99") for p in ("pgqueuer", "procrastinate")]
    return v <= 20 and all(p is None or v < p for p in peers)


def _rss_last(v: float, results: Results, db: str) -> bool:
    mem = find(results, "simpleflow", "memory", db)
    return v <= 150 and mem is not None and mem["growth_pct"] <= 5


def _other_limits(v: float, results: Results, db: str) -> bool | None:
    empty = value(find(results, "simpleflow", "burn_down", db))
    return None if empty is None else v >= 0.9 * empty


def _big(v: float, results: Results, db: str) -> bool | None:
    empty = value(find(results, "simpleflow", "burn_down", db))
    return None if empty is None else v >= 0.8 * empty


def _tenants(v: float, results: Results, db: str) -> bool | None:
    one = value(find(results, "simpleflow", "burn_down_tenants", db), "median_one")
    return None if one is None else v >= 0.85 * one


def target(figure: str, key: str, db: str) -> tuple[str, Check | None]:
    pg = db in PG
    table: dict[tuple[str, str], tuple[str, Check | None]] = {
        ("burn_down", "median"): (
            ("≥ 1.5× PgQueuer, ≥ 60 % of batched floor", _pg_burn) if pg else ("≥ 5,000/s", _at_least(5000))
        ),
        ("submit_single", "median"): ("≥ 2,000/s", _at_least(2000)) if pg else ("≥ 10,000/s", _at_least(10000)),
        ("submit_many", "median"): ("≥ 30,000/s", _at_least(30000)) if pg else ("≥ 50,000/s", _at_least(50000)),
        ("pickup", "p50"): ("≤ 5 ms", lambda v, r, d: v <= 5),
        ("pickup", "p99"): ("≤ 25 ms", lambda v, r, d: v <= 25),
        ("steps", "median"): ("≥ 4,000/s, ≥ 10× DBOS", _pg_steps) if pg else ("≥ 15,000/s", _at_least(15000)),
        ("memory", "rss_first_mb"): ("≤ 150 MB", lambda v, r, d: v <= 150),
        ("memory", "rss_last_mb"): ("≤ 150 MB, ≤ +5 %", _rss_last),
        ("big_table", "median"): ("≥ 80 % of burn-down", _big),
        ("burn_down_other_limits", "median"): ("≥ 90 % of burn-down", _other_limits),
        ("burn_down_tenants", "median"): ("within 15 % of 1 tenant", _tenants),
        ("burn_procs2", "median"): ("≥ 1.5× 1 process", _two_procs),
        ("load500", "p99"): ("≤ 20 ms, < each peer", _load_p99),
    }
    return table.get((figure, key), ("", None))


# -- the tables ------------------------------------------------------------------------------------


def figures(s: Any) -> list[tuple[str, str, str, str]]:
    """(figure, key, unit, label) in table order."""
    out = [
        ("burn_down", "median", "", f"burn-down ({s.burn:,} runs)"),
        ("burn_down_limited", "median", "", "burn-down, concurrency limit 50"),
        ("burn_down_other_limits", "median", "", "burn-down, unlimited type, 5 other limits"),
        ("burn_down_tenants", "median_one", "", "burn-down, fair claim, 1 tenant"),
        ("burn_down_tenants", "median", "", "burn-down, fair claim, 100 tenants"),
        ("burn_down_tenants", "median_bulk", "", "burn-down, fair claim, 100 tenants, bulk submits"),
        ("submit_single", "median", "", f"submit() single ({s.single:,})"),
        ("submit_many", "median", "", f"submit_many ×1,000 ({s.many:,})"),
        ("pickup", "p50", "ms", "pickup p50"),
        ("pickup", "p99", "ms", "pickup p99"),
        ("steps", "median", "", f"durable steps ({s.steps:,})"),
        ("memory", "rss_first_mb", "MB", f"RSS after {s.mem_first:,}"),
        ("memory", "rss_last_mb", "MB", f"RSS after {s.mem_last:,}"),
        ("big_table", "median", "", f"big table ({s.big_rows:,} done)"),
    ]
    out += [(f"burn_procs{k}", "median", "", f"burn-down, {k} process{'es' if k > 1 else ''}") for k in (1, 2, 4)]
    for rate in (250, 500, 1000):
        out += [(f"load{rate}", q, "ms", f"{rate} jobs/s of 1 ms, {q}") for q in ("p50", "p99")]
    return out


def rows(results: Results, dbs: list[str], s: Any) -> tuple[list[list[str]], list[str]]:
    """Table rows (figures nobody measured left out) and footnotes (why a cell is empty)."""
    out: list[list[str]] = []
    notes: list[str] = []
    for db in dbs:
        for figure, key, unit, label in figures(s):
            others = [find(results, t, figure, db) for t in (*FLOORS, *PEERS)]
            sf = find(results, "simpleflow", figure, db)
            if sf is None and not any(others):
                continue
            v = value(sf, key)
            text, check = target(figure, key, db)
            met = None if v is None or check is None else check(v, results, db)
            cells = [label, db, fmt(v, unit) + _sat(sf) + ("" if met is None else (" ✅" if met else " ❌")), text]
            note = f"simpleflow {figure} on {db}: {why(sf)}"
            if v is None and note not in notes:
                notes.append(note)
            for tool, r in zip((*FLOORS, *PEERS), others, strict=True):
                pv = value(r, key)
                cells.append(_cmp(pv, v, unit) + _sat(r))
                if r is not None and pv is None and key in ("median", "p50"):
                    reason = why(r)
                    if reason and not reason.startswith("skipped: not measured"):
                        notes.append(f"{LABELS[tool]} {figure} on {db}: {reason}")
            out.append(cells)
    return out, notes


def _sat(r: dict[str, Any] | None) -> str:
    """A consumer that did not keep up with the arrival rate: only the jobs it finished count."""
    return f" (saturated: {r['n']:,} of {r['expected']:,} done)" if r and r.get("saturated") else ""


def _cmp(other: float | None, sf: float | None, unit: str) -> str:
    if other is None:
        return "—"
    if sf is None or unit in ("MB", "ms") or not other:
        return fmt(other, unit)
    return f"{fmt(other, unit)} (×{sf / other:.2f})"


def markdown(results: Results, dbs: list[str], s: Any) -> str:
    header = ["figure", "db", "simpleflow", "target", *(LABELS[t] + " (sf ×)" for t in (*FLOORS, *PEERS))]
    body, notes = rows(results, dbs, s)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    extra = []
    for db in dbs:
        mem = find(results, "simpleflow", "memory", db)
        if value(mem, "rss_last_mb") is not None:
            assert mem is not None
            extra.append(f"RSS growth {db}: {mem['growth_pct']:+.1f} % between {s.mem_first:,} and {s.mem_last:,} runs")
        big = value(find(results, "simpleflow", "big_table", db))
        empty = value(find(results, "simpleflow", "burn_down", db))
        if big and empty:
            extra.append(f"big table {db}: {big / empty * 100:.0f} % of the empty-table burn-down")
        tenants = find(results, "simpleflow", "burn_down_tenants", db)
        if value(tenants) is not None and value(tenants, "median_one"):
            assert tenants is not None
            extra.append(
                f"burn-down 100 tenants / 1 tenant on {db}: ×{tenants['ratio']:.2f} "
                f"(each tenant's runs submitted in bulk: ×{tenants.get('ratio_bulk', 0.0):.2f})"
            )
        one, two = (value(find(results, "simpleflow", f"burn_procs{k}", db)) for k in (1, 2))
        if one and two:
            extra.append(f"2 processes / 1 on {db}: ×{two / one:.2f}")
    text = "\n".join(lines)
    if extra:
        text += "\n\n" + "; ".join(extra) + "."
    if notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    return text
