"""``run.payload_as(T)`` and ``client.get_result(run_id, T)`` take any type pydantic's
``TypeAdapter`` handles (dict, ``list[int]``, dataclasses, models), and raise our own
``ValidationError`` for a type it cannot handle or a value that does not fit (issue 11)."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest
from poller_helpers import make_poller
from pydantic import BaseModel

from simpleflow import Client, ValidationError, WorkflowRun


class Point(BaseModel):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    width: int
    tags: list[str]


CASES: list[tuple[Any, Any, Any]] = [
    # (payload, target, expected)
    ({"a": 1, "b": [2]}, dict, {"a": 1, "b": [2]}),
    ({"a": 1}, dict[str, int], {"a": 1}),
    ([1, 2, 3], list[int], [1, 2, 3]),
    ([1, 2, 3], list, [1, 2, 3]),
    ({"width": 3, "tags": ["t"]}, Box, Box(width=3, tags=["t"])),
    ({"x": 1, "y": 2}, Point, Point(x=1, y=2)),
    ([{"x": 1, "y": 2}], list[Point], [Point(x=1, y=2)]),
    (7, int, 7),
    ("s", str, "s"),
    (None, type(None), None),
    (None, int | None, None),
]


def _handled(client: Client, db_url: str, payload: Any, fn: Any) -> list[Any]:
    """Run one run of ``payload`` through ``fn(run)``; what the handler saw (value or error)."""
    client.submit("defects.payload.v1", payload).with_max_attempts(1).execute()
    seen: list[Any] = []

    def handler(run: WorkflowRun) -> None:
        try:
            seen.append(fn(run))
        except Exception as error:
            seen.append(error)

    with make_poller(db_url, "w1") as poller:
        poller.handle_func("defects.payload.v1", handler)
        assert poller.run_until_idle() == 1
    return seen


def test_payload_as_accepts_any_type_pydantic_can_validate(client: Client, db_url: str) -> None:
    for payload, target, expected in CASES:
        (got,) = _handled(client, db_url, payload, lambda run, t=target: run.payload_as(t))
        assert got == expected, f"payload_as({target!r})"
        assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("payload", "target"),
    [
        ([1, 2], dict),
        ({"a": 1}, list[int]),
        (["x"], list[int]),
        ({"width": "wide", "tags": []}, Box),
        ({"x": 1}, Point),
    ],
)
def test_payload_as_mismatch_is_our_validation_error(client: Client, db_url: str, payload: Any, target: Any) -> None:
    (got,) = _handled(client, db_url, payload, lambda run: run.payload_as(target))
    assert isinstance(got, ValidationError), repr(got)
    assert "does not fit" in str(got)


@pytest.mark.parametrize("target", [5, threading.Lock(), "not a type ]["])
def test_payload_as_a_type_pydantic_cannot_handle_is_a_validation_error(
    client: Client, db_url: str, target: Any
) -> None:
    (got,) = _handled(client, db_url, {"a": 1}, lambda run: run.payload_as(target))
    assert isinstance(got, ValidationError), repr(got)


def test_get_result_accepts_any_type_pydantic_can_validate(client: Client, db_url: str) -> None:
    for payload, target, expected in CASES:
        rid = client.submit("defects.result.v1", payload).with_max_attempts(1).execute()
        with make_poller(db_url, "w1") as poller:
            poller.handle_func("defects.result.v1", lambda run: run.payload_value)
            assert poller.run_until_idle() == 1
        got = client.get_result(rid, target)
        assert got == expected and type(got) is type(expected), f"get_result(..., {target!r})"
    with pytest.raises(ValidationError, match="does not fit"):
        client.get_result(rid, list[int])
    with pytest.raises(ValidationError):
        client.get_result(rid, 5)
