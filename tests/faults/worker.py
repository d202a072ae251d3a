"""The processes the fault tests start, kill and restart: ``python worker.py MODE URL [JSON options]``.

Modes:

``jobs``      a Poller for ``fault.job.v1``; every execution logs (run id, pid, attempt) to
              ``fault_exec`` before returning (options: lease, poll, concurrency, sleep,
              ticker, tick, renew).
``flows``     a Poller for the ``fault.flow.v1`` durable workflow (steps, a transactional
              step, a sleep, a signal).
``trees``     a Poller for workflow trees: ``fault.tree.v1`` starts three ``fault.leaf.v1``
              children and a ``fault.branch.v1`` workflow that starts two more leaves,
              and waits for all of them (every leaf execution logs to ``fault_exec``).
``ticker``    a ScheduleTicker whose clock runs ``speed`` times faster than real time from
              ``start`` (ISO) at ``t0`` (epoch seconds), plus ``skew`` seconds.
``submit``    submit ``keys`` with idempotency keys in random order (singly and in batches),
              then write {key: run id} to ``out``.
``mixed``     SQLite, several processes: submit ``count`` runs while a Poller in this process
              works on the shared file, until ``total`` runs have succeeded; write what
              escaped to ``out``.

``FAULT_CLOCK_SKEW`` (seconds) shifts this process's wall clock (``time.time``,
``time.time_ns`` and the ``datetime.now`` that ``ctx.now`` reads) before simpleflow is
imported: a worker whose clock is wrong.
"""

from __future__ import annotations

import json
import os
import sys
import time

SKEW = float(os.environ.get("FAULT_CLOCK_SKEW", "0") or 0)
if SKEW:
    _real_time, _real_time_ns = time.time, time.time_ns
    time.time = lambda: _real_time() + SKEW  # type: ignore[assignment]
    time.time_ns = lambda: _real_time_ns() + int(SKEW * 1e9)  # type: ignore[assignment]

import logging  # noqa: E402
import random  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from datetime import datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import sqlalchemy as sa  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for `faults.tables`

from faults.tables import fault_business, fault_exec, insert_retrying  # noqa: E402
from simpleflow import Client, Poller, RetryPolicy, ScheduleTicker, WorkflowContext, WorkflowRun  # noqa: E402
from simpleflow.db.database import Database  # noqa: E402
from simpleflow.db.dialect_sql import db_now  # noqa: E402
from simpleflow.db.schema import workflow_run  # noqa: E402

JOB = "fault.job.v1"
FLOW = "fault.flow.v1"
FAST_RETRY = RetryPolicy(
    initial_delay=timedelta(milliseconds=20), multiplier=2.0, max_delay=timedelta(milliseconds=200), jitter=0.0
)


def _skew_datetime() -> None:
    """``ctx.now`` is simpleflow's only wall-clock read: skew it as well."""
    import simpleflow.workflow.context as context

    class SkewedDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + timedelta(seconds=SKEW)

    context.datetime = SkewedDatetime  # type: ignore[misc]


def lease_left(db: Database, run_id: str) -> float | None:
    """Seconds between this run's lease_until and the database clock, read now."""
    try:
        with db.engine.connect() as conn:
            row = conn.execute(
                sa.select(workflow_run.c.lease_until, db_now()).where(workflow_run.c.id == run_id),
                execution_options=db.exec_options,
            ).first()
    except sa.exc.DBAPIError:
        return None
    if row is None or row[0] is None:
        return None
    return float((row[0] - row[1]).total_seconds())


def make_poller(url: str, opts: dict[str, Any]) -> Poller:
    poller = (
        Poller(url)
        .with_worker_id(f"fault-{os.getpid()}")
        .with_lease_duration(timedelta(seconds=opts.get("lease", 2.0)))
        .with_poll_interval(timedelta(seconds=opts.get("poll", 0.1)))
        .with_concurrency(opts.get("concurrency", 4))
        .with_retry_policy(FAST_RETRY)
    )
    if opts.get("ticker"):
        poller.with_schedule_ticker().with_schedule_tick_interval(timedelta(seconds=opts.get("tick", 0.2)))
    if opts.get("renew") is False:
        poller.renew_now = lambda: None  # type: ignore[method-assign]
    return poller


def job_handler(poller: Poller, opts: dict[str, Any]) -> Any:
    sleep = float(opts.get("sleep", 0.0))
    check_lease = bool(opts.get("check_lease"))

    def handler(run: WorkflowRun) -> dict[str, Any]:
        left = lease_left(poller.db, run.id) if check_lease else None
        insert_retrying(
            poller.db,
            fault_exec,
            {
                "run_id": run.id,
                "pid": os.getpid(),
                "attempt": run.attempt,
                "worker_time": time.time(),
                "lease_left": left,
            },
        )
        if sleep:
            time.sleep(random.uniform(0.5, 1.5) * sleep)
        return {"pid": os.getpid(), "attempt": run.attempt}

    return handler


# -- the durable workflow ----------------------------------------------------------------


def flow_handlers(db: Database) -> Any:
    def work(run_id: str, name: str) -> str:
        insert_retrying(db, fault_exec, {"run_id": run_id, "name": name, "pid": os.getpid(), "attempt": 0})
        time.sleep(random.uniform(0, 0.02))
        return f"{name}-done"

    def reserve(conn: sa.Connection, run_id: str) -> int:
        conn.execute(fault_business.insert().values(run_id=run_id, pid=os.getpid()), execution_options=db.exec_options)
        time.sleep(random.uniform(0, 0.02))  # die here sometimes: neither the write nor the record
        return os.getpid()

    def flow(ctx: WorkflowContext, job: dict[str, Any]) -> dict[str, Any]:
        a = ctx.step("a/v1", work, ctx.run_id, "a/v1")
        pid = ctx.step("reserve/v1", reserve, ctx.run_id, transactional=True)
        ctx.sleep("nap/v1", timedelta(milliseconds=job.get("nap_ms", 200)))
        approval = ctx.wait_for_signal("go/v1", timeout=timedelta(minutes=5))
        c = ctx.step("c/v1", work, ctx.run_id, "c/v1")
        return {"a": a, "reserved_by": pid, "approval": approval, "c": c}

    return flow


# -- workflow trees -----------------------------------------------------------------------

TREE, BRANCH, LEAF = "fault.tree.v1", "fault.branch.v1", "fault.leaf.v1"


def tree_handlers(db: Database) -> tuple[Any, Any, Any]:
    def leaf(run: WorkflowRun) -> dict[str, Any]:
        insert_retrying(db, fault_exec, {"run_id": run.id, "name": "leaf", "pid": os.getpid(), "attempt": run.attempt})
        time.sleep(random.uniform(0, 0.05))
        return {"leaf": run.payload_as(dict)["i"]}

    def branch(ctx: WorkflowContext, _: Any) -> dict[str, Any]:
        ids = [ctx.start_child(f"leaf/{i}", LEAF, {"i": 10 + i}, max_attempts=50) for i in range(2)]
        return {"leaves": ctx.wait_children("leaves", ids)}

    def tree(ctx: WorkflowContext, _: Any) -> dict[str, Any]:
        leaves = [ctx.start_child(f"leaf/{i}", LEAF, {"i": i}, max_attempts=50) for i in range(3)]
        sub = ctx.start_child("branch", BRANCH, None, max_attempts=50)
        got = ctx.wait_children("leaves", leaves)
        return {"leaves": got, "branch": ctx.wait_child("branch/wait", sub)}

    return leaf, branch, tree


# -- modes --------------------------------------------------------------------------------


def run_jobs(url: str, opts: dict[str, Any]) -> None:
    poller = make_poller(url, opts)
    poller.handle_func(JOB, job_handler(poller, opts))
    poller.start()


def run_flows(url: str, opts: dict[str, Any]) -> None:
    poller = make_poller(url, opts)
    poller.handle_workflow(FLOW, flow_handlers(poller.db))
    poller.start()


def run_trees(url: str, opts: dict[str, Any]) -> None:
    poller = make_poller(url, opts)
    leaf, branch, tree = tree_handlers(poller.db)
    poller.handle_func(LEAF, leaf).handle_workflow(BRANCH, branch).handle_workflow(TREE, tree)
    poller.start()


def run_ticker(url: str, opts: dict[str, Any]) -> None:
    start = datetime.fromisoformat(opts["start"])
    t0, speed, skew = float(opts["t0"]), float(opts["speed"]), float(opts.get("skew", 0.0))

    def clock() -> datetime:
        return start + timedelta(seconds=(time.time() - t0) * speed + skew)

    ticker = ScheduleTicker(url, tick_interval=timedelta(seconds=opts.get("tick", 0.05)), clock=clock)
    ticker.start()


def run_submit(url: str, opts: dict[str, Any]) -> None:
    got: dict[str, str] = {}

    def keep(key: str, run_id: str) -> None:
        assert got.setdefault(key, run_id) == run_id, f"key {key}: {run_id} now, {got[key]} before"

    with Client(url) as client:
        for _ in range(int(opts.get("passes", 2))):
            keys: list[str] = list(opts["keys"])
            random.shuffle(keys)
            i = 0
            while i < len(keys):
                if random.random() < 0.5:
                    key = keys[i]
                    keep(key, client.submit(JOB, {"key": key}).with_idempotency(key).with_max_attempts(50).execute())
                    i += 1
                else:
                    batch = keys[i : i + random.randint(2, 20)]
                    builders = [client.submit(JOB, {"key": k}).with_idempotency(k).with_max_attempts(50) for k in batch]
                    for key, run_id in zip(batch, client.submit_many(builders), strict=True):
                        keep(key, run_id)
                    i += len(batch)
    Path(opts["out"], f"{os.getpid()}.json").write_text(json.dumps(got))


def count_succeeded(client: Client) -> int:
    stmt = sa.select(sa.func.count()).select_from(workflow_run).where(workflow_run.c.status == "succeeded")
    with client.db.engine.connect() as conn:
        return int(conn.execute(stmt, execution_options=client.db.exec_options).scalar_one())


def run_mixed(url: str, opts: dict[str, Any]) -> None:
    """Submit and work at once on one SQLite file; record every exception a public API raised."""
    escaped: list[str] = []
    submitted: list[str] = []
    client = Client(url)
    poller = make_poller(url, opts)
    poller.handle_func(JOB, job_handler(poller, opts))
    thread = threading.Thread(target=poller.start, daemon=True)
    thread.start()
    try:
        count, tag = int(opts["count"]), opts["tag"]
        n = 0
        while n < count:
            try:
                if random.random() < 0.5:
                    submitted.append(client.submit(JOB, {"tag": tag, "n": n}).with_idempotency(f"{tag}-{n}").execute())
                    n += 1
                else:
                    k = min(count - n, random.randint(2, 25))
                    batch = [
                        client.submit(JOB, {"tag": tag, "n": n + j}).with_idempotency(f"{tag}-{n + j}")
                        for j in range(k)
                    ]
                    submitted.extend(client.submit_many(batch))
                    n += k
            except Exception as error:  # must never happen: the test fails on any entry here
                escaped.append(f"submit: {type(error).__name__}: {error}")
                n += 1
            if random.random() < 0.2:
                try:
                    client.list_runs(status="pending", limit=5)
                    client.get_run(submitted[-1]) if submitted else None
                except Exception as error:
                    escaped.append(f"read: {type(error).__name__}: {error}")
        deadline = time.monotonic() + float(opts.get("deadline", 120))
        while time.monotonic() < deadline:
            try:
                if count_succeeded(client) >= opts["total"]:
                    break
            except Exception as error:
                escaped.append(f"wait: {type(error).__name__}: {error}")
            time.sleep(0.2)
    finally:
        poller.stop(timedelta(seconds=10))
        thread.join(30)
        client.close()
        Path(opts["out"]).write_text(json.dumps({"escaped": escaped, "submitted": submitted}))


MODES = {
    "jobs": run_jobs,
    "flows": run_flows,
    "trees": run_trees,
    "ticker": run_ticker,
    "submit": run_submit,
    "mixed": run_mixed,
}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [{os.getpid()}] %(name)s %(levelname)s %(message)s")
    mode, url = sys.argv[1], sys.argv[2]
    opts = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    if SKEW:
        _skew_datetime()
    try:
        MODES[mode](url, opts)
    except Exception:
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
