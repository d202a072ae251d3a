"""A closed pipe ends any command quietly (issue 11): ``simpleflow stats | head -4`` used
to fail about half the time with ``BrokenPipeError``.

The convention chosen: exit code 141 (128 + SIGPIPE, what a shell reports for ``yes | head``),
nothing on stderr. Tested with real subprocess pipes whose reader goes away early.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from simpleflow.client import Client

REPO = Path(__file__).resolve().parent.parent
CLOSED_PIPE_EXIT = 141


def _env(url: str, unbuffered: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPLEFLOW_") and k != "PYTHONUNBUFFERED"}
    env.update(PYTHONPATH=str(REPO), SIMPLEFLOW_DATABASE_URL=url)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def _read_then_close(url: str, args: list[str], lines: int, unbuffered: bool) -> tuple[int, str, list[bytes]]:
    """Run ``simpleflow ARGS``, read ``lines`` lines of its output, close the pipe, wait."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "simpleflow", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(url, unbuffered),
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    got = [proc.stdout.readline() for _ in range(lines)]
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=120), err, got


@pytest.fixture
def many_runs(client: Client, migrated_url: str) -> str:
    """Far more output than a pipe buffers (64 KiB): the writer is still writing when the reader leaves."""
    client.submit_many([(f"pipe.test.type.with.a.long.name.v{i % 7}", {"i": i}) for i in range(1500)])
    return migrated_url


@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
def test_a_reader_that_leaves_early_ends_the_command_quietly(many_runs: str, unbuffered: bool) -> None:
    for _ in range(3):
        code, err, got = _read_then_close(many_runs, ["list", "--limit", "1500"], 4, unbuffered)
        assert all(got), "the command printed nothing"
        assert err == "", f"stderr: {err!r}"
        # Unbuffered, the table goes out in one write() that the kernel cuts short when the
        # reader leaves (a partial write, no EPIPE): Python ends normally then, with 0.
        assert code in ((0, CLOSED_PIPE_EXIT) if unbuffered else (CLOSED_PIPE_EXIT,))


@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
def test_stats_piped_to_head_never_prints_an_error(client: Client, migrated_url: str, unbuffered: bool) -> None:
    client.submit_many([(f"pipe.stats.v{i}", {}) for i in range(12)])  # a dozen queue lines
    for _ in range(8):  # it failed about half the time: eight tries
        result = subprocess.run(
            ["bash", "-c", f'"{sys.executable}" -m simpleflow stats | head -4; echo "exit=${{PIPESTATUS[0]}}" >&2'],
            capture_output=True,
            text=True,
            env=_env(migrated_url, unbuffered),
            cwd=REPO,
            timeout=120,
        )
        assert len(result.stdout.splitlines()) == 4
        assert result.stderr.strip() in ("exit=0", f"exit={CLOSED_PIPE_EXIT}"), result.stderr
