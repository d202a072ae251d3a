"""``simpleflow serve``: the HTTP API and dashboard (``simpleflow.web``) under uvicorn.

The web extra is imported only when the command runs, so the rest of the command
line works without it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

from simpleflow.cli.args import UsageError, _sub, database_url

NEW_KEY_HINT = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def add_parser(subs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = _sub(
        subs,
        "serve",
        "serve the HTTP API (/api/v1) and the web dashboard (/) until SIGTERM or Ctrl-C",
        [
            "SIMPLEFLOW_API_KEY=$(cat api.key) simpleflow serve --addr 0.0.0.0:8080",
            "simpleflow serve --no-auth   # local development: loopback only, no keys",
        ],
        common,
    )
    p.add_argument(
        "--addr",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:8080; [::1]:8080 for IPv6)",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="a key that may read and change (repeatable; also $SIMPLEFLOW_API_KEY, comma-separated)",
    )
    p.add_argument(
        "--read-key",
        action="append",
        default=[],
        metavar="KEY",
        help="a key that may only read (repeatable; also $SIMPLEFLOW_READ_KEY, comma-separated)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="no keys at all: everyone may do everything (local development; loopback addresses only)",
    )


def _keys(flags: list[str], variable: str) -> list[str]:
    from_env = [k.strip() for k in os.environ.get(variable, "").split(",") if k.strip()]
    return [k.strip() for k in flags if k.strip()] + from_env


def parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--addr {text!r} is not HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace, out: object) -> int:
    url = database_url(args)
    host, port = parse_addr(args.addr)
    api_keys = _keys(args.api_key, "SIMPLEFLOW_API_KEY")
    read_keys = _keys(args.read_key, "SIMPLEFLOW_READ_KEY")
    if args.no_auth:
        if api_keys or read_keys:
            raise UsageError("--no-auth and API keys exclude each other; drop one (check SIMPLEFLOW_API_KEY too)")
        if not is_loopback(host):
            raise UsageError(
                f"--no-auth serves only a loopback address (127.0.0.1, ::1), not {host!r}; "
                "set an API key to listen elsewhere"
            )
    elif not api_keys and not read_keys:
        raise UsageError(
            "no API key: pass --api-key KEY or set SIMPLEFLOW_API_KEY=KEY1,KEY2 (read-only keys: "
            f"--read-key / SIMPLEFLOW_READ_KEY); {NEW_KEY_HINT}. Only for local development: --no-auth"
        )
    try:
        import uvicorn

        from simpleflow.web import create_app
    except ImportError as error:
        raise UsageError(
            f"the web extra is not installed ({error.name} is missing): pip install 'simpleflow-db[web]'"
        ) from None

    app = create_app(url, api_keys=api_keys, read_keys=read_keys, no_auth=args.no_auth)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UsageError(f"cannot listen on {args.addr}: {error.strerror or error}") from None
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(
        f"simpleflow serve: dashboard http://{shown}:{port}/ , API http://{shown}:{port}/api/v1"
        + (" (NO AUTHENTICATION: local development only)" if args.no_auth else ""),
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(app, log_level="info", proxy_headers=True, server_header=False)
    _graceful_server()(config).run(sockets=[sock])
    print("simpleflow serve: stopped", file=sys.stderr, flush=True)
    return 0


def _graceful_server() -> type[Any]:
    """uvicorn's Server, stopping gracefully on SIGTERM/SIGINT (open requests finish, the app
    shuts down) and then returning, so the command exits 0 instead of re-raising the signal."""

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            def stop(signum: int, frame: object) -> None:
                if self.should_exit:  # a second signal: stop waiting for open connections
                    self.force_exit = True
                self.should_exit = True

            previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    return Server
