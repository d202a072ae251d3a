"""The dashboard over real HTTP: login and its cookie, CSRF, read-only sessions,
escaping, and mounting inside another application. (The browser test drives the
same pages in Chromium.)"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from web_helpers import API_KEY, READ_KEY, LiveServer, write_headers

from simpleflow import Client

HOSTILE = '<script>window.pwned=1</script>"><img src=x onerror="window.pwned=2">'


def login(web: LiveServer, key: str) -> Any:
    response = web.http.post("/login", data={"key": key})
    assert response.status_code == 303 and response.headers["location"] == "/", response.text
    return response


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def test_pages_need_a_login_and_the_cookie_is_strict(web_app: LiveServer) -> None:
    for path in ("/", "/runs", "/schedules", "/workers", "/runs/table"):
        response = web_app.http.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/login"
    form = web_app.http.get("/login")
    assert form.status_code == 200 and 'type="password"' in form.text
    bad = web_app.http.post("/login", data={"key": "not-a-key-0123456789"})
    assert bad.status_code == 401 and "not valid" in bad.text and "set-cookie" not in bad.headers
    cookie = login(web_app, API_KEY).headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    overview = web_app.http.get("/")
    assert overview.status_code == 200 and "Finished per minute" in overview.text and "<svg" in overview.text
    headers = overview.headers
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    for path in ("/runs", "/schedules", "/workers"):
        assert web_app.http.get(path).status_code == 200
    digest = re.search(r'data-digest="([0-9a-f]+)"', web_app.http.get("/runs").text)
    table = web_app.http.get("/runs/table")
    assert digest and table.headers["x-digest"] == digest.group(1) and "<html" not in table.text
    # a forged or tampered cookie is no session
    web_app.http.cookies.set("simpleflow_session", "write.99999999999.abc.def")
    assert web_app.http.get("/").status_code == 303


def test_actions_need_the_csrf_token(web_app: LiveServer, migrated_url: str) -> None:
    with Client(migrated_url) as client:
        run_id = client.submit("page.job.v1", {"n": 1}).execute()
        login(web_app, API_KEY)
        page = web_app.http.get(f"/runs/{run_id}")
        token = csrf_of(page.text)
        for data in ({}, {"csrf_token": "0" * 64}):
            refused = web_app.http.post(f"/runs/{run_id}/cancel", data=data)
            assert refused.status_code == 403 and "CSRF" in refused.text
        assert client.get_run(run_id).status == "pending"
        done = web_app.http.post(f"/runs/{run_id}/cancel", data={"csrf_token": token})
        assert done.status_code == 303 and done.headers["location"] == f"/runs/{run_id}?done=cancelled"
        assert client.get_run(run_id).status == "cancelled"
        shown = web_app.http.get(done.headers["location"])
        assert "The run was cancelled." in shown.text
        again = web_app.http.post(f"/runs/{run_id}/cancel", data={"csrf_token": token})
        assert again.status_code == 409 and "already cancelled" in again.text
        assert web_app.http.post(f"/runs/{run_id}/retry", data={"csrf_token": token}).status_code == 303
        assert client.get_run(run_id).status == "pending"
        signalled = web_app.http.post(
            f"/runs/{run_id}/signal", data={"csrf_token": token, "name": "go/v1", "payload": "{not json"}
        )
        assert signalled.status_code == 422 and "not JSON" in signalled.text
        sent = web_app.http.post(
            f"/runs/{run_id}/signal", data={"csrf_token": token, "name": "go/v1", "payload": '{"by": "ana"}'}
        )
        assert sent.status_code == 303 and "The signal was sent." in web_app.http.get(sent.headers["location"]).text
        (event,) = [e for e in client.get_events(run_id) if e.event_type == "signalled"]
        assert event.detail["signal"] == "go/v1"
        # the token of one session is worthless in another
        login(web_app, READ_KEY)
        stale = web_app.http.post(f"/runs/{run_id}/cancel", data={"csrf_token": token})
        assert stale.status_code == 403 and "CSRF" in stale.text
        assert client.get_run(run_id).status == "pending"


def test_a_read_key_gives_a_read_only_dashboard(web_app: LiveServer, migrated_url: str) -> None:
    with Client(migrated_url) as client:
        run_id = client.submit("page.job.v1").execute()
        sid = client.schedule("page.cron.v1").cron("@hourly").create()
        login(web_app, READ_KEY)
        page = web_app.http.get(f"/runs/{run_id}")
        assert page.status_code == 200 and "read-only" in page.text
        assert 'id="cancel"' not in page.text and 'id="retry"' not in page.text
        assert "schedule-pause" not in web_app.http.get("/schedules").text
        token = csrf_of(page.text)  # the logout form carries one
        for path in (f"/runs/{run_id}/cancel", f"/schedules/{sid}/pause", f"/schedules/{sid}/delete"):
            refused = web_app.http.post(path, data={"csrf_token": token})
            assert refused.status_code == 403 and "read-only" in refused.text
        assert client.get_run(run_id).status == "pending" and client.get_schedule(sid).enabled


def test_user_data_is_escaped_everywhere(web_app: LiveServer, migrated_url: str) -> None:
    with Client(migrated_url) as client:
        run_id = client.submit("page.xss.v1", {"html": HOSTILE}).with_idempotency(HOSTILE).execute()
        client.schedule("page.xss.v1", {"html": HOSTILE}).cron("@daily").create()
    login(web_app, API_KEY)
    for path in (f"/runs/{run_id}", "/runs", f"/runs?idempotency_key={HOSTILE}", "/schedules"):
        html = web_app.http.get(path, params=None).text
        assert "<script>window.pwned" not in html and "<img src=x" not in html, path
    detail = web_app.http.get(f"/runs/{run_id}").text
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in detail and "&lt;img src=x onerror=" in detail


def test_schedules_from_the_dashboard(web_app: LiveServer, migrated_url: str) -> None:
    login(web_app, API_KEY)
    token = csrf_of(web_app.http.get("/schedules").text)
    created = web_app.http.post(
        "/schedules",
        data={
            "csrf_token": token,
            "type": "page.cron.v1",
            "cron": "0 9 * * 1",
            "timezone": "Europe/Paris",
            "payload": '{"k": 1}',
        },
    )
    assert created.status_code == 303
    with Client(migrated_url) as client:
        (sched,) = client.list_schedules()
        assert (sched.type, sched.cron_expr, sched.timezone, sched.payload) == (
            "page.cron.v1",
            "0 9 * * 1",
            "Europe/Paris",
            {"k": 1},
        )
        bad = web_app.http.post("/schedules", data={"csrf_token": token, "type": "page.cron.v1", "cron": "nope"})
        assert bad.status_code == 422
        for verb, enabled in (("pause", False), ("resume", True)):
            assert web_app.http.post(f"/schedules/{sched.id}/{verb}", data={"csrf_token": token}).status_code == 303
            assert client.get_schedule(sched.id).enabled is enabled
        assert web_app.http.post(f"/schedules/{sched.id}/delete", data={"csrf_token": token}).status_code == 303
        assert client.list_schedules() == []


def test_mounted_in_another_application(migrated_url: str, serve: Callable[[Any], LiveServer]) -> None:
    from fastapi import FastAPI

    from simpleflow.web import create_app

    parent = FastAPI()

    @parent.get("/")
    def home() -> dict[str, str]:
        return {"app": "mine"}

    parent.mount("/ops", create_app(migrated_url, api_keys=[API_KEY]))
    web = serve(parent)
    assert web.http.get("/").json() == {"app": "mine"}
    assert web.http.get("/ops/api/v1/health").json()["status"] == "ok"
    created = web.http.post("/ops/api/v1/runs", json={"type": "mounted.v1"}, headers=write_headers())
    assert created.status_code == 201
    assert web.http.get("/ops/").headers["location"] == "/ops/login"
    response = web.http.post("/ops/login", data={"key": API_KEY})
    assert response.headers["location"] == "/ops/" and "path=/ops" in response.headers["set-cookie"].lower()
    page = web.http.get("/ops/runs")
    assert page.status_code == 200 and 'href="/ops/static/app.css"' in page.text
    assert f'href="/ops/runs/{created.json()["id"]}"' in page.text
    assert web.http.get("/ops/static/app.js").status_code == 200


def test_runs_list_filters_and_pages(web_app: LiveServer, migrated_url: str) -> None:
    with Client(migrated_url) as client:
        ids = client.submit_many([("page.bulk.v1", {"i": i}) for i in range(52)])
        other = client.submit("page.other.v1").with_idempotency("find-me").execute()
        client.cancel(ids[0])
    login(web_app, API_KEY)
    first = web_app.http.get("/runs").text
    assert other in first and ids[-1] in first and ids[1] not in first  # 50 a page, newest first
    assert 'rel="next"' in first and 'rel="prev"' not in first
    second = web_app.http.get("/runs", params={"page": 2}).text
    assert ids[1] in second and ids[0] in second and other not in second and 'rel="prev"' in second
    assert 'rel="next"' not in second
    by_type = web_app.http.get("/runs", params={"type": "page.other.v1"}).text
    assert other in by_type and ids[-1] not in by_type
    by_key = web_app.http.get("/runs", params={"idempotency_key": "find-me"}).text
    assert other in by_key and ids[-1] not in by_key
    cancelled = web_app.http.get("/runs/table", params={"status": "cancelled"}).text
    assert ids[0] in cancelled and ids[1] not in cancelled
    wrong = web_app.http.get("/runs", params={"status": "lost"})
    assert wrong.status_code == 200 and "unknown status" in wrong.text
