"""The dashboard in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium): log in, find a submitted run, open it, cancel and retry it, pause a
schedule, and see hostile payloads and errors shown as text with no script run.

Skips when Chromium, chromedriver or Selenium is missing, except under ``CI=true``,
where that fails. Screenshots go to the test's temporary directory
(``SIMPLEFLOW_SCREENSHOTS=DIR`` keeps them elsewhere).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_admin import age_runs
from web_helpers import API_KEY, READ_KEY, LiveServer, ci

from simpleflow import Client, Poller
from simpleflow.core.attempt import WorkflowRun

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCRIPT = "<script>window.pwned = 'script';</script>"
IMG = '"><img src=x onerror="window.pwned = \'img\'">'


def _missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found (apt-get install {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason:
        if ci():
            pytest.fail(f"the browser test needs Chromium: {reason} (required because CI=true)", pytrace=False)
        pytest.skip(f"SKIPPING BROWSER TEST: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _fail_hostile(run: WorkflowRun) -> None:
    raise RuntimeError(f"upstream said {SCRIPT} and {IMG}")


def _succeed(run: WorkflowRun) -> dict[str, str]:
    return {"ok": "yes"}


def test_dashboard_in_chromium(
    browser: Any, migrated_url: str, serve: Callable[[Any], LiveServer], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from simpleflow.web import create_app

    shots = Path(os.environ.get("SIMPLEFLOW_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        assert browser.save_screenshot(str(shots / f"{name}.png")), name

    with Client(migrated_url) as client:
        done = [client.submit("report.daily.v1", {"day": i}).execute() for i in range(40)]
        failed = [client.submit("billing.charge.v1", {"n": i}).with_max_attempts(1).execute() for i in range(5)]
        failing = failed[0]
        (
            Poller(migrated_url)
            .handle_func("report.daily.v1", _succeed)
            .handle_func("billing.charge.v1", _fail_hostile)
            .run_until_idle(timeout=timedelta(seconds=20))
        )
        spread = random.Random(7)  # over the last hour, for the chart
        for run_id in done + failed:
            age_runs(client, [run_id], timedelta(minutes=spread.randrange(57), seconds=5))
        hostile = (
            client.submit("content.thumbnail.v1", {"title": SCRIPT, "alt": IMG})
            .with_idempotency(f"thumb:{SCRIPT}{IMG}")
            .with_priority(10)
            .execute()
        )
        sid = (
            client.schedule("report.weekly.v1", {"kind": "sales"})
            .cron("0 9 * * 1")
            .in_timezone("America/New_York")
            .create()
        )

    web = serve(create_app(migrated_url, api_keys=[API_KEY], read_keys=[READ_KEY]))
    wait = WebDriverWait(browser, 10)

    def wait_text(element_id: str, text: str) -> None:
        wait.until(ec.text_to_be_present_in_element((By.ID, element_id), text))

    def no_script_ran() -> None:
        assert browser.execute_script("return typeof window.pwned") == "undefined"
        assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
        assert browser.find_elements(By.CSS_SELECTOR, "main script") == []

    # log in
    browser.get(f"{web.url}/")
    wait.until(ec.presence_of_element_located((By.ID, "key")))
    assert browser.current_url.endswith("/login")
    browser.find_element(By.ID, "key").send_keys("wrong-key-0123456789")
    browser.find_element(By.ID, "login").click()
    assert "not valid" in wait.until(ec.presence_of_element_located((By.ID, "error"))).text
    browser.find_element(By.ID, "key").send_keys(API_KEY)
    browser.find_element(By.ID, "login").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "svg.chart")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")) >= 10  # a bar per busy minute
    assert "Overview" in browser.title and "billing.charge.v1" in browser.find_element(By.TAG_NAME, "main").text
    shot("overview")

    # the runs list shows the submitted run; open it
    browser.find_element(By.LINK_TEXT, "Runs").click()
    link = wait.until(ec.element_to_be_clickable((By.LINK_TEXT, hostile)))
    shot("runs")
    link.click()
    payload = wait.until(ec.presence_of_element_located((By.ID, "payload")))
    # shown as text, character for character (the JSON escapes only the quotes)
    assert SCRIPT in payload.text and json.dumps(IMG)[1:-1] in payload.text
    assert f"thumb:{SCRIPT}{IMG}" in browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    no_script_ran()
    shot("run-hostile")

    # cancel, then retry
    browser.find_element(By.ID, "cancel").click()
    wait_text("notice", "The run was cancelled.")
    assert browser.find_element(By.ID, "run-status").text == "cancelled"
    browser.find_element(By.ID, "retry").click()
    wait_text("notice", "The run will run again.")  # (the old page had a notice too)
    assert browser.find_element(By.ID, "run-status").text == "pending"
    events = browser.find_element(By.ID, "events").text
    assert "cancelled" in events and "requeued" in events
    no_script_ran()

    # the failed run's error is text too
    browser.get(f"{web.url}/runs/{failing}")
    error = wait.until(ec.presence_of_element_located((By.ID, "last-error")))
    assert SCRIPT in error.text and IMG in error.text and "RuntimeError" in error.text
    no_script_ran()
    shot("run-failed")

    # pause the schedule
    browser.find_element(By.LINK_TEXT, "Schedules").click()
    row = wait.until(ec.presence_of_element_located((By.ID, f"schedule-{sid}")))
    assert row.find_element(By.CLASS_NAME, "schedule-state").text == "enabled"
    row.find_element(By.CLASS_NAME, "schedule-pause").click()
    wait_text("notice", "The schedule is paused.")
    row = browser.find_element(By.ID, f"schedule-{sid}")
    assert row.find_element(By.CLASS_NAME, "schedule-state").text == "paused"
    shot("schedules")
    with Client(migrated_url) as client:
        assert client.get_schedule(sid).enabled is False
        assert client.get_run(hostile).status == "pending"
        assert [e.event_type for e in client.get_events(hostile)].count("cancelled") == 1

    # a read key: the same pages, no buttons
    browser.find_element(By.ID, "logout").click()
    wait.until(ec.presence_of_element_located((By.ID, "key"))).send_keys(READ_KEY)
    browser.find_element(By.ID, "login").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "svg.chart")))
    browser.get(f"{web.url}/runs/{hostile}")
    wait.until(ec.presence_of_element_located((By.ID, "payload")))
    assert (
        browser.find_elements(By.ID, "cancel") == [] and "read-only" in browser.find_element(By.TAG_NAME, "header").text
    )
    no_script_ran()

    # the runs list refreshes itself: a run submitted now appears without a reload
    browser.get(f"{web.url}/runs")
    wait.until(ec.presence_of_element_located((By.LINK_TEXT, hostile)))
    browser.execute_script("document.body.dataset.marker = 'same page'")
    with Client(migrated_url) as client:
        newest = client.submit("content.thumbnail.v1", {"late": True}).execute()
    WebDriverWait(browser, 15).until(ec.presence_of_element_located((By.LINK_TEXT, newest)))
    assert browser.execute_script("return document.body.dataset.marker") == "same page"
    assert {"overview.png", "run-failed.png", "run-hostile.png", "runs.png", "schedules.png"} <= {
        p.name for p in shots.iterdir() if p.stat().st_size > 1000
    }
    if os.environ.get("SIMPLEFLOW_SCREENSHOTS"):
        shutil.copy(shots / "overview.png", shots / "dashboard.png")
