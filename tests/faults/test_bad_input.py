"""Bad input on purpose (both databases): every public entry point given hostile values.

Each rejected call raises a ``SimpleflowError`` subclass with a message, and a full dump
of every simpleflow table (all rows, all columns) is identical before and after. Hostile
strings that are *valid* (SQL in an idempotency key, a worker id, a step or signal name)
are stored verbatim and match only themselves. Property tests fuzz the submit builder
(a state machine: a rejected call leaves the builder as it was) and ``RetryPolicy``
(any constructor arguments: a policy with bounded, storable delays, or a ``ValidationError``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from simpleflow import (
    AlreadyComplete,
    Client,
    InvalidState,
    NotFound,
    Poller,
    RetryPolicy,
    SimpleflowError,
    ValidationError,
    WorkflowContext,
    WorkflowRun,
)
from simpleflow.db.schema import metadata

from .harness import report

pytestmark = pytest.mark.faults

UNKNOWN = "00000000-0000-7000-8000-000000000000"
INJECTIONS = [
    "'; DROP TABLE workflow_run; --",
    "' OR '1'='1",
    '" OR ""="',
    "%",
    "_",
    "%_%",
    "\\",
    "\\%",
    "x'); DELETE FROM workflow_event; --",
    "$1",
    "?",
    ":id",
    "é ünïcødé ✓ 漢字",
]
HUNDRED_YEARS = timedelta(days=365 * 100)


def dump(client: Client) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every simpleflow table, in primary-key order."""

    def read(conn: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
        out = {}
        for table in metadata.sorted_tables:
            stmt = sa.select(table).order_by(*table.primary_key.columns)
            out[table.name] = [tuple(r) for r in conn.execute(stmt, execution_options=client.db.exec_options)]
        return out

    return client.db.run(read)


@pytest.fixture
def seeded(client: Client) -> tuple[Client, str, str]:
    """A database with a pending run, a finished one and a schedule (so 'unchanged' means something)."""
    pending = client.submit("seed.pending.v1", {"n": 1}).with_idempotency("seed-key").execute()
    done = client.submit("seed.done.v1", {"n": 2}).execute()
    client.cancel(done)
    client.schedule("seed.cron.v1", {}).cron("0 9 * * 1").in_timezone("Europe/Paris").create()
    return client, pending, done


def rejections(
    client: Client, pending: str, done: str
) -> dict[str, tuple[type[SimpleflowError], Callable[[], object]]]:
    sub = functools.partial(client.submit, "bad.input.v1")
    deep_list: Any = functools.reduce(lambda inner, _: [inner], range(10_000), [])
    deep_dict: Any = functools.reduce(lambda inner, _: {"k": inner}, range(10_000), {})
    ten_mb = {"blob": "x" * (10 * 1024 * 1024)}
    cases: dict[str, tuple[type[SimpleflowError], Callable[[], object]]] = {}
    v, nf = ValidationError, NotFound
    for i, bad in enumerate([*INJECTIONS, "", " ", "a b", "a\x00b", "a\ud800", "x" * 256, "-a", ".a"]):
        cases[f"type {i} {bad[:20]!r}"] = (v, lambda bad=bad: client.submit(bad, {}).execute())
        cases[f"list_runs type {i}"] = (v, lambda bad=bad: client.list_runs(type=bad))
        cases[f"schedule type {i}"] = (v, lambda bad=bad: client.schedule(bad, {}).cron("* * * * *").create())
        cases[f"list_runs status {i}"] = (v, lambda bad=bad: client.list_runs(status=bad))
        if bad.strip():
            cases[f"cron {i}"] = (v, lambda bad=bad: client.schedule("bad.cron.v1").cron(f"* * * * * {bad}").create())
        cases[f"timezone {i}"] = (
            v,
            lambda bad=bad: client.schedule("bad.tz.v1").cron("* * * * *").in_timezone(bad).create(),
        )
        cases[f"prefix {i}"] = (
            v,
            lambda bad=bad: Poller(client.db.engine, schema=client.db.schema).with_type_prefixes(bad + "%x"),
        )
    for i, bad in enumerate(["", "a\x00b", "k\ud800", "x" * 256, b"key", None, 5]):
        cases[f"key {i}"] = (v, lambda bad=bad: sub({}).with_idempotency(bad).execute())
        if bad is not None:  # None is list_runs' "no filter"
            cases[f"list_runs key {i}"] = (v, lambda bad=bad: client.list_runs(idempotency_key=bad))
    for i, bad in enumerate(["", "w\x00", "w\n", "w\ud800", "x" * 256, None]):
        cases[f"worker id {i}"] = (
            v,
            lambda bad=bad: Poller(client.db.engine, schema=client.db.schema).with_worker_id(bad),
        )
    for i, bad in enumerate(["", "go\x00", "go\ud800", "x" * 256, None, 7]):
        cases[f"signal name {i}"] = (v, lambda bad=bad: client.signal(pending, bad, {}))
    payloads: dict[str, Any] = {
        "object": object(),
        "set": {1, 2},
        "bytes": b"{}",
        "invalid utf-8 bytes": b"\xff\xfe",
        "bytearray": bytearray(b"1"),
        "NaN": float("nan"),
        "Infinity": float("inf"),
        "-Infinity": -math.inf,
        "nested NaN": {"a": [1, {"b": math.nan}]},
        "lone surrogate": "\udcff",
        "surrogate key": {"\ud800": 1},
        "NUL": "a\x00b",
        "tuple key": {(1, 2): 3},
        "deep list (10,000 levels)": deep_list,
        "deep dict (10,000 levels)": deep_dict,
        "10 MB": ten_mb,
        "datetime": datetime.now(timezone.utc),
        "function": print,
    }
    for name, payload in payloads.items():
        cases[f"payload {name}"] = (v, lambda p=payload: sub(p).execute())
        cases[f"submit_many payload {name}"] = (v, lambda p=payload: client.submit_many([("bad.input.v1", p)]))
        cases[f"signal payload {name}"] = (v, lambda p=payload: client.signal(pending, "go", p))
        cases[f"schedule payload {name}"] = (
            v,
            lambda p=payload: client.schedule("bad.s.v1", p).cron("* * * * *").create(),
        )
    naive = datetime(2030, 1, 1, 12, 0)
    cases["naive run_after"] = (v, lambda: sub({}).run_after(naive).execute())
    cases["run_after year 1"] = (v, lambda: sub({}).run_after(datetime(1, 1, 1, tzinfo=timezone.utc)).execute())
    cases["negative run_in"] = (v, lambda: sub({}).run_in(timedelta(seconds=-1)).execute())
    cases["run_in 1000 years"] = (v, lambda: sub({}).run_in(timedelta(days=365_000)).execute())
    cases["run_in text"] = (v, lambda: sub({}).run_in("5s").execute())  # type: ignore[arg-type]
    for i, bad in enumerate([-(2**31), 2**31, 10**100, -(10**100), True, 1.5, "1", None, math.nan]):
        cases[f"priority {i}"] = (v, lambda bad=bad: sub({}).with_priority(bad).execute())
        cases[f"schedule priority {i}"] = (
            v,
            lambda bad=bad: client.schedule("bad.s.v1").cron("* * * * *").with_priority(bad).create(),
        )
    for i, bad in enumerate([0, -1, -(2**63), 10_001, 2**63, 10**100, True, 2.0, "3", None]):
        cases[f"max_attempts {i}"] = (v, lambda bad=bad: sub({}).with_max_attempts(bad).execute())
        cases[f"schedule max_attempts {i}"] = (
            v,
            lambda bad=bad: client.schedule("bad.s.v1").cron("* * * * *").with_max_attempts(bad).create(),
        )
        cases[f"RetryPolicy max_attempts {i}"] = (v, lambda bad=bad: RetryPolicy(max_attempts=bad))
    cases["RetryPolicy max_delay 1000 years"] = (v, lambda: RetryPolicy(max_delay=timedelta(days=365_000)))
    cases["RetryPolicy initial_delay huge"] = (
        v,
        lambda: RetryPolicy(initial_delay=timedelta(days=10**6), max_delay=timedelta(days=10**8)),
    )
    cases["RetryPolicy delay(0)"] = (v, lambda: RetryPolicy().delay(0))
    cases["RetryPolicy delay(-5)"] = (v, lambda: RetryPolicy().delay(-5))
    cases["list_runs limit 0"] = (v, lambda: client.list_runs(limit=0))
    cases["list_runs limit huge"] = (v, lambda: client.list_runs(limit=10**30))
    cases["list_runs offset -1"] = (v, lambda: client.list_runs(offset=-1))
    cases["submit_many str"] = (v, lambda: client.submit_many("bad.input.v1"))  # type: ignore[arg-type]
    cases["submit_many junk item"] = (v, lambda: client.submit_many([("bad.input.v1", {}), 5]))  # type: ignore[list-item]
    cases["submit_many half bad"] = (v, lambda: client.submit_many([("bad.input.v1", {}), ("bad type", {})]))
    cases["wait negative"] = (v, lambda: client.wait(pending, timedelta(seconds=-1)))
    # Unknown ids in every API that takes one: a well-formed UUID nobody has, and strings that are no id at all.
    for i, rid in enumerate([UNKNOWN, "' OR 1=1 --", "%", "", "not-a-uuid", "0" * 10_000]):
        for api, call in {
            "get_run": lambda r=rid: client.get_run(r),
            "get_events": lambda r=rid: client.get_events(r),
            "cancel": lambda r=rid: client.cancel(r),
            "retry": lambda r=rid: client.retry(r),
            "wait": lambda r=rid: client.wait(r, timedelta(seconds=0.1)),
            "get_result": lambda r=rid: client.get_result(r, RunResult),
            "signal": lambda r=rid: client.signal(r, "go", {}),
            "get_steps": lambda r=rid: client.get_steps(r),
            "get_schedule": lambda r=rid: client.get_schedule(r),
            "pause_schedule": lambda r=rid: client.pause_schedule(r),
            "resume_schedule": lambda r=rid: client.resume_schedule(r),
            "delete_schedule": lambda r=rid: client.delete_schedule(r),
        }.items():
            cases[f"{api} unknown id {i}"] = (nf, call)
    for api, call in {"get_run": client.get_run, "cancel": client.cancel, "get_schedule": client.get_schedule}.items():
        cases[f"{api} non-str id"] = (v, lambda call=call: call(12345))
    # Documented refusals on existing runs.
    cases["cancel a finished run"] = (AlreadyComplete, lambda: client.cancel(done))
    cases["signal a finished run"] = (AlreadyComplete, lambda: client.signal(done, "go", {}))
    cases["retry a pending run"] = (InvalidState, lambda: client.retry(pending))
    cases["get_result of a pending run"] = (InvalidState, lambda: client.get_result(pending, RunResult))
    return cases


class RunResult(__import__("pydantic").BaseModel):
    ok: bool


def test_hostile_input_is_rejected_and_changes_nothing(seeded: tuple[Client, str, str], db_kind: str) -> None:
    client, pending, done = seeded
    before = dump(client)
    cases = rejections(client, pending, done)
    wrong: list[str] = []
    for name, (expected, call) in cases.items():
        try:
            call()
        except expected as error:
            if not str(error).strip():
                wrong.append(f"{name}: empty message")
        except BaseException as error:
            wrong.append(f"{name}: {type(error).__module__}.{type(error).__name__}: {str(error)[:200]}")
        else:
            wrong.append(f"{name}: accepted")
    assert not wrong, "\n".join(wrong)
    assert dump(client) == before
    report("bad_input", db=db_kind, rejected_calls=len(cases), database_unchanged=True)


def test_hostile_but_valid_strings_are_stored_verbatim_and_match_only_themselves(client: Client) -> None:
    ids = {key: client.submit("nasty.v1", {"key": key}).with_idempotency(key).execute() for key in INJECTIONS}
    assert len(set(ids.values())) == len(INJECTIONS)
    for key, run_id in ids.items():
        assert [r.id for r in client.list_runs(idempotency_key=key)] == [run_id]
        assert client.submit("nasty.v1", {}).with_idempotency(key).execute() == run_id  # still one run per key
        assert client.get_run(run_id).idempotency_key == key
    assert len(client.list_runs(type="nasty.v1", limit=1000)) == len(INJECTIONS)
    for key in INJECTIONS[:3]:
        client.signal(ids[key], key, {"payload": key})  # a signal name full of SQL is just a name
    assert [e.detail["signal"] for e in client.get_events(ids[INJECTIONS[0]]) if e.event_type == "signalled"] == [
        INJECTIONS[0]
    ]


def test_like_metacharacters_in_types_and_prefixes_match_literally(client: Client, db_url: str) -> None:
    """``x_%`` routes ``x_y.v1`` but not ``xay.v1``; worker ids and step names with SQL are stored as given."""
    literal = client.submit("x_y.v1", {}).execute()
    other = client.submit("xay.v1", {}).execute()
    worker_id = "w'; DROP TABLE workflow_run; --%_"
    names = ["s'; DROP TABLE workflow_step; --", "%_%", "\\"]

    def flow(ctx: WorkflowContext, job: Any) -> list[str]:
        return [ctx.step(name, str.upper, name) for name in names]

    with Poller(db_url) as poller:
        poller.with_worker_id(worker_id).with_type_prefixes("x_%", "flow.v1")
        poller.handle_func("x_y.v1", lambda run: "literal").handle_func("xay.v1", lambda run: "other")
        poller.handle_workflow("flow.v1", flow)
        flow_id = client.submit("flow.v1", {}).execute()
        poller.run_until_idle(timedelta(seconds=20))
    assert client.get_run(literal).status == "succeeded" and client.get_run(literal).result == "literal"
    assert client.get_run(other).status == "pending"  # 'a' is not '_'
    assert {e.worker_id for e in client.get_events(literal) if e.worker_id} == {worker_id}
    assert [s.name for s in client.get_steps(flow_id)] == names
    assert client.get_run(flow_id).result == [n.upper() for n in names]


def test_ten_megabyte_payload_round_trips_when_the_limit_allows_it(db_url: str, client: Client) -> None:
    big = {"blob": "é" * (5 * 1024 * 1024)}  # 10 MB of UTF-8
    with Client(db_url, payload_limit=16 * 1024 * 1024) as roomy:
        run_id = roomy.submit("big.v1", big).execute()
        assert roomy.get_run(run_id).payload == big


def test_a_retry_policy_at_its_longest_delay_still_stores_the_retry(client: Client, db_url: str) -> None:
    """The longest delay a RetryPolicy accepts must be a run_at both databases can store."""
    longest = RetryPolicy(initial_delay=HUNDRED_YEARS, max_delay=HUNDRED_YEARS, jitter=0.0)

    def boom(run: WorkflowRun) -> None:
        raise RuntimeError("boom")

    run_id = client.submit("retry.long.v1", {}).execute()
    with Poller(db_url) as poller:
        poller.with_retry_policy(longest).handle_func("retry.long.v1", boom)
        poller.run_until_idle(timedelta(seconds=20))
    info = client.get_run(run_id)
    assert (info.status, info.attempt) == ("pending", 1)
    assert info.run_at - info.updated_at == pytest.approx(HUNDRED_YEARS, abs=timedelta(seconds=5))
    assert [e.event_type for e in client.get_events(run_id)] == ["created", "leased", "retried"]


# -- property tests --------------------------------------------------------------------------

_anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=300),
    st.binary(max_size=10),
    st.timedeltas(),
    st.datetimes(),
    st.datetimes(timezones=st.just(timezone.utc)),
)


class SubmitBuilder(RuleBasedStateMachine):
    """Any sequence of ``with_…``/``run_…`` calls, valid or not: a rejected call raises
    ``ValidationError`` and leaves the builder exactly as it was; the run it would insert
    always carries the last accepted values."""

    def __init__(self) -> None:
        super().__init__()
        self.client = Client("sqlite://:memory:")
        self.builder = self.client.submit("prop.builder.v1", {"x": 1})
        self.model: dict[str, Any] = {
            "priority": 100,
            "max_attempts": 3,
            "idempotency_key": None,
            "run_at": None,
            "delay": 0.0,
        }

    def _apply(self, method: str, value: Any, valid: bool, **new: Any) -> None:
        try:
            getattr(self.builder, method)(value)
        except ValidationError:
            assert not valid, f"{method}({value!r}) was rejected"
            return
        assert valid, f"{method}({value!r}) was accepted"
        self.model.update(new)

    @rule(value=st.one_of(st.integers(-(2**33), 2**33), _anything))
    def priority(self, value: Any) -> None:
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 2**31 - 1
        self._apply("with_priority", value, ok, priority=value)

    @rule(value=st.one_of(st.integers(-5, 20_000), _anything))
    def max_attempts(self, value: Any) -> None:
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10_000
        self._apply("with_max_attempts", value, ok, max_attempts=value)

    @rule(value=st.one_of(st.text(max_size=300), _anything))
    def idempotency(self, value: Any) -> None:
        ok = isinstance(value, str) and 0 < len(value) <= 255 and "\x00" not in value
        if ok:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                ok = False
        self._apply("with_idempotency", value, ok, idempotency_key=value)

    @rule(value=st.one_of(st.timedeltas(), _anything))
    def run_in(self, value: Any) -> None:
        seconds: float | None = None  # a timedelta or a number of seconds, 0 to 100 years
        if isinstance(value, timedelta):
            seconds = value.total_seconds()
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            seconds = (
                timedelta(seconds=value).total_seconds() if 0 <= value <= 2 * HUNDRED_YEARS.total_seconds() else -1
            )
        ok = seconds is not None and 0 <= seconds <= HUNDRED_YEARS.total_seconds()
        self._apply("run_in", value, ok, run_at=None, delay=seconds if ok else None)

    @rule(value=st.one_of(st.datetimes(timezones=st.none() | st.just(timezone.utc)), _anything))
    def run_after(self, value: Any) -> None:
        ok = isinstance(value, datetime) and value.tzinfo is not None and 1970 <= value.year <= 9000
        self._apply("run_after", value, ok, run_at=value, delay=0.0)

    @invariant()
    def builds_what_was_accepted(self) -> None:
        new = self.builder.to_new_run()
        assert {k: getattr(new, k) for k in self.model} == self.model

    def teardown(self) -> None:
        self.client.close()


TestSubmitBuilder = SubmitBuilder.TestCase
TestSubmitBuilder.settings = settings(max_examples=60, stateful_step_count=15, deadline=None)


@settings(max_examples=300, deadline=None)
@given(
    initial=_anything,
    multiplier=_anything,
    maximum=_anything,
    jitter=_anything,
    attempts=_anything,
    attempt=st.integers(1, 100_000),
)
def test_any_retry_policy_arguments_give_a_bounded_policy_or_a_validation_error(
    initial: Any, multiplier: Any, maximum: Any, jitter: Any, attempts: Any, attempt: int
) -> None:
    kwargs = {
        "initial_delay": initial,
        "multiplier": multiplier,
        "max_delay": maximum,
        "jitter": jitter,
        "max_attempts": attempts,
    }
    for drop in list(kwargs):  # also each argument alone, the others defaulted
        for chosen in (kwargs, {drop: kwargs[drop]}):
            try:
                policy = RetryPolicy(**chosen)
            except ValidationError:
                continue
            delay = policy.delay(attempt)
            assert timedelta(0) <= delay <= policy.max_delay * (1 + policy.jitter) + timedelta(microseconds=1)
            assert policy.max_delay <= HUNDRED_YEARS, "a delay the database cannot add to its clock"
