"""What each ``simpleflow`` command does, once its arguments are parsed.

Every input is checked (JSON, durations, statuses, times) before the database is
touched, so a usage error (exit code 2) never changes anything.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from simpleflow import admin
from simpleflow.cli.args import UsageError, database_url, tenant
from simpleflow.cli.history import cmd_check_history, cmd_delete_data
from simpleflow.cli.limits import cmd_limits, cmd_pause, cmd_resume
from simpleflow.cli.output import Output, compact
from simpleflow.cli.serve import cmd_serve
from simpleflow.cli.worker import run_worker
from simpleflow.client import Client
from simpleflow.core.display import age, when
from simpleflow.core.models import RunInfo
from simpleflow.core.states import REQUEUE_STATUSES, TERMINAL_STATUSES
from simpleflow.db.migrate import current as current_of
from simpleflow.db.migrate import downgrade, head, upgrade

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# -- parsing the command line's values ----------------------------------------------------


def parse_duration(text: str, what: str) -> timedelta:
    """``30s``, ``5m``, ``2h``, ``7d``, ``1w`` or combinations like ``1h30m``."""
    value = text.strip().lower()
    if not value or _DURATION_PART.sub("", value) != "":
        raise UsageError(f"{what}: {text!r} is not a duration; use a number and a unit: 30s, 5m, 2h, 7d, 1w (or 1h30m)")
    total = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(value))
    return timedelta(seconds=total)


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 time with a UTC offset (``Z`` allowed)."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not an ISO 8601 time like 2024-06-01T09:00:00+02:00") from None
    if parsed.tzinfo is None:
        raise UsageError(f"{what}: {text!r} has no UTC offset; add one, e.g. {value}Z or {value}+02:00")
    return parsed


def parse_json(text: str | None, what: str) -> Any:
    """JSON text, ``@file`` (read from the file) or ``@-`` (stdin); None when absent."""
    if text is None:
        return None
    source = text
    if text.startswith("@"):
        path = text[1:]
        try:
            source = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
        except OSError as error:
            raise UsageError(f"{what}: cannot read {path!r}: {error.strerror or error}") from None
    try:
        return json.loads(source)
    except json.JSONDecodeError as error:
        raise UsageError(f"{what} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None


def parse_statuses(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """``failed,cancelled`` → a tuple, every name one of ``allowed``."""
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in allowed]
    if not names or bad:
        shown = ", ".join(repr(s) for s in bad) or repr(text)
        raise UsageError(f"{what}: unknown or not allowed status {shown}; use one or more of: {','.join(allowed)}")
    return names


@contextmanager
def open_client(args: argparse.Namespace) -> Iterator[Client]:
    with Client(database_url(args), tenant=tenant(args)) as client:
        yield client


# -- commands -----------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, out: Output) -> int:
    url = database_url(args)
    if args.action == "status":
        if args.revision:
            raise UsageError("migrate status takes no revision")
        current, newest = current_of(url), head()
        state = "up to date" if current == (newest,) else "not migrated" if not current else "behind"
        out.record(
            {"current": list(current), "head": newest, "up_to_date": current == (newest,)},
            [("current", ", ".join(current) or "(none)"), ("head", newest), ("state", state)],
        )
        return 0
    if args.action == "down":
        if not args.revision:
            raise UsageError("migrate down needs a revision, e.g. 'simpleflow migrate down base'")
        downgrade(url, args.revision)
    else:
        upgrade(url, args.revision or "head")
    current = current_of(url)
    out.emit(
        {"current": list(current), "head": head()},
        f"database at revision {', '.join(current) or '(none: every simpleflow table removed)'}",
    )
    return 0


def cmd_submit(args: argparse.Namespace, out: Output) -> int:
    payload = parse_json(args.payload, "payload")
    delay = parse_duration(args.delay, "--in") if args.delay is not None else None
    at = parse_time(args.at, "--at") if args.at is not None else None
    with open_client(args) as client:
        sub = client.submit(args.type, payload)
        if args.idempotency is not None:
            sub.with_idempotency(args.idempotency)
        if args.priority is not None:
            sub.with_priority(args.priority)
        if args.max_attempts is not None:
            sub.with_max_attempts(args.max_attempts)
        if delay is not None:
            sub.run_in(delay)
        if at is not None:
            sub.run_after(at)
        run_id = sub.execute()
    out.emit({"id": run_id}, run_id)
    return 0


def _last_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _show_run(out: Output, info: RunInfo) -> None:
    out.record(
        info,
        [
            ("id", info.id),
            ("type", info.type),
            ("status", info.status),
            ("attempt", f"{info.attempt}/{info.max_attempts}"),
            ("priority", info.priority),
            ("run_at", when(info.run_at)),
            ("idempotency_key", info.idempotency_key),
            ("leased_by", info.leased_by),
            ("lease_until", when(info.lease_until)),
            ("payload", compact(info.payload, 200)),
            ("result", compact(info.result, 200)),
            ("last_error", _last_line(info.last_error)),
            ("created_at", when(info.created_at)),
            ("updated_at", when(info.updated_at)),
        ],
    )


def cmd_get(args: argparse.Namespace, out: Output) -> int:
    with open_client(args) as client:
        _show_run(out, client.get_run(args.run_id))
    return 0


def cmd_events(args: argparse.Namespace, out: Output) -> int:
    with open_client(args) as client:
        events = client.get_events(args.run_id)
    out.table(
        events,
        ("ID", "TIME", "EVENT", "ATTEMPT", "WORKER", "DETAIL"),
        [(e.id, when(e.created_at), e.event_type, e.attempt, e.worker_id, compact(e.detail, 60)) for e in events],
        "no events",
    )
    return 0


def cmd_steps(args: argparse.Namespace, out: Output) -> int:
    with open_client(args) as client:
        client.get_run(args.run_id)  # NotFound for an unknown run, not an empty table
        steps = client.get_steps(args.run_id)
    out.table(
        steps,
        ("SEQ", "NAME", "KIND", "STATUS", "ATTEMPTS", "RESULT", "UPDATED"),
        [
            (
                s.seq,
                s.name,
                s.kind,
                s.status,
                s.attempts,
                compact(s.error if s.error is not None else s.result, 50),
                when(s.updated_at),
            )
            for s in steps
        ],
        "no recorded steps",
    )
    return 0


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    with open_client(args) as client:
        runs = client.list_runs(type=args.type, status=args.status, limit=args.limit, offset=args.offset)
    out.table(
        runs,
        ("ID", "TYPE", "STATUS", "ATTEMPT", "PRIORITY", "RUN_AT", "UPDATED"),
        [
            (r.id, r.type, r.status, f"{r.attempt}/{r.max_attempts}", r.priority, when(r.run_at), when(r.updated_at))
            for r in runs
        ],
        "no runs",
    )
    return 0


def cmd_cancel(args: argparse.Namespace, out: Output) -> int:
    with open_client(args) as client:
        client.cancel(args.run_id)
        info = client.get_run(args.run_id)
    out.emit({"id": info.id, "status": info.status}, f"cancelled {info.id}")
    return 0


def cmd_retry(args: argparse.Namespace, out: Output) -> int:
    if args.run_id is not None:
        if args.status is not None or args.type is not None:
            raise UsageError("give either RUN_ID or --status/--type for a bulk requeue, not both")
        with open_client(args) as client:
            client.retry(args.run_id)
            info = client.get_run(args.run_id)
        out.emit({"requeued": 1, "ids": [info.id]}, f"requeued {info.id}")
        return 0
    if args.status is None:
        raise UsageError("give a RUN_ID, or --status failed (optionally with --type T) to requeue many")
    statuses = parse_statuses(args.status, REQUEUE_STATUSES, "--status")
    with open_client(args) as client:
        ids = admin.requeue(client, statuses, args.type, args.batch_size)
    out.emit({"requeued": len(ids), "ids": ids}, f"requeued {len(ids)} run(s)")
    return 0


def cmd_signal(args: argparse.Namespace, out: Output) -> int:
    payload = parse_json(args.payload, "signal payload")
    with open_client(args) as client:
        client.signal(args.run_id, args.name, payload)
    out.emit({"id": args.run_id, "signal": args.name}, f"sent {args.name} to {args.run_id}")
    return 0


def cmd_schedules(args: argparse.Namespace, out: Output) -> int:
    action = args.schedules_command
    if action == "create":
        payload = parse_json(args.payload, "schedule payload")
        with open_client(args) as client:
            builder = client.schedule(args.type, payload).cron(args.cron)
            if args.tz is not None:
                builder = builder.in_timezone(args.tz)
            if args.priority is not None:
                builder = builder.with_priority(args.priority)
            if args.max_attempts is not None:
                builder = builder.with_max_attempts(args.max_attempts)
            schedule_id = builder.create()
        out.emit({"id": schedule_id}, schedule_id)
        return 0
    with open_client(args) as client:
        if action == "list":
            items = client.list_schedules()
            out.table(
                items,
                ("ID", "TYPE", "CRON", "TIMEZONE", "ENABLED", "NEXT_RUN", "LAST_RUN"),
                [
                    (
                        s.id,
                        s.type,
                        s.cron_expr,
                        s.timezone,
                        "yes" if s.enabled else "paused",
                        when(s.next_run_at),
                        when(s.last_run_at),
                    )
                    for s in items
                ],
                "no schedules",
            )
            return 0
        calls: dict[str, Callable[[str], None]] = {
            "pause": client.pause_schedule,
            "resume": client.resume_schedule,
            "delete": client.delete_schedule,
        }
        calls[action](args.schedule_id)
    done = {"pause": "paused", "resume": "resumed", "delete": "deleted"}[action]
    out.emit({"id": args.schedule_id, "action": done}, f"{done} {args.schedule_id}")
    return 0


def cmd_stats(args: argparse.Namespace, out: Output) -> int:
    if args.by_tenant:
        return _stats_by_tenant(args, out)
    with open_client(args) as client:
        s = client.stats()
    if out.as_json:
        out.json(s)
        return 0
    out.record(
        None,
        [
            ("database time", when(s.now)),
            (
                "oldest due run",
                "none due" if s.oldest_due_age_seconds is None else f"waiting {age(s.oldest_due_age_seconds)}",
            ),
            (
                "last hour",
                f"{s.finished_last_hour} finished: {s.succeeded_last_hour} succeeded, "
                f"{s.failed_last_hour} failed, {s.cancelled_last_hour} cancelled",
            ),
            ("live workers", f"{len(s.workers)}" + (f" ({s.stale_workers} stale)" if s.stale_workers else "")),
            *([("paused", ", ".join(s.paused))] if s.paused else []),
        ],
    )
    out.stream.write("\n")
    out.table(None, ("TYPE", "STATUS", "COUNT"), [(q.type, q.status, q.count) for q in s.queue], "queue empty")
    if s.workers:
        out.stream.write("\n")
        out.table(
            None,
            ("WORKER", "HOST", "PID", "THREADS", "HEARTBEAT", "TYPES"),
            [
                (
                    w.worker_id,
                    w.host,
                    w.pid,
                    w.concurrency,
                    f"{age(w.heartbeat_age_seconds)} ago",
                    ",".join(w.prefixes or w.types),
                )
                for w in s.workers
            ],
            "",
        )
    failing = [
        (w.worker_id, name, h.get("failures"), h.get("error"))
        for w in s.workers
        for name, h in (w.health or {}).items()
    ]
    if failing:
        out.stream.write("\n")
        out.table(None, ("WORKER", "FAILING SERVICE", "IN A ROW", "LAST ERROR"), failing, "")
    return 0


def _stats_by_tenant(args: argparse.Namespace, out: Output) -> int:
    with open_client(args) as client:  # every tenant's, unless --tenant names one
        depth = admin.queue_by_tenant(client.store.for_tenant(client.tenant if tenant(args) else None))
    if out.as_json:
        out.json(depth)
        return 0
    out.table(None, ("TENANT", "STATUS", "COUNT"), [(d.tenant, d.status, d.count) for d in depth], "queue empty")
    return 0


def cmd_tenants(args: argparse.Namespace, out: Output) -> int:
    statements = admin.grant_tenant_role(database_url(args), args.role)
    out.emit({"role": args.role, "statements": statements}, "\n".join(s + ";" for s in statements))
    return 0


def cmd_prune(args: argparse.Namespace, out: Output) -> int:
    older = parse_duration(args.older_than, "--older-than")
    statuses = parse_statuses(args.status, TERMINAL_STATUSES, "--status")
    with open_client(args) as client:
        count = client.prune(older, statuses, args.batch_size)
    out.emit(
        {"pruned": count}, f"pruned {count} run(s) finished more than {args.older_than} ago ({','.join(statuses)})"
    )
    return 0


def cmd_worker(args: argparse.Namespace, out: Output) -> int:
    return run_worker(args)


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "migrate": cmd_migrate,
    "worker": cmd_worker,
    "submit": cmd_submit,
    "get": cmd_get,
    "events": cmd_events,
    "steps": cmd_steps,
    "list": cmd_list,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "signal": cmd_signal,
    "schedules": cmd_schedules,
    "stats": cmd_stats,
    "prune": cmd_prune,
    "tenants": cmd_tenants,
    "serve": cmd_serve,
    "delete-data": cmd_delete_data,
    "check-history": cmd_check_history,
    "limits": cmd_limits,
    "pause": cmd_pause,
    "resume": cmd_resume,
}


def run_command(args: argparse.Namespace) -> int:
    """Dispatch the parsed command; it returns the exit code."""
    return COMMANDS[args.command](args, Output(bool(args.json)))
