"""Helpers of the web tests: keys, the skip-or-fail rule and a uvicorn server in a thread.

``serve(app)`` starts uvicorn in a thread on a free port and returns a ``LiveServer``
(``.url``, ``.http`` an httpx client on it); every server stops after its test.
``web_app`` serves ``create_app(migrated_url)`` with one API key (``API_KEY``) and
one read key (``READ_KEY``), on both databases through ``migrated_url``.

The web extra (fastapi, uvicorn, jinja2, httpx) must be installed: missing, these
tests skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

API_KEY = "test-api-key-0123456789abcdef"
READ_KEY = "test-read-key-0123456789abcdef"


def ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(module: str, why: str) -> Any:
    """Import ``module``; skip the test without it (fail under CI=true)."""
    try:
        return __import__(module)
    except ImportError:
        message = f"{module} is not installed ({why}); pip install -e '.[dev]'"
        if ci():
            pytest.fail(message + " (required because CI=true)", pytrace=False)
        pytest.skip("SKIPPING WEB TESTS: " + message)


@dataclass
class LiveServer:
    url: str
    http: Any  # httpx.Client with base_url=url


class Served:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("uvicorn did not start within 20 s")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


def write_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def read_headers() -> dict[str, str]:
    return {"X-API-Key": READ_KEY}
