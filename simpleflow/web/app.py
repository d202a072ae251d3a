"""``create_app``: the API, the dashboard and their static files as one ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

import simpleflow
from simpleflow.client import Client
from simpleflow.core.errors import ConfigurationError, SimpleflowError
from simpleflow.web import errors
from simpleflow.web.api import build_api
from simpleflow.web.auth import Keys
from simpleflow.web.pages import build_pages

API_PREFIX = "/api/v1"

#: sent with every response: no inline script or style can run, no framing, no sniffing
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def create_app(
    database: str | Engine | Client,
    *,
    api_keys: Iterable[str] = (),
    read_keys: Iterable[str] = (),
    no_auth: bool = False,
) -> FastAPI:
    """The JSON API (``/api/v1``), ``/metrics`` and the dashboard (``/``) over one database.

    ``database`` is a URL, an Engine (yours: it is not disposed) or a ``Client``
    (also yours; e.g. one built with a schema). API keys may read and change, read
    keys only read. Without any key ``ConfigurationError``, unless ``no_auth=True``
    (local development: every request may do everything).
    """
    keys = Keys(api_keys, read_keys, no_auth)
    if isinstance(database, Client):
        client, owned = database, False
    elif isinstance(database, (str, Engine)):
        client, owned = Client(database), True
    else:
        raise ConfigurationError(
            f"create_app takes a database URL, a SQLAlchemy Engine or a simpleflow Client, not {type(database).__name__}"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            client.close()

    app = FastAPI(
        title="simpleflow",
        version=simpleflow.__version__,
        description="Runs, schedules and workers of one simpleflow database.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # Swagger UI would load third-party JavaScript
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.client = client
    api, top = build_api(client, keys)
    app.include_router(api, prefix=API_PREFIX)
    app.include_router(top)
    app.include_router(build_pages(client, keys))
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.add_exception_handler(errors.ApiError, errors.handle_api_error)
    app.add_exception_handler(SimpleflowError, errors.handle_api_error)
    app.add_exception_handler(SQLAlchemyError, errors.handle_api_error)
    app.add_exception_handler(RequestValidationError, errors.handle_validation)
    app.add_exception_handler(StarletteHTTPException, errors.handle_http)
    app.add_exception_handler(Exception, errors.handle_api_error)  # a bug: 500, logged, no traceback sent

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith(_static_prefix(request)):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


def _static_prefix(request: Request) -> str:
    root: Any = request.scope.get("root_path", "")
    return f"{str(root).rstrip('/')}/static/"
