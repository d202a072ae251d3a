"""The JSON API under ``/api/v1``: a thin layer over ``Client`` and ``simpleflow.admin``.

Every route is a plain (synchronous) function, run on the server's thread pool,
because the Client is synchronous. Bodies and answers use the public models
(``RunInfo``, ``RunEvent``, ``StepInfo``, ``Schedule``, ``Stats``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator

from simpleflow import admin
from simpleflow.client import Client
from simpleflow.core.models import RunEvent, RunInfo, RunStatus, Schedule, StepInfo
from simpleflow.web.auth import Keys, Role
from simpleflow.web.errors import ApiError, ErrorOut, log
from simpleflow.web.metrics import prometheus_text

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in (
        (400, "malformed request"),
        (401, "no key or an unknown key"),
        (403, "a read key on a change"),
        (404, "no such run or schedule"),
        (409, "not allowed in the run's state"),
        (422, "invalid input"),
        (503, "the database failed or did not answer"),
    )
}

_bearer = HTTPBearer(auto_error=False, description="an API key or a read key")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key or a read key")


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("run_after needs a UTC offset, e.g. 2024-06-01T09:00:00+02:00 or ...Z")
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("run_after is out of range") from None


class SubmitIn(BaseModel):
    """A run to submit (``POST /runs``)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="the run's type, e.g. billing.invoice.v1")
    payload: Any = Field(None, description="any JSON value")
    priority: int | None = Field(None, description="lower runs first; default 100")
    idempotency_key: str | None = Field(None, description="a duplicate key creates nothing")
    max_attempts: int | None = Field(None, description="default 3")
    run_after: datetime | None = Field(None, description="due at this time (ISO 8601 with offset)")
    run_in_seconds: float | None = Field(None, ge=0, le=10 * 365 * 86400, description="due this many seconds from now")

    @field_validator("run_after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _utc(value)


class SubmitOut(BaseModel):
    id: str
    created: bool


class ScheduleIn(BaseModel):
    """A cron schedule to create (``POST /schedules``)."""

    model_config = ConfigDict(extra="forbid")

    type: str
    cron: str = Field(description="five-field cron expression or alias such as @daily")
    payload: Any = None
    timezone: str = Field("UTC", description="IANA time zone the expression is read in")
    priority: int | None = None
    max_attempts: int | None = None
    missed: Literal["latest", "all", "none"] | None = None


class SignalOut(BaseModel):
    id: str
    signal: str


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    database: bool
    time: datetime | None = None


def build_api(client: Client, keys: Keys) -> tuple[APIRouter, APIRouter]:
    """The ``/api/v1`` routes over one client and one set of keys, and ``/metrics`` for the top."""

    def role(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        api_key: Annotated[str | None, Depends(_header)],
    ) -> Role:
        if keys.no_auth:
            return "write"
        presented = api_key or (bearer.credentials if bearer is not None else None)
        found = keys.role_of(presented)
        if found is None:
            why = "no key given" if not presented else "unknown key"
            raise ApiError(
                401,
                "Unauthorized",
                f"{why}: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                {"WWW-Authenticate": "Bearer"},
            )
        return found

    def writer(who: Role = Depends(role)) -> Role:  # a default: ``role`` is local, not resolvable by name
        if who != "write":
            raise ApiError(403, "Forbidden", "a read key cannot change anything; use an API key")
        return who

    read = [Depends(role)]
    write = [Depends(writer)]
    api = APIRouter(responses=ERRORS)
    top = APIRouter(include_in_schema=False)

    @api.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}}, tags=["operations"])
    def health() -> Any:
        """Whether the database answers (no key needed)."""
        try:
            now = admin.ping(client)
        except Exception as error:  # whatever the failure, the answer is "unavailable"
            log.warning("health check: the database did not answer: %s", error)
            return JSONResponse({"status": "unavailable", "database": False, "time": None}, status_code=503)
        return HealthOut(status="ok", database=True, time=now)

    @api.get("/stats", response_model=admin.Stats, dependencies=read, tags=["operations"])
    def stats() -> admin.Stats:
        """Queue depth, the oldest due run's age, the last hour's throughput, live workers."""
        return client.stats()

    @api.get("/workers", response_model=list[admin.WorkerInfo], dependencies=read, tags=["operations"])
    def workers() -> list[admin.WorkerInfo]:
        """Every registered worker with its heartbeat age in seconds."""
        return admin.list_workers(client)

    def metrics() -> PlainTextResponse:
        """Prometheus text: queue depth, oldest due age, runs finished in the last hour, workers."""
        return PlainTextResponse(prometheus_text(client), media_type="text/plain; version=0.0.4; charset=utf-8")

    # not response_class=PlainTextResponse: that would document the JSON errors as text/plain too
    api.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        dependencies=read,
        tags=["operations"],
        response_model=None,
        responses={
            200: {
                "description": "Prometheus text format 0.0.4",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    # the conventional scrape path at the top of the app, the same handler
    top.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        response_class=PlainTextResponse,
        dependencies=read,
        include_in_schema=False,
    )

    # -- runs ------------------------------------------------------------------------------

    @api.post(
        "/runs",
        response_model=SubmitOut,
        status_code=201,
        dependencies=write,
        tags=["runs"],
        responses={200: {"model": SubmitOut, "description": "the idempotency key already held a run"}},
    )
    def submit(body: SubmitIn, response: Response) -> SubmitOut:
        """Submit a run; a duplicate idempotency key returns the existing run's id with 200."""
        if body.run_after is not None and body.run_in_seconds is not None:
            raise ApiError(422, "ValidationError", "give run_after or run_in_seconds, not both")
        sub = client.submit(body.type, body.payload)
        if body.priority is not None:
            sub.with_priority(body.priority)
        if body.max_attempts is not None:
            sub.with_max_attempts(body.max_attempts)
        if body.idempotency_key is not None:
            sub.with_idempotency(body.idempotency_key)
        if body.run_after is not None:
            sub.run_after(body.run_after)
        if body.run_in_seconds is not None:
            sub.run_in(timedelta(seconds=body.run_in_seconds))
        run_id, created = sub.execute_created()
        if not created:
            response.status_code = 200
        return SubmitOut(id=run_id, created=created)

    @api.get("/runs", response_model=list[RunInfo], dependencies=read, tags=["runs"])
    def list_runs(
        type: str | None = None,
        status: RunStatus | None = None,
        idempotency_key: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    ) -> list[RunInfo]:
        """Runs matching every given filter, newest first."""
        return client.list_runs(type=type, status=status, idempotency_key=idempotency_key, limit=limit, offset=offset)

    @api.get("/runs/{run_id}", response_model=RunInfo, dependencies=read, tags=["runs"])
    def get_run(run_id: str) -> RunInfo:
        return client.get_run(run_id)

    @api.get("/runs/{run_id}/events", response_model=list[RunEvent], dependencies=read, tags=["runs"])
    def get_events(run_id: str) -> list[RunEvent]:
        """The run's audit trail, oldest first."""
        return client.get_events(run_id)

    @api.get("/runs/{run_id}/steps", response_model=list[StepInfo], dependencies=read, tags=["runs"])
    def get_steps(run_id: str) -> list[StepInfo]:
        """A workflow run's recorded steps, timers, signals and values, in order."""
        client.get_run(run_id)
        return client.get_steps(run_id)

    def _then_show(action: Callable[[str], None]) -> Callable[[str], RunInfo]:
        def route(run_id: str) -> RunInfo:
            action(run_id)
            return client.get_run(run_id)

        return route

    cancel = _then_show(client.cancel)
    api.post(
        "/runs/{run_id}/cancel",
        response_model=RunInfo,
        dependencies=write,
        tags=["runs"],
        summary="Cancel an unfinished run",
        operation_id="cancel_run",
    )(cancel)
    api.delete(
        "/runs/{run_id}",
        response_model=RunInfo,
        dependencies=write,
        tags=["runs"],
        summary="Cancel an unfinished run (as DELETE)",
        operation_id="delete_run",
    )(cancel)
    api.post(
        "/runs/{run_id}/retry",
        response_model=RunInfo,
        dependencies=write,
        tags=["runs"],
        summary="Run a failed or cancelled run again",
        operation_id="retry_run",
    )(_then_show(client.retry))

    @api.post(
        "/runs/{run_id}/signals/{name:path}",
        response_model=SignalOut,
        status_code=202,
        dependencies=write,
        tags=["runs"],
    )
    def signal(run_id: str, name: str, payload: Annotated[Any, Body()] = None) -> SignalOut:
        """Deliver a signal (the body is its JSON payload) to a workflow run."""
        client.signal(run_id, name, payload)
        return SignalOut(id=run_id, signal=name)

    # -- schedules ----------------------------------------------------------------------------

    @api.get("/schedules", response_model=list[Schedule], dependencies=read, tags=["schedules"])
    def list_schedules(include_deleted: bool = False) -> list[Schedule]:
        return client.list_schedules(include_deleted=include_deleted)

    @api.post("/schedules", response_model=Schedule, status_code=201, dependencies=write, tags=["schedules"])
    def create_schedule(body: ScheduleIn) -> Schedule:
        builder = client.schedule(body.type, body.payload).cron(body.cron).in_timezone(body.timezone)
        if body.priority is not None:
            builder.with_priority(body.priority)
        if body.max_attempts is not None:
            builder.with_max_attempts(body.max_attempts)
        if body.missed is not None:
            builder.with_missed(body.missed)
        return client.get_schedule(builder.create())

    @api.get("/schedules/{schedule_id}", response_model=Schedule, dependencies=read, tags=["schedules"])
    def get_schedule(schedule_id: str) -> Schedule:
        return client.get_schedule(schedule_id)

    @api.delete(
        "/schedules/{schedule_id}", status_code=204, response_class=Response, dependencies=write, tags=["schedules"]
    )
    def delete_schedule(schedule_id: str) -> Response:
        """Soft-delete: the schedule stops firing; its runs stay."""
        client.delete_schedule(schedule_id)
        return Response(status_code=204)

    def _schedule_action(action: Callable[[str], None]) -> Callable[[str], Schedule]:
        def route(schedule_id: str) -> Schedule:
            action(schedule_id)
            return client.get_schedule(schedule_id)

        return route

    for verb, action in (("pause", client.pause_schedule), ("resume", client.resume_schedule)):
        for method in ("POST", "PATCH"):
            api.add_api_route(
                f"/schedules/{{schedule_id}}/{verb}",
                _schedule_action(action),
                methods=[method],
                response_model=Schedule,
                dependencies=write,
                tags=["schedules"],
                summary=f"{verb.capitalize()} a schedule",
                operation_id=f"{verb}_schedule_{method.lower()}",
            )
    return api, top
