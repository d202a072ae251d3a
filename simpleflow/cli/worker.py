"""``simpleflow worker APP``: load the application's Poller, apply settings, run it.

Settings apply in this order, later winning: what the application configured,
``SIMPLEFLOW_*`` environment variables, command-line flags.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from simpleflow.cli.args import CliError, UsageError, tenant
from simpleflow.worker.poller import Poller

log = logging.getLogger("simpleflow.cli")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class WorkerSettings:
    """The worker's ``SIMPLEFLOW_*`` environment variables, parsed and checked."""

    concurrency: int | None = None
    lease_seconds: float | None = None
    poll_interval: float | None = None
    worker_id: str | None = None
    prefixes: tuple[str, ...] = ()
    schedules: bool = False
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        def get(name: str) -> str | None:
            value = env.get(f"SIMPLEFLOW_{name}", "").strip()
            return value or None

        def number(name: str, kind: type[int] | type[float]) -> Any:
            value = get(name)
            if value is None:
                return None
            try:
                return kind(value)
            except ValueError:
                raise UsageError(
                    f"SIMPLEFLOW_{name}={value!r} is not a{'n integer' if kind is int else ' number'}"
                ) from None

        level = (get("LOG_LEVEL") or "INFO").upper()
        if level not in LOG_LEVELS:
            raise UsageError(f"SIMPLEFLOW_LOG_LEVEL={level!r}: use one of {', '.join(LOG_LEVELS)}")
        flag = (get("SCHEDULES") or "false").lower()
        if flag not in ("1", "0", "true", "false", "yes", "no"):
            raise UsageError(f"SIMPLEFLOW_SCHEDULES={flag!r}: use true or false")
        return cls(
            concurrency=number("CONCURRENCY", int),
            lease_seconds=number("LEASE_SECONDS", float),
            poll_interval=number("POLL_INTERVAL", float),
            worker_id=get("WORKER_ID"),
            prefixes=tuple(p.strip() for p in (get("PREFIXES") or "").split(",") if p.strip()),
            schedules=flag in ("1", "true", "yes"),
            log_level=level,
        )


def load_app(spec: str) -> Poller:
    """``module:object`` → the Poller (or Workflow) it names, calling it if it is a factory."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"APP {spec!r} must look like 'module:object', e.g. 'myapp.jobs:poller'")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise UsageError(f"cannot import module {module_name!r} (from {cwd}): {error}") from error
        raise CliError(f"importing {module_name!r} failed: ModuleNotFoundError: {error}") from error
    except Exception as error:  # the application's own code failed while importing
        raise CliError(f"importing {module_name!r} failed: {type(error).__name__}: {error}") from error
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, Poller):
        return obj
    if callable(obj) and not isinstance(obj, type):
        try:
            made = obj()
        except Exception as error:
            raise CliError(f"{spec}() failed: {type(error).__name__}: {error}") from error
        if isinstance(made, Poller):
            return made
        raise UsageError(f"{spec}() returned {type(made).__name__}; it must return a Poller or Workflow")
    raise UsageError(f"{spec} is a {type(obj).__name__}; it must be a Poller, a Workflow, or a function returning one")


def configure(poller: Poller, args: argparse.Namespace, env: WorkerSettings) -> Poller:
    """Apply environment settings, then flags, through the poller's own ``with_…`` methods."""
    worker_id = args.worker_id or env.worker_id
    if worker_id:
        poller.with_worker_id(worker_id)
    if env.lease_seconds is not None:
        poller.with_lease_duration(timedelta(seconds=env.lease_seconds))
    if env.poll_interval is not None:
        poller.with_poll_interval(timedelta(seconds=env.poll_interval))
    prefixes = args.prefix or list(env.prefixes)
    if prefixes:
        poller.with_type_prefixes(*prefixes)
    concurrency = args.concurrency if args.concurrency is not None else env.concurrency
    if concurrency is not None:
        poller.with_concurrency(concurrency)
    if args.schedules or env.schedules:
        poller.with_schedule_ticker()
    chosen = tenant(args)
    if chosen is not None:
        poller.with_tenants(chosen)
    return poller


def run_worker(args: argparse.Namespace) -> int:
    """Run the application's poller until SIGTERM/SIGINT, then drain; 0 on a clean stop."""
    env = WorkerSettings.from_env(os.environ)
    logging.basicConfig(
        level=env.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.database_url:  # the application reads it like any other setting
        os.environ["SIMPLEFLOW_DATABASE_URL"] = args.database_url
    poller = configure(load_app(args.app), args, env)
    log.info(
        "worker %s starting: %d thread(s), types %s%s",
        poller.worker_id,
        poller.concurrency,
        ", ".join(poller.prefixes or sorted(poller.handlers)) or "(none)",
        ", schedule ticker on" if poller.schedule_ticker else "",
    )
    try:
        poller.start()
    finally:
        poller.close()
    log.info("worker %s stopped", poller.worker_id)
    return 0
