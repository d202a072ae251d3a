"""examples/fastapi_app.py served by uvicorn and called over real HTTP, on both databases.

The service runs in its own process (``uvicorn fastapi_app:app``); the test calls it
with httpx, then works the submitted runs off with the example's own ``worker()``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from simpleflow import Client

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def service_url(db_url: str) -> str:
    """``db_url``, and on PostgreSQL the application's own table in the test's schema too
    (its connections' search_path), so the fixture's DROP SCHEMA removes it."""
    if db_url.startswith("sqlite"):
        return db_url
    schema = db_url.split("schema=", 1)[1]
    return f"{db_url}&options=-csearch_path%3D{schema}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def service(db_url: str) -> Iterator[str]:
    """The example under uvicorn; yields its base URL."""
    port = free_port()
    env = {**os.environ, "SIMPLEFLOW_DATABASE_URL": service_url(db_url), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "fastapi_app:app",
            "--app-dir",
            str(EXAMPLES),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"uvicorn did not come up (exit {proc.poll()}):\n{proc.communicate()[0]}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def example(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The example module imported in this process (for its ``worker()``), on the same database."""
    monkeypatch.setenv("SIMPLEFLOW_DATABASE_URL", service_url(db_url))
    spec = importlib.util.spec_from_file_location("fastapi_app_under_test", EXAMPLES / "fastapi_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    module.client.close()


def test_order_and_its_run_commit_together_over_http(service: str, example: ModuleType, db_url: str) -> None:
    order = {"order_id": "o_1", "item": "book", "quantity": 2}
    placed = httpx.post(f"{service}/orders", json=order, timeout=30)
    assert placed.status_code == 201, placed.text
    body = placed.json()
    assert body | {"run_id": None} == {
        **order,
        "status": "placed",
        "run_id": None,
        "run_status": "pending",
        "result": None,
    }

    with Client(db_url) as client:
        run = client.get_run(body["run_id"])
        assert (run.type, run.payload) == ("shop.fulfil.v1", {"order_id": "o_1"})

        # The same order again: its row fails on the primary key and takes its new run with it.
        again = httpx.post(f"{service}/orders", json=order, timeout=30)
        assert again.status_code == 409, again.text
        assert "o_1 already exists" in again.json()["detail"]
        assert [r.id for r in client.list_runs(type="shop.fulfil.v1")] == [body["run_id"]]

    with example.worker() as poller:
        assert poller.run_until_idle(timeout=timedelta(seconds=30)) == 1

    shipped = httpx.get(f"{service}/orders/o_1", timeout=30)
    assert shipped.status_code == 200
    assert shipped.json() == {
        **order,
        "status": "shipped",
        "run_id": body["run_id"],
        "run_status": "succeeded",
        "result": {"shipped": "o_1"},
    }


def test_bad_requests_write_nothing(service: str, db_url: str) -> None:
    assert httpx.get(f"{service}/orders/nope", timeout=30).status_code == 404
    bad = httpx.post(f"{service}/orders", json={"order_id": "o_2", "item": "book", "quantity": 0}, timeout=30)
    assert bad.status_code == 422
    with Client(db_url) as client:
        assert client.list_runs() == []
