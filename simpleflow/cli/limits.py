"""``simpleflow limits set|list|clear``, ``simpleflow pause`` and ``simpleflow resume``:
flow control from the command line (the parsers and the commands)."""

from __future__ import annotations

import argparse

from simpleflow.cli.args import _sub, database_url, tenant
from simpleflow.cli.output import Output
from simpleflow.client import Client
from simpleflow.core.display import when
from simpleflow.core.limits import Limit


def add_parsers(subs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = _sub(
        subs,
        "limits",
        "set, list or clear the limits every worker obeys (concurrency, rate, circuit breaker)",
        [
            "simpleflow limits set 'billing.%' --concurrency 5",
            "simpleflow limits set email.send.v1 --rate 100/1m --pause-after-failures 20",
            "simpleflow limits set 'report.%' --concurrency 3 --per-tenant",
            "simpleflow limits list --json",
            "simpleflow limits clear 'billing.%'",
        ],
        common,
    )
    lsubs = p.add_subparsers(dest="limits_command", metavar="ACTION", parser_class=type(p))
    lsubs.required = True
    s = _sub(
        lsubs,
        "set",
        "create or replace the limit on a type pattern",
        ["simpleflow limits set 'partner.%' --concurrency 2 --rate 10/1s --pause-after-failures 20"],
        common,
    )
    s.add_argument("pattern", metavar="PATTERN", help="an exact type, or the start of one followed by %%")
    s.add_argument("--concurrency", type=int, metavar="N", help="at most N leased at once, all workers together")
    s.add_argument("--rate", metavar="N/PERIOD", help="at most N starts in any window: 100/1m, 5/s, 10/500ms, 3/2h")
    s.add_argument("--pause-after-failures", type=int, metavar="N", help="pause after N consecutive failed attempts")
    s.add_argument(
        "--per-tenant", action="store_true", help="the concurrency and the rate hold for each tenant on its own"
    )
    _sub(lsubs, "list", "list limits with their usage and paused state", ["simpleflow limits list"], common)
    c = _sub(lsubs, "clear", "remove the limit on a pattern", ["simpleflow limits clear 'billing.%'"], common)
    c.add_argument("pattern", metavar="PATTERN")
    for name, help in (
        ("pause", "stop every worker claiming runs of matching types (in-flight runs finish)"),
        ("resume", "let workers claim runs of a paused pattern again"),
    ):
        p = _sub(subs, name, help, [f"simpleflow {name} 'billing.%'"], common)
        p.add_argument("pattern", metavar="PATTERN", help="an exact type, or the start of one followed by %%")


def _rate(limit: Limit) -> str:
    if limit.rate_count is None or limit.rate_period is None:
        return "-"
    return f"{limit.started_in_window}/{limit.rate_count} per {limit.rate_period.total_seconds():g}s"


def cmd_limits(args: argparse.Namespace, out: Output) -> int:
    action = args.limits_command
    with Client(database_url(args), tenant=tenant(args)) as client:
        if action == "list":
            items = client.list_limits()
            out.table(
                items,
                ("PATTERN", "SCOPE", "CONCURRENCY", "RATE", "BREAKER", "STATE", "UPDATED"),
                [
                    (
                        x.pattern,
                        "per tenant" if x.per_tenant else "global",
                        "-" if x.concurrency is None else f"{x.leased}/{x.concurrency}",
                        _rate(x),
                        "-" if x.pause_after_failures is None else f"{x.consecutive_failures}/{x.pause_after_failures}",
                        f"paused ({x.paused_reason})" if x.paused else "active",
                        when(x.updated_at),
                    )
                    for x in items
                ],
                "no limits",
            )
            return 0
        if action == "set":
            client.set_limit(
                args.pattern,
                concurrency=args.concurrency,
                rate=args.rate,
                pause_after_failures=args.pause_after_failures,
                per_tenant=args.per_tenant,
            )
            out.emit({"pattern": args.pattern, "action": "set"}, f"limit set on {args.pattern}")
            return 0
        client.clear_limit(args.pattern)
    out.emit({"pattern": args.pattern, "action": "cleared"}, f"limit cleared on {args.pattern}")
    return 0


def cmd_pause(args: argparse.Namespace, out: Output) -> int:
    with Client(database_url(args)) as client:
        client.pause(args.pattern)
    out.emit({"pattern": args.pattern, "action": "paused"}, f"paused {args.pattern}")
    return 0


def cmd_resume(args: argparse.Namespace, out: Output) -> int:
    with Client(database_url(args)) as client:
        client.resume(args.pattern)
    out.emit({"pattern": args.pattern, "action": "resumed"}, f"resumed {args.pattern}")
    return 0
