"""Every failure as ``{"error": {"type": ..., "message": ...}}`` with a fitting status.

simpleflow's errors map to 4xx by kind; a database that fails or does not answer is
503 with a generic message (the details, which may name hosts, go to the server log);
anything else is 500 without a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from simpleflow.core.errors import (
    AlreadyComplete,
    ConfigurationError,
    DatabaseError,
    InvalidState,
    MigrationError,
    NotFound,
    SimpleflowError,
    ValidationError,
    WaitTimeout,
)
from simpleflow.web.render import error_page

log = logging.getLogger("simpleflow.web")

DATABASE_MESSAGE = "the database failed or did not answer; the server log has the details"

_STATUS_OF: tuple[tuple[type[SimpleflowError], int], ...] = (
    (NotFound, 404),
    (ValidationError, 422),
    (AlreadyComplete, 409),
    (InvalidState, 409),
    (DatabaseError, 503),
    (MigrationError, 503),
    (WaitTimeout, 504),
    (ConfigurationError, 400),
)

_TYPE_OF_STATUS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    500: "InternalError",
    503: "DatabaseUnavailable",
}


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorOut(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """An error response the web layer decides on (authentication, roles, bad input)."""

    def __init__(self, status: int, type: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers


def status_of(error: SimpleflowError) -> int:
    for kind, status in _STATUS_OF:
        if isinstance(error, kind):
            return status
    return 400


def error_response(status: int, type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type, "message": message}}, status_code=status, headers=headers)


def describe(error: BaseException) -> tuple[int, str, str]:
    """(status, type, message) for an error raised while serving a request."""
    if isinstance(error, ApiError):
        return error.status, error.type, error.message
    if isinstance(error, (DatabaseError, MigrationError, sa_exc.SQLAlchemyError)):
        log.warning("database failure while serving a request: %s", error, exc_info=error)
        return 503, "DatabaseUnavailable", DATABASE_MESSAGE
    if isinstance(error, SimpleflowError):
        return status_of(error), type(error).__name__, str(error)
    log.error("unexpected error while serving a request", exc_info=error)
    return 500, "InternalError", "unexpected error; the server log has the details"


def _validation_message(error: RequestValidationError) -> tuple[int, str]:
    parts = []
    status = 422
    for item in error.errors()[:5]:
        if item.get("type") == "json_invalid":
            return 400, f"the body is not valid JSON: {item.get('ctx', {}).get('error', 'malformed')}"
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return status, "; ".join(parts) or "invalid request"


async def handle_api_error(request: Request, error: Exception) -> Response:
    status, type_, message = describe(error)
    headers = error.headers if isinstance(error, ApiError) else None
    return error_response(status, type_, message, headers)


async def handle_validation(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    status, message = _validation_message(error)
    return error_response(status, "BadRequest" if status == 400 else "ValidationError", message)


async def handle_http(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    headers: dict[str, Any] | None = getattr(error, "headers", None)
    if error.status_code in (404, 405) and not _is_api(request):
        return error_page(
            request,
            error.status_code,
            "There is no such page." if error.status_code == 404 else "That method is not allowed here.",
        )
    return error_response(
        error.status_code, _TYPE_OF_STATUS.get(error.status_code, "HTTPError"), str(error.detail), headers
    )


def _is_api(request: Request) -> bool:
    path = request.url.path
    return "/api/" in path or path.endswith(("/metrics", "/openapi.json"))
