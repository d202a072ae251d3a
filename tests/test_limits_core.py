"""The pure part of flow control (``simpleflow.core.limits``): patterns, rates, matching. No database."""

from __future__ import annotations

from datetime import timedelta

import pytest

from simpleflow import ValidationError
from simpleflow.core.limits import Limit, check_pattern, governs_any, limit_spec, matches, parse_rate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/1m", (100, 60.0)),
        ("5/s", (5, 1.0)),
        ("5/1s", (5, 1.0)),
        ("10/500ms", (10, 0.5)),
        ("3/2h", (3, 7200.0)),
        ("1/1d", (1, 86400.0)),
        ("7/30", (7, 30.0)),
        (" 2 / 1.5s ", (2, 1.5)),
    ],
)
def test_rates_parse(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["100", "100/", "/1m", "0/1m", "-1/1m", "x/1m", "5/1y", "5/0s", "5/2d", "1.5/1m"])
def test_bad_rates_are_rejected(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_rate(text)


def test_limit_spec_validates_every_field() -> None:
    spec = limit_spec("partner.%", 2, (10, timedelta(seconds=1)), 20)
    assert (spec.pattern, spec.concurrency, spec.rate_count, spec.rate_seconds, spec.pause_after_failures) == (
        "partner.%",
        2,
        10,
        1.0,
        20,
    )
    assert limit_spec("a.v1", rate=(1, 0.25)).rate_seconds == 0.25
    for bad in (
        {},
        {"concurrency": 0},
        {"concurrency": 1.5},
        {"rate": (1,)},
        {"rate": (1, 2, 3)},
        {"rate": (True, 1)},
        {"rate": (1, timedelta(days=2))},
        {"pause_after_failures": -3},
        {"concurrency": 1, "per_tenant": "true"},
        {"pause_after_failures": 3, "per_tenant": True},
    ):
        with pytest.raises(ValidationError):
            limit_spec("a.v1", **bad)  # type: ignore[arg-type]


def test_per_tenant_needs_numbers_a_tenant_can_get() -> None:
    assert not limit_spec("a.v1", 1).per_tenant
    assert limit_spec("a.v1", 1, per_tenant=True).per_tenant
    assert limit_spec("a.v1", rate="5/s", pause_after_failures=3, per_tenant=True).per_tenant


@pytest.mark.parametrize("pattern", ["billing.%", "billing.charge.v1", "%", "a_b%"])
def test_patterns_follow_the_prefix_rule(pattern: str) -> None:
    assert check_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["", "%%", "a%b", "-x", "a b", 1, None, "x" * 300])
def test_malformed_patterns(pattern: object) -> None:
    with pytest.raises(ValidationError, match="invalid limit pattern"):
        check_pattern(pattern)


def test_matching_is_literal_and_by_prefix() -> None:
    assert matches("billing.%", "billing.charge.v1")
    assert not matches("billing.%", "billingx")
    assert matches("%", "anything")
    assert matches("a_b%", "a_b.v1") and not matches("a_b%", "axb.v1")  # _ is a plain character
    assert matches("email.send.v1", "email.send.v1") and not matches("email.send.v1", "email.send.v10")


def test_which_limits_can_govern_a_poller() -> None:
    assert governs_any("billing.%", ["billing.charge.v1"], None)
    assert not governs_any("billing.%", ["email.v1"], None)
    assert governs_any("billing.charge.v1", [], ["billing.%"])  # an exact type under the poller's prefix
    assert governs_any("billing.%", [], ["billing.charge.%"])  # a wider limit
    assert governs_any("billing.charge.%", [], ["billing.%"])  # a narrower limit
    assert governs_any("%", [], ["x.v1"])
    assert not governs_any("email.%", [], ["billing.%", "sms.v1"])


def test_limit_model_exposes_the_rate_as_given() -> None:
    assert Limit(pattern="a", rate_count=3, rate_period=timedelta(seconds=2)).rate == (3, timedelta(seconds=2))
    assert Limit(pattern="a").rate is None
