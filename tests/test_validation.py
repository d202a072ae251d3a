"""Bad input gets a clear ``SimpleflowError`` subclass and changes nothing."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simpleflow import Client, ConfigurationError, NotFound, SimpleflowError, ValidationError
from simpleflow.db.schema import workflow_event, workflow_run

MiB = 1024 * 1024


def row_counts(client: Client) -> tuple[int, int]:
    with client.db.engine.connect() as conn:
        runs = conn.execute(
            sa.select(sa.func.count()).select_from(workflow_run), execution_options=client.db.exec_options
        ).scalar_one()
        events = conn.execute(
            sa.select(sa.func.count()).select_from(workflow_event), execution_options=client.db.exec_options
        ).scalar_one()
    return int(runs), int(events)


def assert_rejected(
    client: Client, cases: dict[str, Callable[[], object]], error: type[SimpleflowError] = ValidationError
) -> None:
    """Every case raises ``error`` with a message, and the database is unchanged."""
    before = row_counts(client)
    for name, attempt in cases.items():
        with pytest.raises(error) as caught:
            attempt()
        assert str(caught.value).strip(), f"{name}: empty error message"
        assert row_counts(client) == before, f"{name}: the database changed"


@pytest.fixture
def seeded(client: Client) -> Client:
    """A client whose database already holds one run (so 'unchanged' is not just 'empty')."""
    client.submit("seed.v1", {"n": 1}).with_idempotency("seed").execute()
    return client


# -- targets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:p@host/db",
        "http://example.com",
        "sqlite:rel.db",
        "sqlite:/x.db",
        "",
        "workflow.db",
        "postgresql+asyncpg://h/db",
    ],
)
def test_unknown_url_is_rejected_with_accepted_forms(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Client(url)
    message = str(caught.value)
    for form in ("sqlite:///", "sqlite://:memory:", "postgres://", "postgresql://", "postgresql+psycopg://", "Engine"):
        assert form in message, (form, message)


@pytest.mark.parametrize("target", [None, 42, b"sqlite:///x.db", Path("x.db"), object(), ["sqlite://"]])
def test_non_url_target_is_rejected(target: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Client(target)  # type: ignore[arg-type]
    assert "postgresql://" in str(caught.value)


def test_errors_are_the_documented_classes() -> None:
    assert issubclass(ValidationError, ValueError)
    assert issubclass(NotFound, LookupError)
    assert issubclass(ConfigurationError, SimpleflowError)


# -- payloads ------------------------------------------------------------------------------


def test_payload_not_json(seeded: Client) -> None:
    c = seeded
    assert_rejected(
        c,
        {
            "object": lambda: c.submit("a.b", object()).execute(),
            "set": lambda: c.submit("a.b", {1, 2}).execute(),
            "nested set": lambda: c.submit("a.b", {"a": [1, {"b": {3}}]}).execute(),
            "function": lambda: c.submit("a.b", {"f": print}).execute(),
            "datetime": lambda: c.submit("a.b", {"at": datetime.now(timezone.utc)}).execute(),
            "tuple key": lambda: c.submit("a.b", {(1, 2): "x"}).execute(),
            "bytes": lambda: c.submit("a.b", b'{"a": 1}').execute(),
            "bytearray": lambda: c.submit("a.b", bytearray(b"x")).execute(),
            "memoryview": lambda: c.submit("a.b", memoryview(b"x")).execute(),
            "nested bytes": lambda: c.submit("a.b", {"b": b"x"}).execute(),
            "NaN": lambda: c.submit("a.b", math.nan).execute(),
            "Infinity": lambda: c.submit("a.b", {"x": math.inf}).execute(),
            "-Infinity": lambda: c.submit("a.b", [1.0, -math.inf]).execute(),
            "lone surrogate": lambda: c.submit("a.b", "\ud800").execute(),
            "lone surrogate in key": lambda: c.submit("a.b", {"\udfff": 1}).execute(),
            "NUL": lambda: c.submit("a.b", {"s": "a\x00b"}).execute(),
            "too deep": lambda: c.submit("a.b", _deep(100_000)).execute(),
        },
    )


def _deep(n: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(n):
        value = [value]
    return value


def test_payload_error_messages_are_specific(client: Client) -> None:
    with pytest.raises(ValidationError, match="NaN or Infinity"):
        client.submit("a.b", {"x": math.nan})
    with pytest.raises(ValidationError, match="bytes"):
        client.submit("a.b", b"x")
    with pytest.raises(ValidationError, match="surrogate"):
        client.submit("a.b", "\ud800")
    with pytest.raises(ValidationError, match="not JSON-serializable"):
        client.submit("a.b", {1, 2})


def test_payload_size_limit_default(seeded: Client) -> None:
    c = seeded
    assert_rejected(
        c,
        {
            "1 MiB + 1": lambda: c.submit("a.b", "x" * (MiB - 1)).execute(),  # JSON adds 2 quotes
            "multibyte": lambda: c.submit("a.b", "é" * (MiB // 2)).execute(),  # bytes, not characters
        },
    )
    with pytest.raises(ValidationError, match="limit"):
        c.submit("a.b", "x" * MiB)
    rid = c.submit("a.b", "x" * (MiB - 2)).execute()  # exactly 1 MiB of JSON
    assert len(c.get_run(rid).payload) == MiB - 2


def test_payload_size_limit_custom(db_url: str, client: Client) -> None:
    with Client(db_url, payload_limit=100) as small:
        before = row_counts(small)
        with pytest.raises(ValidationError, match="100"):
            small.submit("a.b", "x" * 99).execute()  # 101 bytes of JSON
        with pytest.raises(ValidationError):
            small.submit_many([("a.b", 1), ("a.b", "x" * 200)])
        assert row_counts(small) == before
        rid = small.submit("a.b", "x" * 98).execute()  # exactly 100 bytes
        assert small.get_run(rid).payload == "x" * 98
    for bad in (0, -1, True, "100", 1.5):
        with pytest.raises(ValidationError):
            Client(db_url, payload_limit=bad)  # type: ignore[arg-type]


# -- type names ------------------------------------------------------------------------------

BAD_TYPES: list[object] = [
    "",
    " x",
    "x ",
    "a b",
    "a%b",
    "billing.%",
    "x" * 256,
    "x" * 300,
    "x'; DROP TABLE workflow_run;--",
    "a\nb",
    "a\x00b",
    ".leading.dot",
    "é.v1",
    None,
    123,
    b"a.b",
]


def test_bad_type_names(seeded: Client) -> None:
    c = seeded
    cases: dict[str, Callable[[], object]] = {}
    for bad in BAD_TYPES:
        cases[f"submit {bad!r:.40}"] = lambda bad=bad: c.submit(bad, {}).execute()  # type: ignore[misc]
        cases[f"submit_many {bad!r:.40}"] = lambda bad=bad: c.submit_many([("ok.v1", 1), (bad, {})])  # type: ignore[misc]
        if isinstance(bad, str) and bad:
            cases[f"list_runs {bad!r:.40}"] = lambda bad=bad: c.list_runs(type=bad)  # type: ignore[misc]
    assert_rejected(c, cases)
    with pytest.raises(ValidationError, match=r"billing\.invoice\.v1"):
        c.submit("a b", {})
    # the tables survived the injection attempt and good names still work
    for good in ("x" * 255, "billing.invoice.v1", "a", "9.a_b-c:d/e", "Content.Thumbnail.V1"):
        rid = c.submit(good, {}).execute()
        assert c.get_run(rid).type == good


# -- builder options --------------------------------------------------------------------------


def test_bad_builder_options(seeded: Client) -> None:
    c = seeded

    def sub() -> Any:
        return c.submit("a.b", {})

    naive = datetime(2030, 1, 1, 12, 0)
    assert_rejected(
        c,
        {
            "max_attempts 0": lambda: sub().with_max_attempts(0).execute(),
            "max_attempts -1": lambda: sub().with_max_attempts(-1).execute(),
            "max_attempts True": lambda: sub().with_max_attempts(True).execute(),
            "max_attempts '3'": lambda: sub().with_max_attempts("3").execute(),
            "max_attempts 2.0": lambda: sub().with_max_attempts(2.0).execute(),
            "max_attempts None": lambda: sub().with_max_attempts(None).execute(),
            "priority 2**31": lambda: sub().with_priority(2**31).execute(),
            "priority -(2**31)-1": lambda: sub().with_priority(-(2**31) - 1).execute(),
            "priority 10**20": lambda: sub().with_priority(10**20).execute(),
            "priority 1.5": lambda: sub().with_priority(1.5).execute(),
            "priority 1.0": lambda: sub().with_priority(1.0).execute(),
            "priority '1'": lambda: sub().with_priority("1").execute(),
            "priority False": lambda: sub().with_priority(False).execute(),
            "run_after naive": lambda: sub().run_after(naive).execute(),
            "run_after str": lambda: sub().run_after("2030-01-01T00:00:00Z").execute(),
            "run_after timestamp": lambda: sub().run_after(1_900_000_000).execute(),
            "run_in negative": lambda: sub().run_in(timedelta(seconds=-1)).execute(),
            "run_in -1us": lambda: sub().run_in(timedelta(microseconds=-1)).execute(),
            "run_in text": lambda: sub().run_in("5s").execute(),
            "run_in bool": lambda: sub().run_in(True).execute(),
            "run_in nan seconds": lambda: sub().run_in(float("nan")).execute(),
            "run_in seconds str": lambda: sub().run_in("5").execute(),
            "run_in huge": lambda: sub().run_in(timedelta(days=999_999)).execute(),
            "key empty": lambda: sub().with_idempotency("").execute(),
            "key 256": lambda: sub().with_idempotency("k" * 256).execute(),
            "key int": lambda: sub().with_idempotency(5).execute(),
            "key None": lambda: sub().with_idempotency(None).execute(),
            "key NUL": lambda: sub().with_idempotency("a\x00b").execute(),
        },
    )
    # the boundaries are accepted
    rid = sub().with_max_attempts(1).with_priority(2**31 - 1).with_idempotency("k" * 255).execute()
    info = c.get_run(rid)
    assert (info.max_attempts, info.priority, info.idempotency_key) == (1, 2**31 - 1, "k" * 255)
    rid = sub().with_priority(-(2**31) + 1).execute()
    assert c.get_run(rid).priority == -(2**31) + 1


def test_bad_submit_many_arguments(seeded: Client) -> None:
    c = seeded
    assert_rejected(
        c,
        {
            "string": lambda: c.submit_many("a.b"),  # type: ignore[arg-type]
            "generator of pairs": lambda: c.submit_many(("a.b", i) for i in range(2)),  # type: ignore[arg-type]
            "bare type": lambda: c.submit_many(["a.b"]),  # type: ignore[list-item]
            "triple": lambda: c.submit_many([("a.b", {}, 1)]),  # type: ignore[list-item]
            "dict": lambda: c.submit_many([{"type": "a.b"}]),  # type: ignore[list-item]
            "one bad payload": lambda: c.submit_many([("a.b", 1), ("a.b", object())]),
            "one bad builder": lambda: c.submit_many([("a.b", 1), c.submit("a.b", {}).with_priority(2**40)]),
        },
    )


# -- reading and changing with bad arguments -----------------------------------------------------


def test_bad_read_arguments(seeded: Client) -> None:
    c = seeded
    assert_rejected(
        c,
        {
            "status unknown": lambda: c.list_runs(status="done"),
            "status case": lambda: c.list_runs(status="PENDING"),
            "limit 0": lambda: c.list_runs(limit=0),
            "limit -1": lambda: c.list_runs(limit=-1),
            "limit str": lambda: c.list_runs(limit="10"),  # type: ignore[arg-type]
            "offset -1": lambda: c.list_runs(offset=-1),
            "key empty": lambda: c.list_runs(idempotency_key=""),
            "wait negative": lambda: c.wait(str(uuid.uuid4()), timeout=timedelta(seconds=-1)),
            "wait text": lambda: c.wait(str(uuid.uuid4()), timeout="1s"),  # type: ignore[arg-type]
            "wait bool": lambda: c.wait(str(uuid.uuid4()), timeout=True),
            "wait inf": lambda: c.wait(str(uuid.uuid4()), timeout=float("inf")),
            "get_run int": lambda: c.get_run(12),  # type: ignore[arg-type]
        },
    )
    with pytest.raises(ValidationError) as caught:
        c.list_runs(status="done")
    for status in ("pending", "leased", "sleeping", "waiting", "succeeded", "failed", "cancelled"):
        assert status in str(caught.value)


@pytest.mark.parametrize("bad_id", ["", "nope", "123", "x'; DROP TABLE workflow_run;--", "0" * 37, "\x00"])
def test_non_uuid_ids_are_not_found(seeded: Client, bad_id: str) -> None:
    c = seeded
    assert_rejected(
        c,
        {
            "get_run": lambda: c.get_run(bad_id),
            "cancel": lambda: c.cancel(bad_id),
            "retry": lambda: c.retry(bad_id),
            "get_events": lambda: c.get_events(bad_id),
            "wait": lambda: c.wait(bad_id, timeout=timedelta(seconds=1)),
        },
        NotFound,
    )


def test_uppercase_uuid_finds_the_run(client: Client) -> None:
    rid = client.submit("a.b", {}).execute()
    assert client.get_run(rid.upper()).id == rid
    assert client.get_run("{" + rid + "}").id == rid


# -- property tests (SQLite only, for speed) -----------------------------------------------------------

_text = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=20)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def sqlite_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """One migrated SQLite database for all examples of the property tests."""
    c = Client(f"sqlite:///{tmp_path_factory.mktemp('props')}/props.db")
    c.auto_migrate()
    yield c
    c.close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=_json)
def test_any_json_payload_round_trips(sqlite_client: Client, payload: Any) -> None:
    rid = sqlite_client.submit("prop.v1", payload).execute()
    assert sqlite_client.get_run(rid).payload == payload


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    priority=st.integers(-(2**31) + 1, 2**31 - 1),
    attempts=st.integers(1, 10_000),
    key=st.none()
    | st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), min_size=1, max_size=255),
    delay=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)),
)
def test_builder_options_round_trip(
    sqlite_client: Client, priority: int, attempts: int, key: str | None, delay: timedelta
) -> None:
    builder = sqlite_client.submit("prop.v1", {}).with_priority(priority).with_max_attempts(attempts).run_in(delay)
    unique_key = None if key is None else f"{uuid.uuid4().hex}:{key}"[:255]
    if unique_key is not None:
        builder = builder.with_idempotency(unique_key)
    rid = builder.execute()
    info = sqlite_client.get_run(rid)
    assert (info.priority, info.max_attempts, info.idempotency_key) == (priority, attempts, unique_key)
    assert abs((info.run_at - info.created_at) - delay) < timedelta(seconds=1)


@settings(max_examples=50, deadline=None)
@given(value=st.one_of(st.just(object()), st.sets(st.integers(), min_size=1), st.just(float("nan")), st.binary()))
def test_non_json_values_never_reach_the_database(value: object) -> None:
    with Client("sqlite://:memory:") as c, pytest.raises(ValidationError):
        c.submit("a.b", {"v": value} if not isinstance(value, bytes) else value)
