"""Names that end in a newline are names like any other bad one: rejected before the database.

Python's ``$`` matches before a trailing newline, so a ``re.match(r"^...$")`` check let
``"billing.v1\\n"`` and ``?schema=abc%0A`` through (issue 11).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from test_validation import assert_rejected

from simpleflow import Client, ConfigurationError, Poller, ValidationError
from simpleflow.core.validation import check_prefix, check_type
from simpleflow.db.database import Database

NEWLINE_TYPES = ["billing.v1\n", "x" * 255 + "\n", "a\n", "billing.v1\r\n", "\nbilling.v1", "billing\n.v1"]


@pytest.mark.parametrize("bad", NEWLINE_TYPES)
def test_type_names_ending_in_a_newline_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError, match="invalid type"):
        check_type(bad)


def test_newline_types_are_rejected_by_every_entry_point(client: Client) -> None:
    client.submit("seed.v1", {}).execute()
    cases: dict[str, Callable[[], object]] = {}
    for bad in NEWLINE_TYPES:
        cases[f"submit {bad!r:.30}"] = lambda bad=bad: client.submit(bad, {}).execute()  # type: ignore[misc]
        cases[f"submit_many {bad!r:.30}"] = lambda bad=bad: client.submit_many([("ok.v1", 1), (bad, {})])  # type: ignore[misc]
        cases[f"list_runs {bad!r:.30}"] = lambda bad=bad: client.list_runs(type=bad)  # type: ignore[misc]
        cases[f"schedule {bad!r:.30}"] = lambda bad=bad: client.schedule(bad, "* * * * *")  # type: ignore[misc]
        cases[f"handle {bad!r:.30}"] = lambda bad=bad: Poller(client.db).handle_func(bad, lambda run: None)  # type: ignore[misc]
    assert_rejected(client, cases)


@pytest.mark.parametrize("bad", ["billing.%\n", "billing.\n%", "%\n", "billing.v1\n"])
def test_prefixes_ending_in_a_newline_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError, match="prefix"):
        check_prefix(bad)


@pytest.mark.parametrize("bad", ["abc\n", "abc\r\n", "x" * 63 + "\n"])
def test_schema_names_ending_in_a_newline_are_rejected(bad: str) -> None:
    base = "postgresql://app:secret@db.invalid/app"
    with pytest.raises(ConfigurationError, match="schema"):
        Database.open(f"{base}?schema={quote(bad)}")
    with pytest.raises(ConfigurationError, match="schema"):
        Database.open(f"{base}?search_path={quote(bad)}")
    with pytest.raises(ConfigurationError, match="schema"):
        Database.open(base, schema=bad)
    engine = sa.create_engine("postgresql+psycopg://app:secret@db.invalid/app")
    try:
        with pytest.raises(ConfigurationError, match="schema"):
            Database.open(engine, schema=bad)
    finally:
        engine.dispose()


@pytest.mark.parametrize("bad", ["worker-1\n", "w\r"])
def test_worker_ids_with_a_newline_are_rejected(migrated_url: str, bad: str) -> None:
    with pytest.raises(ValidationError, match="worker"):
        Poller(migrated_url).with_worker_id(bad)
