"""What every command-line module shares: its errors, the argument parser, the database URL."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import NoReturn


class CliError(Exception):
    """A failure the command line reports as one line with its own exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.prog: str | None = None  # the (sub)command that failed to parse, if known


class UsageError(CliError):
    """The command line or the environment is wrong (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors become a one-line ``UsageError``."""

    def error(self, message: str) -> NoReturn:
        error = UsageError(f"{message} (see '{self.prog} --help')")
        error.prog = self.prog
        raise error


def _examples(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def _sub(
    subs: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help: str,
    example: Sequence[str],
    common: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subs.add_parser(
        name,
        help=help,
        description=help,
        epilog=_examples(*example),
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def database_url(args: argparse.Namespace) -> str:
    """``--database-url``, else ``SIMPLEFLOW_DATABASE_URL`` (read when the command runs)."""
    url = args.database_url or os.environ.get("SIMPLEFLOW_DATABASE_URL")
    if not url:
        raise UsageError("no database: pass --database-url URL or set SIMPLEFLOW_DATABASE_URL")
    return str(url)


def tenant(args: argparse.Namespace) -> str | None:
    """``--tenant``, else ``SIMPLEFLOW_TENANT``, else None (the default tenant)."""
    chosen = getattr(args, "tenant", None) or os.environ.get("SIMPLEFLOW_TENANT")
    return str(chosen) if chosen else None
