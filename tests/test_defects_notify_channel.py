"""The NOTIFY channel fits PostgreSQL's 63-byte identifier limit for every valid schema name.

A schema of 53-63 characters used to be accepted, then every submit failed with
"channel name too long" (``simpleflow_`` + the schema is over 63 bytes), issue 11.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from poller_helpers import started, wait_for

from simpleflow import Client, Poller
from simpleflow.db.notify import notify_channel

REPO = Path(__file__).resolve().parent.parent


def test_short_schemas_keep_the_readable_channel() -> None:
    assert notify_channel("workflow") == "simpleflow_workflow"
    assert notify_channel("x" * 52) == "simpleflow_" + "x" * 52  # exactly 63 bytes
    assert notify_channel(None) == "simpleflow"


def test_every_valid_schema_name_gets_a_channel_that_fits_and_is_its_own() -> None:
    schemas = {s for n in range(1, 64) for s in ("s" * n, "s" * (n - 1) + "t", "S" * n, "_" + "9" * (n - 1))}
    channels = {notify_channel(s) for s in schemas}
    assert len(channels) == len(schemas)  # no two schemas share a channel
    for schema in schemas:
        channel = notify_channel(schema)
        assert len(channel.encode("utf-8")) <= 63, schema
        assert channel.startswith("simpleflow_") and channel == notify_channel(schema)  # stable


@pytest.fixture
def long_schema(postgres_url: str) -> Iterator[str]:
    name = "l" * 30 + "_" + os.urandom(16).hex()  # 63 characters, the longest valid name
    assert len(name) == 63
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_a_63_character_schema_works_end_to_end_with_listen(postgres_url: str, long_schema: str) -> None:
    url = f"{postgres_url}?schema={long_schema}"
    with Client(url) as client:
        client.auto_migrate()
        first = client.submit("long.schema.v1", {"n": 1}).execute()  # raised "channel name too long"
        # A 30 s poll interval: only the LISTEN wake-up can make the second run start quickly.
        poller = Poller(url).with_poll_interval(timedelta(seconds=30)).handle_func("long.schema.v1", lambda run: "ok")
        with started(poller):
            wait_for(lambda: client.get_run(first).status == "succeeded", timeout=10, what="the first run")
            assert poller._listener is not None
            wait_for(poller._listener.connected.is_set, timeout=10, what="the LISTEN connection")
            time.sleep(0.3)  # the poller is idle now, waiting on its 30 s poll
            # Submitted by another process: no in-process wake-up, only NOTIFY can wake it.
            code = (
                "import sys; from simpleflow import Client\n"
                "with Client(sys.argv[1]) as c: print(c.submit('long.schema.v1', {'n': 2}).execute())"
            )
            began = time.monotonic()
            second = subprocess.run(
                [sys.executable, "-c", code, url],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            ).stdout.strip()
            wait_for(lambda: client.get_run(second).status == "succeeded", timeout=10, what="the second run")
            assert time.monotonic() - began < 8  # far below the 30 s poll: NOTIFY reached LISTEN
