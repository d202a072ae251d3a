"""The JSON API over real HTTP (uvicorn on 127.0.0.1), on SQLite and PostgreSQL.

Every status the API promises (200/201/202/204, 400, 401, 403, 404, 409, 422, 503)
and both key roles, checked against what the database then holds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from poller_helpers import started, wait_for
from web_helpers import API_KEY, READ_KEY, LiveServer, read_headers, write_headers

from simpleflow import Client, Poller
from simpleflow.core.attempt import WorkflowRun

W = write_headers()
R = read_headers()


def error_of(response: Any, status: int, type: str) -> str:
    """Assert the JSON error shape; its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == type, body
    assert "Traceback" not in response.text
    return str(body["error"]["message"])


def submit(web: LiveServer, **body: Any) -> str:
    body.setdefault("type", "demo.job.v1")
    response = web.http.post("/api/v1/runs", json=body, headers=W)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# -- keys and roles -------------------------------------------------------------------------


def test_health_needs_no_key_and_reads_the_database_clock(web_app: LiveServer) -> None:
    response = web_app.http.get("/api/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] is True
    assert abs(datetime.fromisoformat(body["time"]) - datetime.now(timezone.utc)) < timedelta(minutes=5)


def test_every_read_needs_a_key(web_app: LiveServer) -> None:
    for path in (
        "/api/v1/runs",
        "/api/v1/stats",
        "/api/v1/workers",
        "/api/v1/schedules",
        "/api/v1/metrics",
        "/metrics",
    ):
        message = error_of(web_app.http.get(path), 401, "Unauthorized")
        assert "Bearer" in message and "X-API-Key" in message
        assert web_app.http.get(path).headers["www-authenticate"] == "Bearer"
        for wrong in (
            {"Authorization": "Bearer wrong-key-0123456789"},
            {"X-API-Key": API_KEY[:-1]},
            {"Authorization": f"Basic {API_KEY}"},
        ):
            error_of(web_app.http.get(path, headers=wrong), 401, "Unauthorized")
        assert web_app.http.get(path, headers={"Authorization": f"Bearer {READ_KEY}"}).status_code == 200
        assert web_app.http.get(path, headers={"X-API-Key": API_KEY}).status_code == 200


def test_a_read_key_reads_but_cannot_change_anything(web_app: LiveServer, migrated_url: str) -> None:
    run_id = submit(web_app)
    with Client(migrated_url) as client:
        sid = client.schedule("demo.cron.v1").cron("@daily").create()
        attempts: list[tuple[str, str, Any]] = [
            ("POST", "/api/v1/runs", {"type": "demo.job.v1"}),
            ("POST", f"/api/v1/runs/{run_id}/cancel", None),
            ("DELETE", f"/api/v1/runs/{run_id}", None),
            ("POST", f"/api/v1/runs/{run_id}/retry", None),
            ("POST", f"/api/v1/runs/{run_id}/signals/go", {"x": 1}),
            ("POST", "/api/v1/schedules", {"type": "demo.cron.v1", "cron": "@daily"}),
            ("DELETE", f"/api/v1/schedules/{sid}", None),
            ("POST", f"/api/v1/schedules/{sid}/pause", None),
            ("PATCH", f"/api/v1/schedules/{sid}/resume", None),
        ]
        for method, path, body in attempts:
            response = web_app.http.request(method, path, json=body, headers=R)
            assert "read key" in error_of(response, 403, "Forbidden"), (method, path)
            # no key at all is 401 before the role is looked at
            error_of(web_app.http.request(method, path, json=body), 401, "Unauthorized")
        assert client.get_run(run_id).status == "pending"
        assert len(client.list_runs()) == 1
        assert client.get_schedule(sid).enabled and len(client.list_schedules()) == 1
        assert web_app.http.get(f"/api/v1/runs/{run_id}", headers=R).json()["id"] == run_id


# -- runs -----------------------------------------------------------------------------------


def test_submit_creates_a_run_and_a_duplicate_key_returns_it(web_app: LiveServer, migrated_url: str) -> None:
    body = {
        "type": "billing.invoice.v1",
        "payload": {"n": 1, "s": "ü"},
        "priority": 7,
        "max_attempts": 5,
        "idempotency_key": "invoice:1",
    }
    first = web_app.http.post("/api/v1/runs", json=body, headers=W)
    assert first.status_code == 201 and first.json()["created"] is True
    again = web_app.http.post("/api/v1/runs", json={**body, "payload": {"n": 2}}, headers=W)
    assert again.status_code == 200 and again.json() == {"id": first.json()["id"], "created": False}
    with Client(migrated_url) as client:
        run = client.get_run(first.json()["id"])
        assert (run.type, run.payload, run.priority, run.max_attempts, run.idempotency_key) == (
            "billing.invoice.v1",
            {"n": 1, "s": "ü"},
            7,
            5,
            "invoice:1",
        )
        assert len(client.list_runs()) == 1
    shown = web_app.http.get(f"/api/v1/runs/{run.id}", headers=R).json()
    assert shown["payload"] == {"n": 1, "s": "ü"} and shown["status"] == "pending"
    assert set(shown) >= {
        "id",
        "type",
        "payload",
        "status",
        "priority",
        "run_at",
        "idempotency_key",
        "attempt",
        "max_attempts",
        "leased_by",
        "lease_until",
        "last_error",
        "result",
        "created_at",
        "updated_at",
    }


def test_submit_when(web_app: LiveServer, migrated_url: str) -> None:
    at = datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    later = submit(web_app, run_after=at.isoformat())
    soon = submit(web_app, run_in_seconds=3600)
    with Client(migrated_url) as client:
        assert client.get_run(later).run_at == at
        delay = client.get_run(soon).run_at - datetime.now(timezone.utc)
        assert timedelta(minutes=55) < delay < timedelta(minutes=65)


INVALID_SUBMISSIONS: list[tuple[dict[str, Any], str]] = [
    ({"type": "bad type!"}, "invalid type"),
    ({}, "type: Field required"),
    ({"type": "a.b", "priority": "high"}, "priority"),
    ({"type": "a.b", "max_attempts": 0}, "max_attempts"),
    ({"type": "a.b", "run_after": "2030-01-01T00:00:00"}, "UTC offset"),
    ({"type": "a.b", "run_after": "2030-01-01T00:00:00Z", "run_in_seconds": 5}, "not both"),
    ({"type": "a.b", "run_in_seconds": -1}, "run_in_seconds"),
    ({"type": "a.b", "colour": "red"}, "colour"),
    ({"type": "a.b", "idempotency_key": ""}, "idempotency key"),
]


def test_submit_rejects_invalid_input_with_422(web_app: LiveServer) -> None:
    for body, fragment in INVALID_SUBMISSIONS:
        message = error_of(web_app.http.post("/api/v1/runs", json=body, headers=W), 422, "ValidationError")
        assert fragment in message, (body, message)
    assert web_app.http.get("/api/v1/runs", headers=R).json() == []


def test_malformed_json_is_400(web_app: LiveServer) -> None:
    response = web_app.http.post(
        "/api/v1/runs", content=b'{"type": ', headers={**W, "Content-Type": "application/json"}
    )
    assert "not valid JSON" in error_of(response, 400, "BadRequest")


def test_list_filters_and_pages(web_app: LiveServer) -> None:
    ids = [submit(web_app, type="a.one.v1") for _ in range(3)] + [
        submit(web_app, type="a.two.v1", idempotency_key="k2")
    ]
    listed = web_app.http.get("/api/v1/runs", headers=R).json()
    assert [r["id"] for r in listed] == list(reversed(ids))  # newest first
    assert {r["id"] for r in web_app.http.get("/api/v1/runs?type=a.one.v1", headers=R).json()} == set(ids[:3])
    assert [r["id"] for r in web_app.http.get("/api/v1/runs?idempotency_key=k2", headers=R).json()] == [ids[3]]
    page = web_app.http.get("/api/v1/runs?limit=2&offset=1", headers=R).json()
    assert [r["id"] for r in page] == [ids[2], ids[1]]
    web_app.http.post(f"/api/v1/runs/{ids[0]}/cancel", headers=W)
    assert [r["id"] for r in web_app.http.get("/api/v1/runs?status=cancelled", headers=R).json()] == [ids[0]]
    error_of(web_app.http.get("/api/v1/runs?status=lost", headers=R), 422, "ValidationError")
    error_of(web_app.http.get("/api/v1/runs?limit=0", headers=R), 422, "ValidationError")
    error_of(web_app.http.get("/api/v1/runs?type=no%20spaces", headers=R), 422, "ValidationError")


def test_unknown_runs_are_404(web_app: LiveServer) -> None:
    unknown = str(uuid.uuid4())
    for path in (
        f"/api/v1/runs/{unknown}",
        f"/api/v1/runs/{unknown}/events",
        f"/api/v1/runs/{unknown}/steps",
        "/api/v1/runs/not-a-uuid",
    ):
        assert "not found" in error_of(web_app.http.get(path, headers=R), 404, "NotFound")
    for method, path in (
        ("POST", f"/api/v1/runs/{unknown}/cancel"),
        ("DELETE", f"/api/v1/runs/{unknown}"),
        ("POST", f"/api/v1/runs/{unknown}/retry"),
        ("POST", f"/api/v1/runs/{unknown}/signals/x"),
    ):
        error_of(web_app.http.request(method, path, headers=W), 404, "NotFound")
    error_of(web_app.http.get("/api/v1/nothing-here", headers=R), 404, "NotFound")
    error_of(web_app.http.put("/api/v1/runs", headers=W), 405, "MethodNotAllowed")


def test_cancel_retry_and_their_conflicts(web_app: LiveServer, migrated_url: str) -> None:
    first, second = submit(web_app), submit(web_app)
    error_of(web_app.http.post(f"/api/v1/runs/{first}/retry", headers=W), 409, "InvalidState")
    cancelled = web_app.http.post(f"/api/v1/runs/{first}/cancel", headers=W)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert "already cancelled" in error_of(
        web_app.http.post(f"/api/v1/runs/{first}/cancel", headers=W), 409, "AlreadyComplete"
    )
    deleted = web_app.http.delete(f"/api/v1/runs/{second}", headers=W)
    assert deleted.status_code == 200 and deleted.json()["status"] == "cancelled"
    error_of(web_app.http.delete(f"/api/v1/runs/{second}", headers=W), 409, "AlreadyComplete")
    retried = web_app.http.post(f"/api/v1/runs/{first}/retry", headers=W)
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    events = [e["event_type"] for e in web_app.http.get(f"/api/v1/runs/{first}/events", headers=R).json()]
    with Client(migrated_url) as client:
        assert events == [e.event_type for e in client.get_events(first)]
        assert client.get_run(first).status == "pending" and client.get_run(second).status == "cancelled"
    assert "cancelled" in events and len(events) >= 3


def test_signals_steps_and_workers(web_app: LiveServer, migrated_url: str) -> None:
    run_id = submit(web_app, type="flow.wait.v1")
    sent = web_app.http.post(f"/api/v1/runs/{run_id}/signals/approved/v1", json={"by": "ana"}, headers=W)
    assert sent.status_code == 202 and sent.json() == {"id": run_id, "signal": "approved/v1"}
    no_body = web_app.http.post(f"/api/v1/runs/{run_id}/signals/ping", headers=W)
    assert no_body.status_code == 202
    events = web_app.http.get(f"/api/v1/runs/{run_id}/events", headers=R).json()
    assert [e["detail"]["signal"] for e in events if e["event_type"] == "signalled"] == ["approved/v1", "ping"]
    assert web_app.http.get(f"/api/v1/runs/{run_id}/steps", headers=R).json() == []
    web_app.http.post(f"/api/v1/runs/{run_id}/cancel", headers=W)
    error_of(web_app.http.post(f"/api/v1/runs/{run_id}/signals/late", json=1, headers=W), 409, "AlreadyComplete")

    def work(run: WorkflowRun) -> dict[str, str]:
        return {"ok": "yes"}

    poller = Poller(migrated_url).handle_func("flow.done.v1", work).with_worker_id("web-test-worker")
    with started(poller):
        workers = wait_for(lambda: web_app.http.get("/api/v1/workers", headers=R).json(), what="a registered worker")
        done = submit(web_app, type="flow.done.v1")
        wait_for(
            lambda: web_app.http.get(f"/api/v1/runs/{done}", headers=R).json()["status"] == "succeeded",
            what="the run to succeed",
        )
    assert workers[0]["worker_id"] == "web-test-worker" and workers[0]["heartbeat_age_seconds"] >= 0
    assert "flow.done.v1" in workers[0]["types"]
    result = web_app.http.get(f"/api/v1/runs/{done}", headers=R).json()
    assert result["result"] == {"ok": "yes"}


# -- schedules ----------------------------------------------------------------------------------


def test_schedules_crud_pause_resume(web_app: LiveServer, migrated_url: str) -> None:
    created = web_app.http.post(
        "/api/v1/schedules",
        headers=W,
        json={
            "type": "report.daily.v1",
            "cron": "0 9 * * 1",
            "payload": {"kind": "sales"},
            "timezone": "America/New_York",
            "priority": 50,
            "max_attempts": 2,
            "missed": "all",
        },
    )
    assert created.status_code == 201, created.text
    sched = created.json()
    assert (
        sched["cron_expr"],
        sched["timezone"],
        sched["priority"],
        sched["max_attempts"],
        sched["missed"],
        sched["enabled"],
        sched["payload"],
    ) == ("0 9 * * 1", "America/New_York", 50, 2, "all", True, {"kind": "sales"})
    sid = sched["id"]
    assert web_app.http.get(f"/api/v1/schedules/{sid}", headers=R).json() == sched
    assert [s["id"] for s in web_app.http.get("/api/v1/schedules", headers=R).json()] == [sid]
    paused = web_app.http.post(f"/api/v1/schedules/{sid}/pause", headers=W)
    assert paused.status_code == 200 and paused.json()["enabled"] is False
    assert web_app.http.patch(f"/api/v1/schedules/{sid}/resume", headers=W).json()["enabled"] is True
    assert web_app.http.patch(f"/api/v1/schedules/{sid}/pause", headers=W).json()["enabled"] is False
    assert web_app.http.post(f"/api/v1/schedules/{sid}/resume", headers=W).json()["enabled"] is True
    deleted = web_app.http.delete(f"/api/v1/schedules/{sid}", headers=W)
    assert deleted.status_code == 204 and deleted.content == b""
    assert web_app.http.get("/api/v1/schedules", headers=R).json() == []
    with Client(migrated_url) as client:
        assert [s.id for s in client.list_schedules(include_deleted=True)] == [sid]
    kept = web_app.http.get("/api/v1/schedules?include_deleted=true", headers=R).json()
    assert [s["id"] for s in kept] == [sid] and kept[0]["deleted_at"] is not None


def test_schedule_errors(web_app: LiveServer) -> None:
    unknown = str(uuid.uuid4())
    error_of(web_app.http.get(f"/api/v1/schedules/{unknown}", headers=R), 404, "NotFound")
    for method, verb in (("POST", "pause"), ("PATCH", "resume")):
        error_of(web_app.http.request(method, f"/api/v1/schedules/{unknown}/{verb}", headers=W), 404, "NotFound")
    error_of(web_app.http.delete(f"/api/v1/schedules/{unknown}", headers=W), 404, "NotFound")
    for body in (
        {"type": "a.b", "cron": "61 * * * *"},
        {"type": "a.b", "cron": "@daily", "timezone": "Mars/Base"},
        {"type": "a.b", "cron": "@daily", "missed": "some"},
        {"type": "a.b"},
    ):
        error_of(web_app.http.post("/api/v1/schedules", json=body, headers=W), 422, "ValidationError")
    assert web_app.http.get("/api/v1/schedules", headers=R).json() == []


# -- operations -----------------------------------------------------------------------------------


def test_stats_and_metrics(web_app: LiveServer) -> None:
    submit(web_app, type='odd"type\\v1'.replace('"', "").replace("\\", ""))
    submit(web_app, type="metrics.demo.v1")
    cancelled = submit(web_app, type="metrics.demo.v1")
    web_app.http.post(f"/api/v1/runs/{cancelled}/cancel", headers=W)
    stats = web_app.http.get("/api/v1/stats", headers=R).json()
    assert {"type": "metrics.demo.v1", "status": "pending", "count": 1} in stats["queue"]
    assert stats["cancelled_last_hour"] == 1 and stats["oldest_due_age_seconds"] is not None
    for path in ("/metrics", "/api/v1/metrics"):
        response = web_app.http.get(path, headers=R)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        lines = response.text.splitlines()
        assert 'simpleflow_queue_depth{type="metrics.demo.v1",status="pending"} 1' in lines
        assert 'simpleflow_runs_finished_last_hour{status="cancelled"} 1' in lines
        assert 'simpleflow_workers{state="live"} 0' in lines
        assert "# TYPE simpleflow_oldest_due_age_seconds gauge" in lines


def test_openapi_describes_every_route(web_app: LiveServer) -> None:
    for path in ("/openapi.json", "/api/v1/openapi.json"):
        spec = web_app.http.get(path).json()
        paths = spec["paths"]
        assert {
            "/api/v1/health",
            "/api/v1/stats",
            "/api/v1/workers",
            "/api/v1/metrics",
            "/api/v1/runs",
            "/api/v1/runs/{run_id}",
            "/api/v1/runs/{run_id}/events",
            "/api/v1/runs/{run_id}/steps",
            "/api/v1/runs/{run_id}/cancel",
            "/api/v1/runs/{run_id}/retry",
            "/api/v1/runs/{run_id}/signals/{name}",
            "/api/v1/schedules",
            "/api/v1/schedules/{schedule_id}",
            "/api/v1/schedules/{schedule_id}/pause",
            "/api/v1/schedules/{schedule_id}/resume",
        } <= set(paths)
        assert set(paths["/api/v1/schedules/{schedule_id}/pause"]) == {"post", "patch"}
        assert set(paths["/api/v1/runs/{run_id}"]) == {"get", "delete"}
        assert "ErrorOut" in spec["components"]["schemas"]
        assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])


# -- failures ---------------------------------------------------------------------------------------


def test_a_database_without_the_schema_is_503_never_a_traceback(
    db_url: str, serve: Callable[[Any], LiveServer]
) -> None:
    from simpleflow.web import create_app

    web = serve(create_app(db_url, api_keys=[API_KEY]))  # never migrated: no tables
    for method, path in (
        ("GET", "/api/v1/runs"),
        ("GET", "/api/v1/stats"),
        ("GET", "/metrics"),
        ("GET", f"/api/v1/runs/{uuid.uuid4()}"),
        ("POST", "/api/v1/runs"),
    ):
        response = web.http.request(method, path, headers=W, json={"type": "a.b"} if method == "POST" else None)
        assert "database" in error_of(response, 503, "DatabaseUnavailable")


def test_an_unreachable_database_is_503(db_kind: str, tmp_path: Any, serve: Callable[[Any], LiveServer]) -> None:
    from simpleflow.web import create_app

    url = (
        f"sqlite:///{tmp_path}/missing-dir/x.db"
        if db_kind == "sqlite"
        else "postgresql://nobody@127.0.0.1:9/nowhere?connect_timeout=2"
    )
    web = serve(create_app(url, api_keys=[API_KEY]))
    health = web.http.get("/api/v1/health")
    assert health.status_code == 503 and health.json() == {"status": "unavailable", "database": False, "time": None}
    error_of(web.http.get("/api/v1/runs", headers=W), 503, "DatabaseUnavailable")
    # the key is still checked first
    error_of(web.http.get("/api/v1/runs"), 401, "Unauthorized")


def test_create_app_checks_its_arguments(migrated_url: str) -> None:
    from simpleflow import ConfigurationError
    from simpleflow.web import create_app

    with pytest.raises(ConfigurationError, match="no API key"):
        create_app(migrated_url)
    with pytest.raises(ConfigurationError, match="at least 16"):
        create_app(migrated_url, api_keys=["short"])
    with pytest.raises(ConfigurationError, match="list of keys"):
        create_app(migrated_url, api_keys=API_KEY)
    with pytest.raises(ConfigurationError, match="both"):
        create_app(migrated_url, api_keys=[API_KEY], read_keys=[API_KEY])
    with pytest.raises(ConfigurationError, match="database URL"):
        create_app(42, api_keys=[API_KEY])  # type: ignore[arg-type]


def test_no_auth_lets_everyone_in(migrated_url: str, serve: Callable[[Any], LiveServer]) -> None:
    from simpleflow.web import create_app

    web = serve(create_app(migrated_url, no_auth=True))
    response = web.http.post("/api/v1/runs", json={"type": "open.v1"})
    assert response.status_code == 201
    assert web.http.get("/api/v1/runs").json()[0]["id"] == response.json()["id"]
