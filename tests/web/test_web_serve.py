"""``simpleflow serve`` as a real subprocess: it refuses to start without a key,
serves the API with one, and stops cleanly (exit 0) on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from web_helpers import API_KEY, READ_KEY, require

REPO = Path(__file__).resolve().parents[2]


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPLEFLOW_")}
    env.update(PYTHONPATH=str(REPO), SIMPLEFLOW_DATABASE_URL=url, **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_cmd(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simpleflow", "serve", *args],
        env=_env(url, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args, env, message",
    [
        ((), {}, "no API key: pass --api-key KEY or set SIMPLEFLOW_API_KEY"),
        (("--no-auth", "--addr", "0.0.0.0:8080"), {}, "--no-auth serves only a loopback address"),
        (("--no-auth",), {"SIMPLEFLOW_API_KEY": API_KEY}, "exclude each other"),
        (("--api-key", "short"), {}, "at least 16 characters"),
        (("--addr", "nowhere"), {"SIMPLEFLOW_API_KEY": API_KEY}, "is not HOST:PORT"),
    ],
)
def test_serve_refuses_to_start(tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str) -> None:
    require("fastapi", "the web extra")
    result = serve_cmd(f"sqlite:///{tmp_path}/x.db", *args, **env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.startswith("simpleflow serve: error:")
    assert "Traceback" not in result.stderr


def _start(url: str, port: int, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simpleflow", "serve", "--addr", f"127.0.0.1:{port}", *args],
        env=_env(url, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_healthy(httpx: object, url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:  # type: ignore[attr-defined]
                return
        except httpx.TransportError:  # type: ignore[attr-defined]
            time.sleep(0.1)
    raise AssertionError("simpleflow serve did not answer within 30 s")


def test_serve_with_keys_and_sigterm(migrated_url: str) -> None:
    httpx = require("httpx", "talks HTTP to the server")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start(
        migrated_url, port, "--read-key", READ_KEY, SIMPLEFLOW_API_KEY=f"other-key-0123456789abc,{API_KEY}"
    )
    try:
        _wait_healthy(httpx, base, process)
        assert httpx.get(f"{base}/api/v1/runs").status_code == 401
        created = httpx.post(f"{base}/api/v1/runs", json={"type": "served.v1"}, headers={"X-API-Key": API_KEY})
        assert created.status_code == 201
        listed = httpx.get(f"{base}/api/v1/runs", headers={"Authorization": f"Bearer {READ_KEY}"})
        assert [r["id"] for r in listed.json()] == [created.json()["id"]]
        assert (
            httpx.post(f"{base}/api/v1/runs", json={"type": "served.v1"}, headers={"X-API-Key": READ_KEY}).status_code
            == 403
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Shutting down" in stderr and stderr.rstrip().endswith("simpleflow serve: stopped")
    assert "Traceback" not in stderr


def test_serve_no_auth_on_loopback(migrated_url: str) -> None:
    httpx = require("httpx", "talks HTTP to the server")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start(migrated_url, port, "--no-auth")
    try:
        _wait_healthy(httpx, base, process)
        assert httpx.post(f"{base}/api/v1/runs", json={"type": "open.v1"}).status_code == 201
        login = httpx.get(f"{base}/login")  # no form: a session at once
        assert login.status_code == 303 and "simpleflow_session" in login.headers["set-cookie"]
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0 and "NO AUTHENTICATION" in stderr


def test_the_core_package_never_imports_the_web_extra() -> None:
    code = (
        "import sys, simpleflow, simpleflow.cli.main, simpleflow.cli.commands; "
        "simpleflow.cli.main.build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'jinja2', 'starlette') "
        "or m.startswith('simpleflow.web')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=_env("sqlite://"), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
