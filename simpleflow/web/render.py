"""Server-side rendering of the dashboard: one Jinja2 environment that escapes everything."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from simpleflow.core.display import age, when
from simpleflow.core.states import TERMINAL_STATUSES
from simpleflow.web.auth import Session

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every template, whatever its name: user data is always escaped
    undefined=jinja2.StrictUndefined,
)


def _pretty(value: Any) -> str:
    """A JSON value indented for reading (a plain str, so the template escapes it)."""
    if value is None:
        return "null"
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return age(max(0.0, (end - start).total_seconds()))


_env.filters.update(pretty=_pretty, when=when, age=age)
_env.globals.update(duration=_duration, terminal=TERMINAL_STATUSES)


def root_of(request: Request) -> str:
    """The path the app is mounted at ('' at the top of a server)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def render_text(request: Request, template: str, session: Session | None, **context: Any) -> str:
    context.setdefault("notice", None)
    context.setdefault("error", None)
    return _env.get_template(template).render(
        root=root_of(request),
        session=session,
        csrf=session.csrf_token() if session else "",
        can_write=bool(session and session.can_write),
        **context,
    )


def render(request: Request, template: str, session: Session | None, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(render_text(request, template, session, **context), status_code=status)


def digest(html: str) -> str:
    """A short fingerprint of a fragment: the live refresh replaces the table only when it changed."""
    return hashlib.sha256(html.encode()).hexdigest()[:16]


def error_page(request: Request, status: int, message: str, session: Session | None = None) -> HTMLResponse:
    return render(request, "error.html", session, status=status, status_code=status, message=message)
