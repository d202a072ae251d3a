"""Fixtures of the web tests: the app served over real HTTP by uvicorn on 127.0.0.1.

``serve(app)`` starts uvicorn in a thread on a free port and returns a ``LiveServer``
(``.url``, ``.http`` an httpx client on it); every server stops after its test.
``web_app`` serves ``create_app(migrated_url)`` with one API key (``API_KEY``) and
one read key (``READ_KEY``), on both databases through ``migrated_url``.
Every test here is marked ``web``. Without the web extra they skip locally and
fail under ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from web_helpers import API_KEY, READ_KEY, LiveServer, Served, require


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/web/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.web)


@pytest.fixture
def serve() -> Iterator[Callable[[Any], LiveServer]]:
    """``serve(app)`` -> a running ``LiveServer``; stopped after the test."""
    httpx = require("httpx", "the web tests talk HTTP with it")
    require("uvicorn", "the web extra serves the app with it")
    started: list[tuple[Served, Any]] = []

    def start(app: Any) -> LiveServer:
        served = Served(app)
        served.start()
        url = f"http://127.0.0.1:{served.port}"
        http = httpx.Client(base_url=url, timeout=30, follow_redirects=False)
        started.append((served, http))
        return LiveServer(url=url, http=http)

    yield start
    for served, http in reversed(started):
        http.close()
        served.stop()


@pytest.fixture
def web_app(migrated_url: str, serve: Callable[[Any], LiveServer]) -> LiveServer:
    """``create_app(migrated_url, api_keys=[API_KEY], read_keys=[READ_KEY])`` served on a free port."""
    require("fastapi", "the web extra")
    from simpleflow.web import create_app

    return serve(create_app(migrated_url, api_keys=[API_KEY], read_keys=[READ_KEY]))
