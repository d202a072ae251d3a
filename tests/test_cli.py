"""The ``simpleflow`` command line, run as a real subprocess against both databases.

Every test checks the exit code, what was printed (table and ``--json``) and the
effect in the database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from poller_helpers import wait_for
from test_admin import age_runs, count, finished_runs

from simpleflow.client import Client
from simpleflow.core.errors import NotFound
from simpleflow.db.migrate import current, head
from simpleflow.db.schema import workflow_event, workflow_run
from simpleflow.worker.poller import Poller

REPO = Path(__file__).resolve().parent.parent


def sf(
    url: str | None, *args: str, cwd: Path | None = None, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m simpleflow ARGS`` with ``SIMPLEFLOW_DATABASE_URL=url``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPLEFLOW_")}
    full_env["PYTHONPATH"] = str(REPO)
    if url is not None:
        full_env["SIMPLEFLOW_DATABASE_URL"] = url
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "simpleflow", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        input=stdin,
        timeout=120,
    )


def sf_many(url: str | None, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Several independent commands at once (each its own process), results in order."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda args: sf(url, *args), commands))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The command failed with ``code`` and exactly one line on stderr (no traceback)."""
    assert result.returncode == code, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


# -- migrate -----------------------------------------------------------------------------


def test_migrate_status_up_down(db_url: str) -> None:
    out = ok(sf(db_url, "migrate", "status"))
    assert "not migrated" in out and head() in out
    assert json.loads(ok(sf(db_url, "migrate", "status", "--json"))) == {
        "current": [],
        "head": head(),
        "up_to_date": False,
    }

    out = ok(sf(db_url, "migrate"))
    assert out == f"database at revision {head()}\n"
    assert current(db_url) == (head(),)
    with Client(db_url) as client:
        assert client.list_runs() == []  # the tables exist
    assert json.loads(ok(sf(db_url, "--json", "migrate", "status")))["up_to_date"] is True
    assert "up to date" in ok(sf(db_url, "migrate", "status"))
    ok(sf(db_url, "migrate", "up"))  # again: nothing to do
    assert current(db_url) == (head(),)

    failed(sf(db_url, "migrate", "down"), 2, "needs a revision")
    assert current(db_url) == (head(),)
    out = ok(sf(db_url, "migrate", "down", "base", "--json"))
    assert json.loads(out) == {"current": [], "head": head()}
    assert current(db_url) == ()


# -- submit and inspect -----------------------------------------------------------------------


def test_submit_get_list_events(client: Client, db_url: str, tmp_path: Path) -> None:
    run_id = ok(
        sf(
            db_url,
            "submit",
            "content.thumbnail.v1",
            '{"content_id": "c_123", "width": 300}',
            "--idempotency",
            "thumb:c_123",
            "--priority",
            "10",
            "--max-attempts",
            "5",
            "--in",
            "5m",
        )
    ).strip()
    info = client.get_run(run_id)
    assert info.payload == {"content_id": "c_123", "width": 300}
    assert (info.status, info.priority, info.max_attempts, info.idempotency_key) == ("pending", 10, 5, "thumb:c_123")
    assert abs((info.run_at - info.created_at).total_seconds() - 300) < 2

    again = json.loads(ok(sf(db_url, "submit", "content.thumbnail.v1", "{}", "--idempotency", "thumb:c_123", "--json")))
    assert again == {"id": run_id}
    assert count(client, workflow_run) == 1

    (tmp_path / "payload.json").write_text('{"from": "file"}')
    from_file = ok(
        sf(db_url, "submit", "report.daily.v1", f"@{tmp_path / 'payload.json'}", "--at", "2030-01-02T03:04:05Z")
    ).strip()
    assert client.get_run(from_file).payload == {"from": "file"}
    assert client.get_run(from_file).run_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    from_stdin = ok(sf(db_url, "submit", "report.daily.v1", "@-", stdin="[1, 2]")).strip()
    assert client.get_run(from_stdin).payload == [1, 2]
    no_payload = ok(sf(db_url, "submit", "report.daily.v1")).strip()
    assert client.get_run(no_payload).payload is None

    out = ok(sf(db_url, "get", run_id))
    assert f"id               {run_id}" in out
    assert "status           pending" in out and "attempt          0/5" in out
    assert '"content_id":"c_123"' in out and '"width":300' in out and "payload " in out
    got = json.loads(ok(sf(db_url, "get", run_id, "--json")))
    assert got == json.loads(info.model_dump_json())

    out = ok(sf(db_url, "list", "--type", "report.daily.v1"))
    lines = out.strip().splitlines()
    assert lines[0].split() == ["ID", "TYPE", "STATUS", "ATTEMPT", "PRIORITY", "RUN_AT", "UPDATED"]
    assert [line.split()[0] for line in lines[1:]] == [no_payload, from_stdin, from_file]  # newest first
    listed = json.loads(ok(sf(db_url, "list", "--status", "pending", "--limit", "2", "--offset", "1", "--json")))
    assert [r["id"] for r in listed] == [from_stdin, from_file]
    assert ok(sf(db_url, "list", "--status", "failed")) == "no runs\n"
    assert json.loads(ok(sf(db_url, "list", "--status", "failed", "--json"))) == []

    out = ok(sf(db_url, "events", run_id))
    assert out.splitlines()[0].split() == ["ID", "TIME", "EVENT", "ATTEMPT", "WORKER", "DETAIL"]
    assert "created" in out.splitlines()[1]
    events = json.loads(ok(sf(db_url, "events", run_id, "--json")))
    assert [e["event_type"] for e in events] == ["created"] and events[0]["run_id"] == run_id


def test_cancel_and_retry_one_run(client: Client, db_url: str) -> None:
    run_id = client.submit("ops.idle.v1", {}).execute()
    assert ok(sf(db_url, "cancel", run_id)) == f"cancelled {run_id}\n"
    assert client.get_run(run_id).status == "cancelled"
    failed(sf(db_url, "cancel", run_id), 1, "already cancelled")
    assert [e.event_type for e in client.get_events(run_id)] == ["created", "cancelled"]

    assert json.loads(ok(sf(db_url, "retry", run_id, "--json"))) == {"requeued": 1, "ids": [run_id]}
    assert client.get_run(run_id).status == "pending"
    failed(sf(db_url, "retry", run_id), 1, "only failed or cancelled runs can be retried")
    assert [e.event_type for e in client.get_events(run_id)] == ["created", "cancelled", "requeued"]


def test_bulk_retry(client: Client, db_url: str) -> None:
    ids = finished_runs(client, db_url, succeeded=1, failed=4, cancelled=2)
    out = ok(sf(db_url, "retry", "--status", "failed", "--type", "ops.bad.v1", "--batch-size", "3"))
    assert out == "requeued 4 run(s)\n"
    assert all(client.get_run(r).status == "pending" for r in ids["failed"])
    assert all(client.get_events(r)[-1].event_type == "requeued" for r in ids["failed"])
    assert all(client.get_run(r).status == "cancelled" for r in ids["cancelled"])

    out = json.loads(ok(sf(db_url, "retry", "--status", "cancelled,failed", "--json")))
    assert out["requeued"] == 2 and sorted(out["ids"]) == sorted(ids["cancelled"])
    assert count(client, workflow_run, status="pending") == 6
    assert client.get_run(ids["succeeded"][0]).status == "succeeded"

    failed(sf(db_url, "retry", "--status", "succeeded"), 2, "'succeeded'", "failed,cancelled")
    failed(sf(db_url, "retry"), 2, "give a RUN_ID")
    failed(sf(db_url, "retry", ids["succeeded"][0], "--status", "failed"), 2, "not both")
    assert client.get_run(ids["succeeded"][0]).status == "succeeded"


# -- stats and prune -------------------------------------------------------------------------


def test_stats(client: Client, db_url: str) -> None:
    finished_runs(client, db_url, succeeded=2, failed=1, cancelled=0)
    client.submit("ops.waiting.v1", {}).execute()
    client.submit("ops.waiting.v1", {}).run_in(timedelta(hours=1)).execute()
    data = json.loads(ok(sf(db_url, "stats", "--json")))
    assert data["queue"] == [{"type": "ops.waiting.v1", "status": "pending", "count": 2}]
    assert data["finished_last_hour"] == 3 and data["failed_last_hour"] == 1 and data["succeeded_last_hour"] == 2
    assert data["oldest_due_age_seconds"] is not None and data["workers"] == []
    out = ok(sf(db_url, "stats"))
    assert "3 finished: 2 succeeded, 1 failed, 0 cancelled" in out
    assert "live workers    0" in out
    assert ["ops.waiting.v1", "pending", "2"] in [line.split() for line in out.splitlines()]
    assert count(client, workflow_run) == 5  # reading changed nothing


def write_app(tmp_path: Path) -> Path:
    (tmp_path / "cliapp.py").write_text(
        textwrap.dedent("""
        import os
        import time
        from simpleflow import Poller, Workflow

        def handle(run):
            time.sleep(0.05)
            return {"done": run.id}

        poller = Poller(os.environ["SIMPLEFLOW_DATABASE_URL"]).handle_func("cli.job.v1", handle)

        def make_workflow():
            return Workflow(os.environ["SIMPLEFLOW_DATABASE_URL"]).handle_func("cli.job.v1", handle).handle_func(
                "cli.other.v1", handle)

        not_a_poller = 42
    """)
    )
    return tmp_path


def start_worker(url: str, cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPLEFLOW_")}
    env.update(
        PYTHONPATH=str(REPO),
        SIMPLEFLOW_DATABASE_URL=url,
        SIMPLEFLOW_POLL_INTERVAL="0.1",
        SIMPLEFLOW_LEASE_SECONDS="3",
        SIMPLEFLOW_LOG_LEVEL="INFO",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "simpleflow", "worker", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_worker(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"worker did not stop on SIGTERM:\n{err}") from None
    return proc.returncode, err


def test_worker_processes_runs_and_exits_cleanly_on_sigterm(client: Client, db_url: str, tmp_path: Path) -> None:
    app_dir = write_app(tmp_path)
    proc = start_worker(db_url, app_dir, "cliapp:poller", "--concurrency", "3", "--worker-id", "cli-w1")
    try:
        wait_for(lambda: client.stats().workers, timeout=30, what="the worker to register")
        assert [(w.worker_id, w.concurrency) for w in client.stats().workers] == [("cli-w1", 3)]
        ids = [ok(sf(db_url, "submit", "cli.job.v1", json.dumps({"i": i}))).strip() for i in range(5)]
        wait_for(lambda: all(client.get_run(r).status == "succeeded" for r in ids), timeout=30, what="runs to succeed")
    finally:
        code, err = stop_worker(proc)
    assert code == 0, err
    assert "worker cli-w1 starting: 3 thread(s), types cli.job.v1" in err
    assert "received SIGTERM: draining" in err and "worker cli-w1 stopped" in err
    assert "Traceback" not in err
    assert client.get_run(ids[0]).result == {"done": ids[0]}
    assert {e.worker_id for e in client.get_events(ids[0]) if e.event_type == "leased"} == {"cli-w1"}
    assert client.stats().workers == []  # unregistered on the way out


def test_worker_factory_with_prefix_flag(client: Client, db_url: str, tmp_path: Path) -> None:
    app_dir = write_app(tmp_path)
    proc = start_worker(db_url, app_dir, "cliapp:make_workflow", "--prefix", "cli.other.%")
    try:
        other = client.submit("cli.other.v1", {}).execute()
        job = client.submit("cli.job.v1", {}).execute()
        assert client.wait(other, timeout=timedelta(seconds=30)).status == "succeeded"
        time.sleep(0.5)
        assert client.get_run(job).status == "pending"  # not matched by --prefix
        assert client.stats().workers[0].prefixes == ["cli.other.%"]
    finally:
        code, err = stop_worker(proc)
    assert code == 0, err


@pytest.mark.parametrize(
    ("app", "fragment"),
    [
        ("cliapp", "must look like 'module:object'"),
        ("no_such_module_xyz:poller", "cannot import module 'no_such_module_xyz'"),
        ("cliapp:missing", "has no attribute 'missing'"),
        ("cliapp:not_a_poller", "it must be a Poller"),
    ],
)
def test_worker_rejects_a_bad_app(client: Client, db_url: str, tmp_path: Path, app: str, fragment: str) -> None:
    app_dir = write_app(tmp_path)
    failed(sf(db_url, "worker", app, cwd=app_dir), 2, fragment)
    assert client.stats().workers == []


def test_prune_in_batches_while_a_worker_runs(client: Client, db_url: str, tmp_path: Path) -> None:
    ids = finished_runs(client, db_url, succeeded=7, failed=2, cancelled=3)
    unfinished = client.submit("ops.idle.v1", {}).execute()
    old = ids["succeeded"] + ids["failed"] + ids["cancelled"] + [unfinished]
    age_runs(client, old, timedelta(days=40))
    proc = start_worker(db_url, write_app(tmp_path), "cliapp:poller")
    try:
        busy = [client.submit("cli.job.v1", {"i": i}).execute() for i in range(20)]
        wait_for(lambda: client.get_run(busy[0]).status == "succeeded", timeout=30, what="the worker to be busy")
        out = json.loads(ok(sf(db_url, "prune", "--older-than", "30d", "--batch-size", "2", "--json")))
        assert out == {"pruned": 10}
        wait_for(
            lambda: all(client.get_run(r).status == "succeeded" for r in busy), timeout=30, what="the worker's runs"
        )
    finally:
        code, err = stop_worker(proc)
    assert code == 0, err
    for run_id in ids["succeeded"] + ids["cancelled"]:
        with pytest.raises(NotFound):
            client.get_run(run_id)
    assert count(client, workflow_event, run_id=ids["succeeded"] + ids["cancelled"]) == 0
    assert all(client.get_run(r).status == "failed" for r in ids["failed"])
    assert client.get_run(unfinished).status == "pending"
    assert all(client.get_run(r).status == "succeeded" for r in busy)  # recent: kept

    out = ok(sf(db_url, "prune", "--older-than", "4w", "--status", "failed"))
    assert out == "pruned 2 run(s) finished more than 4w ago (failed)\n"
    assert count(client, workflow_run) == 21


# -- bad input -----------------------------------------------------------------------------------


def test_bad_input_gives_one_line_and_changes_nothing(client: Client, db_url: str) -> None:
    run_id = client.submit("ops.idle.v1", {}).execute()
    client.cancel(run_id)
    age_runs(client, [run_id], timedelta(days=2))
    unknown = str(uuid.uuid4())

    cases: list[tuple[str | None, list[str], int, tuple[str, ...]]] = [
        (db_url, ["get", unknown], 1, (f"simpleflow get: error: run {unknown} not found",)),
        (db_url, ["events", "not-a-uuid"], 1, ("not found",)),
        (db_url, ["cancel", unknown], 1, ("not found",)),
        (db_url, ["retry", unknown], 1, ("not found",)),
        (
            db_url,
            ["submit", "ops.idle.v1", "{bad json"],
            2,
            (
                "payload is not valid JSON",
                "line 1 column 2",
            ),
        ),
        (db_url, ["submit", "ops.idle.v1", "@/no/such/file.json"], 2, ("cannot read",)),
        (db_url, ["submit", "not a type!", "{}"], 2, ("invalid type",)),
        (db_url, ["submit", "ops.idle.v1", "--in", "5 minutes"], 2, ("is not a duration",)),
        (db_url, ["submit", "ops.idle.v1", "--at", "2030-01-01T00:00:00"], 2, ("has no UTC offset",)),
        (db_url, ["submit", "ops.idle.v1", "--in", "5m", "--at", "2030-01-01T00:00:00Z"], 2, ("not allowed with",)),
        (db_url, ["submit", "ops.idle.v1", "--priority", "high"], 2, ("invalid int value",)),
        (db_url, ["submit", "ops.idle.v1", "--max-attempts", "0"], 2, ("max_attempts must be between",)),
        (
            db_url,
            ["list", "--status", "done"],
            2,
            (
                "simpleflow list: error:",
                "invalid choice: 'done'",
            ),
        ),
        (db_url, ["prune", "--older-than", "30x"], 2, ("'30x' is not a duration",)),
        (db_url, ["prune", "--older-than", "1d", "--status", "succeeded,pending"], 2, ("'pending'",)),
        (db_url, ["prune"], 2, ("--older-than",)),
        (db_url, ["prune", "--older-than", "1d", "--batch-size", "0"], 2, ("batch_size must be between",)),
        (db_url, ["frobnicate"], 2, ("invalid choice: 'frobnicate'",)),
        (None, ["list"], 2, ("no database: pass --database-url URL or set SIMPLEFLOW_DATABASE_URL",)),
        ("mysql://x/y", ["list"], 2, ("unknown scheme 'mysql'",)),
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda case: sf(case[0], *case[1]), cases))
    for (_, args, code, fragments), result in zip(cases, results, strict=True):
        assert result.returncode == code, (args, result.stderr)
        failed(result, code, *fragments)

    assert count(client, workflow_run) == 1
    assert client.get_run(run_id).status == "cancelled"
    assert [e.event_type for e in client.get_events(run_id)] == ["created", "cancelled"]

    debug = sf(db_url, "get", unknown, "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "NotFound" in debug.stderr


def test_database_url_flag_and_unmigrated_hint(db_url: str, tmp_path: Path) -> None:
    out = ok(sf(None, "--database-url", db_url, "migrate"))
    assert "database at revision" in out
    run_id = ok(sf(None, "submit", "ops.flag.v1", "--database-url", db_url)).strip()  # also after the command
    with Client(db_url) as client:
        assert client.get_run(run_id).type == "ops.flag.v1"
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    failed(sf(fresh, "list"), 1, "run 'simpleflow migrate'")


def test_every_command_has_help_with_an_example() -> None:
    commands = [
        ["migrate"],
        ["worker"],
        ["submit"],
        ["get"],
        ["events"],
        ["steps"],
        ["list"],
        ["cancel"],
        ["retry"],
        ["signal"],
        ["schedules"],
        ["schedules", "list"],
        ["schedules", "create"],
        ["schedules", "pause"],
        ["schedules", "resume"],
        ["schedules", "delete"],
        ["stats"],
        ["prune"],
    ]
    top = ok(sf(None, "--help"))
    assert "example:" in top and "exit codes: 0 ok, 1" in top
    for command, result in zip(commands, sf_many(None, *[[*c, "--help"] for c in commands]), strict=True):
        out = ok(result)
        assert out.startswith(f"usage: simpleflow {' '.join(command)}"), out
        assert f"simpleflow {' '.join(command)}" in out.split("example:")[1], out


# -- schedules, steps and signals (the schedules and workflows modules) ------------------------------


def test_schedules_commands(client: Client, db_url: str) -> None:
    schedule_id = ok(
        sf(
            db_url,
            "schedules",
            "create",
            "report.daily.v1",
            "0 9 * * 1",
            '{"kind": "sales"}',
            "--tz",
            "America/New_York",
            "--priority",
            "50",
            "--max-attempts",
            "2",
        )
    ).strip()
    s = client.get_schedule(schedule_id)
    assert (s.type, s.cron_expr, s.timezone, s.priority, s.max_attempts, s.payload, s.enabled) == (
        "report.daily.v1",
        "0 9 * * 1",
        "America/New_York",
        50,
        2,
        {"kind": "sales"},
        True,
    )

    out = ok(sf(db_url, "schedules", "list"))
    assert out.splitlines()[0].split()[:5] == ["ID", "TYPE", "CRON", "TIMEZONE", "ENABLED"]
    assert schedule_id in out and "0 9 * * 1" in out
    assert [x["id"] for x in json.loads(ok(sf(db_url, "schedules", "list", "--json")))] == [schedule_id]

    assert ok(sf(db_url, "schedules", "pause", schedule_id)) == f"paused {schedule_id}\n"
    assert client.get_schedule(schedule_id).enabled is False
    assert "paused" in ok(sf(db_url, "schedules", "list"))
    assert ok(sf(db_url, "schedules", "resume", schedule_id)) == f"resumed {schedule_id}\n"
    assert client.get_schedule(schedule_id).enabled is True

    failed(sf(db_url, "schedules", "create", "report.daily.v1", "61 * * * *"), 2)
    failed(sf(db_url, "schedules", "pause", str(uuid.uuid4())), 1, "not found")
    assert len(client.list_schedules()) == 1

    assert json.loads(ok(sf(db_url, "schedules", "delete", schedule_id, "--json"))) == {
        "id": schedule_id,
        "action": "deleted",
    }
    assert client.list_schedules() == []
    assert ok(sf(db_url, "schedules", "list")) == "no schedules\n"


def approval(ctx: Any, order: Any) -> dict[str, Any]:
    charged = ctx.step("charge/v1", lambda: {"charged": order["amount"]})
    ok_ = ctx.wait_for_signal("approved/v1", timeout=timedelta(hours=1))
    return {"charged": charged, "approval": ok_}


def test_steps_and_signal(client: Client, db_url: str) -> None:
    run_id = client.submit("cli.order.v1", {"amount": 7}).execute()
    with Poller(db_url) as poller:
        poller.handle_workflow("cli.order.v1", approval).run_until_idle(timeout=timedelta(seconds=30))
    assert client.get_run(run_id).status == "waiting"

    out = ok(sf(db_url, "steps", run_id))
    assert out.splitlines()[0].split() == ["SEQ", "NAME", "KIND", "STATUS", "ATTEMPTS", "RESULT", "UPDATED"]
    assert "charge/v1" in out and '{"charged":7}' in out
    steps = json.loads(ok(sf(db_url, "steps", run_id, "--json")))
    assert steps[0]["name"] == "charge/v1" and steps[0]["result"] == {"charged": 7}
    failed(sf(db_url, "steps", str(uuid.uuid4())), 1, "not found")

    failed(sf(db_url, "signal", run_id, "approved/v1", "{nope"), 2, "signal payload is not valid JSON")
    assert ok(sf(db_url, "signal", run_id, "approved/v1", '{"by": "ana"}')) == f"sent approved/v1 to {run_id}\n"
    with Poller(db_url) as poller:
        poller.handle_workflow("cli.order.v1", approval).run_until_idle(timeout=timedelta(seconds=30))
    info = client.get_run(run_id)
    assert info.status == "succeeded"
    assert info.result == {"charged": {"charged": 7}, "approval": {"by": "ana"}}

    done = client.submit("ops.idle.v1", {}).execute()
    client.cancel(done)
    failed(sf(db_url, "signal", done, "approved/v1", "{}"), 1)


def test_stats_table_shows_live_worker(client: Client, db_url: str, tmp_path: Path) -> None:
    proc = start_worker(db_url, write_app(tmp_path), "cliapp:poller", "--worker-id", "stats-cli")
    try:
        wait_for(lambda: client.stats().workers, timeout=30, what="the worker to register")
        out = ok(sf(db_url, "stats"))
        data = json.loads(ok(sf(db_url, "stats", "--json")))
    finally:
        code, _ = stop_worker(proc)
    assert code == 0
    assert "live workers    1" in out
    assert any(line.startswith("stats-cli ") and "cli.job.v1" in line for line in out.splitlines())
    assert [w["worker_id"] for w in data["workers"]] == ["stats-cli"]


def test_table_output_has_no_time_zone_surprises(client: Client, db_url: str) -> None:
    when = "2031-05-06T07:08:09+02:00"
    run_id = ok(sf(db_url, "submit", "ops.tz.v1", "--at", when)).strip()
    assert "run_at           2031-05-06 05:08:09Z" in ok(sf(db_url, "get", run_id))
    assert client.get_run(run_id).run_at == datetime(2031, 5, 6, 5, 8, 9, tzinfo=timezone.utc)
