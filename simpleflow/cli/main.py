"""The ``simpleflow`` command line (also ``python -m simpleflow``).

``main()`` parses the arguments, runs one command from ``simpleflow.cli.commands``
and turns every failure into a one-line message on stderr and an exit code:

    0  the command did what it says
    1  the operation failed: no such run, already finished, database or migration error,
       the worker application raised
    2  the command line is wrong: unknown option, malformed JSON or duration, unknown
       status, invalid input (``ValidationError``), no database URL, bad ``SIMPLEFLOW_*``
       setting, an APP that cannot be found

  141  the reader of the output went away (``simpleflow list | head``): the command
       stops quietly, nothing on stderr, with the exit status a shell reports for a
       tool ended by SIGPIPE (128 + 13), so ``set -o pipefail`` scripts see what they
       see for ``cat``

Nothing is changed when the exit code is 2. ``--debug`` prints the traceback too.
Settings come from ``SIMPLEFLOW_*`` environment variables, read when a command
runs (never at import).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from sqlalchemy import exc as sa_exc

from simpleflow._version import __version__
from simpleflow.cli import history, limits, serve
from simpleflow.cli.args import CliError, _examples, _Parser, _sub
from simpleflow.cli.commands import run_command
from simpleflow.core.errors import ConfigurationError, SimpleflowError, ValidationError
from simpleflow.core.states import STATUSES

PROG = "simpleflow"
#: exit status when stdout's reader went away: 128 + SIGPIPE, as a shell reports for ``yes | head``
CLOSED_PIPE = 141


def _global_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        default=default,
        help="sqlite:///path.db or postgresql://user@host/db?schema=workflow (default: $SIMPLEFLOW_DATABASE_URL)",
    )
    parser.add_argument(
        "--tenant",
        metavar="TENANT",
        default=default,
        help="act for this tenant only (default: $SIMPLEFLOW_TENANT, else the default tenant)",
    )
    parser.add_argument("--json", action="store_true", default=default, help="print JSON for scripts instead of tables")
    parser.add_argument("--debug", action="store_true", default=default, help="print the traceback of a failure")


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; every command has ``--help`` with an example."""
    parser = _Parser(
        prog=PROG,
        description="Operate simpleflow: migrate the schema, run workers, submit and inspect runs.",
        epilog=_examples(
            "export SIMPLEFLOW_DATABASE_URL=sqlite:///app.db",
            "simpleflow migrate && simpleflow worker myapp:poller",
            'simpleflow submit demo.hello.v1 \'{"name": "ana"}\'',
        )
        + "\n\nexit codes: 0 ok, 1 the operation failed, 2 the command line is wrong (nothing changed)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, None)
    common = _Parser(add_help=False)
    _global_options(common, argparse.SUPPRESS)  # also accepted after the command name
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subs.required = True

    p = _sub(
        subs,
        "migrate",
        "apply, revert or show the schema migrations",
        ["simpleflow migrate", "simpleflow migrate status", "simpleflow migrate down base"],
        common,
    )
    p.add_argument(
        "action",
        nargs="?",
        default="up",
        choices=("up", "down", "status"),
        help="up [REV] (default: head), down REV (base removes every table), status",
    )
    p.add_argument("revision", nargs="?", metavar="REV", help="target revision")

    p = _sub(
        subs,
        "worker",
        "run a worker until SIGTERM or Ctrl-C (then drain gracefully)",
        [
            "simpleflow worker myapp.jobs:poller --prefix billing.% --concurrency 16",
            "simpleflow worker myapp.jobs:make_poller --schedules",
        ],
        common,
    )
    p.add_argument(
        "app",
        metavar="APP",
        help="module:object naming a Poller or Workflow, or a callable returning one "
        "(imported with the current directory on sys.path)",
    )
    p.add_argument(
        "--prefix",
        action="append",
        metavar="PREFIX",
        help="claim runs whose type matches (repeatable; 'billing.%%' or an exact type)",
    )
    p.add_argument(
        "--concurrency", type=int, metavar="N", help="worker threads (default: $SIMPLEFLOW_CONCURRENCY or 8)"
    )
    p.add_argument("--worker-id", metavar="ID", help="this worker's name (default: $SIMPLEFLOW_WORKER_ID or host-pid)")
    p.add_argument("--schedules", action="store_true", default=None, help="also turn due schedules into runs")

    p = _sub(
        subs,
        "submit",
        "submit a run and print its id",
        [
            'simpleflow submit content.thumbnail.v1 \'{"content_id": "c_123"}\' --priority 10 --in 5m',
            "simpleflow submit report.daily.v1 @payload.json --idempotency report:2024-06-01",
        ],
        common,
    )
    p.add_argument("type", metavar="TYPE")
    p.add_argument(
        "payload",
        nargs="?",
        metavar="PAYLOAD",
        help="JSON text, @file to read it from a file, or @- for stdin (default: null)",
    )
    p.add_argument("--idempotency", metavar="KEY", help="a duplicate key creates nothing and prints the existing id")
    p.add_argument("--priority", type=int, metavar="P", help="lower runs first (default 100)")
    p.add_argument("--max-attempts", type=int, metavar="N", help="attempts before it fails for good (default 3)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--in", dest="delay", metavar="DURATION", help="due after a delay: 30s, 5m, 2h, 7d, 1w, 1h30m")
    when.add_argument("--at", metavar="ISO", help="due at a time with offset: 2024-06-01T09:00:00+02:00 or …Z")

    for name, help in (
        ("get", "show one run"),
        ("events", "show a run's audit trail, oldest first"),
        ("steps", "show a workflow run's recorded steps"),
        ("cancel", "cancel an unfinished run"),
    ):
        p = _sub(subs, name, help, [f"simpleflow {name} 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"], common)
        p.add_argument("run_id", metavar="RUN_ID")

    p = _sub(
        subs,
        "list",
        "list runs, newest first",
        ["simpleflow list --status failed --type billing.invoice.v1 --limit 20"],
        common,
    )
    p.add_argument("--type", metavar="TYPE")
    p.add_argument("--status", choices=STATUSES, metavar="STATUS", help=f"one of: {', '.join(STATUSES)}")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N runs (default 50)")
    p.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N runs")

    p = _sub(
        subs,
        "retry",
        "run a failed or cancelled run again, or requeue many at once",
        [
            "simpleflow retry 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "simpleflow retry --status failed --type billing.invoice.v1",
        ],
        common,
    )
    p.add_argument("run_id", nargs="?", metavar="RUN_ID")
    p.add_argument("--status", metavar="STATUSES", help="bulk: requeue every run in these statuses (failed,cancelled)")
    p.add_argument("--type", metavar="TYPE", help="bulk: only runs of this type")
    p.add_argument(
        "--batch-size", type=int, default=1000, metavar="N", help="bulk: runs per transaction (default 1000)"
    )

    p = _sub(
        subs,
        "signal",
        "deliver a signal to a workflow run",
        ['simpleflow signal 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b approved/v1 \'{"by": "ana"}\''],
        common,
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("name", metavar="NAME")
    p.add_argument("payload", nargs="?", metavar="PAYLOAD", help="JSON text, @file or @- (default: null)")

    _schedules_parser(subs, common)

    p = _sub(
        subs,
        "stats",
        "queue depth, oldest due run, last hour's throughput, live workers",
        ["simpleflow stats", "simpleflow stats --json | jq .oldest_due_age_seconds", "simpleflow stats --by-tenant"],
        common,
    )
    p.add_argument("--by-tenant", action="store_true", help="unfinished runs per tenant and status, every tenant")

    p = _sub(
        subs,
        "tenants",
        "PostgreSQL: grant an application role what a tenant-bound client needs (row-level security)",
        ["simpleflow tenants grant app_user"],
        common,
    )
    p.add_argument("action", choices=("grant",), help="grant: GRANT the tenant tables to ROLE")
    p.add_argument("role", metavar="ROLE", help="an existing login role that does not own the tables")

    p = _sub(
        subs,
        "prune",
        "delete finished runs (with events and steps) older than a duration, in batches",
        ["simpleflow prune --older-than 30d", "simpleflow prune --older-than 90d --status failed --batch-size 500"],
        common,
    )
    p.add_argument("--older-than", required=True, metavar="DURATION", help="30s, 5m, 2h, 30d, 1w")
    p.add_argument(
        "--status",
        default="succeeded,cancelled",
        metavar="STATUSES",
        help="comma-separated finished statuses (default: succeeded,cancelled)",
    )
    p.add_argument("--batch-size", type=int, default=1000, metavar="N", help="runs per transaction (default 1000)")

    limits.add_parsers(subs, common)
    serve.add_parser(subs, common)
    history.add_parsers(subs, common)
    return parser


def _schedules_parser(subs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = _sub(
        subs,
        "schedules",
        "list, create, pause, resume or delete cron schedules",
        ["simpleflow schedules list", "simpleflow schedules create report.daily.v1 '0 9 * * 1' --tz Europe/Paris"],
        common,
    )
    ssubs = p.add_subparsers(dest="schedules_command", metavar="ACTION", parser_class=_Parser)
    ssubs.required = True
    _sub(ssubs, "list", "list schedules", ["simpleflow schedules list"], common)
    c = _sub(
        ssubs,
        "create",
        "create a schedule and print its id",
        ["simpleflow schedules create report.daily.v1 '0 9 * * 1' '{\"kind\": \"sales\"}' --tz America/New_York"],
        common,
    )
    c.add_argument("type", metavar="TYPE")
    c.add_argument("cron", metavar="CRON", help="five-field cron expression, quoted")
    c.add_argument("payload", nargs="?", metavar="PAYLOAD", help="JSON text, @file or @- (default: null)")
    c.add_argument("--tz", metavar="ZONE", help="IANA time zone of the cron expression (default UTC)")
    c.add_argument("--priority", type=int, metavar="P")
    c.add_argument("--max-attempts", type=int, metavar="N")
    for name in ("pause", "resume", "delete"):
        s = _sub(
            ssubs,
            name,
            f"{name} a schedule",
            [f"simpleflow schedules {name} 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"],
            common,
        )
        s.add_argument("schedule_id", metavar="SCHEDULE_ID")


def exit_code(error: BaseException) -> int:
    """2 for bad input, 1 for a failed operation."""
    if isinstance(error, CliError):
        return error.code
    if isinstance(error, (ValidationError, ConfigurationError)):
        return 2
    return 1


def one_line(error: BaseException) -> str:
    """The error's message on one line, with a hint where one helps."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = lines[0] if lines else type(error).__name__
    if not isinstance(error, (SimpleflowError, CliError)):
        message = f"{type(error).__name__}: {message}"
    lowered = message.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
        message += " (is the schema migrated? run 'simpleflow migrate')"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    prog = PROG
    try:
        parser = build_parser()
        args = parser.parse_args(args_list)
        prog = f"{PROG} {args.command}"
        code = run_command(args)
        sys.stdout.flush()  # a closed pipe surfaces here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (CliError, SimpleflowError, sa_exc.SQLAlchemyError, OSError) as error:
        if debug:
            traceback.print_exc()
        if isinstance(error, CliError) and error.prog:
            prog = error.prog
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return exit_code(error)
    except Exception as error:  # a bug or an unexpected failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"{prog}: unexpected error: {one_line(error)} (run with --debug for the traceback)", file=sys.stderr)
        return 1


def _closed_pipe() -> int:
    """stdout's reader went away: stop quietly. Whatever is still buffered goes to
    /dev/null, so the interpreter's own flush at exit cannot fail and print again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor: nothing left to silence
        pass
    return CLOSED_PIPE
