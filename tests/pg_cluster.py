"""Throwaway PostgreSQL clusters for the tests that restart the server, and for the bench.

    cluster = start_postgres(tmp_path)
    url = cluster.create_database("t1")  # postgresql://postgres@127.0.0.1:PORT/t1
    cluster.restart("immediate")  # crash + recovery; same port, same data
    cluster.destroy()  # stop and delete it

Everything else uses a server you point ``SIMPLEFLOW_TEST_POSTGRES_URL`` at (``.ci/run``
starts one); tests/conftest.py falls back to a cluster from here when it is not set.

``initdb`` refuses to run as root. As root the cluster is made with Debian's
postgresql-common (``pg_createcluster``/``pg_ctlcluster``/``pg_dropcluster``), which run the
server as the ``postgres`` user; as any other user with the server binaries' ``initdb`` and
``pg_ctl`` in *base_dir*. Tuned for speed, not durability: ``fsync=off`` survives a server
crash (``restart("immediate")``), not an OS crash. The cluster is destroyed at interpreter
exit if the caller did not; one whose owner was SIGKILLed is dropped by the next start_postgres.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql

__all__ = ["CLUSTER_PREFIX", "PgCluster", "PgClusterError", "find_bin_dir", "start_postgres"]

StopMode = Literal["smart", "fast", "immediate"]
HOST = "127.0.0.1"
CLUSTER_PREFIX = "sftest-"  # Debian cluster names: sftest-<owner pid>-<hex>
READY_TIMEOUT = 30.0

SETTINGS = {
    "listen_addresses": "localhost",  # not 127.0.0.1: pg_createcluster -o would not quote it
    "max_connections": "300",  # the suite opens many connections
    "fsync": "off",
    # synchronous_commit stays on: with "off", commits of the last few hundred ms are lost by
    # restart("immediate"), which would make the fault tests flaky; with fsync=off it is free.
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_parallel_workers_per_gather": "0",  # no DSM segments in a small /dev/shm
}


class PgClusterError(RuntimeError):
    """A throwaway cluster could not be created, started or stopped."""


def find_bin_dir() -> Path:
    """The directory holding ``initdb``/``pg_ctl``/``postgres``: ``$SIMPLEFLOW_PG_BINDIR``,
    ``pg_config --bindir`` or the newest ``/usr/lib/postgresql/*/bin``."""
    candidates = [os.environ.get("SIMPLEFLOW_PG_BINDIR", "")]
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(debian, key=lambda p: [int(n) for n in re.findall(r"\d+", p)], reverse=True)
    for c in filter(None, candidates):
        if all(os.access(Path(c, n), os.X_OK) for n in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    raise PgClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: `apt-get install postgresql`, "
        "set SIMPLEFLOW_PG_BINDIR, or point SIMPLEFLOW_TEST_POSTGRES_URL at a server"
    )


def _run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One throwaway cluster: ``url`` (the ``postgres`` database), ``port``, ``bin_dir``."""

    def __init__(self, bin_dir: Path, port: int, *, debian_name: str | None, data_dir: Path, log_file: Path):
        self.bin_dir, self.port, self.data_dir, self.log_file = bin_dir, port, data_dir, log_file
        self.version = bin_dir.parent.name  # /usr/lib/postgresql/<version>/bin
        self.debian_name = debian_name  # None: plain initdb/pg_ctl as the current user
        self._destroyed = False

    @property
    def url(self) -> str:  # the maintenance database
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{dbname}"

    def __repr__(self) -> str:
        return f"PgCluster({self.url!r}, debian_name={self.debian_name!r})"

    def _ctl(self, action: str, mode: StopMode | None = None) -> subprocess.CompletedProcess[str]:
        if self.debian_name:
            argv = ["pg_ctlcluster", "--skip-systemctl-redirect", *(["-m", mode] if mode else [])]
            argv += [self.version, self.debian_name, action]
        else:
            argv = [str(self.bin_dir / "pg_ctl"), action, "-D", str(self.data_dir), "-l", str(self.log_file)]
            argv += ["-w", "-t", str(int(READY_TIMEOUT)), *(["-m", mode] if mode else [])]
        return _run(argv, timeout=READY_TIMEOUT + 60)

    def _fail(self, what: str, proc: subprocess.CompletedProcess[str] | None = None) -> PgClusterError:
        output = (proc.stdout + proc.stderr).strip() if proc else ""
        with contextlib.suppress(OSError):
            output += "\n--- server log ---\n" + "\n".join(self.log_file.read_text().splitlines()[-30:])
        return PgClusterError(f"{self!r}: {what}\n{output}")

    def is_running(self) -> bool:
        return self._ctl("status").returncode == 0  # 3: not running

    def start(self) -> None:
        """Start the server if it is not running and wait until it accepts connections."""
        if self._destroyed:
            raise PgClusterError(f"{self!r} has been destroyed")
        if self.is_running():
            return
        proc = self._ctl("start")
        if proc.returncode != 0:
            raise self._fail(f"start failed (exit {proc.returncode})", proc)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as error:
                if time.monotonic() > deadline:
                    raise self._fail(f"not accepting connections: {error}") from None
                time.sleep(0.1)

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server (``immediate``: no shutdown checkpoint, crash recovery on the next start)."""
        if self.is_running():
            proc = self._ctl("stop", mode)
            if proc.returncode != 0 and self.is_running():
                raise self._fail(f"stop -m {mode} failed", proc)

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop with *mode* and start again: same port, same data."""
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server and delete the cluster; safe to call twice."""
        if self._destroyed:
            return
        self._destroyed = True
        if self.debian_name:
            _run(["pg_dropcluster", "--stop", self.version, self.debian_name])
        else:
            with contextlib.suppress(PgClusterError):
                self.stop("immediate")
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name``; returns its URL."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name WITH (FORCE)`` (ends its connections)."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _drop_leftovers() -> None:
    """Drop the Debian clusters of owners that died without destroying them."""
    for line in _run(["pg_lsclusters", "--no-header"]).stdout.splitlines():
        version, name = line.split()[:2]
        if m := re.fullmatch(re.escape(CLUSTER_PREFIX) + r"(\d+)-\w+", name):
            try:
                os.kill(int(m[1]), 0)
            except ProcessLookupError:
                _run(["pg_dropcluster", "--stop", version, name])


def start_postgres(base_dir: Path, *, settings: dict[str, str] | None = None) -> PgCluster:
    """Create and start a throwaway cluster on a free port on 127.0.0.1, superuser ``postgres``,
    trust authentication. *settings* override ``SETTINGS`` (postgresql.conf values, unquoted)."""
    bin_dir = find_bin_dir()
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    conf = {**SETTINGS, **(settings or {})}
    port = _free_port()
    initdb_opts = ["--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync"]
    if os.geteuid() == 0:
        if not shutil.which("pg_createcluster"):
            raise PgClusterError("running as root needs Debian's postgresql-common (pg_createcluster)")
        _drop_leftovers()
        name, version = f"{CLUSTER_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}", bin_dir.parent.name
        data_dir = Path("/var/lib/postgresql", version, name)
        log_file = Path(f"/var/log/postgresql/postgresql-{version}-{name}.log")
        cluster = PgCluster(bin_dir, port, debian_name=name, data_dir=data_dir, log_file=log_file)
        argv = ["pg_createcluster", "--port", str(port), "--start-conf", "manual", cluster.version, name]
        argv[1:1] = [a for k, v in conf.items() for a in ("-o", f"{k}={v}")]
        proc = _run([*argv, "--", *initdb_opts])
    else:
        data_dir = base_dir / "pgdata"
        cluster = PgCluster(bin_dir, port, debian_name=None, data_dir=data_dir, log_file=base_dir / "postgres.log")
        proc = _run([str(bin_dir / "initdb"), "-D", str(data_dir), *initdb_opts])
        if proc.returncode == 0:
            lines = [f"{k} = '{v}'" for k, v in {**conf, "port": str(port), "unix_socket_directories": ""}.items()]
            with (data_dir / "postgresql.conf").open("a") as f:
                f.write("\n# tests/pg_cluster.py\n" + "\n".join(lines) + "\n")
    if proc.returncode != 0:
        cluster.destroy()
        raise cluster._fail(f"creating the cluster failed (exit {proc.returncode})", proc)
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and cluster.destroy())  # not in forked children
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
