"""``simpleflow delete-data`` and ``simpleflow check-history``: a run's history as a whole."""

from __future__ import annotations

import argparse
import logging
import os

from simpleflow.cli.args import UsageError, _sub, database_url
from simpleflow.cli.output import Output
from simpleflow.cli.worker import load_app
from simpleflow.client import Client
from simpleflow.core.states import Status
from simpleflow.workflow.handler import WorkflowHandler
from simpleflow.workflow.replayer import check_histories

#: ``--status`` names of check-history; ``running`` is the ``leased`` status (a worker holds the run)
CHECK_STATUSES = {
    "pending": Status.PENDING.value,
    "running": Status.LEASED.value,
    "leased": Status.LEASED.value,
    "sleeping": Status.SLEEPING.value,
    "waiting": Status.WAITING.value,
}
DEFAULT_CHECK_STATUSES = "pending,running,sleeping,waiting"


def add_parsers(subs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = _sub(
        subs,
        "delete-data",
        "replace a finished run's data with tombstones (GDPR), keeping ids, statuses and times",
        [
            "simpleflow delete-data 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "simpleflow delete-data 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b --children",
        ],
        common,
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--children", action="store_true", help="also the run's descendants (all must be finished)")

    p = _sub(
        subs,
        "check-history",
        "replay stored histories against the app's current code, read-only; exit 1 if any no longer matches",
        [
            "simpleflow check-history myapp.jobs:poller",
            "simpleflow check-history myapp.jobs:poller --type order.v1 --status sleeping,waiting --limit 100",
        ],
        common,
    )
    p.add_argument("app", metavar="APP", help="module:object naming a Poller or Workflow, or a callable returning one")
    p.add_argument("--type", action="append", metavar="TYPE", help="only runs of this workflow type (repeatable)")
    p.add_argument(
        "--status",
        default=DEFAULT_CHECK_STATUSES,
        metavar="STATUSES",
        help=f"runs in these statuses (default: {DEFAULT_CHECK_STATUSES}; running = leased by a worker)",
    )
    p.add_argument("--limit", type=int, default=1000, metavar="N", help="at most N runs, oldest first (default 1000)")


def cmd_delete_data(args: argparse.Namespace, out: Output) -> int:
    with Client(database_url(args)) as client:
        ids = client.delete_data(args.run_id, children=args.children)
    out.emit({"deleted": ids}, f"deleted the data of {len(ids)} run(s): {', '.join(ids)}")
    return 0


def cmd_check_history(args: argparse.Namespace, out: Output) -> int:
    names = [s.strip() for s in args.status.split(",") if s.strip()]
    bad = [s for s in names if s not in CHECK_STATUSES]
    if not names or bad:
        raise UsageError(
            f"--status: unknown status {', '.join(map(repr, bad)) or repr(args.status)}; use one or more "
            f"of: {','.join(CHECK_STATUSES)} (finished runs are never replayed)"
        )
    if not 1 <= args.limit <= 1_000_000:
        raise UsageError("--limit must be between 1 and 1000000")
    statuses = tuple(dict.fromkeys(CHECK_STATUSES[s] for s in names))
    if args.database_url:  # the application reads it like any other setting
        os.environ["SIMPLEFLOW_DATABASE_URL"] = args.database_url
    logging.getLogger("simpleflow").setLevel(logging.CRITICAL)  # replayed workflows log as if they ran
    poller = load_app(args.app)
    try:
        workflows = {t: h.invoke for t, h in poller.handlers.items() if isinstance(h.invoke, WorkflowHandler)}
        unknown = [t for t in args.type or () if t not in workflows]
        if unknown:
            raise UsageError(
                f"{args.app} registers no workflow {', '.join(map(repr, unknown))}; its workflows are: "
                f"{', '.join(sorted(workflows)) or '(none)'}"
            )
        chosen = {t: workflows[t] for t in args.type} if args.type else workflows
        verdicts = check_histories(poller.store, chosen, statuses, args.limit)
    finally:
        poller.close()
    bad_runs = [v for v in verdicts if not v.matches]
    if out.as_json:
        out.json({"checked": len(verdicts), "mismatched": len(bad_runs), "runs": [v.__dict__ for v in verdicts]})
    else:
        for v in bad_runs:
            out.stream.write(f"{v.run_id} ({v.type}, {v.status}): {v.error}\n")
        out.stream.write(
            f"checked {len(verdicts)} run(s) of {len(chosen)} workflow type(s): "
            + (f"{len(bad_runs)} no longer match the code\n" if bad_runs else "every history matches the code\n")
        )
    return 1 if bad_runs else 0
