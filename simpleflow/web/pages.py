"""The dashboard: server-rendered pages over the same Client as the API.

Login sets a signed session cookie (HttpOnly, SameSite=Strict). Every change is a
POST form carrying a CSRF token bound to the session and checked here; a read-key
session sees no buttons and is refused if it posts anyway. Templates autoescape
everything, so whatever users stored (types, payloads, errors) shows as text.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlalchemy import exc as sa_exc

from simpleflow import admin
from simpleflow.client import Client
from simpleflow.core.errors import NotFound, SimpleflowError, ValidationError
from simpleflow.core.states import STATUSES, TERMINAL_STATUSES
from simpleflow.web.auth import COOKIE_NAME, SESSION_SECONDS, Keys, Session
from simpleflow.web.charts import per_minute, throughput_svg
from simpleflow.web.errors import describe
from simpleflow.web.render import digest, error_page, render, render_text, root_of

PAGE_SIZE = 50


def _blank(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


_NOTICES = {
    "cancelled": "The run was cancelled.",
    "retried": "The run will run again.",
    "signalled": "The signal was sent.",
    "paused": "The schedule is paused.",
    "resumed": "The schedule is running again.",
    "deleted": "The schedule was deleted.",
    "created": "The schedule was created.",
}


def build_pages(client: Client, keys: Keys) -> APIRouter:
    """The dashboard's routes over one client and one set of keys."""
    pages = APIRouter(include_in_schema=False)

    def session_of(request: Request) -> Session | None:
        return keys.session(request.cookies.get(COOKIE_NAME))

    def to_login(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{root_of(request)}/login", status_code=303)

    def done(request: Request, path: str, notice: str) -> RedirectResponse:
        return RedirectResponse(f"{root_of(request)}{path}?{urlencode({'done': notice})}", status_code=303)

    def notice_of(request: Request) -> str | None:
        return _NOTICES.get(request.query_params.get("done", ""))

    def page(view: Callable[..., Response]) -> Callable[..., Response]:
        """Wrap a view: redirect to the login form without a session; failures as an error page."""

        @functools.wraps(view)
        def wrapped(request: Request, **kwargs: Any) -> Response:
            session = session_of(request)
            if session is None:
                return to_login(request)
            try:
                return view(request, session, **kwargs)
            except (SimpleflowError, sa_exc.SQLAlchemyError) as error:
                status, _, message = describe(error)
                return error_page(request, status, message, session)

        signature = inspect.signature(view)  # FastAPI reads the parameters: all but the session
        wrapped.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p for name, p in signature.parameters.items() if name != "session"]
        )
        return wrapped

    def action(request: Request, csrf_token: str | None) -> Session | Response:
        """The session allowed to make a change, or the response that refuses it."""
        session = session_of(request)
        if session is None:
            return error_page(request, 401, "Your session has ended; log in again.")
        if not session.check_csrf(csrf_token):
            return error_page(
                request,
                403,
                "The form is stale or did not come from this dashboard (CSRF token "
                "missing or wrong); reload the page and try again.",
                session,
            )
        if not session.can_write:
            return error_page(
                request, 403, "A read key gives a read-only dashboard; log in with an API key to make changes.", session
            )
        return session

    def perform(
        request: Request, csrf_token: str | None, change: Callable[[], None], path: str, notice: str
    ) -> Response:
        session = action(request, csrf_token)
        if not isinstance(session, Session):
            return session
        try:
            change()
        except (SimpleflowError, sa_exc.SQLAlchemyError) as error:
            status, _, message = describe(error)
            return error_page(request, status, message, session)
        return done(request, path, notice)

    # -- login ---------------------------------------------------------------------------------

    def with_cookie(request: Request, response: Response, session: Session) -> Response:
        response.set_cookie(
            COOKIE_NAME,
            session.cookie,
            max_age=SESSION_SECONDS,
            path=root_of(request) or "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @pages.get("/login")
    def login_form(request: Request) -> Response:
        if keys.no_auth:
            session = keys.new_session(None)
            assert session is not None
            return with_cookie(request, RedirectResponse(f"{root_of(request)}/", status_code=303), session)
        return render(request, "login.html", None)

    @pages.post("/login")
    def login(request: Request, key: Annotated[str, Form()] = "") -> Response:
        session = keys.new_session(key.strip() or None)
        if session is None:
            return render(request, "login.html", None, status=401, error="That key is not valid here.")
        return with_cookie(request, RedirectResponse(f"{root_of(request)}/", status_code=303), session)

    @pages.post("/logout")
    def logout(request: Request, csrf_token: Annotated[str | None, Form()] = None) -> Response:
        session = session_of(request)
        if session is not None and not session.check_csrf(csrf_token):
            return error_page(request, 403, "The form is stale; reload the page and try again.", session)
        response = to_login(request)
        response.delete_cookie(COOKIE_NAME, path=root_of(request) or "/", httponly=True, samesite="strict")
        return response

    # -- overview ------------------------------------------------------------------------------

    @pages.get("/")
    @page
    def overview(request: Request, session: Session) -> Response:
        stats = client.stats()
        finished = admin.finished_by_minute(client)
        series = per_minute(finished, stats.now)
        by_status: Counter[str] = Counter()
        by_type: dict[str, Counter[str]] = {}
        for q in stats.queue:
            by_status[q.status] += q.count
            by_type.setdefault(q.type, Counter())[q.status] += q.count
        outcome: dict[str, Counter[str]] = {}
        for c in finished:
            outcome.setdefault(c.type, Counter())[c.status] += c.count
        failing = sorted(
            ((t, n["failed"], sum(n.values())) for t, n in outcome.items() if n["failed"]),
            key=lambda item: (-item[1], item[0]),
        )
        return render(
            request,
            "overview.html",
            session,
            stats=stats,
            chart=throughput_svg(series),
            by_status=[(s, by_status[s]) for s in STATUSES if s not in TERMINAL_STATUSES],
            by_type=sorted(by_type.items()),
            failing=failing,
            live_statuses=[s for s in STATUSES if s not in TERMINAL_STATUSES],
        )

    # -- runs ----------------------------------------------------------------------------------

    def runs_context(request: Request) -> dict[str, Any]:
        q = request.query_params
        filters = {
            "type": _blank(q.get("type")),
            "status": _blank(q.get("status")),
            "idempotency_key": _blank(q.get("idempotency_key")),
        }
        raw_page = q.get("page", "1")
        number = int(raw_page) if raw_page.isdigit() and 0 < int(raw_page) < 10**9 else 1
        try:
            if filters["status"] is not None and filters["status"] not in STATUSES:
                raise ValidationError(f"unknown status {filters['status']!r}")
            runs = client.list_runs(**filters, limit=PAGE_SIZE + 1, offset=(number - 1) * PAGE_SIZE)
            problem = None
        except ValidationError as error:
            runs, problem = [], str(error)
        shown = {k: v for k, v in filters.items() if v}

        def link(n: int) -> str:
            return "?" + urlencode({**shown, "page": n})

        return {
            "runs": runs[:PAGE_SIZE],
            "filters": filters,
            "statuses": STATUSES,
            "page": number,
            "prev_link": link(number - 1) if number > 1 else None,
            "next_link": link(number + 1) if len(runs) > PAGE_SIZE else None,
            "table_query": urlencode({**shown, "page": number}),
            "error": problem,
        }

    @pages.get("/runs")
    @page
    def runs(request: Request, session: Session) -> Response:
        context = runs_context(request)
        table = render_text(request, "runs_table.html", session, **context)
        return render(request, "runs.html", session, table=Markup(table), digest=digest(table), **context)

    @pages.get("/runs/table")
    @page
    def runs_table(request: Request, session: Session) -> Response:
        """The runs table alone, for the live refresh (``X-Digest`` tells whether it changed)."""
        table = render_text(request, "runs_table.html", session, **runs_context(request))
        return HTMLResponse(table, headers={"X-Digest": digest(table)})

    @pages.get("/runs/{run_id}")
    @page
    def run_detail(request: Request, session: Session, run_id: str) -> Response:
        try:
            run = client.get_run(run_id)
        except NotFound as error:
            return error_page(request, 404, str(error), session)
        events = client.get_events(run_id)
        steps = client.get_steps(run_id)
        signals = [e for e in events if e.event_type == "signalled"]
        return render(
            request,
            "run.html",
            session,
            run=run,
            events=events,
            steps=steps,
            signals=signals,
            notice=notice_of(request),
        )

    @pages.post("/runs/{run_id}/cancel")
    def cancel(request: Request, run_id: str, csrf_token: Annotated[str | None, Form()] = None) -> Response:
        return perform(request, csrf_token, lambda: client.cancel(run_id), f"/runs/{run_id}", "cancelled")

    @pages.post("/runs/{run_id}/retry")
    def retry(request: Request, run_id: str, csrf_token: Annotated[str | None, Form()] = None) -> Response:
        return perform(request, csrf_token, lambda: client.retry(run_id), f"/runs/{run_id}", "retried")

    @pages.post("/runs/{run_id}/signal")
    def signal(
        request: Request,
        run_id: str,
        csrf_token: Annotated[str | None, Form()] = None,
        name: Annotated[str, Form()] = "",
        payload: Annotated[str, Form()] = "",
    ) -> Response:
        def send() -> None:
            try:
                value = json.loads(payload) if payload.strip() else None
            except json.JSONDecodeError as error:
                raise ValidationError(f"the signal payload is not JSON: {error.msg} at column {error.colno}") from None
            client.signal(run_id, name.strip(), value)

        return perform(request, csrf_token, send, f"/runs/{run_id}", "signalled")

    # -- schedules and workers --------------------------------------------------------------------

    @pages.get("/schedules")
    @page
    def schedules(request: Request, session: Session) -> Response:
        return render(request, "schedules.html", session, schedules=client.list_schedules(), notice=notice_of(request))

    @pages.post("/schedules")
    def create_schedule(
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        type: Annotated[str, Form()] = "",
        cron: Annotated[str, Form()] = "",
        timezone: Annotated[str, Form()] = "",
        payload: Annotated[str, Form()] = "",
    ) -> Response:
        def create() -> None:
            try:
                value = json.loads(payload) if payload.strip() else None
            except json.JSONDecodeError as error:
                raise ValidationError(f"the payload is not JSON: {error.msg} at column {error.colno}") from None
            client.schedule(type.strip(), value).cron(cron.strip()).in_timezone(timezone.strip() or "UTC").create()

        return perform(request, csrf_token, create, "/schedules", "created")

    def schedule_action(verb: str, change: Callable[[str], None], notice: str) -> None:
        def route(request: Request, schedule_id: str, csrf_token: Annotated[str | None, Form()] = None) -> Response:
            return perform(request, csrf_token, lambda: change(schedule_id), "/schedules", notice)

        pages.add_api_route(f"/schedules/{{schedule_id}}/{verb}", route, methods=["POST"])

    schedule_action("pause", client.pause_schedule, "paused")
    schedule_action("resume", client.resume_schedule, "resumed")
    schedule_action("delete", client.delete_schedule, "deleted")

    @pages.get("/workers")
    @page
    def workers(request: Request, session: Session) -> Response:
        return render(
            request,
            "workers.html",
            session,
            workers=admin.list_workers(client),
            live_window=admin.LIVE_WORKER_WINDOW.total_seconds(),
        )

    return pages
