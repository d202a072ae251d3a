"""How the command line prints: aligned tables for people, JSON (``--json``) for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from pydantic import BaseModel


def compact(value: Any, limit: int = 80) -> str:
    """A JSON value on one line, shortened to ``limit`` characters; ``-`` for None."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def jsonable(value: Any) -> Any:
    """Models (and lists of them) as plain JSON data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class Output:
    """Writes one command's answer in the chosen form."""

    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")

    def json(self, data: Any) -> None:
        self._write(json.dumps(jsonable(data), indent=2, ensure_ascii=False))

    def emit(self, data: Any, text: str) -> None:
        """``data`` as JSON, or ``text`` for a person."""
        if self.as_json:
            self.json(data)
        else:
            self._write(text)

    def table(self, data: Any, headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
        """``data`` as JSON, or ``rows`` under ``headers`` with aligned columns."""
        if self.as_json:
            self.json(data)
            return
        if not rows:
            self._write(empty)
            return
        self._write(format_table(headers, rows))

    def record(self, data: Any, fields: Sequence[tuple[str, Any]]) -> None:
        """``data`` as JSON, or one ``name  value`` line per field."""
        if self.as_json:
            self.json(data)
            return
        width = max(len(name) for name, _ in fields)
        for name, value in fields:
            self._write(f"{name.ljust(width)}  {'-' if value is None else value}".rstrip())


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)
