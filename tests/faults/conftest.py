"""Prints every ``FAULTS …`` count line of the session at the end of pytest's output."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from .harness import REPORTS

    if REPORTS:
        terminalreporter.section("fault suite counts")
        for line in REPORTS:
            terminalreporter.write_line(line)
